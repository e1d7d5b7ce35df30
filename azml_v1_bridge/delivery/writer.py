"""The writer: executes operations against MLflow on a background thread.

It wakes every `flush_interval`, or sooner when the queue grows, drains the queue, groups
the work per run (batching.Work), and sends it per run in this order: run creation,
`log_batch` requests within MLflow's limits, artifacts, images, the terminal status last.
Growing documents (text, table and list artifacts built by many calls; they live on the
run's ledger) are uploaded whole at every flush point and at most every DOC_INTERVAL
seconds in between.

Failures (errors.py): an item MLflow rejects is isolated by splitting the batch; a run the
store refuses goes to the journal; a transient store failure is retried for
AZML_V1_BRIDGE_RETRY_SECONDS, a permanent one (a store that cannot be created, a missing
driver) not at all. A store that stays down is marked down: its runs' work goes to the
journal (sticky per run, so replay keeps call order), and it is probed every retry window
(15 s at most); once it answers, this writer replays its own journal for those runs
(idempotently, replay.py) and sends them live again.

At exit (`close`) everything has one deadline: retries stop at it, and whatever a stuck
writer still holds then is journaled from the exiting thread.
"""
from __future__ import annotations

import logging
import os
import time

from .. import azure, config
from ..runs import LOCAL_ID_TAG
from ..ops import (FAILED_NOTES, INT64_MAX, INT64_MIN, Artifact, ArtifactFile, Chart, CreateRun,
                   End, Image, Metric, Note, Param, Tag)
from .batching import DOC_KINDS, Work, batches, halves
from .errors import (RUN_ERRORS, Refused, Unreachable, describe_error, error_code, is_item_error,
                     is_permanent, is_sign_in_refusal, plain_error)
from .journal import Journal, journal_error
from .queue import CLOSE, FLUSH, QueueFront
from . import store as store_module
from .store import Store, creation_tags

logger = logging.getLogger("azml_v1_bridge")

CYCLE_MAX = 50_000         # calls handled before a send, to bound memory per cycle
DOC_INTERVAL = 10.0        # seconds between uploads of a growing document between flushes
PROBE_INTERVAL = 15.0      # seconds between two probes of a store marked down
EXIT_RETRY_SECONDS = 5.0   # retry window once the process is exiting
FIND_PARENT_RUN_SECONDS = 30.0  # a forked child waits this long for its parent's run
MAX_ERRORS = 100


