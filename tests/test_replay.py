"""The journal and `azml-v1-bridge replay`: a store that is down gets everything later,
exactly once, however many times the journal is replayed."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_script
from servers import restartable_mlflow_server, running  # noqa: F401  (fixture)
from servers import free_port

TRAINING = """
import time, sys
started = time.monotonic()
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
run.add_properties({"lr": "0.1", "epochs": "3"})
run.tag("stage", "dev")
for i in range(2500):
    run.log("loss", 1.0 / (i + 1))
for i in range(200):
    run.log_row("table", epoch=i, acc=i / 200)
run.log("status", "warming up")
run.log("status", "done")
open("weights.bin", "wb").write(bytes(range(256)) * 10)
run.upload_file("outputs/weights.bin", "weights.bin")
child = run.child_run("fold-0")
for i in range(300):
    child.log("fold_loss", float(i), step=i * 2)
child.complete()
run.complete()
print("elapsed", time.monotonic() - started, flush=True)
"""


def client_for(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def runs_in(client):
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def check_training_runs(client, tmp_path, local_ids):
    """Every point, param, tag and artifact of TRAINING, exactly once."""
    import mlflow

    runs = {r.data.tags.get("mlflow.runName"): r for r in runs_in(client)
            if r.data.tags.get("azml_v1_bridge.local_run_id") in local_ids}
    parents = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 2 and len(parents) == 1
    parent = parents[0]
    child = runs["fold-0"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    pid = parent.info.run_id
    loss = client.get_metric_history(pid, "loss")
    assert sorted((m.step, m.value) for m in loss) == [(i, 1.0 / (i + 1)) for i in range(2500)]
    epochs = client.get_metric_history(pid, "table.epoch")
    assert sorted((m.step, m.value) for m in epochs) == [(i, float(i)) for i in range(200)]
    folds = client.get_metric_history(child.info.run_id, "fold_loss")
    assert sorted((m.step, m.value) for m in folds) == [(i * 2, float(i)) for i in range(300)]
    assert parent.data.params == {"lr": "0.1", "epochs": "3"}
    assert parent.data.tags["stage"] == "dev"
    assert parent.info.status == child.info.status == "FINISHED"
    dst = tmp_path / f"artifacts-{time.monotonic_ns()}"
    local = mlflow.artifacts.download_artifacts(run_id=pid, dst_path=str(dst),
                                                tracking_uri=client._tracking_client.tracking_uri)
    assert open(os.path.join(local, "outputs", "weights.bin"), "rb").read() == bytes(range(256)) * 10
    assert open(os.path.join(local, "status.txt")).read() == "warming up\ndone\n"
    table = json.load(open(os.path.join(local, "table.json")))
    assert table["epoch"] == list(range(200))
    return parent, child


@pytest.mark.server
def test_server_down_for_the_whole_run_then_replay(restartable_mlflow_server, tmp_path):
    """Down all run: the script warns once naming the journal and finishes promptly; replay
    delivers everything to the server it was headed to; replaying again adds nothing."""
    server = restartable_mlflow_server
    server.stop()  # down for the whole run (a no-op unless an earlier test started it)
    journal = tmp_path / "spill" / "journal.jsonl"
    started = time.monotonic()
    result = run_script(TRAINING, tmp_path, env={
        "MLFLOW_TRACKING_URI": server.url, "AZML_V1_BRIDGE_MODE": "mlflow",
        "AZML_V1_BRIDGE_RETRY_SECONDS": "1", "AZML_V1_BRIDGE_JOURNAL": str(journal),
        "AZML_V1_BRIDGE_STRICT": "0"})  # journaling is what strict mode raises for
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert wall < 60, wall
    warnings = [line for line in result.stderr.splitlines() if "is not answering" in line]
    assert len(warnings) == 1 and str(journal) in warnings[0]
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert {line["tracking_uri"] for line in lines if line["t"] == "run"} == {server.url}

    running(server)
    from azml_v1_bridge.delivery.replay import replay_journal

    first = replay_journal(str(journal))            # to the URI the journal recorded
    assert first["errors"] == [] and first["runs_created"] == 2 and first["runs_found"] == 0
    assert first["metrics_sent"] == 2500 + 400 + 300 and first["metrics_skipped"] == 0
    assert first["ends"] == 2
    client = client_for(server.url)
    check_training_runs(client, tmp_path, set(first["runs"]))

    # again, through the command line: everything is found, nothing is sent twice
    again = subprocess.run([sys.executable, "-m", "azml_v1_bridge_tools.replay", str(journal)],
                           env=dict(os.environ, PYTHONPATH=ROOT, MLFLOW_TRACKING_URI=server.url),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "runs_created 0, runs_found 2, metrics_sent 0, metrics_skipped 3200" in again.stdout
    check_training_runs(client, tmp_path, set(first["runs"]))


@pytest.mark.server
def test_server_killed_for_good_mid_run(restartable_mlflow_server, tmp_path):
    """What was sent before the kill is not sent again; what was not is journaled; a replay
    once the server is back completes the run with zero lost and zero duplicated."""
    server = running(restartable_mlflow_server)
    code = """
