"""The few helpers a migrated script needs: the state Azure ML v1 kept per run.

MLflow asks for what v1 counted implicitly (the next step of a metric, the next
row of a table, how many files of one name so far) and overwrites what v1
accumulated (every string logged under a name, every row of a table). These
functions keep exactly that state, and nothing else: each migrated call site
still shows the `mlflow.*` call that does the logging.

This module is the single copy of that code. `azml-v1-bridge migrate` copies
the helpers a file uses (the source text of the functions below, with their
module-level state) into the file itself, so migrated code depends on MLflow
only; it never imports this package. `tests/test_migrate.py` checks each helper
against the bridge's own translate + deliver behaviour.

Every helper takes an optional `run` (an MLflow run object): the run a call
goes to when it is not the active one.
"""
from __future__ import annotations

import atexit
import collections
import io
import itertools
import json
import numbers
import os
import posixpath
import shutil
import tempfile
import threading
import time
import types

import mlflow

# -- state (copied as-is; names start with _V1_ so they never meet user names)
_V1_COUNTS = collections.defaultdict(itertools.count)
_V1_DOCS = {}
_V1_UNSAVED = {}  # (run id, table path) -> when it was last uploaded; tables with rows not yet uploaded
_V1_SAVE_SECONDS = 30.0
_V1_CLIENT = []  # [tracking URI, the helpers' MlflowClient for it]


def _v1_run_id(run=None):
    """The run a call goes to: `run` when given, else the active MLflow run (started, as
    mlflow.log_metric would start it, when there is none yet)."""
    return (run or mlflow.active_run() or mlflow.start_run()).info.run_id


def _v1_client():
    """The helpers' MlflowClient for the current tracking URI: mlflow.log_metric makes a new one
    per call, which costs more than the call itself (~1 ms against ~0.3)."""
    uri = mlflow.get_tracking_uri()
    if not _V1_CLIENT or _V1_CLIENT[0] != uri:
        _V1_CLIENT[:] = [uri, mlflow.MlflowClient(uri)]
    return _V1_CLIENT[1]


# `run_id=run and run.info.run_id`: None for the active run. mlflow.log_metric given a run_id
# fetches that run from the store on every call (a round trip a point).


def _v1_step(key, run=None):
    """The next step of metric `key`: Azure ML v1 counted 0, 1, 2... per run and name."""
    return next(_V1_COUNTS[_v1_run_id(run), "step", key])


def _v1_row(name, run=None):
    """The next row index of table `name` (log_row / log_table), per run."""
    return next(_V1_COUNTS[_v1_run_id(run), "row", name])


def _v1_numbered(base, ext, run=None):
    """`base.ext`, then `base_1.ext`, `base_2.ext`...: a repeated v1 name never overwrote."""
    n = next(_V1_COUNTS[_v1_run_id(run), "repeat", base + ext])
    return f"{base}{ext}" if n == 0 else f"{base}_{n}{ext}"


def _v1_image_step(key, run=None):
    """The step of image `key` in its series: the n-th time it was logged, per run."""
    return next(_V1_COUNTS[_v1_run_id(run), "repeat", "image:" + key])


