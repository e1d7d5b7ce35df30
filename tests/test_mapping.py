"""Every row of the README mapping table, in mirror and mlflow modes.

Real `Run.get_context()` offline runs, a real sqlite MLflow store, read back
with MlflowClient.
"""
import io
import json
import os

import pytest
import azml_v1_bridge  # noqa: E402

MODES = ["mirror", "mlflow"]


@pytest.fixture(autouse=True)
def thread_writer(monkeypatch):
    """These tests are about the table, which is the writer's input and the same for both
    writers: they run on the thread writer. A writer process per test costs ~2 s of CPU (its
    own MLflow import): 3 of this file's 3.5 minutes. The default writer process records the
    table in test_differential (both modes) and test_sidecar."""
    monkeypatch.setenv("AZML_V1_BRIDGE_WRITER", "thread")


@pytest.fixture(params=MODES)
def mode(request, bridge):
    bridge.enable(request.param)
    return request.param


def v1_run():
    from azureml.core import Run

    run = Run.get_context()
    assert type(run).__name__ == "_OfflineRun"
    return run


def mlflow_run(run, client):
    import azml_v1_bridge

    run.flush()
    return client.get_run(azml_v1_bridge.mlflow_run_id(run))


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key),
                                             key=lambda m: m.step)]


def artifact_bytes(client, run_id, path, tmp_path):
    local = client.download_artifacts(run_id, path, str(tmp_path))
    with open(local, "rb") as fh:
        return fh.read()


def test_log_number_steps_count_per_name(mode, store):
    run = v1_run()
    for v in (0.5, 0.25, 0.125):
        run.log("loss", v)
    run.log("acc", 1)
    r = mlflow_run(run, store)
    assert history(store, r.info.run_id, "loss") == [(0, 0.5), (1, 0.25), (2, 0.125)]
    assert history(store, r.info.run_id, "acc") == [(0, 1.0)]
    assert r.data.tags["azureml.v1.run_id"] == run.id


def test_log_timestamp_is_call_time(mode, store):
    import time

    run = v1_run()
    before = int(time.time() * 1000)
    run.log("t", 1.0)
    after = int(time.time() * 1000)
    r = mlflow_run(run, store)
    (point,) = store.get_metric_history(r.info.run_id, "t")
    assert before <= point.timestamp <= after


def test_log_explicit_step(store, bridge):
    bridge.enable("mlflow")
    run = v1_run()
    run.log("x", 1.0, step=10)
    run.log("x", 2.0, step=20)
    r = mlflow_run(run, store)
    assert history(store, r.info.run_id, "x") == [(10, 1.0), (20, 2.0)]


def test_log_lean_path_and_general_path_keep_one_series(store, bridge):
    """mlflow mode takes a lean path for run.log(name, float|int[, step=int]) once a name was
    seen (bridge.handle_log); every other form takes the general one. Interleaved, they share
    the step counter and record what the general path alone records."""
    from fractions import Fraction

    bridge.enable("mlflow")
    run = v1_run()
    calls = [
        (("loss", 0.5), {}),                      # first use: general path
        (("loss", 0.25), {}),                     # lean
        (("loss", 3), {}),                        # lean, an int
        (("loss", Fraction(1, 2)), {}),           # general: another numbers.Real
        (("loss", True), {}),                     # general: bool
        (("loss", 0.125, "with a description"), {}),
        (("loss", 2**60), {}),                    # general: an int a double cannot hold
        (("loss",), {"value": 1.5}),              # general: by keyword
        (("loss", float("nan")), {}),             # lean: NaN is a number
        (("acc@top1", 0.9), {}),                  # a rewritten name: always general
        (("acc@top1", 0.8), {}),
        (("x", 1.0), {"step": 10}),               # general (first use)
        (("x", 2.0), {"step": 20}),               # lean, explicit step
        (("x", 3.0), {}),                         # general: x's first implicit step
    ]
    for args, kwargs in calls:
        run.log(*args, **kwargs)
    r = mlflow_run(run, store)
    loss = history(store, r.info.run_id, "loss")
    assert [s for s, _ in loss] == list(range(9))
    assert [v for _, v in loss][:8] == [0.5, 0.25, 3.0, 0.5, 1.0, 0.125, float(2**60), 1.5]
    assert loss[8][1] != loss[8][1]  # NaN
    renamed = [k for k in r.data.metrics if k.startswith("acc_top1_")]
    assert len(renamed) == 1 and history(store, r.info.run_id, renamed[0]) == [(0, 0.9), (1, 0.8)]
    assert history(store, r.info.run_id, "x") == [(0, 3.0), (10, 1.0), (20, 2.0)]


