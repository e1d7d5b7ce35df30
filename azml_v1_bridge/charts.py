"""Render Azure ML SDK v1 rich metrics (confusion matrix, accuracy table,
residuals, predictions) as PNG charts.

The bridge stores the v1 JSON of such a metric as an MLflow artifact
``name.json``; this module draws the matching ``name.png`` that Azure ML
studio used to draw from the same data.

Thread-safety: rendering happens on the bridge's background writer thread.
Everything here uses matplotlib's object-oriented API only -- a fresh
:class:`matplotlib.figure.Figure` attached to its own
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`.  ``matplotlib.pyplot``
is never imported, the backend is never selected (``matplotlib.use``) and
``rcParams`` are never modified (styling is passed as explicit keyword
arguments), so the user's pyplot state (current figure, figure numbers,
backend, rc settings) is left untouched.  All user-supplied strings (class
labels, titles) are drawn with ``parse_math=False`` so a ``$`` in a label can
neither break rendering nor pull in the shared mathtext parser.

matplotlib and numpy are imported lazily inside the functions: importing this
module is cheap.
"""

from __future__ import annotations

import json
import math
from numbers import Real
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = ["ChartError", "ChartsUnavailable", "SCHEMAS", "build_figure", "render_png"]

SCHEMAS = ("confusion_matrix", "accuracy_table", "residuals", "predictions")

# Above this many classes the confusion matrix cells are not annotated with
# their counts (the text would be unreadable and thousands of Text artists
# make rendering slow on the writer thread).
_MAX_ANNOTATED_CLASSES = 30
# Above this many classes the tick labels of the confusion matrix are dropped.
_MAX_TICK_LABELED_CLASSES = 60


class ChartError(ValueError):
    """The v1 metric JSON cannot be drawn; the message says what is wrong."""


class ChartsUnavailable(ImportError):
    """matplotlib or numpy is not installed (they are the `charts` extra)."""


def _require_libraries() -> None:
    # Named at the moment a chart is needed: the runtime itself does not depend on them.
    for module in ("matplotlib", "numpy"):
        try:
            __import__(module)
        except ImportError as exc:
            raise ChartsUnavailable(f"charts need {module}: pip install 'azml_v1_bridge[charts]'",
                                    name=module) from exc


# --------------------------------------------------------------------------
# validation helpers (pure Python; produce ChartError with clear messages)
# --------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    # bool is a subclass of int but a true/false "count" is a malformed input.
    return isinstance(value, Real) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return "%s (%s)" % (text, type(value).__name__)


def _as_list(value: Any, where: str) -> list:
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays passed in by a caller
    if not isinstance(value, (list, tuple)):
        raise ChartError("%s must be a list, got %s" % (where, _describe(value)))
    return list(value)


def _numbers(value: Any, where: str, *, min_len: int = 0) -> list:
    """Validate a flat list of numbers (NaN/inf allowed) and return floats."""
    items = _as_list(value, where)
    if len(items) < min_len:
        raise ChartError(
            "%s must have at least %d value%s, got %d"
            % (where, min_len, "" if min_len == 1 else "s", len(items))
        )
    out = []
    for i, item in enumerate(items):
        if not _is_number(item):
            raise ChartError(
                "%s[%d] is not a number: %s" % (where, i, _describe(item))
            )
        out.append(float(item))
    return out


def _require(data: dict, key: str, schema: str) -> Any:
    if key not in data:
        raise ChartError("%s: missing required key 'data.%s'" % (schema, key))
    return data[key]


def _labels(data: dict, schema: str) -> list:
    raw = _as_list(_require(data, "class_labels", schema), "%s: 'class_labels'" % schema)
    if not raw:
        raise ChartError("%s: 'class_labels' is empty" % schema)
    labels = []
    for i, label in enumerate(raw):
        if isinstance(label, str):
            labels.append(label)
        elif _is_number(label):
            # v1 says labels should be strings; numbers are common enough
            # (e.g. [0, 1]) to draw them rather than reject them.
            labels.append(str(label))
        else:
            raise ChartError(
                "%s: 'class_labels'[%d] must be a string, got %s"
                % (schema, i, _describe(label))
            )
    return labels


