"""The writer: executes operations against `MlflowClient` on a background thread.

The caller's thread only appends `(record, method, ops)` to a deque. Every
`flush_interval` (or sooner when the queue grows) the writer drains it, groups
the work per run, and sends it: run creation, `log_batch` chunks within MLflow's
limits, artifacts, charts, images, and the terminal status last. Transient
failures are retried with backoff; a store that stays down gets everything
spilled to a JSON-lines journal that `azml-v1-bridge replay` delivers later.
"""
from __future__ import annotations

import base64
import collections
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time

from . import config
from .ops import (AppendTable, AppendText, Artifact, ArtifactFile, Chart, CreateRun, End,
                  ExtendList, Image, Metric, Note, Param, Tag)

logger = logging.getLogger("azml_v1_bridge")

MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000
WAKE_EVERY = 4096          # queued calls that wake the writer before its interval
CYCLE_MAX = 50_000         # calls handled before a send, to bound memory per cycle
ITEM_ERRORS = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS",
               "INVALID_STATE", "MALFORMED_REQUEST"}
FLUSH = object()


class Unreachable(Exception):
    """The store kept failing past the retry window: spill to the journal."""


def is_item_error(exc: BaseException) -> bool:
    """An error about the data sent (retrying cannot help), not about the store."""
    return getattr(exc, "error_code", None) in ITEM_ERRORS


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return config.redact(text if len(text) < 500 else text[:500] + "...")


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
        self.metrics: list = []
        self.params: list = []
        self.tags: dict = {}
        self.files: list = []   # (artifact path, bytes | staged source path)
        self.images: list = []
        self.charts: list = []
        self.docs: set = set()
        self.end: End | None = None

    def empty(self) -> bool:
        return not (self.create or self.metrics or self.params or self.tags or self.files
                    or self.images or self.charts or self.docs or self.end)


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