import sys, time
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
for i in range(4000):
    run.log("loss", float(i), step=i)
run.flush()
print(azml_v1_bridge.mlflow_run_id(run), flush=True)
sys.stdin.readline()            # the test kills the server now
for i in range(4000, 9000):
    run.log("loss", float(i), step=i)
run.complete()
"""
    script = tmp_path / "train.py"
    script.write_text(code)
    journal = tmp_path / "journal.jsonl"
    env = dict(os.environ, PYTHONPATH=ROOT, MLFLOW_TRACKING_URI=server.url,
               AZML_V1_BRIDGE_MODE="mlflow", AZML_V1_BRIDGE_RETRY_SECONDS="1",
               AZML_V1_BRIDGE_JOURNAL=str(journal), AZML_V1_BRIDGE_STRICT="0")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run_id = proc.stdout.readline().strip()
    server.kill()
    out, err = proc.communicate("go\n", timeout=120)
    assert proc.returncode == 0, err
    journaled = [p for line in journal.read_text().splitlines()
                 for p in json.loads(line).get("m", [])]
    assert sorted(p[3] for p in journaled) == list(range(4000, 9000))

    server.start()
    from azml_v1_bridge.delivery.replay import replay_journal

    counts = replay_journal(str(journal))
    assert counts["errors"] == [] and counts["runs_found"] == 1 and counts["runs_created"] == 0
    assert counts["metrics_sent"] == 5000 and counts["metrics_skipped"] == 0
    client = client_for(server.url)
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(9000))
    assert client.get_run(run_id).info.status == "FINISHED"


EVERY_KIND = """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import azml_v1_bridge
from azureml.core import Experiment, Run
run = Run.get_context()
run.log("loss", 0.5)
run.log("nan", float("nan"))
run.log_list("accs", [0.1, 0.2, 0.3])
run.log_list("labels", ["a", "b"])
run.log_row("table", x=1, y="one")
run.log("note", "text value")
run.add_properties({"seed": "42"})
run.set_tags({"team": "vision", "big": "x" * 9000})
run.log_confusion_matrix("cm", {"schema_type": "confusion_matrix", "schema_version": "1.0.0",
                                "data": {"class_labels": ["a", "b"], "matrix": [[3, 1], [0, 4]]}})
