"""Pure code: grouping one cycle's work per run, growing documents, and request bodies
within MLflow's limits. No I/O and no MLflow import here."""
from __future__ import annotations

import json
import posixpath

from ..ops import AppendTable, AppendText, End, ExtendList

MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000


def json_number(value: float):
    """A float as JSON can carry it: non-finite values as the strings MLflow's protobuf JSON uses."""
    if value - value == 0:
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def from_json_number(value) -> float:
    return float(value)  # float("NaN"), float("Infinity") and float("-Infinity") all parse


class Work:
    """One run's share of a cycle, in the order it must be sent."""

    __slots__ = ("create", "metrics", "params", "tags", "files", "images", "charts",
                 "docs", "end")

    def __init__(self):
        self.create = False
        self.metrics: list = []  # (key, value, timestamp, step)
        self.params: list = []   # (key, value)
        self.tags: dict = {}
        self.files: list = []    # (artifact path, bytes | staged source path)
        self.images: list = []
        self.charts: list = []
        self.docs: set = set()   # paths of growing documents due for upload
        self.end: End | None = None

    def empty(self) -> bool:
        return not (self.create or self.metrics or self.params or self.tags or self.files
                    or self.images or self.charts or self.docs or self.end)

    def count(self) -> int:
        return (len(self.metrics) + len(self.params) + len(self.tags) + len(self.files)
                + len(self.docs) + len(self.images) + (self.end is not None))

    def copy(self) -> "Work":
        other = Work()
        other.create, other.end = self.create, self.end
        other.metrics, other.params = list(self.metrics), list(self.params)
        other.tags, other.files = dict(self.tags), list(self.files)
        other.images, other.charts, other.docs = list(self.images), list(self.charts), set(self.docs)
        return other


class Doc:
    """A whole artifact built from many calls (text lines, a table, a list)."""

    __slots__ = ("kind", "lines", "columns", "nrows", "values")

    def __init__(self, kind):
        self.kind, self.lines, self.columns, self.nrows, self.values = kind, [], {}, 0, []

    def add(self, op) -> None:
        if self.kind == "text":
            self.lines.append(op.text)
        elif self.kind == "list":
            self.values.extend(op.values)
        else:
            width = max((len(v) for v in op.columns.values()), default=0)
            for col in self.columns:
                if col not in op.columns:
                    self.columns[col].extend([None] * width)
            for col, cells in op.columns.items():
                column = self.columns.setdefault(col, [None] * self.nrows)
                column.extend(cells)
                column.extend([None] * (width - len(cells)))
            self.nrows += width

    def render(self) -> bytes:
        if self.kind == "text":
            return ("\n".join(self.lines) + "\n").encode("utf-8", "surrogatepass")
        body = self.values if self.kind == "list" else self.columns
        return json.dumps(body, indent=1, ensure_ascii=False).encode("utf-8")


DOC_KINDS = {AppendText: "text", AppendTable: "table", ExtendList: "list"}


class Documents:
    """One run's growing documents. They belong to the run, not to a writer: a writer that
    is replaced (new settings, a fork, a lost writer process) hands them on whole."""

    __slots__ = ("docs", "dirty", "since")

    def __init__(self):
        self.docs: dict = {}      # artifact path -> Doc
        self.dirty: set = set()   # paths changed since their last upload
        self.since = None         # monotonic time of the first change not yet uploaded

    def add(self, op, now: float) -> str | None:
        """Add one call's share; returns the path used when it is not op.path: a name used
        for two kinds of document keeps both (`t.json` and `t.list.json`)."""
        kind = DOC_KINDS[type(op)]
        path = op.path
        doc = self.docs.get(path)
        moved = None
        if doc is not None and doc.kind != kind:
            stem, ext = posixpath.splitext(path)
            path = moved = f"{stem}.{kind}{ext}"
            doc = self.docs.get(path)
        if doc is None:
            doc = self.docs[path] = Doc(kind)
        doc.add(op)
        self.dirty.add(path)
        if self.since is None:
            self.since = now
        return moved

    def due(self, now: float, interval: float) -> bool:
        return bool(self.dirty) and now - self.since >= interval

    def take(self) -> set:
        paths, self.dirty, self.since = self.dirty, set(), None
        return paths

    def render(self, paths) -> list:
        return [(path, self.docs[path].render()) for path in sorted(paths) if path in self.docs]


def batches(metrics: list, params: list, tags: list):
    """(metrics, params, tags) slices for log_batch within MLflow's limits, in order, never the
    same param key twice in one request. Yields the slices; the caller advances by their sizes."""
    mi = pi = ti = 0
    while mi < len(metrics) or pi < len(params) or ti < len(tags):
        p: list = []
        seen: set = set()
        while pi + len(p) < len(params) and len(p) < MAX_PARAMS:
            key = params[pi + len(p)][0]
            if key in seen:
                break
            seen.add(key)
            p.append(params[pi + len(p)])
        t = tags[ti:ti + MAX_TAGS]
        m = metrics[mi:mi + min(MAX_METRICS, MAX_ENTITIES - len(p) - len(t))]
        yield m, p, t
        mi, pi, ti = mi + len(m), pi + len(p), ti + len(t)


def halves(metrics: list, params: list, tags: list) -> list:
    """A batch split in two (first half first), to isolate an item MLflow rejects."""
    items = [("m", x) for x in metrics] + [("p", x) for x in params] + [("t", x) for x in tags]
    half = len(items) // 2
    return [tuple([x for k, x in part if k == kind] for kind in "mpt")
            for part in (items[:half], items[half:])]


def batch_json(run_id: str, metrics: list, params: list, tags: list, keys: dict) -> str:
    """The body of MLflow's REST log-batch request, built directly (MLflow's protobuf-to-JSON
    costs ~17 us a point on the writer, holding the GIL the training loop needs). `keys`
    caches each metric key's JSON spelling."""
    dumps = json.dumps
    parts = []
    for k, v, ts, s in metrics:
        key = keys.get(k)
        if key is None:
            key = dumps(k)
            if len(keys) < 100_000:
                keys[k] = key
        if type(v) is not float:
            v = float(v)
        if v - v == 0:
            parts.append('{"key":%s,"value":%r,"timestamp":%d,"step":%d}' % (key, v, ts, s))
        else:  # NaN and infinities, spelled as MLflow's protobuf JSON spells them
            parts.append('{"key":%s,"value":"%s","timestamp":%d,"step":%d}'
                         % (key, json_number(v), ts, s))
    body = '{"run_id":%s,"metrics":[%s]' % (dumps(run_id), ",".join(parts))
    if params:
        body += ',"params":[%s]' % ",".join('{"key":%s,"value":%s}' % (dumps(k), dumps(v))
                                            for k, v in params)
    if tags:
        body += ',"tags":[%s]' % ",".join('{"key":%s,"value":%s}' % (dumps(k), dumps(v))
                                          for k, v in tags)
    return body + "}"
