"""`azml-v1-bridge scan`: finds every v1 site of the legacy scripts, maps it through translate."""
import collections
import json
import os
import shutil

import pytest

from azml_v1_bridge import translate
from azml_v1_bridge_tools import scan

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY = os.path.join(HERE, "legacy_scripts")

# Every v1 site of each legacy script, by kind: imports, runs (Run.get_context / start_logging),
# calls on runs, `with run:` blocks, property sets, read-backs, unmapped run methods, and Azure ML
# calls outside tracking.
EXPECTED = {
    "train_metrics.py": {"import": 1, "run": 1, "call": 15},
    "artifacts_and_charts.py": {"import": 1, "run": 1, "property": 2, "call": 21},
    "child_runs.py": {"import": 2, "run": 1, "call": 17, "with": 1},
    "trainer_class.py": {"import": 1, "run": 1, "call": 8, "with": 1},
    "notebook.ipynb": {"import": 1, "run": 1, "call": 5},
    "workspace_reads.py": {"import": 1, "run": 1, "call": 3, "outside": 4, "read": 3, "unmapped": 2},
}


def legacy(name):
    return os.path.join(LEGACY, name)


def scan_of(name):
    return scan.scan_file(legacy(name))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_site_is_found(name):
    found = collections.Counter(site.kind for site in scan_of(name).sites)
    assert dict(found) == EXPECTED[name]


def test_every_call_site_of_the_metrics_script_with_its_line():
    sites = [(s.line, s.method) for s in scan_of("train_metrics.py").sites if s.kind == "call"]
    assert sites == [(8, "log"), (11, "log"), (12, "log"), (13, "log_row"), (15, "log"), (16, "log"),
                     (17, "log"), (18, "log"), (19, "log"), (21, "log_list"), (22, "log_list"),
                     (23, "log_table"), (26, "log"), (27, "log"), (28, "complete")]


def test_every_row_of_the_mapping_appears_in_a_legacy_script():
    """Each v1 method of translate's table, and each value kind of log(), is used by a script."""
    sites = [s for name in EXPECTED for s in scan_of(name).sites if s.mapped]
    methods = {s.method for s in sites if s.kind in ("call", "property", "run")}
    methods |= {"__enter__", "__exit__"} if any(s.kind == "with" for s in sites) else set()
    assert set(translate.TRANSLATORS) <= methods
    logs = {s.types.get("value") for s in sites if s.method == "log"}
    assert {"number", "bool", "str", "list"} <= logs
    assert any(s.method == "log" and "step" in s.args for s in sites)
    images = {"plot" if "plot" in s.args else "path" for s in sites if s.method == "log_image"}
    assert images == {"plot", "path"}
    lists = [s for s in sites if s.method == "log_list"]
    assert {"metric" in s.maps_to for s in lists} == {True, False}  # numbers, and not numbers
    assert any(s.method == "tag" and "value" not in s.args for s in sites)
    assert any(s.method == "create_children" and "count" in s.args for s in sites)
    assert any(s.method == "create_children" and "tag_key" in s.args for s in sites)


def test_maps_to_is_what_translate_makes_of_the_call():
    sites = {(s.line, s.method): s for s in scan_of("train_metrics.py").sites}
    assert sites[(11, "log")].maps_to == "metric loss (step = per-run counter 0,1,2…)"
    assert sites[(12, "log")].maps_to == "metric val_loss (step=epoch * 10)"
    assert sites[(16, "log")].maps_to == "text artifact status.txt (every value, one per line)"
    assert sites[(13, "log_row")].maps_to == ("metric epochs.epoch, epochs.loss (step = row index); "
                                              "JSON table artifact epochs.json")
    assert sites[(22, "log_list")].maps_to == "JSON list artifact labels.json"
    assert sites[(28, "complete")].maps_to == "run status FINISHED"
    renamed = sites[(18, "log")]
    key = translate.mlflow_key("loss (final)")
    assert renamed.maps_to.startswith(f"metric {key} ")
    assert f"recorded as {key!r}" in renamed.flag
    charts = {s.method: s.maps_to for s in scan_of("artifacts_and_charts.py").sites}
    assert charts["log_residuals"] == "artifact residuals.json; chart residuals.png"
    assert charts["display_name"] == "tag mlflow.runName"


def test_flags():
    metrics = {s.line: s for s in scan_of("train_metrics.py").sites}
    assert "log() of a list" in metrics[19].flag
    assert "may be offline" in metrics[12].flag
    assert not metrics[11].flag
    reads = {s.line: s for s in scan_of("workspace_reads.py").sites}
    assert "Workspace.from_config" in reads[4].flag and not reads[4].mapped
    assert "read-back" in reads[12].flag and not reads[12].mapped
    assert reads[13].method == "id" and not reads[13].mapped
    assert reads[15].method == "register_model" and not reads[15].mapped
    assert reads[16].method == "parent" and not reads[16].mapped
    assert "arguments passed with *" in reads[18].flag
    assert reads[10].mapped and reads[10].maps_to == "metric rows (step=1)"
    assert not reads[10].flag  # start_logging makes an online run: step= is fine


