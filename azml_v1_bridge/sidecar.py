"""The writer in a process of its own, so MLflow's work never competes for the GIL.

Building MLflow entities and REST requests costs 25-30 us of Python per metric
point (measured against a local `mlflow server`), more than v1's whole `run.log`.
In a thread of the training process that time comes out of the training loop.
Here the training process only appends to a deque; a forwarder thread sends the
calls to a child interpreter as compact pickles (about 0.6 us a point), and the
child runs the ordinary `deliver.Writer`.

`ProcessWriter` has the Writer's interface (submit, flush, close, stats,
errors, journal, staging_dir, client). If the child cannot be started, or dies,
it falls back to an in-process `Writer`, so nothing stops data reaching MLflow.
The child leaves its own session: a Ctrl-C or SIGTERM to the training job does
not kill it; it sees the pipe close, delivers what it has and ends the open
runs KILLED if the parent never said goodbye.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from . import config
from .deliver import FLUSH, QueueFront, RunStats, Writer, describe_error
from .ops import End, Metric

logger = logging.getLogger("azml_v1_bridge")

_CLOSE = object()  # queue marker (never a v1 method name), next to deliver.FLUSH



def _pack(ops: list) -> list:
    # Metric points become plain tuples: pickling a tuple is 5x cheaper than a slotted object.
    return [(op.key, op.value, op.timestamp, op.step) if type(op) is Metric else op for op in ops]


def _unpack(ops: list) -> list:
    return [Metric(*op) if type(op) is tuple else op for op in ops]


def _record_message(record) -> dict:
    return {
        "local_id": record.local_id, "v1_id": record.v1_id,
        "parent": record.parent.local_id if record.parent is not None else None,
        "experiment_id": record.experiment_id, "experiment_name": record.experiment_name,
        "tracking_uri": record.tracking_uri, "mlflow_run_id": record.mlflow_run_id,
        "adopted": record.adopted, "run_name": record.run_name, "start_ms": record.start_ms,
        "tags": dict(record.tags), "owner_pid": record.owner_pid, "cwd": os.getcwd(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")},
    }


class _Journal:
    def __init__(self, path):
        self.path = path


class ProcessWriter(QueueFront):
    """The training process's side: a deque, a forwarder thread, a pipe to the child."""

    THREAD_NAME = "azml_v1_bridge-forwarder"

    def __init__(self, cfg: config.Config):
        self._init_front(cfg)
        self.stats: dict = collections.defaultdict(RunStats)
        self.errors: list = []
        self.journal: _Journal | None = None
        self._exiting = False
        self._proc: subprocess.Popen | None = None
        self._send_conn: Connection | None = None
        self._recv_conn: Connection | None = None
        self._sent: set = set()
        self._fallback: Writer | None = None
        self._clients: dict = {}

    def close(self, timeout: float) -> bool:
        self._exiting = True
        if self._thread is None and not self._queue:
            return True
        return self._wait_for(_CLOSE, timeout)

    def client(self, uri: str):
        client = self._clients.get(uri)
        if client is None:
            from mlflow.tracking import MlflowClient

            client = self._clients[uri] = MlflowClient(tracking_uri=uri)
        return client

    def forget_parent(self) -> None:
        """In a forked child: the pipe is the parent's; close our copy without a word."""
        for conn in (self._send_conn, self._recv_conn):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass

    # ----------------------------------------------------------- forwarder thread

    def _spawn(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        env[config.MODE] = "off"  # the child must not bridge itself (e.g. under the launcher)
        env[config.REPORT] = "0"
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "azml_v1_bridge.sidecar", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL,
                start_new_session=True, close_fds=True)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._send_conn = Connection(to_child_w, readable=False, writable=True)
        self._recv_conn = Connection(from_child_r, readable=True, writable=False)

    def _loop(self) -> None:
        try:
            if self.cfg.writer == "process":
                self._spawn()
        except Exception as exc:
            logger.warning("azml_v1_bridge: could not start the writer process (%s); writing "
                           "from a thread instead", describe_error(exc))
        while True:
            self._wake.wait(self.cfg.flush_interval)
            self._wake.clear()
            try:
                if self._cycle():
                    return
            except BaseException as exc:  # the forwarder must outlive any bug
                self.errors.append(f"forwarder cycle failed: {describe_error(exc)}")
                logger.warning("azml_v1_bridge: forwarder cycle failed: %s", describe_error(exc))

    def _cycle(self) -> bool:
        queue = self._queue
        batch: list = []
        while queue:
            item = queue.popleft()
            if len(item) == 6:  # a lone metric point: already plain values
                batch.append(item)
                continue
            record, method, ops = item
            if method is FLUSH or method is _CLOSE:
                self._send(batch)
                batch = []
                self._barrier(method, ops)
                if method is _CLOSE:
                    return True
                continue
            if record.local_id not in self._sent:
                for rec in (record.parent, record):
                    if rec is not None and rec.local_id not in self._sent:
                        self._sent.add(rec.local_id)
                        self.records[rec.local_id] = rec
                        batch.append(("record", _record_message(rec)))
            batch.append((record.local_id, method, _pack(ops)))
            if len(batch) >= 20_000:
                self._send(batch)
                batch = []
        self._send(batch)
        return False

    def _send(self, batch: list) -> None:
        if not batch:
            return
        if self._fallback is None and self._send_conn is not None:
            try:
                self._send_conn.send_bytes(pickle.dumps(("batch", batch), protocol=5))
                return
            except (OSError, ValueError) as exc:
                self._lost_child(exc)
        self._to_fallback(batch)

    def _barrier(self, kind: str, done: threading.Event) -> None:
        """Ask the child to deliver everything so far; take back run ids and stats."""
        try:
            if self._fallback is None and self._send_conn is not None:
                timeout = self.cfg.exit_timeout
                try:
                    name = "close" if kind is _CLOSE else "flush"
                    # exiting: the child gives up on a dead store as soon as we would
                    message = (name, (timeout, self._exiting))
                    self._send_conn.send_bytes(pickle.dumps(message, protocol=5))
                    if self._recv_conn.poll(timeout + 5):
                        self._apply(pickle.loads(self._recv_conn.recv_bytes()))
                        if kind is _CLOSE:
                            self._reap()
                        return
                    self.errors.append(f"the writer process did not answer within {timeout}s")
                    return
                except (OSError, EOFError, ValueError) as exc:
                    self._lost_child(exc)
            writer = self._fallback or self._make_fallback()
            (writer.close if kind is _CLOSE else writer.flush)(self.cfg.exit_timeout)
            self._adopt_stats(writer)
        finally:
            done.set()

    def _apply(self, reply: dict) -> None:
        for local_id, (run_id, experiment_id, uri) in reply["runs"].items():
            record = self.records.get(local_id)
            if record is not None:
                record.mlflow_run_id = run_id or record.mlflow_run_id
                record.experiment_id = experiment_id or record.experiment_id
                record.tracking_uri = uri or record.tracking_uri
        for local_id, data in reply["stats"].items():
            stats = self.stats[local_id]
            for name, value in data.items():
                setattr(stats, name, collections.Counter(value) if name == "calls" else value)
        self.errors.extend(reply["errors"])
        if reply.get("journal"):
            self.journal = _Journal(reply["journal"])

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def _lost_child(self, exc: BaseException) -> None:
        message = (f"the writer process is gone ({describe_error(exc)}); what it had not "
                   "delivered is lost, the rest goes through an in-process writer")
        self.errors.append(message)
        logger.warning("azml_v1_bridge: %s", message)
        self._send_conn = None
        self._make_fallback()

    def _make_fallback(self) -> Writer:
        if self._fallback is None:
            self._fallback = Writer(self.cfg)
            self._fallback._exiting = self._exiting
        return self._fallback

    def _to_fallback(self, batch: list) -> None:
        writer = self._make_fallback()
        for item in batch:
            if item[0] == "record":
                continue
            if len(item) == 6:
                local_id, method, key, value, ts, step = item
                writer.submit(self.records[local_id], method, [Metric(key, value, ts, step)])
                continue
            local_id, method, ops = item
            writer.submit(self.records[local_id], method, _unpack(ops))

    def _adopt_stats(self, writer: Writer) -> None:
        for local_id, stats in writer.stats.items():
            self.stats[local_id] = stats
        self.errors.extend(e for e in writer.errors if e not in self.errors)
        if writer.journal is not None:
            self.journal = _Journal(writer.journal.path)


