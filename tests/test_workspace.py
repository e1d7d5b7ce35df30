"""mlflow mode without Azure: workspace, experiments, refetch, model registry (issue 14).

Real azureml-core classes throughout; MLflow is a fresh sqlite store, or a real `mlflow server`
on 127.0.0.1 for the registry over HTTP. The notebook-shaped script runs as a real
subprocess with every non-loopback connection refused and recorded: nothing may reach out.
"""
import json
import os
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import NO_NETWORK, run_script  # noqa: E402

NOTEBOOK = NO_NETWORK + r'''
import time

import azml_v1_bridge
from azureml.core import Experiment, Run, Workspace
from azureml.core.model import Model

started = time.monotonic()
ws = Workspace.from_config()                         # no config file, no sign-in
experiment = Experiment(workspace=ws, name="notebook-exp")
run = experiment.start_logging(snapshot_directory=None)
for epoch in range(5):
    run.log("loss", 1.0 / (epoch + 1))
run.log("accuracy", 0.93)
run.tag("stage", "dev")
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.pkl", "wb") as fh:          # never uploaded by the script itself
    fh.write(b"pickled model bytes")
model = run.register_model(model_name="notebook-model", model_path="outputs/model.pkl",
                           tags={"area": "churn"}, properties={"auc": "0.91"},
                           description="first model")
run.complete()

again = Run(experiment, run.id)                      # refetch by the id the bridge gave out
second = experiment.start_logging()
second.log("loss", 0.5)
second.complete()
out = {
    "ws": [ws.name, type(ws).__name__],
    "model": [model.name, model.version, model.id, model.tags, model.properties, model.description,
              model.run_id, type(model).__name__],
    "refetched_metrics": again.get_metrics(),
    "refetched_status": again.get_status(),
    "refetched_experiment": again.experiment.name,
    "runs": [r.id for r in experiment.get_runs()],
    "ids": [run.id, second.id],
    "experiments": sorted(e.name for e in Experiment.list(ws)),
    "ws_experiments": sorted(ws.experiments),
    "model_again": [Model(ws, "notebook-model").version, Model(ws, "notebook-model", version=1).id],
    "models": [(m.name, m.version) for m in Model.list(ws)],
    "seconds": time.monotonic() - started,
    "reached": reached,
}
print("RESULT " + json.dumps(out))
'''


def result_of(proc) -> dict:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_a_notebook_runs_from_from_config_to_register_model_without_azure(mlflow_server, tmp_path,
                                                                         monkeypatch):
    from mlflow.tracking import MlflowClient

    env = {"AZML_V1_BRIDGE_MODE": "mlflow", "MLFLOW_TRACKING_URI": mlflow_server.url,
           "HOME": str(tmp_path / "home")}
    got = result_of(run_script(NOTEBOOK, tmp_path, env=env))
    assert got["reached"] == []
    assert got["ws"] == ["mlflow", "Workspace"]
    name, version, model_id, tags, properties, description, run_id, kind = got["model"]
    assert (name, model_id, tags, properties, description, kind) == (
        "notebook-model", f"notebook-model:{version}", {"area": "churn"}, {"auc": "0.91"},
        "first model", "Model")
    first_id, second_id = got["ids"]
    assert run_id == first_id
    assert got["refetched_metrics"] == {"loss": [1.0, 0.5, 1 / 3, 0.25, 0.2], "accuracy": 0.93}
    assert got["refetched_status"] == "Completed"
    assert got["refetched_experiment"] == "notebook-exp"
    assert got["runs"] == [second_id, first_id]  # newest first, as v1
    assert "notebook-exp" in got["experiments"] and "notebook-exp" in got["ws_experiments"]
    assert got["model_again"] == [version, f"notebook-model:{version}"]
    assert (name, version) in [tuple(m) for m in got["models"]]

    # what the registry holds, read with MLflow's own client over HTTP
    client = MlflowClient(mlflow_server.url)
    mv = client.get_model_version("notebook-model", str(version))
    run = client.get_run(mv.run_id)
    assert run.data.tags["azureml.v1.run_id"] == first_id
    assert mv.description == "first model" and mv.tags["area"] == "churn"
    local = client.download_artifacts(mv.run_id, "outputs/model.pkl", str(tmp_path))
    assert open(local, "rb").read() == b"pickled model bytes"  # uploaded before registering
    import mlflow  # and the version itself downloads with MLflow's models:/ URI, over HTTP

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_server.url)
    got_model = mlflow.artifacts.download_artifacts(f"models:/notebook-model/{version}",
                                                    dst_path=str(tmp_path / "mv"),
                                                    tracking_uri=mlflow_server.url)
    assert os.listdir(got_model) == ["model.pkl"]
    assert open(os.path.join(got_model, "model.pkl"), "rb").read() == b"pickled model bytes"
    assert not os.path.exists(tmp_path / "home" / ".azureml")