def _check_non_negative(values, where: str) -> None:
    for i, v in enumerate(values):
        if v < 0:  # NaN compares False: allowed
            raise ChartError("%s[%d] is negative: %r" % (where, i, v))


def _edges(data: dict, schema: str, n_bins: int) -> list:
    edges = _numbers(_require(data, "bin_edges", schema), "%s: 'bin_edges'" % schema)
    if len(edges) != n_bins + 1:
        raise ChartError(
            "%s: 'bin_edges' has %d values but there are %d bins "
            "(expected len(bin_edges) == len(bin_counts) + 1 == %d)"
            % (schema, len(edges), n_bins, n_bins + 1)
        )
    for i in range(len(edges) - 1):
        if edges[i + 1] <= edges[i]:  # NaN compares False: allowed
            raise ChartError(
                "%s: 'bin_edges' must be strictly increasing, but bin_edges[%d]=%r "
                "<= bin_edges[%d]=%r" % (schema, i + 1, edges[i + 1], i, edges[i])
            )
    return edges


def _format_count(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return "%.3g" % value


# --------------------------------------------------------------------------
# chart builders
# --------------------------------------------------------------------------

def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _plain_legend(ax, **kwargs):
    legend = ax.legend(**kwargs)
    for text in legend.get_texts():
        text.set_parse_math(False)
    return legend


def _confusion_matrix(data: dict, title: Optional[str]):
    import numpy as np

    schema = "confusion_matrix"
    labels = _labels(data, schema)
    n = len(labels)
    rows = _as_list(_require(data, "matrix", schema), "%s: 'matrix'" % schema)
    widths = []
    for r, row in enumerate(rows):
        widths.append(len(_as_list(row, "%s: 'matrix'[%d]" % (schema, r))))
    if len(set(widths)) > 1:
        bad = next(r for r, w in enumerate(widths) if w != widths[0])
        raise ChartError(
            "%s: 'matrix' is ragged: row 0 has %d values but row %d has %d"
            % (schema, widths[0], bad, widths[bad])
        )
    n_cols = widths[0] if widths else 0
    if len(rows) != n or n_cols != n:
        raise ChartError(
            "%s: 'matrix' is %dx%d but there are %d class labels"
            % (schema, len(rows), n_cols, n)
        )
    matrix = np.array(
        [_numbers(row, "%s: 'matrix'[%d]" % (schema, r)) for r, row in enumerate(rows)],
        dtype=float,
    ).reshape(n, n)

    side = min(12.0, max(4.5, 0.55 * n + 2.5))
    fig = _new_figure((side + 1.2, side))
    ax = fig.add_subplot()

    finite = matrix[np.isfinite(matrix)]
    vmin = float(min(0.0, finite.min())) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    if vmax <= vmin:
        vmax = vmin + 1.0
    image = ax.imshow(
        np.ma.masked_invalid(matrix), cmap="Blues", vmin=vmin, vmax=vmax,
        interpolation="nearest", aspect="equal",
    )
    fig.colorbar(image, ax=ax, label="count")

    ticks = list(range(n))
    if n <= _MAX_TICK_LABELED_CLASSES:
        ax.set_xticks(ticks, labels, rotation=45 if n > 6 else 0,
                      ha="right" if n > 6 else "center", parse_math=False)
        ax.set_yticks(ticks, labels, parse_math=False)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")

    if n <= _MAX_ANNOTATED_CLASSES:
        fontsize = 10 if n <= 10 else 7
        threshold = vmin + (vmax - vmin) / 2.0
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                dark = np.isfinite(value) and value > threshold
                ax.text(j, i, _format_count(value), ha="center", va="center",
                        fontsize=fontsize, color="white" if dark else "black",
                        parse_math=False)
    if title:
        ax.set_title(title, parse_math=False)
    return fig


def _roc_points(table):
    """ROC points of one class's [M, 4] table, sorted by FPR then TPR, with the
    end points (0, 0) and (1, 1) added (duplicates removed).  Rows whose rate
    is undefined (no positives / no negatives, or NaN counts) are dropped."""
    import numpy as np

    tp, fp, tn, fn = table.T
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = tp / (tp + fn)
        fpr = fp / (fp + tn)
    points = np.column_stack([fpr, tpr])
    points = points[np.isfinite(points).all(axis=1)]
    points = np.vstack([[0.0, 0.0], points, [1.0, 1.0]])
    return np.unique(points, axis=0)  # lexicographic sort: FPR, then TPR


def _auc(points) -> float:
    import numpy as np

    x, y = points[:, 0], points[:, 1]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _pr_points(table):
    """(recall, precision) of one class's table sorted by recall; precision is
    1 where TP + FP == 0 (nothing predicted positive)."""
    import numpy as np

    tp, fp, tn, fn = table.T
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / (tp + fn)
        precision = np.where(tp + fp == 0, 1.0, tp / (tp + fp))
    points = np.column_stack([recall, precision])
    points = points[np.isfinite(points).all(axis=1)]
    order = np.lexsort((-points[:, 1], points[:, 0]))  # recall asc, precision desc
    return points[order]


def _accuracy_table(data: dict, title: Optional[str]):
    import numpy as np

    schema = "accuracy_table"
    labels = _labels(data, schema)
    key = "probability_tables"
    tables_raw = _as_list(_require(data, key, schema), "%s: '%s'" % (schema, key))
    if len(tables_raw) != len(labels):
        raise ChartError(
            "%s: '%s' has %d class tables but there are %d class labels"
            % (schema, key, len(tables_raw), len(labels))
        )
    tables = []
    n_rows = None
    for c, table_raw in enumerate(tables_raw):
        where = "%s: '%s'[%d]" % (schema, key, c)
        rows = _as_list(table_raw, where)
        if not rows:
            raise ChartError("%s is empty (class %r)" % (where, labels[c]))
        if n_rows is None:
            n_rows = len(rows)
        elif len(rows) != n_rows:
            raise ChartError(
                "%s: '%s' is ragged: class 0 has %d threshold rows but class %d has %d"
                % (schema, key, n_rows, c, len(rows))
            )
        values = []
        for r, row in enumerate(rows):
            entry = _numbers(row, "%s[%d]" % (where, r))
            if len(entry) != 4:
                raise ChartError(
                    "%s[%d] has %d values; each entry must be [TP, FP, TN, FN]"
                    % (where, r, len(entry))
                )
            _check_non_negative(entry, "%s[%d]" % (where, r))
            values.append(entry)
        tables.append(np.array(values, dtype=float))

    # Thresholds are not needed to draw ROC / PR curves (the rates come from
    # the counts alone), so only their type is checked, not their count: the
    # v1 docstring says len(table) == len(thresholds), while Microsoft's
    # migration sample has 2 rows for 1 threshold.
    if "probability_thresholds" in data:
        _numbers(data["probability_thresholds"], "%s: 'probability_thresholds'" % schema)

    n = len(labels)
    fig = _new_figure((11.0, 5.0) if n <= 10 else (12.0, 6.0))
    ax_roc, ax_pr = fig.subplots(1, 2)
    legend_size = "small" if n <= 10 else "x-small"
    for label, table in zip(labels, tables):
        roc = _roc_points(table)
        line, = ax_roc.plot(
            roc[:, 0], roc[:, 1], marker="." if len(roc) <= 50 else None,
            label="class %s (AUC %.2f)" % (label, _auc(roc)),
        )
        pr = _pr_points(table)
        ax_pr.plot(pr[:, 0], pr[:, 1], marker="." if len(pr) <= 50 else None,
                   color=line.get_color(), label="class %s" % label)

    ax_roc.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    ax_roc.set_xlabel("False positive rate")
    ax_roc.set_ylabel("True positive rate")
    ax_roc.set_title("ROC")
    ax_pr.set_xlabel("Recall")
    ax_pr.set_ylabel("Precision")
    ax_pr.set_title("Precision-recall")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    _plain_legend(ax_roc, loc="lower right", fontsize=legend_size)
    _plain_legend(ax_pr, loc="lower left", fontsize=legend_size)
    if title:
        fig.suptitle(title, parse_math=False)
    return fig


def _residuals(data: dict, title: Optional[str]):
    import numpy as np

    schema = "residuals"
    counts = _numbers(_require(data, "bin_counts", schema),
                      "%s: 'bin_counts'" % schema, min_len=1)
    edges = np.array(_edges(data, schema, len(counts)))

    fig = _new_figure((6.4, 4.8))
    ax = fig.add_subplot()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge",
           color="tab:blue", edgecolor="white", linewidth=0.5)
    ax.set_xlabel("Residual (predicted - true)")
    ax.set_ylabel("Count")
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title, parse_math=False)
    return fig


