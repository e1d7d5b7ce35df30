"""Generated differential test: mirror mode is v1, exactly; both modes record the README's table.

Hypothesis draws sequences of v1 calls over the patched surface (every method in
patch.RUN_METHODS plus the display_name / description setters; positional and keyword forms
with v1's own parameter names; streams, generators, numpy values, odd names, repeats, nested
runs). Each sequence runs three times, each on a fresh REAL `_SubmittedRun` talking to one
loopback run-history emulator (tests/emulator.py): bridge off, mirror mode, mlflow mode.

Asserted:
1. v1 receives the same requests with and without the bridge (mirror mode). Normalised away,
   because they are random or per run by design: run ids, uuids (metric ids, child run ids),
   timestamps (ISO strings and time-named fields), the unix time in `log_image(plot=)`
   artifact names, and all headers (request ids, auth). Metric POSTs are compared as each
   metric's sequence of values (v1's 1 s daemon batches them by timing), blob PUTs as a
   multiset (v1 uploads files from a thread pool).
2. Return values and exceptions are the same with and without the bridge.
3. Under AZML_V1_BRIDGE_STRICT=1 (the suite's setting), as MLflow's autologging test mode
   does (mlflow/utils/autologging_utils/safety.py, _validate_args): a probe under the bridge
   checks v1 got exactly the user's arguments (the same objects; a generator only as the
   list of its items, the README's promise) and that no stream was consumed before v1 saw it.
4. The MLflow record (mirror mode and mlflow mode) equals `Model`, a reference of the
   README's mapping table written here, not derived from `translate`.

CI profile: derandomized, AZML_V1_BRIDGE_DIFF_EXAMPLES examples (default 50, about 70 s on
2 vCPUs, one emulator and one sqlite store for all of them). Longer: AZML_V1_BRIDGE_DIFF_EXAMPLES=500 .venv/bin/python -m pytest -q
tests/test_differential.py (add AZML_V1_BRIDGE_DIFF_SEED=<n> for another sequence set).
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import posixpath
import re
import shutil
import threading
import uuid

import matplotlib
import numpy as np
import pytest
from emulator import RunHistoryEmulator, loopback_blob_uploads, submitted_run, unique_run_id
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

matplotlib.use("Agg")

EXAMPLES = int(os.environ.get("AZML_V1_BRIDGE_DIFF_EXAMPLES", "50"))
SEED = os.environ.get("AZML_V1_BRIDGE_DIFF_SEED")

# ---------------------------------------------------------------- the session: one of each

PNG = None  # bytes of a real PNG (v1 checks the image type), written once


@pytest.fixture(scope="module")
def world(tmp_path_factory, empty_store_file):
    """One emulator, one sqlite store (a copy of the session's migrated template), one
    folder of input files, for every example."""
    import azml_v1_bridge
    import matplotlib.pyplot as plt

    global PNG
    folder = tmp_path_factory.mktemp("differential")
    shutil.copyfile(empty_store_file, folder / "mlflow.db")
    (folder / "img").mkdir()
    plt.figure(figsize=(1, 1))
    plt.savefig(folder / "img" / "a.png")
    plt.close("all")
    PNG = (folder / "img" / "a.png").read_bytes()
    (folder / "files" / "sub").mkdir(parents=True)
    (folder / "files" / "one.txt").write_bytes(b"one\n")
    (folder / "files" / "two.bin").write_bytes(bytes(range(256)))
    (folder / "files" / "sub" / "three.txt").write_text("three")
    before = dict(os.environ)  # submitted_run() points AZUREML_* at the emulator: undone below
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "AZML_V1_BRIDGE_CHARTS",
                                            "AZML_V1_BRIDGE_JOURNAL", "MLFLOW_RUN_ID",
                                            "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")}
    cwd = os.getcwd()
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    os.environ["AZML_V1_BRIDGE_CHARTS"] = "0"  # PNG charts are tested elsewhere; they cost time
    os.environ["AZML_V1_BRIDGE_JOURNAL"] = str(folder / "journal.jsonl")
    for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(k, None)
    probe = Probe()
    try:
        with RunHistoryEmulator() as emu, loopback_blob_uploads(emu):
            azml_v1_bridge.finish()
            azml_v1_bridge.disable()
            probe.install()
            try:
                from mlflow.tracking import MlflowClient

                yield World(emu, MlflowClient(os.environ["MLFLOW_TRACKING_URI"]), folder, probe)
            finally:
                azml_v1_bridge.finish()
                azml_v1_bridge.disable()
                probe.remove()
    finally:
        os.chdir(cwd)
        for k in [k for k in os.environ if k.startswith("AZUREML_") and k not in before]:
            del os.environ[k]
        for k in [k for k in before if k.startswith("AZUREML_") or k == "HOME"]:
            os.environ[k] = before[k]
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        azml_v1_bridge.enable("mirror")


class World:
    def __init__(self, emu, client, folder, probe):
        self.emu, self.client, self.folder, self.probe = emu, client, folder, probe


# ---------------------------------------------------------------- what v1 itself receives

class Probe:
    """Beneath the bridge, on azureml-core's own functions: what each v1 method received
    (outermost call only: _SubmittedRun.complete calling Run.complete is one call)."""

    def __init__(self):
        self.saved = []
        self.seen: list = []
        self.local = threading.local()

    def install(self):
        from azml_v1_bridge.patch import RUN_METHODS
        from azureml.core.run import Run, _SubmittedRun

        for cls in (Run, _SubmittedRun):
            for name in RUN_METHODS:
                original = cls.__dict__.get(name)
                if original is None or not callable(original):
                    continue
                self.saved.append((cls, name, original))
                setattr(cls, name, self._probe(name, original))

    def remove(self):
        for cls, name, original in reversed(self.saved):
            setattr(cls, name, original)
        self.saved.clear()

    def _probe(self, name, original):
        @functools.wraps(original)
        def probe(*args, **kwargs):
            depth = getattr(self.local, "depth", 0)
            if depth == 0:
                self.seen.append((name, args[1:], dict(kwargs),
                                  [a.tell() if hasattr(a, "tell") else None
                                   for a in list(args[1:]) + list(kwargs.values())]))
            self.local.depth = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                self.local.depth = depth

        return probe


# ---------------------------------------------------------------- the calls

NAMES = ["loss", "acc@top1", "acc_top1", "t", "a b:c", "n\x00ul"]
TABLES = {"t": ("a", "b"), "perf": ("epoch", "acc")}
RICH = ["log_confusion_matrix", "log_accuracy_table", "log_predictions", "log_residuals"]
RICH_VALUE = {"schema_type": "residuals", "schema_version": "v1",
              "data": {"bin_edges": [50, 100, 200], "bin_counts": [0.88, 20]}}
ARTIFACT_NAMES = ["out/model.txt", "x.bin", "../up.txt", "deep/er/file.txt"]
TAG_KEYS = ["owner", "k@1", "k_1", "phase"]
FILES = ["files/one.txt", "files/two.bin", "files/sub/three.txt"]

numbers = st.one_of(
    st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.booleans(), st.just(float("nan")),
    st.integers(-1000, 1000).map(np.int64), st.floats(-1e3, 1e3, width=32).map(np.float32),
    st.floats(-1e3, 1e3).map(np.array))  # a 0-d array
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
scalars = st.one_of(numbers, texts)


def _form(positional: tuple, keywords: tuple, draw_split):
    """A call with its first `split` arguments positional and the rest by v1's names."""
    split = draw_split
    return positional[:split], dict(zip(keywords[split:], positional[split:]))


@st.composite
def calls(draw):
    method = draw(st.sampled_from([
        "log", "log", "log", "log_list", "log_row", "log_table", "log_image", "rich", "tag",
        "set_tags", "add_properties", "upload_file", "upload_files", "upload_folder", "flush",
        "display_name", "description", "child_run", "child_log", "complete", "fail", "cancel",
        "with", "create_children"]))
    split = draw(st.integers(0, 2))
    if method == "log":
        name = draw(st.sampled_from(NAMES))
        value = draw(scalars)
        if draw(st.booleans()):
            return ("log", (name, value, "", draw(st.integers(0, 50))),
                    ("name", "value", "description", "step"), split)
        return ("log", (name, value), ("name", "value"), split)
    if method == "log_list":
        name = draw(st.sampled_from(NAMES))
        values = draw(st.one_of(st.lists(numbers, min_size=1, max_size=4),
                                st.lists(texts, min_size=1, max_size=3)))
        kind = "generator" if draw(st.booleans()) else "list"
        return ("log_list", (name, (kind, values)), ("name", "value"), split)
    if method == "log_row":
        name = draw(st.sampled_from(sorted(TABLES)))
        cols = {c: draw(scalars.filter(lambda v: not (isinstance(v, float) and math.isnan(v))))
                for c in TABLES[name]}
        return ("log_row", (name,), ("name",), min(split, 1), cols)
    if method == "log_table":
        name = draw(st.sampled_from(sorted(TABLES)))
        rows = draw(st.integers(1, 3))
        value = {c: draw(st.lists(st.integers(-100, 100), min_size=rows, max_size=rows)) for c in TABLES[name]}
        return ("log_table", (name, value), ("name", "value"), split)
    if method == "log_image":
        name = draw(st.sampled_from(["pic", "pic.png", "img@1"]))
        if draw(st.booleans()):
            return ("log_image", (name, "img/a.png"), ("name", "path"), max(split, 1))
        return ("log_image", (name, None, ("plot",)), ("name", "path", "plot"), 1)
    if method == "rich":
        which = draw(st.sampled_from(RICH))
        value = json.dumps(RICH_VALUE) if draw(st.booleans()) else RICH_VALUE
        return (which, (draw(st.sampled_from(["cm", "pred"])), value), ("name", "value"), split)
    if method == "tag":
        key = draw(st.sampled_from(TAG_KEYS))
        if draw(st.booleans()):
            return ("tag", (key,), ("key",), min(split, 1))
        return ("tag", (key, draw(st.one_of(texts, st.integers(0, 9), st.none()))), ("key", "value"), split)
    if method == "set_tags":
        tags = draw(st.dictionaries(st.sampled_from(TAG_KEYS), texts, min_size=1, max_size=3))
        return ("set_tags", (tags,), ("tags",), min(split, 1))
    if method == "add_properties":
        props = draw(st.dictionaries(st.sampled_from(["lr", "seed", "p@1"]), st.sampled_from(["0.1", "7", "x"]),
                                     min_size=1, max_size=2))
        return ("add_properties", (props,), ("properties",), min(split, 1))
    if method == "upload_file":
        name = draw(st.sampled_from(ARTIFACT_NAMES))
        if draw(st.booleans()):
            source = ("stream", draw(st.binary(max_size=64)), draw(st.integers(0, 3)))
        else:
            source = draw(st.sampled_from(FILES))
        return ("upload_file", (name, source), ("name", "path_or_stream"), split)
    if method == "upload_files":
        n = draw(st.integers(1, 2))
        names = draw(st.lists(st.sampled_from(ARTIFACT_NAMES), min_size=n, max_size=n, unique=True))
        paths = draw(st.lists(st.sampled_from(FILES), min_size=n, max_size=n))
        return ("upload_files", (names, paths), ("names", "paths"), split)
    if method == "upload_folder":
        return ("upload_folder", (draw(st.sampled_from(["tree", "../t2"])), "files"), ("name", "path"), split)
    if method == "flush":
        return ("flush", (), (), 0)
    if method in ("display_name", "description"):
        return (method, (draw(texts),), (), 1)
    if method == "child_run":
        return ("child_run", (draw(st.sampled_from(["fold", "fold", "cv"])),), ("name",), min(split, 1))
    if method == "child_log":
        return ("child_log", (draw(st.sampled_from(["m", "loss"])), draw(numbers)), ("name", "value"), split)
    if method == "fail":
        return ("fail", (draw(texts), draw(st.sampled_from(["E1", "E2"]))), ("error_details", "error_code"), split)
    if method == "create_children":
        return ("create_children", (draw(st.integers(1, 2)),), ("count",), min(split, 1))
    return (method, (), (), 0)  # complete, cancel, with


sequences = st.lists(calls(), min_size=1, max_size=10)


# ---------------------------------------------------------------- running a sequence

class UserStream(io.BytesIO):
    """The user's stream, knowing where the user left it (`start`)."""

    start = 0


def materialize(value, world):
    """Fresh one-shot objects for each run of the sequence."""
    if isinstance(value, tuple) and value and value[0] == "generator":
        return (v for v in value[1])
    if isinstance(value, tuple) and value and value[0] == "list":
        return list(value[1])
    if isinstance(value, tuple) and value and value[0] == "stream":
        stream = UserStream(bytes(value[2]) + value[1])
        stream.start = value[2]
        stream.seek(value[2])
        return stream
    if isinstance(value, tuple) and value == ("plot",):
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(1, 1))
        fig.gca().plot([1, 2, 3])
        return fig
    return value


