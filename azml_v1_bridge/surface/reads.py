"""v1's read API served from MLflow (mlflow mode), in v1's return shapes.

Every read first flushes what was logged but not delivered yet, then asks the
MLflow run the v1 run maps to. What v1 kept as metrics and the bridge keeps as
files (string values `name.txt`, tables `name.json`, non-numeric lists) is
read back from those files, so `get_metrics` returns what v1 returned; those
files, and the bridge's own `azml_v1_bridge/` folder, are not listed among the
run's files, as v1 did not have them.

A v1 run object is served from MLflow when the bridge knows it (it was logged
to, or is a run the bridge handed out), when it is the job's own run
(`Run.get_context()`: `_SubmittedRun`/`_OfflineRun`), or when an MLflow run is
tagged with its v1 id (a run a bridged job logged). Any other v1 run (one
`experiment.submit()` or `Run.get()` returned, never logged to through MLflow)
raises `NotMapped`, and v1 answers for it itself.

Known differences from v1, by design: numbers come back as floats (1.0 == 1);
v1 rich metrics and images (`log_image`, `log_confusion_matrix`...) are files
in MLflow, not metric values; `get_status()` of a job's own run says
"Completed" after `complete()` (v1 left that to the job runtime); `get_tags()`
gives None for a tag set without a value, as v1 did (MLflow stores "").
"""
from __future__ import annotations

import datetime
import json
import os
import posixpath
import re
import tempfile
import time
import weakref

from .. import bridge, config, ranks
from ..runs import ATTR
from ..translate import (LONG_VALUES_DIR, MAX_PARAM_VALUE, MAX_TAG_VALUE, RENAMED_TAG_PREFIX,
                        V1_RUN_ID_TAG, artifact_name, kept_doc_path)

# MLflow status -> v1 status.
STATUS = {"RUNNING": "Running", "SCHEDULED": "NotStarted", "FINISHED": "Completed",
          "FAILED": "Failed", "KILLED": "Canceled"}
# Tags that are MLflow's or the bridge's bookkeeping, not tags the v1 script set.
HIDDEN_TAG_PREFIXES = ("mlflow.", "azml_v1_bridge.", "azureml.v1.")
ERROR_DETAILS_TAG, ERROR_CODE_TAG = "azureml.v1.error_details", "azureml.v1.error_code"
BRIDGE_DIR = "azml_v1_bridge/"
DOWNLOAD_WORKERS = 4

# v1 id -> the run object the script holds, so `parent` / `get_children()` give back the
# very objects it logs through (held weakly: the script owns them).
_objects: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()
_clients: dict = {}
_unmapped: dict = {}  # v1 id -> when MLflow last had no run for it
_refetched: set = set()  # local ids of records bound to an existing MLflow run (_bind)
UNMAPPED_SECONDS = 30.0


class NotMapped(Exception):
    """This v1 run has no MLflow run: v1 answers the read itself."""


class ReadError(RuntimeError):
    """The MLflow run cannot be read (the tracking store did not take the run)."""


# ---------------------------------------------------------------- which MLflow run

class Target:
    """A v1 run resolved to its MLflow run."""

    __slots__ = ("client", "run_id", "record", "_run")

    def __init__(self, client, run_id: str, record):
        self.client, self.run_id, self.record, self._run = client, run_id, record, None

    @property
    def run(self):
        if self._run is None:
            self._run = self.client.get_run(self.run_id)
        return self._run

    @property
    def shared(self) -> bool:
        """Many processes log into this run (it was adopted): ranks' series are merged back."""
        return self.record is not None and self.record.adopted and self.record.parent is None

    @property
    def v1_id(self) -> str:
        if self.record is not None:
            return self.record.v1_id
        return self.run.data.tags.get(V1_RUN_ID_TAG) or self.run_id


def remember(run) -> None:
    """Keep (weakly) the object the script holds for a v1 id."""
    try:
        _objects[str(run.id)] = run
    except (TypeError, AttributeError):
        pass


def _client(uri: str | None):
    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    client = _clients.get(uri)
    if client is None:
        from mlflow.tracking import MlflowClient

        from .. import azure

        kind = _run_artifacts_client() if azure.is_azureml(uri) else MlflowClient
        client = _clients[uri] = kind(tracking_uri=uri)
    return client


