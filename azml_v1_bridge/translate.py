"""The mapping table, in code: one v1 call in, a list of MLflow operations out.

No I/O happens here (user files are named, not read; `stage` in bridge.py
snapshots them). The only state is `RunState`, the per-run counters v1 kept
implicitly (the next step of a metric, the next row of a table). Each
function reads like its row of the README table.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
import posixpath
import re
import sys
import zlib
from types import GeneratorType

from .ops import (INT64_MAX, INT64_MIN, AppendTable, AppendText, Artifact, ArtifactFile, Chart,
                  CreateRun, End, ExtendList, Image, Metric, Note, Op, Param, Tag)

MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
V1_RUN_ID_TAG = "azureml.v1.run_id"
RENAMED_TAG_PREFIX = "azml_v1_bridge.original_name."
LONG_VALUES_DIR = "azml_v1_bridge/long_values"


class RunState:
    """What v1 remembered per run, which MLflow needs spelled out."""

    __slots__ = ("steps", "rows", "repeats", "params", "renamed", "kinds", "docs", "end_status",
                 "uploads", "__weakref__")

    def __init__(self):
        self.steps: dict[str, itertools.count] = {}    # metric key -> next implicit step
        self.rows: dict[str, itertools.count] = {}     # table name -> next row index
        self.repeats: dict[str, itertools.count] = {}  # artifact name -> how many so far
        self.params: dict[str, str] = {}               # write-once properties
        self.renamed: set[str] = set()                 # names already reported as rewritten
        self.kinds: dict[str, set] = {}                # v1 name -> {"text", "list"}: kept as files
        self.docs: dict[str, str] = {}                 # document path -> the kind that holds it
        self.end_status: str | None = None             # a job's run: status its script asked for
        self.uploads: dict[str, str] = {}              # artifact path -> the v1 name that has it

    def next_step(self, key: str) -> int:
        counter = self.steps.get(key)
        if counter is None:
            counter = self.steps.setdefault(key, itertools.count())
        return next(counter)

    def next_row(self, name: str) -> int:
        counter = self.rows.get(name)
        if counter is None:
            counter = self.rows.setdefault(name, itertools.count())
        return next(counter)

    def next_repeat(self, name: str) -> int:
        counter = self.repeats.get(name)
        if counter is None:
            counter = self.repeats.setdefault(name, itertools.count())
        return next(counter)


class Call:
    """One v1 call as translate sees it."""

    __slots__ = ("state", "now_ms", "result", "instance")

    def __init__(self, state: RunState | None, now_ms: int, result=None, instance=None):
        self.state, self.now_ms, self.result, self.instance = state, now_ms, result, instance


class NewRun(Op):
    """A v1 call returned a run (child_run, create_children, start_logging).

    bridge.py registers it in `runs` (nested under the calling run, if any)."""

    __slots__ = ("run", "name", "tags", "experiment", "outputs")
    kind = "new_run"

    def __init__(self, run, name=None, tags=None, experiment=None, outputs=None):
        self.run, self.name, self.tags = run, name, tags or {}
        self.experiment, self.outputs = experiment, outputs


# ---------------------------------------------------------------- coercion

# MLflow's key characters as its lowest supported version (2.12) has them: no `:` (2.13+ and
# not on Windows), so a key is valid on every MLflow the bridge runs with or talks to.
_KEY_OK = re.compile(r"^[/\w.\- ]*$")
_ASCII_KEY_OK = re.compile(r"[/\w.\- ]*", re.ASCII)  # the same for ASCII text, 4x faster
_KEY_BAD_CHARS = re.compile(r"[^/\w.\- ]")
_keys: dict[str, str] = {}


def valid_key(name: str) -> bool:
    """MLflow takes this text as a metric key as it is (mlflow_key(name) == name)."""
    # a name new every call (a per-layer or per-sample series) pays this once per name
    if not name or len(name) > MAX_KEY:
        return False
    if not (_ASCII_KEY_OK if name.isascii() else _KEY_OK).fullmatch(name):
        return False
    if "." not in name and "//" not in name and name[0] != "/" and name[-1] != "/":
        return True  # nothing normpath would change
    norm = posixpath.normpath(name)
    return not (norm != name or norm == "." or norm.startswith("..") or norm.startswith("/"))


def name_digest(text: str) -> str:
    """8 hex digits of the original name, on every rewritten key: distinct names stay distinct."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def mlflow_key(name) -> str:
    """The MLflow key for a v1 name: the name itself when MLflow accepts it, else a
    deterministic valid rewrite, `<name with bad characters as '_', path forms flattened,
    cut to fit>_<8 hex digits of the original>` (`acc@top1` -> `acc_top1_3f2a...`), so two
    names never share a key (up to a 32-bit hash) and never collide with `acc_top1` itself."""
    text = name if type(name) is str else str(name)
    key = _keys.get(text)
    if key is not None:
        return key
    if valid_key(text):
        key = text
    else:
        suffix = "_" + name_digest(text)
        base = _KEY_BAD_CHARS.sub("_", text)
        base = "/".join(p for p in base.split("/") if p not in ("", ".", ".."))
        key = base[: MAX_KEY - len(suffix)].rstrip("/") + suffix
        if not valid_key(key):
            key = suffix
    if len(_keys) < 100_000:
        _keys[text] = key
    return key