plt.plot([1, 2, 3])
run.log_image("curve", plot=plt)
open("model.txt", "w").write("weights")
run.upload_file("outputs/model.txt", "model.txt")
child = run.child_run("child")
child.log("c", 2.0)
child.complete()
run.fail(error_details="boom")
"""


@pytest.fixture(scope="module")
def every_kind_journal(tmp_path_factory):
    """A journal holding every kind of pending work, from a run whose store never answered."""
    tmp_path = tmp_path_factory.mktemp("every-kind")
    journal = tmp_path / "every.jsonl"
    result = run_script(EVERY_KIND, tmp_path, env={
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "AZML_V1_BRIDGE_MODE": "mlflow",
        "AZML_V1_BRIDGE_RETRY_SECONDS": "0.5", "AZML_V1_BRIDGE_JOURNAL": str(journal),
        "MLFLOW_EXPERIMENT_NAME": "journaled", "AZML_V1_BRIDGE_STRICT": "0"})
    assert result.returncode == 0, result.stderr
    return journal


def test_every_kind_of_work_is_journaled_and_replayed(every_kind_journal, tmp_path, monkeypatch):
    import mlflow

    from azml_v1_bridge.delivery.replay import replay_journal
    from azml_v1_bridge_tools.replay import main

    kinds = {json.loads(line)["t"] for line in every_kind_journal.read_text().splitlines()}
    assert kinds == {"journal", "run", "create", "metrics", "params", "tags", "artifact",
                     "image", "end"}
    uri = f"sqlite:///{tmp_path}/target.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([str(every_kind_journal), "--tracking-uri", uri]) == 0
    client = client_for(uri)
    experiment = client.get_experiment_by_name("journaled")
    runs = {r.data.tags.get("mlflow.runName", "?"): r for r in
            client.search_runs([experiment.experiment_id])}
    child = runs.pop("child")
    (parent,) = runs.values()
    pid = parent.info.run_id
    assert child.data.tags["mlflow.parentRunId"] == pid
    assert child.data.metrics == {"c": 2.0} and child.info.status == "FINISHED"
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["loss"] == 0.5 and parent.data.metrics["nan"] != parent.data.metrics["nan"]
    assert [m.value for m in client.get_metric_history(pid, "accs")] == [0.1, 0.2, 0.3]
    assert parent.data.params == {"seed": "42"}
    assert parent.data.tags["team"] == "vision" and parent.data.tags["azureml.v1.error_details"] == "boom"
    local = mlflow.artifacts.download_artifacts(run_id=pid, dst_path=str(tmp_path / "a"),
                                                tracking_uri=uri)
    files = {os.path.relpath(os.path.join(d, f), local).replace(os.sep, "/")
             for d, _, fs in os.walk(local) for f in fs}
    assert {"labels.json", "table.json", "note.txt", "cm.json", "cm.png", "outputs/model.txt",
            "azml_v1_bridge/long_values/tag.big.txt"} <= files
    images = [f for f in files if f.startswith("images/curve+step+0+")]
    assert len(images) == 2  # the PNG and its compressed copy

    again = replay_journal(str(every_kind_journal), tracking_uri=uri)
    assert again["runs_created"] == 0 and again["metrics_sent"] == 0
    assert again["images_sent"] == 0 and again["images_skipped"] == 1
    assert again["params_sent"] == 0 and again["errors"] == []
    local = mlflow.artifacts.download_artifacts(run_id=pid, dst_path=str(tmp_path / "b"),
                                                tracking_uri=uri)
    assert len(os.listdir(os.path.join(local, "images"))) == 2
    assert len(client.get_metric_history(pid, "accs")) == 3


def test_replay_target_precedence(every_kind_journal, tmp_path, monkeypatch):
    """--tracking-uri beats MLFLOW_TRACKING_URI, which beats the journal's recorded URI."""
    from azml_v1_bridge_tools.replay import main

    env_uri = f"sqlite:///{tmp_path}/from_env.db"
    flag_uri = f"sqlite:///{tmp_path}/from_flag.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    assert main([str(every_kind_journal)]) == 0
    assert len(runs_in(client_for(env_uri))) == 2
    assert main([str(every_kind_journal), "--tracking-uri", flag_uri]) == 0
    assert len(runs_in(client_for(flag_uri))) == 2
    assert len(runs_in(client_for(env_uri))) == 2  # untouched the second time


def test_replay_survives_a_torn_last_line(tmp_path, monkeypatch):
    """A process killed mid-write leaves half a line: the rest is delivered, the line reported."""
    from azml_v1_bridge.delivery.replay import replay_journal
    from azml_v1_bridge_tools.replay import main

    journal = tmp_path / "torn.jsonl"
    run_line = {"t": "run", "run": "abc", "tracking_uri": None, "v1_id": "v1", "parent": None,
                "experiment_id": None, "experiment_name": "torn", "mlflow_run_id": None,
                "run_name": "r", "start_ms": 1, "adopted": False, "tags": {}}
    journal.write_text(json.dumps(run_line) + "\n"
                       + json.dumps({"t": "metrics", "run": "abc", "m": [["m", 1.0, 5, 0],
                                                                         ["m", "NaN", 6, 1]]})
                       + "\n" + '{"t": "metrics", "run": "abc", "m": [["m", 2.0')
    uri = f"sqlite:///{tmp_path}/t.db"
    counts = replay_journal(str(journal), tracking_uri=uri)
    assert counts["bad_lines"] == 1 and counts["metrics_sent"] == 2
    assert main([str(journal), "--tracking-uri", uri]) == 1  # reported, still idempotent
    client = client_for(uri)
    (run,) = runs_in(client)
    assert run.data.tags["azml_v1_bridge.local_run_id"] == "abc"
    assert len(client.get_metric_history(run.info.run_id, "m")) == 2


def test_relative_store_paths_resolve_against_the_training_directory():
    from azml_v1_bridge.delivery.replay import resolve_uri

    assert resolve_uri("sqlite:///mlflow.db", "/train") == "sqlite:////train/mlflow.db"
    assert resolve_uri("sqlite:////abs/m.db", "/train") == "sqlite:////abs/m.db"
    assert resolve_uri("mlruns", "/train") == "/train/mlruns"
    assert resolve_uri("http://host:5000", "/train") == "http://host:5000"
    assert resolve_uri("databricks", "/train") == "databricks"


def test_journal_never_records_credentials():
    from azml_v1_bridge.delivery.errors import strip_credentials

    assert strip_credentials("https://user:secret@host:5000/x") == "https://host:5000/x"
    assert strip_credentials("postgresql://u:p@db/mlflow") == "postgresql://db/mlflow"
    assert strip_credentials("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
