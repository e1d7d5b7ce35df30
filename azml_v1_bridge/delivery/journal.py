"""The journal: JSON lines of everything that could not be delivered, written by the writer
and read by replay (and by the writer itself when the store comes back).

Where: AZML_V1_BRIDGE_JOURNAL, else ./azml_v1_bridge_journal/<UTC time>-<pid>.jsonl. When that
folder cannot be written (a read-only working folder), the same file name goes to the
per-user state folder ($XDG_STATE_HOME or ~/.local/state, then azml_v1_bridge/journal/),
then to the temp folder; the warning names the file actually written. A folder that is full
(no space left on device) sends the journal on to the next one in the same way.

Journals hold training data: folders are 0700 and files 0600 whatever the umask, nothing is
opened through a symlink (O_NOFOLLOW; new files O_EXCL), and a folder the bridge did not
create is used only when it belongs to this user and no one else can write it; else the
next folder is used.
"""
from __future__ import annotations

import base64
import errno
import itertools
import json
import logging
import os
import socket
import stat
import tempfile
import threading
import time

from .. import config
from ..ops import INT64_MAX, INT64_MIN
from .batching import MAX_METRICS, Work, from_json_number, json_number
from .errors import strip_credentials
from .store import creation_tags

logger = logging.getLogger("azml_v1_bridge")

JOURNAL_VERSION = 1


FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _euid() -> int | None:
    return os.geteuid() if hasattr(os, "geteuid") else None


def private_folder(folder: str, own_parents: bool = False) -> None:
    """Make `folder` (0700 for every level created here) or check it: an existing folder (or
    this user's own symlink to one) must belong to this user and be writable by no one else.
    `own_parents`: the parents named azml_v1_bridge* are checked the same way (the fallback
    folders in the shared temp folder). Raises OSError naming the problem."""
    folder = os.path.abspath(folder)
    missing = []
    probe = folder
    while not os.path.lexists(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # another process was first: checked below like any other
            continue
        _chmod_folder(path)  # the umask may have taken bits off, never put any on
    check = [folder]
    if own_parents:
        parent = os.path.dirname(folder)
        while os.path.basename(parent).startswith("azml_v1_bridge"):
            check.append(parent)
            parent = os.path.dirname(parent)
    for path in check:
        if path in missing:
            continue
        uid = _euid()
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):  # followed only when it is this user's own link
            if uid is not None and info.st_uid != uid:
                raise OSError(errno.EPERM, f"{path} is a symlink of another user (uid "
                                           f"{info.st_uid}): not followed")
            info = os.stat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise OSError(errno.ENOTDIR, f"{path} is not a folder")
        if uid is not None and info.st_uid != uid:
            raise OSError(errno.EPERM, f"the folder {path} belongs to another user "
                                       f"(uid {info.st_uid})")
        if info.st_mode & 0o022:
            raise OSError(errno.EPERM, f"the folder {path} can be written by other users "
                                       f"(mode {stat.S_IMODE(info.st_mode):o})")


def _chmod_folder(path: str) -> None:
    """0700 on the folder itself, never on what a symlink swapped in for it points to."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def create_private(path: str) -> int:
    """A new 0600 file, never through a symlink nor over an existing file (O_EXCL)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
    if hasattr(os, "fchmod"):
        try:
            os.fchmod(fd, 0o600)
        except OSError:
            pass
    return fd


