"""Mirror mode end to end: a real `_SubmittedRun` talking to the loopback
run-history emulator (tests/emulator.py) while MLflow gets the mapped data.

The one replaced piece of azureml-core is its blob upload (it rebuilds blob URLs
as https://{account}.blob...): `loopback_blob_uploads` swaps it for a plain PUT
to the emulator. Everything else is the real client and the real bridge.
"""
import json
import logging
import re
import time

import matplotlib
import pytest
from emulator import RunHistoryEmulator, loopback_blob_uploads, submitted_run, unique_run_id
import azml_v1_bridge  # noqa: E402

matplotlib.use("Agg")

CONF = {"schema_type": "confusion_matrix", "schema_version": "v1",
        "data": {"class_labels": ["0", "1"], "matrix": [[3, 0], [1, 2]]}}
ACC = {"schema_type": "accuracy_table", "schema_version": "v1",
       "data": {"probability_tables": [[[5, 5, 0, 0], [0, 0, 5, 5]], [[5, 5, 0, 0], [0, 0, 5, 5]]],
                "percentile_tables": [], "class_labels": ["0", "1"],
                "probability_thresholds": [0.5], "percentile_thresholds": [0.5]}}
PRED = {"schema_type": "predictions", "schema_version": "v1",
        "data": {"bin_averages": [0.25, 0.75], "bin_errors": [0.013, 0.042],
                 "bin_counts": [56, 34], "bin_edges": [0.0, 0.5, 1.0]}}
RESID = {"schema_type": "residuals", "schema_version": "v1",
         "data": {"bin_edges": [50, 100, 200], "bin_counts": [0.88, 20]}}


def legacy_script(run, folder):
    """Every row of the mapping table, the way a v1 training script calls it."""
    import matplotlib.pyplot as plt

    image = folder / "img.png"
    plt.figure(figsize=(1, 1))
    plt.savefig(image)  # v1 checks it is a real image
    plt.close("all")
    (folder / "tree" / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "tree" / "a.txt").write_text("a")
    (folder / "tree" / "sub" / "b.txt").write_text("b")
    for i in range(3):
        run.log("loss", 1.0 / (i + 1))
    run.log("stepped", 7.5, step=4)
    run.log("converged", True)
    run.log("phase", "train")
    run.log_list("series", [1, 2, 3])
    run.log_row("perf", epoch=0, acc=0.5)
    run.log_row("perf", epoch=1, acc=0.75)
    run.log_table("tbl", {"c1": [1, 2], "c2": [3, 4]})
    run.log_image("picture", path=str(image))
    plt.figure(figsize=(2, 2))
    plt.plot([1, 2, 3])
    run.log_image("plot", plot=plt)
    plt.close("all")
    run.log_confusion_matrix("conf", json.dumps(CONF))
    run.log_accuracy_table("acc_table", ACC)
    run.log_predictions("preds", PRED)
    run.log_residuals("resid", RESID)
    run.tag("owner", "team")
    run.set_tags({"n": 4})
    run.add_properties({"lr": "0.1"})
    run.upload_file("outputs/model.txt", str(folder / "tree" / "a.txt"))
    run.upload_files(["more/1.txt", "more/2.txt"], [str(folder / "tree" / "a.txt"),
                                                     str(folder / "tree" / "sub" / "b.txt")])
    run.upload_folder("folder", str(folder / "tree"))
    run.display_name = "legacy run"
    run.description = "from the e2e test"
    child = run.child_run("fold")
    child.log("fold_metric", 2.0)
    child.complete()
    run.flush()


def normalise(emu, run_id):
    """What the service holds for a run, minus ids and timestamps that differ by design."""
    container = emu.run(run_id)["dataContainerId"]

    def points(name):
        return [(m["value"] if not isinstance(m["value"], str)
                 else re.sub(r"_\d{9,}\.png$", "_T.png", m["value"].replace(container, "CONTAINER")),
                 m["step"]) for m in emu.metrics(run_id, name)]

    names = sorted({m["name"] for m in emu.metrics(run_id)})
    artifacts = {re.sub(r"_\d{9,}\.png$", "_T.png", p): b for p, b in emu.artifacts(run_id).items()}
    return {
        "metrics": {n: points(n) for n in names},
        "tags": {k: v for k, v in emu.tags(run_id).items()},
        "properties": emu.properties(run_id),
        "artifacts": {p: (b if not p.endswith("_T.png") else len(b) > 0) for p, b in artifacts.items()},
        "children": len(emu.children(run_id)),
        "patch_bodies": [json.dumps({k: v for k, v in (r.body or {}).items() if k != "runId"}, sort_keys=True)
                         for r in emu.traffic("run.patch", run_id=run_id)],
    }


@pytest.fixture
def emu():
    with RunHistoryEmulator() as emulator, loopback_blob_uploads(emulator):
        yield emulator
        assert emulator.unhandled() == []