def _run_artifacts_client():
    """An MlflowClient that lists and downloads a run's files from the run's own artifact
    store. MLflow 3's client goes through `runs:/`, which also searches the run's logged models:
    a call Azure ML answers 404 (it serves no logged-models API)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    class RunArtifactsClient(MlflowClient):
        def _repo(self, run_id):
            return get_artifact_repository(self.get_run(run_id).info.artifact_uri)

        def list_artifacts(self, run_id, path=None):
            return self._repo(run_id).list_artifacts(path)

        def download_artifacts(self, run_id, path, dst_path=None):
            return self._repo(run_id).download_artifacts(path, dst_path)

    return RunArtifactsClient


def record_of(run):
    """The bridge's record of a v1 run object, if it has one (never makes one)."""
    record = run.__dict__.get(ATTR) if hasattr(run, "__dict__") else None
    if record is not None:
        return record
    v1_id = str(getattr(run, "id", "") or "")
    for candidate in reversed(bridge.STATE.registry.records):
        if candidate.v1_id == v1_id:
            return candidate
    return None


def _is_context_run(run) -> bool:
    return type(run).__name__ in ("_OfflineRun", "_SubmittedRun")


def target(run) -> Target:
    """The MLflow run of `run`, with everything logged so far delivered."""
    remember(run)
    record = record_of(run)
    if record is None and not _is_context_run(run):
        record = _bind_by_v1_id(run)
    if record is None or record.mlflow_run_id is None:
        bridge.mlflow_run_id(run)  # makes the record (and run) the first time
        record = record_of(run)
    bridge.flush(bridge.STATE.cfg.exit_timeout)
    if record is None or record.mlflow_run_id is None:
        raise ReadError(f"v1 run {getattr(run, 'id', run)!r} has no MLflow run yet: the tracking "
                        "store did not answer (see the warnings above)")
    return Target(_client(record.tracking_uri), record.mlflow_run_id, record)


def _bind_by_v1_id(run):
    """A v1 run the bridge never saw, found in MLflow by its v1 id tag (a bridged job logged it)."""
    v1_id = str(getattr(run, "id", "") or "")
    missed = _unmapped.get(v1_id)
    if not v1_id or (missed is not None and time.monotonic() - missed < UNMAPPED_SECONDS):
        raise NotMapped(run)
    client = _client(None)
    try:
        ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
        found = client.search_runs(ids, filter_string=f"tags.`{V1_RUN_ID_TAG}` = '{_quote(v1_id)}'",
                                   max_results=1) if ids else []
    except Exception:
        found = []
    if not found:
        # v1 answers; asked again after a while (wait_for_completion polls every few seconds)
        _unmapped[v1_id] = time.monotonic()
        raise NotMapped(run)
    return _bind(run, found[0], parent=None)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _bind(run, mlflow_run, parent):
    """A record for `run` that writes into the existing MLflow run (adopted: not ours to end)."""
    record, fresh = bridge.STATE.registry.record_for(run, bridge.STATE.mode, parent=parent)
    if fresh or record.mlflow_run_id is None:
        record.mlflow_run_id = mlflow_run.info.run_id
        record.experiment_id = mlflow_run.info.experiment_id
        record.adopted = True
        _refetched.add(record.local_id)
        bridge.LOG_BINDING.invalidate()  # run.log bound on its objects took it as not adopted
        if parent is not None:
            record.tracking_uri = parent.tracking_uri
    return record


def _object_for(mlflow_run, parent_record):
    """The v1 run object for an MLflow run: the script's own if it holds one, else a new
    `_OfflineRun` that logs into that MLflow run."""
    v1_id = mlflow_run.data.tags.get(V1_RUN_ID_TAG) or mlflow_run.info.run_id
    obj = _objects.get(v1_id)
    if obj is not None:
        return obj
    from azureml.core.run import _OfflineRun

    obj = _OfflineRun(run_id=v1_id)
    record = next((r for r in reversed(bridge.STATE.registry.records)
                   if r.mlflow_run_id == mlflow_run.info.run_id), None)
    if record is not None:
        obj.__dict__[ATTR] = record
    else:
        _bind(obj, mlflow_run, parent_record)
    remember(obj)
    return obj