# ---------------------------------------------------------------- in-process

@pytest.fixture
def mlflow_mode(bridge):
    bridge.enable("mlflow")
    return bridge


@pytest.fixture
def ws(mlflow_mode):
    from azureml.core import Workspace

    return Workspace.from_config()


def test_every_way_to_get_a_workspace_gives_one_without_azure(mlflow_mode, tmp_path):
    from azureml.core import Workspace

    (tmp_path / ".azureml").mkdir()
    (tmp_path / ".azureml" / "config.json").write_text(json.dumps(
        {"subscription_id": "sub-1", "resource_group": "rg-1", "workspace_name": "team-ws"}))
    from_file = Workspace.from_config()
    assert (from_file.name, from_file.subscription_id, from_file.resource_group) == ("team-ws", "sub-1", "rg-1")
    got = Workspace.get("named", subscription_id="s", resource_group="g")
    direct = Workspace("s2", "g2", "direct")
    assert (got.name, direct.name, direct.resource_group) == ("named", "direct", "g2")
    assert all(isinstance(w, Workspace) for w in (from_file, got, direct))
    assert direct.get_mlflow_tracking_uri().startswith("sqlite:///")


USERS_CALLS = {
    "datastores": "Workspace.datastores", "compute_targets": "Workspace.compute_targets",
    "environments": "Workspace.environments", "datasets": "Workspace.datasets",
    "get_default_datastore": "Workspace.get_default_datastore()",
    "get_details": "Workspace.get_details()", "service_context": "Workspace.service_context",
    "Environment.get": "Environment.get()", "Datastore.get": "Datastore.get()",
    "ComputeTarget": "ComputeTarget(...)", "submit": "Experiment.submit()",
    "auth": "signing in to Azure",
}


@pytest.mark.parametrize("use", [
    lambda ws: ws.datastores, lambda ws: ws.compute_targets, lambda ws: ws.environments,
    lambda ws: ws.datasets, lambda ws: ws.get_default_datastore(), lambda ws: ws.get_details(),
    lambda ws: ws.service_context,
    lambda ws: __import__("azureml.core", fromlist=["Environment"]).Environment.get(ws, "env"),
    lambda ws: __import__("azureml.core", fromlist=["Datastore"]).Datastore.get(ws, "store"),
    lambda ws: __import__("azureml.core", fromlist=["ComputeTarget"]).ComputeTarget(ws, "gpu"),
    lambda ws: __import__("azureml.core", fromlist=["Experiment"]).Experiment(ws, "e").submit(None),
    lambda ws: ws._auth.get_authentication_header(),
], ids=["datastores", "compute_targets", "environments", "datasets", "get_default_datastore",
        "get_details", "service_context", "Environment.get", "Datastore.get", "ComputeTarget",
        "submit", "auth"])
def test_azure_services_raise_one_clear_error_at_once(ws, use, request):
    from azureml.exceptions import UserErrorException

    import azml_v1_bridge

    started = time.monotonic()
    with pytest.raises(azml_v1_bridge.NoAzureError) as caught:
        use(ws)
    assert isinstance(caught.value, UserErrorException)
    # named by the call the user made, not the azureml-core internal that needed the service
    assert caught.value.call == USERS_CALLS[request.node.callspec.id]
    assert time.monotonic() - started < 10  # no sign-in prompt, no network wait
    message = str(caught.value)
    assert "needs the Azure ML service" in message and "AZML_V1_BRIDGE_MODE=mlflow" in message
    assert "AZML_V1_BRIDGE_MODE=mirror" in message  # what to do


def test_mirror_mode_keeps_v1s_own_workspace(bridge, tmp_path):
    from azureml.core import Workspace
    from azureml.exceptions import UserErrorException

    bridge.enable("mirror")
    with pytest.raises(UserErrorException, match="config.json, could not be found"):
        Workspace.from_config(path=str(tmp_path))


