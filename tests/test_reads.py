"""v1's read API in mlflow mode: the same script, read back from v1 and from MLflow.

The comparison runs one legacy script three times, each in a fresh interpreter:

* v1: the bridge off, a real `_SubmittedRun` on the loopback run-history emulator
  (the real azureml-core client; blob uploads loop back, see emulator.py);
* mlflow mode, the same `_SubmittedRun` context (Run's read methods are wrapped);
* mlflow mode, no Azure ML context (`_OfflineRun`, given the read methods).

The script writes what every read returned, with run ids replaced by the role of
the run ("run", "child", ...): the three must agree, except where v1 and MLflow
differ by design (documented in reads.py).
"""
import io
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import run_script  # noqa: E402
from emulator import RunHistoryEmulator, unique_run_id  # noqa: E402

SCRIPT = r'''
import contextlib, json, os, re, sys
sys.path.insert(0, os.environ["TESTS_DIR"])
import azml_v1_bridge
from azureml.core import Run

uploads = contextlib.nullcontext()
if os.environ.get("AZML_V1_BRIDGE_MODE") == "off":
    from emulator import loopback_blob_uploads
    uploads = loopback_blob_uploads()

def tree(folder):
    out = {}
    for here, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(here, name)
            out[os.path.relpath(full, folder).replace(os.sep, "/")] = open(full).read()
    return out

with uploads:
    run = Run.get_context()
    print("RUN TYPE", type(run).__name__)
    run.log("loss", 0.5); run.log("loss", 0.25); run.log("acc", 1)
    run.log("note", "hello"); run.log("note", "again")
    run.log_list("lst", [1, 2.5, 3]); run.log_list("single", [4]); run.log_list("strs", ["a", "b"])
    run.log_row("row", x=1, y="a"); run.log_row("row", x=2, y="b")
    run.log_table("tbl", {"c1": [1, 2], "c2": [0.5, 0.75]})
    run.tag("t1", "v1"); run.set_tags({"t2": "v2", "n": 4}); run.tag("bare")
    run.add_properties({"p1": "x"})
    run.display_name = "pretty"
    os.makedirs("src/inner", exist_ok=True)
    open("src/a.txt", "w").write("A"); open("src/inner/b.txt", "w").write("B")
    open("single.txt", "w").write("hello")
    run.upload_file("outputs/single.txt", "single.txt")
    run.upload_folder("folder", "src")
    child = run.child_run(name="part")
    child.log("child_metric", 7); child.log("cm2", 1); child.log("cm2", 2)
    child.complete()
    kids = run.create_children(count=2)
    kids[0].log("k", 1)
    kids[0].fail()
    kids[1].cancel()
    grand = child.child_run(name="grand")
    grand.log("g", 3)
    for r in (run, grand):
        r.flush()  # v1 sends a run's metrics when that run flushes; the bridge needs none

    roles = {run.id: "run", child.id: "child", kids[0].id: "kid0", kids[1].id: "kid1",
             grand.id: "grand"}
    role = lambda r: None if r is None else roles.get(r.id, "unknown:" + r.id)
    by_role = lambda d: {roles.get(k, "unknown:" + k): v for k, v in d.items()}
    got = {}
    got["get_metrics"] = run.get_metrics()
    got["get_metrics(name)"] = [run.get_metrics(name="loss"), run.get_metrics(name="row"),
                                run.get_metrics(name="nope")]
    got["get_metrics(recursive)"] = by_role(run.get_metrics(recursive=True))
    got["get_metrics(name, recursive)"] = by_role(run.get_metrics(name="k", recursive=True))
    got["child.get_metrics(recursive)"] = by_role(child.get_metrics(recursive=True))
    got["get_tags"] = run.get_tags()
    got["tags"] = run.tags
    got["kid tags"] = [kids[0].get_tags(), kids[1].tags]
    got["get_properties"] = run.get_properties()
    got["properties"] = run.properties
    got["get_file_names"] = sorted(run.get_file_names())
    os.makedirs("into", exist_ok=True)
    run.download_file("outputs/single.txt", "got.txt")
    run.download_file("folder/inner/b.txt", "into")
    run.download_file("folder/a.txt")
    got["download_file"] = [open("got.txt").read(), tree("into"), open("a.txt").read()]
    try:
        run.download_file("missing.txt", "m.txt")
        got["download_file(missing)"] = "no error"
    except Exception as exc:
        got["download_file(missing)"] = [type(exc).__name__,
                                         "File with path missing.txt was not found" in str(exc)]
    run.download_files(prefix="folder", output_directory="dl")
    run.download_files(output_directory="all")
    run.download_files(prefix="folder/", output_directory="stripped", append_prefix=False)
    run.download_files(prefix="nothing-here", output_directory="none")
    got["download_files"] = [tree("dl"), tree("all"), tree("stripped"), os.path.exists("none")]
    children = run.get_children()
    got["get_children type"] = type(children).__name__
    got["get_children"] = [[role(c), c.get_status()] for c in children]
    got["get_children(recursive)"] = sorted(role(c) for c in run.get_children(recursive=True))
    got["get_children(status)"] = [role(c) for c in run.get_children(status="Failed")]
    got["get_children(tags)"] = [role(c) for c in run.get_children(
        tags={"azureml.batch_child_number": "1"})]
    got["parent"] = [role(run.parent), role(child.parent), role(grand.parent), role(kids[1].parent)]
    got["get_status"] = [r.get_status() for r in (run, child, kids[0], kids[1], grand)]
    details = run.get_details()
    time_format = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z$")  # v1 drops .000000
    got["get_details"] = {
        "runId": roles.get(details["runId"]), "status": details["status"],
        "properties": details["properties"],
        "startTimeUtc": bool(time_format.match(details["startTimeUtc"])),
        "endTimeUtc": "endTimeUtc" in details,
        "tags": details.get("tags", run.get_tags()),  # v1's details have no tags
    }
    child_details = child.get_details()
    got["child.get_details"] = [roles.get(child_details["runId"]), child_details["status"],
                                bool(time_format.match(child_details["endTimeUtc"]))]
    got["id"] = [role(run), role(child)]
    got["display_name"] = run.display_name
    got["experiment"] = run.experiment.name

with open(sys.argv[1], "w") as fh:
    json.dump(got, fh, indent=1, sort_keys=True)
'''


