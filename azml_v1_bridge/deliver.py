"""The writer: executes operations against MLflow on a background thread.

The caller's thread only appends a tuple to a deque (a lone metric point as a
flat tuple of atoms, which the garbage collector stops tracking at once, so a
long queue never triggers full collections in the user's process). The writer
wakes every `flush_interval`, or sooner when the queue grows, drains it,
groups the work per run, and sends it in this order per run: run creation,
`log_batch` requests within MLflow's limits (<= 1000 metrics, <= 100 params,
<= 100 tags, never the same param key twice in one request), artifacts,
images, and the terminal status last.

Growing documents (the text, table and list artifacts that many calls build)
are uploaded whole at every flush point and at most every `DOC_INTERVAL`
seconds in between, never once per cycle.

Failures, by MLflow error code:
- about an item (a bad value): the batch is split in halves until the bad item
  is alone; it is reported and everything else is delivered;
- about the run (deleted, no permission): that run's work goes to the journal;
- anything else is transient: retried with backoff for
  AZML_V1_BRIDGE_RETRY_SECONDS (5 s at most once the process is exiting), on
  top of MLflow's own HTTP retries (MLFLOW_HTTP_REQUEST_* defaults set here,
  never overriding the user's). A store that stays down is marked down: the
  work that was not delivered, and from then on all work of every run that
  was journaled, goes to the JSON-lines journal (sticky per run, so that
  replay keeps call order). A down store is probed every retry window (15 s
  at most); once it answers, the writer replays its own journal for the runs
  it holds (idempotently, see replay.py) and sends them live again. At exit
  nothing is probed or replayed: the journal is left for
  `azml-v1-bridge replay`, and whatever a stuck writer still holds when
  AZML_V1_BRIDGE_EXIT_TIMEOUT is up is journaled from the exiting thread.

`azml-v1-bridge replay JOURNAL` (replay.py) delivers a journal later.
"""
from __future__ import annotations

import base64
import collections
import itertools
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import weakref
from urllib.parse import urlsplit, urlunsplit

from . import config
from .ops import (AppendTable, AppendText, Artifact, ArtifactFile, Chart, CreateRun, End,
                  ExtendList, Image, Metric, Note, Param, Tag)

logger = logging.getLogger("azml_v1_bridge")

MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000
WAKE_EVERY = 1024          # queued calls that wake the writer before its interval
CYCLE_MAX = 50_000         # calls handled before a send, to bound memory per cycle
DOC_INTERVAL = 10.0        # seconds between uploads of a growing document between flushes
PROBE_INTERVAL = 15.0      # seconds between two probes of a store marked down
EXIT_RETRY_SECONDS = 5.0   # retry window once the process is exiting
# The data sent is wrong: retrying cannot help, splitting the batch isolates it.
ITEM_ERRORS = frozenset({
    "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "RESOURCE_ALREADY_EXISTS",
    "ALREADY_EXISTS", "INVALID_STATE", "MAX_READ_SIZE_EXCEEDED", "MAX_BLOCK_SIZE_EXCEEDED",
    "MAX_LIST_SIZE_EXCEEDED",
})
# The store answers but will not take this run's data: journal it, do not retry.
RUN_ERRORS = frozenset({
    "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED",
    "CUSTOMER_UNAUTHORIZED", "ENDPOINT_NOT_FOUND", "FEATURE_DISABLED", "NOT_IMPLEMENTED",
})
FLUSH = object()
JOURNAL_VERSION = 1


class Unreachable(Exception):
    """The store kept failing past the retry window: spill to the journal."""

    unsent = None  # (metrics, params, tags) a half-sent batch did not deliver


class Refused(Unreachable):
    """The store answers but refuses this run's data (deleted run, no permission)."""


def error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def is_item_error(exc: BaseException) -> bool:
    """An error about the data sent (retrying cannot help), not about the store."""
    return error_code(exc) in ITEM_ERRORS


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return config.redact(text if len(text) < 500 else text[:500] + "...")


def strip_credentials(uri: str | None) -> str | None:
    """The URI without user:password@ (the journal never stores credentials)."""
    if not uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return config.redact(uri)
    if parts.netloc and "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
        return urlunsplit(parts)
    return config.redact(uri)


def json_number(value: float):
    """A float as JSON can carry it: non-finite values as the strings MLflow's protobuf JSON uses."""
    if value - value == 0:
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def from_json_number(value) -> float:
    return float(value)  # float("NaN"), float("Infinity") and float("-Infinity") all parse


class RunStats:
    """What happened to one run, for the end-of-run report."""

    def __init__(self):
        self.calls: collections.Counter = collections.Counter()
        self.metric_points = 0
        self.artifacts = 0
        self.renamed: dict[str, str] = {}
        self.notes: list[dict] = []
        self.delivery_failures = 0
        self.journaled = 0

    def to_json(self) -> dict:
        return {"calls": dict(self.calls), "metric_points": self.metric_points,
                "artifacts": self.artifacts, "renamed": self.renamed, "notes": self.notes,
                "delivery_failures": self.delivery_failures, "journaled": self.journaled}