@pytest.mark.parametrize("series", ["", "rank 3"])
def test_every_training_loop_form_of_run_log_records_what_the_general_path_records(
        store, bridge, series, monkeypatch):
    """run.log's lean path (the run's bound closure, bridge.handle_log) takes every form a
    training loop calls: step= and a positional step (an int within int64), Python and numpy
    scalars, a name seen before or new. One mixed sequence (explicit steps between implicit
    ones, new names midway, steps the lean path leaves alone: a float, a bool) goes
    through run.log on one run and through the general path (bridge.handle) on another:
    the (key, step, value) rows read back are the same, and the lean forms did not reach
    handle(). Also for rank 3 of a shared run, whose keys emit() renames (`loss/rank_3`; a
    forked child's `/fork_<pid>` series take the same rename: test_faults' fork tests)."""
    import random

    np = pytest.importorskip("numpy")
    from azml_v1_bridge import bridge as bridge_module

    if series == "rank 3":
        monkeypatch.setenv("AZML_V1_BRIDGE_RANK", "3")
    bridge.enable("mlflow")
    lean_run, general_run = v1_run(), v1_run()
    original_handle = bridge_module.handle
    handled = []

    def counting_handle(method, wrapped, instance, args, kwargs, standin=None):
        if instance is lean_run and method == "log":
            handled.append((args, kwargs))
        return original_handle(method, wrapped, instance, args, kwargs, standin)

    for run in (lean_run, general_run):
        run.log("warmup", 0.0)  # a run's first call: general (the run is created)
        record = run.__dict__[bridge_module.ATTR]
        if series == "rank 3":  # as if MLFLOW_RUN_ID named a run the launcher shares
            record.adopted = True
    bridge_module.handle = counting_handle
    rng = random.Random(27)
    values = [lambda: rng.random(), lambda: rng.randrange(-5, 100), lambda: np.float64(rng.random()),
              lambda: np.float32(0.5), lambda: np.int64(rng.randrange(1000)), lambda: True,
              lambda: 2**60, lambda: float("nan")]
    names = ["loss", "acc"]
    general_steps = [3.0, True]  # (2**63 and beyond: issue 26 decides what MLflow gets)
    calls, expected_general = [], 0
    for i in range(400):
        if i % 50 == 25:
            names.append(f"new_{i}")                 # a new name midway
        name = rng.choice(names)
        value = rng.choice(values)()
        form = rng.randrange(7)
        if form == 0:
            rest, kwargs = (), {}
        elif form == 1:
            rest, kwargs = (), {"step": rng.randrange(0, 50)}
        elif form == 2:
            rest, kwargs = ("described", rng.choice([rng.randrange(0, 50), 2**63 - 1, -(2**63)])), {}
        elif form == 3:
            rest, kwargs = ("described",), {}
        elif form == 4:
            rest, kwargs = ("described",), {"step": rng.randrange(0, 50)}
        elif form == 5:
            rest, kwargs = (), {"step": None}
        else:
            rest, kwargs = (), {"step": rng.choice(general_steps)}
            expected_general += 1
        calls.append((name, value, rest, kwargs))
    for name, value, rest, kwargs in calls:
        lean_run.log(name, value, *rest, **kwargs)
        original_handle("log", type(general_run).log.__wrapped__, general_run,
                        (name, value) + rest, kwargs)
    bridge_module.handle = original_handle
    assert "log" in lean_run.__dict__              # bound on the object
    assert len(handled) == expected_general, handled

    def rows(run):
        run_id = azml_v1_bridge.mlflow_run_id(run)
        keys = store.get_run(run_id).data.metrics
        # a set: MLflow keeps one of two equal points (same key, step and value) logged in
        # the same millisecond, which depends on timing, not on the path
        return {(m.key, m.step, repr(m.value))
                for key in keys for m in store.get_metric_history(run_id, key)}

    lean_run.flush()
    general_run.flush()
    lean_rows = rows(lean_run)
    assert lean_rows == rows(general_run)
    assert len(calls) - 40 <= len(lean_rows) <= len(calls) + 1
    suffix = {"": "", "rank 3": "/rank_3"}[series]
    assert {key for key, _, _ in lean_rows} == {name + suffix for name in names} | {"warmup"}


