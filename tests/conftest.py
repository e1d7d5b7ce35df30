import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from servers import MlflowServer  # noqa: E402

# The suite sets what it needs: MLflow's, the bridge's and tqdm's settings on the machine
# running it (a CI host that turns MLflow's progress bars off, say) would change what the
# scripts it starts do.
for _name in [n for n in os.environ if n.startswith(("MLFLOW_", "AZML_V1_BRIDGE_", "TQDM_"))]:
    del os.environ[_name]
# azureml caches service discovery under ~/.azureml, fixed at its first import:
# keep the suite's (and the loopback emulator's) away from the real home.
os.environ["HOME"] = tempfile.mkdtemp(prefix="azml_v1_bridge-home-")
# The suite runs strict: a failure inside the bridge raises instead of being logged.
os.environ["AZML_V1_BRIDGE_STRICT"] = "1"
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
os.environ["AZML_V1_BRIDGE_REPORT"] = "0"


@pytest.fixture(scope="session")
def empty_store_file(tmp_path_factory):
    """An sqlite store with MLflow's schema already made (migrations cost ~1 s a store)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store_file):
    """A fresh sqlite MLflow store as the tracking URI, and a client to read it back."""
    import shutil

    from mlflow.tracking import MlflowClient

    shutil.copyfile(empty_store_file, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZML_V1_BRIDGE_JOURNAL", str(tmp_path / "journal.jsonl"))
    monkeypatch.chdir(tmp_path)
    return MlflowClient(uri)


@pytest.fixture
def bridge(store):
    """The bridge enabled in this process (mode set per test), reset afterwards."""
    import azml_v1_bridge

    yield azml_v1_bridge
    azml_v1_bridge.finish()
    azml_v1_bridge.enable("mirror")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(str(tmp_path_factory.mktemp("mlflow-server")))
    server.start()
    yield server
    server.stop()


# The start of a script that may reach only 127.0.0.1: any other host is recorded in `reached`
# and refused, so a script that would wait on Azure (or sign in) fails at once instead.
NO_NETWORK = r'''
import json, os, socket, sys

reached = []
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

def _local(host):
    return host in ("127.0.0.1", "localhost", "::1")

def connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and not host.startswith("/") and not _local(host):
        reached.append(str(host)); raise OSError("network refused by the test")
    return _connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _local(str(host)):
        reached.append(str(host)); raise socket.gaierror("network refused by the test")
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
'''


def run_script(code: str, tmp_path, env: dict | None = None, args=(), timeout=180, launcher=None):
    """Run `code` as a script in a fresh interpreter; returns CompletedProcess."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    cmd = (launcher or []) + [sys.executable, str(script), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(autouse=True)
def _progress_bars_setting_left_as_found():
    """Nothing the suite runs in-process may leave MLflow's progress-bar setting changed: the
    scripts started later inherit it (a --check's "false" once turned the notebook tests'
    control bar off)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # cleared above: unset unless a test sets it
    assert name not in os.environ, f"{name} left as {os.environ[name]!r} before this test"
    yield
    assert name not in os.environ, f"{name} left as {os.environ[name]!r}"
