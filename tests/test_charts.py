"""Tests for azml_v1_bridge.charts with real matplotlib (no mocks)."""

import importlib
import importlib.util
import io
import json
import pathlib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

CHARTS_PATH = pathlib.Path(__file__).resolve().parents[1] / "azml_v1_bridge" / "charts.py"


def _load_charts():
    """Import the module through the package when that works; otherwise (package
    not importable yet / not on sys.path / __init__ side effects failing) load
    charts.py directly from its file."""
    try:
        return importlib.import_module("azml_v1_bridge.charts")
    except Exception:
        name = "_azml_v1_bridge_charts_under_test"
        spec = importlib.util.spec_from_file_location(name, CHARTS_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


charts = _load_charts()
ChartError = charts.ChartError

# ---- samples from Microsoft's migration page / the v1 docstrings -----------

ACCURACY_TABLE = {"schema_type": "accuracy_table", "schema_version": "v1", "data": {"probability_tables": [[[114311, 385689, 0, 0], [0, 0, 385689, 114311]], [[67998, 432002, 0, 0], [0, 0, 432002, 67998]]], "percentile_tables": [[[114311, 385689, 0, 0], [1, 0, 385689, 114310]], [[67998, 432002, 0, 0], [1, 0, 432002, 67997]]], "class_labels": ["0", "1"], "probability_thresholds": [0.52], "percentile_thresholds": [0.09]}}  # noqa: E501
CONF_MATRIX = {"schema_type": "confusion_matrix", "schema_version": "v1", "data": {"class_labels": ["0", "1", "2", "3"], "matrix": [[3, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]]}}  # noqa: E501
PREDICTIONS = {"schema_type": "predictions", "schema_version": "v1", "data": {"bin_averages": [0.25, 0.75], "bin_errors": [0.013, 0.042], "bin_counts": [56, 34], "bin_edges": [0.0, 0.5, 1.0]}}  # noqa: E501
# v1 docstring sample (the migration page's residuals sample is malformed).
RESIDUALS = {"schema_type": "residuals", "schema_version": "1.0.0", "data": {"bin_edges": [50, 100, 200, 300, 350], "bin_counts": [0.88, 20, 30, 50.99]}}  # noqa: E501
MS_BAD_RESIDUALS = {"schema_type": "residuals", "schema_version": "v1", "data": {"bin_edges": [100, 200, 300], "bin_counts": [0.88, 20, 30, 50.99]}}  # noqa: E501

SAMPLES = {
    "confusion_matrix": CONF_MATRIX,
    "accuracy_table": ACCURACY_TABLE,
    "residuals": RESIDUALS,
    "predictions": PREDICTIONS,
}

# Small accuracy table with hand-computed AUCs.
# class "a": P=4, N=6; rows give (FPR, TPR) = (1,1), (1/3,0.75), (0,0.25), (0,0)
#   AUC = (0.25+0.75)/2*(1/3) + (0.75+1)/2*(2/3) = 1/6 + 7/12 = 0.75
# class "b": P=5, N=5; rows give (0.6,0.8), (0.2,0.6), (0,0.4), (0,0.2) -- no end
#   points in the table, so (0,0) and (1,1) must be added:
#   AUC = 0.2*(0.4+0.6)/2 + 0.4*(0.6+0.8)/2 + 0.4*(0.8+1)/2 = 0.1+0.28+0.36 = 0.74
SMALL_TABLE = {
    "schema_type": "accuracy_table",
    "schema_version": "1.0.1",
    "data": {
        "class_labels": ["a", "b"],
        "probability_thresholds": [0.0, 0.25, 0.5, 0.75],
        "probability_tables": [
            [[4, 6, 0, 0], [3, 2, 4, 1], [1, 0, 6, 3], [0, 0, 6, 4]],
            [[4, 3, 2, 1], [3, 1, 4, 2], [2, 0, 5, 3], [1, 0, 5, 4]],
        ],
    },
}


def _with_data(schema, **data):
    return {"schema_type": schema, "schema_version": "v1", "data": data}


def _class_lines(ax):
    return [line for line in ax.get_lines() if line.get_label().startswith("class ")]


def _decode_png(png):
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), dtype=float)


# ---- figure content ----------------------------------------------------------

def test_import_is_cheap_and_api_names():
    assert charts.SCHEMAS == ("confusion_matrix", "accuracy_table", "residuals", "predictions")
    assert issubclass(ChartError, ValueError)


