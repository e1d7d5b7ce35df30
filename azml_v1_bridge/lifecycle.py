"""The process around the training script: exit, SIGTERM, uncaught exceptions, exit codes,
fork. One place, and one deadline for the whole exit.

- Exit (atexit): deliver everything, publish the report, end this process's open runs
  (FINISHED; FAILED after an uncaught exception or a non-zero `sys.exit`; KILLED after
  SIGTERM), all within AZML_V1_BRIDGE_EXIT_TIMEOUT from the moment the exit began: each
  phase gets what is left, and what is not delivered by then is journaled.
- SIGTERM: the user's own handler runs first. If it returns, the script goes on and
  nothing is ended (a checkpointing handler). If it exits, or there is none, the runs end
  KILLED within AZML_V1_BRIDGE_SIGTERM_TIMEOUT of the signal (25 s: clusters usually
  grant 30), the rest is journaled, and the process dies of the signal as it would have.
- Fork: nothing is waited for before the fork (no lock of ours is held across network I/O
  or an import). The child forgets the parent's writer and queue, releases import locks
  held by threads that do not exist in it, and writes into the parent's runs under a
  series of its own (`<key>/fork_<pid>`); the parent owns and ends them.
- multiprocessing children leave through os._exit (atexit never runs): a finalizer that
  multiprocessing does run delivers their data.
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time

from . import bridge, config, ranks

logger = logging.getLogger("azml_v1_bridge")


class _Process:
    """What this process is going through; reset in a forked child."""

    def __init__(self):
        self.installed = False
        self.closed = False
        self.uncaught = False
        self.exit_code = None       # the code given to sys.exit(), when it was called
        self.sigterm_at = None      # monotonic time of a SIGTERM that will end the process
        self.in_user_handler = False


PROCESS = _Process()


def install() -> None:
    """Install the hooks once per process (idempotent)."""
    if PROCESS.installed:
        return
    PROCESS.installed = True
    atexit.register(shutdown)
    previous_hook = sys.excepthook

    def excepthook(exc_type, exc, tb):
        PROCESS.uncaught = True  # any uncaught exception, Ctrl-C included, ends the runs FAILED
        previous_hook(exc_type, exc, tb)

    sys.excepthook = excepthook
    _wrap_sys_exit()
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_hold_sigterm, after_in_parent=_release_sigterm,
                            after_in_child=_after_fork_in_child)
    if "multiprocessing" in sys.modules:  # a spawned worker importing the script's module
        _deliver_at_multiprocessing_exit()
    if threading.current_thread() is threading.main_thread():
        try:
            previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, _sigterm_handler(previous))
        except (ValueError, OSError):  # not the main interpreter
            pass


def _wrap_sys_exit() -> None:
    """Remember the code of `sys.exit(code)`: a v1 job with a non-zero exit failed."""
    original = sys.exit
    if getattr(original, "_azml_v1_bridge", False):
        return

    def exit(status=None):
        PROCESS.exit_code = status
        original(status)

    exit._azml_v1_bridge = True
    exit.__doc__ = original.__doc__
    sys.exit = exit


def _failed_exit() -> bool:
    code = PROCESS.exit_code
    return code is not None and code != 0


def _sigterm_handler(previous):
    def on_sigterm(signum, frame):
        _handled.set()
        if PROCESS.closed:
            # Already exiting (a multiprocessing worker's finalizer, atexit): let that exit
            # finish, within the SIGTERM deadline, instead of dying half-way through it.
            PROCESS.sigterm_at = time.monotonic()
            writer = bridge.STATE.writer
            if writer is not None:
                writer.exit_by(_deadline())
            return
        if callable(previous):
            # The user's handler first. If it returns, the script goes on (a checkpoint, a
            # graceful stop later): nothing is ended. If it raises SystemExit, the exit path
            # ends the runs KILLED within the SIGTERM deadline.
            PROCESS.sigterm_at = time.monotonic()
            previous(signum, frame)
            PROCESS.sigterm_at = None
            return
        if previous == signal.SIG_IGN:
            return
        PROCESS.sigterm_at = time.monotonic()
        try:
            shutdown(status="KILLED")
        except Exception:
            pass
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    on_sigterm._azml_v1_bridge = True
    return on_sigterm


def _deadline() -> float:
    """When the exit must be over: AZML_V1_BRIDGE_EXIT_TIMEOUT from now, or the SIGTERM
    deadline if that comes first."""
    cfg = bridge.STATE.cfg
    deadline = time.monotonic() + cfg.exit_timeout
    if PROCESS.sigterm_at is not None:
        deadline = min(deadline, PROCESS.sigterm_at + cfg.sigterm_timeout)
    return deadline


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def shutdown(status: str | None = None) -> None:
    """At exit (or SIGTERM): end open runs and deliver everything before the interpreter
    goes, within one deadline."""
    state = bridge.STATE
    if PROCESS.closed or state.pid != os.getpid():
        return
    PROCESS.closed = True
    writer = state.writer
    if writer is None:
        return
    if status is None:
        if PROCESS.sigterm_at is not None:
            status = "KILLED"
        elif PROCESS.uncaught or _failed_exit():
            status = "FAILED"
        else:
            status = "FINISHED"
    deadline = _deadline()
    # the last phase keeps time to journal what a dead store did not take
    delivered_by = deadline - min(5.0, 0.3 * _left(deadline))
    try:
        writer.exit_by(deadline)
        records = [r for r in state.registry.records if r.owner_pid == state.pid]
        writer.flush(_left(delivered_by))
        _publish_report(writer, records, delivered_by)
        end_open_runs(writer, status)
        if not writer.close(_left(deadline)):
            logger.warning("azml_v1_bridge: could not deliver everything by the exit deadline "
                           "(%s=%ss%s); the rest is in the journal", config.EXIT_TIMEOUT,
                           state.cfg.exit_timeout,
                           f", {config.SIGTERM_TIMEOUT}={state.cfg.sigterm_timeout}s after SIGTERM"
                           if PROCESS.sigterm_at is not None else "")
        staging = getattr(writer, "_staging", None)
        if staging:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    except Exception as exc:
        logger.warning("azml_v1_bridge: exit delivery failed: %s", exc)


def finish(status: str = "FINISHED") -> None:
    """End this process's open runs (status as given), deliver everything, and start afresh:
    the next v1 run maps to a new MLflow run. For notebooks, and tests."""
    state = bridge.STATE
    writer = state.writer
    if writer is None:
        return
    records = [r for r in state.registry.records if r.owner_pid == state.pid]
    timeout = state.cfg.exit_timeout
    writer.flush(timeout)
    _publish_report(writer, records, time.monotonic() + timeout)
    end_open_runs(writer, status)
    bridge._wait(writer)
    state.new_registry()  # the writer (and its process) stays for the next runs


def retire_writer() -> None:
    """Deliver what the current writer holds and let it go (new settings start a new one);
    the runs keep their documents and counts (their ledgers)."""
    state = bridge.STATE
    writer, state.writer = state.writer, None
    bridge.LOG_BINDING.invalidate()
    if writer is not None:
        writer.close(state.cfg.exit_timeout)


def end_open_runs(writer, status: str) -> None:
    from .ops import End

    state = bridge.STATE
    now = int(time.time() * 1000)
    for record in state.registry.open_records(state.pid):
        record.ended = True
        if record.adopted and record.mlflow_run_id == state.cfg.launcher_run_id:
            # the launcher's run: say how this process ended; the launcher ends the run once
            writer.submit(record, None, ranks.end_as_status([End(status, now)], bridge._process_label()))
            continue
        if record.adopted or record.muted:
            # not ours to end (MLFLOW_RUN_ID's owner or the user's own mlflow run); its outputs
            # folder is ours where nothing else uploads it (bridge.uploads_outputs)
            if bridge.uploads_outputs(record):
                writer.submit(record, None, bridge._with_outputs(record, []))
            continue
        writer.submit(record, None, bridge._with_outputs(record, [End(status, now)]))


def _publish_report(writer, records, deadline: float) -> None:
    try:
        from . import report

        report.publish(writer, records, bridge.STATE.cfg, timeout=_left(deadline))
    except Exception as exc:
        bridge._failed("report", exc)


# ---------------------------------------------------------------- fork

_held_masks: dict = {}  # thread id -> its signal mask before the fork (the child's thread has the same id)


def _hold_sigterm() -> None:
    """SIGTERM waits (blocked) across a fork. CPython clears the signals a child caught before
    its after-fork code ran, so a SIGTERM sent to a child the scheduler had not run yet (a Pool
    worker that `Pool.terminate()` ends before it took a task) was lost with a Python handler
    installed, ours, and the parent waited for that worker for ever; blocked, it stays pending
    until the child's state is ready (the end of _after_fork_in_child)."""
    try:
        _held_masks[threading.get_ident()] = signal.pthread_sigmask(signal.SIG_BLOCK,
                                                                    {signal.SIGTERM})
    except (AttributeError, OSError, ValueError):
        pass


