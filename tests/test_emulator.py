"""The run-history emulator driven by the REAL azureml-core 1.61 client (no bridge).

Nothing in azureml-core is mocked except the blob upload function: tests that
upload artifacts (upload_*, log_image, log_confusion_matrix & co.) run inside
``loopback_blob_uploads()``, which replaces
``azureml._restclient.artifacts_client.upload_blob_from_stream`` with a plain
HTTP PUT to the emulator, because azureml-core rebuilds blob URLs as
``https://{account}.blob.{suffix}`` and so cannot reach a loopback server.

Every test uses a unique run id: azureml-core caches ``_SubmittedRun`` objects
and token auth per (subscription, group, workspace, experiment, run id).
"""

import io
import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from emulator import (  # noqa: E402
    RunHistoryEmulator,
    loopback_blob_uploads,
    submitted_run,
    unique_run_id,
)

METRIC_BATCH = r"^/metric/v2\.0/.*/runs/[^/]+/batch$"


@pytest.fixture(autouse=True)
def _without_bridge():
    """Keep azml_v1_bridge out of these tests even when the whole suite runs.

    Importing azml_v1_bridge (which other test modules do, e.g. via
    azml_v1_bridge.charts) patches azureml.core process-wide.  If it is already
    loaded, switch it off for the test and back on (same mode) afterwards.  It is
    only looked up in sys.modules, never imported here.
    """
    bridge = sys.modules.get("azml_v1_bridge")
    was_on = bridge is not None and bridge.is_enabled()
    mode = getattr(getattr(sys.modules.get("azml_v1_bridge.bridge"), "STATE", None), "mode", None)
    if was_on:
        bridge.disable()
    try:
        yield
    finally:
        if was_on:
            bridge.enable(mode)


@pytest.fixture
def emu():
    with RunHistoryEmulator() as emulator:
        yield emulator
        assert emulator.unhandled() == [], "client sent requests the emulator does not route"


@pytest.fixture
def run(emu, monkeypatch):
    run = submitted_run(emu, unique_run_id(), monkeypatch=monkeypatch)
    from azureml.core.run import Run

    assert not hasattr(Run.log, "__wrapped__"), "azureml.core is patched (bridge active?)"
    return run


@pytest.fixture
def blobs(emu):
    # Documented replacement of azureml-core's blob upload (see module docstring).
    with loopback_blob_uploads(emu):
        yield


def _ws(emu):
    return emu.workspace_scope()


# --------------------------------------------------------------------------- context
def test_get_context_builds_submitted_run_against_emulator(emu, monkeypatch):
    run_id = unique_run_id()
    env = emu.env(run_id, experiment="my-exp")
    for key in ("AZUREML_ARM_SUBSCRIPTION", "AZUREML_RUN_ID", "AZUREML_ARM_RESOURCEGROUP",
                "AZUREML_ARM_WORKSPACE_NAME", "AZUREML_ARM_PROJECT_NAME", "AZUREML_RUN_TOKEN",
                "AZUREML_SERVICE_ENDPOINT", "AZUREML_DISCOVERY_SERVICE_ENDPOINT", "HOME"):
        assert env[key]
    run = submitted_run(emu, run_id, experiment="my-exp", monkeypatch=monkeypatch)
    # import azureml only now: its discovery-cache path is bound to $HOME at first import
    from azureml.core.run import Run, _SubmittedRun

    assert type(run) is _SubmittedRun
    assert run.id == run_id
    assert run.experiment.name == "my-exp"
    assert Run.get_context() is run  # cached per process
    assert [r.kind for r in emu.requests] == ["discovery", "run.get"]
    get = emu.traffic("run.get")[0]
    assert get.path == "/history/v1.0{}/experiments/my-exp/runs/{}".format(_ws(emu), run_id)
    assert get.headers["Authorization"] == "Bearer " + env["AZUREML_RUN_TOKEN"]


def test_experiment_id_switches_run_urls_to_experimentids(emu, monkeypatch):
    run_id = unique_run_id()
    exp_id = "11111111-2222-3333-4444-555555555555"
    run = submitted_run(emu, run_id, experiment="e2", experiment_id=exp_id, monkeypatch=monkeypatch)
    run.tag("k", "v")
    assert emu.traffic("run.get")[0].path.endswith("/experimentids/{}/runs/{}".format(exp_id, run_id))
    assert emu.traffic("tags")[0].path.endswith("/experimentids/{}/runs/{}".format(exp_id, run_id))
    assert run.get_tags() == {"k": "v"}


