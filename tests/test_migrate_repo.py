"""issue 25: `migrate` over a repository never hands back code that breaks.

tests/migrate_repo/ is a sample tree shaped like Azure/MachineLearningNotebooks: argparse values
logged as they come, helpers taking a run, a trainer class holding one, child runs in lists, a
run that feeds `run.experiment.workspace`, a notebook whose training script is a `%%writefile`
cell, a job submitted from a helper, and a Latin-1 file beside them. Every script is proven with
`migrate --check` (the original under the bridge, the migrated one with plain MLflow, each into
a fresh sqlite store), all in one module fixture, two at a time.
"""
import concurrent.futures
import contextlib
import io
import json
import os
import shutil
import traceback

import pytest

from azml_v1_bridge_tools import migrate, scan

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "migrate_repo")
# what --check says of each script (the notebook: the script its %%writefile cell writes)
EXPECTED = {
    "train_svm.py": 0, "helpers_take_run.py": 0, "trainer_holds_run.py": 0, "child_list.py": 0,
    "uses_workspace.py": 0, "remote_training.ipynb [train.py]": 0,
    "submit_helper.py": migrate.EXIT_CANNOT_RUN,  # Experiment.submit() needs Azure, before and after
}


def _label(outcome) -> str:
    return os.path.relpath(outcome.script, REPO)


