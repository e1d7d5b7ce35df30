"""A real `mlflow server` on 127.0.0.1 for tests and benchmarks (sqlite backend, served artifacts)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_executable() -> list[str]:
    found = shutil.which("mlflow", path=os.path.dirname(sys.executable))
    return [found] if found else [sys.executable, "-m", "mlflow"]


class MlflowServer:
    """`mlflow server` in its own process group; stop(), kill() and start() again on the same port and database."""

    def __init__(self, folder: str, port: int | None = None, backend_uri: str | None = None):
        self.folder = os.path.abspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.port = port or free_port()
        self.backend_uri = backend_uri or f"sqlite:///{self.folder}/server.db"
        self.artifacts = os.path.join(self.folder, "artifacts")
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.folder, "server.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> "MlflowServer":
        env = dict(os.environ)
        # Without this the server also starts a job runner with a dozen workers.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "AZML_V1_BRIDGE_MODE"):
            env.pop(name, None)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            mlflow_executable() + ["server", "--backend-store-uri", self.backend_uri,
                                   "--artifacts-destination", self.artifacts, "--serve-artifacts",
                                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.folder)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {open(self.log_path).read()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer in {timeout}s: {open(self.log_path).read()[-3000:]}")

    def _signal(self, sig) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Die at once, like a crashed server."""
        self._signal(signal.SIGKILL)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


try:
    import pytest
except ImportError:  # servers.py is also used by benchmarks/, where pytest is optional
    pytest = None

if pytest is not None:
    @pytest.fixture
    def private_mlflow_server(tmp_path):
        """An `MlflowServer` of this test alone, NOT started (call `.start()`): for tests that
        kill it, restart it on the same port and database, or need its port while it is down.
        Stopped at teardown."""
        server = MlflowServer(str(tmp_path / "private-mlflow"))
        yield server
        server.stop()

    @pytest.fixture(scope="session")
    def restartable_mlflow_server(tmp_path_factory):
        """A second session server that tests may kill, stop and restart (never the shared
        `mlflow_server`). Not started until a test calls `running(server)` or `.start()`;
        a test that needs it down calls `.stop()`/`.kill()`. Stopped at the end. One server
        per session even when several test modules import this fixture."""
        global _RESTARTABLE
        if _RESTARTABLE is None:
            _RESTARTABLE = MlflowServer(str(tmp_path_factory.mktemp("restartable-mlflow")))
        yield _RESTARTABLE
        _RESTARTABLE.stop()


_RESTARTABLE: MlflowServer | None = None


def running(server: MlflowServer) -> MlflowServer:
    """The server, started if it is not running (same port, same database)."""
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    return server