MAX_PATH_PART = 150  # file systems stop at 255 bytes a name; leave room for suffixes


def _short_part(part: str) -> str:
    if len(part.encode("utf-8", "surrogatepass")) <= MAX_PATH_PART:
        return part
    digest = format(zlib.crc32(part.encode("utf-8", "surrogatepass")), "08x")
    return part[: MAX_PATH_PART // 4] + "~" + digest


def artifact_name(name) -> str:
    """A relative artifact path for a v1 name: never absolute, never '..', no part too long."""
    text = str(name).replace("\\", "/").replace("\x00", "_")
    if len(text) > 1 and text[1] == ":":  # drive letter
        text = text[2:]
    parts = [_short_part(p) for p in text.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "unnamed"


REAL_TYPES: set = set()  # types isinstance(x, numbers.Real) was true for (an ABC check is slow)


def to_number(value):
    """A float for what v1 would chart as a number, else None."""
    t = type(value)
    if t is float:
        return value
    if t is bool:
        return 1.0 if value else 0.0
    if t is int or t in REAL_TYPES or isinstance(value, numbers.Real) and (
            len(REAL_TYPES) > 100 or REAL_TYPES.add(t) is None):
        try:
            return float(value)
        except Exception:  # too large for a double, or a __float__ that raises: kept as text
            return None
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "shape", None) == ():  # numpy scalars and 0-d arrays
        try:
            return to_number(item())
        except Exception:
            return None
    return None


def safe_repr(value) -> str:
    """repr(value), or what can be said of a value whose __repr__ raises."""
    try:
        return repr(value)
    except Exception as exc:
        return f"<unprintable {type(value).__name__}: its __repr__ raised {type(exc).__name__}>"


def to_jsonable(value, _depth=0):
    """Something json.dumps takes without loss of anything printable."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _depth > 50:
        return safe_repr(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, range)):
        return [to_jsonable(v, _depth + 1) for v in value]
    number = to_number(value)
    if number is not None:
        item = getattr(value, "item", None)
        plain = item() if item is not None else value
        return plain if isinstance(plain, (int, bool)) else to_jsonable(number)
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        try:
            return to_jsonable(tolist(), _depth + 1)
        except Exception:
            pass
    return safe_repr(value)


def dump_json(obj) -> bytes:
    return json.dumps(to_jsonable(obj), indent=1, ensure_ascii=False).encode("utf-8")


def _step(value, fallback) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return fallback


def original_name_tag(key: str) -> str:
    """The tag keeping the v1 name a rewritten key came from."""
    tag_key = RENAMED_TAG_PREFIX + key
    if len(tag_key) > MAX_KEY:
        tag_key = RENAMED_TAG_PREFIX + format(zlib.crc32(key.encode()), "08x")
    return tag_key


def _key(call: Call, name, ops: list) -> str:
    key = mlflow_key(name)
    if key != (name if type(name) is str else None) and call.state is not None and key not in call.state.renamed:
        call.state.renamed.add(key)
        ops.append(Note("renamed", str(name), key))
        ops.append(Tag(original_name_tag(key), str(name)[:MAX_TAG_VALUE]))
    return key


def doc_path(call: Call, base: str, ext: str, kind: str) -> str:
    """`base.ext` for the first kind of document (table, list, text, rich) a name is used
    for; another kind under the same name gets `base.<kind>.ext`: both are kept."""
    path = base + ext
    if call.state is None:
        return path
    owner = call.state.docs.setdefault(path, kind)
    if owner == kind:
        return path
    path = f"{base}.{kind}{ext}"
    call.state.docs.setdefault(path, kind)
    return path


def kept_doc_path(state: RunState | None, base: str, ext: str, kind: str) -> str:
    """Where doc_path put a document of this kind (for reads): `base.ext` when that kind
    came first under the name, else `base.<kind>.ext`."""
    path = base + ext
    if state is None or state.docs.get(path, kind) == kind:
        return path
    return f"{base}.{kind}{ext}"


def _numbered(call: Call, base: str, ext: str) -> str:
    """`base.ext`, then `base_1.ext`, `base_2.ext`...: a repeat never overwrites."""
    n = call.state.next_repeat(base + ext)
    return f"{base}{ext}" if n == 0 else f"{base}_{n}{ext}"


def _text_value(call: Call, name, value, ops: list) -> None:
    if call.state is not None:
        call.state.kinds.setdefault(str(name), set()).add("text")
    if not isinstance(value, str):
        ops.append(Note("kept_as_text", str(name), f"{type(value).__name__} is not a number"))
        value = safe_repr(value)
    ops.append(AppendText(doc_path(call, artifact_name(name), ".txt", "text"), value))


def _metric_points(call: Call, name, values, ops: list) -> None:
    key = _key(call, name, ops)
    state, now = call.state, call.now_ms
    for v in values:
        ops.append(Metric(key, v, now, state.next_step(key)))


# ---------------------------------------------------------------- the table

def log_point(state: RunState, name, value, step=None):
    """The common run.log, for bridge.handle_log: a number (what translate_log would chart)
    under a name MLflow takes as it is, with no step or an int step within int64 ->
    (number, step), with translate_log's step rule. None: translate_log decides (a rewritten
    name, text, any other step)."""
    if type(name) is not str:
        return None
    key = _keys.get(name)
    if key is None:
        key = mlflow_key(name)
    if key != name:  # a rewritten name: its note and tag go through translate_log
        return None
    t = type(value)
    if t is float:
        number = value
    elif t is int and -(1 << 53) <= value <= (1 << 53):
        number = float(value)
    else:  # numpy scalars, bool, another numbers.Real: as translate_log reads them
        number = to_number(value)
        if number is None:
            return None
    if step is None:
        return number, state.next_step(name)
    return (number, step) if type(step) is int and INT64_MIN <= step <= INT64_MAX else None


def translate_log(call: Call, name, value, description="", step=None) -> list:
    """log(name, number|bool) -> metric, step explicit or per-(run, name) counter;
    log(name, str) -> every value appended to text artifact name.txt."""
    t = type(value)
    number = value if t is float else to_number(value)  # the common case first: it runs per point
    if number is None:
        if isinstance(value, (list, tuple, range, GeneratorType)):
            ops = [Note("list_in_log", str(name), "run.log got a list; logged as log_list")]
            return ops + translate_log_list(call, name, list(value))
        ops = []
        _text_value(call, name, value, ops)
        return ops
    key = _keys.get(name) if type(name) is str else None
    if key is None or key != name:
        ops = []
        key = _key(call, name, ops)
    else:
        ops = []
    if step is None:
        counter = call.state.steps.get(key)
        step_value = next(counter) if counter is not None else call.state.next_step(key)
    else:
        step_value = _step(step, None)
        if step_value is None:
            ops.append(Note("bad_step", str(name), f"step {step!r} is not an integer"))
            step_value = call.state.next_step(key)
        elif not INT64_MIN <= step_value <= INT64_MAX:
            ops.append(Note("out_of_range", str(name),
                            f"step {step_value} is outside MLflow's range (a signed 64-bit "
                            f"integer); this point (value {safe_repr(value)[:100]}) is not logged"))
            return ops
    ops.append(Metric(key, number, call.now_ms, step_value))
    return ops


def translate_log_list(call: Call, name, value, description="") -> list:
    """log_list(name, values) -> one point per element on consecutive steps;
    a list that is not all numbers -> JSON artifact name.json (extended by repeats)."""
    values = list(value) if not isinstance(value, list) else value
    numbers_ = [to_number(v) for v in values]
    ops: list = []
    if values and all(n is not None for n in numbers_):
        _metric_points(call, name, numbers_, ops)
    elif values:
        if call.state is not None:
            call.state.kinds.setdefault(str(name), set()).add("list")
        ops.append(Note("list_not_numeric", str(name), "kept as JSON artifact"))
        ops.append(ExtendList(doc_path(call, artifact_name(name), ".json", "list"), to_jsonable(values)))
    return ops


def _table_ops(call: Call, name, columns: dict, nrows: int, ops: list) -> None:
    base = artifact_name(name)
    for i in range(nrows):
        row = call.state.next_row(str(name))
        for col, cells in columns.items():
            if i >= len(cells):
                continue
            number = to_number(cells[i])
            if number is not None:
                key = _key(call, f"{name}.{col}", ops)
                ops.append(Metric(key, number, call.now_ms, row))
    ops.append(AppendTable(doc_path(call, base, ".json", "table"),
                           {str(c): [to_jsonable(v) for v in cells] for c, cells in columns.items()}))


def translate_log_row(call: Call, name, description=None, **kwargs) -> list:
    """log_row(name, **cols) -> metric name.col per numeric column at step = row index;
    whole table (strings too) kept as JSON artifact name.json."""
    ops: list = []
    _table_ops(call, name, {col: [v] for col, v in kwargs.items()}, 1, ops)
    return ops


def translate_log_table(call: Call, name, value, description="") -> list:
    """log_table(name, {col: [..]}) -> metric name.col per numeric column, one step
    per row; whole table as JSON artifact name.json."""
    ops: list = []
    if not isinstance(value, dict):
        ops.append(Note("table_not_dict", str(name), f"{type(value).__name__}; kept as JSON"))
        ops.append(ExtendList(doc_path(call, artifact_name(name), ".json", "list"), [to_jsonable(value)]))
        return ops
    columns = {}
    for col, cells in value.items():
        if isinstance(cells, (str, bytes)) or not hasattr(cells, "__iter__"):
            cells = [cells]
        columns[col] = list(cells)
    lengths = {len(c) for c in columns.values()}
    nrows = max(lengths, default=0)
    if len(lengths) > 1:
        ops.append(Note("ragged_table", str(name), f"column lengths {sorted(lengths)}; short columns padded"))
    _table_ops(call, name, columns, nrows, ops)
    return ops


def translate_log_image(call: Call, name, path=None, plot=None, description="") -> list:
    """log_image(name, path=) -> the file, bytes unchanged, as artifact name.ext (repeats name_1.ext ...);
    log_image(name, plot=) -> the user's figure as PNG, one step of image series `name`."""
    if plot is not None:
        figure = plot.gcf() if hasattr(plot, "gcf") else getattr(plot, "figure", plot)
        if not hasattr(figure, "savefig"):
            return [Note("bad_plot", str(name), f"{type(plot).__name__} is not a figure")]
        import io

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")  # now: the user keeps drawing on it
        ops: list = []
        key = _key(call, name, ops)  # the original name kept in its tag, as for metrics
        ops.append(Image(key, buffer.getvalue(), call.state.next_repeat("image:" + key), call.now_ms))
        return ops
    if path is None:
        return [Note("no_image", str(name), "log_image got neither path nor plot")]
    source = str(path) if not hasattr(path, "read") else None
    ext = posixpath.splitext(source.replace("\\", "/"))[1] if source else ".png"
    base = artifact_name(name)
    if ext and base.lower().endswith(ext.lower()):
        base = base[: -len(ext)]
    return [ArtifactFile(_numbered(call, base, ext), path)]