def test_numpy_float64_takes_the_lean_path_with_the_same_result(store, bridge, tmp_path):
    """sklearn's metrics and np.mean return numpy.float64, a float subclass: after a name's
    first use it takes the lean path (the run gets run.log bound), recorded as plain floats in
    one series with Python floats. A float subclass whose __float__ raises is still kept as
    text, as the general path keeps it."""
    np = pytest.importorskip("numpy")

    class Unconvertible(float):
        def __float__(self):
            raise ValueError("no")

    bridge.enable("mlflow")
    run = v1_run()
    run.log("mse", np.float64(0.5))             # first use: general path
    assert "log" not in run.__dict__
    run.log("mse", np.float64(0.25))            # lean: bound from now on
    assert "log" in run.__dict__
    run.log("mse", 0.125)
    run.log("mse", np.float64(0.0625))          # through lean_log from the bound function
    run.log("mse", np.float64(2.0), step=40)
    run.log("mse", Unconvertible(1.0))          # general path: text, like before
    r = mlflow_run(run, store)
    assert history(store, r.info.run_id, "mse") == [
        (0, 0.5), (1, 0.25), (2, 0.125), (3, 0.0625), (40, 2.0)]
    assert all(type(m.value) is float for m in store.get_metric_history(r.info.run_id, "mse"))
    assert artifact_bytes(store, r.info.run_id, "mse.txt", tmp_path) == b"1.0\n"


def test_run_log_bound_on_the_run_keeps_every_rule_and_disable_takes_it_off(store, bridge, capsys):
    """mlflow mode binds run.log on a run object once a call took the lean path (wrapt's
    per-call binding is a third of the call's cost). The binding still honours a mode switch
    (mirror: v1 runs again, once a call), v1's signature, and disable(): v1 alone afterwards."""
    import inspect

    from azureml.core.run import _OfflineRun

    bridge.enable("mlflow")
    run = v1_run()
    run.log("loss", 0.0)                       # general path: first use of the name
    assert "log" not in run.__dict__
    run.log("loss", 1.0)                       # lean: bound from now on
    assert "log" in run.__dict__
    assert inspect.signature(run.log) == inspect.signature(_OfflineRun(run_id="x").log)
    for i in range(2, 5):
        run.log("loss", float(i))
    assert capsys.readouterr().out.count("Attempted to log scalar metric loss") == 0
    bridge.enable("mirror")                    # the bound method now takes the class's path
    run.log("loss", 5.0)
    assert capsys.readouterr().out.count("Attempted to log scalar metric loss") == 1
    run_id = azml_v1_bridge.mlflow_run_id(run)
    run.flush()
    bridge.disable()
    assert "log" not in run.__dict__
    run.log("loss", 6.0)                       # v1's own function: nothing reaches MLflow
    assert capsys.readouterr().out.count("Attempted to log scalar metric loss") == 1
    bridge.enable("mlflow")
    bridge.flush()
    assert history(store, run_id, "loss") == [(s, float(s)) for s in range(6)]