def test_confusion_matrix_content():
    fig = charts.build_figure(CONF_MATRIX, title="my_cm")
    ax = fig.axes[0]
    matrix = CONF_MATRIX["data"]["matrix"]
    labels = CONF_MATRIX["data"]["class_labels"]

    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(ax.texts) == 16
    assert cells == {(i, j): str(matrix[i][j]) for i in range(4) for j in range(4)}
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert ax.get_xlabel() == "Predicted label" and ax.get_ylabel() == "True label"
    # the heat map: rows = true labels, cols = predicted
    np.testing.assert_array_equal(ax.images[0].get_array(), np.array(matrix))
    assert len(fig.axes) == 2  # heat map + colorbar
    assert ax.get_title() == "my_cm"


def test_confusion_matrix_nan_and_float_cells_and_dollar_labels():
    obj = _with_data("confusion_matrix", class_labels=["$a", "b$"],
                     matrix=[[float("nan"), 0.5], [2, 0.125]])
    fig = charts.build_figure(obj, title="cost in $")
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(["nan", "0.5", "2", "0.125"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["$a", "b$"]
    _decode_png(charts.render_png(obj, title="cost in $"))  # draws without mathtext errors


def test_confusion_matrix_many_classes_skips_cell_text():
    n = charts._MAX_ANNOTATED_CLASSES + 1
    labels = ["c%d" % i for i in range(n)]
    obj = _with_data("confusion_matrix", class_labels=labels, matrix=np.eye(n, dtype=int).tolist())
    ax = charts.build_figure(obj).axes[0]
    assert len(ax.texts) == 0  # too many cells to annotate legibly / cheaply
    assert [t.get_text() for t in ax.get_xticklabels()] == labels


def test_accuracy_table_roc_and_pr_content():
    fig = charts.build_figure(SMALL_TABLE, title="acc")
    ax_roc, ax_pr = fig.axes
    roc_lines = _class_lines(ax_roc)
    assert len(roc_lines) == 2
    for line in roc_lines:
        xy = line.get_xydata()
        np.testing.assert_allclose(xy[0], [0.0, 0.0])
        np.testing.assert_allclose(xy[-1], [1.0, 1.0])
        assert np.all(np.diff(xy[:, 0]) >= 0)  # sorted by FPR
    np.testing.assert_allclose(
        roc_lines[0].get_xydata(), [[0, 0], [0, 0.25], [1 / 3, 0.75], [1, 1]])
    np.testing.assert_allclose(
        roc_lines[1].get_xydata(), [[0, 0], [0, 0.2], [0, 0.4], [0.2, 0.6], [0.6, 0.8], [1, 1]])

    legend = [t.get_text() for t in ax_roc.get_legend().get_texts()]
    assert legend == ["class a (AUC 0.75)", "class b (AUC 0.74)"]

    pr_lines = _class_lines(ax_pr)
    assert [line.get_label() for line in pr_lines] == ["class a", "class b"]
    # recall on x, precision = TP/(TP+FP) on y, precision 1 where TP+FP == 0
    np.testing.assert_allclose(pr_lines[0].get_xdata(), [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(pr_lines[0].get_ydata(), [1, 1, 0.6, 0.4])
    assert ax_roc.get_xlabel() == "False positive rate" and ax_roc.get_ylabel() == "True positive rate"
    assert ax_pr.get_xlabel() == "Recall" and ax_pr.get_ylabel() == "Precision"
    assert fig.get_suptitle() == "acc"


def test_accuracy_table_microsoft_sample():
    # 2 rows per class for 1 threshold: the table length is not tied to the
    # threshold count; the end rows are the all-positive / all-negative points.
    fig = charts.build_figure(ACCURACY_TABLE)
    ax_roc, ax_pr = fig.axes
    for line in _class_lines(ax_roc):
        np.testing.assert_allclose(line.get_xydata(), [[0, 0], [1, 1]])
    legend = [t.get_text() for t in ax_roc.get_legend().get_texts()]
    assert legend == ["class 0 (AUC 0.50)", "class 1 (AUC 0.50)"]
    p0 = 114311 / (114311 + 385689)
    np.testing.assert_allclose(_class_lines(ax_pr)[0].get_xydata(), [[0, 1], [1, p0]])


def test_accuracy_table_rows_without_negatives_or_nan_are_skipped():
    # class "x" has no positives at all (TP+FN == 0): TPR undefined everywhere,
    # the ROC reduces to the end points and the AUC to 0.5.
    obj = _with_data("accuracy_table", class_labels=["x", "y"], probability_tables=[
        [[0, 10, 0, 0], [0, 0, 10, 0]],
        [[5, 5, 0, 0], [float("nan"), 0, 5, 0]],
    ])
    fig = charts.build_figure(obj)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["class x (AUC 0.50)", "class y (AUC 0.50)"]
    for line in _class_lines(fig.axes[0]):
        np.testing.assert_allclose(line.get_xydata(), [[0, 0], [1, 1]])


def test_residuals_histogram_content():
    fig = charts.build_figure(RESIDUALS)
    ax = fig.axes[0]
    bars = ax.patches
    edges = RESIDUALS["data"]["bin_edges"]
    counts = RESIDUALS["data"]["bin_counts"]
    assert len(bars) == 4
    assert [b.get_x() for b in bars] == pytest.approx(edges[:-1])
    assert [b.get_x() + b.get_width() for b in bars] == pytest.approx(edges[1:])
    assert [b.get_height() for b in bars] == pytest.approx(counts)


def test_predictions_content():
    fig = charts.build_figure(PREDICTIONS, title="preds")
    ax = fig.axes[0]
    (container,) = ax.containers
    data_line = container.lines[0]
    np.testing.assert_allclose(data_line.get_xdata(), [0.25, 0.75])  # bin centers
    np.testing.assert_allclose(data_line.get_ydata(), [0.25, 0.75])  # averages
    segments = container.lines[2][0].get_segments()
    half = [(seg[1][1] - seg[0][1]) / 2 for seg in segments]
    np.testing.assert_allclose(half, [0.013, 0.042])

    ideal = [line for line in ax.get_lines() if line.get_label().startswith("ideal")]
    assert len(ideal) == 1
    assert ideal[0].get_linestyle() == "--"
    np.testing.assert_allclose(ideal[0].get_xdata(), [0.0, 1.0])
    np.testing.assert_allclose(ideal[0].get_ydata(), [0.0, 1.0])
    assert ax.get_title() == "preds"


def test_predictions_nan_is_drawn():
    obj = _with_data("predictions", bin_averages=[1.0, float("nan")], bin_errors=[0.1, float("nan")],
                     bin_counts=[3, 0], bin_edges=[0, 2, 4])
    arr = _decode_png(charts.render_png(obj))
    assert arr.var() > 0


def test_json_string_input():
    fig = charts.build_figure(json.dumps(CONF_MATRIX))
    assert len(fig.axes[0].texts) == 16


# ---- PNG output ----------------------------------------------------------------

@pytest.mark.parametrize("schema", charts.SCHEMAS)
def test_render_png_decodes_and_is_not_blank(schema):
    png = charts.render_png(SAMPLES[schema], title=schema)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    arr = _decode_png(png)
    assert arr.ndim == 3 and arr.shape[0] > 100 and arr.shape[1] > 100
    assert arr.var() > 0


def test_render_png_dpi():
    fig = charts.build_figure(RESIDUALS)
    w, h = fig.get_size_inches()
    arr = _decode_png(charts.render_png(RESIDUALS, dpi=50))
    assert arr.shape[:2] == (round(h * 50), round(w * 50))


# ---- malformed input -------------------------------------------------------------

MALFORMED = [
    ([1, 2], "must be a dict"),
    ("{not json", "not valid JSON"),
    ({"data": {}}, "missing 'schema_type'"),
    ({"schema_type": "roc", "data": {}}, "unknown schema_type 'roc'"),
    ({"schema_type": "residuals"}, "residuals: missing 'data'"),
    ({"schema_type": "residuals", "data": [1]}, "'data' must be a dict"),
    (MS_BAD_RESIDUALS, "residuals: 'bin_edges' has 3 values but there are 4 bins"),
    (_with_data("residuals", bin_edges=[0, 2, 1], bin_counts=[1, 2]), "strictly increasing"),
    (_with_data("residuals", bin_edges=[0, 1, 2], bin_counts=[1, True]), "'bin_counts'[1] is not a number"),
    (_with_data("residuals", bin_edges=[0, 1, 2], bin_counts=[1, None]), "'bin_counts'[1] is not a number"),
    (_with_data("residuals", bin_edges=[0], bin_counts=[]), "'bin_counts' must have at least 1 value"),
    (_with_data("residuals", bin_counts=[1]), "missing required key 'data.bin_edges'"),
    (_with_data("confusion_matrix", class_labels=["0", "1", "2", "3"], matrix=[[0] * 4] * 3),
     "confusion_matrix: 'matrix' is 3x4 but there are 4 class labels"),
    (_with_data("confusion_matrix", class_labels=["0", "1"], matrix=[[1, 2], [3]]),
     "'matrix' is ragged: row 0 has 2 values but row 1 has 1"),
    (_with_data("confusion_matrix", class_labels=["0", "1"], matrix=[[1, 2], [3, "x"]]),
     "'matrix'[1][1] is not a number"),
    (_with_data("confusion_matrix", class_labels=["0", "1"], matrix="[[1]]"), "'matrix' must be a list"),
    (_with_data("confusion_matrix", matrix=[[1]]), "missing required key 'data.class_labels'"),
    (_with_data("confusion_matrix", class_labels=[], matrix=[]), "'class_labels' is empty"),
    (_with_data("confusion_matrix", class_labels=[["a"]], matrix=[[1]]), "'class_labels'[0] must be a string"),
    (_with_data("accuracy_table", class_labels=["0", "1"], probability_tables=[[[1, 0, 1, 0]]]),
     "has 1 class tables but there are 2 class labels"),
    (_with_data("accuracy_table", class_labels=["0"], probability_tables=[[[1, 0, 1]]]),
     "'probability_tables'[0][0] has 3 values; each entry must be [TP, FP, TN, FN]"),
    (_with_data("accuracy_table", class_labels=["0"], probability_tables=[[[1, -1, 1, 0]]]),
     "'probability_tables'[0][0][1] is negative"),
    (_with_data("accuracy_table", class_labels=["0", "1"],
                probability_tables=[[[1, 0, 1, 0], [0, 0, 1, 1]], [[1, 0, 1, 0]]]),
     "class 0 has 2 threshold rows but class 1 has 1"),
    (_with_data("accuracy_table", class_labels=["0"], probability_tables=[[]]), "'probability_tables'[0] is empty"),
    (_with_data("accuracy_table", class_labels=["0"]), "missing required key 'data.probability_tables'"),
    (_with_data("accuracy_table", class_labels=["0"], probability_tables=[[[1, 0, 1, 0]]],
                probability_thresholds=["high"]), "'probability_thresholds'[0] is not a number"),
    (_with_data("predictions", bin_averages=[1, 2], bin_errors=[0.1], bin_counts=[1, 1], bin_edges=[0, 1, 2]),
     "'bin_errors' has 1 values but 'bin_averages' has 2"),
    (_with_data("predictions", bin_averages=[1, 2], bin_errors=[0.1, 0.1], bin_counts=[1, 1]),
     "missing required key 'data.bin_edges'"),
    (_with_data("predictions", bin_averages=[1, 2], bin_errors=[0.1, -0.1], bin_counts=[1, 1], bin_edges=[0, 1, 2]),
     "'bin_errors'[1] is negative"),
    (_with_data("predictions", bin_averages=[1, 2], bin_errors=[0.1, 0.1], bin_counts=[1, 1], bin_edges=[0, 1]),
     "'bin_edges' has 2 values but there are 2 bins"),
]


@pytest.mark.parametrize("obj, message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_input_raises_chart_error(obj, message):
    with pytest.raises(ChartError) as info:
        charts.build_figure(obj)
    assert message in str(info.value)
    with pytest.raises(ChartError):
        charts.render_png(obj)


# ---- thread safety / global state ----------------------------------------------

def _render_all():
    return {schema: charts.render_png(obj, title=schema) for schema, obj in SAMPLES.items()}


def test_pyplot_state_untouched_when_rendering_on_worker_thread():
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    user_fig = plt.figure()
    try:
        fignums = plt.get_fignums()
        current = plt.gcf()
        rc_before = dict(matplotlib.rcParams)

        result = {}

        def work():
            try:
                result["pngs"] = _render_all()
            except BaseException as exc:  # surfaced below
                result["error"] = exc

        worker = threading.Thread(target=work)
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive()
        assert "error" not in result, result.get("error")
        assert set(result["pngs"]) == set(charts.SCHEMAS)

        assert matplotlib.get_backend() == backend
        assert plt.get_fignums() == fignums
        assert plt.gcf() is current is user_fig
        assert dict(matplotlib.rcParams) == rc_before
    finally:
        plt.close(user_fig)


def test_module_never_imports_pyplot_and_imports_matplotlib_lazily():
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('charts_probe', %r)\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module import'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported at module import'\n"
        "import json\n"
        "for obj in json.loads(sys.argv[1]):\n"
        "    assert m.render_png(obj).startswith(b'\\x89PNG')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "print('ok')\n"
    ) % str(CHARTS_PATH)
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(SAMPLES.values()))],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_render_png_from_four_threads_at_once():
    expected = _render_all()  # reference rendered on this thread
    barrier = threading.Barrier(4)

    def work(_):
        barrier.wait(timeout=30)
        return [_render_all() for _ in range(2)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    for per_thread in results:
        for pngs in per_thread:
            # identical bytes: no cross-thread corruption of shared state
            assert pngs == expected