def _rich(call: Call, name, value) -> list:
    """log_confusion_matrix / log_accuracy_table / log_predictions / log_residuals
    -> JSON artifact name.json holding the object (strings parsed first) + chart name.png."""
    ops: list = []
    obj = value
    if isinstance(value, (str, bytes)):
        try:
            obj = json.loads(value)
        except ValueError as exc:
            ops.append(Note("invalid_json", str(name), f"{exc}; kept as a JSON string"))
            obj = value if isinstance(value, str) else value.decode("utf-8", "replace")
    base = artifact_name(name)
    n = call.state.next_repeat(base + ".json")
    stem = base if n == 0 else f"{base}_{n}"
    path = doc_path(call, stem, ".json", "rich")
    ops.append(Artifact(path, dump_json(obj)))
    if isinstance(obj, dict):
        ops.append(Chart(path[: -len(".json")] + ".png", to_jsonable(obj), str(name)))
    return ops


def translate_log_confusion_matrix(call: Call, name, value, description="") -> list:
    return _rich(call, name, value)


def translate_log_accuracy_table(call: Call, name, value, description="") -> list:
    return _rich(call, name, value)


def translate_log_predictions(call: Call, name, value, description="") -> list:
    return _rich(call, name, value)


def translate_log_residuals(call: Call, name, value, description="") -> list:
    return _rich(call, name, value)


