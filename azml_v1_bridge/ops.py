"""The MLflow operations that `translate` produces and `deliver` executes.

Plain slotted classes: they are built on the caller's thread for every v1 call,
so they stay cheap, and they are JSON-friendly for the journal.
"""
from __future__ import annotations

# MLflow stores steps and timestamps as signed 64-bit integers: outside, a store refuses the point.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class Op:
    __slots__ = ()
    kind = "op"

    def to_json(self) -> dict:
        return {"t": self.kind, **{name: getattr(self, name) for name in self.__slots__}}

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__
        )

    def __repr__(self):
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Metric(Op):
    __slots__ = ("key", "value", "timestamp", "step")
    kind = "metric"

    def __init__(self, key: str, value: float, timestamp: int, step: int):
        self.key, self.value, self.timestamp, self.step = key, value, timestamp, step


class Param(Op):
    __slots__ = ("key", "value")
    kind = "param"

    def __init__(self, key: str, value: str):
        self.key, self.value = key, value


class Tag(Op):
    __slots__ = ("key", "value")
    kind = "tag"

    def __init__(self, key: str, value: str):
        self.key, self.value = key, value


class Artifact(Op):
    """Bytes made by the bridge (JSON, PNG, text), written at `path`."""

    __slots__ = ("path", "data")
    kind = "artifact"

    def __init__(self, path: str, data: bytes):
        self.path, self.data = path, data


class ArtifactFile(Op):
    """A user file, snapshotted at call time into `source`, written at `path`."""

    __slots__ = ("path", "source")
    kind = "artifact_file"

    def __init__(self, path: str, source: str):
        self.path, self.source = path, source


class AppendText(Op):
    """One more value of a text artifact (v1 string metric); the writer keeps the whole file."""

    __slots__ = ("path", "text")
    kind = "append_text"

    def __init__(self, path: str, text: str):
        self.path, self.text = path, text


class AppendTable(Op):
    """More rows of a JSON table artifact ({column: [values]}); the writer keeps the whole table."""

    __slots__ = ("path", "columns")
    kind = "append_table"

    def __init__(self, path: str, columns: dict):
        self.path, self.columns = path, columns


class ExtendList(Op):
    """More values of a JSON list artifact (non-numeric `log_list`)."""

    __slots__ = ("path", "values")
    kind = "extend_list"

    def __init__(self, path: str, values: list):
        self.path, self.values = path, values


class Chart(Op):
    """A v1 rich metric to draw as PNG at `path`, on the writer thread."""

    __slots__ = ("path", "obj", "title")
    kind = "chart"

    def __init__(self, path: str, obj, title: str):
        self.path, self.obj, self.title = path, obj, title


class Image(Op):
    """A PNG of a plot, kept as one step of MLflow's image series `key`."""

    __slots__ = ("key", "data", "step", "timestamp")
    kind = "image"

    def __init__(self, key: str, data: bytes, step: int, timestamp: int):
        self.key, self.data, self.step, self.timestamp = key, data, step, timestamp


class CreateRun(Op):
    """Make sure the MLflow run exists even if nothing is logged to it."""

    __slots__ = ()
    kind = "create_run"


class End(Op):
    """Terminal status; delivered after every earlier op of the run."""

    __slots__ = ("status", "timestamp")
    kind = "end"

    def __init__(self, status: str, timestamp: int):
        self.status, self.timestamp = status, timestamp


# Notes about data that did not reach MLflow at all: counted as failures in the report.
FAILED_NOTES = frozenset({"unreadable_file", "missing_file", "not_translated", "out_of_range"})


class Note(Op):
    """Something the bridge changed or dropped; warned once per kind, counted in the report."""

    __slots__ = ("what", "name", "detail")
    kind = "note"

    def __init__(self, what: str, name: str, detail: str):
        self.what, self.name, self.detail = what, name, detail


OP_TYPES = {cls.kind: cls for cls in (Metric, Param, Tag, Artifact, ArtifactFile, AppendText,
                                      AppendTable, ExtendList, Chart, Image, CreateRun, End,
                                      Note)}
