"""Notebooks run unchanged in mlflow mode, under `import azml_v1_bridge` and under the
launcher (issue 24): the cells of Azure/MachineLearningNotebooks' tutorials, in one script,
with real azureml-core, real MLflow stores (sqlite; a real `mlflow server`), no Azure config
and no network (every non-loopback connection is refused and recorded).

MLflow draws its transfer progress bars with tqdm, which this venv does not have: a tqdm
that prints a marker line is put on the path, so a bar MLflow draws is seen; the user's own
MLflow download draws one (the control), the bridge's reads none.
"""
import json
import os
import sys
import uuid

import pytest

from conftest import NO_NETWORK, run_script

NOTEBOOK = NO_NETWORK + r'''
IMPORT_LINE

import mlflow
from azureml.core import Datastore, Experiment, Run, Workspace
from azureml.core.model import Model
from azureml.exceptions import ActivityFailedException, UserErrorException

EXP, OWN, ALPHAS = os.environ["NB_EXPERIMENT"], os.environ["NB_OWN"], json.loads(os.environ["NB_ALPHAS"])
out = {"reached": reached}

# the print-workspace cell of 69 notebooks
ws = Workspace.from_config()
out["printed"] = '\n'.join(['Workspace name: ' + ws.name, 'Azure region: ' + ws.location,
                            'Subscription id: ' + ws.subscription_id,
                            'Resource group: ' + ws.resource_group])
experiment = Experiment(workspace=ws, name=EXP)
out["html_ws"], out["html_exp"] = ws._repr_html_(), experiment._repr_html_()

# train-within-notebook: one start_logging run per alpha, the model into ./outputs
out["outputs_before"] = os.path.exists("outputs")
ids = []
for alpha in ALPHAS:
    run = experiment.start_logging()
    out.setdefault("outputs_after", os.path.isdir("outputs"))
    run.log("alpha_value", alpha)
    run.log("mse", alpha * alpha)
    with open(f"outputs/model_alpha_{alpha}.pkl", "wb") as fh:  # joblib.dump's first write
        fh.write(f"model {alpha}".encode())
    if not ids:
        out["html_run"] = run._repr_html_()
        with open("train.log", "w") as fh:
            fh.write("epoch 1 ok\n")
        run.upload_file("logs/train.log", "train.log")  # a log in one of v1's log folders
    run.complete()
    ids.append(run.id)
out["ids"] = ids
out["listed"] = [r.id for r in experiment.get_runs()]

# manage-runs: refetch, wait, logs, status; an active run; a failed one
again = Run(experiment, ids[0])
out["wait"] = again.wait_for_completion(show_output=False, wait_post_processing=True)
with_logs = again.get_details_with_logs()
out["with_logs"] = [sorted(with_logs), with_logs["logFiles"]]
out["refetched_metrics"] = again.get_metrics()
active = experiment.start_logging()
active.log("alpha_value", -1.0)
out["active_wait"] = active.wait_for_completion()["status"]
active.complete()
failing = experiment.start_logging()
failing.fail(error_details="diverged")
try:
    Run(experiment, failing.id).wait_for_completion()
    out["failed_raises"] = None
except ActivityFailedException as exc:
    out["failed_raises"] = "diverged" in str(exc)
out["failed_quiet"] = Run(experiment, failing.id).wait_for_completion(raise_on_error=False)["status"]

# what needs Azure: one error class, naming the user's call
import azml_v1_bridge
errors = []
for call in (lambda: ws.datastores, lambda: again.restore_snapshot(), lambda: Datastore.get(ws, "d"),
             lambda: ws.get_details()):
    try:
        call()
    except azml_v1_bridge.NoAzureError as exc:
        errors.append([type(exc).__module__ + "." + type(exc).__qualname__,
                       isinstance(exc, UserErrorException), exc.call, str(exc)])
out["errors"] = errors

# reads print no progress bars; the user's own MLflow download does (the control)
sys.stderr.write("<<bridge reads\n"); sys.stderr.flush()
again.download_file(f"outputs/model_alpha_{ALPHAS[0]}.pkl", "got_file.pkl")
again.download_files(prefix="outputs", output_directory="got_files")
best = Run(experiment, ids[-1])
model = best.register_model(model_name=EXP + "-model", model_path=f"outputs/model_alpha_{ALPHAS[-1]}.pkl")
with open("single.bin", "wb") as fh:
    fh.write(b"one file")
single = Model.register(ws, model_path="single.bin", model_name=EXP + "-file")
out["v1_downloads"] = [open(model.download("v1_model"), "rb").read().decode(),
                       open(Model(ws, EXP + "-file").download("v1_file"), "rb").read().decode()]
sys.stderr.write("bridge reads>>\n"); sys.stderr.flush()
import importlib.util
out["bars"] = [os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"),
               importlib.util.find_spec("tqdm").origin]
out["mlflow_downloads"] = {}
for name, version in ((model.name, model.version), (single.name, single.version)):
    folder = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path="mv_" + name)
    out["mlflow_downloads"][name] = {f: open(os.path.join(folder, f), "rb").read().decode()
                                     for f in os.listdir(folder)}

# the notebook's own MLflow calls, and the job's run
mlflow.set_experiment(OWN)
with mlflow.start_run() as own:
    mlflow.log_metric("own", 3.0)
out["own_run"] = own.info.run_id
Run.get_context().log("job_metric", 1.0)
out["launcher_run"] = os.environ.get("AZML_V1_BRIDGE_LAUNCHER_RUN_ID")
out["mlflow_run_id_env"] = os.environ.get("MLFLOW_RUN_ID")
print("RESULT " + json.dumps(out))
'''