def _predictions(data: dict, title: Optional[str]):
    import numpy as np

    schema = "predictions"
    averages = _numbers(_require(data, "bin_averages", schema),
                        "%s: 'bin_averages'" % schema, min_len=1)
    n = len(averages)
    errors = _numbers(_require(data, "bin_errors", schema), "%s: 'bin_errors'" % schema)
    counts = _numbers(_require(data, "bin_counts", schema), "%s: 'bin_counts'" % schema)
    for name, values in (("bin_errors", errors), ("bin_counts", counts)):
        if len(values) != n:
            raise ChartError(
                "%s: '%s' has %d values but 'bin_averages' has %d"
                % (schema, name, len(values), n)
            )
    _check_non_negative(errors, "%s: 'bin_errors'" % schema)
    edges = np.array(_edges(data, schema, n))
    centers = (edges[:-1] + edges[1:]) / 2.0

    fig = _new_figure((6.4, 4.8))
    ax = fig.add_subplot()
    lo, hi = float(edges[0]), float(edges[-1])
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", label="ideal (y = x)")
    ax.errorbar(centers, np.asarray(averages, dtype=float),
                yerr=np.asarray(errors, dtype=float), fmt="o-", color="tab:blue",
                capsize=3, label="mean prediction per bin")
    ax.set_xlabel("True value (bin center)")
    ax.set_ylabel("Mean predicted value")
    ax.grid(True, alpha=0.3)
    _plain_legend(ax, loc="best", fontsize="small")
    if title:
        ax.set_title(title, parse_math=False)
    return fig