# --------------------------------------------------------------------------- metrics
def test_three_log_calls_arrive_as_three_metric_values(emu, run):
    run.log("loss", 0.5)
    run.log("acc", 1, step=3)
    run.log("loss", 0.25, description="ignored by v2")
    run.flush()

    got = [(m["name"], m["value"], m["step"], m["type"]) for m in emu.metrics(run.id)]
    assert sorted(got, key=repr) == sorted([("loss", 0.5, None, "azureml.v1.scalar"),
                                           ("acc", 1, 3, "azureml.v1.scalar"),
                                           ("loss", 0.25, None, "azureml.v1.scalar")], key=repr)
    posts = emu.traffic("metric", run_id=run.id)
    assert posts and all(p.path == "/metric/v2.0{}/runs/{}/batch".format(_ws(emu), run.id) for p in posts)
    assert all(p.body["reportErrors"] is True for p in posts)
    assert emu.requests[-1].kind == "metricsingest"  # flush ends with the ingest wait
    columns = {m["name"]: m["columns"] for m in emu.metrics(run.id)}
    assert columns == {"loss": {"loss": "double"}, "acc": {"acc": "int"}}

    assert run.get_metrics() == {"loss": [0.5, 0.25], "acc": 1}
    assert run.get_metrics(name="acc") == {"acc": 1}
    assert run.get_metrics(name="missing") == {}
    assert [r.body for r in emu.traffic("metric.full")][-1] == {"metricName": "missing"}


def test_metric_batches_hold_at_most_45_values(emu, run):
    for i in range(100):
        run.log("m", i, step=i)
    run.flush()
    posts = emu.traffic("metric", run_id=run.id)
    sizes = [len(p.body["values"]) for p in posts]
    assert sum(sizes) == 100 and max(sizes) <= 45 and len(posts) >= 3
    assert sorted(m["value"] for m in emu.metrics(run.id)) == list(range(100))
    assert all(m["value"] == m["step"] for m in emu.metrics(run.id))


def test_log_list_row_table(emu, run):
    run.log_list("lst", [1, 2.5, 3])
    run.log_row("row", x=1, y="a")
    run.log_row("row", x=2, y="b")
    run.log_table("tbl", {"c1": [1, 2], "c2": [0.5, 0.75]})
    run.flush()

    # log_list: ONE MetricV2Dto carrying three values (mixed int/float -> column "double")
    lst = emu.metrics(run.id, "lst")
    assert [m["value"] for m in lst] == [1, 2.5, 3]
    assert lst[0]["columns"] == {"lst": "double"} and lst[0]["raw"] is lst[2]["raw"]
    # log_row / log_table: uxMetricType azureml.v1.table, one value per row, data = the row
    rows = emu.metrics(run.id, "row")
    assert [m["data"] for m in rows] == [{"x": 1, "y": "a"}, {"x": 2, "y": "b"}]
    assert {m["type"] for m in rows} == {"azureml.v1.table"}
    tbl = emu.metrics(run.id, "tbl")
    assert [m["value"] for m in tbl] == [{"c1": 1, "c2": 0.5}, {"c1": 2, "c2": 0.75}]
    assert tbl[0]["columns"] == {"c1": "int", "c2": "double"}

    assert run.get_metrics() == {
        "lst": [1.0, 2.5, 3.0],
        "row": {"x": [1, 2], "y": ["a", "b"]},
        "tbl": {"c1": [1, 2], "c2": [0.5, 0.75]},
    }