def _tag(call: Call, key, value, ops: list) -> None:
    text = "" if value is None else str(value)
    mkey = _key(call, key, ops)
    if len(text) > MAX_TAG_VALUE:
        ops.append(Note("long_value", str(key), f"tag value of {len(text)} chars cut; full value kept as artifact"))
        ops.append(Artifact(f"{LONG_VALUES_DIR}/tag.{artifact_name(mkey)}.txt", text.encode()))
        text = text[:MAX_TAG_VALUE]
    ops.append(Tag(mkey, text))


def translate_tag(call: Call, key, value=None) -> list:
    """tag(k, v=None) -> tag k (value "" when none)."""
    ops: list = []
    _tag(call, key, value, ops)
    return ops


def translate_set_tags(call: Call, tags) -> list:
    """set_tags(dict) -> tags; a bare string or list of strings -> tags with value ""."""
    ops: list = []
    if isinstance(tags, dict):
        for k, v in tags.items():
            _tag(call, k, v, ops)
    elif isinstance(tags, str):
        _tag(call, tags, None, ops)
    elif tags is not None:
        for k in tags:
            _tag(call, k, None, ops)
    return ops


def translate_add_properties(call: Call, properties) -> list:
    """add_properties(dict) -> params; both are write-once: a changed value is kept
    as tag azml_v1_bridge.property_conflict.<key>, never as a failing param."""
    ops: list = []
    for k, v in (properties or {}).items():
        key = _key(call, k, ops)
        text = "" if v is None else str(v)
        seen = call.state.params.get(key)
        if seen is not None:
            if seen != text:
                ops.append(Note("property_changed", str(k), "properties are write-once; new value kept as tag"))
                ops.append(Tag(("azml_v1_bridge.property_conflict." + key)[:MAX_KEY], text[:MAX_TAG_VALUE]))
            continue
        call.state.params[key] = text
        if len(text) > MAX_PARAM_VALUE:
            ops.append(Note("long_value", str(k), f"param value of {len(text)} chars cut; full value kept as artifact"))
            ops.append(Artifact(f"{LONG_VALUES_DIR}/param.{artifact_name(key)}.txt", text.encode()))
            text = text[:MAX_PARAM_VALUE]
        ops.append(Param(key, text))
    return ops


