"""A legacy v1 script, unchanged, inside an Azure ML v2 command job: the real azureml-mlflow
plugin against a loopback stand-in for the workspace (tests/azure_workspace.py), under Azure's
real host names in a network namespace of its own.

The jobs need the plugin (CI runs this file in .venv-azure, whose MLflow is what azureml-mlflow
pins) and `unshare --net --mount` (root); skipped with the reason otherwise.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

JOB = """
import os
import pickle
{activation}
from azureml.core import Run
from azureml.core.model import Model

run = Run.get_context()
for i in range(5):
    run.log("loss", 1.0 / (i + 1))
run.log_list("accs", [0.5, 0.75])
run.log_row("table", x=1, y=2.5)
run.tag("stage", "azure")
run.set_tags({{"team": "legacy"}})
with open("notes.txt", "w") as f:
    f.write("notes")
run.upload_file("notes/notes.txt", "notes.txt")
child = run.child_run("fold")
child.log("fold_acc", 0.7)
child.complete()
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.pkl", "wb") as f:
    pickle.dump({{"w": 1}}, f)
with open("outputs/summary.txt", "w") as f:
    f.write("done")
m1 = run.register_model("legacy-model", "outputs/model.pkl", tags={{"k": "1"}}, description="from the job")
print("RUN_MODEL", m1.name, m1.version, m1.tags, m1.description, m1.run_id)
with open("standalone.bin", "wb") as f:
    f.write(b"standalone")
m2 = Model.register(run.experiment.workspace, "standalone.bin", "legacy-model", tags={{"k": "2"}},
                    description="no run")
print("WS_MODEL", m2.name, m2.version, m2.tags, m2.description)
m3 = run.register_model("refused-model", "outputs/model.pkl")
print("REFUSED_MODEL", m3.name, m3.version)
os.makedirs("results", exist_ok=True)
with open("results/r.txt", "w") as f:
    f.write("r")
extra = run.experiment.start_logging(outputs="results")  # in a job: the job's run again
extra.log("extra", 1)
extra.complete()
"""

REFUSED = """
import time
import azml_v1_bridge
from azureml.core import Run