def _object_for_record(record):
    obj = _objects.get(record.v1_id)
    if obj is not None:
        return obj
    from azureml.core.run import _OfflineRun

    obj = _OfflineRun(run_id=record.v1_id)
    obj.__dict__[ATTR] = record
    remember(obj)
    return obj


# ---------------------------------------------------------------- names

def _original_names(tags: dict) -> dict:
    """MLflow key -> the v1 name it was rewritten from (translate.mlflow_key)."""
    n = len(RENAMED_TAG_PREFIX)
    return {k[n:]: v for k, v in tags.items() if k.startswith(RENAMED_TAG_PREFIX)}


def _kinds(record) -> list:
    """(v1 name, "text" | "list", document path) for names the bridge keeps as files (this
    process's runs); a name used for two kinds has two documents."""
    state = getattr(record, "state", None)
    if state is None:
        return []
    return [(name, kind, _doc_path(state, name, kind))
            for name, kinds in sorted(state.kinds.items()) for kind in sorted(kinds)]


def _tables(record) -> set:
    return set(record.state.rows) if record is not None else set()


def _doc_path(state, name: str, kind: str) -> str:
    return kept_doc_path(state, artifact_name(name), ".txt" if kind == "text" else ".json", kind)


def _table_path(record, table: str) -> str:
    return kept_doc_path(getattr(record, "state", None), artifact_name(table), ".json", "table")


# ---------------------------------------------------------------- metrics

def get_metrics(run, name=None, recursive=False, run_type=None, populate=False) -> dict:
    """{name: value} for one value, {name: [values]} for several, {table: {column: [values]}}
    for log_row/log_table; recursive=True: {v1 run id: that} for the run and every
    descendant that has metrics."""
    t = target(run)
    if not recursive:
        return _metrics_of(t, name)
    out = {}
    for member in [t] + _descendants(t):
        metrics = _metrics_of(member, name)
        if metrics:
            out[member.v1_id] = metrics
    return out


def _metrics_of(t: Target, only=None) -> dict:
    data = t.run.data
    names = _original_names(data.tags)
    tables = _tables(t.record)
    kinds = _kinds(t.record)
    shared = t.shared
    series: dict = {}   # v1 name -> [(timestamp, rank, step, value)]
    table_points: dict = {}  # table -> column -> [(rank, step, value)]
    for key in data.metrics:
        base, rank = ranks.split_key(key) if shared else (key, None)
        v1_name = names.get(base, base)
        table = next((tb for tb in tables if v1_name.startswith(tb + ".")), None)
        if only is not None and (table or v1_name) != only:
            continue
        history = t.client.get_metric_history(t.run_id, key)
        order = _rank_order(rank)
        if table is not None:
            column = table_points.setdefault(table, {}).setdefault(v1_name[len(table) + 1:], [])
            column.extend((order, m.step, m.value) for m in history)
        else:
            series.setdefault(v1_name, []).extend(
                (m.timestamp, order, m.step, m.value) for m in history)
    out: dict = {}
    for v1_name in sorted(series):
        values = [p[3] for p in sorted(series[v1_name], key=lambda p: p[:3])]
        out[v1_name] = _shape(values)
    for table in sorted(tables):
        if only is not None and table != only:
            continue
        columns = _read_table(t, table)
        if columns is None and table in table_points:
            columns = {col: [p[2] for p in sorted(points)]
                       for col, points in table_points[table].items()}
        if columns:
            out[table] = columns
    for v1_name, kind, path in kinds:
        if only is not None and v1_name != only:
            continue
        values = _read_doc_values(t, path, kind)
        if values:
            numbers = out.get(v1_name, [])  # the name was also logged as a number
            out[v1_name] = _shape((numbers if isinstance(numbers, list) else [numbers]) + values)
    return out


def _rank_order(rank) -> tuple:
    if rank is None:
        return (0, 0, "")
    return (1, int(rank), "") if rank.isdigit() else (1, 0, rank)


def _shape(values: list):
    """v1: one value is the value itself, several are a list."""
    return values[0] if len(values) == 1 else values