class Writer(QueueFront):
    def __init__(self, cfg: config.Config):
        self._init_front(cfg)
        self._stores: dict = {}       # tracking uri -> Store
        self._down: dict = {}         # tracking uri -> monotonic time it last failed
        self._spilled: set = set()    # local ids with journaled work: the rest follows them
        self._refused: set = set()    # local ids the store refused (not recovered by probing)
        self._recovered_at: dict = {}  # tracking uri -> monotonic time of the last recovery
        self._deadline: float | None = None  # monotonic: the exit must be over by then
        self._warned: set = set()
        self.journal: Journal | None = None
        self._journal_named: str | None = None  # the journal file the last warning named
        self.errors: list = []        # what failed, for strict mode (bounded)
        self._inflight: dict = {}     # the cycle being sent: journaled at exit if it never ends

    @property
    def _exiting(self) -> bool:
        return self._deadline is not None

    def exit_by(self, deadline: float) -> None:
        """The process is exiting: give up on a failing store by `deadline` (monotonic)."""
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline

    def forget_after_fork(self) -> None:
        super().forget_after_fork()
        self._stores, self._inflight, self._down = {}, {}, {}
        if self.journal is not None:
            self.journal.forget_after_fork()
            self.journal = None

    # ----------------------------------------------------------- writer side

    def _loop(self) -> None:
        for name, value in config.HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        azure.set_cloud_default()
        self._prewarm()
        self._serve()

    def _cycle_failed(self, exc: BaseException) -> None:
        self._problem("writer", f"writer cycle failed: {plain_error(exc)}", exc)

    def _prewarm(self) -> None:
        """Load MLflow (about a second) and open the first run's store now, while the
        training loop is still logging, instead of at the first send."""
        try:
            from mlflow.tracking import MlflowClient  # noqa: F401

            try:
                item = self._queue[0]
            except IndexError:
                return
            first = item[0]
            if first is not None and not isinstance(first, str):
                self.store(self._uri(first)).client
        except Exception as exc:  # the first send will say what is wrong
            logger.debug("azml_v1_bridge: prewarm failed: %s", describe_error(exc))

    def _cycle(self) -> None:
        """Drain the queue once. FLUSH and CLOSE markers are flush points (CLOSE also closes
        the journal file); the thread stays for whatever comes after."""
        queue = self._queue
        pending: dict = {}
        self._inflight = pending
        handled = 0
        records = self.records
        while queue:
            item = queue.popleft()
            if len(item) == 6:  # a lone metric point
                record = records[item[0]]
                work = pending.get(record)
                if work is None:
                    work = pending[record] = Work()
                work.metrics.append(item[2:])
                record.ledger.stats.calls[item[1]] += 1
            elif item[1] is FLUSH or item[1] is CLOSE:
                try:
                    self._send_all(pending, final=True)
                finally:
                    pending = self._inflight = {}
                    if item[1] is CLOSE and self.journal is not None:
                        self.journal.close()
                    item[2].set()
                continue
            else:
                self._collect(pending, *item)
            handled += 1
            if handled >= CYCLE_MAX:
                self._send_all(pending, final=False)
                pending = self._inflight = {}
                handled = 0
        self._drained.set()
        self._send_all(pending, final=False)
        self._inflight = {}

    def _collect(self, pending: dict, record, method: str, ops: list) -> None:
        work = pending.get(record)
        if work is None:
            work = pending[record] = Work()
        ledger = record.ledger
        ledger.stats.calls[method] += 1
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
                moved = ledger.docs.add(op, time.monotonic())
                if moved is not None:
                    self._note(record, Note("document_kind_clash", op.path,
                                            f"the name already holds another kind of document; "
                                            f"this {DOC_KINDS[t]} is kept as {moved}"))
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
        stats = record.ledger.stats
        if op.what in FAILED_NOTES:
            stats.delivery_failures += 1
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
        for record in list(self.records.values()):
            if record not in pending and (record.ledger.docs.dirty and
                                          (final or record.ledger.docs.due(now, DOC_INTERVAL))):
                pending[record] = Work()
        for record, work in pending.items():
            docs = record.ledger.docs
            if docs.dirty and (final or work.end is not None or docs.due(now, DOC_INTERVAL)):
                work.docs = docs.take()
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
            self._spill(record, uri, work, str(exc), permanent=exc.permanent)

    def _probe(self, uri: str) -> bool:
        """One quick attempt at a store marked down (never while exiting), every
        AZML_V1_BRIDGE_RETRY_SECONDS (15 s at most); once it answers, the runs journaled
        meanwhile are delivered from the journal first, so call order holds."""
        interval = min(PROBE_INTERVAL, self.cfg.retry_seconds)
        if self._exiting or time.monotonic() - self._down[uri] < interval:
            return False
        try:
            self.store(uri).probe()
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
            counts: dict = {"runs": {}, "failed": []}
            for path in self.journal.paths:  # more than one when a folder filled up
                part = replay_journal(path, tracking_uri=uri, only=lids)
                counts["runs"].update(part["runs"])
                counts["failed"] += [lid for lid in part["failed"] if lid not in counts["failed"]]
        except Exception as exc:
            logger.debug("azml_v1_bridge: recovery from the journal failed: %s", describe_error(exc))
            self._down[uri] = time.monotonic()
            return
        for lid, run_id in counts["runs"].items():
            record = self.records.get(lid)
            if record is not None and record.mlflow_run_id is None:
                record.mlflow_run_id = run_id
        recovered = lids - set(counts["failed"])
        self._spilled -= recovered
        for lid in recovered:
            self.records[lid].ledger.stats.journaled = 0
        logger.warning("azml_v1_bridge: the MLflow tracking store %s answers again; the journaled "
                       "data of %d run(s) was delivered from %s%s", config.redact(uri),
                       len(recovered), self.journal.path,
                       f" ({len(counts['failed'])} run(s) still need `azml-v1-bridge replay`)"
                       if counts["failed"] else "")

    def _uri(self, record) -> str:
        if record.tracking_uri is None:
            import mlflow

            record.tracking_uri = mlflow.get_tracking_uri()
        return record.tracking_uri

    def _uri_or_none(self, record) -> str | None:
        try:
            return self._uri(record)
        except Exception:
            return record.tracking_uri

    def store(self, uri: str) -> Store:
        store = self._stores.get(uri)
        if store is None:
            store = self._stores[uri] = Store(uri)
        return store

    def client(self, uri: str):
        return self.store(uri).client

    def _retrying(self, what: str, fn, *args, **kwargs):
        """Call fn until it works. Item errors are raised at once, run errors as Refused,
        permanent store failures as Unreachable at once; anything else is retried with
        backoff and raised as Unreachable past the retry window (or the exit deadline)."""
        start = time.monotonic()
        delay = 0.25
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                code = error_code(exc)
                if is_item_error(exc):
                    raise
                if code in RUN_ERRORS:
                    raise Refused(f"{what}: {describe_error(exc)}") from exc
                if ((code is None and is_permanent(exc))
                        or (code == "INTERNAL_ERROR" and is_sign_in_refusal(exc))):
                    error = Unreachable(f"{what}: {describe_error(exc)}")
                    error.permanent = True
                    raise error from exc
                now = time.monotonic()
                deadline = start + self.cfg.retry_seconds
                if self._deadline is not None:
                    deadline = min(deadline, start + EXIT_RETRY_SECONDS, self._deadline)
                if now + delay > deadline:
                    raise Unreachable(f"{what}: {describe_error(exc)}") from exc
                logger.debug("azml_v1_bridge: retrying %s after %s", what, describe_error(exc))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)  # plus ~2 s of MLflow HTTP retries per attempt

    # ----------------------------------------------------------- MLflow calls

    def ensure_run(self, record) -> str:
        store = self.store(self._uri(record))
        if record.mlflow_run_id is not None:
            if record.adopted and record.mlflow_run_id not in store.adopted:
                self._adopt(store, record)
            return record.mlflow_run_id
        if record.key_suffix:  # a forked child: the parent creates the run, we find it
            found = self._parent_run(store, record)
            if found is not None:
                record.mlflow_run_id = found
                return found
        tags = creation_tags(record)
        if record.parent is not None:
            tags["mlflow.parentRunId"] = self.ensure_run(record.parent)
            if not record.experiment_id and not record.experiment_name:
                record.experiment_id = record.parent.experiment_id  # the parent's, even adopted
        try:
            experiment_id = self._experiment_id(store, record)
            run_id = self._retrying("create_run", store.create_run, experiment_id,
                                    record.start_ms, tags, record.run_name)
        except Unreachable:
            raise
        except Exception as exc:
            raise Refused(f"create_run: {describe_error(exc)}") from exc
        record.mlflow_run_id = run_id
        return run_id

    def _parent_run(self, store: Store, record) -> str | None:
        """The run the parent process creates for `record` (found by its local-id tag)."""
        until = time.monotonic() + FIND_PARENT_RUN_SECONDS
        if self._deadline is not None:  # exiting (a pool worker's only delivery): within it
            until = min(until, self._deadline - 1.0)
        delay = 0.1
        while True:
            found = self._retrying("search_runs", store.find_run, LOCAL_ID_TAG, record.local_id)
            if found is not None or time.monotonic() > until:
                return found
            time.sleep(delay)  # the parent's writer creates it in its next cycle
            delay = min(delay * 2, 2.0)

    def _adopt(self, store: Store, record) -> None:
        """A run the bridge did not create (MLFLOW_RUN_ID, an active run, the launcher's):
        check it exists, take its experiment (for child runs), and give it the v1 tags."""
        try:
            run = self._retrying("get_run", store.get_run, record.mlflow_run_id)
        except Refused as exc:
            if error_code(exc.__cause__) not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise
            wanted = record.mlflow_run_id
            self._problem("missing_run", f"MLflow run {wanted} (MLFLOW_RUN_ID, the launcher's or the active run) "
                          f"does not exist in {config.redact(self._uri(record))}; logging to a new run")
            record.tags["azml_v1_bridge.requested_run_id"] = wanted
            record.mlflow_run_id, record.adopted = None, False
            self.ensure_run(record)
            return
        record.experiment_id = record.experiment_id or run.info.experiment_id
        there = run.data.tags
        # the v1 tags it lacks; who made the run and from what stay as its owner set them
        tags = {k: v for k, v in record.tags.items() if k != "mlflow.parentRunId"
                and (k not in there if k.startswith("mlflow.") else there.get(k) != v)}
        if tags:
            self._retrying("set_tags", store.set_tags, record.mlflow_run_id, tags)
        store.adopted.add(record.mlflow_run_id)

    def _experiment_id(self, store: Store, record) -> str:
        if record.experiment_id:
            return record.experiment_id
        if not record.experiment_name:
            return "0"
        record.experiment_id = self._retrying("get_experiment_by_name", store.experiment_id,
                                              record.experiment_name)
        return record.experiment_id

    def _send(self, record, work: Work) -> None:
        """Deliver one run's work; what was sent is removed from `work` as it goes, so
        whatever is left when Unreachable is raised is exactly what to journal."""
        run_id = self.ensure_run(record)
        work.create = False
        store = self.store(self._uri(record))
        stats = record.ledger.stats
        if work.metrics or work.params or work.tags:
            self._send_batches(store, run_id, record, work, stats)
        if work.files or work.docs:
            self._send_files(store, run_id, record, work, stats)
        while work.images:
            op = work.images[0]
            self._retrying("log_image", store.log_image, run_id, op.key, op.data, op.step,
                           op.timestamp)
            stats.artifacts += 1
            work.images.pop(0)
        if work.end is not None:
            self._retrying("set_terminated", store.set_terminated, run_id, work.end.status,
                           work.end.timestamp)
            work.end = None

    def _send_batches(self, store, run_id, record, work: Work, stats) -> None:
        if work.metrics:
            work.metrics = self._in_range(record, work.metrics, stats)
        metrics, params, tags = work.metrics, work.params, list(work.tags.items())
        mi = pi = ti = 0
        try:
            for m, p, t in batches(metrics, params, tags):
                self._log_batch(store, run_id, record, m, p, t, stats)
                mi, pi, ti = mi + len(m), pi + len(p), ti + len(t)
        except Unreachable as exc:
            um, up, ut = exc.unsent or ([], [], [])
            work.metrics = um + metrics[mi + len(m):]
            work.params = up + params[pi + len(p):]
            work.tags = dict(ut + tags[ti + len(t):])
            raise
        work.metrics, work.params, work.tags = [], [], {}

    def _in_range(self, record, metrics: list, stats) -> list:
        """The points MLflow can store: a step or timestamp outside a signed 64-bit integer
        is refused alone here, by name (a server answers INTERNAL_ERROR for it, which would
        look like an outage and cost the whole run)."""
        for point in metrics:
            if not (INT64_MIN <= point[3] <= INT64_MAX and INT64_MIN <= point[2] <= INT64_MAX):
                break
        else:
            return metrics
        kept = []
        for point in metrics:
            key, value, timestamp, step = point
            if INT64_MIN <= step <= INT64_MAX and INT64_MIN <= timestamp <= INT64_MAX:
                kept.append(point)
                continue
            self._note(record, Note("out_of_range", str(key),
                                    f"step {step} or timestamp {timestamp} is outside MLflow's "
                                    f"range (a signed 64-bit integer); this point is not logged"))
        return kept

    def _log_batch(self, store, run_id, record, metrics, params, tags, stats) -> None:
        """Send one batch; an item error splits it so one bad item never sinks the rest.
        On Unreachable (or Refused), `exc.unsent` holds what did not go out."""
        stack = [(metrics, params, tags)]
        checked = False
        while stack:
            m, p, t = stack.pop()
            try:
                try:
                    self._retrying("log_batch", store.log_batch, run_id, m, p, t)
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
                    self._check_active(store, run_id, error)
            except Unreachable as exc:
                stack.append((m, p, t))
                exc.unsent = tuple([x for s in reversed(stack) for x in s[i]] for i in range(3))
                raise
            if len(m) + len(p) + len(t) == 1:
                stats.delivery_failures += 1
                item = (m or p or t)[0]
                self._note(record, Note("rejected_by_mlflow", str(item[0]), describe_error(error)))
                continue
            first, second = halves(m, p, t)
            stack.append(second)
            stack.append(first)  # on top: sent first

    def _check_active(self, store, run_id, error) -> None:
        try:
            run = self._retrying("get_run", store.get_run, run_id)
        except Unreachable:
            raise
        except Exception:
            return
        if run.info.lifecycle_stage != "active":
            raise Refused(f"log_batch: the run is {run.info.lifecycle_stage}: "
                          f"{describe_error(error)}") from error

    def _render_charts(self, record, work: Work) -> None:
        charts, work.charts = work.charts, []
        if not self.cfg.charts:
            return
        for op in charts:
            try:
                from .. import charts as charts_module

                png = charts_module.render_png(op.obj, title=op.title)
                work.files.append((op.path, png))
            except Exception as exc:
                self._note(record, Note("chart_skipped", op.title,
                                        f"{plain_error(exc)}; the JSON is kept"))

    def _send_files(self, store, run_id, record, work: Work, stats) -> None:
        files = work.files + record.ledger.docs.render(work.docs)
        try:
            self._retrying("log_artifacts", store.log_files, run_id, files)
        except Unreachable:
            raise
        except Exception as exc:
            stats.delivery_failures += 1
            self._note(record, Note("artifact_failed", files[0][0], describe_error(exc)))
        else:
            stats.artifacts += len(files)
        work.files, work.docs = [], set()

    # ----------------------------------------------------------- failures

    def _spill(self, record, uri: str | None, work: Work, reason: str, refused: bool = False,
               permanent: bool = False) -> None:
        """Journal what `work` still holds; every later piece of this run follows it there."""
        lid = record.local_id
        self._spilled.add(lid)
        if work.charts:
            self._render_charts(record, work)
        stats = record.ledger.stats
        try:
            if self.journal is None:
                self.journal = Journal(self._journal_path())
            count = self.journal.write(record, uri, work, record.ledger.docs.render(work.docs))
        except Exception as exc:
            stats.delivery_failures += work.count()
            self._problem("journal", f"could not write the journal "
                          f"{getattr(self.journal, 'path', '?')}: {journal_error(exc)}; "
                          f"{work.count()} item(s) lost", exc)
            return
        stats.journaled += count
        self._failed(f"{count} item(s) of run {record.mlflow_run_id or record.v1_id} journaled "
                     f"to {self.journal.path}: {reason}")
        kind = "refused" if refused else "journal"
        if kind in self._warned and self.journal.path != self._journal_named:
            self._journal_named = self.journal.path
            logger.warning("azml_v1_bridge: undelivered data now goes to the journal %s (%s); "
                           "deliver it later with `azml-v1-bridge replay` on each journal named",
                           self.journal.path, self.journal.moved_from)
        if kind not in self._warned:
            self._warned.add(kind)
            self._journal_named = self.journal.path
            if refused:
                what = "refuses data of run %s" % (record.mlflow_run_id or record.v1_id)
            else:
                what = "cannot be used" if permanent else "is not answering"
            moved = f" ({self.journal.moved_from})" if self.journal.moved_from else ""
            logger.warning("azml_v1_bridge: the MLflow tracking store %s %s (%s); undelivered "
                           "data goes to the journal %s%s; deliver it later with "
                           "`azml-v1-bridge replay %s`", config.redact(uri or "?"), what,
                           config.redact(reason), self.journal.path, moved, self.journal.path)

    def _journal_path(self) -> str:
        """AZML_V1_BRIDGE_JOURNAL (a folder there gets the default file name), else
        ./azml_v1_bridge_journal/<UTC time>-<pid>.jsonl."""
        path = self.cfg.journal
        if not path:
            return config.default_journal_path()
        if os.path.isdir(path) or path.endswith(("/", os.sep)):
            return os.path.join(path, os.path.basename(config.default_journal_path()))
        return path

    def _failed(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def _problem(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        self._failed(message)
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning("azml_v1_bridge: %s", config.redact(message))

    # ----------------------------------------------------------- exit

    def close(self, timeout: float) -> bool:
        """Deliver everything by `timeout` seconds from now, giving up on a dead store by
        then. If the writer is still stuck (a store that accepts connections but never
        answers), what it holds is journaled from this thread."""
        deadline = time.monotonic() + max(0.0, timeout)
        self.exit_by(deadline)
        if self._thread is None and not self._queue:
            store_module.remove_lock_files()
            return True
        done = self._wait_for(CLOSE, deadline - time.monotonic())
        if done:
            store_module.remove_lock_files()
        else:
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
        pending = {record: held.copy() for record, held in list(self._inflight.items())}
        queue = self._queue
        while queue:
            try:
                item = queue.popleft()
            except IndexError:  # the writer woke up and took the rest
                break
            if len(item) == 6:
                record = self.records[item[0]]
                pending.setdefault(record, Work()).metrics.append(item[2:])
            elif item[1] is FLUSH or item[1] is CLOSE:
                item[2].set()
            else:
                self._collect(pending, *item)
        for record in list(self.records.values()):
            if record.ledger.docs.dirty:
                pending.setdefault(record, Work()).docs = record.ledger.docs.take()
        for record, work in pending.items():
            if not work.empty():
                self._spill(record, self._uri_or_none(record), work,
                            "the store did not answer before the exit deadline")