def open_private_append(path: str) -> int:
    """The journal file for appending: created 0600 (O_EXCL), or an existing one of this user
    (a regular file with one link, never through a symlink), made 0600."""
    try:
        return create_private(path)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _CLOEXEC)
    try:
        info = os.fstat(fd)
        uid = _euid()
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        if uid is not None and info.st_uid != uid:
            raise OSError(errno.EPERM, f"{path} belongs to another user (uid {info.st_uid})")
        if info.st_nlink != 1:
            raise OSError(errno.EPERM, f"{path} has {info.st_nlink} hard links")
        if stat.S_IMODE(info.st_mode) & 0o077 and hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _append_all(fd: int, data: bytes) -> None:
    """Append `data` to a file opened O_APPEND, all of it or none of ours: on failure the
    piece written is cut off again, unless another process sharing the file appended after
    it (cutting would take their lines): then the piece is ended with a newline where there
    is room, a bad line that replay names, and their lines stay whole."""
    view = memoryview(data)
    start = end = None  # the file offsets of what this call wrote
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
            at = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: the end of what was just written
            start, end = (at - written if start is None else start), at
    except OSError:
        if start is not None:
            try:
                if os.fstat(fd).st_size == end and end - start == len(data) - len(view):
                    os.ftruncate(fd, start)
                else:
                    os.write(fd, b"\n")
            except OSError:
                pass
        raise


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
    sharing a journal path never interleave inside a line. A spill that does not fit (no
    space left) is taken back whole (the file is cut to where it began, its `.files` copies
    removed) and written again in the next folder.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._wanted = self.path
        self._fd: int | None = None
        self._header = True
        self._described: dict = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._full: list = []        # folders found full, in order, with why
        self._new_files: list = []   # .files copies of the spill being written
        self.moved_from: str | None = None  # why the wanted folder could not be written
        self.paths: list = []        # every file written, in order (more than one: a full disk)

    @property
    def files_dir(self) -> str:
        return self.path + ".files"

    def _open(self) -> None:
        if self._fd is None:
            self._fd = self._open_somewhere()
            self._described = {}  # a new file describes its runs again
            self._header = True

    def _header_line(self) -> list:
        """The header, before the first spill of this process in this file."""
        if not self._header:
            return []
        return [json.dumps({"t": "journal", "v": JOURNAL_VERSION, "pid": os.getpid(),
                            "host": socket.gethostname(), "cwd": os.getcwd(),
                            "created_ms": int(time.time() * 1000)})]

    def _candidates(self) -> list:
        name = os.path.basename(self._wanted)
        return [self._wanted] + [os.path.join(d, name) for d in fallback_dirs()]

    def _open_somewhere(self) -> int:
        """Open the journal, else the same name in a fallback folder (self.path follows)."""
        full = {path for path, _ in self._full}
        problems = [why for _, why in self._full]
        for number, path in enumerate(self._candidates()):
            if path in full:
                continue
            folder = os.path.dirname(path) or "."
            try:
                private_folder(folder, own_parents=number > 0)
                fd = open_private_append(path)
            except OSError as exc:
                problems.append(f"the folder {folder} cannot be used ({_why(exc)})")
                continue
            if path != self._wanted or problems:
                self.moved_from = "; ".join(problems)
            self.path = path
            if path not in self.paths:
                self.paths.append(path)
            return fd
        raise OSError(errno.ENOSPC if self._full else errno.EACCES,
                      "no folder for the journal can be used (" + "; ".join(problems) + ")")

    def _append(self, lines: list) -> None:
        """One write of whole lines, taken back whole if it fails (_append_all)."""
        _append_all(self._fd, ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))

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
        returns how many items were written. All or nothing: a folder with no space left
        gets none of it, and the next folder is tried."""
        with self._lock:
            while True:
                described = dict(self._described)
                try:
                    return self._write(record, uri, work, docs)
                except BaseException as exc:
                    self._described = described  # those lines were not written
                    for path in self._new_files:
                        try:
                            os.unlink(path)
                        except OSError:
                            pass
                    if not isinstance(exc, OSError) or exc.errno not in FULL:
                        raise
                    self._full.append((self.path, f"the folder {os.path.dirname(self.path)} "
                                                  f"is full (no space left on device)"))
                    self._drop_if_empty()
                finally:
                    self._new_files = []

    def _drop_if_empty(self) -> None:
        """Close a journal that ran out of space; remove it when nothing fitted in it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.fstat(fd).st_size == 0:
                os.unlink(self.path)
        except OSError:
            pass
        try:
            os.close(fd)
        except OSError:
            pass

    def _write(self, record, uri: str | None, work: Work, docs: list) -> int:
        self._open()
        if True:
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
                self._append(self._header_line() + lines)
                self._header = False
            return (len(work.metrics) + len(work.params) + len(work.tags) + len(files)
                    + len(work.images) + (work.end is not None))

    def _payload(self, data) -> dict:
        if isinstance(data, (bytes, bytearray)):
            if len(data) <= 64 * 1024:
                return {"b64": base64.b64encode(data).decode("ascii")}
            name, fd = self._new_file("bin")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return {"file": name}
        name, fd = self._new_file(os.path.basename(data))
        with os.fdopen(fd, "wb") as out, open(data, "rb") as src:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        return {"file": name}

    def _new_file(self, suffix: str) -> tuple:
        """(name, fd) of a new private file in JOURNAL.files (0600 whatever the source's mode)."""
        private_folder(self.files_dir)
        for _ in range(100):
            name = f"{os.getpid()}-{next(self._seq):06d}-{suffix}"
            path = os.path.join(self.files_dir, name)
            try:
                fd = create_private(path)
            except FileExistsError:  # planted, or left by an earlier process: another name
                continue
            self._new_files.append(path)
            return name, fd
        raise OSError(errno.EEXIST, f"no free file name in {self.files_dir}")

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


def journal_error(exc: BaseException) -> str:
    """Why a journal could not be written, by its cause (a full disk, a folder of another user)."""
    if isinstance(exc, OSError):
        why = _why(exc)
        if exc.errno in FULL and why == "no space left on device" and exc.filename:
            why += f": {exc.filename}"
        return config.redact(why)
    return config.redact(f"{type(exc).__name__}: {exc}")


