"""One v1 call, end to end on the caller's thread: run v1 (or its stand-in),
find the run record, translate, snapshot user files, hand the ops to the writer.

Also the process-level hooks a writer needs: exit, SIGTERM, fork, uncaught
exceptions. Errors here never reach user code unless AZML_V1_BRIDGE_STRICT=1.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import io
import itertools
import logging
import os
import shutil
import sys
import threading
import time
import uuid
import weakref

from . import azure, config, ranks
from .delivery.errors import describe_error
from .delivery.queue import WAKE_EVERY
from .delivery.writer import Writer
from .ops import INT64_MAX, INT64_MIN, ArtifactFile, Artifact, CreateRun, End, Note, Tag
from .runs import ATTR, Registry
from .translate import (REAL_TYPES, TRANSLATORS, Call, NewRun, end_status, log_point, to_number,
                        valid_key)

_time = time.time

logger = logging.getLogger("azml_v1_bridge")

# Methods that return only after their data is in MLflow.
BLOCKING = frozenset(("flush", "complete", "fail", "cancel", "__exit__"))


def is_bridged(attribute) -> bool:
    """Whether a class attribute is one of our wrappers (not someone else's wrapt proxy)."""
    return bool(getattr(getattr(attribute, "_self_wrapper", None), "_azml_v1_bridge", False))


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
        self.forked = False
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
                    # A forked child (a Pool or DataLoader worker) writes from a thread: a
                    # second interpreter per worker costs more than the worker's own logging,
                    # and its exit must journal what it holds before the process is gone.
                    if self.cfg.writer == "process" and not self.forked:
                        from .delivery.sidecar import ProcessWriter

                        writer = ProcessWriter(self.cfg)
                    else:
                        writer = Writer(self.cfg)
                    self.writer = writer
                    LOG_BINDING.invalidate()  # a bound run.log holds the writer it was bound with
        return writer


STATE = State()
# Set while a v1 method called through the bridge runs (v1 calling itself, Run.tag -> set_tags,
# emits once, at the outer call). A context variable, not a thread-id set: a forked child or a
# new thread never inherits another thread's "inside", and asyncio tasks each have their own.
_INSIDE: contextvars.ContextVar = contextvars.ContextVar("azml_v1_bridge_inside", default=False)
# Methods with one-shot arguments (generators, streams): read once, before v1 runs.
_PREPARED = frozenset(("log_list", "upload_file", "log_image"))
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
    if _INSIDE.get():  # v1 calling itself (Run.tag -> set_tags): emit once, at the outer call
        return wrapped(*args, **kwargs)
    v1_args, v1_kwargs = args, kwargs
    if method in _PREPARED:
        try:
            v1_args, v1_kwargs, args, kwargs = _prepare(method, wrapped, instance, args, kwargs)
        except Exception as exc:
            _failed("preparing " + method, exc)
    if STATE.mode == "mlflow":
        result = standin(instance, *args, **kwargs) if standin is not None else None
    else:
        token = _INSIDE.set(True)
        try:
            result = wrapped(*v1_args, **v1_kwargs)
        finally:
            _INSIDE.reset(token)
    try:
        if kwargs:
            args, kwargs = _bind(method, wrapped, instance, args, kwargs)
        emit(method, instance, args, kwargs, result)
    except _UserTypeError as exc:
        raise exc.error from None
    except BridgeError:
        raise
    except Exception as exc:
        _lost_call(method, instance, exc)
        _failed(method, exc)
    return result


_NO_STEP = object()


def _given_step(args, kwargs):
    """The step of run.log(name, value[, description][, step]) as a training loop calls it
    (positional, or step= alone by keyword): None for none, _NO_STEP for any other form."""
    n = len(args)
    if kwargs:
        return kwargs.get("step", _NO_STEP) if len(kwargs) == 1 and 2 <= n <= 3 else _NO_STEP
    if n == 4:
        return args[3]
    return None if 2 <= n <= 3 else _NO_STEP


def lean_log(instance, args, kwargs) -> bool:
    """run.log(name, number[, description][, step]) in mlflow mode, the call of a training
    loop: one tuple onto the writer's queue (about a third of handle()'s cost), under the key
    emit() would give it (series_key). False for any other form, or anything unusual about
    the run: handle() then does it, with the same result."""
    if STATE.mode != "mlflow":
        return False
    step = _given_step(args, kwargs) if kwargs or len(args) != 2 else None
    if step is not None and type(step) is not int:
        return False
    record = instance.__dict__.get(ATTR)
    writer = STATE.writer
    if (record is None or writer is None or record.local_id not in writer.records
            or record.muted or _INSIDE.get()):
        return False
    ms = int(_time() * 1000)  # before the value is read, as in _bound_log
    point = log_point(record.state, args[0], args[1], step)
    if point is None:
        return False
    key = series_key(record, args[0]) if record.key_suffix or record.adopted else args[0]
    writer.put((record.local_id, "log", key, point[0], ms, point[1]))
    return True


def series_key(record, key: str) -> str:
    """The key a metric of this run is written under, as emit() renames it: a forked child's
    own series in its parent's run (lifecycle.py), a secondary rank's in a shared run."""
    if record.key_suffix:
        key = ranks.series_key(key, record.key_suffix)
    if record.adopted and ranks.is_secondary(STATE.cfg.rank):
        key = ranks.rank_key(key, STATE.cfg.rank)
    return key


def handle_log(wrapped, instance, args, kwargs):
    """wrapt's wrapper of run.log. A run whose call took the lean path gets run.log bound on
    the object itself (see LogBinding): wrapt's binding is a third of the call's cost."""
    if instance is not None and lean_log(instance, args, kwargs):
        LOG_BINDING.bind(instance)
        return None
    return handle("log", wrapped, instance, args, kwargs)


class LogBinding:
    """run.log as a plain function in the run object's own __dict__, in mlflow mode.

    In a training loop, wrapt's per-call binding (a bound wrapper, an args tuple and a kwargs
    dict) and lean_log's checks of the mode, the writer and the run cost more than the point
    itself. A run object whose run.log took the lean path gets its own function
    (`_bound_log`): it holds the run's queue and, per name it has seen take the lean path,
    the step counter, and queues `run.log(name, float|int)` with no other lookup. Anything it
    takes as given (the mode, the writer, the process after a fork, an adopted run) is guarded
    by one generation number that `invalidate()` bumps: a function of an older generation
    calls the class's attribute (wrapt's wrapper, or v1's own once disabled), which binds a
    fresh one. `unbind_all()` (disable()) takes them off the objects again."""

    def __init__(self):
        self._bound = weakref.WeakSet()
        self._v1_logs: dict = {}  # class -> _v1_log(class)
        self.generation = [0]  # a list: the bound functions read it from a closure cell

    def invalidate(self) -> None:
        self.generation[0] += 1

    def bind(self, instance) -> None:
        d = instance.__dict__
        current = d.get("log")
        if current is not None and (getattr(current, "_azml_v1_bridge", None)
                                    in (None, self.generation[0])):
            return  # a current binding, or the user's own attribute
        cls = type(instance)
        v1_log = self._v1_logs.get(cls, False)
        if v1_log is False:
            v1_log = self._v1_logs[cls] = _v1_log(cls)
        record, writer = d.get(ATTR), STATE.writer
        if v1_log is None or record is None or writer is None:
            return
        try:
            self._bound.add(instance)
        except TypeError:  # no weak references: keep wrapt's path
            return
        d["log"] = _bound_log(instance, cls, record, writer, self.generation, v1_log)

    def unbind_all(self) -> None:
        self.invalidate()
        for instance in list(self._bound):
            if hasattr(instance.__dict__.get("log"), "_azml_v1_bridge"):
                del instance.__dict__["log"]
        self._bound = weakref.WeakSet()


def _v1_log(cls):
    """(v1's run.log function, its signature as a method of an object), or None unless the
    class's run.log is our wrapper: a subclass's own log (calling super().log) must stay what
    the object calls."""

    attribute = next((klass.__dict__["log"] for klass in cls.__mro__ if "log" in klass.__dict__),
                     None)
    if not is_bridged(attribute):
        return None
    signature = inspect.signature(attribute.__wrapped__)
    return attribute.__wrapped__, signature.replace(parameters=list(signature.parameters.values())[1:])


def _bound_log(instance, cls, record, writer, generation, v1_log):
    """One run object's run.log (see LogBinding). Its fast branch is translate.log_point's
    rule for a name MLflow takes as it is (learned at its first call here): a float, or an
    int a double holds, with no step or an int step within int64 (by keyword, or after a
    description); other numbers (numpy's, bool) are read as translate_log reads them."""
    gen = generation[0]
    lid = record.local_id
    queue, nudge = writer.put_parts()
    append = queue.append
    known: dict = {}  # name -> (name, its implicit-step counter)
    now = _time
    low, high = INT64_MIN, INT64_MAX
    real_types = REAL_TYPES

    def log(name, value, *rest, **kwargs):
        if generation[0] == gen:
            step = None
            if kwargs:  # step= (after a description or not), as _given_step reads it
                step = kwargs.get("step", _NO_STEP) if len(kwargs) == 1 and len(rest) <= 1 else _NO_STEP
            elif rest:
                step = rest[1] if len(rest) == 2 else None if len(rest) == 1 else _NO_STEP
            if step is not None:
                if type(step) is not int or not low <= step <= high:
                    return getattr(cls, "log").__get__(instance, cls)(name, value, *rest, **kwargs)
            try:
                entry = known.get(name)
            except TypeError:  # an unhashable name: the general path says what v1 would
                entry = None
            if (entry is None and type(name) is str and valid_key(name)
                    and not _INSIDE.get() and instance.__dict__.get(ATTR) is record):
                # a name new to this run object that MLflow takes as it is, as lean_log would
                # take it: a loop making a new name every call pays this alone (known is its
                # cache; translate's cache of keys would only grow)
                entry = known[name] = (series_key(record, name),
                                       record.state.steps.setdefault(name, itertools.count()))
            if entry is not None:
                # the timestamp before the value is read: a float made from a numpy scalar
                # and then outlived by the timestamp's temporaries cost a ~100 us loop 3%
                # (benchmarks/experiments/NOTES.md, session 10), the other order nothing
                ms = int(now() * 1000)
                t = type(value)
                if t is float:
                    number = value
                elif t is int and -(1 << 53) <= value <= (1 << 53):
                    number = float(value)
                elif t in real_types:  # numpy scalars, once to_number saw their type
                    try:
                        number = float(value)
                    except Exception:
                        number = None
                else:
                    number = to_number(value)
                if number is not None:
                    append((lid, "log", entry[0], number, ms,
                            next(entry[1]) if step is None else step))
                    if len(queue) % WAKE_EVERY == 0:
                        nudge()
                    return None
        return getattr(cls, "log").__get__(instance, cls)(name, value, *rest, **kwargs)

    functools.update_wrapper(log, v1_log[0])  # v1's name and docstring
    log.__signature__ = v1_log[1]
    log._azml_v1_bridge = gen
    return log


LOG_BINDING = LogBinding()


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


# v1 function -> _Parameters, or None when it takes *args (nothing to bind: the translator
# gets the call as made).
_SIGNATURES: dict = {}
_REQUIRED = object()


class _Parameters:
    __slots__ = ("signature", "names", "defaults", "var_keyword")

    def __init__(self, signature):
        params = list(signature.parameters.values())[1:]  # without self
        self.signature = signature
        self.names = [p.name for p in params if p.kind is not p.VAR_KEYWORD]
        self.defaults = {p.name: (_REQUIRED if p.default is p.empty else p.default) for p in params}
        self.var_keyword = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)