def test_experiments_are_mlflow_experiments_created_when_first_used(ws, store):
    from azureml.core import Experiment

    experiment = Experiment(ws, "made-here")
    assert store.get_experiment_by_name("made-here") is None  # nothing yet
    assert list(experiment.get_runs()) == []
    assert experiment.id == store.get_experiment_by_name("made-here").experiment_id
    experiment.set_tags({"team": "ml"})
    assert experiment.tags == {"team": "ml"}
    names = [e.name for e in Experiment.list(ws)]
    assert names == ["Default", "made-here"]
    assert Experiment.list(ws, experiment_name="made-here")[0].id == experiment.id
    assert set(ws.experiments) == {"Default", "made-here"}
    assert repr(experiment) == "Experiment(Name: made-here,\nWorkspace: mlflow)"


def test_get_runs_newest_first_with_v1s_filters(ws, store):
    from azureml.core import Experiment, Run

    experiment = Experiment(ws, "listing")
    runs = []
    for i in range(3):
        run = experiment.start_logging()
        run.log("i", i)
        run.tag("parity", "even" if i % 2 == 0 else "odd")
        run.add_properties({"index": str(i)})
        child = run.child_run(name="part")
        child.log("c", i)
        if i == 1:
            run.fail()
        else:
            run.complete()
        runs.append(run)
        time.sleep(0.002)  # distinct start times (milliseconds): the order is the start order
    ids = [r.id for r in runs]
    assert [r.id for r in experiment.get_runs()] == ids[::-1]
    assert [r.id for r in Run.list(experiment)] == ids[::-1]
    assert [r.id for r in experiment.get_runs(tags={"parity": "even"})] == [ids[2], ids[0]]
    assert [r.id for r in experiment.get_runs(tags="parity")] == ids[::-1]
    assert [r.id for r in experiment.get_runs(properties={"index": "1"})] == [ids[1]]
    assert [r.id for r in Run.list(experiment, status="Failed")] == [ids[1]]
    with_children = [r.id for r in experiment.get_runs(include_children=True)]
    assert len(with_children) == 6 and set(ids) <= set(with_children)
    listed = next(iter(experiment.get_runs()))
    assert listed.get_metrics() == {"i": 2.0} and listed.experiment.name == "listing"
    assert [c.get_metrics() for c in listed.get_children()] == [{"c": 2.0}]


def test_wait_for_completion_waits_for_another_processes_run(ws, store):
    import threading

    from azureml.core import Experiment, Run

    experiment = Experiment(ws, "waiting")
    other = store.create_run(experiment.id, tags={"azureml.v1.run_id": "other-process-run"})
    store.log_metric(other.info.run_id, "loss", 0.5)
    seen = threading.Event()

    def end_it():  # the other process ends its run once the wait has read it running
        seen.wait(120)
        store.set_terminated(other.info.run_id, "FINISHED")

    refetched = Run(experiment, "other-process-run")
    assert refetched.get_status() == "Running"
    seen.set()
    threading.Thread(target=end_it, daemon=True).start()
    details = refetched.wait_for_completion()
    assert details["status"] == "Completed" and details["runId"] == "other-process-run"
    assert store.get_run(other.info.run_id).info.status == "FINISHED"


def test_refetch_by_id_and_by_workspace(ws, store):
    from azureml.core import Experiment, Run
    from azureml.exceptions import UserErrorException

    experiment = Experiment(ws, "refetch")
    run = experiment.start_logging()
    run.log_list("curve", [3, 2, 1])
    run.complete()
    again = Run(experiment, run.id)
    assert again.get_metrics() == {"curve": [3.0, 2.0, 1.0]}
    assert Run.get(ws, run.id).get_status() == "Completed"
    assert ws.get_run(run.id).id == run.id
    import azml_v1_bridge

    by_mlflow_id = Run(experiment, azml_v1_bridge.mlflow_run_id(run))  # the MLflow run id serves too
    assert by_mlflow_id.get_metrics() == {"curve": [3.0, 2.0, 1.0]}
    with pytest.raises(UserErrorException, match="was not found in MLflow"):
        Run(experiment, "no-such-run")
    fresh = experiment.start_logging()
    fresh.log("just", 1)  # no flush, no complete: the refetch waits for the writer
    assert Run(experiment, fresh.id).get_metrics() == {"just": 1.0}
    assert Run(experiment, fresh.id).get_status() == "Running"