def test_log_image_path_and_plot_upload_artifacts(emu, run, blobs, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure()
    plt.plot([1, 2, 3])
    png = tmp_path / "img.png"
    plt.savefig(str(png))
    run.log_image("from_path", path=str(png))
    run.log_image("from_plot", plot=plt)
    plt.close("all")
    run.flush()

    container = emu.run(run.id)["dataContainerId"]
    arts = emu.artifacts(run.id)
    # path: the artifact name is the local path exactly as given (absolute here)
    assert arts[str(png)] == png.read_bytes()
    # plot: "<name>_<unix time>.png"
    plot_names = [n for n in arts if n.startswith("from_plot_") and n.endswith(".png")]
    assert len(plot_names) == 1 and arts[plot_names[0]].startswith(b"\x89PNG")
    creates = emu.traffic("artifact.create", run_id=run.id)
    assert [c.path for c in creates] == ["/artifact/v2.0{}/artifacts/batch/metadata/ExperimentRun/{}".format(
        _ws(emu), container)] * 2
    assert all(p.headers.get("Content-Type") == "image/png" for p in emu.traffic("blob.put"))

    metrics = {m["name"]: m for m in emu.metrics(run.id)}
    assert metrics["from_path"]["type"] == "azureml.v2.image"
    assert metrics["from_path"]["columns"] == {"from_path": "Artifact"}
    assert metrics["from_path"]["value"] == "aml://artifactId/ExperimentRun/{}/{}".format(container, png)
    assert metrics["from_plot"]["value"] == "aml://artifactId/ExperimentRun/{}/{}".format(container, plot_names[0])
    assert run.get_metrics(name="from_plot") == {"from_plot": metrics["from_plot"]["value"]}


ARTIFACT_METRICS = {
    "log_confusion_matrix": ("azureml.v2.confusion_matrix", {
        "schema_type": "confusion_matrix", "schema_version": "1.0.0",
        "data": {"class_labels": ["a", "b"], "matrix": [[3, 1], [0, 4]]}}),
    "log_accuracy_table": ("azureml.v2.accuracy_table", {
        "schema_type": "accuracy_table", "schema_version": "1.0.1",
        "data": {"probability_tables": [[[1, 0, 1, 0]]], "percentile_tables": [[[1, 0, 1, 0]]],
                 "class_labels": ["a"], "probability_thresholds": [0.5], "percentile_thresholds": [50]}}),
    "log_predictions": ("azureml.v2.predictions", {
        "schema_type": "predictions", "schema_version": "1.0.0",
        "data": {"bin_averages": [0.1, 0.7], "bin_errors": [0.01, 0.02], "bin_counts": [3, 4],
                 "bin_edges": [0.0, 0.5, 1.0]}}),
    "log_residuals": ("azureml.v2.residuals", {
        "schema_type": "residuals", "schema_version": "1.0.0",
        "data": {"bin_edges": [-1.0, 0.0, 1.0], "bin_counts": [2, 5]}}),
}


def test_confusion_matrix_accuracy_predictions_residuals_are_artifact_backed(emu, run, blobs):
    for method, (_, value) in ARTIFACT_METRICS.items():
        getattr(run, method)(method, value)
    # uploaded synchronously inside the log_* call, before any metric is posted
    assert sorted(emu.artifacts(run.id)) == sorted(ARTIFACT_METRICS)
    run.flush()

    container = emu.run(run.id)["dataContainerId"]
    for method, (ux_type, value) in ARTIFACT_METRICS.items():
        assert emu.artifacts(run.id)[method] == json.dumps(value).encode("utf-8")
        (metric,) = emu.metrics(run.id, method)
        assert metric["type"] == ux_type
        assert metric["columns"] == {method: "Artifact"}
        assert metric["value"] == "aml://artifactId/ExperimentRun/{}/{}".format(container, method)
    assert run.get_metrics(name="log_residuals") == {
        "log_residuals": "aml://artifactId/ExperimentRun/{}/log_residuals".format(container)}


# --------------------------------------------------------------------------- tags etc.
def test_tags_properties_display_name_description(emu, run):
    run.tag("t1", "v1")
    run.set_tags({"t2": "v2", "n": 4})
    run.add_properties({"p1": "x"})
    run.display_name = "pretty name"
    run.description = "what it does"

    patches = emu.traffic("run.patch", run_id=run.id)
    assert [p.body for p in patches] == [
        {"runId": run.id, "tags": {"t1": "v1"}},
        {"runId": run.id, "tags": {"t2": "v2", "n": "4"}},  # non-string values converted client-side
        {"runId": run.id, "properties": {"p1": "x"}},
        {"runId": run.id, "displayName": "pretty name"},
        {"runId": run.id, "description": "what it does"},
    ]
    assert len(emu.traffic("tags")) == 2 and len(emu.traffic("properties")) == 1
    assert emu.tags(run.id) == {"t1": "v1", "t2": "v2", "n": "4"}
    assert emu.properties(run.id) == {"p1": "x"}
    assert run.get_tags() == {"t1": "v1", "t2": "v2", "n": "4"}
    assert run.get_properties() == {"p1": "x"}
    assert run.display_name == "pretty name" and run.description == "what it does"


# --------------------------------------------------------------------------- files
def test_upload_and_download_files(emu, run, blobs, tmp_path):
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "inner" / "b.txt").write_text("B")
    single = tmp_path / "single.txt"
    single.write_text("hello")

    run.upload_file("outputs/single.txt", str(single))
    run.upload_file("outputs/stream.bin", io.BytesIO(b"\x00\x01"))
    list(run.upload_files(["many/a.txt", "many/b.txt"], [str(src / "a.txt"), str(src / "inner" / "b.txt")]))
    list(run.upload_folder("folder", str(src)))

    expected = {"outputs/single.txt": b"hello", "outputs/stream.bin": b"\x00\x01", "many/a.txt": b"A",
                "many/b.txt": b"B", "folder/a.txt": b"A", "folder/inner/b.txt": b"B"}
    assert emu.artifacts(run.id) == expected
    assert sorted(run.get_file_names()) == sorted(expected)
    # upload_files / upload_folder register all paths in one batch/metadata call
    assert [c.body for c in emu.traffic("artifact.create")][-2:] == [
        {"paths": [{"path": "many/a.txt"}, {"path": "many/b.txt"}]},
        {"paths": [{"path": "folder/a.txt"}, {"path": "folder/inner/b.txt"}]},
    ]

    out = tmp_path / "out"
    out.mkdir()
    run.download_file("outputs/single.txt", str(out / "got.txt"))
    assert (out / "got.txt").read_text() == "hello"
    run.download_files(prefix="folder", output_directory=str(out / "dl"))
    assert (out / "dl" / "folder" / "a.txt").read_text() == "A"
    assert (out / "dl" / "folder" / "inner" / "b.txt").read_text() == "B"
    assert len(emu.traffic("blob.get")) == 3