def v1_parameters(function):
    """The parameters of a v1 method as the installed azureml-core declares them."""
    found = _SIGNATURES.get(function, _SIGNATURES)
    if found is _SIGNATURES:
        signature = inspect.signature(function)
        found = None
        if not any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
            found = _Parameters(signature)
        _SIGNATURES[function] = found
    return found


def _v1_functions(method, wrapped, instance) -> list:
    """The v1 functions a call is bound by: the called class's own, then (for mlflow mode,
    where _OfflineRun accepts what a service run does) Run's."""
    found = []
    own = getattr(wrapped, "__func__", None)
    if own is None and instance is not None:
        own = getattr(type(instance), method, None)
    run_module = sys.modules.get("azureml.core.run")
    base = getattr(getattr(run_module, "Run", None), method, None) if run_module else None
    for function in (own, base):
        function = getattr(function, "__wrapped__", function)
        if inspect.isfunction(function) and function not in found:
            found.append(function)
    return found


def _bind(method, wrapped, instance, args, kwargs):
    """Keyword arguments by v1's own parameter names, as positions: translators take v1's
    parameters in v1's order, whatever the caller named them."""
    error = None
    for function in _v1_functions(method, wrapped, instance):
        params = v1_parameters(function)
        if params is None:
            return args, kwargs
        names, defaults = params.names, params.defaults
        if params.var_keyword is None and len(args) <= len(names):  # the quick way
            values = list(args)
            for name in names[len(args):]:
                value = kwargs.get(name, defaults[name])
                if value is _REQUIRED:
                    break
                values.append(value)
            else:
                if all(k in defaults for k in kwargs) and not any(n in kwargs for n in names[:len(args)]):
                    return tuple(values), {}
        try:
            bound = params.signature.bind(instance, *args, **kwargs)
        except TypeError as exc:
            error = error or exc
            continue
        bound.apply_defaults()
        rest = bound.arguments[params.var_keyword] if params.var_keyword else {}
        return tuple(bound.arguments[name] for name in names), dict(rest)
    if error is not None:
        if STATE.mode == "mlflow":  # v1 did not run: say what v1 would have said
            raise _UserTypeError(error)
        raise error  # v1 took them: ours to fix, never the user's (warned, or BridgeError if strict)
    return args, kwargs