def _why(exc: OSError) -> str:
    if exc.errno in FULL:
        return "no space left on device"
    text = exc.strerror or str(exc)
    return text if exc.filename is None else f"{text}: {exc.filename}"


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


class BadLine(ValueError):
    """A journal line (or one item of it) that replay will not act on."""


def artifact_path_ok(path) -> bool:
    """A relative artifact name: no absolute path, no `..`, `.` or empty part, no NUL or `\\`."""
    if type(path) is not str or not path or len(path) > 4096:
        return False
    if path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def file_name_ok(name) -> bool:
    """A file of the journal's own `.files` folder: a plain name, nothing that leaves it."""
    return (type(name) is str and 0 < len(name) <= 255 and name not in (".", "..")
            and "/" not in name and "\\" not in name and "\x00" not in name)


def _int64(value, what: str) -> int:
    if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
        raise BadLine(f"{what} {value!r} is not a 64-bit integer")
    return value


def _check_payload(line: dict) -> None:
    if "b64" in line:
        if type(line["b64"]) is not str:
            raise BadLine("b64 is not text")
    elif not file_name_ok(line.get("file")):
        raise BadLine(f"file {line.get('file')!r} is not a name in the journal's .files folder")


def read_journal(path: str) -> tuple[dict, list, list]:
    """(runs by local id, their order, what could not be read: "line N: why"). The journal
    is untrusted input: a line or point that is malformed, names a file outside the
    journal's `.files` folder or an artifact path outside the run is skipped and named."""
    runs: dict = {}
    order: list = []
    bad: list = []
    cwd = None

    def run_of(lid):
        if type(lid) is not str or not lid:
            raise BadLine(f"run {lid!r} is not a run id")
        entry = runs.get(lid)
        if entry is None:
            entry = runs[lid] = JournalRun(lid)
            order.append(lid)
        return entry

    def skip(number, why):
        bad.append(f"line {number}: {why}")
        logger.warning("azml_v1_bridge replay: %s line %d skipped: %s", path, number,
                       config.redact(why))

    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for number, text in enumerate(fh, 1):
            text = text.strip()
            if not text:
                continue
            try:
                line = json.loads(text)
                if type(line) is not dict:
                    raise BadLine("not a JSON object")
                kind = line["t"]
                if kind == "journal":
                    cwd = line.get("cwd") if type(line.get("cwd")) is str else None
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
                    for item in line["m"]:
                        try:
                            key, value, timestamp, step = item
                            if type(key) is not str:
                                raise BadLine(f"metric key {key!r} is not text")
                            value = from_json_number(value)
                            if type(value) not in (int, float):
                                raise BadLine(f"metric {key!r}: value {value!r} is not a number")
                            entry.add_point(key, float(value), _int64(timestamp, "timestamp"),
                                            _int64(step, "step"))
                        except (BadLine, ValueError, TypeError) as exc:
                            skip(number, f"a point of metric {str(item)[:200]}: {exc}")
                elif kind == "params":
                    for key, value in line["p"]:
                        if type(key) is not str or type(value) is not str:
                            raise BadLine(f"param {key!r} is not text")
                        if key not in entry._param_keys:
                            entry._param_keys[key] = value
                            entry.params.append((key, value))
                elif kind == "tags":
                    for key, value in line["tags"]:
                        if type(key) is not str or type(value) is not str:
                            raise BadLine(f"tag {key!r} is not text")
                        entry.tags.pop(key, None)
                        entry.tags[key] = value
                elif kind == "artifact":
                    if not artifact_path_ok(line["path"]):
                        raise BadLine(f"artifact path {line['path']!r} is not a relative "
                                      "artifact name")
                    _check_payload(line)
                    entry.artifacts.pop(line["path"], None)
                    entry.artifacts[line["path"]] = line
                elif kind == "image":
                    if type(line["key"]) is not str or not line["key"]:
                        raise BadLine(f"image key {line['key']!r} is not text")
                    if line.get("step") is not None:
                        _int64(line["step"], "step")
                    _int64(line["timestamp"], "timestamp")
                    _check_payload(line)
                    entry.images.append(line)
                elif kind == "end":
                    if line.get("status") not in ("FINISHED", "FAILED", "KILLED"):
                        raise BadLine(f"end status {line.get('status')!r} is not a run status")
                    _int64(line["timestamp"], "timestamp")
                    entry.end = line
                else:
                    raise BadLine(f"unknown line kind {kind!r}")
            except (ValueError, KeyError, TypeError) as exc:
                skip(number, f"{type(exc).__name__}: {exc}" if not isinstance(exc, BadLine)
                     else str(exc))
    return runs, order, bad