# --------------------------------------------------------------------------- children
def test_child_runs(emu, run):
    child = run.child_run(name="part")
    assert emu.children(run.id) == [child.id]
    create = emu.traffic("run.patch", run_id=child.id)[0].body
    assert create["parentRunId"] == run.id and create["status"] == "NotStarted" and create["name"] == ">part"
    assert [e["name"] for e in emu.events(child.id)] == ["Microsoft.MachineLearning.Run.Start"]
    assert emu.status(child.id) == "Running"
    assert child.parent.id == run.id

    child.log("child_metric", 7)
    child.complete()  # a child is a plain Run: complete() posts the Completed event
    assert [m["value"] for m in emu.metrics(child.id)] == [7]
    assert emu.metrics(run.id) == []
    assert emu.status(child.id) == "Completed" and child.get_status() == "Completed"

    kids = run.create_children(count=2)
    (batch,) = emu.traffic("run.batch")
    assert [r["tags"] for r in batch.body["runs"]] == [{"azureml.batch_child_number": "0"},
                                                      {"azureml.batch_child_number": "1"}]
    (starts,) = emu.traffic("events.batch")
    assert [e["data"]["RunId"] for e in starts.body["events"]] == [k.id for k in kids]
    kids[0].fail(error_details="boom")
    kids[1].cancel()
    assert [e["name"].rsplit(".", 1)[1] for e in emu.events(kids[0].id)] == ["Start", "Error", "Failed"]
    assert emu.events(kids[0].id)[1]["data"]["ErrorResponse"]["error"]["message"] == "boom"

    assert emu.children(run.id) == [child.id, kids[0].id, kids[1].id]
    got = {c.id: c.get_status() for c in run.get_children()}
    assert got == {child.id: "Completed", kids[0].id: "Failed", kids[1].id: "Canceled"}
    assert {c.id for c in run.get_children(recursive=True)} == set(got)
    assert emu.traffic("run.query")[0].body == {
        "filter": "(RootRunId eq {0} and RunId ne {0})".format(run.id)}
    assert run.get_metrics(recursive=True) == {child.id: {"child_metric": 7}}