def _prepare(method, wrapped, instance, args, kwargs):
    """Read one-shot arguments once, before v1 runs: v1 gets an equivalent object (same
    values, or a fresh stream holding the same bytes from the same position) and the
    translator its own copy, so neither can drain the other's.
    Returns (v1's args, v1's kwargs, the translator's args, the translator's kwargs)."""
    if len(args) > 1:
        value, where = args[1], 1
    else:  # by keyword: v1's own name for its second parameter (value, path_or_stream, path)
        functions = _v1_functions(method, wrapped, instance)
        params = v1_parameters(functions[0]) if functions else None
        name = params.names[1] if params and len(params.names) > 1 else None
        if name is None or name not in kwargs:
            return args, kwargs, args, kwargs
        value, where = kwargs[name], name
    if method == "log_list":
        if isinstance(value, list) or value is None:
            return args, kwargs, args, kwargs
        for_v1 = for_us = _materialize(value)
    else:
        if not hasattr(value, "read"):
            return args, kwargs, args, kwargs
        seekable = _seekable(value)
        start = value.tell() if seekable else None
        data = value.read()
        for_us = io.BytesIO(data.encode("utf-8") if isinstance(data, str) else data)
        if seekable:  # v1 gets the user's own stream, back where it was
            value.seek(start)
            for_v1 = value
        else:  # a pipe or socket: v1 gets a stream of the same bytes
            for_v1 = io.StringIO(data) if isinstance(data, str) else io.BytesIO(data)
    if where == 1:
        return (args[0], for_v1) + args[2:], kwargs, (args[0], for_us) + args[2:], kwargs
    return args, dict(kwargs, **{where: for_v1}), args, dict(kwargs, **{where: for_us})


