"""CI: the project in a venv holding mlflow-skinny only (no full mlflow, no SQLAlchemy).

Run with that venv's python: `python .ci/skinny_check.py MLFLOW_EXECUTABLE`, where the
executable (from the main venv: skinny has no server) serves a local `mlflow server`.
1. A v1 script under the launcher lands in that server (read back with MlflowClient).
2. `doctor` on the default sqlite store names what is missing and the extra to install.
"""
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from servers import free_port  # noqa: E402

SCRIPT = """
from azureml.core import Run
run = Run.get_context()
for i in range(5):
    run.log("loss", 1.0 / (i + 1))
run.log_row("table", x=1, y=2.5)
run.tag("stage", "skinny")
"""


def main(mlflow_executable: str) -> int:
    for name in ("mlflow", "sqlalchemy", "SQLAlchemy"):
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        sys.exit(f"skinny check: {name} {found} is installed here; this venv must hold mlflow-skinny only")
    print(f"skinny check: mlflow-skinny {metadata.version('mlflow-skinny')}, no mlflow, no SQLAlchemy")
    bin_dir = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AZML_V1_BRIDGE_"))}
    with tempfile.TemporaryDirectory(prefix="azml-skinny-") as tmp:
        env["HOME"] = tmp  # azureml's caches
        port = free_port()
        server_env = dict(env, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with open(os.path.join(tmp, "server.log"), "wb") as log:
            server = subprocess.Popen([mlflow_executable, "server", "--backend-store-uri", f"sqlite:///{tmp}/s.db",
                                       "--artifacts-destination", f"{tmp}/artifacts", "--serve-artifacts",
                                       "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                      stdout=log, stderr=subprocess.STDOUT, env=server_env, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=1) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        sys.exit("skinny check: mlflow server did not start: "
                                 + open(os.path.join(tmp, "server.log")).read()[-2000:])
                    time.sleep(0.2)
            with open(os.path.join(tmp, "train.py"), "w") as fh:
                fh.write(SCRIPT)
            run_env = dict(env, MLFLOW_TRACKING_URI=url, MLFLOW_EXPERIMENT_NAME="skinny")
            done = subprocess.run([os.path.join(bin_dir, "azml-v1-bridge"), "run", "--", "python", "train.py"],
                                  cwd=tmp, env=run_env, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                sys.exit(f"skinny check: the v1 script failed:\n{done.stderr[-3000:]}")
            from mlflow.tracking import MlflowClient

            client = MlflowClient(url)
            (run,) = client.search_runs([client.get_experiment_by_name("skinny").experiment_id])
            history = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
            assert history == [1.0 / (i + 1) for i in range(5)], history
            assert run.data.metrics["table.y"] == 2.5 and run.data.tags["stage"] == "skinny", run.data
            assert run.info.status == "FINISHED", run.info.status
            print(f"skinny check: v1 script -> {url}: run {run.info.run_id} FINISHED, 5 loss points, table, tag")
        finally:
            server.terminate()
            server.wait(30)
        doctor = subprocess.run([os.path.join(bin_dir, "azml-v1-bridge"), "doctor"], cwd=tmp,
                                env=dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db"),
                                capture_output=True, text=True, timeout=300)
        expected = "needs SQLAlchemy and alembic, which are not installed (mlflow-skinny leaves them out): " \
                   "pip install 'azml_v1_bridge[sqlite]'"
        if doctor.returncode != 1 or expected not in doctor.stderr:
            sys.exit(f"skinny check: doctor did not name the missing sqlite extra:\n{doctor.stdout}{doctor.stderr}")
        print("skinny check: doctor on the sqlite default names the [sqlite] extra")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