def upload_path(call: Call, name, ops: list) -> str:
    """The artifact path of an upload: artifact_name(name), unless another v1 name already
    folded to it (`../../etc/x` and `etc/x`): the later one then gets `_<8 hex digits of its
    name>` before the extension, and the rename is reported. The same name again keeps its
    path (the later file wins, as in v1's overwrite)."""
    path = artifact_name(name)
    state = call.state
    if state is None:
        return path
    text = str(name)
    owner = state.uploads.setdefault(path, text)
    if owner == text:
        return path
    stem, ext = posixpath.splitext(path)
    path = f"{stem}_{name_digest(text)}{ext}"
    state.uploads.setdefault(path, text)
    ops.append(Note("renamed", text, path))
    return path


def translate_upload_file(call: Call, name, path_or_stream, datastore_name=None) -> list:
    """upload_file(name, path_or_stream) -> artifact at name, inside the run's artifact root."""
    ops: list = []
    ops.append(ArtifactFile(upload_path(call, name, ops), path_or_stream))
    return ops


def translate_upload_files(call: Call, names, paths, return_artifacts=False,
                           timeout_seconds=None, datastore_name=None) -> list:
    """upload_files(names, paths) -> one artifact per name (_OfflineRun spells the first
    parameter `name`: bridge.py binds keywords by the called class's own signature)."""
    ops: list = []
    for n, p in zip(names or (), paths or ()):
        ops.append(ArtifactFile(upload_path(call, n, ops), p))
    return ops