def _seekable(stream) -> bool:
    try:
        return bool(stream.seekable())
    except Exception:
        return False


def _materialize(value):
    try:
        return list(value)
    except TypeError:
        return value


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
    ending = False
    if record.adopted:  # a run other processes may share (ranks.py)
        ops = ranks.for_rank(ops, STATE.cfg.rank)
        if any(type(op) is End for op in ops):  # never end a run the bridge did not create
            record.ended = ending = True
            ops = ranks.end_as_status(ops, _process_label())
    if method in _STAGED:
        ops = _stage(ops, writer)
    if method in BLOCKING:
        if ending or any(type(op) is End for op in ops):
            record.ended = True
            try:
                ops = _with_outputs(record, ops)
            except BaseException:  # Ctrl-C during the upload: the run is still open, ended at exit
                record.ended = False
                writer.submit(record, method, [op for op in ops if type(op) is not End])
                raise
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
        # a top-level NewRun is start_logging's: the script's own run, never the job's
        child, fresh = STATE.registry.record_for(op.run, STATE.mode, parent=parent,
                                                 experiment=op.experiment, name=op.name,
                                                 started=parent is None)
        if op.outputs is False:  # start_logging(outputs=False): v1's "no outputs"
            child.outputs = False
        elif op.outputs:
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
            _stage_folder(op.path, source, writer, staged)
        elif os.path.isfile(source) or os.path.islink(source):
            staged.append(_copied(op.path, source, writer))
        else:
            staged.append(Note("missing_file", op.path, f"{source!r} does not exist; nothing uploaded"))
    return staged