def _rank_variants(t: Target, path: str) -> list:
    """`path` and, in a shared run, every rank's `stem/rank_N.ext` (rank order)."""
    paths = [path]
    if t.shared:
        stem, ext = posixpath.splitext(path)
        try:
            listed = t.client.list_artifacts(t.run_id, stem)
        except Exception:
            listed = []
        found = []
        for info in listed:
            base, rank = ranks.split_path(info.path)
            if rank is not None and base == path and not info.is_dir:
                found.append((_rank_order(rank), info.path))
        paths += [p for _, p in sorted(found)]
    return paths


def _download_bytes(t: Target, path: str) -> bytes | None:
    with tempfile.TemporaryDirectory(prefix="azml_v1_bridge-read-") as tmp, config.quiet_progress_bars():
        try:
            local = t.client.download_artifacts(t.run_id, path, tmp)
        except Exception:
            return None
        if not os.path.isfile(local):
            return None
        with open(local, "rb") as fh:
            return fh.read()


def _read_table(t: Target, table: str):
    """The whole table as v1 returned it ({column: [cells]}), ranks' rows one after another."""
    merged: dict | None = None
    nrows = 0
    for path in _rank_variants(t, _table_path(t.record, table)):
        data = _download_bytes(t, path)
        if data is None:
            continue
        try:
            columns = json.loads(data.decode("utf-8"))
        except ValueError:
            continue
        if not isinstance(columns, dict):
            continue
        merged = {} if merged is None else merged
        width = max((len(v) for v in columns.values()), default=0)
        for col in merged:
            if col not in columns:
                merged[col].extend([None] * width)
        for col, cells in columns.items():
            merged.setdefault(col, [None] * nrows).extend(cells)
        nrows += width
    return merged


def _read_doc_values(t: Target, path: str, kind: str) -> list:
    values: list = []
    for variant in _rank_variants(t, path):
        data = _download_bytes(t, variant)
        if data is None:
            continue
        if kind == "text":
            text = data.decode("utf-8", "surrogatepass")
            values.extend(text[:-1].split("\n") if text.endswith("\n") else text.split("\n"))
        else:
            try:
                loaded = json.loads(data.decode("utf-8"))
            except ValueError:
                continue
            values.extend(loaded if isinstance(loaded, list) else [loaded])
    return values


# ---------------------------------------------------------------- tags, properties

def get_tags(run) -> dict:
    return _tags_of(target(run))


def _tags_of(t: Target) -> dict:
    tags = t.run.data.tags
    names = _original_names(tags)
    out = {}
    for key, value in tags.items():
        if key.startswith(HIDDEN_TAG_PREFIXES):
            continue
        if len(value) == MAX_TAG_VALUE:
            value = _long_value(t, "tag", key, value)
        out[names.get(key, key)] = None if value == "" else value
    return out


def get_properties(run) -> dict:
    return _properties_of(target(run))


def _properties_of(t: Target) -> dict:
    data = t.run.data
    names = _original_names(data.tags)
    out = {}
    for key, value in data.params.items():
        if len(value) == MAX_PARAM_VALUE:
            value = _long_value(t, "param", key, value)
        out[names.get(key, key)] = value
    return out


def _long_value(t: Target, kind: str, key: str, value: str) -> str:
    """A value cut to MLflow's limit: the whole one is kept as a file (translate)."""
    data = _download_bytes(t, f"{LONG_VALUES_DIR}/{kind}.{artifact_name(key)}.txt")
    return data.decode("utf-8", "surrogatepass") if data is not None else value


# ---------------------------------------------------------------- files

def _all_files(t: Target, path: str | None = None) -> list:
    out = []
    for info in t.client.list_artifacts(t.run_id, path):
        if info.is_dir:
            out.extend(_all_files(t, info.path))
        else:
            out.append(info.path)
    return out


def _generated(t: Target) -> set:
    """The files the bridge made to hold v1 metrics (not files in v1)."""
    paths = {_table_path(t.record, table) for table in _tables(t.record)}
    paths |= {path for _, _, path in _kinds(t.record)}
    return paths


def _file_names(t: Target) -> list:
    return list(_listing(t))


# MLflow's image series (client.log_image(key=, step=)): a PNG and a compressed copy per step.
_SERIES = re.compile(r"^images/(?P<key>.+)\+step\+(?P<step>\d+)\+timestamp\+\d+\+[0-9a-f-]+"
                     r"(?P<compressed>\+compressed)?\.(png|webp)$")


