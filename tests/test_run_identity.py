"""Where a run lands and what it says about itself: the creator and source MLflow's own
start_run records, the v1 run id on adopted runs, and child runs of the launcher's one run
in that run's experiment."""
import getpass
import os
import subprocess
import sys

from conftest import ROOT, run_script

SCRIPT = """
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
run.log("loss", 0.5)
child = run.child_run("fold")
child.log("fold_loss", 0.25)
child.complete()
print("run", azml_v1_bridge.mlflow_run_id(run), azml_v1_bridge.mlflow_run_id(child), flush=True)
"""


def test_created_runs_say_who_and_what_like_start_run(store, tmp_path):
    result = run_script(SCRIPT, tmp_path, env={"AZML_V1_BRIDGE_MODE": "mlflow"})
    assert result.returncode == 0, result.stderr
    parent_id, child_id = result.stdout.split("run ", 1)[1].split()
    for run_id in (parent_id, child_id):
        tags = store.get_run(run_id).data.tags
        assert tags["mlflow.user"] == getpass.getuser()
        assert tags["mlflow.source.name"] == "script.py"
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["azureml.v1.run_id"]


def test_child_runs_of_the_launchers_run_land_in_its_experiment(store, tmp_path):
    """One job, one run: the launcher's run is in experiment `job`; a child run the script makes
    is nested under it, in `job` too (not the Default experiment)."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, AZML_V1_BRIDGE_MODE="mlflow")
    result = subprocess.run([sys.executable, "-m", "azml_v1_bridge_tools.cli", "run",
                             "--experiment", "job", "--", sys.executable, str(script)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    parent_id, child_id = result.stdout.split("run ", 1)[1].split()
    parent, child = store.get_run(parent_id), store.get_run(child_id)
    job = store.get_experiment_by_name("job")
    assert parent.info.experiment_id == job.experiment_id
    assert child.info.experiment_id == job.experiment_id
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.metrics == {"fold_loss": 0.25}
    # the adopted run carries the v1 run id like every run the bridge writes
    assert parent.data.tags["azureml.v1.run_id"]