class Journal:
    """JSON lines of everything that could not be delivered; replayed by `azml-v1-bridge replay`."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._file = None
        self._runs_written: set = set()
        self._lock = threading.Lock()

    def _open(self):
        if self._file is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")

    def _line(self, obj) -> None:
        self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")

    def write(self, record, tracking_uri: str, work: Work, docs: dict) -> int:
        """Append one run's pending work; returns how many items were written."""
        with self._lock:
            self._open()
            if record.local_id not in self._runs_written:
                self._runs_written.add(record.local_id)
                self._line({"t": "run", "tracking_uri": config.redact(tracking_uri),
                            **record.describe()})
            if record.parent is not None and record.parent.local_id not in self._runs_written:
                self._runs_written.add(record.parent.local_id)
                self._line({"t": "run", "tracking_uri": config.redact(tracking_uri),
                            **record.parent.describe()})
            rid, count = record.local_id, 0
            if work.create:
                self._line({"t": "create", "run": rid})
            for i in range(0, len(work.metrics), MAX_METRICS):
                chunk = work.metrics[i:i + MAX_METRICS]
                self._line({"t": "metrics", "run": rid,
                            "m": [[m.key, m.value, m.timestamp, m.step] for m in chunk]})
            if work.params or work.tags:
                self._line({"t": "params_tags", "run": rid,
                            "params": [[p.key, p.value] for p in work.params],
                            "tags": [[k, v] for k, v in work.tags.items()]})
            files = list(work.files) + [(p, docs[(rid, p)].render()) for p in work.docs]
            for path, data in files:
                self._line({"t": "artifact", "run": rid, "path": path, **self._payload(data)})
            for op in work.images:
                self._line({"t": "image", "run": rid, "key": op.key, "step": op.step,
                            "timestamp": op.timestamp, **self._payload(op.data)})
            if work.end is not None:
                self._line({"t": "end", "run": rid, "status": work.end.status,
                            "timestamp": work.end.timestamp})
            self._file.flush()
            count = (len(work.metrics) + len(work.params) + len(work.tags) + len(files)
                     + len(work.images) + (work.end is not None))
            return count

    def _payload(self, data) -> dict:
        if isinstance(data, (bytes, bytearray)):
            return {"b64": base64.b64encode(data).decode("ascii")}
        folder = self.path + ".files"
        os.makedirs(folder, exist_ok=True)
        name = f"{len(os.listdir(folder)):06d}-{os.path.basename(data)}"
        shutil.copyfile(data, os.path.join(folder, name))
        return {"file": name}

    def close(self):
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class Writer:
    def __init__(self, cfg: config.Config, strict_errors: list | None = None):
        self.cfg = cfg
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._pid = os.getpid()
        self._clients: dict = {}
        self._experiments: dict = {}
        self._docs: dict = {}
        self._verified: set = set()
        self._down: dict = {}  # tracking uri -> monotonic time it was declared down
        self._exiting = False
        self._warned: set = set()
        self.stats: dict[str, RunStats] = collections.defaultdict(RunStats)
        self.records: dict[str, object] = {}
        self.journal: Journal | None = None
        self.errors = strict_errors if strict_errors is not None else []
        self._staging = None

    # ----------------------------------------------------------- caller side

    def submit(self, record, method: str, ops: list) -> None:
        queue = self._queue
        queue.append((record, method, ops))
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
        done = threading.Event()
        self._queue.append((None, FLUSH, done))
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
                thread = threading.Thread(target=self._loop, name="azml_v1_bridge-writer",
                                          daemon=True)
                thread.start()
                self._thread = thread

    # ----------------------------------------------------------- writer side

    def _loop(self) -> None:
        for name, value in config.HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        while True:
            self._wake.wait(self.cfg.flush_interval)
            self._wake.clear()
            try:
                self._cycle()
            except BaseException as exc:  # the writer must outlive any bug
                self._problem("writer", f"writer cycle failed: {describe_error(exc)}", exc)

    def _cycle(self) -> None:
        queue = self._queue
        pending: dict = {}
        handled = 0
        while queue:
            record, method, ops = queue.popleft()
            if method is FLUSH:
                self._send_all(pending)
                pending = {}
                ops.set()
                continue
            self._collect(pending, record, method, ops)
            handled += 1
            if handled >= CYCLE_MAX:
                self._send_all(pending)
                pending, handled = {}, 0
        self._send_all(pending)

    def _collect(self, pending: dict, record, method: str, ops: list) -> None:
        work = pending.get(record)
        if work is None:
            work = pending[record] = Work()
            self.records[record.local_id] = record
        stats = self.stats[record.local_id]
        stats.calls[method] += 1
        for op in ops:
            t = type(op)
            if t is Metric:
                work.metrics.append(op)
            elif t is Tag:
                work.tags[op.key] = op.value
            elif t is Param:
                work.params.append(op)
            elif t in DOC_KINDS:
                key = (record.local_id, op.path)
                doc = self._docs.get(key)
                if doc is None:
                    doc = self._docs[key] = Doc(DOC_KINDS[t])
                doc.add(op)
                work.docs.add(op.path)
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

    def _send_all(self, pending: dict) -> None:
        for record, work in pending.items():
            if work.empty():
                continue
            if work.charts:
                self._render_charts(record, work)
            uri = self._uri(record)
            try:
                if uri in self._down and not self._probe_due(uri):
                    raise Unreachable("tracking store marked down")
                self._send(record, work)
                self._down.pop(uri, None)
            except Unreachable as exc:
                self._spill(record, uri, work, exc)

    def _probe_due(self, uri: str) -> bool:
        return not self._exiting and time.monotonic() - self._down[uri] > 15

    def _uri(self, record) -> str:
        if record.tracking_uri is None:
            import mlflow

            record.tracking_uri = mlflow.get_tracking_uri()
        return record.tracking_uri

    def client(self, uri: str):
        client = self._clients.get(uri)
        if client is None:
            from mlflow.tracking import MlflowClient

            client = self._clients[uri] = MlflowClient(tracking_uri=uri)
        return client

    def _retrying(self, what: str, fn, *args, **kwargs):
        """Call fn until it works, raising item errors at once and Unreachable past the window."""
        deadline = time.monotonic() + (min(5.0, self.cfg.retry_seconds) if self._exiting
                                       else self.cfg.retry_seconds)
        delay = 0.25
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if is_item_error(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise Unreachable(f"{what}: {describe_error(exc)}") from exc
                logger.debug("azml_v1_bridge: retrying %s after %s", what, describe_error(exc))
                time.sleep(delay)
                delay = min(delay * 2, 4.0)

    # ----------------------------------------------------------- MLflow calls

    def ensure_run(self, record) -> str:
        client = self.client(self._uri(record))
        if record.mlflow_run_id is not None:
            if record.adopted and record.mlflow_run_id not in self._verified:
                self._adopt(client, record)
            return record.mlflow_run_id
        tags = dict(record.tags)
        if record.parent is not None:
            tags["mlflow.parentRunId"] = self.ensure_run(record.parent)
        tags.setdefault("mlflow.source.name", os.path.basename(sys.argv[0]) if sys.argv else "")
        tags.setdefault("mlflow.source.type", "LOCAL")
        experiment_id = self._experiment_id(client, record)
        run = self._retrying("create_run", client.create_run, experiment_id,
                             start_time=record.start_ms, tags=tags, run_name=record.run_name)
        record.mlflow_run_id = run.info.run_id
        self._verified.add(record.mlflow_run_id)
        return record.mlflow_run_id

    def _adopt(self, client, record) -> None:
        try:
            self._retrying("get_run", client.get_run, record.mlflow_run_id)
        except Exception as exc:
            if not is_item_error(exc) and getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
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
                except Exception as exc:
                    if not is_item_error(exc):
                        raise
                    # another process created it first
                    found = client.get_experiment_by_name(name)
                    self._experiments[key] = found.experiment_id
            else:
                self._experiments[key] = found.experiment_id
        record.experiment_id = self._experiments[key]
        return record.experiment_id

    def _send(self, record, work: Work) -> None:
        """Deliver one run's work; what was sent is removed from `work` as it goes."""
        try:
            run_id = self.ensure_run(record)
        except Unreachable:
            raise
        except Exception as exc:
            self._problem("create_run", f"could not create an MLflow run: {describe_error(exc)}", exc)
            return
        work.create = False
        client = self.client(self._uri(record))
        stats = self.stats[record.local_id]
        self._send_batches(client, run_id, record, work, stats)
        self._send_files(client, run_id, record, work, stats)
        while work.images:
            op = work.images[0]
            self._send_image(client, run_id, record, op, stats)
            work.images.pop(0)
        if work.end is not None:
            self._retrying("set_terminated", client.set_terminated, run_id,
                           status=work.end.status, end_time=work.end.timestamp)
            work.end = None

    def _send_batches(self, client, run_id, record, work: Work, stats: RunStats) -> None:
        from mlflow.entities import Metric as MlMetric, Param as MlParam, RunTag

        tags = [RunTag(k, v) for k, v in work.tags.items()]
        params = [MlParam(p.key, p.value) for p in work.params]
        metrics = work.metrics
        while metrics or params or tags:
            p, t = params[:MAX_PARAMS], tags[:MAX_TAGS]
            room = MAX_ENTITIES - len(p) - len(t)
            chunk = metrics[:min(MAX_METRICS, room)]
            ml_metrics = [MlMetric(m.key, m.value, int(m.timestamp), int(m.step)) for m in chunk]
            delivered = self._log_batch(client, run_id, record, ml_metrics, p, t, stats)
            stats.metric_points += delivered
            del metrics[:len(chunk)]
            del params[:len(p)]
            del tags[:len(t)]
            work.params = work.params[len(p):]
            for tag in t:
                work.tags.pop(tag.key, None)

    def _log_batch(self, client, run_id, record, metrics, params, tags, stats) -> int:
        """Send one batch; an item error splits it so one bad item never sinks the rest."""
        try:
            self._retrying("log_batch", client.log_batch, run_id, metrics=metrics,
                           params=params, tags=tags, synchronous=True)
            return len(metrics)
        except Unreachable:
            raise
        except Exception as exc:
            if not is_item_error(exc):
                raise
            items = [("m", x) for x in metrics] + [("p", x) for x in params] + [("t", x) for x in tags]
            if len(items) == 1:
                kind, item = items[0]
                stats.delivery_failures += 1
                self._note(record, Note("rejected_by_mlflow", getattr(item, "key", "?"),
                                        describe_error(exc)))
                return 0
            half = len(items) // 2
            sent = 0
            for part in (items[:half], items[half:]):
                sent += self._log_batch(client, run_id, record,
                                        [x for k, x in part if k == "m"],
                                        [x for k, x in part if k == "p"],
                                        [x for k, x in part if k == "t"], stats)
            return sent

    def _render_charts(self, record, work: Work) -> None:
        charts, work.charts = work.charts, []
        if not self.cfg.charts:
            return
        for op in charts:
            try:
                from . import charts as charts_module

                work.files.append((op.path, charts_module.render_png(op.obj, title=op.title)))
            except Exception as exc:
                self._note(record, Note("chart_skipped", op.title,
                                        f"{describe_error(exc)}; the JSON is kept"))

    def _send_files(self, client, run_id, record, work: Work, stats: RunStats) -> None:
        docs = [(path, self._docs[(record.local_id, path)].render()) for path in sorted(work.docs)]
        files = work.files + docs
        if not files:
            return
        with tempfile.TemporaryDirectory(prefix="azml_v1_bridge-upload-") as tmp:
            for path, data in files:
                target = os.path.join(tmp, *path.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.exists(target):  # same path twice in one cycle: the later one wins
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

    def _spill(self, record, uri: str, work: Work, exc: BaseException) -> None:
        if uri not in self._down:
            self._down[uri] = time.monotonic()
        if self.journal is None:
            self.journal = Journal(self.cfg.journal or config.default_journal_path())
        rid = record.local_id
        docs = {(rid, p): self._docs[(rid, p)] for p in work.docs}
        count = self.journal.write(record, uri, work, docs)
        self.stats[rid].journaled += count
        self.stats[rid].delivery_failures += 1
        key = "journal"
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("azml_v1_bridge: the MLflow tracking store %s is not answering (%s); "
                           "undelivered data goes to the journal %s; deliver it later with "
                           "`azml-v1-bridge replay %s`", config.redact(uri), str(exc),
                           self.journal.path, self.journal.path)

    def _problem(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        self.errors.append(message)
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning("azml_v1_bridge: %s", config.redact(message))

    # ----------------------------------------------------------- exit

    def close(self, timeout: float) -> bool:
        """Deliver everything, giving up on a dead store sooner than usual."""
        self._exiting = True
        done = self.flush(timeout)
        if self.journal is not None:
            self.journal.close()
        return done