def run_on(emu, monkeypatch, folder):
    run = submitted_run(emu, unique_run_id(), monkeypatch=monkeypatch)
    legacy_script(run, folder)
    return run


def test_mirror_sends_v1_exactly_what_it_sent_without_the_bridge(emu, bridge, store, monkeypatch, tmp_path):
    import azml_v1_bridge

    bridge.disable()
    try:
        baseline = run_on(emu, monkeypatch, tmp_path)
    finally:
        bridge.enable("mirror")
    mirrored = run_on(emu, monkeypatch, tmp_path)  # same files: v1 names artifacts by their path

    off, on = normalise(emu, baseline.id), normalise(emu, mirrored.id)
    assert on == off
    assert [v for v, _ in off["metrics"]["loss"]] == [1.0, 0.5, 1 / 3]
    assert off["metrics"]["stepped"] == [(7.5, 4)] and len(off["artifacts"]) >= 9

    # ...and MLflow got the mapped data, agreeing with what the service got
    r = store.get_run(azml_v1_bridge.mlflow_run_id(mirrored))
    rid = r.info.run_id
    loss = sorted(store.get_metric_history(rid, "loss"), key=lambda m: m.step)
    assert [m.value for m in loss] == [v for v, _ in on["metrics"]["loss"]]
    assert [(m.step, m.value) for m in store.get_metric_history(rid, "stepped")] == [(4, 7.5)]
    assert r.data.metrics["converged"] == 1.0
    assert [m.value for m in sorted(store.get_metric_history(rid, "series"), key=lambda m: m.step)] == [1, 2, 3]
    assert [m.value for m in sorted(store.get_metric_history(rid, "perf.acc"), key=lambda m: m.step)] == [0.5, 0.75]
    assert r.data.tags["owner"] == "team" and r.data.tags["n"] == "4"
    assert on["tags"]["owner"] == "team"
    assert r.data.params == {"lr": "0.1"} == on["properties"]
    assert r.info.run_name == "legacy run"
    assert r.data.tags["azureml.v1.run_id"] == mirrored.id
    paths = set()
    stack = [""]
    while stack:
        for info in store.list_artifacts(rid, stack.pop() or None):
            (stack.append(info.path) if info.is_dir else paths.add(info.path))
    for expected in ("phase.txt", "perf.json", "tbl.json", "picture.png", "conf.json", "conf.png",
                     "acc_table.json", "preds.json", "resid.json", "outputs/model.txt",
                     "more/1.txt", "more/2.txt", "folder/a.txt", "folder/sub/b.txt"):
        assert expected in paths
    # the rich metrics hold the same object on both sides
    conf_local = store.download_artifacts(rid, "conf.json", str(tmp_path))
    assert json.load(open(conf_local)) == CONF == json.loads(emu.artifacts(mirrored.id)["conf"])
    children = store.search_runs([r.info.experiment_id], f"tags.mlflow.parentRunId = '{rid}'")
    assert len(children) == 1 == on["children"]
    assert children[0].data.metrics == {"fold_metric": 2.0}


def test_v1_exception_reaches_caller_and_nothing_is_sent(emu, bridge, store, monkeypatch):
    import azml_v1_bridge
    from azureml.exceptions import UserErrorException

    bridge.enable("mirror")
    run = submitted_run(emu, unique_run_id(), monkeypatch=monkeypatch)
    with pytest.raises(UserErrorException):
        run.log("x", [1, 2])
    run.log("y", 1)
    run.flush()
    r = store.get_run(azml_v1_bridge.mlflow_run_id(run))
    assert r.data.metrics == {"y": 1.0}


def test_double_wrapped_super_calls_emit_once(emu, bridge, store, monkeypatch):
    """_SubmittedRun.complete calls Run.complete; Run.tag calls set_tags: one v1 call, one emit."""
    import azml_v1_bridge
    from azml_v1_bridge.bridge import STATE
    from azureml.core.run import Run, _SubmittedRun

    bridge.enable("mirror")
    assert "complete" in _SubmittedRun.__dict__ and "complete" in Run.__dict__  # both wrapped
    run = submitted_run(emu, unique_run_id(), monkeypatch=monkeypatch)
    run.tag("k", "v")
    run.complete()
    record = run.__dict__["_azml_v1_bridge_record"]
    calls = STATE.writer.stats[record.local_id].calls
    assert calls["tag"] == 1 and calls["set_tags"] == 0
    assert calls["complete"] == 1
    rid = azml_v1_bridge.mlflow_run_id(run)
    assert store.get_run(rid).info.status == "RUNNING"  # a job's run: v1 leaves status to the job
    bridge.finish()
    assert store.get_run(rid).info.status == "FINISHED"