def test_run_log_bound_on_the_run_follows_a_new_writer_and_every_form(store, bridge, monkeypatch):
    """The bound run.log holds the writer's queue and each name's step counter: a new writer
    (new writer settings), a name it has not seen, and every form it does not take itself
    (a description, a step, an int, a Fraction, an unhashable name) still land once,
    in order; and a run.log the user set on the object is left alone."""
    from fractions import Fraction

    from azml_v1_bridge import bridge as bridge_module

    bridge.enable("mlflow")
    run = v1_run()
    for i in range(3):
        run.log("loss", float(i))               # general, lean (binds), bound
    first_writer = bridge_module.STATE.writer
    assert "log" in run.__dict__
    monkeypatch.setenv("AZML_V1_BRIDGE_QUEUE_MAX", "123456")
    bridge.enable("mlflow")                     # new writer settings: the old writer retires
    for i in range(3, 6):
        run.log("loss", float(i))
    assert bridge_module.STATE.writer is not first_writer
    run.log("acc", 0.5)                         # a name the binding has not seen
    run.log("acc", 1)                           # an int, through lean_log: learned
    run.log("acc", 0.75)                        # bound
    run.log("acc", 0.125, "described")          # the general path, same counter
    run.log("acc", Fraction(1, 4))
    run.log("acc", 2.0, step=40)
    run.log(["not", "hashable"], 1.0)           # the general path: a renamed key
    run.log("acc@top1", 0.5)                    # new to the binding, not a valid key: renamed
    run.log("acc@top1", 0.25)
    bridge.flush()
    r = mlflow_run(run, store)
    assert history(store, r.info.run_id, "loss") == [(s, float(s)) for s in range(6)]
    assert history(store, r.info.run_id, "acc") == [
        (0, 0.5), (1, 1.0), (2, 0.75), (3, 0.125), (4, 0.25), (40, 2.0)]
    assert [k for k in r.data.metrics if "hashable" in k] == ["__not__ _hashable___5f45f4b0"]
    (renamed,) = [k for k in r.data.metrics if k.startswith("acc_top1_")]
    assert history(store, r.info.run_id, renamed) == [(0, 0.5), (1, 0.25)]

    calls = []
    run.log = lambda *args, **kwargs: calls.append(args)  # the user's own: never replaced
    run.log("loss", 9.0)
    run.log("loss", 10.0)
    assert calls == [("loss", 9.0), ("loss", 10.0)]


def test_a_subclass_own_log_is_never_bypassed(store, bridge):
    """A run class whose log() overrides v1's (and calls it) keeps it: only objects whose
    run.log is the bridge's wrapper get the bound method."""
    from azureml.core.run import _OfflineRun

    class CountingRun(_OfflineRun):
        calls = 0

        def log(self, name, value, description=""):
            CountingRun.calls += 1
            return super().log(name, value)

    bridge.enable("mlflow")
    run = CountingRun()
    for i in range(5):
        run.log("loss", float(i))
    assert CountingRun.calls == 5 and "log" not in run.__dict__
    run.flush()
    assert history(store, azml_v1_bridge.mlflow_run_id(run), "loss") == [(s, float(s)) for s in range(5)]


def test_offline_step_is_v1s_type_error_in_mirror(store, bridge):
    bridge.enable("mirror")
    run = v1_run()
    with pytest.raises(TypeError):
        run.log("x", 1.0, step=3)  # _OfflineRun.log has no step: v1's own quirk stays
    run.log("y", 1.0)
    r = mlflow_run(run, store)
    assert "x" not in r.data.metrics and r.data.metrics["y"] == 1.0


