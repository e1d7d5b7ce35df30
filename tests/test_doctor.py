"""`azml-v1-bridge doctor` names the cause of every store failure (causes.classify), waits for a
cold store and calls a late answer slow, not dead. Each case is a real failure: a dead port, a
silent listener, a loopback server answering 401/403, an import that really fails, a real schema
mismatch, a file or a read-only mount where the store's folder should be."""
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from servers import LatencyProxy, free_port
from test_causes import PASSWORD, can_unshare, http_status  # noqa: F401 (fixture)

PROBLEM = "azml-v1-bridge doctor: problem: "


def doctor(tmp_path, *args, env=None, before="", prefix=()):
    """Run doctor in a fresh interpreter; `before` runs first (e.g. to block an import)."""
    code = textwrap.dedent(f"""
        import sys
        {before}
        from azml_v1_bridge_tools.cli import main
        sys.exit(main(["doctor", *{list(args)!r}]))
    """)
    full = dict(os.environ)
    full["PYTHONPATH"] = ROOT + os.pathsep + full.get("PYTHONPATH", "")
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI"):
        full.pop(name, None)
    full.update(env or {})
    script = tmp_path / "run_doctor.py"
    script.write_text(code)
    return subprocess.run(list(prefix) + [sys.executable, str(script)], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=180)


def problems(result):
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(PROBLEM) for line in lines), result.stderr
    return [line[len(PROBLEM):] for line in lines]


def store_problem(result):
    """The one problem line about the tracking store."""
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [p for p in problems(result) if p.startswith("tracking store")]
    return line


def store_check(monkeypatch, uri, timeout=5.0, slow=5.0):
    """Doctor's store check in this process (MLflow is loaded already: each case takes
    milliseconds, not a fresh interpreter's seconds). Its problem lines are returned."""
    from azml_v1_bridge_tools.doctor import Doctor

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    check = Doctor(timeout, slow)
    check.uri = uri
    check.check_store()
    return [check.scrub(p) for p in check.problems]


def test_refused(monkeypatch):
    port = free_port()
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
    assert store_check(monkeypatch, uri) == [
        f"tracking store http://***@127.0.0.1:{port}: connection refused: nothing listens at "
        f"127.0.0.1:{port} (is `mlflow server` running, on that port?)"]


def test_a_silent_listener_times_out_at_the_given_timeout(monkeypatch):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        (line,) = store_check(monkeypatch, uri, timeout=2)
    assert line.startswith(f"tracking store {uri}: timed out: the store accepted the connection but did "
                           "not answer in time")


@pytest.mark.skipif(not can_unshare(), reason="needs `unshare -m` (a private /etc/resolv.conf)")
def test_unresolved_host(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    wrapper = ["unshare", "-m", "sh", "-c", f'mount --bind {resolv} /etc/resolv.conf && exec "$0" "$@"']
    result = doctor(tmp_path, "--timeout", "5", "--tracking-uri", "http://mlflow.example:5000", prefix=wrapper)
    assert store_problem(result) == ("tracking store http://mlflow.example:5000: the host name mlflow.example "
                                     "does not resolve (DNS): check the spelling of the URI and the network")


@pytest.mark.parametrize("status, words", [(401, "HTTP 401, not signed in"), (403, "HTTP 403, access denied")])
def test_authentication(monkeypatch, http_status, status, words):  # noqa: F811
    uri = http_status(status)
    (line,) = store_check(monkeypatch, uri)
    assert line == (f"tracking store {uri.replace(f'alice:{PASSWORD}', '***')}: authentication refused "
                    f"({words}): check the credentials (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
                    "or MLFLOW_TRACKING_TOKEN)")
    assert PASSWORD not in line


def test_missing_database_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # SQLAlchemy's import of it really fails
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    uri = f"postgresql://alice:{PASSWORD}@127.0.0.1:{free_port()}/mlflow"
    (line,) = store_check(monkeypatch, uri)
    assert line.endswith("the database driver psycopg is not installed: pip install 'psycopg[binary]', or "
                         "pip install psycopg2-binary and write the URI as postgresql+psycopg2://")
    assert PASSWORD not in line


def test_missing_sqlalchemy_for_the_default_sqlite_store(tmp_path):
    # The case that said OK before: mlflow-skinny without SQLAlchemy and the sqlite default.
    result = doctor(tmp_path, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                    before="sys.modules['sqlalchemy'] = None")
    assert store_problem(result) == (f"tracking store sqlite:///{tmp_path}/mlflow.db: a sqlite:// store needs "
                                     "SQLAlchemy, which is not installed (mlflow-skinny leaves it out): "
                                     "pip install 'azml_v1_bridge[sqlite]'")
    assert "OK:" not in result.stdout


def test_schema_older_than_this_mlflow(tmp_path, empty_store_file, monkeypatch):
    from mlflow.store.db_migrations import versions

    folder = list(versions.__path__)[0]
    oldest = sorted(f.split("_")[0] for f in os.listdir(folder) if f.endswith(".py") and f[0] != "_")[0]
    shutil.copyfile(empty_store_file, tmp_path / "old.db")
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (oldest,))
    uri = f"sqlite:///{tmp_path}/old.db"
    (line,) = store_check(monkeypatch, uri)
    assert line.endswith(f"the database schema is older than this MLflow: back it up, then run "
                         f"`mlflow db upgrade {uri}`")