_BUILDERS = {
    "confusion_matrix": _confusion_matrix,
    "accuracy_table": _accuracy_table,
    "residuals": _residuals,
    "predictions": _predictions,
}


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------

def build_figure(obj: dict, title: Optional[str] = None) -> "Figure":
    """Build a matplotlib Figure (with an Agg canvas) for a v1 rich metric.

    ``obj`` is the parsed v1 JSON ``{"schema_type": ..., "schema_version": ...,
    "data": {...}}`` (a JSON string is accepted too).  ``title`` -- typically
    the metric name -- is drawn as the chart title when given.

    Raises :class:`ChartError` for an unknown ``schema_type`` or malformed data.
    Never touches pyplot or rcParams; safe to call from any thread.
    """
    if isinstance(obj, (str, bytes, bytearray)):
        try:
            obj = json.loads(obj)
        except ValueError as exc:
            raise ChartError("metric value is not valid JSON: %s" % exc) from None
    if not isinstance(obj, dict):
        raise ChartError("metric value must be a dict, got %s" % _describe(obj))
    if "schema_type" not in obj:
        raise ChartError("missing 'schema_type'; expected one of %s" % ", ".join(SCHEMAS))
    schema = obj["schema_type"]
    builder = _BUILDERS.get(schema) if isinstance(schema, str) else None
    if builder is None:
        raise ChartError(
            "unknown schema_type %r; expected one of %s" % (schema, ", ".join(SCHEMAS))
        )
    if "data" not in obj:
        raise ChartError("%s: missing 'data'" % schema)
    data = obj["data"]
    if not isinstance(data, dict):
        raise ChartError("%s: 'data' must be a dict, got %s" % (schema, _describe(data)))
    if title is not None and not isinstance(title, str):
        title = str(title)
    _require_libraries()
    return builder(data, title)


def render_png(obj: dict, dpi: int = 100, title: Optional[str] = None) -> bytes:
    """Render a v1 rich metric to PNG bytes (see :func:`build_figure`)."""
    import io

    fig = build_figure(obj, title=title)
    buf = io.BytesIO()
    # fig.canvas is the FigureCanvasAgg attached in _new_figure; print_figure
    # renders with Agg directly (no backend switch, no pyplot).
    fig.canvas.print_figure(buf, format="png", dpi=dpi,
                            facecolor="white", edgecolor="white")
    return buf.getvalue()
