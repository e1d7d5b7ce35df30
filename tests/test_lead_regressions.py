"""Regression tests for the parts of issue 11 the delivery/lifecycle rework fixes.

Expected to FAIL until that work lands (per-run state surviving enable()/disable() and writer
restarts, `sys.exit(3)` -> FAILED, strict mode raising when the store is down, the writer's
robustness to a document name used for two kinds). Real parts only: offline runs, sqlite
stores, fresh interpreters.
"""
import json
import os

import pytest

from conftest import run_script
from servers import free_port


def offline_run():
    from azureml.core.run import _OfflineRun

    return _OfflineRun()


def artifact_text(store, run_id, path, tmp_path):
    with open(store.download_artifacts(run_id, path, str(tmp_path / "dl")), encoding="utf-8") as f:
        return f.read()


def test_text_and_tables_survive_a_mode_switch(bridge, store, tmp_path):
    """enable("mlflow") after mirror-mode logging retired the writer: phase.txt and perf.json
    restarted from empty and overwrote the earlier values."""
    bridge.enable("mirror")
    run = offline_run()
    run.log("phase", "warmup")
    run.log_row("perf", epoch=0)
    run.log("loss", 1.0)
    run.flush()
    bridge.enable("mlflow")  # new settings: a new writer
    run.log("phase", "train")
    run.log_row("perf", epoch=1)
    run.log("loss", 0.5)
    run.flush()
    rid = bridge.mlflow_run_id(run)
    assert artifact_text(store, rid, "phase.txt", tmp_path).split("\n")[:-1] == ["warmup", "train"]
    assert json.loads(artifact_text(store, rid, "perf.json", tmp_path)) == {"epoch": [0, 1]}
    assert sorted((m.step, m.value) for m in store.get_metric_history(rid, "loss")) == [(0, 1.0), (1, 0.5)]


def test_text_survives_disable_and_enable(bridge, store, tmp_path):
    bridge.enable("mirror")
    run = offline_run()
    run.log("phase", "one")
    run.flush()
    bridge.disable()
    bridge.enable("mirror")
    run.log("phase", "two")
    run.flush()
    rid = bridge.mlflow_run_id(run)
    assert artifact_text(store, rid, "phase.txt", tmp_path).split("\n")[:-1] == ["one", "two"]


def test_report_keeps_the_retired_writers_counts(bridge, store, tmp_path):
    bridge.enable("mirror")
    run = offline_run()
    for i in range(3):
        run.log("m", i)
    run.flush()
    bridge.enable("mlflow")
    run.log("m", 3)
    rid = bridge.mlflow_run_id(run)
    bridge.finish()
    report = json.loads(artifact_text(store, rid, "azml_v1_bridge/report.json", tmp_path))
    assert report["calls"]["log"] == 4


def test_sys_exit_3_fails_the_run(store, tmp_path):
    """A v1 job with a non-zero exit failed; the run was left FINISHED."""
    result = run_script("""
        import sys
        import azml_v1_bridge
        from azureml.core.run import Run
        run = Run.get_context()
        run.log("x", 1.0)
        print("RUN", azml_v1_bridge.mlflow_run_id(run), flush=True)
        sys.exit(3)
    """, tmp_path, env={"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]})
    assert result.returncode == 3, result.stderr[-2000:]
    run_id = result.stdout.split("RUN ")[1].split()[0]
    assert store.get_run(run_id).info.status == "FAILED"


def test_sys_exit_0_finishes_the_run(store, tmp_path):
    result = run_script("""
        import sys
        import azml_v1_bridge
        from azureml.core.run import Run
        run = Run.get_context()
        run.log("x", 1.0)
        print("RUN", azml_v1_bridge.mlflow_run_id(run), flush=True)
        sys.exit(0)
    """, tmp_path, env={"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]})
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = result.stdout.split("RUN ")[1].split()[0]
    assert store.get_run(run_id).info.status == "FINISHED"


def test_strict_mode_raises_when_the_store_is_down(tmp_path):
    """README: AZML_V1_BRIDGE_STRICT=1 makes such failures raise BridgeError; flush() and
    complete() returned normally with the store down."""
    result = run_script("""
        import azml_v1_bridge
        from azureml.core.run import Run
        run = Run.get_context()
        run.log("x", 1.0)
        try:
            run.flush()
        except azml_v1_bridge.BridgeError as exc:
            print("FLUSH RAISED", flush=True)
        try:
            run.complete()
        except azml_v1_bridge.BridgeError as exc:
            print("COMPLETE RAISED", flush=True)
    """, tmp_path, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
                        "AZML_V1_BRIDGE_STRICT": "1", "AZML_V1_BRIDGE_RETRY_SECONDS": "1",
                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                        "AZML_V1_BRIDGE_JOURNAL": str(tmp_path / "journal.jsonl")}, timeout=120)
    assert "FLUSH RAISED" in result.stdout, (result.stdout, result.stderr[-2000:])
    assert "COMPLETE RAISED" in result.stdout
    assert (tmp_path / "journal.jsonl").exists()  # and nothing lost


def test_writer_keeps_both_documents_when_one_path_gets_two_kinds(store, tmp_path):
    """The writer itself: a table and a list sent to one path (an older translate, a replayed
    journal) must not raise or drop the cycle's other data. A writer of its own, so a failure
    here cannot leak into other tests."""
    from azml_v1_bridge import config
    from azml_v1_bridge.delivery.writer import Writer
    from azml_v1_bridge.ops import AppendTable, CreateRun, ExtendList, Metric
    from azml_v1_bridge.runs import Registry

    writer = Writer(config.load())
    record, _ = Registry().record_for(offline_run(), "mirror")
    try:
        writer.submit(record, None, [CreateRun()])
        writer.submit(record, "log_row", [AppendTable("doc.json", {"a": [1]})])
        writer.submit(record, "log_list", [ExtendList("doc.json", ["x"])])
        writer.submit(record, "log", [Metric("after", float(i), 0, i) for i in range(100)])
        assert writer.flush(60)
        assert not writer.errors
        rid = record.mlflow_run_id
        assert len(store.get_metric_history(rid, "after")) == 100
        paths = {f.path for f in store.list_artifacts(rid)}
        assert "doc.json" in paths and len([p for p in paths if p.startswith("doc")]) == 2
    finally:
        writer.close(60)
