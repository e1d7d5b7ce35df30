"""The writer process: data lands, a killed training process still delivers what
it logged, and a dead writer process falls back to an in-process writer."""
import os
import signal
import time

import pytest
from conftest import run_script


@pytest.fixture
def process_writer(bridge, monkeypatch):
    monkeypatch.setenv("AZML_V1_BRIDGE_WRITER", "process")
    bridge.enable("mlflow")
    from azml_v1_bridge.bridge import STATE
    from azml_v1_bridge.delivery.sidecar import ProcessWriter

    assert isinstance(STATE.get_writer(), ProcessWriter)
    yield STATE
    monkeypatch.delenv("AZML_V1_BRIDGE_WRITER")


def test_points_land_through_the_writer_process(store, process_writer):
    import azml_v1_bridge
    from azureml.core import Run

    run = Run.get_context()
    for i in range(3000):
        run.log("m", i)
    run.log_row("t", a=1, b="x")
    run.tag("k", "v")
    run.flush()
    rid = azml_v1_bridge.mlflow_run_id(run)
    assert sorted(m.step for m in store.get_metric_history(rid, "m")) == list(range(3000))
    assert store.get_run(rid).data.tags["k"] == "v"
    stats = process_writer.writer.stats
    record = run.__dict__["_azml_v1_bridge_record"]
    assert stats[record.local_id].calls["log"] == 3000  # the child's counts came back
    assert process_writer.writer._proc.pid != os.getpid()


def test_dead_writer_process_falls_back_in_process(store, process_writer):
    import azml_v1_bridge
    from azureml.core import Run

    run = Run.get_context()
    run.log("m", 0)
    run.flush()
    writer = process_writer.writer
    os.kill(writer._proc.pid, signal.SIGKILL)
    writer._proc.wait()
    for i in range(1, 100):
        run.log("m", i)
    with pytest.raises(azml_v1_bridge.BridgeError, match="writer process is gone"):
        run.flush()  # strict mode says so; the data still went through the fallback
    azml_v1_bridge.flush()
    rid = azml_v1_bridge.mlflow_run_id(run)
    assert sorted(m.step for m in store.get_metric_history(rid, "m")) == list(range(100))


def test_training_process_killed_hard_still_delivers(tmp_path):
    code = """
import os, signal, time
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
from azml_v1_bridge.bridge import STATE
for i in range(5000):
    run.log("m", i)
assert STATE.writer.handed_over(120)  # every call is in the writer process's pipe
os.kill(os.getpid(), signal.SIGKILL)
"""
    db = tmp_path / "m.db"
    proc = run_script(code, tmp_path, env={"AZML_V1_BRIDGE_WRITER": "process", "AZML_V1_BRIDGE_MODE": "mlflow",
                                           "MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    assert proc.returncode == -signal.SIGKILL
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the writer process finishes on its own
        runs = client.search_runs(["0"]) if db.exists() else []
        if runs and runs[0].info.status != "RUNNING":
            break
        time.sleep(0.5)
    (run,) = runs
    assert run.info.status == "KILLED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "m")) == list(range(5000))