def _read_back(tmp_path, env, name):
    out = tmp_path / f"{name}.json"
    folder = tmp_path / name
    folder.mkdir()
    env = dict(env, TESTS_DIR=HERE, AZML_V1_BRIDGE_STRICT="1")
    result = run_script(SCRIPT, folder, env=env, args=[str(out)])
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text()), result.stdout


@pytest.mark.slow
def test_every_read_returns_what_v1_returns(store, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = os.environ["MLFLOW_TRACKING_URI"]
    with RunHistoryEmulator() as emu:
        v1_id = unique_run_id("v1")
        v1, out = _read_back(tmp_path, dict(emu.env(v1_id), AZML_V1_BRIDGE_MODE="off"), "v1")
        assert "RUN TYPE _SubmittedRun" in out
        # the v1 client really did the work: the emulator holds the data
        assert [m["value"] for m in emu.metrics(v1_id, "loss")] == [0.5, 0.25]

        job_id = unique_run_id("job")
        job, out = _read_back(tmp_path, dict(emu.env(job_id), AZML_V1_BRIDGE_MODE="mlflow"), "job")
        assert "RUN TYPE _SubmittedRun" in out
        # in mlflow mode neither the writes nor the reads went to Azure ML
        kinds = {r.kind for r in emu.traffic(run_id=job_id)}
        assert kinds <= {"run.get"}, kinds
        assert emu.unhandled() == []

    offline, out = _read_back(tmp_path, {"AZML_V1_BRIDGE_MODE": "mlflow",
                                         "MLFLOW_EXPERIMENT_NAME": "exp"}, "offline")
    assert "RUN TYPE _OfflineRun" in out

    expected = dict(v1)
    assert expected["get_metrics"] == {
        "loss": [0.5, 0.25], "acc": 1, "note": ["hello", "again"], "lst": [1.0, 2.5, 3.0],
        "single": 4, "strs": ["a", "b"], "row": {"x": [1, 2], "y": ["a", "b"]},
        "tbl": {"c1": [1, 2], "c2": [0.5, 0.75]}}
    assert expected["get_children"] == [["child", "Completed"], ["kid0", "Failed"],
                                        ["kid1", "Canceled"]]
    for name, got in (("mlflow mode, _SubmittedRun", job), ("mlflow mode, _OfflineRun", offline)):
        differences = {key: (expected.get(key), got.get(key)) for key in set(expected) | set(got)
                       if expected.get(key) != got.get(key)}
        assert differences == {}, f"{name}: reads differ from v1's: {differences}"

    # and the bridge's reads came from MLflow, where the data is
    client = MlflowClient(uri)
    (top,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id],
                                filter_string=f"tags.`azureml.v1.run_id` = '{job_id}'")
    assert top.data.tags["mlflow.runName"] == "pretty"
    assert top.data.params == {"p1": "x"}


