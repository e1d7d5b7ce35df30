"""The caller's side of a writer: a deque, a thread started at the first call, flush markers.

`writer.Writer` delivers from its thread; `sidecar.ProcessWriter` forwards from it. The
caller's thread only appends a tuple (a lone metric point as a flat tuple of atoms, which
the garbage collector stops tracking at once, so a long queue never triggers full
collections in the user's process).
"""
from __future__ import annotations

import collections
import os
import select
import threading
import time

from .. import config
from ..ops import Metric

WAKE_EVERY = 1024   # queued calls that wake the writer before its interval
FLUSH = object()    # queue marker: deliver everything before it
CLOSE = object()    # queue marker: deliver everything, then stop


class Wakeup:
    """An event that any code may set, a signal handler included: a byte in a pipe, where
    `threading.Event.set` takes a lock. A SIGTERM landing while the training thread is
    inside `Event.set` ran our exit on that thread, whose `set` then waited for ever on the
    lock the interrupted frame held (a CI run hung past 120 s that way)."""

    def __init__(self):
        self._read, self._write = os.pipe()  # not inherited by children (PEP 446)
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._flag = False

    def set(self) -> None:
        self._flag = True
        try:
            os.write(self._write, b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    def clear(self) -> None:
        self._flag = False
        try:
            while os.read(self._read, 4096):
                pass
        except OSError:  # empty
            pass

    def wait(self, timeout: float | None = None) -> bool:
        if not self._flag:
            try:
                select.select([self._read], [], [], timeout)
            except (OSError, ValueError):  # closed under us: behave as a timeout
                pass
        return self._flag

    def __del__(self):
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except (OSError, TypeError, AttributeError):
                pass


class QueueFront:
    THREAD_NAME = "azml_v1_bridge-writer"

    def _init_front(self, cfg: config.Config) -> None:
        self.cfg = cfg
        self._queue: collections.deque = collections.deque()
        self._wake = Wakeup()
        self._drained = Wakeup()  # set by the loop each time it empties the queue
        self._thread: threading.Thread | None = None
        self._start_lock = threading.RLock()  # RLock: a SIGTERM handler may flush mid-_start
        self.records: dict[str, object] = {}
        self._staging = None

    @property
    def stats(self) -> dict:
        """Report counts of every run this writer saw (they live on the runs themselves)."""
        return {lid: record.ledger.stats for lid, record in list(self.records.items())}

    # ----------------------------------------------------------- caller side

    def submit(self, record, method: str, ops: list) -> None:
        lid = record.local_id
        if len(ops) == 1 and type(ops[0]) is Metric and lid in self.records:
            m = ops[0]
            item = (lid, method, m.key, m.value, m.timestamp, m.step)
        else:
            self.put((record, method, ops))
            # Known only once its first item is queued: another thread's lone points of this
            # run (as plain tuples, which need the run already known) queue behind it.
            self.records[lid] = record
            return
        self.put(item)

    def put(self, item: tuple) -> None:
        """Queue one item as submit() builds it (bridge.handle_log builds a lone metric point,
        (local_id, method, key, value, timestamp, step), of a run this writer has seen)."""
        queue = self._queue
        queue.append(item)
        if self._thread is None:
            self._start()
        if len(queue) % WAKE_EVERY == 0:
            self._nudge()

    def put_parts(self) -> tuple:
        """(the deque, the call to make when its length is a multiple of WAKE_EVERY): put()
        without a method call, for bridge's run.log bound on a run object. Valid while this
        writer's thread runs; the binding is dropped whenever the writer is replaced or the
        process forks (LogBinding.invalidate)."""
        return self._queue, self._nudge

    def _nudge(self) -> None:
        self._wake.set()
        if len(self._queue) > self.cfg.queue_max:
            self._backpressure()

    def _backpressure(self) -> None:
        # Over the cap: the caller waits while the writer drains (or spills).
        if threading.current_thread() is self._thread:
            return
        while len(self._queue) > self.cfg.queue_max and self._thread.is_alive():
            self._drained.clear()
            self._wake.set()
            self._drained.wait(0.05)

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
        done.until = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self._queue.append((None, marker, done))
        self._start()
        self._wake.set()
        return done.wait(None if timeout is None else max(0.0, timeout))

    def staging_dir(self) -> str:
        if self._staging is None:
            import tempfile

            self._staging = tempfile.mkdtemp(prefix="azml_v1_bridge-")
        return self._staging

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._loop, name=self.THREAD_NAME, daemon=True)
                thread.start()
                self._thread = thread

    def _serve(self) -> None:
        """The thread's loop: wake at the interval or when called, drain once, survive."""
        while True:
            self._wake.wait(self.cfg.flush_interval)
            self._wake.clear()
            try:
                self._cycle()
            except BaseException as exc:  # the thread must outlive any bug
                self._cycle_failed(exc)

    def forget_after_fork(self) -> None:
        """In a forked child: the thread did not survive the fork, and the parent's queue is
        the parent's (it delivers it). The child's next call starts a writer of its own."""
        self._queue = collections.deque()
        self._wake, self._drained = Wakeup(), Wakeup()
        self._thread = None
        self._start_lock = threading.RLock()
