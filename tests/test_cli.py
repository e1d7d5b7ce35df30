"""`azml-v1-bridge run / doctor` and `python -m azml_v1_bridge`, as real subprocesses.

Scripts here never import azml_v1_bridge: the launcher's sitecustomize does.
Data is read back from real sqlite stores (or a real `mlflow server`) with MlflowClient.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from servers import free_port

PASSWORD = "Pa55-w0rd-zz9"

V1_SCRIPT = """
    import sys
    from azureml.core import Run
    run = Run.get_context()
    for i in range(3):
        run.log("loss", 1.0 / (i + 1))
    run.tag("stage", "dev")
    if len(sys.argv) > 1 and sys.argv[1] == "crash":
        raise RuntimeError("training blew up")
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""


def cli():
    """The installed console script if there is one, else the same CLI through -m."""
    found = shutil.which("azml-v1-bridge", path=os.path.dirname(sys.executable))
    return [found] if found else [sys.executable, "-m", "azml_v1_bridge_tools.cli"]


def child_env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def launch(args, cwd, env=None, timeout=180):
    return subprocess.run(args, cwd=cwd, env=child_env(env), capture_output=True, text=True,
                          timeout=timeout)


def write(path, code):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


def all_runs(client):
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def read_json_artifact(client, run_id, path):
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                tracking_uri=client._tracking_client.tracking_uri)
    with open(local, encoding="utf-8") as fh:
        return json.load(fh)


# ---------------------------------------------------------------- run

def test_run_bridges_an_unmodified_script_and_without_it_nothing_lands(store, tmp_path):
    script = write(tmp_path / "train.py", V1_SCRIPT)
    plain = launch([sys.executable, str(script)], tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert all_runs(store) == []  # no launcher, no import: v1 only

    result = launch(cli() + ["run", "--", sys.executable, str(script)], tmp_path)
    assert result.returncode == 0, result.stderr
    runs = all_runs(store)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"loss": pytest.approx(1 / 3)}
    assert [m.value for m in store.get_metric_history(run.info.run_id, "loss")] == pytest.approx([1, 1 / 2, 1 / 3])
    assert run.data.tags["stage"] == "dev"
    assert run.data.tags["mlflow.source.name"] == "train.py"