def translate_upload_folder(call: Call, name, path, datastore_name=None) -> list:
    """upload_folder(name, path) -> every file below path, at name/<relative path>."""
    ops: list = []
    ops.append(ArtifactFile(upload_path(call, name, ops), path))
    return ops


def status_left_to_job(run) -> bool:
    """A job's own run (`_SubmittedRun`, what get_context() returns inside a job): v1's
    complete() and fail() only flush (fail() also posts the error) and cancel() only warns;
    the job sets the status when the script ends. The MLflow run stays open for later data
    and ends at exit with the status the script asked for (see `end_status`)."""
    cls = getattr(sys.modules.get("azureml.core.run"), "_SubmittedRun", None)
    return cls is not None and isinstance(run, cls)


def end_status(state: RunState | None, status: str) -> str:
    """The status a run ends with at exit: FINISHED becomes what complete()/fail() asked for
    on a job's run; an uncaught exception (FAILED) or SIGTERM (KILLED) wins."""
    if status == "FINISHED" and state is not None and state.end_status is not None:
        return state.end_status
    return status


def _end(call: Call, status: str) -> list:
    if status_left_to_job(call.instance):
        if call.state is not None and (call.state.end_status is None or status == "FAILED"):
            call.state.end_status = status
        return []
    return [End(status, call.now_ms)]


def translate_complete(call: Call, _set_status=True) -> list:
    """complete() -> FINISHED (a job's run: at exit, see status_left_to_job)."""
    return _end(call, "FINISHED")


def _error_tags(call: Call, error_details, error_code) -> list:
    ops: list = []
    if error_details is not None:
        _tag(call, "azureml.v1.error_details", error_details, ops)
    if error_code is not None:
        _tag(call, "azureml.v1.error_code", error_code, ops)
    return ops


