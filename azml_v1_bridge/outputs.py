"""The outputs folder: what the v1 job runtime uploaded into every run, done by the bridge.

v1 jobs wrote models and reports to `./outputs` (or the folder given to
`start_logging(outputs=...)`) and the runtime uploaded it into the run when the
script ended. In mlflow mode (and in mirror mode with AZML_V1_BRIDGE_OUTPUTS=1)
the bridge uploads that folder to artifact path `outputs/` when a top-level run
ends: after everything logged before the end is delivered, before the run's
terminal status, on the thread that ends the run (`complete()`, the end of a
`with` block, or interpreter exit) — never on the writer thread, so a large
upload holds up no logging call anywhere in the process.

Uploads of PROGRESS_MIN_BYTES or more report progress on stderr: a bar
redrawn in place when stderr is a terminal, one line per file otherwise (logs
of a batch job).
"""
from __future__ import annotations

import os
import posixpath
import sys
import time

ARTIFACT_PATH = "outputs"
DEFAULT_FOLDER = "outputs"
PROGRESS_MIN_BYTES = 10 * 1024 * 1024
BAR_WIDTH = 28


def files_of(folder: str) -> list[tuple[str, str, int]]:
    """(path relative to folder with '/', absolute path, size) of every file below folder, sorted."""
    out = []
    for here, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(here, name)
            if not os.path.isfile(full):  # a dangling link, a socket...
                continue
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            try:
                size = os.path.getsize(full)
            except OSError:
                continue
            out.append((rel, full, size))
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Progress:
    """Upload progress on a stream: a bar on a terminal, a line per file elsewhere; silent
    for uploads under `min_bytes`."""

    def __init__(self, files: int, total: int, stream=None, min_bytes: int = PROGRESS_MIN_BYTES,
                 what: str = "outputs"):
        self.files, self.total, self.what = files, total, what
        self.stream = sys.stderr if stream is None else stream
        self.enabled = total >= min_bytes and self.stream is not None
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):
            self.tty = False
        self.done_files = self.done_bytes = 0
        self.started = time.monotonic()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed at exit
            self.enabled = False

    def start(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self._bar("")
        else:
            self._write(f"azml_v1_bridge: uploading {self.what}: {self.files} files, "
                        f"{_mb(self.total)}\n")

    def file_done(self, name: str, size: int) -> None:
        self.done_files += 1
        self.done_bytes += size
        if not self.enabled:
            return
        if self.tty:
            self._bar(name)
        else:
            percent = 100 * self.done_bytes // max(self.total, 1)
            self._write(f"azml_v1_bridge: uploaded {self.what}/{name} ({_mb(size)}) "
                        f"[{self.done_files}/{self.files} files, {percent}%]\n")

    def _bar(self, name: str) -> None:
        fraction = self.done_bytes / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done_bytes / elapsed / 1e6
        shown = name if len(name) <= 30 else "..." + name[-27:]
        self._write(f"\r\x1b[Kazml_v1_bridge: {self.what} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                    f"{int(fraction * 100):3d}% {self.done_files}/{self.files} files "
                    f"{_mb(self.done_bytes)}/{_mb(self.total)} {rate:.1f} MB/s {shown}")

    def finish(self, error: BaseException | None = None) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        if self.tty:
            self._write("\n")
        if error is None:
            self._write(f"azml_v1_bridge: {self.what}: {self.done_files} files, "
                        f"{_mb(self.done_bytes)} uploaded in {elapsed:.1f}s\n")
        else:
            self._write(f"azml_v1_bridge: {self.what}: upload stopped after {self.done_files} of "
                        f"{self.files} files: {type(error).__name__}: {error}\n")


def upload(client, run_id: str, folder: str, artifact_path: str = ARTIFACT_PATH, stream=None,
           min_bytes: int = PROGRESS_MIN_BYTES, skip=()) -> list[str]:
    """Upload every file below `folder` to `artifact_path/<relative path>` of MLflow run
    `run_id`, one file at a time with progress; returns the relative paths uploaded.
    `skip`: relative paths already uploaded (a retry goes on where it stopped)."""
    files = [f for f in files_of(folder) if f[0] not in set(skip)]
    progress = Progress(len(files), sum(size for _, _, size in files), stream, min_bytes,
                        what=artifact_path)
    progress.start()
    done: list[str] = []
    try:
        for rel, full, size in files:
            target = posixpath.join(artifact_path, posixpath.dirname(rel)).rstrip("/")
            client.log_artifact(run_id, full, target or None)
            done.append(rel)
            progress.file_done(rel, size)
    except Exception as exc:
        progress.finish(exc)
        raise PartialUpload(done, exc) from exc
    except BaseException as exc:  # Ctrl-C, SystemExit: the user's, never turned into a store error
        progress.finish(exc)
        raise
    progress.finish()
    return done


class PartialUpload(Exception):
    """Some files went up, then the store failed: `done` are the ones that arrived."""

    def __init__(self, done: list[str], error: BaseException):
        super().__init__(f"{len(done)} files uploaded before {type(error).__name__}: {error}")
        self.done, self.error = done, error