class Work:
    """One run's share of a cycle, in the order it must be sent."""

    __slots__ = ("create", "metrics", "params", "tags", "files", "images", "charts",
                 "docs", "end")

    def __init__(self):
        self.create = False
        self.metrics: list = []  # (key, value, timestamp, step)
        self.params: list = []   # (key, value)
        self.tags: dict = {}
        self.files: list = []    # (artifact path, bytes | staged source path)
        self.images: list = []
        self.charts: list = []
        self.docs: set = set()   # paths of growing documents due for upload
        self.end: End | None = None

    def empty(self) -> bool:
        return not (self.create or self.metrics or self.params or self.tags or self.files
                    or self.images or self.charts or self.docs or self.end)

    def count(self) -> int:
        return (len(self.metrics) + len(self.params) + len(self.tags) + len(self.files)
                + len(self.docs) + len(self.images) + (self.end is not None))


class Doc:
    """A whole artifact built from many calls (text lines, a table, a list)."""

    __slots__ = ("kind", "lines", "columns", "nrows", "values")

    def __init__(self, kind):
        self.kind, self.lines, self.columns, self.nrows, self.values = kind, [], {}, 0, []

    def add(self, op) -> None:
        if self.kind == "text":
            self.lines.append(op.text)
        elif self.kind == "list":
            self.values.extend(op.values)
        else:
            width = max((len(v) for v in op.columns.values()), default=0)
            for col in self.columns:
                if col not in op.columns:
                    self.columns[col].extend([None] * width)
            for col, cells in op.columns.items():
                column = self.columns.setdefault(col, [None] * self.nrows)
                column.extend(cells)
                column.extend([None] * (width - len(cells)))
            self.nrows += width

    def render(self) -> bytes:
        if self.kind == "text":
            return ("\n".join(self.lines) + "\n").encode("utf-8", "surrogatepass")
        body = self.values if self.kind == "list" else self.columns
        return json.dumps(body, indent=1, ensure_ascii=False).encode("utf-8")


DOC_KINDS = {AppendText: "text", AppendTable: "table", ExtendList: "list"}


def creation_tags(record) -> dict:
    """The tags a run is created with (the parent's id is added by whoever creates it)."""
    tags = {k: v for k, v in record.tags.items() if k != "mlflow.parentRunId"}
    tags.setdefault("mlflow.source.name", os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0]
                    else "")
    tags.setdefault("mlflow.source.type", "LOCAL")
    return tags


class Journal:
    """JSON lines of everything that could not be delivered; `azml-v1-bridge replay` sends it.

    Lines (`t` is the kind): `journal` (a header per writing process: version, pid, host,
    cwd), `run` (how to find or re-create a run: written again whenever that changes),
    `create`, `metrics` (`m`: [key, value, timestamp, step], non-finite values as "NaN",
    "Infinity", "-Infinity"), `params`, `tags`, `artifact` (`b64` bytes or `file` in the
    folder JOURNAL.files), `image`, `end`. Each spill is one O_APPEND write, so processes
    sharing a journal path never interleave inside a line.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._fd: int | None = None
        self._described: dict = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()

    @property
    def files_dir(self) -> str:
        return self.path + ".files"

    def _open(self) -> None:
        if self._fd is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            header = {"t": "journal", "v": JOURNAL_VERSION, "pid": os.getpid(),
                      "host": socket.gethostname(), "cwd": os.getcwd(),
                      "created_ms": int(time.time() * 1000)}
            self._append([json.dumps(header)])

    def _append(self, lines: list) -> None:
        data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _describe(self, record, uri: str | None, lines: list) -> None:
        if record.parent is not None:
            self._describe(record.parent, uri, lines)
        line = {"t": "run", "run": record.local_id, "tracking_uri": strip_credentials(uri),
                "v1_id": record.v1_id,
                "parent": record.parent.local_id if record.parent is not None else None,
                "experiment_id": record.experiment_id, "experiment_name": record.experiment_name,
                "mlflow_run_id": record.mlflow_run_id, "run_name": record.run_name,
                "start_ms": record.start_ms, "adopted": bool(record.adopted),
                "tags": creation_tags(record)}
        if self._described.get(record.local_id) != line:
            self._described[record.local_id] = line
            lines.append(json.dumps(line, ensure_ascii=False))

    def write(self, record, uri: str | None, work: Work, docs: list) -> int:
        """Append one run's pending work (docs: [(path, bytes)] already rendered);
        returns how many items were written."""
        with self._lock:
            self._open()
            rid = record.local_id
            lines: list = []
            self._describe(record, uri, lines)
            if work.create:
                lines.append(json.dumps({"t": "create", "run": rid}))
            for i in range(0, len(work.metrics), MAX_METRICS):
                chunk = work.metrics[i:i + MAX_METRICS]
                lines.append(json.dumps({"t": "metrics", "run": rid,
                                         "m": [[k, json_number(v), t, s] for k, v, t, s in chunk]},
                                        ensure_ascii=False))
            if work.params:
                lines.append(json.dumps({"t": "params", "run": rid,
                                         "p": [[k, v] for k, v in work.params]},
                                        ensure_ascii=False))
            if work.tags:
                lines.append(json.dumps({"t": "tags", "run": rid,
                                         "tags": [[k, v] for k, v in work.tags.items()]},
                                        ensure_ascii=False))
            files = list(work.files) + list(docs)
            for path, data in files:
                lines.append(json.dumps({"t": "artifact", "run": rid, "path": path,
                                         **self._payload(data)}, ensure_ascii=False))
            for op in work.images:
                lines.append(json.dumps({"t": "image", "run": rid, "key": op.key, "step": op.step,
                                         "timestamp": op.timestamp, **self._payload(op.data)},
                                        ensure_ascii=False))
            if work.end is not None:
                lines.append(json.dumps({"t": "end", "run": rid, "status": work.end.status,
                                         "timestamp": work.end.timestamp}))
            if lines:
                self._append(lines)
            return (len(work.metrics) + len(work.params) + len(work.tags) + len(files)
                    + len(work.images) + (work.end is not None))

    def _payload(self, data) -> dict:
        if isinstance(data, (bytes, bytearray)):
            if len(data) <= 64 * 1024:
                return {"b64": base64.b64encode(data).decode("ascii")}
            name = f"{os.getpid()}-{next(self._seq):06d}.bin"
            os.makedirs(self.files_dir, exist_ok=True)
            with open(os.path.join(self.files_dir, name), "wb") as fh:
                fh.write(data)
            return {"file": name}
        import shutil

        name = f"{os.getpid()}-{next(self._seq):06d}-{os.path.basename(data)}"
        os.makedirs(self.files_dir, exist_ok=True)
        shutil.copyfile(data, os.path.join(self.files_dir, name))
        return {"file": name}

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                try:
                    os.close(self._fd)
                except OSError:
                    pass
                self._fd = None


_WRITERS: "weakref.WeakSet[Writer]" = weakref.WeakSet()
FORK_WAIT = 5.0  # seconds os.fork() waits for a writer to finish its current MLflow call


def _before_fork() -> None:
    """A fork while the writer thread is inside MLflow can hand the child a lock held by a
    thread that does not exist there (a module lock mid-import: the child's first MLflow call
    then hangs for ever). So fork waits, briefly, for the writer's current call to end."""
    for writer in list(_WRITERS):
        thread = writer._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            continue
        writer._fork_held = writer._busy.acquire(timeout=FORK_WAIT)


