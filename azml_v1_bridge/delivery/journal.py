"""The journal: JSON lines of everything that could not be delivered, written by the writer
and read by replay (and by the writer itself when the store comes back).

Where: AZML_V1_BRIDGE_JOURNAL, else ./azml_v1_bridge_journal/<UTC time>-<pid>.jsonl. When that
folder cannot be written (a read-only working folder), the same file name goes to the
per-user state folder ($XDG_STATE_HOME or ~/.local/state, then azml_v1_bridge/journal/),
then to the temp folder; the warning names the file actually written.
"""
from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time

from .batching import MAX_METRICS, Work, from_json_number, json_number
from .errors import strip_credentials
from .store import creation_tags

logger = logging.getLogger("azml_v1_bridge")

JOURNAL_VERSION = 1


def fallback_dirs() -> list:
    """Where a journal goes when its own folder cannot be written, in order."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return [os.path.join(state, "azml_v1_bridge", "journal"),
            os.path.join(tempfile.gettempdir(), f"azml_v1_bridge-{uid}", "journal")]


class Journal:
    """JSON lines of everything that could not be delivered; `azml-v1-bridge replay` sends it.

    Lines (`t` is the kind): `journal` (a header per writing process: version, pid, host,
    cwd), `run` (how to find or re-create a run: written again whenever that changes),
    `create`, `metrics` (`m`: [key, value, timestamp, step], non-finite values as "NaN",
    "Infinity", "-Infinity"), `params`, `tags`, `artifact` (`b64` bytes or `file` in the
    folder JOURNAL.files), `image`, `end`. Each spill is one O_APPEND write, so processes
    sharing a journal path never interleave inside a line.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._fd: int | None = None
        self._described: dict = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.moved_from: str | None = None  # why the wanted folder could not be written

    @property
    def files_dir(self) -> str:
        return self.path + ".files"

    def _open(self) -> None:
        if self._fd is None:
            self._fd = self._open_somewhere()
            header = {"t": "journal", "v": JOURNAL_VERSION, "pid": os.getpid(),
                      "host": socket.gethostname(), "cwd": os.getcwd(),
                      "created_ms": int(time.time() * 1000)}
            self._append([json.dumps(header)])

    def _open_somewhere(self) -> int:
        """Open the journal, else the same name in a fallback folder (self.path follows)."""
        name = os.path.basename(self.path)
        candidates = [self.path] + [os.path.join(d, name) for d in fallback_dirs()]
        problems = []
        for path in candidates:
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                problems.append(f"the folder {os.path.dirname(path) or '.'} cannot be written "
                                f"({exc.strerror or exc})")
                continue
            if path != self.path:
                self.moved_from = "; ".join(problems)
                self.path = path
            return fd
        raise OSError("no folder for the journal can be written (" + "; ".join(problems) + ")")

    def _append(self, lines: list) -> None:
        data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _describe(self, record, uri: str | None, lines: list) -> None:
        if record.parent is not None:
            self._describe(record.parent, uri, lines)
        line = {"t": "run", "run": record.local_id, "tracking_uri": strip_credentials(uri),
                "v1_id": record.v1_id,
                "parent": record.parent.local_id if record.parent is not None else None,
                "experiment_id": record.experiment_id, "experiment_name": record.experiment_name,
                "mlflow_run_id": record.mlflow_run_id, "run_name": record.run_name,
                "start_ms": record.start_ms, "adopted": bool(record.adopted),
                "tags": creation_tags(record)}
        if self._described.get(record.local_id) != line:
            self._described[record.local_id] = line
            lines.append(json.dumps(line, ensure_ascii=False))

    def write(self, record, uri: str | None, work: Work, docs: list) -> int:
        """Append one run's pending work (docs: [(path, bytes)] already rendered);
        returns how many items were written."""
        with self._lock:
            self._open()
            rid = record.local_id
            lines: list = []
            self._describe(record, uri, lines)
            if work.create:
                lines.append(json.dumps({"t": "create", "run": rid}))
            for i in range(0, len(work.metrics), MAX_METRICS):
                chunk = work.metrics[i:i + MAX_METRICS]
                lines.append(json.dumps({"t": "metrics", "run": rid,
                                         "m": [[k, json_number(v), t, s] for k, v, t, s in chunk]},
                                        ensure_ascii=False))
            if work.params:
                lines.append(json.dumps({"t": "params", "run": rid,
                                         "p": [[k, v] for k, v in work.params]},
                                        ensure_ascii=False))
            if work.tags:
                lines.append(json.dumps({"t": "tags", "run": rid,
                                         "tags": [[k, v] for k, v in work.tags.items()]},
                                        ensure_ascii=False))
            files = list(work.files) + list(docs)
            for path, data in files:
                lines.append(json.dumps({"t": "artifact", "run": rid, "path": path,
                                         **self._payload(data)}, ensure_ascii=False))
            for op in work.images:
                lines.append(json.dumps({"t": "image", "run": rid, "key": op.key, "step": op.step,
                                         "timestamp": op.timestamp, **self._payload(op.data)},
                                        ensure_ascii=False))
            if work.end is not None:
                lines.append(json.dumps({"t": "end", "run": rid, "status": work.end.status,
                                         "timestamp": work.end.timestamp}))
            if lines:
                self._append(lines)
            return (len(work.metrics) + len(work.params) + len(work.tags) + len(files)
                    + len(work.images) + (work.end is not None))

    def _payload(self, data) -> dict:
        if isinstance(data, (bytes, bytearray)):
            if len(data) <= 64 * 1024:
                return {"b64": base64.b64encode(data).decode("ascii")}
            name = f"{os.getpid()}-{next(self._seq):06d}.bin"
            os.makedirs(self.files_dir, exist_ok=True)
            with open(os.path.join(self.files_dir, name), "wb") as fh:
                fh.write(data)
            return {"file": name}
        name = f"{os.getpid()}-{next(self._seq):06d}-{os.path.basename(data)}"
        os.makedirs(self.files_dir, exist_ok=True)
        shutil.copyfile(data, os.path.join(self.files_dir, name))
        return {"file": name}

    def forget_after_fork(self) -> None:
        """In a forked child: close the inherited descriptor; the child journals to a file of
        its own (the lock may be held by a thread that did not survive the fork)."""
        self._close_fd()

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