def _series_name(path: str):
    """`images/<key>+step+<n>+...png` -> the image as the user logged it: `<key>.png` for the
    first step, `<key>_<n>.png` after (like log_image(path=) repeats); None for the compressed
    copy; the path itself for any other file."""
    match = _SERIES.match(path)
    if match is None:
        return path
    if match["compressed"]:
        return None
    step = int(match["step"])
    key = match["key"].replace("~", "/")
    return f"{key}.png" if step == 0 else f"{key}_{step}.png"


def _listing(t: Target) -> dict:
    """{name as v1 lists it: artifact path} for the files the user logged."""
    generated = _generated(t)
    out = {}
    for path in _all_files(t):
        if path.startswith(BRIDGE_DIR):
            continue
        base = ranks.split_path(path)[0] if t.shared else path
        if path in generated or base in generated:
            continue
        shown = _series_name(path)
        if shown is not None:
            out.setdefault(shown, path)
    return out


def get_file_names(run) -> list:
    return _file_names(target(run))


def _not_found(t: Target, name: str):
    from azureml.exceptions import UserErrorException

    available = ",".join(_file_names(t))
    return UserErrorException(f"File with path {name} was not found,\n"
                              f"available files include: {available}.")


def _is_file(t: Target, name: str) -> bool:
    folder = posixpath.dirname(name) or None
    try:
        listed = t.client.list_artifacts(t.run_id, folder)
    except Exception:
        return False
    return any(info.path == name and not info.is_dir for info in listed)