@pytest.fixture(scope="module")
def repo_checks(tmp_path_factory):
    """migrate --check of every file of the sample tree, plus two rewrites spoiled on purpose
    (a value changed; a line that raises) to see --check tell them apart. stderr is kept: MLflow's
    progress bars must not show."""
    results = migrate.migrate_paths([REPO])
    folder = tmp_path_factory.mktemp("spoiled")
    script = folder / "spoiled.py"
    script.write_text("from azureml.core import Run\nrun = Run.get_context()\nrun.log('loss', 0.5)\n"
                      "run.upload_file('notes.txt', 'notes.txt')\n")
    (folder / "notes.txt").write_text("n\n")
    differs = migrate.migrate_file(str(script))
    differs.new = differs.new.replace("0.5", "0.25")
    breaks = migrate.migrate_file(str(script))
    breaks.new += "raise RuntimeError('migrated code broke')\n"
    jobs = [(r, None) for r in results if r.changed and not r.error] + [(differs, "differs"), (breaks, "breaks")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [(tag, pool.submit(migrate.check_all, r, timeout=300)) for r, tag in jobs]
        outcomes = {}
        for tag, future in futures:
            for outcome in future.result():
                outcomes[tag or _label(outcome)] = outcome
    return results, outcomes, err.getvalue()


@pytest.mark.slow
def test_no_migrated_file_fails_where_its_original_ran(repo_checks):
    results, outcomes, _ = repo_checks
    checked = {k: v for k, v in outcomes.items() if k not in ("differs", "breaks")}
    assert {k: v.exit_code for k, v in checked.items()} == EXPECTED, \
        "\n".join(o.report() for o in checked.values())
    for outcome in checked.values():
        if outcome.cannot_run:
            (line,) = outcome.failures
            assert "the original cannot run here" in line and "Experiment.submit() needs the Azure ML service" in line
        else:
            assert outcome.equal and outcome.counts["runs"] >= 1, outcome.report()
    assert outcomes["child_list.py"].counts["runs"] == 5  # the parent and its four children, side by side
    assert outcomes["helpers_take_run.py"].counts["runs"] == 2


@pytest.mark.slow
def test_check_tells_different_from_cannot_run_and_keeps_bars_out(repo_checks):
    _, outcomes, err = repo_checks
    differs, breaks = outcomes["differs"], outcomes["breaks"]
    assert differs.exit_code == migrate.EXIT_DIFFERENT == 1 and not differs.failures
    assert any("metric 'loss': [(0, 0.5)] vs [(0, 0.25)]" in d for d in differs.diffs), differs.report()
    assert breaks.exit_code == migrate.EXIT_DIFFERENT
    (line,) = breaks.failures
    assert "the migrated script failed where the original ran" in line
    assert line.endswith("RuntimeError: migrated code broke")
    assert "Downloading artifacts" not in err and "%|" not in err


# ---------------------------------------------------------------- what the rewrite says (no interpreters)

def _new(name, **kw):
    return migrate.migrate_file(os.path.join(REPO, name), **kw)


def test_values_known_only_at_run_time_are_decided_at_run_time():
    new = _new("train_svm.py").new
    assert '_v1_log("Kernel type", args.kernel, "Kernel type.txt", "Kernel type.json")' in new
    assert '_v1_log("Settings", [args.kernel, args.penalty], "Settings.txt", "Settings.json")' in new
    assert 'mlflow.log_metric("Accuracy", float(accuracy))' in new  # provably a number: a metric
    assert 'log_metric("Kernel type"' not in new


def test_runs_passed_kept_and_listed_go_where_they_went():
    helpers = _new("helpers_take_run.py").new
    assert '_v1_log(_name, value, _name + ".txt", _name + ".json", run=run)' in helpers
    assert 'mlflow.MlflowClient().set_tag(child.info.run_id, "note", note)' in helpers
    assert '_v1_end(child, "FINISHED")' in helpers
    children = _new("child_list.py").new
    assert "nested=True" not in children  # a list of children is not a chain of nested runs
    assert ('children = [mlflow.MlflowClient().create_run(run.info.experiment_id, run_name=f"fold-{i}", '
            'tags={"mlflow.parentRunId": run.info.run_id}) for i in range(3)]') in children
    assert children.count('_v1_end(c, "FINISHED")') == 2
    assert "extra.append(mlflow.MlflowClient().create_run(" in children
    assert 'mlflow.log_metric("rows", 10, step=_v1_step("rows", c), run_id=c.info.run_id)' in children


def test_a_run_that_feeds_azure_ml_stays_a_v1_run(tmp_path):
    r = _new("uses_workspace.py")
    assert "\nmlflow.start_run()\nrun = Run.get_context()\nws = run.experiment.workspace\n" in r.new
    assert "import azml_v1_bridge" in r.new and 'mlflow.log_metric("rows", 100)' in r.new
    (kept,) = [c for c in r.changes if c.kind == "kept"]
    assert "run.experiment at line 5" in kept.message
    script = tmp_path / "explain.py"
    script.write_text("from azureml.core import Run\nfrom azureml.interpret import ExplanationClient\n"
                      "run = Run.get_context()\nclient = ExplanationClient.from_run(run)\n"
                      "run.log('acc', 0.9)\ndatasets = run.input_datasets\n")
    r = migrate.migrate_file(str(script))
    assert "mlflow.start_run()\nrun = Run.get_context()\nclient = ExplanationClient.from_run(run)\n" in r.new
    assert "datasets = run.input_datasets\n" in r.new and "read-back" not in r.new
    assert "ExplanationClient.from_run(run)" in [c for c in r.changes if c.kind == "kept"][0].message


def test_runs_of_submit_stay_on_v1_and_are_counted(capsys):
    path = os.path.join(REPO, "submit_helper.py")
    r = migrate.migrate_file(path)
    kept = [c for c in r.changes if c.kind == "kept"]
    assert [c.site.method for c in kept] == ["log", "tag"] and "experiment.submit()" in kept[0].message
    assert '    run.log("submitted", 1)\n' in r.new and "import azml_v1_bridge" in r.new
    assert "wait_for_completion" not in "".join(c.message for c in r.changes)  # control plane: left alone
    assert migrate.main([path]) == 0
    err = capsys.readouterr().err
    assert "0 left as is, 2 kept on Azure ML v1 (served by the bridge)" in err
    assert migrate.main([path, "--strict"]) == 1  # something would be left unconverted
    sites = scan.scan_file(path).sites
    assert [(s.line, s.method, s.maps_to) for s in sites if s.kind == "call"] == [
        (7, "log", "left on v1"), (8, "tag", "left on v1")]


def test_writefile_cells_are_migrated_as_the_scripts_they_write(tmp_path):
    path = tmp_path / "remote_training.ipynb"
    shutil.copy(os.path.join(REPO, "remote_training.ipynb"), path)
    sites = scan.scan_file(str(path)).sites
    assert {s.where.split(":", 1)[0] for s in sites if s.kind == "call"} == {
        f"{path}[cell 2"}  # ": $script_folder/train.py]" follows
    assert any(s.where.endswith("[cell 2: $script_folder/train.py]:11") for s in sites)
    assert migrate.main(["--write", str(path)]) == 0
    cells = json.loads(path.read_text())["cells"]
    script = "".join(cells[2]["source"])
    assert script.startswith("%%writefile $script_folder/train.py\nimport argparse\n")
    assert "import mlflow" in script and "def _v1_log(" in script and "azureml" not in script
    compile(script.split("\n", 1)[1], "train.py", "exec")
    # the notebook's own cells: control plane, left alone; the helpers live in the script only
    assert "".join(cells[3]["source"]).startswith("ws = Workspace.from_config()")
    assert "_v1_" not in "".join(cells[1]["source"])
    assert not migrate.migrate_file(str(path)).changed  # twice: nothing more


def test_an_undecodable_file_is_one_line_and_the_rest_goes_on(tmp_path, capsys):
    folder = tmp_path / "repo"
    shutil.copytree(REPO, folder)
    assert migrate.main([str(folder)]) == migrate.EXIT_INPUT
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    (line,) = [line for line in captured.err.splitlines() if "latin1_script.py" in line]
    assert "skipped: could not read: not UTF-8 (byte 0xe9" in line
    assert "+++ b/" + str(folder / "train_svm.py") in captured.out  # the others are migrated
    assert "1 file(s) could not be read or parsed" in captured.err
    (folder / "broken.py").write_text("from azureml.core import Run\nrun = Run.get_context(\n")
    assert migrate.main(["--write", str(folder)]) == migrate.EXIT_INPUT
    err = capsys.readouterr().err
    assert "broken.py: skipped: could not parse" in err and "2 file(s) could not be read or parsed" in err
    assert "mlflow" in (folder / "child_list.py").read_text()  # written all the same
    assert scan.main([str(folder)]) == 0
    assert "2 file(s) could not be read or parsed" in capsys.readouterr().out
    assert scan.main(["--strict", str(folder)]) == 1


def test_exit_codes_of_several_checks():
    ok, differ, inp, cannot = (migrate.EXIT_OK, migrate.EXIT_DIFFERENT, migrate.EXIT_INPUT,
                               migrate.EXIT_CANNOT_RUN)
    assert (ok, differ, inp, cannot) == (0, 1, 2, 3)
    assert migrate.combined_exit([]) == ok and migrate.combined_exit([ok, ok]) == ok
    assert migrate.combined_exit([ok, cannot]) == cannot
    assert migrate.combined_exit([cannot, inp, ok]) == inp
    assert migrate.combined_exit([cannot, differ, inp]) == differ


def test_tracking_first_no_todo_flood(tmp_path):
    script = tmp_path / "control.py"
    script.write_text(
        "from azureml.core import Dataset, Run, Workspace\n"
        "from azureml.core.compute import ComputeTarget\n"
        "from azureml.core.compute_target import ComputeTargetException\n"
        "ws = Workspace.from_config()\n"
        "try:\n    target = ComputeTarget(workspace=ws, name='cpu')\n"
        "except ComputeTargetException:\n    target = None\n"
        "df = Dataset.get_by_name(ws, 'iris').to_pandas_dataframe()\n"
        "frame = Dataset.get_by_name(ws, 'iris').to_pandas_dataframe()\n"
        "print(frame.head(10), frame.describe())\n"
        "run = Run.get_context()\nrun.log('rows', len(frame))\n")
    r = migrate.migrate_file(str(script))
    assert scan.TODO_PREFIX not in r.new and [c.kind for c in r.changes] == ["rewritten", "rewritten"]
    everything = migrate.migrate_file(str(script), tracking_only=False)
    flagged = {c.site.code for c in everything.changes if c.kind == "todo"}
    assert "Workspace.from_config()" in flagged
    assert not any("head" in code or "describe" in code or code == "ComputeTargetException" for code in flagged)
    sites = scan.scan_file(str(script)).sites
    assert not any(s.kind == "outside" and s.method in ("head", "describe", "ComputeTargetException")
                   for s in sites)


def test_the_one_line_cause_is_whole():
    from azureml.exceptions import UserErrorException

    try:
        raise UserErrorException("The workspace configuration file config.json, could not be found")
    except UserErrorException as exc:
        text = "".join(traceback.format_exception(exc))
    text += "Downloading artifacts:  50%|#####     | 1/2\rDownloading artifacts: 100%|##########| 2/2\n"
    line = migrate._one_line(text)
    assert line.startswith("azureml.exceptions._azureml_exception.UserErrorException: UserErrorException:")
    assert "Message: The workspace configuration file config.json, could not be found" in line
    assert "\n" not in line


def test_tables_are_uploaded_once_not_per_row(store):
    """_v1_log_table keeps the rows and uploads the table at exit (or every _V1_SAVE_SECONDS):
    re-uploading the whole JSON per row made a migrated logging loop quadratic."""
    import mlflow

    from azml_v1_bridge_tools import migrate_runtime as rt

    with mlflow.start_run() as run:
        for i in range(200):
            rt._v1_log_table("curve.json", {"x": [i], "y": [i * i]})
        assert store.list_artifacts(run.info.run_id) == []  # nothing uploaded per row
        rt._v1_save_tables()
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/curve.json")
    assert json.loads(text) == {"x": list(range(200)), "y": [i * i for i in range(200)]}
    assert not rt._V1_UNSAVED


def test_a_long_loop_sees_its_table_every_save_interval(store, monkeypatch):
    import mlflow

    from azml_v1_bridge_tools import migrate_runtime as rt

    monkeypatch.setattr(rt, "_V1_SAVE_SECONDS", 0.0)  # every call is past the interval
    with mlflow.start_run() as run:
        rt._v1_log_table("live.json", {"x": [1]})
        assert json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/live.json")) == {"x": [1]}
        rt._v1_log_table("live.json", {"x": [2]})
        assert json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/live.json")) == {"x": [1, 2]}
    assert not rt._V1_UNSAVED