def _release_sigterm() -> None:
    mask = _held_masks.pop(threading.get_ident(), None)
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _after_fork_in_child() -> None:
    try:
        _prepare_child()
    finally:
        _release_sigterm()
        _held_masks.clear()  # other threads' entries: those threads are not in this child


def _prepare_child() -> None:
    state = bridge.STATE
    parent = state.pid
    _release_dead_import_locks()
    bridge.after_fork_in_child()
    PROCESS.closed = False
    PROCESS.sigterm_at = None
    PROCESS.exit_code = None
    global _handled
    _handled = threading.Event()
    _forget_wakeup()
    suffix = f"/fork_{os.getpid()}"
    for record in state.registry.records:
        if record.owner_pid == parent and not record.ended:
            # The parent's run, written by this child too: a series of its own, from step 0.
            record.key_suffix += suffix
            record.state.steps, record.state.rows = {}, {}
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store is not None:  # SQLAlchemy: never reuse the parent's pooled connections
        cls = store.SqlAlchemyStore
        cls._engine_map_lock = threading.Lock()
        for engine in list(cls._engine_map.values()):
            try:
                engine.dispose(close=False)
            except Exception:
                pass
    if "multiprocessing" in sys.modules:
        _deliver_at_multiprocessing_exit()


def _deliver_at_multiprocessing_exit() -> None:
    """multiprocessing children leave through os._exit: atexit never runs there, but the
    finalizers multiprocessing registers after it starts a child do (it clears the older ones)."""
    import multiprocessing.util as mp_util

    def in_child(_):
        mp_util.Finalize(None, shutdown, exitpriority=100)
        _watch_sigterm()

    mp_util.register_after_fork(PROCESS, in_child)