# ---------------------------------------------------------------- in-process details

@pytest.fixture
def mlflow_mode(bridge):
    bridge.enable("mlflow")
    return bridge


def offline_run():
    from azureml.core import Run

    return Run.get_context()


def test_a_read_delivers_what_was_logged_before_it(mlflow_mode, store):
    run = offline_run()
    for i in range(500):
        run.log("m", i)
    run.log_row("r", a=1, b="x")
    run.tag("t", "v")
    # no flush: the read waits for the writer
    assert run.get_metrics(name="m") == {"m": [float(i) for i in range(500)]}
    assert run.get_metrics(name="r") == {"r": {"a": [1], "b": ["x"]}}
    assert run.get_tags() == {"t": "v"}


def test_offline_runs_have_the_read_api_only_in_mlflow_mode(bridge, store):
    from azureml.core.run import _OfflineRun

    bridge.enable("mirror")
    run = _OfflineRun(run_id="offline-mirror")
    for name in ("get_metrics", "get_tags", "get_children", "download_files", "parent", "tags",
                 "experiment"):
        assert not hasattr(run, name), name  # v1's _OfflineRun has none of them
    bridge.enable("mlflow")
    run.log("x", 1)
    assert run.get_metrics() == {"x": 1.0} and run.parent is None
    assert run.get_status() == "Running" and list(run.get_children()) == []
    bridge.disable()
    try:
        assert not hasattr(_OfflineRun, "get_metrics") and not hasattr(_OfflineRun, "tags")
    finally:
        bridge.enable("mirror")
    assert not hasattr(run, "get_metrics")


def test_names_mlflow_rewrote_read_back_as_logged(mlflow_mode, store):
    run = offline_run()
    run.log("loss (val)%", 0.5)
    run.log_row("bad table!", **{"col ü": 1})
    run.tag("weird tag?", "v")
    run.add_properties({"prop#1": "p"})
    assert run.get_metrics() == {"loss (val)%": 0.5, "bad table!": {"col ü": [1]}}
    assert run.get_tags() == {"weird tag?": "v"}
    assert run.get_properties() == {"prop#1": "p"}


def test_values_mlflow_cut_read_back_whole(mlflow_mode, store):
    run = offline_run()
    long_tag, long_property = "t" * 9000, "p" * 7000
    run.tag("long", long_tag)
    run.add_properties({"long": long_property})
    assert run.get_tags() == {"long": long_tag}
    assert run.get_properties() == {"long": long_property}


def test_children_made_elsewhere_come_back_as_runs_that_log(mlflow_mode, store):
    import azml_v1_bridge

    run = offline_run()
    parent_id = azml_v1_bridge.mlflow_run_id(run)
    experiment = store.get_run(parent_id).info.experiment_id
    other = store.create_run(experiment, tags={"mlflow.parentRunId": parent_id,
                                               "azureml.v1.run_id": "made-by-another-process"})
    store.log_metric(other.info.run_id, "m", 2.0)
    (child,) = list(run.get_children())
    assert child.id == "made-by-another-process" and child.get_metrics() == {"m": 2.0}
    assert child.parent is run
    child.log("more", 3)  # logs into that MLflow run, which it does not end
    child.flush()
    assert store.get_run(other.info.run_id).data.metrics == {"m": 2.0, "more": 3.0}
    assert run.get_metrics(recursive=True) == {"made-by-another-process": {"m": 2.0, "more": 3.0}}
    azml_v1_bridge.finish()
    assert store.get_run(other.info.run_id).info.status == "RUNNING"


