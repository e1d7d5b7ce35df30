"""The writer in a process of its own, so MLflow's work never competes for the GIL.

Building MLflow entities and requests costs tens of microseconds of Python per metric point
(about 80 us on the embedded sqlite store). In a thread of the training process that time
comes out of the training loop. Here the training process only appends to a deque; a
forwarder thread sends the calls to a child interpreter as compact pickles (about 0.6 us a
point), and the child runs the ordinary `writer.Writer`.

`ProcessWriter` has the Writer's interface (submit, flush, close, stats, errors, journal,
staging_dir, client). If the child cannot be started, or dies, it falls back to an
in-process `Writer`, so nothing stops data reaching MLflow. The child's warnings reach the
training process's `azml_v1_bridge` logger. The child leaves its own session: a Ctrl-C or
SIGTERM to the training job does not kill it; it sees the pipe close, delivers what it has
and ends the open runs KILLED if the parent never said goodbye.
"""
from __future__ import annotations

import gc
import logging
import os
import pickle
import select
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

from .. import config
from ..ops import End, Metric
from .errors import describe_error
from .queue import CLOSE, FLUSH, QueueFront
from .writer import Writer

logger = logging.getLogger("azml_v1_bridge")

HANDED = object()  # queue marker: everything before it is in the pipe

RECORD_FIELDS = ("local_id", "experiment_id", "experiment_name", "mlflow_run_id", "adopted",
                 "run_name", "start_ms", "tags", "owner_pid", "key_suffix", "ledger")


def _pack(ops: list) -> list:
    # Metric points become plain tuples: pickling a tuple is 5x cheaper than a slotted object.
    return [(op.key, op.value, op.timestamp, op.step) if type(op) is Metric else op for op in ops]


def _unpack(ops: list) -> list:
    return [Metric(*op) if type(op) is tuple else op for op in ops]