# ---------------------------------------------------------------- a SIGTERM main never handles

SIGTERM_GRACE = 2.0  # seconds the main thread has to start the handler before the watchdog acts
_handled = threading.Event()  # set by on_sigterm: the main thread did run the handler
_wakeup: list = []            # [read fd, write fd] of this process's wakeup pipe, if any


def _watch_sigterm() -> None:
    """In a multiprocessing child. A Python handler runs only when the main thread next runs
    bytecode: a SIGTERM that lands just before the main thread blocks in C for good (a Pool
    worker entering the task queue's lock, which Pool.terminate() holds) is taken by CPython
    and never handled, and the parent waits for that worker for ever. The signal's wakeup fd
    tells a watchdog thread it came; if the handler has not started within SIGTERM_GRACE, the
    watchdog ends the runs KILLED and the process. Not where the wakeup fd is someone else's."""
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        return
    try:
        os.set_blocking(write_fd, False)
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread
        os.close(read_fd)
        os.close(write_fd)
        return
    if previous != -1:  # asyncio's, or the user's: theirs stays
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return
    _wakeup[:] = [read_fd, write_fd]
    threading.Thread(target=_sigterm_watchdog, args=(read_fd,), daemon=True,
                     name="azml_v1_bridge-sigterm").start()


def _sigterm_watchdog(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGTERM not in data or _handled.wait(SIGTERM_GRACE):
            continue  # another signal, or the main thread runs the handler
        if PROCESS.closed or getattr(signal.getsignal(signal.SIGTERM), "_azml_v1_bridge", None) is None:
            continue  # an exit under way keeps its own deadline; a handler of the user's is theirs
        PROCESS.sigterm_at = time.monotonic()
        try:
            shutdown(status="KILLED")
        finally:
            os._exit(128 + signal.SIGTERM)


def _forget_wakeup() -> None:
    """A forked child: the parent's wakeup pipe is not this process's to watch."""
    if _wakeup:
        try:
            current = signal.set_wakeup_fd(-1)
            if current != _wakeup[1]:
                signal.set_wakeup_fd(current)  # set since by someone else: theirs
        except (ValueError, OSError):
            pass
        for fd in _wakeup:
            try:
                os.close(fd)
            except OSError:
                pass
        _wakeup.clear()


def _release_dead_import_locks() -> None:
    """A fork while another thread was importing (the writer loading MLflow) leaves the child
    with that import half done: a module lock held by a thread that does not exist here (its
    own import of the module would wait for ever), or, once that thread's frames are freed, a
    half-initialized module in sys.modules (its names missing). Drop those locks, and every
    module of a package whose import was cut short, so the child imports it afresh."""
    try:
        import importlib._bootstrap as bootstrap

        locks = bootstrap._module_locks
    except (ImportError, AttributeError):
        return
    me = threading.get_ident()
    mine = set()
    for name, ref in list(locks.items()):
        try:
            lock = ref()
        except TypeError:
            lock = ref
        owner = getattr(lock, "owner", None)
        if lock is not None and owner == me:
            mine.add(name)  # this thread's own import (a fork at import time): left alone
        elif lock is None or owner:
            locks.pop(name, None)
    cut = {name.split(".")[0] for name, module in list(sys.modules.items())
           if name not in mine
           and getattr(getattr(module, "__spec__", None), "_initializing", False)}
    cut -= {name.split(".")[0] for name in mine} | {"azml_v1_bridge", "__main__"}
    if cut:
        for name in list(sys.modules):
            if name.split(".")[0] in cut:
                del sys.modules[name]
