"""Packaging promises: the tools import without activating the bridge, what ships in the wheel
(py.typed, the launcher's bootstrap, LICENSE), the dependencies and extras, `--version` in the help,
and the missing optional dependencies named when they are needed."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

TOOLS = ["azml_v1_bridge_tools", "azml_v1_bridge_tools.cli", "azml_v1_bridge_tools.doctor",
         "azml_v1_bridge_tools.scan", "azml_v1_bridge_tools.migrate", "azml_v1_bridge_tools.migrate_runtime",
         "azml_v1_bridge_tools.replay"]

AFTER_IMPORT = """
import atexit, importlib, inspect, json, os, signal, sys
sigterm = signal.getsignal(signal.SIGTERM)
registered = []  # the modules of every exit handler registered from here on (logging has one)
_register = atexit.register
atexit.register = lambda func, *a, **k: (registered.append(getattr(func, "__module__", "?")),
                                         _register(func, *a, **k))[1]
importlib.import_module({tool!r})
from azml_v1_bridge import NoAzureError  # mlflow mode's one error: importable, activates nothing
from azureml.exceptions import UserErrorException
assert issubclass(NoAzureError, UserErrorException) and repr(NoAzureError) == "<class 'azml_v1_bridge.NoAzureError'>"
import wrapt
from azureml.core.run import Run, _OfflineRun
proxy = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)
run = Run.get_context()
run.log("x", 1.0)  # an offline run: with the bridge active this would reach MLflow
bridge = sys.modules.get("azml_v1_bridge.bridge")
print(json.dumps({{
    "patched": [name for cls in (Run, _OfflineRun) for name in ("log", "log_row", "tag", "complete")
                if isinstance(inspect.getattr_static(cls, name), proxy)],
    "sigterm_changed": signal.getsignal(signal.SIGTERM) is not sigterm,
    "bridge_atexit": [m for m in registered if m.startswith("azml_v1_bridge")],
    "hooks_installed": bool(getattr(getattr(bridge, "STATE", None), "hooks_installed", False)),
    "enabled": getattr(sys.modules.get("azml_v1_bridge.patch"), "is_enabled", lambda: False)(),
    "store_created": os.path.exists("mlflow.db"),
}}))
"""


@pytest.mark.parametrize("tool", TOOLS)
def test_importing_a_tool_leaves_azureml_unpatched(tool, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    for name in ("AZML_V1_BRIDGE_MODE", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", AFTER_IMPORT.format(tool=tool)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state == {"patched": [], "sigterm_changed": False, "bridge_atexit": [], "hooks_installed": False,
                     "enabled": False, "store_created": False}


def test_the_runtime_import_does_activate(tmp_path):
    # The control: the same probe after `import azml_v1_bridge` sees the patches.
    env = dict(os.environ, PYTHONPATH=ROOT, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    result = subprocess.run([sys.executable, "-c", AFTER_IMPORT.format(tool="azml_v1_bridge")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["enabled"] and "log" in state["patched"] and state["bridge_atexit"] and state["sigterm_changed"]


# ---------------------------------------------------------------- metadata and files

def _pyproject():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def test_runtime_dependencies_are_the_tracking_client_azureml_core_and_wrapt():
    project = _pyproject()["project"]
    names = sorted(d.split(">")[0].split("<")[0].split("=")[0].strip() for d in project["dependencies"])
    assert names == ["azureml-core", "mlflow-skinny", "wrapt"]
    bounds = {d.split(">")[0]: d for d in project["dependencies"]}
    assert "<2" in bounds["azureml-core"] and "<4" in bounds["mlflow-skinny"]
    extras = project["optional-dependencies"]
    assert {"sqlite", "charts", "tools", "server", "all", "test"} <= set(extras)
    assert any(d.startswith("libcst") for d in extras["tools"])
    assert {d.split(">")[0] for d in extras["charts"]} == {"matplotlib", "numpy"}
    assert {d.split(">")[0] for d in extras["sqlite"]} == {"sqlalchemy", "alembic"}
    for needed in ("pytest", "hypothesis", "psycopg2-binary", "azml_v1_bridge[all]"):
        assert any(d.startswith(needed) for d in extras["test"]), needed
    assert "Typing :: Typed" in project["classifiers"] and project["urls"]


def test_files_that_ship():
    assert os.path.isfile(os.path.join(ROOT, "azml_v1_bridge", "py.typed"))
    assert "MIT License" in open(os.path.join(ROOT, "LICENSE"), encoding="utf-8").read()
    from azml_v1_bridge import __version__

    assert f"## {__version__}" in open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8").read()
    data = _pyproject()["tool"]["setuptools"]["package-data"]["azml_v1_bridge"]
    assert "py.typed" in data and "_bootstrap/*.py" in data


def test_version_is_listed_in_the_help(capsys):
    from azml_v1_bridge import __version__
    from azml_v1_bridge_tools import cli

    assert cli.main(["--help"]) == 0
    assert "--version" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"azml-v1-bridge {__version__}\n"


# ---------------------------------------------------------------- missing extras, named when needed

def _without(modules, code, tmp_path):
    blocked = "".join(f"sys.modules[{m!r}] = None\n" for m in modules)  # the import really fails
    script = "import sys\n" + blocked + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=120)


def test_charts_without_matplotlib_name_the_extra(tmp_path):
    result = _without(["matplotlib"], """
        from azml_v1_bridge_tools import cli  # the runtime without activating it
        from azml_v1_bridge import charts
        matrix = {"schema_type": "confusion_matrix", "schema_version": "1.0.0",
                  "data": {"class_labels": ["a", "b"], "matrix": [[1, 0], [0, 1]]}}
        try:
            charts.render_png(matrix)
        except charts.ChartsUnavailable as exc:
            print(exc)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "charts need matplotlib: pip install 'azml_v1_bridge[charts]'"


def test_scan_without_libcst_names_the_extra(tmp_path):
    result = _without(["libcst"], """
        from azml_v1_bridge_tools import cli
        sys.exit(cli.main(["scan", "."]))
    """, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "azml-v1-bridge: scan needs libcst: pip install 'azml_v1_bridge[tools]'"


def test_a_run_without_matplotlib_keeps_the_json_and_its_report_names_the_extra(store, tmp_path):
    from conftest import run_script

    result = run_script("""
        import sys
        sys.modules["matplotlib"] = None  # not installed, as far as this process can tell
        import azml_v1_bridge
        from azureml.core import Run
        run = Run.get_context()
        run.log_confusion_matrix("cm", {"schema_type": "confusion_matrix", "schema_version": "1.0.0",
                                        "data": {"class_labels": ["a", "b"], "matrix": [[3, 1], [0, 4]]}})
    """, tmp_path, env={"AZML_V1_BRIDGE_WRITER": "thread"})  # charts drawn in this process
    assert result.returncode == 0, result.stderr
    (run,) = store.search_runs([e.experiment_id for e in store.search_experiments()])
    paths = {f.path for f in store.list_artifacts(run.info.run_id)}
    assert "cm.json" in paths and "cm.png" not in paths
    local = store.download_artifacts(run.info.run_id, "azml_v1_bridge/report.json", str(tmp_path))
    notes = json.load(open(local, encoding="utf-8"))["notes"]
    (note,) = [n for n in notes if n["what"] == "chart_skipped"]
    assert "charts need matplotlib: pip install 'azml_v1_bridge[charts]'" in note["detail"]