def _stage_folder(artifact_path: str, source: str, writer: Writer, staged: list) -> None:
    """Every file below `source`: symlinks are followed, to folders as to files (what the
    user sees in the folder is uploaded); a link back into a folder already walked is noted
    as a loop, not walked again."""
    seen = {os.path.realpath(source)}
    for folder, dirs, files in os.walk(source, followlinks=True, onerror=lambda e: staged.append(
            _unreadable(f"{artifact_path}/{os.path.relpath(e.filename or source, source)}", e))):
        for name in list(dirs):
            full = os.path.join(folder, name)
            real = os.path.realpath(full)
            if real in seen:
                dirs.remove(name)
                rel = os.path.relpath(full, source).replace(os.sep, "/")
                staged.append(Note("symlink_loop", f"{artifact_path}/{rel}",
                                   f"{full} links to {real}, a folder already uploaded; "
                                   "not walked again"))
            else:
                seen.add(real)
        for name in sorted(files):
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, source).replace(os.sep, "/")
            staged.append(_copied(f"{artifact_path}/{rel}", full, writer))


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
    Which runs: see uploads_outputs. A job's run ends with the status its script asked for
    (translate.end_status)."""
    if record.state.end_status is not None:
        ops = [End(end_status(record.state, op.status), op.timestamp) if type(op) is End else op
               for op in ops]
    if not uploads_outputs(record):
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


def uploads_outputs(record) -> bool:
    """Whether the run's outputs folder is the bridge's to upload: a top-level run it created,
    or a run it adopted that nothing else uploads into. Not the launcher's run (the launcher
    uploads ./outputs once, after the last process), not an Azure ML job's own run for ./outputs
    (the job uploads ./outputs itself; a folder named by start_logging(outputs=...) is ours),
    and in a ranked job of a run adopted by all, rank 0's alone."""
    if (record.parent is not None or record.muted or record.outputs is False
            or not STATE.cfg.outputs_enabled()):
        return False
    if not record.adopted:
        return True
    if record.mlflow_run_id == STATE.cfg.launcher_run_id or ranks.is_secondary(STATE.cfg.rank):
        return False
    if record.mlflow_run_id == azure.job_run_id():
        from .outputs import DEFAULT_FOLDER

        return bool(record.outputs) and os.path.abspath(record.outputs) != os.path.abspath(DEFAULT_FOLDER)
    return True


def after_fork_in_child() -> None:
    """The call path's state in a forked child (lifecycle.py decides the rest)."""
    global _WRITER_LOCK
    _WRITER_LOCK = threading.Lock()
    if STATE.writer is not None:
        STATE.writer.forget_after_fork()  # the parent's queue is the parent's to deliver
    STATE.writer = None
    LOG_BINDING.invalidate()
    STATE.pid = os.getpid()
    STATE.forked = True
    STATE.registry.after_fork()