def test_runs_reached_through_attributes_parameters_and_loops():
    sites = scan_of("trainer_class.py").sites
    receivers = {scan.dotted(s.receiver) for s in sites if s.kind == "call"}
    # self.run, the `run` parameter of log_summary(self.run, ...), and the children of a loop
    assert {"self.run", "run", "worker"} <= receivers
    assert any(s.kind == "with" and "trainer.run" in s.code for s in sites)
    children = scan_of("child_runs.py").sites
    routed = {s.line: s.route for s in children if s.kind == "call"}
    assert routed[9] is None            # the child made with child_run() is MLflow's active run
    assert routed[24] == "shards[0]"    # children of create_children are named explicitly


def test_notebook_cells_and_magics():
    fs = scan_of("notebook.ipynb")
    assert [(s.unit.cell, s.line, s.method) for s in fs.sites] == [
        (1, 3, "import"), (2, 1, "get_context"), (2, 2, "tag"), (3, 2, "log"), (3, 3, "log"),
        (4, 3, "log_image"), (5, 2, "complete")]
    assert fs.sites[0].where.endswith("notebook.ipynb[cell 1]:3")


def test_aliases_and_module_imports(tmp_path):
    path = tmp_path / "aliases.py"
    path.write_text(
        "import azureml.core\n"
        "from azureml.core.run import Run as AzRun\n"
        "import azureml.core as aml\n"
        "a = azureml.core.Run.get_context()\n"
        "b = AzRun.get_context()\n"
        "c = aml.Run.get_context()\n"
        "a.log('x', 1)\n"
        "b.log('y', 2)\n"
        "c.log('z', 3)\n"
        "AzRun.get_context().log('chained', 4)\n"
        "logger = object()\n"
        "logger.log('not v1', 5)\n"
    )
    fs = scan.scan_file(str(path))
    calls = [(s.line, s.method) for s in fs.sites if s.kind == "call"]
    assert calls == [(7, "log"), (8, "log"), (9, "log"), (10, "log")]
    assert sum(1 for s in fs.sites if s.kind == "run") == 4


def test_files_without_v1_are_not_parsed(tmp_path):
    (tmp_path / "plain.py").write_text("import os\nrun = object()\nrun.log('x', 1)\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    assert [fs.sites for fs in scan.scan_paths([str(tmp_path)])] == [[], []]


def test_a_file_that_does_not_parse_is_reported(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("from azureml.core import Run\ndef (:\n")
    fs = scan.scan_file(str(path))
    assert [s.kind for s in fs.sites] == ["error"] and not fs.sites[0].mapped


def test_table_output_and_strict(capsys):
    assert scan.main([legacy("train_metrics.py")]) == 0
    out = capsys.readouterr().out
    assert "run.log(\"loss\", loss)" in out and "-> metric loss" in out
    # the numbers mean what they say: the import line is not a mapped call
    assert "16 tracking sites, 16 mapped (3 flagged), 0 unmapped, 0 kept on v1; besides: 1 import lines" in out
    assert scan.main(["--strict", legacy("train_metrics.py")]) == 0
    capsys.readouterr()
    assert scan.main(["--strict", legacy("workspace_reads.py")]) == 1
    assert "5 unmapped" in capsys.readouterr().out


def test_json_output_of_a_folder(capsys, tmp_path):
    folder = tmp_path / "repo"
    shutil.copytree(LEGACY, folder)
    assert scan.main(["--format", "json", str(folder)]) == 0
    data = json.loads(capsys.readouterr().out)
    counts = {os.path.basename(f["file"]): len(f["sites"]) for f in data["files"]}
    assert counts == {name: sum(kinds.values()) for name, kinds in EXPECTED.items()}
    assert data["summary"]["unmapped"] == 5
    assert data["summary"]["imports"] == 7 and data["summary"]["control_plane"] == 4
    site = data["files"][0]["sites"][0]
    assert set(site) == {"file", "cell", "writefile", "line", "column", "kind", "method", "code", "maps_to",
                         "flag", "mapped"}


def test_markdown_output(capsys):
    assert scan.main(["--format", "markdown", legacy("workspace_reads.py")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Azure ML SDK v1 → MLflow migration")
    assert "| 12 | `run.get_metrics()` |" in out
    assert "- [ ] decide on 9 unmapped site(s)" in out


def test_missing_path(capsys):
    assert scan.main(["/nonexistent/path.py"]) == 2


def test_a_run_bound_after_the_function_that_uses_it(tmp_path):
    path = tmp_path / "main.py"
    path.write_text(
        "from azureml.core import Run\n"
        "\n"
        "def train():\n"
        "    run.log('loss', 0.5)\n"
        "\n"
        "if __name__ == '__main__':\n"
        "    run = Run.get_context()\n"
        "    train()\n"
    )
    sites = scan.scan_file(str(path)).sites
    assert [(s.line, s.method, s.route) for s in sites if s.kind == "call"] == [(4, "log", None)]


def test_tracking_only_lists_tracking_only(capsys):
    assert scan.main(["--tracking-only", "--format", "json", legacy("workspace_reads.py")]) == 0
    data = json.loads(capsys.readouterr().out)
    kinds = {site["kind"] for f in data["files"] for site in f["sites"]}
    assert "outside" not in kinds and {"call", "read"} <= kinds
    assert data["summary"]["control_plane"] == 0 and data["summary"]["unmapped"] == 5