# ---------------------------------------------------------------- reading

class JournalRun:
    """Everything one journal holds about one run, merged over all its lines."""

    def __init__(self, local_id: str):
        self.local_id = local_id
        self.desc: dict = {}
        self.cwd: str | None = None
        self.create = False
        self.metrics: list = []      # (key, value, timestamp, step), journal order, no repeats
        self._seen_points: set = set()
        self.params: list = []       # (key, value), first value per key
        self._param_keys: dict = {}
        self.tags: dict = {}         # last value wins
        self.artifacts: dict = {}    # path -> payload line (last wins)
        self.images: list = []
        self.end: dict | None = None

    def add_point(self, key, value, timestamp, step) -> None:
        point = (key, point_value(value), int(timestamp), int(step))
        if point not in self._seen_points:
            self._seen_points.add(point)
            self.metrics.append((key, value, int(timestamp), int(step)))


def point_value(value: float):
    """A value usable in a set: NaN never equals itself."""
    return "NaN" if value != value else float(value)


def read_journal(path: str) -> tuple[dict, list, int]:
    """(runs by local id, their order, lines that could not be read)."""
    runs: dict = {}
    order: list = []
    bad = 0
    cwd = None

    def run_of(lid):
        entry = runs.get(lid)
        if entry is None:
            entry = runs[lid] = JournalRun(lid)
            order.append(lid)
        return entry

    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for number, text in enumerate(fh, 1):
            text = text.strip()
            if not text:
                continue
            try:
                line = json.loads(text)
                kind = line["t"]
                if kind == "journal":
                    cwd = line.get("cwd")
                    continue
                entry = run_of(line["run"])
                if kind == "run":
                    if entry.cwd is None:
                        entry.cwd = cwd
                    for name, value in line.items():
                        if value is not None or name not in entry.desc:
                            entry.desc[name] = value
                elif kind == "create":
                    entry.create = True
                elif kind == "metrics":
                    for key, value, timestamp, step in line["m"]:
                        entry.add_point(key, from_json_number(value), timestamp, step)
                elif kind == "params":
                    for key, value in line["p"]:
                        if key not in entry._param_keys:
                            entry._param_keys[key] = value
                            entry.params.append((key, value))
                elif kind == "tags":
                    for key, value in line["tags"]:
                        entry.tags.pop(key, None)
                        entry.tags[key] = value
                elif kind == "artifact":
                    entry.artifacts.pop(line["path"], None)
                    entry.artifacts[line["path"]] = line
                elif kind == "image":
                    entry.images.append(line)
                elif kind == "end":
                    entry.end = line
                else:
                    raise ValueError(f"unknown line kind {kind!r}")
            except (ValueError, KeyError, TypeError) as exc:
                bad += 1
                logger.warning("azml_v1_bridge replay: %s line %d skipped: %s", path, number, exc)
    return runs, order, bad