# --------------------------------------------------------------------------- lifecycle
def test_status_details_and_submitted_run_lifecycle(emu, run):
    assert run.get_status() == "Running"
    details = run.get_details()
    assert details["runId"] == run.id and details["status"] == "Running"
    assert details["logFiles"] == {} and details["submittedBy"] == "Emulator User"

    before = len(emu.requests)
    run.cancel()  # _SubmittedRun.cancel only logs a warning: no traffic at all
    assert len(emu.requests) == before

    run.log("x", 1)
    run.fail(error_details=ValueError("bad"))  # flush + Error event, but NO status change
    assert [m["value"] for m in emu.metrics(run.id)] == [1]
    (event,) = emu.events(run.id)
    assert event["name"] == "Microsoft.MachineLearning.Run.Error"
    assert event["data"]["ErrorResponse"]["error"]["message"] == "User program failed with ValueError: bad"
    assert emu.status(run.id) == "Running"

    before = len(emu.requests)
    run.complete()  # only flushes (ends with the ingest wait); status stays as the service has it
    assert [r.kind for r in emu.requests[before:]] == ["metricsingest"]
    assert emu.status(run.id) == "Running"


# --------------------------------------------------------------------------- failures
@pytest.mark.parametrize("finish", ["flush", "complete"])
def test_failed_metric_post_surfaces_from_flush_or_complete_not_log(emu, run, finish):
    from azureml._restclient.exceptions import ServiceException

    emu.fail(METRIC_BATCH, status=400)  # non-retryable status: 1 try + 1 re-try after 3 s
    run.log("lost", 1)  # never raises: the value is only queued
    start = time.time()
    with pytest.raises(ServiceException) as info:
        getattr(run, finish)()
    assert info.value.status_code == 400
    assert time.time() - start >= 2.0  # the 3 s pause in MetricsClient._log_batch_v2
    attempts = emu.traffic("metric", run_id=run.id)
    assert len(attempts) == 2 and all(a.status == 400 and a.injected for a in attempts)
    assert attempts[0].body == attempts[1].body
    assert emu.metrics(run.id) == []

    emu.clear_failures()
    run.complete()  # the failed batch is dropped, not re-queued: nothing else is sent
    assert len(emu.traffic("metric", run_id=run.id)) == 2
    assert emu.metrics(run.id) == []


def test_transient_metric_failure_is_retried_transparently(emu, run):
    # 502/504/408 are retried at once by azureml's ClientBase (500 waits 2 s, 503 2-10 s, 429 32 s)
    rule = emu.fail(METRIC_BATCH, status=502, times=1)
    run.log("kept", 1)
    run.flush()
    assert rule.hits == 1
    assert [a.status for a in emu.traffic("metric", run_id=run.id)] == [502, 200]
    assert [m["value"] for m in emu.metrics(run.id)] == [1]


def test_failure_injection_http_shape():
    import requests

    with RunHistoryEmulator() as emu:
        emu.fail(r"/history/", status=503, times=2, method="GET")
        url = emu.url + "/history/v1.0" + emu.workspace_scope() + "/experiments/e/runs/r1"
        replies = [requests.get(url) for _ in range(3)]
        assert [r.status_code for r in replies] == [503, 503, 200]
        error = replies[0].json()["error"]
        assert error["details"] == [] and error["code"] == "ServiceError" and error["message"]
        assert replies[2].json()["runId"] == "r1"  # runs are auto-created on first read
        assert requests.patch(url, json={"tags": {"a": "b"}}).json()["tags"] == {"a": "b"}

        emu.fail(r"/runs/r1$", status=404)
        assert requests.get(url).json()["error"]["details"] == []
        emu.clear_failures()
        assert requests.get(url).status_code == 200

        assert requests.get(emu.url + "/nope").status_code == 404
        assert [r.kind for r in emu.unhandled()] == ["unknown"]
        assert [r.injected for r in emu.traffic("run")] == [True, True, False, False, True, False]


def test_loopback_blob_uploads_restores_the_azureml_function(emu):
    from azureml._restclient import artifacts_client, snapshots_client

    original = artifacts_client.upload_blob_from_stream
    with loopback_blob_uploads(emu):
        assert artifacts_client.upload_blob_from_stream is not original
        assert snapshots_client.upload_blob_from_stream is artifacts_client.upload_blob_from_stream
    assert artifacts_client.upload_blob_from_stream is original
    assert snapshots_client.upload_blob_from_stream is original