def _v1_number(value):
    """A float for what v1 charted as a number (bools, numpy scalars too), else None."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return _v1_number(value.item())
    return None


def _v1_plain(value):
    """json.dumps fallback: numpy arrays and scalars as lists and numbers, anything else as repr."""
    return value.tolist() if hasattr(value, "tolist") else repr(value)


def _v1_text(path, value, run=None):
    """Text artifact `path` with `value` as one more line: v1 kept every string logged under a name."""
    lines = _V1_DOCS.setdefault((_v1_run_id(run), path), [])
    lines.append(value if isinstance(value, str) else repr(value))
    return "\n".join(lines) + "\n"


def _v1_list(path, values, run=None):
    """JSON list artifact `path` extended by `values` (v1 log_list of values that are not numbers)."""
    items = _V1_DOCS.setdefault((_v1_run_id(run), path), [])
    items.extend(values)
    return json.dumps(items, indent=1, ensure_ascii=False, default=_v1_plain)


def _v1_columns(table):
    """{column: [cells]} from a v1 table, where a single cell may stand for a column."""
    return {str(col): [cells] if isinstance(cells, (str, bytes)) or not hasattr(cells, "__iter__")
            else list(cells) for col, cells in table.items()}


def _v1_rows(path, table, run=None):
    """Table `path` ({column: [values]}) with the rows of `table` appended, kept in memory:
    v1 kept every row of a log_row / log_table name; a column missing from some rows gets nulls."""
    columns = _v1_columns(table)
    kept = _V1_DOCS.setdefault((_v1_run_id(run), path), {})
    nrows = max((len(cells) for cells in kept.values()), default=0)
    width = max((len(cells) for cells in columns.values()), default=0)
    for col in kept:
        if col not in columns:
            kept[col].extend([None] * width)
    for col, cells in columns.items():
        column = kept.setdefault(col, [None] * nrows)
        column.extend(cells)
        column.extend([None] * (width - len(cells)))
    return kept


def _v1_table(path, table, run=None):
    """The JSON text of table `path` with the rows of `table` appended."""
    return json.dumps(_v1_rows(path, table, run), indent=1, ensure_ascii=False, default=_v1_plain)


def _v1_save_tables(every=0.0):
    """Upload each table artifact with rows not uploaded yet (and last uploaded `every` seconds
    ago or more). Runs at exit; call it to see the tables in MLflow sooner."""
    now = time.monotonic()
    for (run_id, path), last in list(_V1_UNSAVED.items()):
        if now - last >= every:
            del _V1_UNSAVED[run_id, path]
            text = json.dumps(_V1_DOCS[run_id, path], indent=1, ensure_ascii=False, default=_v1_plain)
            _v1_client().log_text(run_id, text, path)


def _v1_log_table(path, table, run=None):
    """Append the rows of `table` to JSON table artifact `path`. The artifact is uploaded at exit,
    and every _V1_SAVE_SECONDS while rows keep coming: once per row, a growing table re-uploaded
    in full made a logging loop quadratic."""
    _v1_rows(path, table, run)
    if not _V1_UNSAVED:  # registered after mlflow's own exit handler, so it runs first
        atexit.unregister(_v1_save_tables)
        atexit.register(_v1_save_tables)
    _V1_UNSAVED.setdefault((_v1_run_id(run), path), time.monotonic())
    _v1_save_tables(_V1_SAVE_SECONDS)


def _v1_table_metrics(name, table, run=None):
    """The rows of `table` as (row index, {"name.column": number}), numeric cells only:
    v1 charted each numeric column of a table as a metric over its rows."""
    columns = _v1_columns(table)
    rows = []
    for i in range(max((len(cells) for cells in columns.values()), default=0)):
        numbers_ = {f"{name}.{col}": _v1_number(cells[i]) for col, cells in columns.items()
                    if i < len(cells) and _v1_number(cells[i]) is not None}
        rows.append((_v1_row(name, run), numbers_))
    return rows


def _v1_json(value):
    """A v1 rich metric (confusion matrix, accuracy table, ...) as JSON text. v1 took the
    object or its JSON text: text is parsed first, so it is never encoded twice."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        value = json.loads(value)
    return json.dumps(value, indent=1, ensure_ascii=False, default=_v1_plain)


def _v1_figure(plot):
    """What `plot` shows now (pyplot, a Figure or an Axes) as an image, drawn as it is at the call."""
    import PIL.Image

    figure = plot.gcf() if hasattr(plot, "gcf") else getattr(plot, "figure", plot)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    image = PIL.Image.open(buffer)
    image.load()
    return image


def _v1_image_name(name, source, run=None):
    """The artifact name of log_image(name, path=source): name with the file's extension,
    numbered on repeats."""
    ext = posixpath.splitext(str(source).replace("\\", "/"))[1]
    base = name[: -len(ext)] if ext and name.lower().endswith(ext.lower()) else name
    return _v1_numbered(base, ext, run)