def test_log_bool(mode, store):
    run = v1_run()
    run.log("flag", True)
    run.log("flag", False)
    r = mlflow_run(run, store)
    assert history(store, r.info.run_id, "flag") == [(0, 1.0), (1, 0.0)]


def test_log_string_appends_to_text_artifact(mode, store, tmp_path):
    run = v1_run()
    run.log("phase", "warmup")
    run.log("phase", "train")
    run.log("phase", "eval")
    r = mlflow_run(run, store)
    assert artifact_bytes(store, r.info.run_id, "phase.txt", tmp_path) == b"warmup\ntrain\neval\n"
    assert "phase" not in r.data.metrics


def test_log_list_consecutive_steps_and_generators(mode, store):
    run = v1_run()
    run.log_list("series", [1, 2, 3])
    run.log_list("series", (x * 10 for x in range(2)))  # a generator is consumed once
    r = mlflow_run(run, store)
    assert history(store, r.info.run_id, "series") == [(0, 1.0), (1, 2.0), (2, 3.0), (3, 0.0), (4, 10.0)]


def test_log_list_shares_counter_with_log(mode, store):
    run = v1_run()
    run.log("m", 5)
    run.log_list("m", [6, 7])
    r = mlflow_run(run, store)
    assert history(store, r.info.run_id, "m") == [(0, 5.0), (1, 6.0), (2, 7.0)]


def test_log_list_not_numeric_goes_to_json(mode, store, tmp_path):
    run = v1_run()
    run.log_list("labels", ["cat", 2, None])
    r = mlflow_run(run, store)
    assert json.loads(artifact_bytes(store, r.info.run_id, "labels.json", tmp_path)) == ["cat", 2, None]
    assert "labels" not in r.data.metrics


def test_log_row(mode, store, tmp_path):
    run = v1_run()
    for epoch in range(3):
        run.log_row("perf", epoch=epoch, loss=1.0 / (epoch + 1), note=f"e{epoch}")
    r = mlflow_run(run, store)
    assert history(store, r.info.run_id, "perf.epoch") == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert history(store, r.info.run_id, "perf.loss") == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert "perf.note" not in r.data.metrics
    table = json.loads(artifact_bytes(store, r.info.run_id, "perf.json", tmp_path))
    assert table == {"epoch": [0, 1, 2], "loss": [1.0, 0.5, 1 / 3], "note": ["e0", "e1", "e2"]}


def test_log_table(mode, store, tmp_path):
    run = v1_run()
    run.log_table("tbl", {"col1": [1, 2, 3], "col2": [4, 5, 6], "label": ["a", "b", "c"]})
    run.log_row("tbl", col1=7, col2=8, label="d")  # rows continue the same table
    r = mlflow_run(run, store)
    assert history(store, r.info.run_id, "tbl.col1") == [(0, 1.0), (1, 2.0), (2, 3.0), (3, 7.0)]
    assert history(store, r.info.run_id, "tbl.col2") == [(0, 4.0), (1, 5.0), (2, 6.0), (3, 8.0)]
    table = json.loads(artifact_bytes(store, r.info.run_id, "tbl.json", tmp_path))
    assert table == {"col1": [1, 2, 3, 7], "col2": [4, 5, 6, 8], "label": ["a", "b", "c", "d"]}