def test_model_registry_on_sqlite(ws, store, tmp_path):
    from azureml.core import Experiment
    from azureml.core.model import Model

    (tmp_path / "model.bin").write_bytes(b"v1")
    first = Model.register(ws, model_path="model.bin", model_name="reg", tags={"k": "1"},
                           properties={"p": "a"}, description="from a file")
    assert (first.name, first.version, first.id, first.tags, first.properties, first.description) == (
        "reg", 1, "reg:1", {"k": "1"}, {"p": "a"}, "from a file")
    run = Experiment(ws, "models").start_logging()
    assert (tmp_path / "outputs").is_dir()  # start_logging made it, as v1 does
    (tmp_path / "outputs" / "weights.txt").write_text("w")
    run.upload_file("outputs/weights.txt", "outputs/weights.txt")
    second = run.register_model("reg", "outputs/weights.txt", tags={"k": "2"})
    run.complete()
    assert second.version == 2 and second.run_id == run.id and second.experiment_name == "models"
    assert Model(ws, "reg").version == 2
    assert Model(ws, "reg", version=1).description == "from a file"
    assert Model(ws, id="reg:1").tags == {"k": "1"}
    assert [(m.name, m.version) for m in Model.list(ws, name="reg")] == [("reg", 2), ("reg", 1)]
    assert [m.version for m in Model.list(ws, tags=[["k", "1"]])] == [1]
    assert [m.version for m in Model.list(ws, latest=True)] == [2]
    assert set(ws.models) == {"reg"}
    path = Model(ws, "reg", version=1).download(str(tmp_path / "dl"))
    assert open(path, "rb").read() == b"v1"
    from azureml.exceptions import WebserviceException

    with pytest.raises(WebserviceException, match="no model in MLflow's registry"):
        Model(ws, "reg", version=9)


def test_disable_puts_v1s_classes_back(bridge):
    from azureml.core import Experiment, Run, Workspace
    from azureml.core.model import Model
    from azureml.core.run import _OfflineRun

    bridge.enable("mlflow")
    assert "__new__" in Run.__dict__ and hasattr(_OfflineRun(), "register_model")
    assert hasattr(Workspace.__dict__["from_config"], "_self_wrapper")  # patched: the check below can fail
    bridge.disable()
    try:
        from azml_v1_bridge import patch
        from azureml.core.script_run import ScriptRun

        # __new__ cannot be deleted cleanly (CPython keeps its slot): a neutral one stays, and
        # v1's classes construct with their arguments as before
        assert Run.__dict__["__new__"].__func__ is patch._object_new
        assert type(Run.__new__(Run, "experiment", "run-id")) is Run
        assert type(ScriptRun.__new__(ScriptRun, "experiment", "run-id")) is ScriptRun
        assert "register_model" not in _OfflineRun.__dict__
        for cls, name in ((Workspace, "__init__"), (Workspace, "from_config"), (Experiment, "__init__"),
                          (Experiment, "list"), (Run, "list"), (Model, "__init__"), (Model, "register")):
            assert not hasattr(cls.__dict__[name], "_self_wrapper"), (cls, name)  # no wrapt wrapper
        assert type(Workspace.__dict__["from_config"]) is staticmethod
        assert Workspace.__dict__["experiments"].fget.__qualname__ == "Workspace.experiments"
    finally:
        bridge.enable("mirror")


def test_a_job_scripts_run_experiment_workspace_serves_models(mlflow_mode, store, tmp_path):
    """`ws = run.experiment.workspace` in a training script run outside Azure ML."""
    from azureml.core import Run, Workspace
    from azureml.core.model import Model

    run = Run.get_context()
    run.log("acc", 0.8)
    ws = run.experiment.workspace
    assert isinstance(ws, Workspace) and run.experiment.name == "Default"
    (tmp_path / "model.txt").write_text("m")
    assert Model.register(ws, "model.txt", "job-model").version == 1
    model = run.register_model("job-model", "model.txt")  # a local file: uploaded, then registered
    assert (model.version, model.run_id) == (2, run.id)
    assert "model.txt" in run.get_file_names()


def test_a_workspace_shows_where_its_data_is_without_the_password(ws, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:S3cret-pw@127.0.0.1:9")
    html = ws._repr_html_()  # what a notebook displays: no request is made for it
    assert "S3cret-pw" not in html and "alice" not in html
    assert "<td>http://127.0.0.1:9</td>" in html and 'href="http://127.0.0.1:9"' in html
    assert "<td>00000000-0000-0000-0000-000000000000</td><td>local</td><td>local</td>" in html