def shape(value, ids):
    """A return value, minus what is per run by design (its ids)."""
    from azureml.core.run import Run

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Run):
        return ("Run", ids.label(value.id))
    if isinstance(value, (list, tuple)):
        return [shape(v, ids) for v in value]
    return type(value).__name__


def error_shape(exc, ids):
    return (type(exc).__name__, ids.scrub(str(exc)))


class Ids:
    """Run ids, uuids and times -> stable labels, by order of first appearance."""

    UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.I)
    ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")
    PLOT = re.compile(r"_\d{9,}\.png")
    ADDRESS = re.compile(r" at 0x[0-9a-f]+")

    def __init__(self, run_id):
        self.labels = {run_id: "RUN"}

    def label(self, text):
        return self.labels.setdefault(text, f"ID{len(self.labels)}")

    def scrub(self, text: str) -> str:
        for known, label in sorted(self.labels.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(known, label)
        text = self.UUID.sub(lambda m: self.label(m.group(0)), text)
        text = self.ISO.sub("TIME", text)
        text = self.PLOT.sub("_T.png", text)
        return self.ADDRESS.sub("", text)

    def body(self, value, key=""):
        if isinstance(value, dict):
            return {k: self.body(v, k) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [self.body(v) for v in value]
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, (int, float)) and re.search(r"time|utc|date", key, re.I):
            return "TIME"
        return value


def run_sequence(world, mode, seq):
    """Run `seq` on a fresh _SubmittedRun; returns (outcomes, v1 requests, probe log, runs)."""
    import azml_v1_bridge

    if mode == "off":
        azml_v1_bridge.disable()
    else:
        azml_v1_bridge.enable(mode)
    run_id = unique_run_id("diff")
    ids = Ids(run_id)
    first_request = len(world.emu.requests)
    world.probe.seen.clear()
    run = submitted_run(world.emu, run_id)
    children: list = []
    outcomes, given_args = [], []
    for spec in seq:
        method, values, names, split = spec[:4]
        extra = dict(spec[4]) if len(spec) > 4 else {}
        values = tuple(materialize(v, world) for v in values)
        args, kwargs = _form(values, names, split) if names else (values, {})
        kwargs.update(extra)
        target = run
        if method in ("child_log",):
            if not children:
                outcomes.append(("skipped",))
                continue
            target, method = children[-1], "log"
        given_args.append((method, args, kwargs))
        try:
            if method == "display_name":
                target.display_name = args[0]
                result = None
            elif method == "description":
                target.description = args[0]
                result = None
            elif method == "with":
                with target as inside:
                    result = inside is target
            else:
                result = getattr(target, method)(*args, **kwargs)
            if method == "child_run":
                children.append(result)
            elif method == "create_children":
                children.extend(result or [])
            outcomes.append(("ok", shape(result, ids)))
        except Exception as exc:  # the user's exceptions: the same with and without the bridge
            outcomes.append(("raised", error_shape(exc, ids)))
        finally:
            import matplotlib.pyplot as plt

            plt.close("all")
    seen = list(world.probe.seen)
    run.flush()
    for child in children:
        try:
            child.flush()
        except Exception:
            pass
    for used in [run] + children:
        stop_metric_daemons(used)
    requests = world.emu.requests[first_request:]
    return outcomes, normalise_requests(requests, ids), seen, given_args, run, children


def stop_metric_daemons(run):
    """v1 keeps a 1 s metrics timer per run for the life of the process; hundreds of finished
    runs' timers would slow every later example down. Flushed first, so nothing is dropped."""
    metrics = getattr(getattr(run, "_client", None), "metrics", None)
    for attr in ("_task_queue_internal", "_task_queue_v2_internal"):
        queue = getattr(metrics, attr, None) if metrics is not None else None
        daemon = getattr(queue, "_daemon", None)
        if daemon is not None:
            daemon.stop()


def normalise_requests(requests, ids):
    ordered, metrics, blobs = [], {}, []
    for r in requests:
        if r.kind in ("discovery",):
            continue
        body = ids.body(r.body) if r.body is not None else None
        if r.kind == "metric":
            for dto in (r.body or {}).get("values") or []:
                for value in dto.get("value") or []:
                    metrics.setdefault(ids.scrub(dto.get("name") or ""), []).append(
                        (ids.body({k: v for k, v in value.items() if k != "metricId"}),
                         ids.body(dto.get("columns")), ids.body(dto.get("properties"))))
            continue
        raw = r.raw if r.kind.startswith("blob") else None
        if raw is not None and r.path.endswith(".png") and Ids.PLOT.search(r.path):
            raw = len(raw) > 0  # a plot's PNG: drawn by v1 from the figure, compared as present
        entry = (r.method, r.kind, ids.scrub(r.path), ids.body(r.query), body, raw, r.status)
        if r.kind.startswith("blob"):
            blobs.append(repr(entry))  # upload_folder / upload_files PUT blobs from a thread pool
        else:
            ordered.append(entry)
    return ordered + sorted(blobs), metrics


# ---------------------------------------------------------------- the reference: README's table

KEY_OK = re.compile(r"[/\w.\- ]*")


def mlflow_valid(name: str) -> bool:
    """MLflow's own rule for a metric, param or tag key (mlflow/utils/validation.py), as the
    lowest supported MLflow (2.12) has it: no `:` (README)."""
    if not name or len(name) > 250 or not KEY_OK.fullmatch(name):
        return False
    norm = posixpath.normpath(name)
    return not (norm != name or norm == "." or norm.startswith("..") or norm.startswith("/"))


def fold(name: str) -> str:
    """README: `../` and absolute names are folded inside the run's artifact root (and a NUL,
    which no file system takes, becomes `_`)."""
    text = str(name).replace("\\", "/").replace("\x00", "_")
    return "/".join(p for p in text.split("/") if p not in ("", ".", ".."))


def number(value):
    """README: numbers, bools (1.0 / 0.0), numpy scalars and 0-d arrays are metric values."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return None


def plain(value):
    if isinstance(value, (np.integer, np.floating, np.ndarray)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunModel:
    def __init__(self, name=None):
        self.metrics: dict = {}   # ("key"|"renamed", name) -> [(step, value)]
        self.steps: dict = {}
        self.rows: dict = {}
        self.texts: dict = {}
        self.docs: dict = {}      # path -> kind
        self.lists: dict = {}
        self.tables: dict = {}
        self.artifacts: dict = {}
        self.images: list = []
        self.repeats: dict = {}
        self.tags: dict = {}
        self.params: dict = {}
        self.status = None        # ended now (plain runs)
        self.asked = None         # a job's run: complete()/fail() asked, ended at exit
        self.name = name

    def point(self, name, value, step=None):
        key = str(name)
        if step is None:
            step = self.steps.get(key, 0)
            self.steps[key] = step + 1
        else:
            self.steps.setdefault(key, 0)
        self.metrics.setdefault(key, []).append((step, value))

    def doc(self, base, ext, kind):
        path = base + ext
        owner = self.docs.setdefault(path, kind)
        if owner != kind:
            path = f"{base}.{kind}{ext}"
            self.docs.setdefault(path, kind)
        return path

    def numbered(self, base, ext):
        n = self.repeats.get(base + ext, 0)
        self.repeats[base + ext] = n + 1
        return f"{base}{ext}" if n == 0 else f"{base}_{n}{ext}"


class Model:
    """What the README's mapping table says MLflow holds after `seq` (calls v1 accepted)."""

    def __init__(self):
        self.top = RunModel()
        self.children: list[RunModel] = []

    def apply(self, method, args, kwargs, folder, job=True):
        run = self.top if job else None
        return self._apply(run, method, args, kwargs, folder, job)

    def _apply(self, run, method, args, kwargs, folder, job):
        a = dict(kwargs)
        names = {
            "log": ("name", "value", "description", "step"), "log_list": ("name", "value"),
            "log_table": ("name", "value"), "log_image": ("name", "path", "plot"),
            "tag": ("key", "value"), "set_tags": ("tags",), "add_properties": ("properties",),
            "upload_file": ("name", "path_or_stream"), "upload_files": ("names", "paths"),
            "upload_folder": ("name", "path"), "fail": ("error_details", "error_code"),
            "child_run": ("name",), "create_children": ("count",), "log_row": ("name",),
            "display_name": ("value",), "description": ("value",),
        }.get(method, ("name", "value"))
        a.update(zip(names, args))
        if method == "log":
            value = a["value"]
            n = number(value)
            if n is None:
                path = run.doc(fold(a["name"]), ".txt", "text")
                run.texts.setdefault(path, []).append(value if isinstance(value, str) else repr(value))
            else:
                run.point(a["name"], n, a.get("step"))
        elif method == "log_list":
            values = list(a["value"])
            nums = [number(v) for v in values]
            if all(v is not None for v in nums):
                for v in nums:
                    run.point(a["name"], v)
            else:
                path = run.doc(fold(a["name"]), ".json", "list")
                run.lists.setdefault(path, []).extend(plain(v) for v in values)
        elif method in ("log_row", "log_table"):
            name = a["name"]
            if method == "log_row":
                cols = {k: [v] for k, v in a.items() if k not in ("name", "description")}
            else:
                cols = a["value"]
            nrows = max(len(c) for c in cols.values())
            for i in range(nrows):
                row = run.rows.get(name, 0)
                run.rows[name] = row + 1
                for col, cells in cols.items():
                    n = number(cells[i])
                    if n is not None:
                        run.point(f"{name}.{col}", n, row)
            path = run.doc(fold(name), ".json", "table")
            table = run.tables.setdefault(path, {})
            for col, cells in cols.items():
                table.setdefault(col, []).extend(plain(v) for v in cells)
        elif method == "log_image":
            if a.get("plot") is not None:
                key = a["name"]
                step = run.repeats.get("image:" + key, 0)
                run.repeats["image:" + key] = step + 1
                run.images.append((key, step))
            else:
                base = fold(a["name"])
                if base.endswith(".png"):
                    base = base[:-4]
                run.artifacts[run.numbered(base, ".png")] = (folder / a["path"]).read_bytes()
        elif method in RICH:
            value = a["value"]
            obj = json.loads(value) if isinstance(value, str) else value
            base = fold(a["name"])
            n = run.repeats.get(base + ".json", 0)
            run.repeats[base + ".json"] = n + 1
            stem = base if n == 0 else f"{base}_{n}"
            run.artifacts[run.doc(stem, ".json", "rich")] = ("json", obj)
        elif method == "tag":
            run.tags[str(a["key"])] = "" if a.get("value") is None else str(a["value"])
        elif method == "set_tags":
            for k, v in a["tags"].items():
                run.tags[str(k)] = "" if v is None else str(v)
        elif method == "add_properties":
            for k, v in a["properties"].items():
                text = str(v)
                if str(k) in run.params:
                    if run.params[str(k)] != text:
                        run.tags[("conflict", str(k))] = text
                else:
                    run.params[str(k)] = text
        elif method == "upload_file":
            source = a["path_or_stream"]
            data = source if isinstance(source, bytes) else (folder / source).read_bytes()
            run.artifacts[fold(a["name"])] = data
        elif method == "upload_files":
            for name, path in zip(a["names"], a["paths"]):
                run.artifacts[fold(name)] = (folder / path).read_bytes()
        elif method == "upload_folder":
            root = folder / a["path"]
            for here, _, files in os.walk(root):
                for f in files:
                    rel = os.path.relpath(os.path.join(here, f), root).replace(os.sep, "/")
                    run.artifacts[fold(a["name"]) + "/" + rel] = (root / rel).read_bytes()
        elif method == "display_name":
            run.name = a["value"]
        elif method == "description":
            run.tags["mlflow.note.content"] = a["value"]
        elif method in ("complete", "with"):
            if job:
                run.asked = run.asked or "FINISHED"
            else:
                run.status = "FINISHED"
        elif method == "fail":
            if a.get("error_details") is not None:
                run.tags["azureml.v1.error_details"] = str(a["error_details"])
            if a.get("error_code") is not None:
                run.tags["azureml.v1.error_code"] = str(a["error_code"])
            if job:
                run.asked = "FAILED"
            else:
                run.status = "FAILED"
        elif method == "cancel":
            if not job:
                run.status = "KILLED"
        elif method == "child_run":
            self.children.append(RunModel(name=a.get("name")))
        elif method == "create_children":
            for i in range(a["count"]):
                child = RunModel()
                child.tags["azureml.batch_child_number"] = str(i)
                self.children.append(child)
        elif method == "flush":
            pass
        else:
            raise AssertionError(f"no model for {method}")


def model_call(spec, folder):
    """The user's call as the model sees it: one-shot inputs as the values they hold."""
    method, values, names, split = spec[:4]
    out = []
    for v in values:
        if isinstance(v, tuple) and v and v[0] in ("generator", "list"):
            out.append(list(v[1]))
        elif isinstance(v, tuple) and v and v[0] == "stream":
            out.append(v[1])
        elif isinstance(v, tuple) and v == ("plot",):
            out.append("figure")
        else:
            out.append(v)
    args, kwargs = _form(tuple(out), names, split) if names else (tuple(out), {})
    kwargs.update(dict(spec[4]) if len(spec) > 4 else {})
    return method, args, kwargs


# ---------------------------------------------------------------- reading MLflow back

def record_of(client, run_id):
    run = client.get_run(run_id)
    root = run.info.artifact_uri.replace("file://", "")
    artifacts = {}
    images = []
    for here, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(here, f), root).replace(os.sep, "/")
            if rel.startswith("images/"):
                m = re.match(r"images/(.+)\+step\+(\d+)\+timestamp", rel)
                if m and not rel.endswith("compressed.webp") and "compressed" not in rel:
                    images.append((m.group(1).replace("~", "/"), int(m.group(2))))
                continue
            if rel.startswith("azml_v1_bridge/"):
                continue
            with open(os.path.join(here, f), "rb") as fh:
                artifacts[rel] = fh.read()
    metrics = {k: sorted(((m.step, m.value) for m in client.get_metric_history(run_id, k)), key=repr)
               for k in run.data.metrics}
    return run, metrics, artifacts, sorted(images)