def _after_fork_in_parent() -> None:
    for writer in list(_WRITERS):
        if writer._fork_held:
            writer._fork_held = False
            writer._busy.release()


def _after_fork_in_child() -> None:
    for writer in list(_WRITERS):
        writer._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


class QueueFront:
    """The caller's side of a writer: a deque, a thread started at the first call, flush
    markers. `Writer` delivers from its thread; `sidecar.ProcessWriter` forwards from it."""

    THREAD_NAME = "azml_v1_bridge-writer"

    def _init_front(self, cfg: config.Config) -> None:
        self.cfg = cfg
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.RLock()  # RLock: a SIGTERM handler may flush mid-_start
        self.records: dict[str, object] = {}
        self._staging = None

    # ----------------------------------------------------------- caller side

    def submit(self, record, method: str, ops: list) -> None:
        lid = record.local_id
        if len(ops) == 1 and type(ops[0]) is Metric and lid in self.records:
            m = ops[0]
            item = (lid, method, m.key, m.value, m.timestamp, m.step)
        else:
            self.records[lid] = record
            item = (record, method, ops)
        queue = self._queue
        queue.append(item)
        if self._thread is None:
            self._start()
        n = len(queue)
        if n % WAKE_EVERY == 0:
            self._wake.set()
            if n > self.cfg.queue_max:
                self._backpressure()

    def _backpressure(self) -> None:
        # Over the cap: the caller waits while the writer drains (or spills).
        if threading.current_thread() is self._thread:
            return
        while len(self._queue) > self.cfg.queue_max and self._thread.is_alive():
            self._wake.set()
            time.sleep(0.002)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far was delivered (or journaled)."""
        if self._thread is None and not self._queue:
            return True
        if threading.current_thread() is self._thread:
            return False
        return self._wait_for(FLUSH, timeout)

    def _wait_for(self, marker, timeout: float | None) -> bool:
        """Queue a marker behind everything submitted so far and wait until the loop reaches it."""
        done = threading.Event()
        self._queue.append((None, marker, done))
        self._start()
        self._wake.set()
        return done.wait(timeout)

    def staging_dir(self) -> str:
        if self._staging is None:
            self._staging = tempfile.mkdtemp(prefix="azml_v1_bridge-")
        return self._staging

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._loop, name=self.THREAD_NAME,
                                          daemon=True)
                thread.start()
                self._thread = thread


class Writer(QueueFront):
    def __init__(self, cfg: config.Config, strict_errors: list | None = None):
        self._init_front(cfg)
        self._pid = os.getpid()
        self._clients: dict = {}
        self._fast: dict = {}         # tracking uri -> RestStore for the direct log-batch path
        self._experiments: dict = {}
        self._docs: dict = {}         # (local id, path) -> Doc
        self._dirty: dict = {}        # local id -> paths of docs changed since their last upload
        self._doc_time: dict = {}     # local id -> monotonic time of its last doc upload
        self._verified: set = set()
        self._down: dict = {}         # tracking uri -> monotonic time it last failed
        self._spilled: set = set()    # local ids with journaled work: the rest follows them
        self._refused: set = set()    # local ids the store refused (not recovered by probing)
        self._recovered_at: dict = {}  # tracking uri -> monotonic time of the last recovery
        self._exit_at: float | None = None
        self._warned: set = set()
        self._keys: dict = {}         # metric key -> its JSON string
        self.stats: dict[str, RunStats] = collections.defaultdict(RunStats)
        self.journal: Journal | None = None
        self.errors = strict_errors if strict_errors is not None else []
        self._inflight: dict = {}     # the cycle being sent: journaled at exit if it never ends
        self._busy = threading.RLock()  # held inside MLflow (and imports): see _before_fork
        self._fork_held = False
        _WRITERS.add(self)

    @property
    def _exiting(self) -> bool:
        return self._exit_at is not None

    @_exiting.setter
    def _exiting(self, value: bool) -> None:
        if value and self._exit_at is None:
            self._exit_at = time.monotonic()
        elif not value:
            self._exit_at = None

    def _reset_after_fork(self) -> None:
        """In a forked child: the writer thread is gone and the parent's queue is the parent's."""
        self._queue = collections.deque()
        self._wake = threading.Event()
        self._thread = None
        self._start_lock = threading.RLock()
        self._busy, self._fork_held = threading.RLock(), False
        self._pid = os.getpid()
        self._clients, self._fast = {}, {}
        self._inflight, self._down = {}, {}
        if self.journal is not None:
            old, self.journal = self.journal, None
            if old._fd is not None:
                try:
                    os.close(old._fd)
                except OSError:
                    pass

    # ----------------------------------------------------------- writer side

    def _loop(self) -> None:
        for name, value in config.HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self._prewarm()
        while True:
            self._wake.wait(self.cfg.flush_interval)
            self._wake.clear()
            try:
                self._cycle()
            except BaseException as exc:  # the writer must outlive any bug
                self._problem("writer", f"writer cycle failed: {describe_error(exc)}", exc)

    def _prewarm(self) -> None:
        """Load MLflow (about a second) and open the first run's client now, while the
        training loop is still logging, instead of at the first send."""
        try:
            with self._busy:
                from mlflow.tracking import MlflowClient  # noqa: F401
            try:
                item = self._queue[0]
            except IndexError:
                return
            first = item[0]
            if first is not None and not isinstance(first, str):
                uri = self._uri(first)
                self._fast_store(uri, self.client(uri))
        except Exception as exc:  # the first send will say what is wrong
            logger.debug("azml_v1_bridge: prewarm failed: %s", describe_error(exc))

    def _cycle(self) -> None:
        queue = self._queue
        pending: dict = {}
        self._inflight = pending
        handled = 0
        records, stats = self.records, self.stats
        while queue:
            item = queue.popleft()
            if len(item) == 6:  # a lone metric point
                lid = item[0]
                record = records[lid]
                work = pending.get(record)
                if work is None:
                    work = pending[record] = Work()
                work.metrics.append(item[2:])
                stats[lid].calls[item[1]] += 1
            elif item[1] is FLUSH:
                try:
                    self._send_all(pending, final=True)
                finally:
                    pending = self._inflight = {}
                    item[2].set()
                continue
            else:
                self._collect(pending, *item)
            handled += 1
            if handled >= CYCLE_MAX:
                self._send_all(pending, final=False)
                pending = self._inflight = {}
                handled = 0
        self._send_all(pending, final=False)
        self._inflight = {}

    def _collect(self, pending: dict, record, method: str, ops: list) -> None:
        work = pending.get(record)
        if work is None:
            work = pending[record] = Work()
        lid = record.local_id
        stats = self.stats[lid]
        stats.calls[method] += 1
        for op in ops:
            t = type(op)
            if t is Metric:
                work.metrics.append((op.key, op.value, op.timestamp, op.step))
            elif t is Tag:
                work.tags.pop(op.key, None)  # a tag set again moves to the end: last one wins
                work.tags[op.key] = op.value
            elif t is Param:
                work.params.append((op.key, op.value))
            elif t in DOC_KINDS:
                key = (lid, op.path)
                doc = self._docs.get(key)
                if doc is None:
                    doc = self._docs[key] = Doc(DOC_KINDS[t])
                doc.add(op)
                dirty = self._dirty.get(lid)
                if dirty is None:
                    dirty = self._dirty[lid] = set()
                    self._doc_time.setdefault(lid, time.monotonic())
                dirty.add(op.path)
            elif t is Artifact:
                work.files.append((op.path, op.data))
            elif t is ArtifactFile:
                work.files.append((op.path, op.source))
            elif t is Chart:
                work.charts.append(op)
            elif t is Image:
                work.images.append(op)
            elif t is End:
                work.end = op
            elif t is CreateRun:
                work.create = True
            elif t is Note:
                self._note(record, op)

    def _note(self, record, op: Note) -> None:
        stats = self.stats[record.local_id]
        if op.what == "renamed":
            stats.renamed[op.name] = op.detail
        else:
            stats.notes.append({"what": op.what, "name": op.name, "detail": op.detail})
        if op.what not in self._warned:
            self._warned.add(op.what)
            logger.warning("azml_v1_bridge: %s for %r: %s (warned once per kind; see the run's "
                           "azml_v1_bridge/report.json)", op.what, op.name, config.redact(op.detail))

    def _send_all(self, pending: dict, final: bool) -> None:
        now = time.monotonic()
        if self._dirty:
            lids = {record.local_id for record in pending}
            for lid in list(self._dirty):
                if lid not in lids and (final or now - self._doc_time.get(lid, now) >= DOC_INTERVAL):
                    pending[self.records[lid]] = Work()
        for record, work in pending.items():
            lid = record.local_id
            dirty = self._dirty.get(lid)
            if dirty and (final or work.end is not None
                          or now - self._doc_time.get(lid, now) >= DOC_INTERVAL):
                work.docs = dirty
                del self._dirty[lid]
                self._doc_time[lid] = now
            if work.empty():
                continue
            try:
                self._deliver(record, work)
            except Exception as exc:  # a bug here must not lose the data: journal it
                self._problem("writer", f"delivery failed: {describe_error(exc)}", exc)
                self._spill(record, self._uri_or_none(record), work, describe_error(exc))

    def _deliver(self, record, work: Work) -> None:
        if work.charts:
            self._render_charts(record, work)
        uri = self._uri(record)
        if uri in self._down and not self._probe(uri):
            self._spill(record, uri, work, "tracking store marked down")
            return
        lid = record.local_id
        if lid in self._spilled and lid not in self._refused:
            self._recover(uri)
        if lid in self._spilled:  # journaled and not recovered: keep call order
            self._spill(record, uri, work, "earlier data of this run is in the journal")
            return
        try:
            self._send(record, work)
            self._down.pop(uri, None)
        except Refused as exc:
            self._refused.add(record.local_id)
            self._spill(record, uri, work, str(exc), refused=True)
        except Unreachable as exc:
            self._down[uri] = time.monotonic()
            self._spill(record, uri, work, str(exc))

    def _probe(self, uri: str) -> bool:
        """One quick attempt at a store marked down (never while exiting), every
        AZML_V1_BRIDGE_RETRY_SECONDS (15 s at most); once it answers, the runs journaled
        meanwhile are delivered from the journal first, so call order holds."""
        interval = min(PROBE_INTERVAL, self.cfg.retry_seconds)
        if self._exiting or time.monotonic() - self._down[uri] < interval:
            return False
        try:
            client = self.client(uri)
            with self._busy:
                client.search_experiments(max_results=1)
        except Exception as exc:
            logger.debug("azml_v1_bridge: %s still down: %s", config.redact(uri),
                         describe_error(exc))
            self._down[uri] = time.monotonic()
            return False
        del self._down[uri]
        self._recover(uri, force=True)
        return True

    def _recover(self, uri: str, force: bool = False) -> None:
        """Replay this writer's journal for its runs headed to `uri` (idempotent: what is
        already there is skipped), then send them live again. Not while exiting (the exit
        must stay short), and at most once per probe interval unless the store just came back."""
        lids = {lid for lid in self._spilled if lid not in self._refused
                and lid in self.records and self.records[lid].tracking_uri == uri}
        if not lids or self.journal is None or self._exiting:
            return
        now = time.monotonic()
        if not force and now - self._recovered_at.get(uri, -PROBE_INTERVAL) < min(
                PROBE_INTERVAL, self.cfg.retry_seconds):
            return
        self._recovered_at[uri] = now
        from .replay import replay_journal

        try:
            with self._busy:
                counts = replay_journal(self.journal.path, tracking_uri=uri, only=lids)
        except Exception as exc:
            logger.debug("azml_v1_bridge: recovery from the journal failed: %s", describe_error(exc))
            self._down[uri] = time.monotonic()
            return
        for lid, run_id in counts["runs"].items():
            record = self.records.get(lid)
            if record is not None and record.mlflow_run_id is None:
                record.mlflow_run_id = run_id
                self._verified.add(run_id)
        recovered = lids - set(counts["failed"])
        self._spilled -= recovered
        for lid in recovered:
            self.stats[lid].journaled = 0
        logger.warning("azml_v1_bridge: the MLflow tracking store %s answers again; the journaled "
                       "data of %d run(s) was delivered from %s%s", config.redact(uri),
                       len(recovered), self.journal.path,
                       f" ({len(counts['failed'])} run(s) still need `azml-v1-bridge replay`)"
                       if counts["failed"] else "")

    def _uri(self, record) -> str:
        if record.tracking_uri is None:
            with self._busy:
                import mlflow

                record.tracking_uri = mlflow.get_tracking_uri()
        return record.tracking_uri

    def _uri_or_none(self, record) -> str | None:
        try:
            return self._uri(record)
        except Exception:
            return record.tracking_uri

    def client(self, uri: str):
        client = self._clients.get(uri)
        if client is None:
            with self._busy:
                from mlflow.tracking import MlflowClient

                client = self._clients[uri] = MlflowClient(tracking_uri=uri)
        return client

    def _retrying(self, what: str, fn, *args, **kwargs):
        """Call fn until it works. Item errors are raised at once, run errors as Refused,
        anything else is retried with backoff and raised as Unreachable past the window."""
        start = time.monotonic()
        delay = 0.25
        while True:
            try:
                with self._busy:
                    return fn(*args, **kwargs)
            except Exception as exc:
                code = error_code(exc)
                if code in ITEM_ERRORS:
                    raise
                if code in RUN_ERRORS:
                    raise Refused(f"{what}: {describe_error(exc)}") from exc
                now = time.monotonic()
                deadline = start + self.cfg.retry_seconds
                if self._exit_at is not None:
                    deadline = min(deadline, max(start, self._exit_at) + EXIT_RETRY_SECONDS)
                if now + delay > deadline:
                    raise Unreachable(f"{what}: {describe_error(exc)}") from exc
                logger.debug("azml_v1_bridge: retrying %s after %s", what, describe_error(exc))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)  # plus ~2 s of MLflow HTTP retries per attempt

    # ----------------------------------------------------------- MLflow calls

    def ensure_run(self, record) -> str:
        client = self.client(self._uri(record))
        if record.mlflow_run_id is not None:
            if record.adopted and record.mlflow_run_id not in self._verified:
                self._adopt(client, record)
            return record.mlflow_run_id
        tags = creation_tags(record)
        if record.parent is not None:
            tags["mlflow.parentRunId"] = self.ensure_run(record.parent)
        try:
            experiment_id = self._experiment_id(client, record)
            run = self._retrying("create_run", client.create_run, experiment_id,
                                 start_time=record.start_ms, tags=tags, run_name=record.run_name)
        except Unreachable:
            raise
        except Exception as exc:
            raise Refused(f"create_run: {describe_error(exc)}") from exc
        record.mlflow_run_id = run.info.run_id
        self._verified.add(record.mlflow_run_id)
        return record.mlflow_run_id

    def _adopt(self, client, record) -> None:
        try:
            self._retrying("get_run", client.get_run, record.mlflow_run_id)
        except Refused as exc:
            if error_code(exc.__cause__) not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise
            wanted = record.mlflow_run_id
            self._problem("missing_run", f"MLflow run {wanted} (MLFLOW_RUN_ID or the active run) "
                          f"does not exist in {config.redact(self._uri(record))}; logging to a new run")
            record.tags["azml_v1_bridge.requested_run_id"] = wanted
            record.mlflow_run_id, record.adopted = None, False
            self.ensure_run(record)
            return
        self._verified.add(record.mlflow_run_id)

    def _experiment_id(self, client, record) -> str:
        if record.experiment_id:
            return record.experiment_id
        name = record.experiment_name
        if not name:
            return "0"
        key = (record.tracking_uri, name)
        if key not in self._experiments:
            found = self._retrying("get_experiment_by_name", client.get_experiment_by_name, name)
            if found is None:
                try:
                    self._experiments[key] = self._retrying("create_experiment",
                                                            client.create_experiment, name)
                except Unreachable:
                    raise
                except Exception:
                    # another process created it first
                    found = self._retrying("get_experiment_by_name",
                                           client.get_experiment_by_name, name)
                    if found is None:
                        raise
                    self._experiments[key] = found.experiment_id
            else:
                self._experiments[key] = found.experiment_id
        record.experiment_id = self._experiments[key]
        return record.experiment_id

    def _send(self, record, work: Work) -> None:
        """Deliver one run's work; what was sent is removed from `work` as it goes, so
        whatever is left when Unreachable is raised is exactly what to journal."""
        run_id = self.ensure_run(record)
        work.create = False
        uri = self._uri(record)
        client = self.client(uri)
        stats = self.stats[record.local_id]
        if work.metrics or work.params or work.tags:
            self._send_batches(uri, client, run_id, record, work, stats)
        if work.files or work.docs:
            self._send_files(client, run_id, record, work, stats)
        while work.images:
            self._send_image(client, run_id, record, work.images[0], stats)
            work.images.pop(0)
        if work.end is not None:
            self._retrying("set_terminated", client.set_terminated, run_id,
                           status=work.end.status, end_time=work.end.timestamp)
            work.end = None

    def _send_batches(self, uri, client, run_id, record, work: Work, stats: RunStats) -> None:
        metrics, params, tags = work.metrics, work.params, list(work.tags.items())
        mi = pi = ti = 0
        try:
            while mi < len(metrics) or pi < len(params) or ti < len(tags):
                p: list = []
                seen: set = set()
                while pi + len(p) < len(params) and len(p) < MAX_PARAMS:
                    key = params[pi + len(p)][0]
                    if key in seen:  # never the same param key twice in one request
                        break
                    seen.add(key)
                    p.append(params[pi + len(p)])
                t = tags[ti:ti + MAX_TAGS]
                m = metrics[mi:mi + min(MAX_METRICS, MAX_ENTITIES - len(p) - len(t))]
                self._log_batch(uri, client, run_id, record, m, p, t, stats)
                mi, pi, ti = mi + len(m), pi + len(p), ti + len(t)
        except Unreachable as exc:
            um, up, ut = exc.unsent or ([], [], [])
            last = (mi + len(m), pi + len(p), ti + len(t))
            work.metrics = um + metrics[last[0]:]
            work.params = up + params[last[1]:]
            work.tags = dict(ut + tags[last[2]:])
            raise
        work.metrics, work.params, work.tags = [], [], {}

    def _log_batch(self, uri, client, run_id, record, metrics, params, tags, stats) -> None:
        """Send one batch; an item error splits it so one bad item never sinks the rest.
        On Unreachable (or Refused), `exc.unsent` holds what did not go out."""
        stack = [(metrics, params, tags)]
        checked = False
        while stack:
            m, p, t = stack.pop()
            try:
                try:
                    self._retrying("log_batch", self._post_batch, uri, client, run_id, m, p, t)
                    stats.metric_points += len(m)
                    continue
                except Unreachable:
                    raise
                except Exception as exc:
                    if not is_item_error(exc):
                        raise Unreachable(f"log_batch: {describe_error(exc)}") from exc
                    error = exc
                if not checked:  # a deleted run refuses every item: that is not an item error
                    checked = True
                    self._check_active(client, run_id, error)
            except Unreachable as exc:
                stack.append((m, p, t))
                exc.unsent = ([x for s in reversed(stack) for x in s[0]],
                              [x for s in reversed(stack) for x in s[1]],
                              [x for s in reversed(stack) for x in s[2]])
                raise
            items = [("m", x) for x in m] + [("p", x) for x in p] + [("t", x) for x in t]
            if len(items) == 1:
                stats.delivery_failures += 1
                self._note(record, Note("rejected_by_mlflow", str(items[0][1][0]),
                                        describe_error(error)))
                continue
            half = len(items) // 2
            for part in (items[half:], items[:half]):  # first half on top: sent first
                stack.append(([x for k, x in part if k == "m"], [x for k, x in part if k == "p"],
                              [x for k, x in part if k == "t"]))

    def _check_active(self, client, run_id, error) -> None:
        try:
            run = self._retrying("get_run", client.get_run, run_id)
        except Unreachable:
            raise
        except Exception:
            return
        if run.info.lifecycle_stage != "active":
            raise Refused(f"log_batch: the run is {run.info.lifecycle_stage}: "
                          f"{describe_error(error)}") from error

    def _post_batch(self, uri, client, run_id, metrics, params, tags) -> None:
        store = self._fast[uri] if uri in self._fast else self._fast_store(uri, client)
        if store is not None:
            try:
                from mlflow.protos.service_pb2 import LogBatch

                store._call_endpoint(LogBatch, self._batch_json(run_id, metrics, params, tags))
                return
            except (AttributeError, TypeError, ImportError, KeyError) as exc:
                # MLflow changed its internals: use the public path from now on
                logger.debug("azml_v1_bridge: direct log-batch unavailable: %s", describe_error(exc))
                self._fast[uri] = None
        from mlflow.entities import Metric as MlMetric, Param as MlParam, RunTag

        ml_metrics = [MlMetric(k, v, int(ts), int(s)) for k, v, ts, s in metrics]
        ml_params = [MlParam(k, v) for k, v in params]
        ml_tags = [RunTag(k, v) for k, v in tags]
        target = getattr(getattr(client, "_tracking_client", None), "store", None)
        if target is not None and hasattr(target, "log_batch"):
            target.log_batch(run_id, metrics=ml_metrics, params=ml_params, tags=ml_tags)
        else:
            client.log_batch(run_id, metrics=ml_metrics, params=ml_params, tags=ml_tags,
                             synchronous=True)

    def _fast_store(self, uri, client):
        """MLflow's RestStore, when it is exactly that class: its log-batch request body is
        then built here (MLflow's protobuf-to-JSON costs ~17 us per point on the writer,
        holding the GIL the training loop needs) and sent through the store's own
        `_call_endpoint`, i.e. MLflow's HTTP session, auth and retry settings."""
        store = None
        try:
            from mlflow.store.tracking.rest_store import RestStore

            candidate = client._tracking_client.store
            if type(candidate) is RestStore and callable(getattr(candidate, "_call_endpoint", None)):
                store = candidate
        except Exception:
            store = None
        self._fast[uri] = store
        return store

    def _batch_json(self, run_id, metrics, params, tags) -> str:
        keys = self._keys
        dumps = json.dumps
        parts = []
        for k, v, ts, s in metrics:
            key = keys.get(k)
            if key is None:
                key = dumps(k)
                if len(keys) < 100_000:
                    keys[k] = key
            if type(v) is not float:
                v = float(v)
            if v - v == 0:
                parts.append('{"key":%s,"value":%r,"timestamp":%d,"step":%d}' % (key, v, ts, s))
            else:  # NaN and infinities, spelled as MLflow's protobuf JSON spells them
                parts.append('{"key":%s,"value":"%s","timestamp":%d,"step":%d}'
                             % (key, json_number(v), ts, s))
        body = '{"run_id":%s,"metrics":[%s]' % (dumps(run_id), ",".join(parts))
        if params:
            body += ',"params":[%s]' % ",".join('{"key":%s,"value":%s}' % (dumps(k), dumps(v))
                                                for k, v in params)
        if tags:
            body += ',"tags":[%s]' % ",".join('{"key":%s,"value":%s}' % (dumps(k), dumps(v))
                                              for k, v in tags)
        return body + "}"

    def _render_charts(self, record, work: Work) -> None:
        charts, work.charts = work.charts, []
        if not self.cfg.charts:
            return
        for op in charts:
            try:
                from . import charts as charts_module

                with self._busy:  # matplotlib imports on first use
                    png = charts_module.render_png(op.obj, title=op.title)
                work.files.append((op.path, png))
            except Exception as exc:
                self._note(record, Note("chart_skipped", op.title,
                                        f"{describe_error(exc)}; the JSON is kept"))

    def _rendered_docs(self, record, paths) -> list:
        lid = record.local_id
        return [(path, self._docs[(lid, path)].render()) for path in sorted(paths)]

    def _send_files(self, client, run_id, record, work: Work, stats: RunStats) -> None:
        files = work.files + self._rendered_docs(record, work.docs)
        with tempfile.TemporaryDirectory(prefix="azml_v1_bridge-upload-") as tmp:
            for path, data in files:
                target = os.path.join(tmp, *path.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.lexists(target):  # same path twice in one cycle: the later one wins
                    os.remove(target)
                if isinstance(data, (bytes, bytearray)):
                    with open(target, "wb") as fh:
                        fh.write(data)
                else:
                    os.symlink(os.path.abspath(data), target)
            try:
                self._retrying("log_artifacts", client.log_artifacts, run_id, tmp)
            except Unreachable:
                raise
            except Exception as exc:
                stats.delivery_failures += 1
                self._note(record, Note("artifact_failed", files[0][0], describe_error(exc)))
                work.files, work.docs = [], set()
                return
        stats.artifacts += len(files)
        work.files, work.docs = [], set()

    def _send_image(self, client, run_id, record, op: Image, stats: RunStats) -> None:
        try:
            import io

            with self._busy:  # PIL imports on first use
                from PIL import Image as PILImage

                image = PILImage.open(io.BytesIO(op.data))
                image.load()
            self._retrying("log_image", client.log_image, run_id, image, key=op.key,
                           step=op.step, timestamp=op.timestamp, synchronous=True)
        except Unreachable:
            raise
        except Exception as exc:  # no PIL, or an MLflow without image series: keep the PNG
            logger.debug("azml_v1_bridge: image series unavailable (%s)", describe_error(exc))
            self._retrying("log_image", self._log_png, client, run_id,
                           f"images/{op.key}_step{op.step}.png", op.data)
        stats.artifacts += 1

    @staticmethod
    def _log_png(client, run_id, path, data) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = os.path.join(tmp, os.path.basename(path))
            with open(target, "wb") as fh:
                fh.write(data)
            client.log_artifact(run_id, target, os.path.dirname(path))

    # ----------------------------------------------------------- failures

    def _spill(self, record, uri: str | None, work: Work, reason: str, refused: bool = False) -> None:
        """Journal what `work` still holds; every later piece of this run follows it there."""
        lid = record.local_id
        self._spilled.add(lid)
        if work.charts:
            self._render_charts(record, work)
        stats = self.stats[lid]
        try:
            if self.journal is None:
                self.journal = Journal(self._journal_path())
            count = self.journal.write(record, uri, work, self._rendered_docs(record, work.docs))
        except Exception as exc:
            stats.delivery_failures += work.count()
            self._problem("journal", f"could not write the journal "
                          f"{getattr(self.journal, 'path', '?')}: {describe_error(exc)}; "
                          f"{work.count()} item(s) lost", exc)
            return
        stats.journaled += count
        kind = "refused" if refused else "journal"
        if kind not in self._warned:
            self._warned.add(kind)
            what = ("refuses data of run %s" % (record.mlflow_run_id or record.v1_id) if refused
                    else "is not answering")
            logger.warning("azml_v1_bridge: the MLflow tracking store %s %s (%s); undelivered "
                           "data goes to the journal %s; deliver it later with "
                           "`azml-v1-bridge replay %s`", config.redact(uri or "?"), what,
                           config.redact(reason), self.journal.path, self.journal.path)

    def _journal_path(self) -> str:
        """AZML_V1_BRIDGE_JOURNAL (a folder there gets the default file name), else
        ./azml_v1_bridge_journal/<UTC time>-<pid>.jsonl."""
        path = self.cfg.journal
        if not path:
            return config.default_journal_path()
        if os.path.isdir(path) or path.endswith(("/", os.sep)):
            return os.path.join(path, os.path.basename(config.default_journal_path()))
        return path

    def _problem(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        self.errors.append(message)
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning("azml_v1_bridge: %s", config.redact(message))

    # ----------------------------------------------------------- exit

    def close(self, timeout: float) -> bool:
        """Deliver everything, giving up on a dead store sooner than usual. If the writer is
        still stuck (a store that accepts connections but never answers) when `timeout` is
        up, what it has not taken from the queue yet is journaled from this thread."""
        self._exiting = True
        done = self.flush(timeout)
        if not done:
            try:
                self._salvage()
            except Exception as exc:
                self._problem("journal", f"could not journal the queue at exit: "
                              f"{describe_error(exc)}", exc)
        if self.journal is not None:
            self.journal.close()
        return done

    def _salvage(self) -> None:
        """Journal what the stuck writer holds (a copy: if it wakes up and delivers it too,
        replay skips what is already there) and what it never took from the queue."""
        pending: dict = {}
        for record, held in list(self._inflight.items()):
            work = pending[record] = Work()
            work.create, work.end = held.create, held.end
            work.metrics, work.params = list(held.metrics), list(held.params)
            work.tags, work.files = dict(held.tags), list(held.files)
            work.images, work.charts = list(held.images), list(held.charts)
            work.docs = set(held.docs)
        queue = self._queue
        while queue:
            try:
                item = queue.popleft()
            except IndexError:  # the writer woke up and took the rest
                break
            if len(item) == 6:
                record = self.records[item[0]]
                work = pending.get(record)
                if work is None:
                    work = pending[record] = Work()
                work.metrics.append(item[2:])
            elif item[1] is FLUSH:
                item[2].set()
            else:
                self._collect(pending, *item)
        for lid in list(self._dirty):
            record = self.records[lid]
            pending.setdefault(record, Work()).docs = self._dirty.pop(lid)
        for record, work in pending.items():
            if not work.empty():
                self._spill(record, self._uri_or_none(record), work,
                            "the store did not answer before the exit timeout")