FAKE_TQDM = '''
import sys


class tqdm:
    def __init__(self, *args, desc=None, **kwargs):
        sys.stderr.write(f"FAKE-TQDM-BAR {desc}\\n")
        sys.stderr.flush()

    def update(self, n=1):
        pass

    def refresh(self):
        pass

    def close(self):
        pass
'''


def notebook(tmp_path, mode: str, tracking_uri: str, alphas: list):
    """Run the notebook once: `import` (the one line) or `launcher`; its RESULT and stderr."""
    fake = tmp_path / "fake_tqdm" / "tqdm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_TQDM)
    (fake / "auto.py").write_text("from . import tqdm\n")
    work = tmp_path / "nb"
    work.mkdir()
    tag = uuid.uuid4().hex[:8]
    env = {"AZML_V1_BRIDGE_MODE": "mlflow", "MLFLOW_TRACKING_URI": tracking_uri,
           "AZML_V1_BRIDGE_REPORT": "1", "HOME": str(tmp_path / "home"),
           "NB_EXPERIMENT": f"nb-{mode}-{tag}", "NB_OWN": f"own-{mode}-{tag}",
           "NB_ALPHAS": json.dumps(alphas),
           "PYTHONPATH": str(tmp_path / "fake_tqdm") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = NOTEBOOK.replace("IMPORT_LINE", "import azml_v1_bridge" if mode == "import" else "")
    launcher = None
    if mode == "launcher":
        launcher = [sys.executable, "-m", "azml_v1_bridge_tools.cli", "run", "--"]
    proc = run_script(code, work, env=env, launcher=launcher, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), proc.stderr, env, work


def check(got, err, env, client, alphas):
    """What every mode must give, read back with MlflowClient against values computed here."""
    assert got["reached"] == []
    assert got["printed"] == ("Workspace name: mlflow\nAzure region: local\n"
                              "Subscription id: 00000000-0000-0000-0000-000000000000\n"
                              "Resource group: local")
    uri = env["MLFLOW_TRACKING_URI"]
    assert "<table" in got["html_ws"] and uri in got["html_ws"]
    assert env["NB_EXPERIMENT"] in got["html_exp"] and uri in got["html_exp"]
    experiment = client.get_experiment_by_name(env["NB_EXPERIMENT"])
    assert got["outputs_before"] is False and got["outputs_after"] is True

    # each start_logging run is its own, in its experiment, listed by get_runs(), Completed
    runs = client.search_runs([experiment.experiment_id])
    by_v1 = {r.data.tags["azureml.v1.run_id"]: r for r in runs}
    assert len(runs) == len(alphas) + 2  # the alphas, the active one, the failed one
    assert set(got["ids"]) < set(by_v1)
    assert got["listed"] == got["ids"][::-1]  # get_runs() before the last two: newest first
    for run_id, alpha in zip(got["ids"], alphas):
        mlflow_run = by_v1[run_id]
        assert mlflow_run.data.metrics == {"alpha_value": alpha, "mse": alpha * alpha}
        assert mlflow_run.info.status == "FINISHED"
        uploaded = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "outputs")}
        assert f"outputs/model_alpha_{alpha}.pkl" in uploaded  # ./outputs, uploaded at the end
    assert sorted(r.info.status for r in runs).count("FAILED") == 1
    first = by_v1[got["ids"][0]]
    assert got["html_run"].count(first.info.run_id) >= 1 and got["ids"][0] in got["html_run"]

    # refetch and wait, in v1's shapes
    assert got["wait"]["status"] == "Completed" and got["wait"]["runId"] == got["ids"][0]
    keys, log_files = got["with_logs"]
    assert {"logFiles", "status", "runId", "startTimeUtc", "endTimeUtc"} <= set(keys)
    assert log_files == {"logs/train.log": "epoch 1 ok\n"}
    assert got["refetched_metrics"] == {"alpha_value": alphas[0], "mse": alphas[0] ** 2}
    assert got["active_wait"] == "Running"  # this process's own active run: at once
    assert got["failed_raises"] is True and got["failed_quiet"] == "Failed"

    # one error class, importable, naming the user's call and what to do
    calls = [e[2] for e in got["errors"]]
    assert calls == ["Workspace.datastores", "run.restore_snapshot()", "Datastore.get()",
                     "Workspace.get_details()"]
    for kind, is_user_error, call, message in got["errors"]:
        assert kind == "azml_v1_bridge.NoAzureError" and is_user_error
        assert message.count("AZML_V1_BRIDGE_MODE=mirror") >= 1 and "service_context" not in message

    # registered files download, with v1's Model.download() and with MLflow's models:/
    assert got["v1_downloads"] == [f"model {alphas[-1]}", "one file"]
    assert got["mlflow_downloads"] == {
        env["NB_EXPERIMENT"] + "-model": {f"model_alpha_{alphas[-1]}.pkl": f"model {alphas[-1]}"},
        env["NB_EXPERIMENT"] + "-file": {"single.bin": "one file"}}

    # quiet: no bar between the markers (the bridge's reads), bars after (the user's own)
    reads = err[err.index("<<bridge reads"):err.index("bridge reads>>")]
    assert "FAKE-TQDM-BAR" not in reads
    # the control: bars are on after the reads (the variable unset again), drawn by the fake
    assert got["bars"] == [None, os.path.join(env["PYTHONPATH"].split(os.pathsep)[0], "tqdm",
                                              "__init__.py")], got["bars"]
    assert "FAKE-TQDM-BAR" in err[err.index("bridge reads>>"):], err[-3000:]

    # the notebook's own MLflow run, in its own experiment
    own = client.get_run(got["own_run"])
    assert own.data.metrics == {"own": 3.0} and own.info.status == "FINISHED"
    assert own.info.experiment_id == client.get_experiment_by_name(env["NB_OWN"]).experiment_id
    return runs