def distinct_points(points):
    """(step, value) pairs as MLflow keeps them: NaN is NaN, -0.0 is 0.0."""
    def value(v):
        return "nan" if math.isnan(v) else float(v) + 0.0
    return sorted({(s, value(v)) for s, v in points}, key=repr)


def same_number(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-6)


def check_record(client, mlflow_run_id, expected: RunModel, status, v1_id, where):
    run, metrics, artifacts, images = record_of(client, mlflow_run_id)
    tags = run.data.tags
    renamed = {v: k[len("azml_v1_bridge.original_name."):] for k, v in tags.items()
               if k.startswith("azml_v1_bridge.original_name.")}
    keys_used = set()

    def key(name):
        if mlflow_valid(name):
            return name
        assert name in renamed, f"{where}: {name!r} rewritten without its original kept in a tag"
        k = renamed[name]
        assert mlflow_valid(k), (where, k)
        assert k not in keys_used or renamed.get(name) == k
        return k

    want_metrics = {}
    for name, points in expected.metrics.items():
        k = key(name)
        assert k not in want_metrics, f"{where}: two names share key {k!r}"
        want_metrics[k] = sorted(points, key=repr)
    assert sorted(metrics) == sorted(want_metrics), where
    for k, points in want_metrics.items():
        # MLflow stores a point once per (step, value, timestamp): the same value logged twice
        # at one explicit step within a millisecond is one row. Compare distinct points.
        got, points = distinct_points(metrics[k]), distinct_points(points)
        assert got == points, (where, k, got, points)
    want_tags = {}
    for k, v in expected.tags.items():
        if isinstance(k, tuple):  # a property conflict
            want_tags["azml_v1_bridge.property_conflict." + key(k[1])] = v
        elif k.startswith(("mlflow.", "azureml.")):
            want_tags[k] = v
        else:
            want_tags[key(k)] = v
    user_tags = {k: v for k, v in tags.items()
                 if not k.startswith(("mlflow.", "azml_v1_bridge.original_name.", "azml_v1_bridge.local_run_id",
                                      "azureml.v1.run_id"))}
    if "mlflow.note.content" in want_tags:
        user_tags["mlflow.note.content"] = tags.get("mlflow.note.content")
    assert user_tags == want_tags, where
    assert tags.get("azureml.v1.run_id") == v1_id, where
    assert run.data.params == {key(k): v for k, v in expected.params.items()}, where
    want_artifacts = dict(expected.artifacts)
    for path, lines in expected.texts.items():
        want_artifacts[path] = ("text", lines)
    for path, values in expected.lists.items():
        want_artifacts[path] = ("json", values)
    for path, table in expected.tables.items():
        want_artifacts[path] = ("json", table)
    assert sorted(artifacts) == sorted(want_artifacts), where
    for path, want in want_artifacts.items():
        got = artifacts[path]
        if isinstance(want, tuple) and want[0] == "json":
            assert json.loads(got) == json.loads(json.dumps(want[1])), (where, path)
        elif isinstance(want, tuple) and want[0] == "text":
            assert got.decode("utf-8", "surrogatepass").split("\n")[:-1] == want[1], (where, path)
        else:
            assert got == want, (where, path)
    assert images == sorted((key(k), s) for k, s in expected.images), where
    if expected.name:  # an empty name: MLflow keeps its generated one
        assert run.info.run_name == expected.name, where
    assert run.info.status == status, where