def _record_message(record) -> dict:
    message = {name: getattr(record, name) for name in RECORD_FIELDS}
    message.update({
        "v1_id": record.v1_id, "tracking_uri": record.tracking_uri, "cwd": os.getcwd(),
        "parent": record.parent.local_id if record.parent is not None else None,
        "env": {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")},
    })
    return message


class _Child:
    """The writer process, as the training process sees it."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode = None

    def wait(self, timeout: float | None = None):
        """Its exit code, or None if it is still running after `timeout` seconds."""
        if self.returncode is not None:
            return self.returncode
        if timeout is not None:
            try:
                fd = os.pidfd_open(self.pid)
            except (AttributeError, OSError):  # no pidfd here: only look, never block
                fd = None
                if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                    return None
            if fd is not None:
                try:
                    if not select.select([fd], [], [], max(0.0, timeout))[0]:
                        return None
                finally:
                    os.close(fd)
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:  # reaped already
            status = 0
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class _Journal:
    def __init__(self, path, paths=None):
        self.path = path
        self.paths = list(paths or [path])  # more than one when a folder filled up


class ProcessWriter(QueueFront):
    """The training process's side: a deque, a forwarder thread, a pipe to the child."""

    THREAD_NAME = "azml_v1_bridge-forwarder"

    def __init__(self, cfg: config.Config):
        self._init_front(cfg)
        self.errors: list = []
        self.journal: _Journal | None = None
        self._deadline: float | None = None
        self._proc: _Child | None = None
        self._send_conn: Connection | None = None
        self._recv_conn: Connection | None = None
        self._sent: set = set()
        self._fallback: Writer | None = None
        self._clients: dict = {}

    def exit_by(self, deadline: float) -> None:
        if self._deadline is None or deadline < self._deadline:
            self._deadline = deadline
        if self._fallback is not None:
            self._fallback.exit_by(deadline)

    def close(self, timeout: float) -> bool:
        self.exit_by(time.monotonic() + max(0.0, timeout))
        if self._thread is None and not self._queue:
            return True
        return self._wait_for(CLOSE, timeout)

    def handed_over(self, timeout: float | None = None) -> bool:
        """Wait until every call submitted so far is in the writer process's pipe (what a
        training process killed after this still delivers), without waiting for delivery."""
        if self._thread is None and not self._queue:
            return True
        return self._wait_for(HANDED, timeout)

    def client(self, uri: str):
        client = self._clients.get(uri)
        if client is None:
            from mlflow.tracking import MlflowClient

            client = self._clients[uri] = MlflowClient(tracking_uri=uri)
        return client

    def forget_after_fork(self) -> None:
        """In a forked child: the pipe and the writer process are the parent's; close our
        copies without a word. The child's next call starts a writer process of its own."""
        super().forget_after_fork()
        for conn in (self._send_conn, self._recv_conn):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self._send_conn = self._recv_conn = self._proc = None
        self._sent = set()
        if self._fallback is not None:
            self._fallback.forget_after_fork()

    def _remaining(self, default: float) -> float:
        if self._deadline is None:
            return default
        return max(0.0, self._deadline - time.monotonic())

    # ----------------------------------------------------------- forwarder thread

    def _spawn(self) -> None:
        """Start the child with posix_spawn, not subprocess: Popen waits on a pipe that every
        process forked meanwhile (a multiprocessing worker started by the training thread at
        that moment) holds open until it exits, and the writer would wait that long."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        env[config.MODE] = "off"  # the child must not bridge itself (e.g. under the launcher)
        env[config.REPORT] = "0"
        ours = {to_child_r, to_child_w, from_child_r, from_child_w}
        read_fd, write_fd = [n for n in range(200, 210) if n not in ours][:2]
        try:
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-m", "azml_v1_bridge.delivery.sidecar", str(read_fd), str(write_fd)],
                env, setsid=True,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_DUP2, to_child_r, read_fd),
                              (os.POSIX_SPAWN_DUP2, from_child_w, write_fd)])
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._proc = _Child(pid)
        self._send_conn = Connection(to_child_w, readable=False, writable=True)
        self._recv_conn = Connection(from_child_r, readable=True, writable=False)

    def _loop(self) -> None:
        try:
            self._spawn()
        except Exception as exc:
            logger.warning("azml_v1_bridge: could not start the writer process (%s: %s); "
                           "writing from a thread instead", type(exc).__name__, exc)
        self._serve()

    def _cycle_failed(self, exc: BaseException) -> None:
        self.errors.append(f"forwarder cycle failed: {describe_error(exc)}")
        logger.warning("azml_v1_bridge: forwarder cycle failed: %s", describe_error(exc))

    def _cycle(self) -> None:
        self._relay_logs()
        queue = self._queue
        batch: list = []
        while queue:
            item = queue.popleft()
            if len(item) == 6:  # a lone metric point: already plain values
                batch.append(item)
                continue
            record, method, ops = item
            if method is HANDED:
                self._send(batch)
                batch = []
                ops.set()
                continue
            if method is FLUSH or method is CLOSE:
                self._send(batch)
                batch = []
                self._barrier(method, ops)
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
        self._drained.set()  # everything taken so far is in the pipe (or the fallback)

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

    def _relay_logs(self) -> None:
        """The child's warnings, re-emitted on this process's azml_v1_bridge logger."""
        conn = self._recv_conn
        try:
            while conn is not None and self._fallback is None and conn.poll(0):
                kind, payload = pickle.loads(conn.recv_bytes())
                if kind == "log":
                    logger.log(payload[0], "%s", payload[1])
                else:
                    self._apply(payload)
        except (OSError, EOFError, ValueError):
            pass

    def _barrier(self, marker, done: threading.Event) -> None:
        """Ask the child to deliver everything so far; take back run ids, ledgers, errors."""
        try:
            if self._fallback is None and self._send_conn is not None:
                timeout = self._remaining(self.cfg.exit_timeout)
                until = getattr(done, "until", None)
                if until is not None:  # the caller waits no longer than this: nor does the child
                    timeout = min(timeout, max(0.0, until - time.monotonic()))
                try:
                    name = "close" if marker is CLOSE else "flush"
                    exiting = self._deadline is not None
                    # the child's deadline comes first: what it cannot deliver, it journals
                    # and reports before this process stops waiting
                    given = timeout - min(3.0, timeout * 0.3) if exiting else timeout
                    self._send_conn.send_bytes(pickle.dumps((name, (given, exiting)), protocol=5))
                    until = time.monotonic() + timeout + (0 if exiting else 5)
                    while self._recv_conn.poll(max(0.0, until - time.monotonic())):
                        kind, payload = pickle.loads(self._recv_conn.recv_bytes())
                        if kind == "log":
                            logger.log(payload[0], "%s", payload[1])
                            continue
                        self._apply(payload)
                        if marker is CLOSE:
                            self._reap()
                        return
                    self.errors.append(f"the writer process did not answer within {timeout:.0f}s; "
                                       "it goes on delivering (or journaling) on its own")
                    return
                except (OSError, EOFError, ValueError) as exc:
                    self._lost_child(exc)
            writer = self._fallback or self._make_fallback()
            remaining = self._remaining(self.cfg.exit_timeout)
            (writer.close if marker is CLOSE else writer.flush)(remaining)
            self._adopt_errors(writer)
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
            record = self.records.get(local_id)
            if record is not None:
                record.ledger.stats.update(data)
        for local_id, docs in reply.get("docs", {}).items():
            record = self.records.get(local_id)
            if record is not None:  # the writer process is going: its documents come home
                record.ledger.docs = docs
        self.errors.extend(reply["errors"])
        if reply.get("journal"):
            self.journal = _Journal(reply["journal"], reply.get("journals"))

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait(timeout=self._remaining(10))

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
            if self._deadline is not None:
                self._fallback.exit_by(self._deadline)
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

    def _adopt_errors(self, writer: Writer) -> None:
        self.errors.extend(e for e in writer.errors if e not in self.errors)
        writer.errors.clear()
        if writer.journal is not None:
            self.journal = _Journal(writer.journal.path, writer.journal.paths)


# --------------------------------------------------------------- the child

def _absolute(uri: str | None, cwd: str) -> str | None:
    """MLflow's default store is relative to the training script's folder, not ours."""
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///"):]
        if not os.path.isabs(path):
            return "sqlite:///" + os.path.join(cwd, path)
    return uri


class _Forward(logging.Handler):
    """The child's warnings, sent to the training process (printed there, once)."""

    def __init__(self, conn: Connection, lock: threading.Lock):
        super().__init__(logging.WARNING)
        self.conn, self.send_lock = conn, lock  # (Handler.lock is logging's own)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = pickle.dumps(("log", (record.levelno, record.getMessage())), protocol=5)
            with self.send_lock:
                self.conn.send_bytes(data)
        except Exception:  # the training process is gone: say it here instead
            sys.stderr.write(record.getMessage() + "\n")


def serve(read_fd: int, write_fd: int) -> None:
    from ..runs import RunRecord

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # we stop when the training process's pipe closes
    receive = Connection(read_fd, readable=True, writable=False)
    reply = Connection(write_fd, readable=False, writable=True)
    lock = threading.Lock()
    logger.addHandler(_Forward(reply, lock))
    logger.propagate = False
    cfg = config.load()
    writer = Writer(cfg)

    def load_mlflow() -> None:
        # Load MLflow now, then take everything loaded out of the collector's full passes.
        # Off this loop: a close that arrives meanwhile (a short exit deadline) is answered,
        # journaling included, in time instead of a second after the training process left.
        try:
            from mlflow.tracking import MlflowClient  # noqa: F401
        except Exception:
            pass
        gc.freeze()

    threading.Thread(target=load_mlflow, name="azml_v1_bridge-load", daemon=True).start()
    records: dict = {}
    ended: set = set()

    def answer(with_docs: bool) -> None:
        snapshot = {
            "runs": {lid: (r.mlflow_run_id, r.experiment_id, r.tracking_uri)
                     for lid, r in records.items()},
            "stats": {lid: r.ledger.stats.to_json() for lid, r in records.items()},
            "docs": {lid: r.ledger.docs for lid, r in records.items()} if with_docs else {},
            "errors": writer.errors[:],
            "journal": writer.journal.path if writer.journal is not None else None,
            "journals": writer.journal.paths if writer.journal is not None else [],
        }
        writer.errors.clear()
        data = pickle.dumps(("reply", snapshot), protocol=5)
        with lock:
            reply.send_bytes(data)

    while True:
        try:
            kind, payload = pickle.loads(receive.recv_bytes())
        except (EOFError, OSError):
            break  # the training process is gone without a goodbye
        if kind == "batch":
            for item in payload:
                if item[0] == "record":
                    message = item[1]
                    os.environ.update(message["env"])
                    record = RunRecord(message["v1_id"], records.get(message["parent"]))
                    for name in RECORD_FIELDS:
                        setattr(record, name, message[name])
                    record.tracking_uri = _absolute(message["tracking_uri"], message["cwd"])
                    if record.tracking_uri is None:
                        import mlflow

                        record.tracking_uri = _absolute(mlflow.get_tracking_uri(), message["cwd"])
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
            if exiting:
                writer.exit_by(time.monotonic() + timeout)
            writer.flush(timeout)
            answer(with_docs=False)
        elif kind == "close":
            timeout, _ = payload
            writer.close(timeout)
            answer(with_docs=True)
            _leave()
    # Parent died: deliver what we have; its open runs were killed with it.
    now = int(time.time() * 1000)
    for local_id, record in records.items():
        if local_id not in ended and not record.adopted and not record.key_suffix:
            writer.submit(record, None, [End("KILLED", now)])
    writer.close(cfg.exit_timeout)
    _leave()


def _leave() -> None:
    """Everything is delivered or journaled: skip the interpreter's teardown (seconds of
    garbage collection over MLflow's modules) that the training process would wait for."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