def test_v1_failure_still_raises_and_mlflow_keeps_the_data(emu, bridge, store, monkeypatch):
    import azml_v1_bridge
    from azureml._restclient.exceptions import ServiceException

    bridge.enable("mirror")
    run = submitted_run(emu, unique_run_id(), monkeypatch=monkeypatch)
    emu.fail(r"^/metric/v2\.0/.*/batch$", status=400)
    run.log("kept", 3.0)
    with pytest.raises(ServiceException):
        run.flush()  # where v1 raised before: from flush, not from log
    emu.clear_failures()
    assert emu.metrics(run.id) == []
    azml_v1_bridge.flush()
    assert store.get_run(azml_v1_bridge.mlflow_run_id(run)).data.metrics == {"kept": 3.0}


def test_mlflow_server_down_leaves_v1_traffic_alone(emu, bridge, monkeypatch, tmp_path):
    from servers import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AZML_V1_BRIDGE_RETRY_SECONDS", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("AZML_V1_BRIDGE_STRICT", "0")  # journaling is what strict mode raises for
    bridge.enable("mirror")
    run = submitted_run(emu, unique_run_id(), monkeypatch=monkeypatch)
    start = time.monotonic()
    for i in range(5):
        run.log("m", i)
    run.complete()
    assert time.monotonic() - start < 30
    assert [m["value"] for m in emu.metrics(run.id, "m")] == [0, 1, 2, 3, 4]
    azml_v1_bridge.finish()
    journal = tmp_path / "journal.jsonl"
    assert journal.exists() and '"m"' in journal.read_text()  # nothing lost: kept for replay


def test_mlflow_mode_sends_no_metric_tag_or_artifact_traffic(emu, bridge, store, monkeypatch, tmp_path):
    import azml_v1_bridge

    bridge.enable("mlflow")
    run = submitted_run(emu, unique_run_id(), monkeypatch=monkeypatch)
    before = len(emu.requests)
    legacy_script(run, tmp_path)
    run.complete()
    kinds = {r.kind for r in emu.requests[before:]}
    assert not kinds & {"metric", "run.patch", "artifact.create", "blob.put", "events", "metricsingest"}, kinds
    rid = azml_v1_bridge.mlflow_run_id(run)
    bridge.finish()  # a job's run ends when the script does (complete() leaves status to the job)
    r = store.get_run(rid)
    assert r.info.status == "FINISHED" and r.data.metrics["loss"] == pytest.approx(1 / 3)


def test_mlflow_run_id_equal_to_v1_run_id_is_written_once(emu, bridge, store, monkeypatch, caplog):
    bridge.enable("mirror")
    same = store.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", same)
    run = submitted_run(emu, same, monkeypatch=monkeypatch)  # the v1 run *is* the MLflow run
    with caplog.at_level(logging.WARNING, logger="azml_v1_bridge"):
        run.log("x", 1.0)
        run.log("x", 2.0)
        run.flush()
    assert [m["value"] for m in emu.metrics(same, "x")] == [1.0, 2.0]  # v1's path wrote them
    assert store.get_metric_history(same, "x") == []  # the bridge did not write them again
    assert any("does not write it twice" in rec.getMessage() for rec in caplog.records)


def test_complete_returns_after_both_sides_hold_everything(emu, bridge, store, monkeypatch):
    import azml_v1_bridge

    bridge.enable("mirror")
    run = submitted_run(emu, unique_run_id(), monkeypatch=monkeypatch)
    for i in range(300):
        run.log("m", i)
    run.complete()
    assert len(emu.metrics(run.id, "m")) == 300
    rid = run.__dict__["_azml_v1_bridge_record"].mlflow_run_id
    assert len(store.get_metric_history(rid, "m")) == 300
    assert azml_v1_bridge.mlflow_run_id(run) == rid
    bridge.finish()
    assert store.get_run(rid).info.status == "FINISHED"


@pytest.mark.parametrize("mode", ["mirror", "mlflow"])
def test_start_logging_is_a_top_level_run_in_the_v1_experiment(emu, bridge, store, monkeypatch, mode):
    import azml_v1_bridge

    bridge.enable(mode)
    job = submitted_run(emu, unique_run_id(), experiment="churn-model", monkeypatch=monkeypatch)
    interactive = job.experiment.start_logging(display_name="notebook session", snapshot_directory=None)
    interactive.log("auc", 0.91)
    interactive.complete()
    r = store.get_run(azml_v1_bridge.mlflow_run_id(interactive))
    assert store.get_experiment(r.info.experiment_id).name == "churn-model"
    assert r.data.metrics == {"auc": 0.91} and r.info.status == "FINISHED"
    assert r.info.run_name == "notebook session"
    assert "mlflow.parentRunId" not in r.data.tags
    if mode == "mirror":
        assert [m["value"] for m in emu.metrics(interactive.id, "auc")] == [0.91]