def test_module_target_shell_wrapper_and_python_subprocess_are_bridged(store, tmp_path):
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "__main__.py", """
        import subprocess, sys
        from azureml.core import Run
        Run.get_context().log("from_module", 1)
        # a shell wrapper that starts another Python: it must be bridged too
        sys.exit(subprocess.call(["sh", "-c", f'exec "{sys.executable}" worker.py']))
    """)
    write(tmp_path / "worker.py", """
        from azureml.core import Run
        Run.get_context().log("from_worker", 2)
    """)
    result = launch(cli() + ["run", "--run-per-process", "--experiment", "launched", "--",
                             sys.executable, "-m", "pkg"], tmp_path)
    assert result.returncode == 0, result.stderr
    experiment = store.get_experiment_by_name("launched")
    runs = store.search_runs([experiment.experiment_id])
    metrics = sorted((r.data.tags["mlflow.source.name"], r.data.metrics) for r in runs)
    assert metrics == [("__main__.py", {"from_module": 1.0}), ("worker.py", {"from_worker": 2.0})]
    assert all(r.info.status == "FINISHED" for r in runs)

    # the default: the whole command is one run, as a v1 job was
    result = launch(cli() + ["run", "--experiment", "one-job", "--", sys.executable, "-m", "pkg"], tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = store.search_runs([store.get_experiment_by_name("one-job").experiment_id])
    assert run.data.metrics == {"from_module": 1.0, "from_worker": 2.0}
    assert run.info.status == "FINISHED"
    assert launch(cli() + ["run", "--one-run", "--run-per-process", "--", "true"], tmp_path).returncode == 2


def test_no_run_up_front_in_off_mode_or_when_a_run_is_given(store, tmp_path):
    script = write(tmp_path / "train.py", V1_SCRIPT)
    result = launch(cli() + ["run", "--mode", "off", "--", sys.executable, str(script)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert all_runs(store) == []  # nothing bridged, nothing made
    given = store.create_run(store.get_experiment_by_name("Default").experiment_id).info.run_id
    result = launch(cli() + ["run", "--", sys.executable, str(script)], tmp_path,
                    env={"MLFLOW_RUN_ID": given})
    assert result.returncode == 0, result.stderr
    assert "already set" not in result.stderr  # quietly: every process logs to the given run
    (run,) = all_runs(store)
    assert run.info.run_id == given and run.data.metrics["loss"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("command, expected", [
    (["-c", "import sys; sys.exit(0)"], 0),
    (["-c", "import sys; sys.exit(3)"], 3),
    (["-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"], 128 + signal.SIGTERM),
])
def test_exit_code_passes_through(tmp_path, command, expected):
    result = launch(cli() + ["run", "--", sys.executable] + command, tmp_path)
    assert result.returncode == expected, result.stderr


def test_signals_to_the_launcher_reach_the_command(tmp_path):
    code = "import time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen(cli() + ["run", "--", sys.executable, "-c", code], cwd=tmp_path,
                            env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_or_no_command(tmp_path):
    result = launch(cli() + ["run", "--", "no-such-program-azml"], tmp_path)
    assert result.returncode == 127
    assert "no-such-program-azml: command not found" in result.stderr
    result = launch(cli() + ["run"], tmp_path)
    assert result.returncode == 2 and "no COMMAND" in result.stderr


def test_crash_passes_exit_code_and_fails_the_run(store, tmp_path):
    script = write(tmp_path / "train.py", V1_SCRIPT)
    result = launch(cli() + ["run", "--", sys.executable, str(script), "crash"], tmp_path)
    assert result.returncode == 1
    assert "RuntimeError: training blew up" in result.stderr
    (run,) = all_runs(store)
    assert run.info.status == "FAILED"
    assert run.data.metrics["loss"] == pytest.approx(1 / 3)


def test_python_m_azml_v1_bridge_runs_a_script(store, tmp_path):
    write(tmp_path / "train.py", V1_SCRIPT)
    write(tmp_path / "argv.py", """
        import sys
        print("ARGV", sys.argv, "PATH0", sys.path[0])
        exec(open("train.py").read())
    """)
    result = launch([sys.executable, "-m", "azml_v1_bridge", "argv.py", "3"], tmp_path)
    assert result.returncode == 3, result.stderr
    assert f"ARGV ['argv.py', '3'] PATH0 {tmp_path}" in result.stdout
    (run,) = all_runs(store)
    assert run.data.metrics["loss"] == pytest.approx(1 / 3)


def test_bad_mode_fails_loudly(tmp_path):
    # the option: argparse refuses it
    result = launch(cli() + ["run", "--mode", "bogus", "--", sys.executable, "-c", "print('ran')"], tmp_path)
    assert result.returncode == 2 and "ran" not in result.stdout
    # the variable, seen by the launcher
    result = launch(cli() + ["run", "--", sys.executable, "-c", "print('ran')"], tmp_path,
                    env={"AZML_V1_BRIDGE_MODE": "bogus"})
    assert result.returncode != 0 and "ran" not in result.stdout
    assert "AZML_V1_BRIDGE_MODE='bogus' is not a valid mode" in result.stderr
    # the variable, set by a wrapper between the launcher and Python: the child stops at start
    wrapper = f"AZML_V1_BRIDGE_MODE=bogus exec \"{sys.executable}\" -c \"print('ran')\""
    result = launch(cli() + ["run", "--", "sh", "-c", wrapper], tmp_path)
    assert result.returncode == 2 and "ran" not in result.stdout
    assert "AZML_V1_BRIDGE_MODE='bogus' is not a valid mode" in result.stderr


@pytest.mark.slow
def test_chains_to_an_existing_sitecustomize_and_survives_missing_methods(store, tmp_path):
    # Another sitecustomize (a venv's, another tool's) that also stands in for an older
    # azureml-core: Run lacks a method the bridge patches.
    other = tmp_path / "other"
    write(other / "sitecustomize.py", """
        import os
        os.environ["OTHER_SITECUSTOMIZE"] = "ran"
        import azureml.core.run as run_module
        del run_module.Run.log_residuals
        del run_module._OfflineRun.log_residuals
    """)
    script = write(tmp_path / "train.py", """
        import os, sys
        from azureml.core import Run
        print("OTHER", os.environ.get("OTHER_SITECUSTOMIZE"), hasattr(Run, "log_residuals"))
        print("BRIDGED", "azml_v1_bridge" in sys.modules)
        Run.get_context().log("still_bridged", 1)
    """)
    env = {"PYTHONPATH": str(other) + os.pathsep + ROOT}
    result = launch(cli() + ["run", "--", sys.executable, str(script)], tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "OTHER ran False" in result.stdout and "BRIDGED True" in result.stdout
    (run,) = all_runs(store)
    assert run.data.metrics == {"still_bridged": 1.0}

    # doctor, with that azureml-core: the missing method is named, and it is not an error
    doctor = launch([sys.executable, "-m", "azml_v1_bridge_tools.cli", "doctor"], tmp_path, env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "Run.log_residuals" in doctor.stdout and "_OfflineRun.log_residuals" in doctor.stdout


@pytest.mark.slow
def test_one_run_gives_every_process_the_same_run(store, tmp_path):
    write(tmp_path / "rank.py", """
        import sys
        from azureml.core import Run
        run = Run.get_context()
        run.log(f"loss_rank{sys.argv[1]}", 0.5)
        run.tag(f"rank{sys.argv[1]}", "here")
    """)
    py = sys.executable
    ranks = (f'AZML_V1_BRIDGE_RANK=0 "{py}" rank.py 0 & p=$!; '
             f'AZML_V1_BRIDGE_RANK=1 "{py}" rank.py 1; r=$?; wait $p; exit $(( $? | r ))')
    result = launch(cli() + ["run", "--one-run", "--experiment", "ranks", "--run-name", "job", "--",
                             "sh", "-c", ranks], tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = store.search_runs([store.get_experiment_by_name("ranks").experiment_id])
    assert run.info.run_name == "job"
    assert run.info.status == "FINISHED"
    # rank 1 writes its own series (ranks.py): `<key>/rank_1`
    assert run.data.metrics == {"loss_rank0": 0.5, "loss_rank1/rank_1": 0.5}
    report = read_json_artifact(store, run.info.run_id, "azml_v1_bridge/report.json")
    assert report["calls"] == {"log": 2, "tag": 2}
    assert sorted(p["rank"] for p in report["processes"]) == ["0", "1"]
    assert report["status"] == "FINISHED" and report["exit_code"] == 0

    # a failing command: its code passes through and the run is FAILED
    result = launch(cli() + ["run", "--one-run", "--experiment", "ranks", "--",
                             sys.executable, "-c", "import sys; sys.exit(4)"], tmp_path)
    assert result.returncode == 4
    runs = store.search_runs([store.get_experiment_by_name("ranks").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]

    # exit code 0, but a process says its v1 run failed (run.fail() in one rank): FAILED
    tell = ("import os; from mlflow.tracking import MlflowClient; MlflowClient().set_tag("
            "os.environ['AZML_V1_BRIDGE_LAUNCHER_RUN_ID'], 'azml_v1_bridge.process_status.rank3', 'FAILED')")
    result = launch(cli() + ["run", "--one-run", "--experiment", "ranks", "--run-name", "told", "--",
                             sys.executable, "-c", tell], tmp_path)
    assert result.returncode == 0, result.stderr
    (told,) = [r for r in store.search_runs([store.get_experiment_by_name("ranks").experiment_id])
               if r.info.run_name == "told"]
    assert told.info.status == "FAILED"


# ---------------------------------------------------------------- doctor

def test_doctor_on_a_good_setup(store, tmp_path):
    store.search_experiments()  # the store exists
    result = launch(cli() + ["doctor", "--experiment", "new-exp"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "mirror (default" in out
    assert f"sqlite:///{tmp_path}/mlflow.db (MLFLOW_TRACKING_URI)" in out
    assert "tracking store  answers (sqlite)" in out
    assert "'new-exp' (MLFLOW_EXPERIMENT_NAME): does not exist yet" in out
    for name in ("Python 3.", "azureml-core 1.", "mlflow ", "wrapt "):
        assert name in out
    assert "Run 23/23 present, 23 patched" in out
    assert "OK: nothing found" in out
    assert result.stderr == ""


def test_doctor_names_an_unreachable_store_and_hides_its_password(tmp_path):
    port = free_port()
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
    result = launch(cli() + ["doctor", "--timeout", "3"], tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 1
    problems = result.stderr.strip().splitlines()
    assert problems == [f"azml-v1-bridge doctor: problem: tracking store http://***@127.0.0.1:{port}: "
                        f"connection refused: nothing listens at 127.0.0.1:{port} (is `mlflow server` "
                        "running, on that port?)"]
    assert PASSWORD not in result.stdout + result.stderr


def test_doctor_flags_what_stops_data(store, tmp_path):
    store.search_experiments()
    deleted = store.create_experiment("gone")
    store.delete_experiment(deleted)
    result = launch(cli() + ["doctor", "--mode", "off"], tmp_path,
                    env={"MLFLOW_EXPERIMENT_ID": deleted})
    assert result.returncode == 1
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 2
    assert "AZML_V1_BRIDGE_MODE=off" in problems[0]
    assert f"experiment id {deleted} ('gone') is deleted" in problems[1]


@pytest.mark.server
def test_password_in_the_tracking_uri_never_appears(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = mlflow_server.url.replace("http://", f"http://alice:{PASSWORD}@")
    script = write(tmp_path / "train.py", V1_SCRIPT)
    env = {"AZML_V1_BRIDGE_REPORT": "1", "MLFLOW_EXPERIMENT_NAME": "password-test"}
    result = launch(cli() + ["run", "--tracking-uri", uri, "--", sys.executable, str(script), "3"],
                    tmp_path, env=env)
    assert result.returncode == 3, result.stderr
    assert "azml_v1_bridge report" in result.stderr
    doctor = launch(cli() + ["doctor", "--tracking-uri", uri], tmp_path, env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "http://***@127.0.0.1" in doctor.stdout
    for output in (result.stdout, result.stderr, doctor.stdout, doctor.stderr):
        assert PASSWORD not in output
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("password-test").experiment_id])
    assert run.data.metrics["loss"] == pytest.approx(1 / 3)
    assert PASSWORD not in json.dumps(read_json_artifact(client, run.info.run_id, "azml_v1_bridge/report.json"))


# ---------------------------------------------------------------- in-process pieces

def test_options_are_the_variables_and_bootstrap_goes_first_once():
    import argparse

    from azml_v1_bridge import config
    from azml_v1_bridge_tools import cli as cli_module

    args = argparse.Namespace(mode="mlflow", tracking_uri="sqlite:///x.db", experiment="e",
                              journal=None, no_report=True)
    env = cli_module.apply_config_options(args, {config.MLFLOW_EXPERIMENT_ID: "7"})
    assert env == {config.MODE: "mlflow", config.MLFLOW_TRACKING_URI: "sqlite:///x.db",
                   config.MLFLOW_EXPERIMENT_NAME: "e", config.REPORT: "0"}
    boot = cli_module.BOOTSTRAP_DIR
    assert cli_module.with_bootstrap(None) == boot
    assert cli_module.with_bootstrap("a" + os.pathsep + boot) == boot + os.pathsep + "a"
    assert os.path.isfile(os.path.join(boot, "sitecustomize.py"))


def test_unknown_and_missing_subcommands(capsys):
    from azml_v1_bridge_tools import cli as cli_module

    assert cli_module.main(["frobnicate"]) == 2
    assert cli_module._delegate("no_such_tool", []) == 2
    assert "azml_v1_bridge_tools.no_such_tool is missing" in capsys.readouterr().err


# ---------------------------------------------------------------- which python

def test_a_python_on_path_without_the_bridge_is_replaced_by_the_launchers(store, tmp_path):
    # A real other interpreter first on PATH: a bare venv that cannot import the bridge.
    other = tmp_path / "other-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(other)], check=True, timeout=120)
    script = write(tmp_path / "train.py", V1_SCRIPT)
    env = dict(os.environ)
    env["PATH"] = str(other / "bin") + os.pathsep + env["PATH"]
    env.pop("PYTHONPATH", None)  # the launcher's venv has the package installed; the other has nothing
    result = subprocess.run(cli() + ["run", "--", "python", str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert (f"`python` on PATH is {other}/bin/python, which cannot import azml_v1_bridge; running COMMAND "
            f"with the launcher's own interpreter {os.path.dirname(sys.executable)}/python") in result.stderr
    (run,) = all_runs(store)
    assert run.data.metrics["loss"] == pytest.approx(1 / 3)


def test_a_python_on_path_with_the_bridge_is_used_as_is(tmp_path):
    from azml_v1_bridge_tools import cli as cli_module

    here = os.path.dirname(sys.executable)
    env = {"PATH": here + os.pathsep + os.environ["PATH"]}
    assert cli_module.bridged_python(["python", "x.py"], env) == ["python", "x.py"]
    assert cli_module.bridged_python(["/usr/bin/env", "python"], env) == ["/usr/bin/env", "python"]
    assert cli_module.bridged_python(["pythonista"], env) == ["pythonista"]