# --------------------------------------------------------------- the child

def _absolute(uri: str | None, cwd: str) -> str | None:
    """MLflow's default store is relative to the training script's folder, not ours."""
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///"):]
        if not os.path.isabs(path):
            return "sqlite:///" + os.path.join(cwd, path)
    return uri


def serve(read_fd: int, write_fd: int) -> None:
    from .runs import RunRecord

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # we stop when the training process's pipe closes
    receive = Connection(read_fd, readable=True, writable=False)
    reply = Connection(write_fd, readable=False, writable=True)
    cfg = config.load()
    writer = Writer(cfg)
    records: dict = {}
    ended: set = set()

    def snapshot() -> dict:
        return {
            "runs": {lid: (r.mlflow_run_id, r.experiment_id, r.tracking_uri) for lid, r in records.items()},
            "stats": {lid: s.to_json() for lid, s in writer.stats.items()},
            "errors": writer.errors[:],
            "journal": writer.journal.path if writer.journal is not None else None,
        }

    while True:
        try:
            kind, payload = pickle.loads(receive.recv_bytes())
        except (EOFError, OSError):
            break  # the training process is gone without a goodbye
        if kind == "batch":
            for item in payload:
                if item[0] == "record":
                    message = item[1]
                    os.environ.update(message.pop("env"))
                    cwd = message.pop("cwd")
                    record = RunRecord(message["v1_id"], records.get(message["parent"]))
                    for name in ("local_id", "experiment_id", "experiment_name", "mlflow_run_id",
                                 "adopted", "run_name", "start_ms", "tags", "owner_pid"):
                        setattr(record, name, message[name])
                    record.tracking_uri = _absolute(message["tracking_uri"], cwd)
                    if record.tracking_uri is None:
                        import mlflow

                        record.tracking_uri = _absolute(mlflow.get_tracking_uri(), cwd)
                    records[record.local_id] = record
                    continue
                if len(item) == 6:
                    local_id, method, key, value, ts, step = item
                    writer.submit(records[local_id], method, [Metric(key, value, ts, step)])
                    continue
                local_id, method, ops = item
                ops = _unpack(ops)
                if any(type(op) is End for op in ops):
                    ended.add(local_id)
                writer.submit(records[local_id], method, ops)
        elif kind == "flush":
            timeout, exiting = payload
            writer._exiting = writer._exiting or exiting
            writer.flush(timeout)
            reply.send_bytes(pickle.dumps(snapshot(), protocol=5))
            writer.errors.clear()
        elif kind == "close":
            timeout, _ = payload
            writer.close(timeout)
            reply.send_bytes(pickle.dumps(snapshot(), protocol=5))
            return
    # Parent died: deliver what we have; its open runs were killed with it.
    now = int(time.time() * 1000)
    for local_id, record in records.items():
        if local_id not in ended and not record.adopted:
            writer.submit(record, None, [End("KILLED", now)])
    writer.close(cfg.exit_timeout)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
