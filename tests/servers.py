"""A real `mlflow server` on 127.0.0.1 for tests and benchmarks (sqlite backend, served artifacts),
and a throwaway PostgreSQL under it where a test or benchmark needs the team deployment."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


# ---------------------------------------------------------------- a slow store

class LatencyProxy:
    """A loopback TCP proxy in front of a real server that delays every byte the client sends
    by `delay` seconds: each HTTP request then takes at least `delay` to be answered (a
    store far away, or overloaded), while the server itself stays what it is."""

    def __init__(self, target_port: int, delay: float):
        import threading

        self.target_port, self.delay = target_port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threading = threading
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="latency-proxy").start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                conn.close()
                continue
            self._threading.Thread(target=self._delayed, args=(conn, upstream), daemon=True).start()
            self._threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True).start()

    def _delayed(self, src, dst) -> None:
        import collections

        chunks: collections.deque = collections.deque()
        ready = self._threading.Condition()
        done = []

        def read():
            try:
                while True:
                    data = src.recv(65536)
                    with ready:
                        chunks.append((time.monotonic() + self.delay, data))
                        ready.notify()
                    if not data:
                        return
            except OSError:
                with ready:
                    chunks.append((0.0, b""))
                    ready.notify()

        self._threading.Thread(target=read, daemon=True).start()
        try:
            while not done:
                with ready:
                    while not chunks:
                        ready.wait()
                    due, data = chunks.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    self._closed.wait(wait)  # the latency under test (or close() ends it)
                if not data or self._closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._shut(src, dst)

    def _pipe(self, src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._shut(src, dst)

    @staticmethod
    def _shut(*sockets) -> None:
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self.listener.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- PostgreSQL

def postgres_binaries():
    found = {}
    for name in ("initdb", "pg_ctl"):
        path = shutil.which(name)
        if path is None:
            candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
            path = candidates[-1] if candidates else None
        if path is None:
            return None
        found[name] = path
    return found


class Postgres:
    """A throwaway PostgreSQL on 127.0.0.1 (trust auth, fsync off), in a temp folder.
    As root it runs as the `postgres` user (initdb refuses root)."""

    def __init__(self, binaries):
        self.bin = binaries
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="azml_v1_bridge-pg-")  # not under pytest's 0700 dirs
        self.data = os.path.join(self.folder, "data")
        self.log = os.path.join(self.folder, "postgres.log")
        self.prefix = []
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")  # postgres_missing() says when there is none
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]

    @property
    def uri(self):
        # SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3; the test extras install psycopg2
        return f"postgresql+psycopg2://mlflow@127.0.0.1:{self.port}/mlflow"

    def _run(self, *args):
        result = subprocess.run(self.prefix + list(args), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")
        return result

    def start(self):
        self._run(self.bin["initdb"], "-D", self.data, "-U", "mlflow", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(self.bin["pg_ctl"], "-D", self.data, "-l", self.log, "-o", options, "-w", "start")
        import psycopg2

        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="mlflow",
                                        dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        return self

    def stop(self):
        try:
            self._run(self.bin["pg_ctl"], "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot be started here (the reason a test skips with), or None."""
    if postgres_binaries() is None:
        return ("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in "
                "/usr/lib/postgresql/*/bin): apt-get install postgresql")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return ("psycopg2 is not installed (mlflow server needs it for PostgreSQL): "
                "pip install psycopg2-binary")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run PostgreSQL as"
    return None


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