def _v1_upload(name, source, run=None):
    """Upload a file, a folder or a stream as artifact `name`: v1 chose the artifact's name,
    where mlflow.log_artifact keeps the file's own."""
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, posixpath.basename(name))
        if hasattr(source, "read"):
            data = source.read()
            with open(target, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        elif os.path.isdir(source):
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
        folder = posixpath.dirname(name) or None
        if os.path.isdir(target):
            mlflow.log_artifacts(target, name, run_id=run and run.info.run_id)
        else:
            mlflow.log_artifact(target, folder, run_id=run and run.info.run_id)


def _v1_log_list(key, values, listed, run=None):
    """run.log_list (or run.log of a list) of values known only at run time: one metric point
    per element when all are numbers, else JSON list artifact `listed` extended by them."""
    values = list(values)
    numbers_ = [_v1_number(v) for v in values]
    if None in numbers_:
        mlflow.log_text(_v1_list(listed, values, run), listed, run_id=run and run.info.run_id)
        return
    for number in numbers_:
        _v1_client().log_metric(_v1_run_id(run), key, number, step=_v1_step(key, run))


def _v1_log(key, value, text, listed, step=None, run=None):
    """run.log of a value whose type shows only at run time, as v1 recorded it: a number is a
    metric point (the step per run and key unless given), a list one point per element (a JSON
    list artifact `listed` when not all numbers), anything else a line of text artifact `text`."""
    number = _v1_number(value)
    if number is not None:
        step = _v1_step(key, run) if step is None else step
        _v1_client().log_metric(_v1_run_id(run), key, number, step=step)
    elif isinstance(value, (list, tuple, range, types.GeneratorType)):
        _v1_log_list(key, value, listed, run)
    else:
        mlflow.log_text(_v1_text(text, value, run), text, run_id=run and run.info.run_id)


def _v1_end(run, status="FINISHED"):
    """End `run` with `status`: MLflow's active run by mlflow.end_run (the run it was nested in
    is active again, as in v1), any other by the client."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run.info.run_id:
        mlflow.end_run(status)
    else:
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)


def _v1_background():
    """Metrics go out in the background, gathered a second at a time, as v1's client sent them:
    one store round trip a point made a logging loop several times slower than under the bridge.
    What is left is sent when the script ends, ended run or not: MLflow's own exit handler comes
    after Python has stopped the threads that send (it asks for mlflow.end_run()), so the flush is
    hooked where concurrent.futures hooks its own shutdown. Without that hook: sent as it comes."""
    hook = getattr(threading, "_register_atexit", None)
    if hook is None or not hasattr(mlflow, "flush_async_logging"):  # an MLflow before async logging
        return
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    # one sender, batches in order: ten (MLflow's default) fight over an sqlite store's lock
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_THREADPOOL_SIZE", "1")
    hook(mlflow.flush_async_logging)  # runs before the senders' thread pools shut down
    mlflow.config.enable_async_logging()


# helper -> (helpers and state it uses, modules it imports). migrate.py copies the closure.
HELPERS = {
    "_V1_COUNTS": ((), ("collections", "itertools")),
    "_V1_DOCS": ((), ()),
    "_V1_UNSAVED": ((), ()),
    "_V1_SAVE_SECONDS": ((), ()),
    "_v1_run_id": ((), ("mlflow",)),
    "_v1_step": (("_V1_COUNTS", "_v1_run_id"), ()),
    "_v1_row": (("_V1_COUNTS", "_v1_run_id"), ()),
    "_v1_numbered": (("_V1_COUNTS", "_v1_run_id"), ()),
    "_v1_image_step": (("_V1_COUNTS", "_v1_run_id"), ()),
    "_v1_number": ((), ("numbers",)),
    "_v1_plain": ((), ()),
    "_v1_text": (("_V1_DOCS", "_v1_run_id"), ()),
    "_v1_list": (("_V1_DOCS", "_v1_run_id", "_v1_plain"), ("json",)),
    "_v1_columns": ((), ()),
    "_v1_rows": (("_V1_DOCS", "_v1_run_id", "_v1_columns"), ()),
    "_v1_table": (("_v1_rows", "_v1_plain"), ("json",)),
    "_V1_CLIENT": ((), ()),
    "_v1_client": (("_V1_CLIENT",), ("mlflow",)),
    "_v1_save_tables": (("_V1_DOCS", "_V1_UNSAVED", "_v1_plain", "_v1_client"), ("json", "time")),
    "_v1_log_table": (("_V1_DOCS", "_V1_UNSAVED", "_V1_SAVE_SECONDS", "_v1_rows", "_v1_run_id",
                       "_v1_save_tables"), ("atexit", "time")),
    "_v1_end": ((), ("mlflow",)),
    "_v1_background": ((), ("os", "threading", "mlflow")),
    "_v1_log_list": (("_v1_number", "_v1_step", "_v1_list", "_v1_client", "_v1_run_id"), ("mlflow",)),
    "_v1_log": (("_v1_number", "_v1_step", "_v1_log_list", "_v1_text", "_v1_client", "_v1_run_id"),
                ("types", "mlflow")),
    "_v1_table_metrics": (("_v1_row", "_v1_number", "_v1_columns"), ()),
    "_v1_json": (("_v1_plain",), ("json",)),
    "_v1_figure": ((), ("io",)),
    "_v1_image_name": (("_v1_numbered",), ("posixpath",)),
    "_v1_upload": ((), ("os", "posixpath", "shutil", "tempfile", "mlflow")),
}