def test_shared_run_reads_merge_every_ranks_series(mlflow_mode, store, monkeypatch):
    """A run many ranks log into (ranks.py): rank N's `key/rank_N` series and files read back
    as one v1 metric, the ranks' values one after another, as v1 kept them."""
    import json as json_

    from mlflow.entities import Metric

    shared = store.create_run("0")
    rid = shared.info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", rid)
    run = offline_run()
    run.log("loss", 0.5)        # this process is rank 0: its key is unchanged
    run.log_row("row", x=1)
    run.flush()
    store.log_batch(rid, metrics=[Metric("loss/rank_1", 0.4, 10**13, 0),
                                  Metric("row.x/rank_1", 2.0, 10**13, 0)])
    store.log_text(rid, json_.dumps({"x": [2]}), "row/rank_1.json")
    assert run.get_metrics() == {"loss": [0.5, 0.4], "row": {"x": [1, 2]}}
    assert run.get_file_names() == []


def test_one_name_for_a_table_and_a_list_reads_both_documents(mlflow_mode, store):
    """log_row("t") keeps t.json; a non-numeric log_list("t") then goes to t.list.json (both
    kept). Reads find each where it was written, and neither shows as a user file."""
    run = offline_run()
    run.log_row("t", a=1)
    run.log_list("t", ["x", "y"])
    run.log("t", "a note")            # text: t.txt
    run.flush()
    paths = set(_all_paths(store, azml_v1_bridge_mlflow_id(run)))
    assert {"t.json", "t.list.json", "t.txt"} <= paths
    got = run.get_metrics(name="t")["t"]
    assert got[0] == {"a": [1]} and sorted(got[1:]) == ["a note", "x", "y"], got
    assert run.get_file_names() == []


def test_a_v1_run_mlflow_has_no_run_for_is_read_from_v1(mlflow_mode, store, monkeypatch):
    from azureml.core import Run

    from emulator import submitted_run

    with RunHistoryEmulator() as emu:
        job = submitted_run(emu, unique_run_id("job"), monkeypatch=monkeypatch)
        emu.add_run("elsewhere", experiment="exp", tags={"from": "v1"})
        other = Run(job.experiment, "elsewhere")  # e.g. what experiment.submit() returned
        assert other.get_tags() == {"from": "v1"}  # v1 answered: nothing in MLflow stands for it
        assert emu.traffic("run.get", run_id="elsewhere")
        # a v1 run a bridged job logged (found in MLflow by its v1 id): served from MLflow
        logged = store.create_run("0", tags={"azureml.v1.run_id": "bridged-elsewhere"})
        store.log_metric(logged.info.run_id, "remote", 5.0)
        emu.add_run("bridged-elsewhere", experiment="exp", tags={"v1": "only"})
        remote = Run(job.experiment, "bridged-elsewhere")
        assert remote.get_metrics() == {"remote": 5.0} and remote.get_status() == "Running"
        assert not emu.traffic("metric", run_id="bridged-elsewhere")
        job.log("x", 1)
        assert job.get_metrics() == {"x": 1.0}  # the job's own run: from MLflow
        assert not emu.traffic("metric", run_id=job.id)
        assert job.parent is None
        job.flush()


def test_file_names_show_plots_as_the_users_images_not_mlflows_series_files(mlflow_mode, store, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = offline_run()
    plt.plot([1, 2, 3])
    run.log_image("curve", plot=plt)
    plt.plot([3, 2, 1])
    run.log_image("curve", plot=plt)
    plt.close("all")
    run.upload_file("notes.txt", io.BytesIO(b"n"))
    run.flush()
    stored = {f for f in _all_paths(store, azml_v1_bridge_mlflow_id(run))}
    assert sum(p.startswith("images/curve+step+") for p in stored) == 4  # MLflow's: png + webp a step
    assert sorted(run.get_file_names()) == ["curve.png", "curve_1.png", "notes.txt"]
    run.download_file("curve_1.png", str(tmp_path / "got.png"))
    assert (tmp_path / "got.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run.download_files(output_directory=str(tmp_path / "all"))
    assert sorted(os.listdir(tmp_path / "all")) == ["curve.png", "curve_1.png", "notes.txt"]


def azml_v1_bridge_mlflow_id(run):
    import azml_v1_bridge

    return azml_v1_bridge.mlflow_run_id(run)


def _all_paths(client, run_id, path=None):
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            yield from _all_paths(client, run_id, info.path)
        else:
            yield info.path
