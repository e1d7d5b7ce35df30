"""Rich v1 metrics stay visible: the charts land in MLflow next to the JSON,
drawn on the writer thread, without touching the user's pyplot state."""
import io
import json

import pytest
from conftest import run_script

SAMPLES = {
    "log_confusion_matrix": {"schema_type": "confusion_matrix", "schema_version": "v1",
                             "data": {"class_labels": ["0", "1", "2"],
                                      "matrix": [[3, 0, 1], [0, 1, 0], [1, 0, 4]]}},
    "log_accuracy_table": {"schema_type": "accuracy_table", "schema_version": "v1",
                           "data": {"probability_tables": [[[5, 5, 0, 0], [4, 1, 4, 1], [0, 0, 5, 5]],
                                                           [[5, 5, 0, 0], [3, 2, 3, 2], [0, 0, 5, 5]]],
                                    "percentile_tables": [], "class_labels": ["0", "1"],
                                    "probability_thresholds": [0.0, 0.5, 1.0], "percentile_thresholds": []}},
    "log_predictions": {"schema_type": "predictions", "schema_version": "v1",
                        "data": {"bin_averages": [0.25, 0.75], "bin_errors": [0.013, 0.042],
                                 "bin_counts": [56, 34], "bin_edges": [0.0, 0.5, 1.0]}},
    "log_residuals": {"schema_type": "residuals", "schema_version": "v1",
                      "data": {"bin_edges": [50, 100, 200, 300], "bin_counts": [0.88, 20, 30]}},
}


def png_pixels(client, run_id, path, tmp_path):
    import matplotlib.pyplot as plt

    local = client.download_artifacts(run_id, path, str(tmp_path))
    return plt.imread(local)


@pytest.mark.parametrize("method", sorted(SAMPLES))
def test_chart_next_to_json_decodes_and_is_not_blank(store, bridge, method, tmp_path):
    import azml_v1_bridge
    from azureml.core import Run

    bridge.enable("mlflow")
    run = Run.get_context()
    getattr(run, method)("metric", SAMPLES[method])
    run.flush()
    rid = azml_v1_bridge.mlflow_run_id(run)
    names = {a.path for a in store.list_artifacts(rid)}
    assert {"metric.json", "metric.png"} <= names
    pixels = png_pixels(store, rid, "metric.png", tmp_path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.std() > 0.01


def test_undrawable_schema_keeps_json_and_skips_chart_with_one_warning(store, bridge, caplog, tmp_path):
    import azml_v1_bridge
    from azureml.core import Run

    bridge.enable("mlflow")
    run = Run.get_context()
    microsoft_sample = {"schema_type": "residuals", "schema_version": "v1",
                        "data": {"bin_edges": [100, 200, 300], "bin_counts": [0.88, 20, 30, 50.99]}}
    with caplog.at_level("WARNING", logger="azml_v1_bridge"):
        run.log_residuals("bad", microsoft_sample)
        run.log_residuals("bad2", {"schema_type": "sankey", "data": {}})
        run.flush()
    rid = azml_v1_bridge.mlflow_run_id(run)
    names = {a.path for a in store.list_artifacts(rid)}
    assert {"bad.json", "bad2.json"} <= names and "bad.png" not in names and "bad2.png" not in names
    local = store.download_artifacts(rid, "bad.json", str(tmp_path))
    assert json.load(open(local)) == microsoft_sample
    chart_warnings = [r for r in caplog.records if "chart_skipped" in r.getMessage()]
    assert len(chart_warnings) == 1


def test_charts_off(tmp_path):
    code = """
import json
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
run.log_confusion_matrix("cm", {"schema_type": "confusion_matrix", "schema_version": "v1",
                                "data": {"class_labels": ["a", "b"], "matrix": [[1, 0], [0, 1]]}})
run.flush()
from mlflow.tracking import MlflowClient
rid = azml_v1_bridge.mlflow_run_id(run)
print(json.dumps(sorted(a.path for a in MlflowClient().list_artifacts(rid))))
"""
    proc = run_script(code, tmp_path, env={"AZML_V1_BRIDGE_CHARTS": "0", "AZML_V1_BRIDGE_MODE": "mlflow",
                                           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["cm.json"]


def test_users_pyplot_state_is_untouched(store, bridge):
    import matplotlib
    import matplotlib.pyplot as plt
    from azureml.core import Run

    bridge.enable("mlflow")
    backend = matplotlib.get_backend()
    fig = plt.figure()
    plt.plot([1, 2])
    fignums = plt.get_fignums()  # another test in this worker may have left a figure open
    rc_before = dict(matplotlib.rcParams)
    run = Run.get_context()
    for method, obj in SAMPLES.items():
        getattr(run, method)(method, obj)
    run.flush()  # the charts were drawn on the writer thread by now
    assert matplotlib.get_backend() == backend
    assert plt.gcf() is fig and plt.get_fignums() == fignums
    assert dict(matplotlib.rcParams) == rc_before
    plt.close("all")


def test_plot_repeated_across_epochs_is_an_image_series(store, bridge, tmp_path):
    import azml_v1_bridge
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from azureml.core import Run

    bridge.enable("mlflow")
    run = Run.get_context()
    for epoch in range(3):
        plt.figure(figsize=(2, 2))
        plt.plot([0, epoch + 1])
        run.log_image("training_curve", plot=plt)
        plt.close("all")
    run.flush()
    rid = azml_v1_bridge.mlflow_run_id(run)
    files = [a.path for a in store.list_artifacts(rid, "images")]
    full = sorted(p for p in files if p.endswith(".png") and "compressed" not in p)
    assert len(full) == 3  # every epoch kept
    steps = sorted(int(p.split("+step+")[1].split("+")[0]) for p in full)
    assert steps == [0, 1, 2]  # MLflow's image series: the UI shows a step slider
    images = [png_pixels(store, rid, p, tmp_path / str(i)) for i, p in enumerate(full)]
    assert all(img.std() > 0.01 for img in images)