def test_log_image_path_keeps_bytes_and_never_overwrites(mode, store, tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(b"\x89PNG first image bytes")
    second.write_bytes(b"\x89PNG second image bytes")
    run = v1_run()
    run.log_image("sample", path=str(first))
    run.log_image("sample", path=str(second))
    first.write_bytes(b"changed after the call")  # the call's snapshot is what lands
    r = mlflow_run(run, store)
    out = tmp_path / "out"
    out.mkdir()
    assert artifact_bytes(store, r.info.run_id, "sample.png", out) == b"\x89PNG first image bytes"
    assert artifact_bytes(store, r.info.run_id, "sample_1.png", out) == b"\x89PNG second image bytes"


def test_log_image_plot_is_the_users_figure(mode, store, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    plt.figure(figsize=(2, 2))
    plt.plot([1, 2, 3], color="red", linewidth=8)
    run = v1_run()
    run.log_image("curve", plot=plt)
    plt.close("all")
    r = mlflow_run(run, store)
    images = [a.path for a in store.list_artifacts(r.info.run_id, "images")]
    pngs = [p for p in images if p.endswith(".png") and "compressed" not in p]
    assert len(pngs) == 1 and "curve" in pngs[0]
    data = artifact_bytes(store, r.info.run_id, pngs[0], tmp_path)
    pixels = plt.imread(io.BytesIO(data))
    red = (pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    assert red.sum() > 50  # the user's red line, not Microsoft's empty new figure
    assert pixels.shape[:2] == (200, 200)


@pytest.mark.parametrize("method,obj", [
    ("log_confusion_matrix", {"schema_type": "confusion_matrix", "schema_version": "v1",
                              "data": {"class_labels": ["0", "1"], "matrix": [[3, 0], [1, 2]]}}),
    ("log_accuracy_table", {"schema_type": "accuracy_table", "schema_version": "v1",
                            "data": {"probability_tables": [[[5, 5, 0, 0], [0, 0, 5, 5]], [[5, 5, 0, 0], [0, 0, 5, 5]]],
                                     "percentile_tables": [], "class_labels": ["0", "1"],
                                     "probability_thresholds": [0.5], "percentile_thresholds": [0.5]}}),
    ("log_predictions", {"schema_type": "predictions", "schema_version": "v1",
                         "data": {"bin_averages": [0.25, 0.75], "bin_errors": [0.013, 0.042],
                                  "bin_counts": [56, 34], "bin_edges": [0.0, 0.5, 1.0]}}),
    ("log_residuals", {"schema_type": "residuals", "schema_version": "v1",
                       "data": {"bin_edges": [50, 100, 200], "bin_counts": [0.88, 20]}}),
])
@pytest.mark.parametrize("as_string", [True, False])
def test_rich_metrics_json_parsed_once(mode, store, tmp_path, method, obj, as_string):
    run = v1_run()
    getattr(run, method)("rich", json.dumps(obj) if as_string else obj)
    r = mlflow_run(run, store)
    # a JSON string is parsed first: the artifact holds the object, not a string of it
    assert json.loads(artifact_bytes(store, r.info.run_id, "rich.json", tmp_path)) == obj


def test_tags(mode, store):
    run = v1_run()
    run.tag("owner", "ml-team")
    run.tag("candidate")
    run.set_tags({"a": 1, "b": None})
    run.tag("owner", "release")  # tags are mutable
    r = mlflow_run(run, store)
    tags = r.data.tags
    assert tags["owner"] == "release" and tags["candidate"] == "" and tags["a"] == "1" and tags["b"] == ""


def test_properties_are_params_write_once(mode, store):
    run = v1_run()
    run.add_properties({"lr": 0.1, "opt": "adam"})
    run.add_properties({"lr": 0.1})         # same value again: nothing to do
    run.add_properties({"lr": 0.2})         # v1 properties are immutable: kept aside, not lost
    r = mlflow_run(run, store)
    assert r.data.params == {"lr": "0.1", "opt": "adam"}
    assert r.data.tags["azml_v1_bridge.property_conflict.lr"] == "0.2"


def test_upload_file_files_folder(mode, store, tmp_path):
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "nested" / "deeper" / "leaf.bin").write_bytes(bytes(range(256)))
    one = tmp_path / "one.txt"
    one.write_text("one")
    run = v1_run()
    run.upload_file("reports/one.txt", str(one))
    run.upload_file("stream.txt", io.BytesIO(b"from a stream"))
    run.upload_files(["x/1.txt", "x/2.txt"], [str(one), str(src / "top.txt")])
    run.upload_folder("tree", str(src))
    r = mlflow_run(run, store)
    out = tmp_path / "out"
    out.mkdir()
    rid = r.info.run_id
    assert artifact_bytes(store, rid, "reports/one.txt", out) == b"one"
    assert artifact_bytes(store, rid, "stream.txt", out) == b"from a stream"
    assert artifact_bytes(store, rid, "x/2.txt", out) == b"top"
    assert artifact_bytes(store, rid, "tree/nested/deeper/leaf.bin", out) == bytes(range(256))


def test_upload_names_never_leave_the_artifact_root(mode, store, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("payload")
    run = v1_run()
    run.upload_file("../../escape.txt", str(one))
    run.upload_file("/etc/abs.txt", str(one))
    r = mlflow_run(run, store)
    root = r.info.artifact_uri.replace("file://", "")
    paths = []
    for folder, _, files in os.walk(root):
        paths += [os.path.relpath(os.path.join(folder, f), root) for f in files]
    assert sorted(paths) == ["escape.txt", "etc/abs.txt"]
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("end,status", [("complete", "FINISHED"), ("fail", "FAILED"), ("cancel", "KILLED")])
def test_terminal_status(mode, store, end, status):
    run = v1_run()
    run.log("x", 1)
    getattr(run, end)()
    import azml_v1_bridge

    r = store.get_run(azml_v1_bridge.mlflow_run_id(run))
    assert r.info.status == status
    assert r.data.metrics["x"] == 1.0  # the data landed before the status


def test_fail_keeps_error_details(mode, store):
    run = v1_run()
    run.fail(error_details=ValueError("diverged"), error_code="NaNLoss")
    import azml_v1_bridge

    r = store.get_run(azml_v1_bridge.mlflow_run_id(run))
    assert r.info.status == "FAILED"
    assert r.data.tags["azureml.v1.error_details"] == "diverged"
    assert r.data.tags["azureml.v1.error_code"] == "NaNLoss"


def test_child_runs_nest(mode, store):
    run = v1_run()
    run.log("parent_metric", 1)
    child = run.child_run("fold-1")
    child.log("fold_metric", 2)
    child.complete()
    import azml_v1_bridge

    parent_id = azml_v1_bridge.mlflow_run_id(run)
    c = store.get_run(azml_v1_bridge.mlflow_run_id(child))
    assert c.data.tags["mlflow.parentRunId"] == parent_id
    assert c.info.run_name == "fold-1" and c.info.status == "FINISHED"
    assert c.data.metrics == {"fold_metric": 2.0}


def test_create_children_in_mlflow_mode_even_offline(store, bridge):
    bridge.enable("mlflow")
    run = v1_run()
    children = run.create_children(count=3)  # _OfflineRun lacks it in v1; job scripts need it
    assert len(children) == 3
    for i, child in enumerate(children):
        child.log("i", i)
    run.flush()
    import azml_v1_bridge

    parent_id = azml_v1_bridge.mlflow_run_id(run)
    for i, child in enumerate(children):
        c = store.get_run(azml_v1_bridge.mlflow_run_id(child))
        assert c.data.tags["mlflow.parentRunId"] == parent_id
        assert c.data.tags["azureml.batch_child_number"] == str(i)
        assert c.data.metrics == {"i": float(i)}


def test_with_block_ends_finished_or_failed(mode, store):
    import azml_v1_bridge

    run = v1_run()
    ok = run.child_run("ok")
    with ok as entered:
        assert entered is ok
        entered.log("x", 1)
    bad = run.child_run("bad")
    with pytest.raises(RuntimeError):
        with bad:
            raise RuntimeError("boom")
    assert store.get_run(azml_v1_bridge.mlflow_run_id(ok)).info.status == "FINISHED"
    failed = store.get_run(azml_v1_bridge.mlflow_run_id(bad))
    assert failed.info.status == "FAILED"
    assert "boom" in failed.data.tags["azureml.v1.error_details"]


def test_display_name_and_description(mode, store):
    run = v1_run()
    run.display_name = "my nice run"
    run.description = "what this run tries"
    r = mlflow_run(run, store)
    assert r.info.run_name == "my nice run"
    assert r.data.tags["mlflow.note.content"] == "what this run tries"
    assert run.display_name == "my nice run"


def test_flush_returns_after_everything_is_in(mode, store):
    import azml_v1_bridge

    run = v1_run()
    for i in range(2500):
        run.log("m", i)
    run.flush()
    rid = azml_v1_bridge.mlflow_run_id(run)
    assert len(store.get_metric_history(rid, "m")) == 2500


def test_get_metrics_in_mlflow_mode_reads_back_v1_shape(store, bridge):
    bridge.enable("mlflow")
    run = v1_run()
    run.log("single", 0.5)
    run.log("many", 1)
    run.log("many", 2)
    run.log_row("tbl", a=1, b=2)
    run.log_row("tbl", a=3, b=4)
    assert run.get_metrics() == {"single": 0.5, "many": [1.0, 2.0], "tbl": {"a": [1.0, 3.0], "b": [2.0, 4.0]}}
    assert run.get_metrics("many") == {"many": [1.0, 2.0]}


def test_experiment_from_env_and_set_experiment(store, bridge, monkeypatch):
    import mlflow

    bridge.enable("mlflow")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    run = v1_run()
    run.log("x", 1)
    r = mlflow_run(run, store)
    assert store.get_experiment(r.info.experiment_id).name == "from-env"

    azml_v1_bridge.finish()
    mlflow.set_experiment("set-in-process")  # wins over the variable, as in mlflow.start_run()
    try:
        run2 = v1_run()
        run2.log("x", 1)
        r2 = mlflow_run(run2, store)
        assert store.get_experiment(r2.info.experiment_id).name == "set-in-process"
    finally:
        mlflow.tracking.fluent._active_experiment_id = None
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_adopts_mlflow_run_id_and_users_active_run(store, bridge, monkeypatch):
    import mlflow

    bridge.enable("mlflow")
    existing = store.create_run("0")
    monkeypatch.setenv("MLFLOW_RUN_ID", existing.info.run_id)
    run = v1_run()
    run.log("x", 1)
    run.flush()
    assert store.get_run(existing.info.run_id).data.metrics == {"x": 1.0}
    azml_v1_bridge.finish()
    assert store.get_run(existing.info.run_id).info.status == "RUNNING"  # not ours to end
    monkeypatch.delenv("MLFLOW_RUN_ID")

    with mlflow.start_run() as active:  # a half-migrated script
        run2 = v1_run()
        run2.log("y", 2)
        run2.flush()
        assert store.get_run(active.info.run_id).data.metrics == {"y": 2.0}


def test_mirror_into_the_same_run_writes_once(store, bridge, monkeypatch):
    from azureml.core.run import _OfflineRun

    bridge.enable("mirror")
    existing = store.create_run("0")
    monkeypatch.setenv("MLFLOW_RUN_ID", existing.info.run_id)
    run = _OfflineRun(run_id=existing.info.run_id)  # the v1 run *is* the MLflow run
    run.log("x", 1)
    run.flush()
    assert store.get_run(existing.info.run_id).data.metrics == {}


def test_repeated_child_names_and_batches_are_separate_runs(mode, store):
    import azml_v1_bridge

    run = v1_run()
    first, second = run.child_run("fold"), run.child_run("fold")
    first.log("x", 1)
    second.log("x", 2)
    ids = {azml_v1_bridge.mlflow_run_id(first), azml_v1_bridge.mlflow_run_id(second)}
    assert len(ids) == 2  # v1 makes a new run for every child_run call
    if mode == "mlflow":
        batches = run.create_children(count=2) + run.create_children(count=2)
        assert len({azml_v1_bridge.mlflow_run_id(c) for c in batches}) == 4