def translate_fail(call: Call, error_details=None, error_code=None, _set_status=True) -> list:
    """fail(details, code) -> FAILED, details and code kept as tags (a job's run: FAILED at exit)."""
    return _error_tags(call, error_details, error_code) + _end(call, "FAILED")


def translate_cancel(call: Call) -> list:
    """cancel() -> KILLED (a job's run: nothing, v1 only warns there)."""
    if status_left_to_job(call.instance):
        return []
    return [End("KILLED", call.now_ms)]


def translate_enter(call: Call) -> list:
    """with run: -> the run exists from the start of the block."""
    return [CreateRun()]


def translate_exit(call: Call, exit_type=None, value=None, traceback=None) -> list:
    """end of with-block -> FINISHED, or FAILED (exception kept as tag); a job's run:
    v1 calls complete() there, whatever happened."""
    if status_left_to_job(call.instance):
        return _end(call, "FINISHED")
    if exit_type is None:
        return [End("FINISHED", call.now_ms)]
    detail = f"{exit_type.__name__}: {value}"
    return _error_tags(call, detail, None) + [End("FAILED", call.now_ms)]


def translate_flush(call: Call, timeout_seconds=300) -> list:
    """flush() -> nothing to write; the bridge waits for delivery."""
    return []


def translate_child_run(call: Call, name=None, run_id=None, outputs=None) -> list:
    """child_run(name) -> nested run (mlflow.parentRunId), run name = name."""
    return [NewRun(call.result, name=name, outputs=outputs)]


def translate_create_children(call: Call, count=None, tag_key=None, tag_values=None) -> list:
    """create_children(count | tag_key, tag_values) -> nested runs, tagged like v1 tags them."""
    children = call.result or []
    if count is not None and tag_key is None:
        tag_key, tag_values = "azureml.batch_child_number", list(range(count))
    values = list(tag_values or [None] * len(children))
    return [NewRun(child, tags={tag_key: str(v)} if tag_key is not None else {})
            for child, v in zip(children, values)]


def translate_start_logging(call: Call, name=None, run_id=None, outputs=None, *args, **kwargs) -> list:
    """Experiment.start_logging() -> top-level run in the v1 experiment's name (v1's
    Run._start_logging(experiment, name, run_id, outputs, snapshot_directory, ...))."""
    experiment = call.instance
    return [NewRun(call.result, name=kwargs.get("display_name") or name,
                   experiment=getattr(experiment, "name", None),
                   outputs=outputs if isinstance(outputs, str) or outputs is False else None)]


def translate_display_name(call: Call, value) -> list:
    """display_name = x -> run name."""
    return [Tag("mlflow.runName", "" if value is None else str(value)[:MAX_TAG_VALUE])]


def translate_description(call: Call, value) -> list:
    """description = x -> mlflow.note.content."""
    ops: list = []
    text = "" if value is None else str(value)
    ops.append(Tag("mlflow.note.content", text[:MAX_TAG_VALUE]))
    return ops


# v1 method name -> translation. patch.py wraps exactly these names.
TRANSLATORS = {
    "log": translate_log,
    "log_list": translate_log_list,
    "log_row": translate_log_row,
    "log_table": translate_log_table,
    "log_image": translate_log_image,
    "log_confusion_matrix": translate_log_confusion_matrix,
    "log_accuracy_table": translate_log_accuracy_table,
    "log_predictions": translate_log_predictions,
    "log_residuals": translate_log_residuals,
    "tag": translate_tag,
    "set_tags": translate_set_tags,
    "add_properties": translate_add_properties,
    "upload_file": translate_upload_file,
    "upload_files": translate_upload_files,
    "upload_folder": translate_upload_folder,
    "complete": translate_complete,
    "fail": translate_fail,
    "cancel": translate_cancel,
    "flush": translate_flush,
    "child_run": translate_child_run,
    "create_children": translate_create_children,
    "__enter__": translate_enter,
    "__exit__": translate_exit,
    "start_logging": translate_start_logging,
    "display_name": translate_display_name,
    "description": translate_description,
}
