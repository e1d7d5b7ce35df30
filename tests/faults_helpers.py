"""Helpers of the fault matrix (tests/test_faults.py): bridged scripts in fresh interpreters,
a store that never answers, an unprivileged user, and counts of distinct (key, step) pairs
read back from MLflow or from journal files."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid

from conftest import ROOT

WRITERS = ("thread", "process")
FORK_KEY = re.compile(r"^(.*)/fork_(\d+)$")


# ---------------------------------------------------------------- environments


def bridged_env(writer: str, uri: str | None, **extra) -> dict:
    """mlflow mode, the given writer and store, a fresh experiment of this test's own."""
    env = {"AZML_V1_BRIDGE_MODE": "mlflow", "AZML_V1_BRIDGE_WRITER": writer,
           "MLFLOW_EXPERIMENT_NAME": "faults-" + uuid.uuid4().hex[:12]}
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    env.update({k: str(v) for k, v in extra.items()})
    return env


def full_env(env: dict, drop=()) -> dict:
    out = dict(os.environ)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "AZML_V1_BRIDGE_JOURNAL",
                 "MLFLOW_TRACKING_URI", *drop):
        out.pop(name, None)
    out["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    out.update(env)
    return out


# ---------------------------------------------------------------- scripts


class Script:
    """A bridged script in a fresh interpreter, in a session of its own (so its Pool workers
    can be killed with it), whose stdout lines can be waited for."""

    def __init__(self, code: str, folder, env: dict, args=(), launcher=None, drop=(),
                 stdin=False, name="script.py"):
        folder = str(folder)
        path = os.path.join(folder, name)
        with open(path, "w") as fh:
            fh.write(textwrap.dedent(code))
        os.chmod(path, 0o644)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            (launcher or []) + [sys.executable, path, *map(str, args)], cwd=folder,
            env=full_env(env, drop), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, text=True,
            start_new_session=True)
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._new = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err_lines),
                                          daemon=True)]
        for reader in self._readers:
            reader.start()
        self.ended_at: float | None = None

    def _read(self, stream, into) -> None:
        for line in stream:
            with self._new:
                into.append(line.rstrip("\n"))
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    def wait_line(self, prefix: str, timeout: float = 120) -> str:
        """The first stdout line starting with `prefix` (fails on exit or timeout)."""
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.proc.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(f"exited ({self.proc.returncode}) before printing "
                                         f"{prefix!r}:\n{self.stderr[-4000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {prefix!r} line in {timeout}s:\n{self.stderr[-4000:]}")
                self._new.wait(min(left, 0.5))

    def send(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def signal(self, sig=signal.SIGTERM) -> float:
        self.proc.send_signal(sig)
        return time.monotonic()

    def finish(self, timeout: float = 150) -> int:
        """Wait for the exit; on timeout kill the whole session and fail with the figure."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout}s (killed):\n{self.stderr[-4000:]}")
        finally:
            self.ended_at = time.monotonic()
            for reader in self._readers:
                reader.join(30)
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err_lines)

    @property
    def wall(self) -> float:
        return (self.ended_at or time.monotonic()) - self.started

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.kill()


def run_bridged(code: str, folder, env: dict, args=(), timeout: float = 150, **kw) -> Script:
    """Run a script to its end; the Script holds returncode, lines, stderr, wall."""
    script = Script(code, folder, env, args=args, **kw)
    with script:
        script.finish(timeout)
    return script


# ---------------------------------------------------------------- stores


class Hole:
    """A tracking store on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.held: list = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)  # held open, never read, never answered

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.held:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def refused_url() -> str:
    """A 127.0.0.1 port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------- reading back


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def experiment_runs(client, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], max_results=1000)


def run_pairs(client, run_id: str) -> dict:
    """{key: sorted steps} of every metric of a run (every point, repeats kept)."""
    run = client.get_run(run_id)
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key))
            for key in run.data.metrics}


def base_key(key: str) -> str:
    match = FORK_KEY.match(key)
    return match.group(1) if match else key


def distinct_pairs(steps_by_key: dict, prefix: str = "") -> set:
    """Distinct (key, step) pairs of the keys starting with `prefix`."""
    return {(k, s) for k, steps in steps_by_key.items() if k.startswith(prefix) for s in steps}


def journal_files(*folders) -> list[str]:
    found = []
    for folder in folders:
        if folder and os.path.isfile(folder):
            found.append(str(folder))
        elif folder and os.path.isdir(folder):
            found += glob.glob(os.path.join(str(folder), "**", "*.jsonl"), recursive=True)
    return sorted(set(found))


def journal_lines(*paths) -> list[dict]:
    lines = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            lines += [json.loads(line) for line in fh if line.strip()]
    return lines


def journal_pairs(*paths, prefix: str = "") -> set:
    """Distinct (key, step) pairs in journal files (lines `{"t": "metrics", "m": [[key, value,
    timestamp, step], ...]}`, see deliver.Journal)."""
    return {(m[0], m[3]) for line in journal_lines(*paths) if line.get("t") == "metrics"
            for m in line["m"] if m[0].startswith(prefix)}


JOURNAL_NAMED = re.compile(r"(/[^\s'\"()]+\.jsonl)")


def journals_named(stderr: str) -> list[str]:
    """Journal paths the bridge named in its warnings."""
    return sorted(set(JOURNAL_NAMED.findall(stderr)))


def download_json(client, run_id: str, path: str, into) -> dict:
    local = client.download_artifacts(run_id, path, str(into))
    with open(local, encoding="utf-8") as fh:
        return json.load(fh)


def artifact_paths(client, run_id: str, path: str | None = None) -> set:
    out = set()
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out |= artifact_paths(client, run_id, info.path)
        else:
            out.add(info.path)
    return out


# ---------------------------------------------------------------- an unprivileged user


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
# root without the capabilities that bypass file permissions: owner/group/other bits then
# apply to it as to anyone (a 0555 folder is read-only, a 0000 file unreadable)
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
_probe: tuple | None = None

PROBE = ("import os, tempfile, azml_v1_bridge, mlflow, azureml.core\n"
         "folder = tempfile.mkdtemp(dir=os.environ['PROBE_DIR'])\n"  # must fail: 0555
         "print('can write')\n")


def unprivileged_launcher() -> tuple[list | None, str]:
    """(launcher, how) to run a command for which file permissions apply, or (None, why not).
    Root bypasses them, so read-only folders and unreadable files are only real for another
    user: `nobody` when it can run this interpreter, else root without CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH and CAP_FOWNER."""
    global _probe
    if _probe is not None:
        return _probe
    if os.geteuid() != 0:
        _probe = ([], "not root: permissions apply as they are")
        return _probe
    if shutil.which("setpriv") is None:
        _probe = (None, "setpriv (util-linux) is not installed: cannot drop root's file access")
        return _probe
    folder = shared_folder()
    locked = os.path.join(folder, "locked")
    os.makedirs(locked)
    os.chmod(locked, 0o555)
    reasons = []
    try:
        for launcher, how in ((NOBODY, "as nobody"),
                              (NO_DAC, "as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH/"
                                       "CAP_FOWNER")):
            try:
                probe = subprocess.run(
                    launcher + [sys.executable, "-c", PROBE],
                    env=full_env({"AZML_V1_BRIDGE_MODE": "off", "HOME": folder,
                                  "PROBE_DIR": locked}),
                    capture_output=True, text=True, timeout=120, cwd=folder)
            except (OSError, subprocess.TimeoutExpired) as exc:
                reasons.append(f"{how}: {exc}")
                continue
            if probe.returncode != 0 and "PermissionError" in probe.stderr and "mkdtemp" in probe.stderr:
                _probe = (launcher, how)
                return _probe
            reasons.append(f"{how}: rc {probe.returncode} {probe.stdout.strip()} "
                           f"{probe.stderr.strip()[-200:]}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _probe = (None, "no way to run without root's file access: " + "; ".join(reasons))
    return _probe


def shared_folder() -> str:
    """A folder every user can traverse (pytest's tmp_path is under a 0700 root folder)."""
    folder = tempfile.mkdtemp(prefix="azml_v1_bridge-faults-")
    os.chmod(folder, 0o755)
    return folder


def writable_folder(path: str) -> str:
    """A folder the unprivileged script can write, whoever it runs as."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o777)
    return path


def read_only_folder(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o555)
    return path