def report_lines(err: str) -> list:
    start = err.index("azml_v1_bridge report")
    lines = err[start:].splitlines()
    end = next((i for i, l in enumerate(lines) if i and not l.startswith("  ")), len(lines))
    return lines[:end]


def test_a_notebook_under_the_import_line(store, tmp_path):
    alphas = [0.0, 0.25, 0.5, 0.75]
    got, err, env, work = notebook(tmp_path, "import", store._tracking_client.tracking_uri, alphas)
    check(got, err, env, store, alphas)
    # the job's run (Run.get_context() outside a job) is a run of its own
    (job,) = [r for e in store.search_experiments() for r in store.search_runs([e.experiment_id])
              if "job_metric" in r.data.metrics]
    assert job.data.metrics == {"job_metric": 1.0}
    # the report: one line a run, the details once (len(alphas) + 4 runs here)
    lines = report_lines(err)
    assert len(lines) <= len(alphas) + 4 + 12, "\n".join(lines)
    # nothing left beside the store after a clean exit
    assert os.path.exists(tmp_path / "mlflow.db")
    assert [name for name in os.listdir(tmp_path) if name.startswith("mlflow.db")] == ["mlflow.db"]


@pytest.mark.server
def test_a_notebook_under_the_launcher(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    alphas = [0.1, 0.2, 0.3]
    got, err, env, work = notebook(tmp_path, "launcher", mlflow_server.url, alphas)
    client = MlflowClient(mlflow_server.url)
    runs = check(got, err, env, client, alphas)
    # a link to the run for a server store
    first = next(r for r in runs if r.data.tags["azureml.v1.run_id"] == got["ids"][0])
    link = f"{mlflow_server.url}/#/experiments/{first.info.experiment_id}/runs/{first.info.run_id}"
    assert f'href="{link}"' in got["html_run"]
    # Run.get_context() is the launcher's one run: only the job's own value in it
    assert got["mlflow_run_id_env"] is None  # MLFLOW_RUN_ID would take over mlflow.start_run()
    job = client.get_run(got["launcher_run"])
    assert job.data.tags["azml_v1_bridge.launcher"] == "one-run"
    assert job.data.metrics == {"job_metric": 1.0} and job.info.status == "FINISHED"