run = Run.get_context()
run.log("loss", 0.5)
start = time.monotonic()
azml_v1_bridge.flush()
print("FLUSHED_IN", round(time.monotonic() - start, 1))
print("SCRIPT_WENT_ON")
"""


def _unshare_problem() -> str | None:
    try:
        done = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, text=True,
                              timeout=30)
    except FileNotFoundError:
        return "unshare is not installed"
    if done.returncode != 0:
        return f"unshare --net --mount is not permitted here: {done.stderr.strip()[:200]}"
    return None


def _mlflow_executable() -> str:
    found = os.path.join(os.path.dirname(sys.executable), "mlflow")
    if not os.path.exists(found):
        pytest.skip("the full mlflow (its `mlflow server`) is not installed beside this Python")
    return found


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Three v2 command jobs in the stand-in workspace: token (import line), managed identity
    (launcher, no import line), a refused token. Returns the harness's result."""
    pytest.importorskip("azureml.mlflow", reason="azureml-mlflow is not installed here (CI runs this "
                                                 "file in .venv-azure)")
    problem = _unshare_problem()
    if problem:
        pytest.skip(problem)
    folder = tmp_path_factory.mktemp("azure-job")
    scripts = {}
    for name, code in (("with_import.py", JOB.format(activation="import azml_v1_bridge")),
                       ("no_import.py", JOB.format(activation="")), ("refused.py", REFUSED)):
        scripts[name] = folder / name
        scripts[name].write_text(textwrap.dedent(code))
    env = {"AZML_V1_BRIDGE_MODE": "mlflow", "AZML_V1_BRIDGE_REPORT": "1",
           "PYTHONPATH": ROOT, "HOME": str(folder)}
    spec = {"mlflow": _mlflow_executable(), "experiment": "legacy-exp", "jobs": [
        {"name": "token-job", "auth": "token", "argv": ["{python}", str(scripts["with_import.py"])],
         "env": env},
        {"name": "msi-job", "auth": "msi", "env": env,
         "argv": ["{python}", "-m", "azml_v1_bridge_tools.cli", "run", "--", "{python}",
                  str(scripts["no_import.py"])]},
        {"name": "refused-job", "auth": "refused", "argv": ["{python}", str(scripts["refused.py"])],
         "env": dict(env, AZML_V1_BRIDGE_STRICT="0",
                     AZML_V1_BRIDGE_JOURNAL=str(folder / "refused.jsonl"))},
        {"name": "refused-doctor", "auth": "refused", "env": env,
         "argv": ["{python}", "-m", "azml_v1_bridge_tools.cli", "doctor", "--timeout", "30"]},
        {"name": "refused-thread-writer", "auth": "refused", "argv": ["{python}", str(scripts["refused.py"])],
         "env": dict(env, AZML_V1_BRIDGE_STRICT="0", AZML_V1_BRIDGE_WRITER="thread",
                     AZML_V1_BRIDGE_JOURNAL=str(folder / "refused-thread.jsonl"))},
    ]}
    (folder / "spec.json").write_text(json.dumps(spec))
    result_path = folder / "result.json"
    done = subprocess.run(["unshare", "--net", "--mount", sys.executable, os.path.join(HERE, "azure_workspace.py"),
                           str(folder / "spec.json"), str(result_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    result = json.loads(result_path.read_text())
    result["folder"] = str(folder)
    return result


def _job(result, name_index):
    job = result["jobs"][name_index]
    return job, result["workspace_state"]["runs"][job["run_id"]]


@pytest.mark.parametrize("index", [0, 1], ids=["token-import-line", "managed-identity-launcher"])
def test_every_v1_call_lands_in_the_jobs_run(workspace, index):
    job, run = _job(workspace, index)
    assert job["rc"] == 0, job["stderr"][-4000:]
    state = workspace["workspace_state"]
    # the job's run: left RUNNING (Azure ML ends it), holding every v1 call
    assert run["status"] == "RUNNING" and run["end_time"] is None
    assert run["metrics"]["loss"] == [[i, 1.0 / (i + 1)] for i in range(5)]
    assert run["metrics"]["accs"] == [[0, 0.5], [1, 0.75]]
    assert run["tags"]["stage"] == "azure" and run["tags"]["team"] == "legacy"
    assert run["tags"]["azureml.v1.run_id"] == job["run_id"]  # AZUREML_RUN_ID, not OfflineRun_...
    assert "notes/notes.txt" in run["artifacts"]
    assert any(a.startswith("table") or "table" in a for a in run["artifacts"]), run["artifacts"]
    # ./outputs: a v2 command job uploads it itself; the bridge does not upload it twice; a
    # folder given to start_logging(outputs=...) is the bridge's to upload
    assert not any(a.startswith("outputs/summary") for a in run["artifacts"]), run["artifacts"]
    assert "outputs/r.txt" in run["artifacts"] and run["metrics"]["extra"] == [[0, 1.0]]
    # the child run: in the job's experiment, under the job's run, ended by child.complete()
    children = [r for r in state["runs"].values() if r["tags"].get("mlflow.parentRunId") == job["run_id"]]
    assert len(children) == 1
    assert children[0]["experiment_id"] == workspace["experiment_id"]
    assert children[0]["status"] == "FINISHED" and children[0]["metrics"]["fold_acc"] == [[0, 0.7]]
    # nothing else was created for this job: its run and its child (+ the model's files run: none)
    ours = [rid for rid, r in state["runs"].items()
            if rid == job["run_id"] or r["tags"].get("mlflow.parentRunId") == job["run_id"]]
    assert len(ours) == 2
    assert set(state["experiments"].values()) == {"legacy-exp", "Default"}
    # the cloud is known from the URI: the plugin fetched no cloud metadata from the internet
    assert "unable to load cloud metadata" not in job["stderr"]
    # where the data went: the experiment's name and the run in Azure ML studio
    studio = (f"https://ml.azure.com/runs/{job['run_id']}?wsid=/subscriptions/{workspace['subscription']}"
              f"/resourcegroups/{workspace['resource_group']}/workspaces/{workspace['workspace']}")
    assert studio in job["stderr"], job["stderr"][-3000:]
    assert "'legacy-exp'" in job["stderr"]


def test_models_register_through_the_calls_azure_ml_serves(workspace):
    versions = sorted(workspace["workspace_state"]["model_versions"], key=lambda v: (v["run_id"] or "", v["version"]))
    for index in (0, 1):
        job, run = _job(workspace, index)
        mine = [v for v in workspace["workspace_state"]["model_versions"] if v["run_id"] == job["run_id"]]
        by_tag = {v["tags"].get("k"): v for v in mine}
        assert set(by_tag) == {"1", "2"}, versions
        assert by_tag["1"]["source"] == f"runs:/{job['run_id']}/outputs/model.pkl"
        assert by_tag["1"]["description"] == "from the job"
        assert by_tag["2"]["description"] == "no run"
        assert by_tag["2"]["source"].startswith(f"runs:/{job['run_id']}/")
        assert "RUN_MODEL legacy-model" in job["stdout"] and "{'k': '1'} from the job" in job["stdout"]
        assert "WS_MODEL legacy-model" in job["stdout"] and "{'k': '2'} no run" in job["stdout"]
        # Azure ML's refusal: one line naming the reason, and the script went on
        assert "REFUSED_MODEL refused-model None" in job["stdout"]
        lines = [l for l in job["stderr"].splitlines() if "refused to register model 'refused-model'" in l]
        assert len(lines) == 1 and "(UserError: Model format not supported" in lines[0], job["stderr"][-3000:]
    # nothing else: two versions a job (the refused one is not there), no other run
    assert len(versions) == 4
    assert len(workspace["workspace_state"]["runs"]) == len(workspace["jobs"]) + 2  # + the children
    # no logged-models call (Azure ML answers 404 there)
    assert not [r for r in workspace["requests"] if "logged-models" in r["path"]]


@pytest.mark.parametrize("index", [2, 4], ids=["process-writer", "thread-writer"])
def test_a_refused_token_is_a_sign_in_failure_journaled_at_once(workspace, index):
    job, run = _job(workspace, index)
    assert job["rc"] == 0 and "SCRIPT_WENT_ON" in job["stdout"], job["stderr"][-3000:]
    flushed = float(job["stdout"].split("FLUSHED_IN ")[1].split()[0])
    assert flushed < 20, job["stdout"]  # not the 30 s retry window of an outage
    assert "sign-in refused by Azure ML" in job["stderr"], job["stderr"][-3000:]
    assert "MLFLOW_TRACKING_TOKEN" in job["stderr"] and "expir" in job["stderr"]
    assert "journal" in job["stderr"]
    assert run["metrics"] == {}
    # doctor names the same cause, not MLflow's raw RestException
    doctor = workspace["jobs"][3]
    assert doctor["rc"] != 0
    said = doctor["stdout"] + doctor["stderr"]
    assert "sign-in refused by Azure ML" in said and "MLFLOW_TRACKING_TOKEN's expiry" in said, said[-3000:]
    assert "INTERNAL_ERROR" not in said and "unable to load cloud metadata" not in said
    # refused once each (two jobs' writers, doctor), not retried as an outage
    refusals = [r for r in workspace["requests"] if r["status"] == 401]
    assert 3 <= len(refusals) <= 6, refusals


def test_the_cloud_and_the_studio_link_come_from_the_uri():
    from azml_v1_bridge import azure

    uri = ("azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/S1/resourceGroups/RG"
           "/providers/Microsoft.MachineLearningServices/workspaces/W1")
    env = {"MLFLOW_TRACKING_URI": uri}
    assert azure.set_cloud_default(env) == "AzureCloud" and env["AZUREML_CURRENT_CLOUD"] == "AzureCloud"
    mine = {"MLFLOW_TRACKING_URI": uri, "AZUREML_CURRENT_CLOUD": "AzureUSGovernment"}
    assert azure.set_cloud_default(mine) is None and mine["AZUREML_CURRENT_CLOUD"] == "AzureUSGovernment"
    china = {"MLFLOW_TRACKING_URI": uri.replace("westeurope.api.azureml.ms", "chinaeast2.api.ml.azure.cn")}
    assert azure.set_cloud_default(china) == "AzureChinaCloud"
    for other in ({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}, {}):
        assert azure.set_cloud_default(other) is None and "AZUREML_CURRENT_CLOUD" not in other
    assert azure.studio_url(uri, "r1") == ("https://ml.azure.com/runs/r1?wsid=/subscriptions/S1"
                                           "/resourcegroups/RG/workspaces/W1")
    assert azure.studio_url("http://127.0.0.1:5000", "r1") is None
    job = {"MLFLOW_TRACKING_URI": uri, "AZUREML_RUN_ID": "r1", "MLFLOW_RUN_ID": "r1"}
    assert azure.job_run_id(job) == "r1"
    assert azure.job_run_id(dict(job, MLFLOW_RUN_ID="another")) is None
    assert azure.job_run_id(dict(job, MLFLOW_TRACKING_URI="sqlite:///x.db")) is None