def _fetch(t: Target, name: str, output_file_path: str) -> None:
    """Download artifact `name` to exactly `output_file_path` (a temp folder beside it, then
    a rename: a reader never sees half a file)."""
    folder = os.path.dirname(os.path.abspath(output_file_path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".azml_v1_bridge-download-", dir=folder) as tmp, config.quiet_progress_bars():
        local = t.client.download_artifacts(t.run_id, name, tmp)
        os.replace(local, output_file_path)


def download_file(run, name, output_file_path=None, _validate_checksum=False) -> None:
    """v1: the file goes to output_file_path (a folder: into it, under its own name;
    None: the current folder); a name the run does not have raises UserErrorException."""
    t = target(run)
    name = str(name).replace("\\", "/")
    real = name
    if not _is_file(t, name):
        real = _listing(t).get(name)
        if real is None:
            raise _not_found(t, name)
    if output_file_path is None:
        output_file_path = os.path.basename(name)
    output_file_path = os.fspath(output_file_path)
    if os.path.isdir(output_file_path):
        output_file_path = os.path.join(output_file_path, os.path.basename(name))
    _fetch(t, real, output_file_path)


def download_files(run, prefix=None, output_directory=None, output_paths=None, batch_size=100,
                   append_prefix=True, timeout_seconds=None) -> None:
    """v1: every file under folder `prefix` (all files when None) to its own path, below
    output_directory when given (without the prefix when append_prefix=False)."""
    t = target(run)
    prefix = "" if not prefix else str(prefix).replace("\\", "/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    listing = _listing(t)
    paths = [p for p in listing if p.startswith(prefix)]
    specified = output_paths is not None
    outs = list(output_paths) if specified else list(paths)
    if len(outs) != len(paths) or len(set(outs)) != len(outs):
        outs = list(paths)
    if output_directory is not None:
        if not append_prefix and not specified:
            outs = [p.replace(prefix, "", 1) for p in outs]
        outs = [os.path.join(output_directory, p) for p in outs]
    if not paths:
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(DOWNLOAD_WORKERS, len(paths)),
                            thread_name_prefix="azml_v1_bridge-download") as pool:
        for future in [pool.submit(_fetch, t, listing[p], o) for p, o in zip(paths, outs)]:
            future.result()


# ---------------------------------------------------------------- runs around this one

def _children_runs(t: Target) -> list:
    """The MLflow runs whose parent is this one, in the order they were created."""
    filter_string = f"tags.`mlflow.parentRunId` = '{_quote(t.run_id)}'"
    runs, token = [], None
    while True:
        page = t.client.search_runs([t.run.info.experiment_id], filter_string=filter_string,
                                    max_results=1000, page_token=token)
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    position = {r.mlflow_run_id: i for i, r in enumerate(bridge.STATE.registry.records)
                if r.mlflow_run_id}
    return sorted(runs, key=lambda r: (position.get(r.info.run_id, len(position)),
                                       r.info.start_time or 0,
                                       r.data.tags.get(V1_RUN_ID_TAG, r.info.run_id)))


def _child_target(t: Target, mlflow_run) -> Target:
    record = next((r for r in reversed(bridge.STATE.registry.records)
                   if r.mlflow_run_id == mlflow_run.info.run_id), None)
    child = Target(t.client, mlflow_run.info.run_id, record)
    child._run = mlflow_run
    return child


def _descendants(t: Target) -> list:
    out, queue = [], [t]
    while queue:
        current = queue.pop(0)
        for mlflow_run in _children_runs(current):
            child = _child_target(current, mlflow_run)
            out.append(child)
            queue.append(child)
    return out


def _matches(values: dict, wanted) -> bool:
    if wanted is None:
        return True
    if isinstance(wanted, str):
        return wanted in values
    return all(k in values and values[k] == v for k, v in dict(wanted).items())


def get_children(run, recursive=False, tags=None, properties=None, type=None, status=None,
                 _rehydrate_runs=True):
    """The child runs (all descendants with recursive=True) as v1 run objects, oldest first;
    filters as v1: tags / properties ("key" or {key: value}), status."""
    t = target(run)
    members = _descendants(t) if recursive else [_child_target(t, r) for r in _children_runs(t)]
    selected = []
    for child in members:
        if tags is not None and not _matches(_tags_of(child), tags):
            continue
        if properties is not None and not _matches(_properties_of(child), properties):
            continue
        if status is not None and _status(child) != status:
            continue
        parent_record = child.record.parent if child.record is not None else t.record
        selected.append(_object_for(child.run, parent_record))
    return (obj for obj in selected)  # v1 returns a generator


def parent(run):
    """The parent run object, or None for a top-level run."""
    t = target(run)
    if t.record is not None and t.record.parent is not None:
        return _object_for_record(t.record.parent)
    parent_id = t.run.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        return None
    try:
        parent_run = t.client.get_run(parent_id)
    except Exception:
        return None
    return _object_for(parent_run, None)


# ---------------------------------------------------------------- status, details

def _status(t: Target) -> str:
    status = t.run.info.status
    return STATUS.get(status, str(status).title())


def get_status(run) -> str:
    return _status(target(run))


def _utc(ms) -> str | None:
    if not ms:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def get_details(run) -> dict:
    """The fields v1 users read, as v1 spelled them (endTimeUtc only once the run ended)."""
    t = target(run)
    info, tags = t.run.info, t.run.data.tags
    details = {"runId": t.v1_id, "status": _status(t), "startTimeUtc": _utc(info.start_time)}
    if info.end_time and info.status not in ("RUNNING", "SCHEDULED"):
        details["endTimeUtc"] = _utc(info.end_time)
    details.update({"services": {}, "properties": _properties_of(t), "tags": _tags_of(t),
                    "inputDatasets": [], "outputDatasets": [], "logFiles": {},
                    "submittedBy": tags.get("mlflow.user")})
    if ERROR_DETAILS_TAG in tags or ERROR_CODE_TAG in tags:
        details["error"] = {"error": {"code": tags.get(ERROR_CODE_TAG) or "UserError",
                                      "message": tags.get(ERROR_DETAILS_TAG, "")}}
    return details


def display_name(run) -> str | None:
    return target(run).run.info.run_name


def description(run) -> str | None:
    return target(run).run.data.tags.get("mlflow.note.content")


class Experiment:
    """What an offline run's `experiment` gives in mlflow mode: the MLflow experiment's
    name and id (v1's Experiment needs a workspace, which an offline run has not)."""

    workspace = None

    def __init__(self, name: str, experiment_id: str, tracking_uri: str | None):
        self.name, self.id, self.tracking_uri = name, experiment_id, tracking_uri

    def __repr__(self):
        return f"Experiment(name={self.name!r}, id={self.id!r})"

    def __eq__(self, other):
        return isinstance(other, Experiment) and (self.name, self.id) == (other.name, other.id)

    def __hash__(self):
        return hash((self.name, self.id))


# ---------------------------------------------------------------- waiting, logs

# v1's log folders: what get_details_with_logs() reads back as text, when a run has them.
LOG_FOLDERS = ("azureml-logs", "logs", "user_logs", "system_logs")
RUNNING = ("RUNNING", "SCHEDULED")
POLL_MIN, POLL_MAX = 2.0, 60.0  # seconds between status reads of another process's run


def _own(t: Target) -> bool:
    """A run this process logs into, so that waiting for its end would wait on itself: one it
    made or adopted to log into (the job's run, MLFLOW_RUN_ID's, the user's active run), as
    opposed to a run only refetched here (Run(experiment, id) of another process's run)."""
    if t.run_id in (bridge.STATE.cfg.launcher_run_id, config.mlflow_setting(config.MLFLOW_RUN_ID)):
        return True  # the job's run: its owner ends it after this process
    pid = os.getpid()
    return any(r.mlflow_run_id == t.run_id and r.owner_pid == pid and r.local_id not in _refetched
               for r in list(bridge.STATE.registry.records))


def wait_for_completion(run, show_output=False, wait_post_processing=False, raise_on_error=True):
    """v1: the run's details once it is no longer running. A run that ended answers at once;
    one this process is logging into answers once its data is in MLflow (it would wait on
    itself); another process's run is polled (the longer it runs, the rarer, as v1 does).
    A Failed run raises v1's ActivityFailedException when raise_on_error."""
    t = target(run)
    if t.run.info.status in RUNNING and not _own(t):
        started = time.monotonic()
        while t.run.info.status in RUNNING:
            elapsed = time.monotonic() - started
            time.sleep(min(POLL_MAX, max(POLL_MIN, elapsed / 10)))
            t._run = None  # read it again
    details = get_details(run)
    if show_output:
        url = portal_url(t)
        print(f"RunId: {details['runId']}\nWeb View: {url}\n\nExecution Summary\n"
              f"=================\nRunId: {details['runId']}\nWeb View: {url}\n", flush=True)
    if details["status"] == "Failed" and raise_on_error:
        from azureml.exceptions import ActivityFailedException

        error = details.get("error") or ("Detailed error not set on the Run. Please check the logs "
                                         "for details.")
        raise ActivityFailedException(error_details=json.dumps(error, indent=4))
    return details


def _log_files(t: Target) -> dict:
    """{artifact path: text} of the files under v1's log folders, if the run has any."""
    out = {}
    for folder in LOG_FOLDERS:
        try:
            paths = _all_files(t, folder)
        except Exception:
            continue
        for path in paths:
            data = _download_bytes(t, path)
            if data is not None:
                out[path] = data.decode("utf-8", "replace")
    return out


def get_details_with_logs(run) -> dict:
    """v1: get_details() with logFiles holding each log's text (MLflow runs have log files
    only when the script uploaded them into a v1 log folder such as logs/)."""
    t = target(run)
    details = get_details(run)
    details["logFiles"] = _log_files(t)
    return details


def get_all_logs(run, destination=None) -> list:
    """v1: every log file written below destination (default assets/<run id>); their paths."""
    from azureml.exceptions import UserErrorException

    t = target(run)
    if destination:
        if os.path.exists(destination) and not os.path.isdir(destination):
            raise UserErrorException(f"{destination} exists and is not a directory.")
    else:
        destination = os.path.join("assets", t.v1_id)
    os.makedirs(destination, exist_ok=True)
    written = []
    for name, text in _log_files(t).items():
        path = os.path.join(destination, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(path)
    return written


def portal_uri(t: Target) -> str:
    """The tracking URI of the run's store."""
    if t.record is not None and t.record.tracking_uri:
        return t.record.tracking_uri
    return t.client._tracking_client.tracking_uri


def portal_url(t: Target) -> str:
    """Where to look at the run: its page in the MLflow UI (tracking server), else the
    `mlflow ui` command that shows the store."""
    from .. import report

    uri = report.public_uri(portal_uri(t))
    url = report.run_url(uri, t.run.info.experiment_id, t.run_id)
    return url or f"mlflow ui --backend-store-uri {uri}"


def get_portal_url(run) -> str:
    return portal_url(target(run))


def get_detailed_status(run) -> dict:
    return {"status": get_status(run), "details": None}