# ---------------------------------------------------------------- the test

def plan(seq):
    """Drop what cannot be compared: calls on children that do not exist yet."""
    out, children = [], 0
    for spec in seq:
        if spec[0] == "child_log" and not children:
            continue
        if spec[0] == "child_run":
            children += 1
        if spec[0] == "create_children":
            children += spec[1][0]
        out.append(spec)
    return out


def check_probe(seen, given_args, where, bridged=True):
    """As MLflow's autologging test mode: v1 got exactly the user's arguments, none consumed."""
    seen = [s for s in seen if s[0] not in ("__enter__", "__exit__")]  # `with run:`: no user arguments
    calls = [g for g in given_args if g[0] not in ("display_name", "description", "with")]
    assert [s[0] for s in seen] == [c[0] for c in calls], where
    for (method, args, kwargs, positions), (user_method, user_args, user_kwargs) in zip(seen, calls):
        assert method == user_method, where
        assert len(args) == len(user_args) and set(kwargs) == set(user_kwargs), (where, method)
        pairs = list(zip(args, user_args)) + [(kwargs[k], user_kwargs[k]) for k in kwargs]
        for (got, mine), pos in zip(pairs, positions):
            if bridged and hasattr(mine, "__next__") and not hasattr(mine, "read"):  # a generator: its items
                assert isinstance(got, list), (where, method)
            else:
                assert got is mine, (where, method, got, mine)
            if hasattr(mine, "read"):  # not consumed: v1 finds it where the user left it
                assert pos == mine.start, (where, method, pos, mine.start)


