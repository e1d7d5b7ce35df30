"""One v1 call, end to end on the caller's thread: run v1 (or its stand-in),
find the run record, translate, snapshot user files, hand the ops to the writer.

Also the process-level hooks a writer needs: exit, SIGTERM, fork, uncaught
exceptions. Errors here never reach user code unless AZML_V1_BRIDGE_STRICT=1.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from threading import get_ident

from . import config, ranks
from .delivery.errors import describe_error
from .delivery.writer import Writer
from .ops import ArtifactFile, Artifact, CreateRun, End, Note, Tag
from .runs import ATTR, Registry
from .translate import TRANSLATORS, Call, NewRun

_time = time.time

logger = logging.getLogger("azml_v1_bridge")

# Methods that return only after their data is in MLflow.
BLOCKING = frozenset(("flush", "complete", "fail", "cancel", "__exit__"))


class BridgeError(RuntimeError):
    """Raised instead of logged when AZML_V1_BRIDGE_STRICT=1."""


_WRITER_LOCK = threading.Lock()


class State:
    def __init__(self):
        self.cfg = config.Config()
        self.mode = "off"
        self.registry = Registry()
        self.writer: Writer | None = None
        self.pid = os.getpid()
        self.failures = 0
        self.warned: set = set()

    def new_registry(self) -> None:
        """The next v1 run maps to a new MLflow run (finish())."""
        self.registry = Registry()

    def get_writer(self):
        writer = self.writer
        if writer is None:
            with _WRITER_LOCK:  # threads making their first call at once must share one writer
                writer = self.writer
                if writer is None:
                    if self.cfg.writer == "process":
                        from .delivery.sidecar import ProcessWriter

                        writer = ProcessWriter(self.cfg)
                    else:
                        writer = Writer(self.cfg)
                    self.writer = writer
        return writer


STATE = State()
_inside: set = set()  # threads inside a v1 method called through the bridge
_PREPARED = frozenset(("log_list", "upload_file"))
# Methods whose ops may name user files, snapshotted on the caller's thread.
_STAGED = frozenset(("log_image", "upload_file", "upload_files", "upload_folder"))


def _failed(kind: str, exc: BaseException) -> None:
    STATE.failures += 1
    if STATE.cfg.strict:
        raise BridgeError(f"azml_v1_bridge {kind} failed: {describe_error(exc)}") from exc
    if kind not in STATE.warned:
        STATE.warned.add(kind)
        logger.warning("azml_v1_bridge: %s failed, the training script goes on: %s "
                       "(warned once per kind)", kind, describe_error(exc))


# ---------------------------------------------------------------- the call

def handle(method: str, wrapped, instance, args, kwargs, standin=None):
    """The body of every wrapper (see patch.py). Kept lean: it runs on every v1 call."""
    thread = get_ident()
    if thread in _inside:  # v1 calling itself (Run.tag -> set_tags): emit once, at the outer call
        return wrapped(*args, **kwargs)
    if method in _PREPARED:
        try:
            args, kwargs = _prepare(method, args, kwargs)
        except Exception as exc:
            _failed("preparing " + method, exc)
    if STATE.mode == "mlflow":
        result = standin(instance, *args, **kwargs) if standin is not None else None
    else:
        _inside.add(thread)
        try:
            result = wrapped(*args, **kwargs)
        finally:
            _inside.discard(thread)
    try:
        emit(method, instance, args, kwargs, result)
    except _UserTypeError as exc:
        raise exc.error from None
    except BridgeError:
        raise
    except Exception as exc:
        _lost_call(method, instance, exc)
        _failed(method, exc)
    return result


def _lost_call(method: str, instance, exc: BaseException) -> None:
    """A call the bridge could not translate still counts, with its reason, in the report."""
    try:
        record = instance.__dict__.get(ATTR) if instance is not None else None
        if record is not None:
            reason = f"{type(exc).__name__}: {exc}"
            (STATE.writer or STATE.get_writer()).submit(
                record, method, [Note("not_translated", method, reason[:500])])
    except Exception:  # never a second failure out of the first
        pass


class _UserTypeError(Exception):
    def __init__(self, error):
        self.error = error


def _prepare(method, args, kwargs):
    """Make one-shot arguments reusable: v1 and MLflow must see the same values."""
    if method == "log_list":
        if len(args) > 1 and not isinstance(args[1], list):
            args = (args[0], _materialize(args[1])) + tuple(args[2:])
        elif "value" in kwargs and not isinstance(kwargs["value"], list):
            kwargs = dict(kwargs, value=_materialize(kwargs["value"]))
    elif method == "upload_file":
        if len(args) > 1 and hasattr(args[1], "read"):
            args = (args[0], _buffer(args[1])) + tuple(args[2:])
        elif hasattr(kwargs.get("path_or_stream"), "read"):
            kwargs = dict(kwargs, path_or_stream=_buffer(kwargs["path_or_stream"]))
    return args, kwargs


def _materialize(value):
    try:
        return list(value)
    except TypeError:
        return value


def _buffer(stream):
    data = stream.read()
    if isinstance(data, str):
        data = data.encode("utf-8")
    return io.BytesIO(data)


def emit(method, instance, args, kwargs, result) -> None:
    if method == "start_logging":
        record, fresh = None, False
    else:
        record = instance.__dict__.get(ATTR)
        fresh = False
        if record is None:
            record, fresh = STATE.registry.record_for(instance, STATE.mode)
        if record.muted:
            _warn_same_run(record)
            return
    call = Call(record.state if record is not None else None, int(_time() * 1000), result, instance)
    try:
        ops = TRANSLATORS[method](call, *args, **kwargs)
    except TypeError as exc:
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            # the arguments do not fit the v1 signature: the user's error, as in v1
            raise _UserTypeError(exc) from None
        raise
    writer = STATE.writer or STATE.get_writer()
    if ops and type(ops[0]) is NewRun:
        ops = _new_runs(record, ops, writer)
    if record is None:
        return
    if fresh:
        ops.insert(0, CreateRun())
    if record.key_suffix:  # a forked child writing into its parent's run (lifecycle.py)
        ops = ranks.into_series(ops, record.key_suffix)
    if record.adopted:  # a run other processes may share (ranks.py)
        ops = ranks.for_rank(ops, STATE.cfg.rank)
        if any(type(op) is End for op in ops):  # never end a run the bridge did not create
            record.ended = True
            ops = ranks.end_as_status(ops, _process_label())
    if method in _STAGED:
        ops = _stage(ops, writer)
    if method in BLOCKING:
        if any(type(op) is End for op in ops):
            record.ended = True
            ops = _with_outputs(record, ops)
        writer.submit(record, method, ops)
        _wait(writer)
    else:
        writer.submit(record, method, ops)


def _new_runs(parent, ops, writer) -> list:
    rest = []
    for op in ops:
        if type(op) is not NewRun:
            rest.append(op)
            continue
        if op.run is None:
            continue
        child, fresh = STATE.registry.record_for(op.run, STATE.mode, parent=parent,
                                                 experiment=op.experiment, name=op.name)
        if op.outputs:
            child.outputs = str(op.outputs)
        child_ops = [CreateRun()] + [Tag(str(k), v) for k, v in op.tags.items()]
        writer.submit(child, None, child_ops)
    return rest


def _wait(writer) -> None:
    if not writer.flush(STATE.cfg.exit_timeout):
        _failed("flush", TimeoutError(f"not delivered within {STATE.cfg.exit_timeout}s"))
    if STATE.cfg.strict:
        _raise_errors(writer)


def _raise_errors(writer) -> None:
    if writer.errors:
        problems, writer.errors[:] = list(writer.errors), []
        raise BridgeError("azml_v1_bridge delivery failed: " + "; ".join(problems))


def _warn_same_run(record) -> None:
    if not STATE.registry.warned_same_run:
        STATE.registry.warned_same_run = True
        logger.warning("azml_v1_bridge: MLFLOW_RUN_ID is the v1 run itself (%s); azureml-core "
                       "already writes into it, so the bridge does not write it twice",
                       record.v1_id)


def _stage(ops: list, writer: Writer) -> list:
    """Snapshot user files now: the script may change or delete them before delivery."""
    if not any(type(op) is ArtifactFile for op in ops):
        return ops
    staged = []
    for op in ops:
        if type(op) is not ArtifactFile:
            staged.append(op)
            continue
        source = op.source
        if hasattr(source, "read"):
            data = source.read()
            if hasattr(source, "seek"):
                source.seek(0)
            staged.append(Artifact(op.path, data.encode("utf-8") if isinstance(data, str) else data))
        elif os.path.isdir(source):
            for folder, _, files in os.walk(source, onerror=lambda e: staged.append(_unreadable(
                    f"{op.path}/{os.path.relpath(e.filename or source, source)}", e))):
                for name in sorted(files):
                    full = os.path.join(folder, name)
                    rel = os.path.relpath(full, source).replace(os.sep, "/")
                    staged.append(_copied(f"{op.path}/{rel}", full, writer))
        elif os.path.isfile(source) or os.path.islink(source):
            staged.append(_copied(op.path, source, writer))
        else:
            staged.append(Note("missing_file", op.path, f"{source!r} does not exist; nothing uploaded"))
    return staged


def _copied(artifact_path: str, path: str, writer: Writer):
    """The staged copy of one user file, or a note saying why it could not be read (a file
    the user may not read, a symlink loop): one such file never costs the others."""
    try:
        return ArtifactFile(artifact_path, _copy(path, writer))
    except OSError as exc:
        return _unreadable(artifact_path, exc)


def _unreadable(artifact_path: str, exc: OSError) -> Note:
    return Note("unreadable_file", artifact_path,
                f"{exc.filename or artifact_path}: {exc.strerror or exc}; not uploaded")


def _copy(path: str, writer: Writer) -> str:
    folder = os.path.join(writer.staging_dir(), uuid.uuid4().hex)
    os.makedirs(folder)
    target = os.path.join(folder, os.path.basename(path))
    shutil.copyfile(path, target)
    return target


def flush(timeout: float | None = None) -> bool:
    """Block until everything logged so far is in MLflow (or journaled). In strict mode,
    anything journaled or lost raises BridgeError."""
    writer = STATE.writer
    if writer is None:
        return True
    done = writer.flush(timeout)
    if STATE.cfg.strict:
        _raise_errors(writer)
    return done


def mlflow_run_id(run) -> str | None:
    """The MLflow run id a v1 run object maps to (created if needed)."""
    record, fresh = STATE.registry.record_for(run, STATE.mode)
    writer = STATE.get_writer()
    if fresh:
        writer.submit(record, None, [CreateRun()])
    if record.mlflow_run_id is None or fresh:
        writer.flush(STATE.cfg.exit_timeout)
    return record.mlflow_run_id


# ---------------------------------------------------------------- around the call

def _process_label() -> str:
    import socket

    return ranks.process_label(STATE.cfg.rank, socket.gethostname(), os.getpid())


def _with_outputs(record, ops: list) -> list:
    """A top-level run that ends uploads its outputs folder first, as v1 jobs did: on this
    thread (the one ending the run), after the run's earlier data, before its End; see
    outputs.py. Files the store did not take go to the writer (retried, else journaled).
    Runs the bridge adopted are their owner's to upload into (the launcher does)."""
    if (record.parent is not None or record.adopted or record.muted
            or not STATE.cfg.outputs_enabled()):
        return ops
    from . import outputs

    folder = record.outputs or outputs.DEFAULT_FOLDER
    if not os.path.isdir(folder):
        return ops
    files = outputs.files_of(folder)
    if not files:
        return ops
    writer = STATE.get_writer()
    done: list = []
    try:
        if writer.flush(STATE.cfg.exit_timeout) and record.mlflow_run_id is not None:
            uri = record.tracking_uri
            if uri is None:
                import mlflow

                uri = mlflow.get_tracking_uri()
            client = writer.client(uri)
            outputs.upload(client, record.mlflow_run_id, folder, outputs.ARTIFACT_PATH)
            return ops
    except outputs.PartialUpload as exc:
        done = exc.done
        logger.warning("azml_v1_bridge: uploading %s stopped (%s); the other files are queued "
                       "for the writer", folder, describe_error(exc.error))
    except Exception as exc:
        logger.warning("azml_v1_bridge: uploading %s failed (%s); its files are queued for the "
                       "writer", folder, describe_error(exc))
    uploaded = set(done)
    rest = [ArtifactFile(f"{outputs.ARTIFACT_PATH}/{rel}", full) for rel, full, _ in files
            if rel not in uploaded]
    return _stage(rest, writer) + ops


def after_fork_in_child() -> None:
    """The call path's state in a forked child (lifecycle.py decides the rest)."""
    global _WRITER_LOCK
    _WRITER_LOCK = threading.Lock()
    if STATE.writer is not None:
        STATE.writer.forget_after_fork()  # the parent's queue is the parent's to deliver
    STATE.writer = None
    STATE.pid = os.getpid()
    STATE.registry.after_fork()