def test_plugin_missing_or_broken(tmp_path, monkeypatch):
    azureml = "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g"
    (line,) = store_check(monkeypatch, azureml)
    assert line.endswith("no MLflow tracking store for azureml:// URIs is installed: pip install azureml-mlflow")
    # A real installed plugin (a dist-info on sys.path) whose module imports a missing package.
    info = tmp_path / "brokenstore_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenstore-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mlflow.tracking_store]\nbrokenstore = brokenstore_plugin:Store\n")
    (tmp_path / "brokenstore_plugin.py").write_text("import a_dependency_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (line,) = store_check(monkeypatch, "brokenstore://h/db")
    assert line.endswith(
        "the MLflow plugin for brokenstore:// URIs (brokenstore-plugin) is installed but cannot be imported "
        "(ModuleNotFoundError: No module named 'a_dependency_nobody_installed'): pip install the package "
        "that provides 'a_dependency_nobody_installed'")


def test_cannot_create_the_sqlite_file(tmp_path, monkeypatch):
    (tmp_path / "data").write_text("a file where the store's folder should be")
    assert store_check(monkeypatch, f"sqlite:///{tmp_path}/data/mlflow.db") == [
        f"tracking store sqlite:///{tmp_path}/data/mlflow.db: cannot create {tmp_path}/data/mlflow.db: "
        f"{tmp_path}/data is a file, not a folder: point MLFLOW_TRACKING_URI at a writable folder"]


@pytest.mark.skipif(not can_unshare(), reason="needs `unshare -m` (a read-only bind mount; tests run as root)")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    wrapper = ["unshare", "-m", "sh", "-c",
               f'mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && exec "$0" "$@"']
    result = doctor(tmp_path, "--tracking-uri", f"sqlite:///{folder}/mlflow.db", prefix=wrapper)
    assert store_problem(result).endswith(f"cannot create {folder}/mlflow.db: the folder {folder} is "
                                          "read-only: point MLFLOW_TRACKING_URI at a writable folder")


@pytest.mark.server
def test_a_slow_store_is_slow_not_dead(tmp_path, mlflow_server):
    proxy = LatencyProxy(mlflow_server.port, delay=2.0)
    try:
        result = doctor(tmp_path, "--slow", "1", "--tracking-uri", f"http://127.0.0.1:{proxy.port}")
    finally:
        proxy.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tracking store  answers (http), but slowly: " in result.stdout
    assert "slow, not down" in result.stdout
    assert "OK: nothing found" in result.stdout


def test_timeout_and_slow_are_checked(capsys):
    from azml_v1_bridge_tools import doctor as doctor_module

    with pytest.raises(SystemExit) as exit_info:
        doctor_module.main(["--timeout", "0"])
    assert exit_info.value.code == 2
    assert "--timeout: '0' must be more than 0 seconds" in capsys.readouterr().err
    assert doctor_module.DEFAULT_TIMEOUT == 60


def test_under_the_launcher_doctor_names_the_jobs_run(monkeypatch):
    from azml_v1_bridge_tools.doctor import Doctor

    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZML_V1_BRIDGE_LAUNCHER_RUN_ID", "f" * 32)
    check = Doctor(5, 5)
    check.check_destination()
    runs = [text for label, text in check.lines if label == "run"]
    assert runs == [f"{'f' * 32} (AZML_V1_BRIDGE_LAUNCHER_RUN_ID, created by `azml-v1-bridge run`, "
                    "which ends it) for Run.get_context(); start_logging() and the script's own "
                    "mlflow.start_run() make their own runs"]