def _seeded(test):
    if SEED is None:
        return test
    from hypothesis import seed

    return seed(int(SEED))(test)


# Shrinking re-runs the three modes hundreds of times: on only when asked for.
PHASES = (Phase.explicit, Phase.generate) + ((Phase.shrink,) if os.environ.get("AZML_V1_BRIDGE_DIFF_SHRINK") else ())
DIFF_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED is None,
                         database=None, print_blob=True, phases=PHASES,
                         suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.slow
@_seeded
@DIFF_SETTINGS
@given(seq=sequences)
def test_mirror_is_v1_and_both_modes_record_the_table(world, seq):
    import azml_v1_bridge

    seq = plan(seq)
    off = run_sequence(world, "off", seq)
    mirror = run_sequence(world, "mirror", seq)
    mirror_ids = (mirror[4].id, [c.id for c in mirror[5]])
    mirror_mlflow = azml_v1_bridge.mlflow_run_id(mirror[4]), [azml_v1_bridge.mlflow_run_id(c) for c in mirror[5]]
    azml_v1_bridge.finish()
    flow = run_sequence(world, "mlflow", seq)
    writer = azml_v1_bridge.bridge.STATE.writer  # the default: the table goes through the child
    assert writer is None or type(writer).__name__ == "ProcessWriter", type(writer)
    flow_mlflow = azml_v1_bridge.mlflow_run_id(flow[4]), [azml_v1_bridge.mlflow_run_id(c) for c in flow[5]]
    azml_v1_bridge.finish()

    # 1, 2: v1 sees the same traffic, the caller the same results and exceptions
    assert mirror[0] == off[0]
    assert mirror[1][0] == off[1][0]
    assert mirror[1][1] == off[1][1]
    # 3: v1 got the user's own arguments (strict mode, as MLflow's autologging tests do)
    check_probe(mirror[2], mirror[3], "mirror")
    check_probe(off[2], off[3], "off", bridged=False)

    # 4: MLflow holds the README's table: mirror mode for what v1 accepted, mlflow mode all
    for where, outcomes, top_id, v1_ids, (rid, child_rids) in (
            ("mirror", mirror[0], mirror_ids[0], mirror_ids[1], mirror_mlflow),
            ("mlflow", off[0], flow[4].id, [c.id for c in flow[5]], flow_mlflow)):
        if where == "mlflow" and any(o[0] == "raised" for o in off[0]):
            continue  # v1 refused a call: mlflow mode (no v1) has no v1 verdict to follow
        model = Model()
        child_index = -1
        for spec, outcome in zip(seq, outcomes):
            if outcome[0] != "ok":
                continue
            method, args, kwargs = model_call(spec, world.folder)
            if method == "child_log":
                model._apply(model.children[child_index], "log", args, kwargs, world.folder, job=False)
                continue
            model.apply(method, args, kwargs, world.folder)
            if method in ("child_run", "create_children"):
                child_index = len(model.children) - 1
        check_record(world.client, rid, model.top, model.top.asked or "FINISHED", top_id, where)
        assert len(child_rids) == len(model.children), where
        for n, (crid, child) in enumerate(zip(child_rids, model.children)):
            check_record(world.client, crid, child, child.status or "FINISHED", v1_ids[n], f"{where} child {n}")
            assert world.client.get_run(crid).data.tags["mlflow.parentRunId"] == rid
