"""`azml-v1-bridge migrate PATH...`: rewrite Azure ML SDK v1 tracking into plain MLflow code.

The rewrite follows the bridge's own mapping: `RULES` has one rule per v1
method of `translate.TRANSLATORS` (a test fails when they drift apart), the
v1 arguments are matched to parameters through the translators' signatures,
and every name the rewrite writes (metric keys, artifact suffixes, tag keys,
statuses) is what translate itself produces for the call, asked at rewrite
time (`scan.probe`). What v1 counted or accumulated per run (steps, rows,
repeated names, every string of a name) is kept by the few helpers of
`migrate_runtime`, copied into the file that uses them, so migrated code
needs MLflow only.

A call without a faithful native form is left as it is, with a
`# TODO(azml-v1-bridge): why` comment, and listed.

`--check SCRIPT` proves a rewrite: the original runs under the bridge in
mlflow mode and the migrated script with plain MLflow, each into a fresh
store, and the two records are compared.
"""
from __future__ import annotations

import argparse
import contextvars
import difflib
import inspect
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field

import libcst as cst

from azml_v1_bridge import ops as ops_module, translate

from . import scan
from .scan import TODO_PREFIX, TOOL, Site, dotted, literal

RICH = ("log_confusion_matrix", "log_accuracy_table", "log_predictions", "log_residuals")


# ---------------------------------------------------------------- what translate says, at rewrite time

def _first(ops, kind):
    return next(op for op in ops if type(op) is kind)


def text_path(name: str) -> str:
    """The text artifact of log(name, str)."""
    return _first(scan.probe("log", name, "text"), ops_module.AppendText).path


def list_path(name: str) -> str:
    return _first(scan.probe("log_list", name, ["a", 1]), ops_module.ExtendList).path


def table_path(name: str) -> str:
    return _first(scan.probe("log_row", name, c=1), ops_module.AppendTable).path


def suffix(method: str) -> str:
    """'.txt' / '.json': what translate appends to a name for this kind of artifact."""
    probe_name = "NAMEPROBE"
    path = {"text": text_path, "list": list_path, "table": table_path}[method](probe_name)
    return path[len(probe_name):]


def column_key(name: str, col: str) -> str:
    """The metric key of a numeric table column."""
    return _first(scan.probe("log_row", name, **{col: 1.0}), ops_module.Metric).key


def column_separator() -> str:
    key = column_key("NAMEPROBE", "COLPROBE")
    return key[len("NAMEPROBE"):-len("COLPROBE")]


def image_artifact(name: str, path: str) -> str:
    return _first(scan.probe("log_image", name, path=path), ops_module.ArtifactFile).path


def rich_paths(method: str, name: str) -> tuple[str, str | None]:
    ops = scan.probe(method, name, {"a": 1})
    charts = [op.path for op in ops if type(op) is ops_module.Chart]
    return _first(ops, ops_module.Artifact).path, (charts[0] if charts else None)


def status(method: str, *args) -> str:
    return _first(scan.probe(method, *args), ops_module.End).status


def error_tags(**kwargs) -> list[str]:
    return [op.key for op in scan.probe("fail", **kwargs) if type(op) is ops_module.Tag]


def property_tag(method: str) -> str:
    return _first(scan.probe(method, "x"), ops_module.Tag).key


def children_tag_key() -> str:
    ops = scan.probe("create_children", count=1, result=[object()])
    return next(iter(ops[0].tags))


# ---------------------------------------------------------------- the rewrite context

QUOTE = contextvars.ContextVar("quote", default='"')  # the quote the file being rewritten uses most


def q(value: str) -> str:
    """A string literal in the file's own quote style."""
    text = repr(value)
    if QUOTE.get() == '"' and text.startswith("'") and '"' not in value:
        text = '"' + text[1:-1].replace("\\'", "'") + '"'
    return text


def prefer_quote(source: str) -> str:
    doubles = len(re.findall(r'(?<![\w\\])"', source))
    singles = len(re.findall(r"(?<![\w\\])'", source))
    return "'" if singles > doubles else '"'


class Todo(Exception):
    """This call has no faithful native form: leave it and say why."""


@dataclass
class Change:
    site: Site
    kind: str      # rewritten | partial | todo | kept (stays on Azure ML v1, served by the bridge)
    message: str = ""

    @property
    def where(self) -> str:
        return self.site.where


def _simple(node) -> bool:
    """An expression that can be written twice without running anything twice."""
    if isinstance(node, (cst.Name, cst.Integer, cst.Float, cst.SimpleString, cst.ConcatenatedString)):
        return True
    if isinstance(node, cst.Attribute):
        return _simple(node.value)
    if isinstance(node, cst.FormattedString):
        return all(isinstance(p, cst.FormattedStringText) or _simple(p.expression) for p in node.parts)
    if isinstance(node, cst.Subscript):
        return _simple(node.value) and all(
            isinstance(e.slice, cst.Index) and _simple(e.slice.value) for e in node.slice)
    if isinstance(node, cst.UnaryOperation):
        return _simple(node.expression)
    if isinstance(node, (cst.List, cst.Tuple, cst.Dict)):
        return is_literal(node)
    return False


def is_literal(node) -> bool:
    return scan.is_literal(node)


class Emit:
    """Builds the replacement of one call site as code text."""

    def __init__(self, rewriter: "Rewriter", site: Site, args: dict, columns: dict, splats: list):
        self.rw, self.site = rewriter, site
        self.args, self.columns, self.splats = args, columns, splats  # updated cst nodes
        self.pre: list[str] = []
        self.hoisted: dict[str, str] = {}
        self.run = site.route  # code of the run to name, or None: the active run
        self.note = ""

    # code pieces
    def code(self, node) -> str:
        return self.rw.code(node)

    def arg(self, name: str, *, twice=False) -> str:
        """The code of a v1 argument; one written twice that computes something is computed
        once, first, into a variable."""
        if name in self.hoisted:
            return self.hoisted[name]
        node = self.args[name]
        text = self.code(node)
        if twice and not _simple(node):
            tmp = self.rw.temp(name if name.isidentifier() else "value")
            self.pre.append(f"{tmp} = {text}")
            self.hoisted[name] = tmp
            return tmp
        return text

    def helper(self, name: str) -> str:
        self.rw.need_helper(name)
        return name

    @property
    def run_id(self) -> str:
        """`, run_id=run.info.run_id` when the call names its run."""
        return f", run_id={self.run}.info.run_id" if self.run else ""

    @property
    def hrun(self) -> str:
        return f", {self.run}" if self.run else ""

    def client(self, method: str, rest: str) -> str:
        return f"mlflow.MlflowClient().{method}({self.run}.info.run_id, {rest})"

    def literal_str(self, name: str):
        try:
            value = literal(self.site.args[name])
        except Exception:
            return None
        return value if isinstance(value, str) else None

    def key(self) -> str:
        """The metric key: translate's MLflow key for a literal name, else the expression."""
        value = self.literal_str("name")
        if value is not None:
            return q(translate.mlflow_key(value))
        return self.arg("name", twice=True)

    def artifact(self, suffix_: str = "") -> str:
        """An artifact path built from the name: translate's artifact_name for a literal name."""
        value = self.literal_str("name")
        if value is not None:
            return q(translate.artifact_name(value) + suffix_)
        name = self.arg("name", twice=True)
        return f"{name} + {q(suffix_)}" if suffix_ else name

    def result(self, lines: list[str]) -> list[str]:
        return self.pre + lines


# ---------------------------------------------------------------- one rule per v1 method

def rule_log(e: Emit) -> list[str]:
    kind = e.site.types.get("value")
    if kind == "list" and _numeric_list(e.site) is not None:
        return rule_log_list(e)
    if kind == "str":
        path = e.artifact(suffix("text"))
        value = e.arg("value", twice=False)
        if e.site.once:
            node = e.site.args["value"]
            if is_literal(node):
                text = q(literal(node) + "\n")
            elif isinstance(node, cst.FormattedString) and "r" not in node.start.lower() \
                    and len(node.end) == 1:
                text = value[:-1] + "\\n" + value[-1]  # f"...{x}" -> f"...{x}\n"
            else:
                text = f'{value} + "\\n"'
            return e.result([f"mlflow.log_text({text}, {path}{e.run_id})"])
        return e.result([f"mlflow.log_text({e.helper('_v1_text')}({path}, {value}{e.hrun}), {path}{e.run_id})"])
    if kind not in ("number", "bool") and not _numeric_literal(e.site.args.get("value")):
        return rule_log_any(e)
    key = e.key()
    value = e.arg("value")
    if "step" in e.args:
        step = f", step={e.arg('step')}"
    elif e.site.once:
        step = ""
    else:
        step = f", step={e.helper('_v1_step')}({key}{e.hrun})"
    return e.result([f"mlflow.log_metric({key}, {value}{step}{e.run_id})"])


def _numeric_literal(node) -> bool:
    try:
        return translate.to_number(literal(node)) is not None
    except Exception:
        return False


def rule_log_any(e: Emit) -> list[str]:
    """run.log of a value not provably a number (an argparse value, a parameter, a call): what it
    becomes is decided at run time, as the bridge decides it (number: metric; list: points or a
    JSON list; anything else: a line of the text artifact)."""
    key = e.key()
    text, listed = e.artifact(suffix("text")), e.artifact(suffix("list"))
    step = f", step={e.arg('step')}" if "step" in e.args else ""
    run = f", run={e.run}" if e.run else ""
    return e.result([f"{e.helper('_v1_log')}({key}, {e.arg('value')}, {text}, {listed}{step}{run})"])


def _numeric_list(site: Site) -> bool | None:
    try:
        values = literal(site.args["value"])
    except Exception:
        return None
    return all(translate.to_number(v) is not None for v in values)


def rule_log_list(e: Emit) -> list[str]:
    numeric = _numeric_list(e.site)
    values = e.arg("value")
    if numeric is None:  # numbers or not: known at run time
        key, listed = e.key(), e.artifact(suffix("list"))
        run = f", run={e.run}" if e.run else ""
        return e.result([f"{e.helper('_v1_log_list')}({key}, {values}, {listed}{run})"])
    if numeric is False:
        path = e.artifact(suffix("list"))
        return e.result([f"mlflow.log_text({e.helper('_v1_list')}({path}, {values}{e.hrun}), {path}{e.run_id})"])
    key = e.key()
    v = e.rw.temp("value")
    if e.site.once:
        s = e.rw.temp("step")
        return e.result([f"for {s}, {v} in enumerate({values}):\n"
                         f"    mlflow.log_metric({key}, {v}, step={s}{e.run_id})"])
    return e.result([f"for {v} in {values}:\n"
                     f"    mlflow.log_metric({key}, {v}, step={e.helper('_v1_step')}({key}{e.hrun}){e.run_id})"])


def _table_name(e: Emit) -> tuple[str, str]:
    """(name code for the row counter and metric keys, path code of the JSON table)."""
    value = e.literal_str("name")
    if value is not None:
        return q(value), q(table_path(value))
    name = e.arg("name", twice=True)
    return name, f"{name} + {q(suffix('table'))}"


def _unknown_column(site: Site, col: str) -> bool:
    """A log_row value neither a literal nor of a known type: a number or not only at run time."""
    return site.types.get(col) is None and not is_literal(site.columns[col])


def rule_log_row(e: Emit) -> list[str]:
    name, path = _table_name(e)
    if not e.splats and any(_unknown_column(e.site, col) for col in e.site.columns):
        # which cells are numbers (metrics) is decided at run time, as the bridge decides it
        parts = [f"{q(col)}: [{e.code(v)}]" for col, v in e.columns.items()]
        table = e.rw.temp("row")
        e.pre.append(f"{table} = {{{', '.join(parts)}}}")
        return _table_lines(e, name, path, table)
    if e.splats:
        parts = [f"{k}={e.code(v)}" for k, v in e.columns.items()] + [f"**{e.code(s)}" for s in e.splats]
        table = e.rw.temp("row")
        e.pre.append(f"{table} = {{k: [v] for k, v in dict({', '.join(parts)}).items()}}")
        return _table_lines(e, name, path, table)
    literal_name = e.literal_str("name")
    numeric, cells = [], []
    values = {}
    for col, node in e.columns.items():  # a value written twice is computed once, first
        if _simple(node):
            values[col] = e.code(node)
        else:
            values[col] = e.rw.temp(col if col.isidentifier() else "value")
            e.pre.append(f"{values[col]} = {e.code(node)}")
    for col, node in e.site.columns.items():
        kind = e.site.types.get(col)
        cells.append(f"{q(col)}: [{values[col]}]")
        if is_literal(node):
            if translate.to_number(literal(node)) is None:
                continue
        elif kind in ("str", "list", "dict", "none"):
            continue
        if literal_name is not None:
            key = q(translate.mlflow_key(column_key(literal_name, col)))
        else:
            key = f"{name} + {q(column_separator() + col)}"
        numeric.append(f"{key}: {values[col]}")
    lines = []
    step = f"{e.helper('_v1_row')}({name}{e.hrun})"
    if numeric:
        lines.append(f"mlflow.log_metrics({{{', '.join(numeric)}}}, step={step}{e.run_id})")
    else:
        lines.append(f"{step}  # the row counter v1 kept")
    lines.append(f"{e.helper('_v1_log_table')}({path}, {{{', '.join(cells)}}}{e.hrun})")
    return e.result(lines)


def _table_lines(e: Emit, name: str, path: str, table: str) -> list[str]:
    s, m = e.rw.temp("step"), e.rw.temp("metrics")
    return e.result([
        f"for {s}, {m} in {e.helper('_v1_table_metrics')}({name}, {table}{e.hrun}):\n"
        f"    mlflow.log_metrics({m}, step={s}{e.run_id})",
        f"{e.helper('_v1_log_table')}({path}, {table}{e.hrun})",
    ])


def rule_log_table(e: Emit) -> list[str]:
    if e.site.types.get("value") in ("str", "list", "number", "bool", "none"):
        raise Todo("log_table of something that is not a dict: the bridge keeps it as JSON; "
                   "no table to rewrite")
    name, path = _table_name(e)
    return _table_lines(e, name, path, e.arg("value", twice=True))


def rule_log_image(e: Emit) -> list[str]:
    site = e.site
    if scan.given(site, "plot"):
        name = e.literal_str("name")
        key = q(translate.mlflow_key(name)) if name is not None else e.arg("name", twice=True)
        image = f"{e.helper('_v1_figure')}({e.arg('plot')})"
        step = "0" if site.once else f"{e.helper('_v1_image_step')}({key}{e.hrun})"
        if e.run:
            return e.result([e.client("log_image", f"{image}, key={key}, step={step}, synchronous=True")])
        return e.result([f"mlflow.log_image({image}, key={key}, step={step}, synchronous=True)"])
    if not scan.given(site, "path"):
        raise Todo("log_image without path= or plot=: the bridge records nothing")
    name = e.literal_str("name")
    path_value = e.literal_str("path") if "path" in site.args else None
    if site.once and name is not None and path_value is not None:
        artifact = image_artifact(name, path_value)
        if artifact == posixpath.basename(path_value.replace("\\", "/")):
            return e.result([f"mlflow.log_artifact({e.arg('path')}{e.run_id})"])
        return e.result([f"{e.helper('_v1_upload')}({q(artifact)}, {e.arg('path')}{e.hrun})"])
    if name is not None and path_value is not None:
        stem, ext = posixpath.splitext(image_artifact(name, path_value))
        numbered = f"{e.helper('_v1_numbered')}({q(stem)}, {q(ext)}{e.hrun})"
        return e.result([f"{e.helper('_v1_upload')}({numbered}, {e.arg('path')}{e.hrun})"])
    path = e.arg("path", twice=True)
    name_code = q(translate.artifact_name(name)) if name is not None else e.arg("name")
    return e.result([f"{e.helper('_v1_upload')}({e.helper('_v1_image_name')}({name_code}, {path}{e.hrun}), "
                     f"{path}{e.hrun})"])


def rule_rich(e: Emit) -> list[str]:
    name = e.literal_str("name")
    value = e.arg("value")
    if name is not None:
        json_path, chart = rich_paths(e.site.method, name)
        path = q(json_path) if e.site.once else \
            f"{e.helper('_v1_numbered')}({q(translate.artifact_name(name))}, {q('.json')}{e.hrun})"
    else:
        json_path, chart = rich_paths(e.site.method, "NAMEPROBE")
        ext = json_path[len("NAMEPROBE"):]
        path = f"{e.helper('_v1_numbered')}({e.arg('name')}, {q(ext)}{e.hrun})"
    if chart is not None:
        shown = chart.replace("NAMEPROBE", "<name>")
        e.note = (f"the bridge also draws {shown} from this JSON; MLflow has no built-in chart for it "
                  f"(draw one and mlflow.log_figure it if you need the picture)")
    return e.result([f"mlflow.log_text({e.helper('_v1_json')}({value}), {path}{e.run_id})"])


def _tag_line(e: Emit, key: str, value: str) -> str:
    if e.run:
        return e.client("set_tag", f"{key}, {value}")
    return f"mlflow.set_tag({key}, {value})"


def rule_tag(e: Emit) -> list[str]:
    key = e.literal_str("key")
    key = q(translate.mlflow_key(key)) if key is not None else e.arg("key")
    node = e.site.args.get("value")
    value = '""' if node is None or (is_literal(node) and literal(node) is None) else e.arg("value")
    return e.result([_tag_line(e, key, value)])


def rule_set_tags(e: Emit) -> list[str]:
    kind = e.site.types.get("tags")
    tags = e.arg("tags")
    if kind == "str":
        return e.result([_tag_line(e, tags, '""')])
    if kind == "list":
        tags = f'dict.fromkeys({tags}, "")'
    if e.run:
        return e.result([f"mlflow.MlflowClient().log_batch({e.run}.info.run_id, tags=["
                         f"mlflow.entities.RunTag(k, str(v)) for k, v in {tags}.items()])"])
    return e.result([f"mlflow.set_tags({tags})"])


def rule_add_properties(e: Emit) -> list[str]:
    return e.result([f"mlflow.log_params({e.arg('properties')}{e.run_id})"])


def _upload(e: Emit, name_node, path_node, name_code: str, path_code: str) -> str:
    try:
        name, path = literal(name_node), literal(path_node)
    except Exception:
        name = path = None
    if isinstance(name, str) and isinstance(path, str):
        artifact = translate.artifact_name(name)
        if posixpath.basename(artifact) == posixpath.basename(path.replace("\\", "/")) and os.sep == "/":
            folder = posixpath.dirname(artifact)
            folder = f", {q(folder)}" if folder else ""
            return f"mlflow.log_artifact({path_code}{folder}{e.run_id})"
        return f"{e.helper('_v1_upload')}({q(artifact)}, {path_code}{e.hrun})"
    return f"{e.helper('_v1_upload')}({name_code}, {path_code}{e.hrun})"


def rule_upload_file(e: Emit) -> list[str]:
    return e.result([_upload(e, e.site.args["name"], e.site.args["path_or_stream"],
                             e.arg("name"), e.arg("path_or_stream"))])


def rule_upload_files(e: Emit) -> list[str]:
    names_param = "names" if "names" in e.site.args else "name"
    names_node, paths_node = e.site.args.get(names_param), e.site.args.get("paths")
    if names_node is None or paths_node is None:
        raise Todo("upload_files without names and paths")
    if isinstance(names_node, (cst.List, cst.Tuple)) and isinstance(paths_node, (cst.List, cst.Tuple)) \
            and len(names_node.elements) == len(paths_node.elements):
        return e.result([_upload(e, n.value, p.value, e.code(n.value), e.code(p.value))
                         for n, p in zip(names_node.elements, paths_node.elements)])
    n, p = e.rw.temp("name"), e.rw.temp("path")
    return e.result([f"for {n}, {p} in zip({e.arg(names_param)}, {e.arg('paths')}):\n"
                     f"    {e.helper('_v1_upload')}({n}, {p}{e.hrun})"])


def rule_upload_folder(e: Emit) -> list[str]:
    name = e.literal_str("name")
    name = q(translate.artifact_name(name)) if name is not None else e.arg("name")
    return e.result([f"mlflow.log_artifacts({e.arg('path')}, {name}{e.run_id})"])


def _end(e: Emit, status_: str) -> str:
    if e.run:
        return f"{e.helper('_v1_end')}({e.run}, {q(status_)})"
    return "mlflow.end_run()" if status_ == "FINISHED" else f"mlflow.end_run({q(status_)})"


def rule_complete(e: Emit) -> list[str]:
    return e.result([_end(e, status("complete"))])


def rule_cancel(e: Emit) -> list[str]:
    return e.result([_end(e, status("cancel"))])


def rule_fail(e: Emit) -> list[str]:
    lines = []
    keys = dict(zip(("error_details", "error_code"), error_tags(error_details="d", error_code="c")))
    for param, key in keys.items():
        node = e.site.args.get(param)
        if node is not None and not (is_literal(node) and literal(node) is None):
            lines.append(_tag_line(e, q(key), e.arg(param)))
    return e.result(lines + [_end(e, status("fail"))])


def rule_flush(e: Emit) -> list[str]:
    # translate: nothing to write. MLflow's own wait for what it logs in the background:
    return e.result(["mlflow.flush_async_logging()"])


def rule_child_run(e: Emit) -> str:
    parent = e.site.receiver
    parent_code = e.code(parent)
    name = f"run_name={e.arg('name')}, " if "name" in e.args else ""
    if e.site.extra.get("client"):
        return (f"mlflow.MlflowClient().create_run({parent_code}.info.experiment_id, {name}"
                f"tags={{{q('mlflow.parentRunId')}: {parent_code}.info.run_id}})")
    return f"mlflow.start_run({name}nested=True)"


def rule_create_children(e: Emit) -> str:
    parent = e.code(e.site.receiver)
    if "tag_key" in e.args:
        key, values = e.arg("tag_key"), e.arg("tag_values")
        v = e.rw.temp("value")
        tag = f"{key}: str({v})"
        loop = f"for {v} in {values}"
    elif "count" in e.args:
        i = e.rw.temp("i")
        tag = f"{q(children_tag_key())}: str({i})"
        loop = f"for {i} in range({e.arg('count')})"
    else:
        raise Todo("create_children without count or tag_key/tag_values")
    return (f"[mlflow.MlflowClient().create_run({parent}.info.experiment_id, "
            f"tags={{{q('mlflow.parentRunId')}: {parent}.info.run_id, {tag}}}) {loop}]")


def rule_start_logging(e: Emit) -> str:
    name = e.site.extra.get("experiment")
    experiment = e.rw.code(name) if name is not None else f"{e.code(e.site.receiver)}.name"
    run_name = ""
    for key in ("display_name", "name"):
        node = e.rw.keyword(e.site.node, key)
        if node is not None:
            run_name = f", run_name={e.code(node)}"
            break
    return f"mlflow.start_run(experiment_id=mlflow.set_experiment({experiment}).experiment_id{run_name})"


def rule_with(e: Emit):
    """`with run:` / `with run.child_run() as c:` stay: an MLflow run is a context manager that
    ends FINISHED, or FAILED on an exception, as translate's __enter__/__exit__ say."""
    if e.site.extra.get("client_run"):
        raise Todo("`with` on a run of create_children(): MLflow runs made by MlflowClient are not "
                   "context managers; end it with MlflowClient().set_terminated(run.info.run_id)")
    return None


def rule_property(e: Emit) -> list[str]:
    key = property_tag(e.site.method)
    return e.result([_tag_line(e, q(key), e.arg("value"))])


# v1 method -> rewrite rule. Keyed exactly like translate.TRANSLATORS (tests/test_migrate.py checks):
# a method the bridge learns without a rule here fails the suite.
RULES = {
    "log": rule_log,
    "log_list": rule_log_list,
    "log_row": rule_log_row,
    "log_table": rule_log_table,
    "log_image": rule_log_image,
    "log_confusion_matrix": rule_rich,
    "log_accuracy_table": rule_rich,
    "log_predictions": rule_rich,
    "log_residuals": rule_rich,
    "tag": rule_tag,
    "set_tags": rule_set_tags,
    "add_properties": rule_add_properties,
    "upload_file": rule_upload_file,
    "upload_files": rule_upload_files,
    "upload_folder": rule_upload_folder,
    "complete": rule_complete,
    "fail": rule_fail,
    "cancel": rule_cancel,
    "flush": rule_flush,
    "child_run": rule_child_run,
    "create_children": rule_create_children,
    "__enter__": rule_with,
    "__exit__": rule_with,
    "start_logging": rule_start_logging,
    "display_name": rule_property,
    "description": rule_property,
}
EXPRESSION_RULES = frozenset(("child_run", "create_children", "start_logging"))


# run.register_model: not a logging call (no translator), but it has a native form.
def _v1_register_model(model_name, model_path=None, tags=None, properties=None, model_framework=None,
                       model_framework_version=None, description=None, datasets=None,
                       sample_input_dataset=None, sample_output_dataset=None, resource_configuration=None,
                       **kwargs):
    """v1's Run.register_model signature."""


def is_register_model(site: Site) -> bool:
    return site.method == "register_model" and site.kind == "unmapped"


def register_model_code(rw: "Rewriter", site: Site, call: cst.Call) -> str:
    """run.register_model(name, path, tags=, properties=) -> mlflow.register_model on the run's
    artifacts at path (v1 registered the run's uploaded file too); v1 properties become tags."""
    positional, keywords = [], {}
    for arg in call.args:
        if arg.star:
            raise Todo("register_model() arguments passed with * or **: rewrite by hand")
        if arg.keyword is not None:
            keywords[arg.keyword.value] = arg.value
        else:
            positional.append(arg.value)
    try:
        bound = inspect.signature(_v1_register_model).bind(*positional, **keywords).arguments
    except TypeError as exc:
        raise Todo(f"arguments do not fit v1's register_model(): {exc}") from None
    name = bound["model_name"]
    path = bound.get("model_path")
    if path is None:
        if not _simple(name):
            raise Todo("register_model(name) without model_path: the name is also the path; "
                       "rewrite by hand")
        path = name
    run = site.route or "mlflow.active_run()"
    try:
        path_value = literal(path)
    except Exception:
        path_value = None
    if isinstance(path_value, str):
        relative = path_value.replace("\\", "/")
        while relative.startswith("./"):
            relative = relative[2:]
        uri = f"{run}.info.artifact_uri + {q('/' + relative.strip('/'))}"
    else:
        uri = f"{run}.info.artifact_uri + \"/\" + str({rw.code(path)})"
    args = [uri, rw.code(name)]
    tags = [rw.code(bound[k]) for k in ("tags", "properties") if bound.get(k) is not None]
    if len(tags) == 2:
        args.append(f"tags={{**{tags[0]}, **{tags[1]}}}")
    elif tags:
        args.append(f"tags={tags[0]}")
    rest = [k for k in bound if k not in ("model_name", "model_path", "tags", "properties")]
    if rest:
        rw.todo(site, f"register_model's {', '.join(rest)}: mlflow.register_model has no such argument "
                      "(a description: MlflowClient().update_model_version(name, version, description=...))",
                kind="partial")
    return f"mlflow.register_model({', '.join(args)})"


def check_rules() -> None:
    missing = set(translate.TRANSLATORS) - set(RULES)
    extra = set(RULES) - set(translate.TRANSLATORS)
    if missing or extra:
        raise RuntimeError(f"migrate.RULES and translate.TRANSLATORS differ: missing {sorted(missing)}, "
                           f"extra {sorted(extra)}")


# ---------------------------------------------------------------- the transformer

RUNTIME_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrate_runtime.py")


def _runtime():
    """(sources, HELPERS) of migrate_runtime.py, read as text: migrating never imports MLflow."""
    cached = getattr(_runtime, "cached", None)
    if cached is not None:
        return cached
    with open(RUNTIME_PATH, encoding="utf-8") as fh:
        module = cst.parse_module(fh.read())
    sources, helpers = {}, {}
    for stmt in module.body:
        if isinstance(stmt, cst.FunctionDef):
            sources[stmt.name.value] = module.code_for_node(stmt.with_changes(leading_lines=[]))
        elif isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Assign):
            target = dotted(stmt.body[0].targets[0].target)
            if target and target.startswith("_V1_"):
                sources[target] = module.code_for_node(stmt.with_changes(leading_lines=[]))
            elif target == "HELPERS":
                import ast

                helpers = ast.literal_eval(module.code_for_node(stmt.body[0].value))
    _runtime.cached = (sources, helpers)
    return _runtime.cached


HELPER_HEADER = ("# azml-v1-bridge: what Azure ML v1 kept per run (steps, rows, repeated names), "
                 "spelled out for MLflow")


class Rewriter(cst.CSTTransformer):
    def __init__(self, plan: "Plan", unit):
        super().__init__()
        self.plan, self.unit = plan, unit
        self.sites = {s.node: s for s in plan.sites if s.unit is unit}
        self.todos: dict = {}
        self.before: dict = {}  # statement -> lines to put before it

    # shared with Emit
    def code(self, node) -> str:
        return self.unit.module.code_for_node(node) if node is not None else "None"

    def temp(self, base: str) -> str:
        return self.plan.temp(base)

    def need_helper(self, name: str) -> None:
        self.plan.need_helper(name)

    @staticmethod
    def keyword(call, name):
        for arg in call.args:
            if arg.keyword is not None and arg.keyword.value == name:
                return arg.value
        return None

    def todo(self, site: Site, why: str, kind="todo") -> None:
        self.plan.changes.append(Change(site, kind, why))
        if site.stmt is not None:
            self.todos.setdefault(site.stmt, []).append(why)

    # -- the rewrite of one site
    def emit(self, site: Site, updated_call) -> list[str] | str | None:
        args = dict(site.args)
        columns = dict(site.columns)
        splats = list(site.splats)
        if updated_call is not None and isinstance(updated_call, cst.Call):
            # the same arguments after inner rewrites (positions line up one to one)
            mapping = {id(o.value): u.value for o, u in zip(site.node.args, updated_call.args)}
            args = {k: mapping.get(id(v), v) for k, v in args.items()}
            columns = {k: mapping.get(id(v), v) for k, v in columns.items()}
            splats = [mapping.get(id(v), v) for v in splats]
        e = Emit(self, site, args, columns, splats)
        rule = RULES[site.method] if site.kind != "with" else rule_with
        out = rule(e)
        if e.note:
            self.todo(site, e.note, kind="partial")
        return out

    def leave_Call(self, original: cst.Call, updated: cst.Call):
        site = self.sites.get(original)
        if site is not None and is_register_model(site):
            try:
                code = register_model_code(self, site, updated)
            except Todo as why:
                self.todo(site, str(why))
                return updated
            self.plan.need_mlflow = True
            self.plan.changes.append(Change(site, "rewritten"))
            return cst.parse_expression(code)
        if site is None or not site.mapped:
            return updated
        if site.method == "get_context" and site.extra.get("keep"):
            # MLflow's run first, then v1's: the bridge adopts the active MLflow run, and in an
            # Azure ML job both are the job's run
            self.todo(site, site.extra["keep"], kind="kept")
            self.plan.v1_left = self.plan.need_mlflow = True
            start = "mlflow.active_run() or mlflow.start_run()" if site.extra.get("repeat") else "mlflow.start_run()"
            if site.stmt is not None:
                self.before.setdefault(site.stmt, []).append(start)
            return updated
        if site.method == "get_context":
            self.plan.changes.append(Change(site, "rewritten"))
            code = "mlflow.active_run() or mlflow.start_run()" if site.extra.get("repeat") else "mlflow.start_run()"
            self.plan.need_mlflow = True
            if site.extra.get("repeat"):
                return cst.parse_expression(f"({code})")
            return cst.parse_expression(code)
        if site.method not in EXPRESSION_RULES:
            if site.kind == "call" and not site.extra.get("statement"):
                self.todo(site, f"run.{site.method}() is used as a value here (in v1 it returns "
                                f"{'None' if site.method not in ('child_run', 'create_children') else 'runs'}); "
                                "its MLflow form is one or more statements: rewrite by hand")
            return updated
        try:
            code = self.emit(site, updated)
        except Todo as why:
            self.todo(site, str(why))
            return updated
        self.plan.need_mlflow = True
        self.plan.changes.append(Change(site, "rewritten"))
        return cst.parse_expression(code)

    def _statement_site(self, small) -> Site | None:
        if isinstance(small, cst.Expr) and isinstance(small.value, cst.Call):
            site = self.sites.get(small.value)
            if site is not None and site.kind == "call" and site.method not in EXPRESSION_RULES:
                return site
        if isinstance(small, cst.Assign):
            site = self.sites.get(small)
            if site is not None and site.kind == "property":
                return site
        return None

    def _rewrite_small(self, original_small, updated_small) -> list[str] | None:
        site = self._statement_site(original_small)
        if site is None or not site.mapped:
            return None
        try:
            call = updated_small.value if isinstance(updated_small, cst.Expr) else None
            lines = self.emit(site, call)
        except Todo as why:
            self.todo(site, str(why))
            return None
        self.plan.need_mlflow = True
        self.plan.changes.append(Change(site, "rewritten"))
        return lines

    def leave_SimpleStatementLine(self, original, updated):
        out = self._leave_line(original, updated)
        if original not in self.before:
            return out
        lines = [cst.parse_statement(line + "\n") for line in self.before[original]]
        rest = list(out.nodes) if isinstance(out, cst.FlattenSentinel) else [out]
        lines[0] = lines[0].with_changes(leading_lines=rest[0].leading_lines)
        rest[0] = rest[0].with_changes(leading_lines=[])
        return cst.FlattenSentinel(lines + rest)

    def _leave_line(self, original, updated):
        pieces, changed = [], False
        for o, u in zip(original.body, updated.body):
            lines = self._rewrite_small(o, u)
            if lines is None:
                pieces.append(u)
            else:
                changed = True
                pieces.extend(cst.parse_module(line + "\n").body[0] for line in lines)
        if not changed:
            return self._with_todos(original, updated)
        # one statement per line; the line's comments stay on the first and last line
        out, run = [], []
        for piece in pieces:
            if isinstance(piece, cst.BaseSmallStatement):
                run.append(piece.with_changes(semicolon=cst.MaybeSentinel.DEFAULT))
            else:
                if run:
                    out.append(cst.SimpleStatementLine(body=run))
                    run = []
                out.append(piece)
        if run:
            out.append(cst.SimpleStatementLine(body=run))
        out[0] = out[0].with_changes(leading_lines=self._todo_lines(original, updated.leading_lines))
        last = out[-1]
        if isinstance(last, cst.SimpleStatementLine):
            out[-1] = last.with_changes(trailing_whitespace=updated.trailing_whitespace)
        return cst.FlattenSentinel(out)

    def leave_SimpleStatementSuite(self, original, updated):
        pieces, changed, compound = [], False, False
        for o, u in zip(original.body, updated.body):
            lines = self._rewrite_small(o, u)
            if lines is None:
                pieces.append(u)
                continue
            changed = True
            for line in lines:
                stmt = cst.parse_module(line + "\n").body[0]
                if isinstance(stmt, cst.SimpleStatementLine):
                    pieces.extend(stmt.body)
                else:
                    compound = True
                    pieces.append(stmt)
        if not changed:
            return updated
        if not compound and len(pieces) == len(updated.body):  # `if x: run.log(...)` stays one line
            last = len(pieces) - 1
            semicolon = cst.Semicolon(whitespace_after=cst.SimpleWhitespace(" "))
            return updated.with_changes(body=[
                p.with_changes(semicolon=cst.MaybeSentinel.DEFAULT if i == last else semicolon)
                for i, p in enumerate(pieces)])
        body = [p if isinstance(p, cst.BaseCompoundStatement) else cst.SimpleStatementLine(body=[p])
                for p in pieces]
        return cst.IndentedBlock(body=body, header=updated.trailing_whitespace)

    # -- TODO comments
    def _todo_lines(self, original, leading):
        whys = self.todos.get(original, [])
        lines = list(leading)
        present = {line.comment.value for line in lines if line.comment is not None}
        for why in dict.fromkeys(whys):
            text = TODO_PREFIX + why
            if text not in present:
                lines.append(cst.EmptyLine(comment=cst.Comment(text)))
        return lines

    def _with_todos(self, original, updated):
        if original in self.todos and hasattr(updated, "leading_lines"):
            return updated.with_changes(leading_lines=self._todo_lines(original, updated.leading_lines))
        return updated

    def on_leave(self, original, updated):
        result = super().on_leave(original, updated)
        if isinstance(original, cst.BaseCompoundStatement) and original in self.todos \
                and isinstance(result, cst.BaseCompoundStatement):
            return self._with_todos(original, result)
        return result


# ---------------------------------------------------------------- imports and helpers

class _Names(cst.CSTVisitor):
    """Every name used outside import statements."""

    def __init__(self):
        self.names: set = set()
        self.defined: set = set()

    def visit_Import(self, node):
        return False

    def visit_ImportFrom(self, node):
        return False

    def visit_Name(self, node):
        self.names.add(node.value)

    def visit_Arg(self, node):
        node.value.visit(self)  # `f(step=...)`: the keyword is not a name of the file
        return False

    def visit_FunctionDef(self, node):
        self.defined.add(node.name.value)

    def visit_AssignTarget(self, node):
        name = dotted(node.target)
        if name:
            self.defined.add(name)


def _import_names(node) -> list[tuple[str, str]]:
    """(local name, imported module/name) per alias."""
    out = []
    if isinstance(node, cst.Import):
        for alias in node.names:
            full = scan.attribute_name(alias.name)
            local = alias.asname.name.value if alias.asname else full.split(".")[0]
            out.append((local, full))
    elif isinstance(node, cst.ImportFrom) and not isinstance(node.names, cst.ImportStar) and node.module:
        module = scan.attribute_name(node.module)
        for alias in node.names:
            local = alias.asname.name.value if alias.asname else alias.name.value
            out.append((local, f"{module}.{alias.name.value}"))
    return out


def _dropped(full: str, keep_bridge: bool = False) -> bool:
    return full.split(".")[0] in (("azureml",) if keep_bridge else ("azureml", "azml_v1_bridge"))


class _Imports(cst.CSTTransformer):
    """Drop azureml / azml_v1_bridge imports nothing uses any more (keeping the comments above
    them); in the first unit, add the imports and helpers the rewrite needs."""

    def __init__(self, used: set, add: list[str] | None, helpers: list[str], keep_bridge: bool = False):
        super().__init__()
        self.used, self.add, self.helpers = used, add or [], helpers
        self.keep_bridge = keep_bridge  # calls stay on v1: the bridge import serves them

    def _filter(self, node):
        """The import with its unused azureml names dropped; None when nothing is left."""
        if isinstance(node, cst.Import):
            keep = [a for a in node.names if not (_dropped(scan.attribute_name(a.name), self.keep_bridge)
                                                  and _import_names(node.with_changes(names=[a]))[0][0]
                                                  not in self.used)]
        elif isinstance(node, cst.ImportFrom) and node.module and _dropped(scan.attribute_name(node.module),
                                                                            self.keep_bridge) \
                and not isinstance(node.names, cst.ImportStar):
            keep = [a for a in node.names if (a.asname.name.value if a.asname else a.name.value) in self.used]
        else:
            return node
        if not keep:
            return None
        if len(keep) != len(node.names):
            keep[-1] = keep[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            return node.with_changes(names=keep)
        return node

    def _line(self, stmt):
        """The statement with dropped imports removed, or None when it goes entirely."""
        if not (isinstance(stmt, cst.SimpleStatementLine)
                and any(isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body)):
            return stmt
        kept = [k for k in (self._filter(s) for s in stmt.body) if k is not None]
        if not kept:
            return None
        last = len(kept) - 1
        return stmt.with_changes(body=[k.with_changes(semicolon=cst.MaybeSentinel.DEFAULT) if i == last else k
                                       for i, k in enumerate(kept)])

    def _body(self, body, module_level):
        block_end = _leading_block_end(body) if module_level else 0
        new_imports = [cst.parse_statement(line + "\n") for line in self.add] if module_level else []
        if module_level and "import mlflow" in self.add[1:]:  # stdlib, then third party
            i = self.add.index("import mlflow")
            new_imports[i] = new_imports[i].with_changes(leading_lines=[cst.EmptyLine()])
        out, carry, placed = [], [], not new_imports
        for index, stmt in enumerate(body):
            kept = self._line(stmt)
            if kept is None:
                comments = [line for line in stmt.leading_lines if line.comment is not None]
                if not placed and index < block_end:
                    # the first dropped import at the top makes room for `import mlflow`
                    placed = True
                    new_imports[0] = new_imports[0].with_changes(leading_lines=carry + list(stmt.leading_lines))
                    carry = []
                    out.extend(new_imports)
                else:
                    carry.extend(comments)
                continue
            if carry:
                kept = kept.with_changes(leading_lines=carry + list(kept.leading_lines))
                carry = []
            out.append(kept)
        if module_level:
            end = _leading_block_end(out)
            if not placed:
                out[end:end] = new_imports
                end += len(new_imports)
            if self.helpers:
                stmts = list(cst.parse_module("\n".join(self.helpers) + "\n").body)
                stmts = [s.with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])
                         if isinstance(s, cst.FunctionDef) or (i and isinstance(stmts[i - 1], cst.FunctionDef))
                         else s.with_changes(leading_lines=[])
                         for i, s in enumerate(stmts)]
                stmts[0] = stmts[0].with_changes(leading_lines=[cst.EmptyLine()] * (
                    1 if isinstance(stmts[0], cst.SimpleStatementLine) else 2) + [
                    cst.EmptyLine(comment=cst.Comment(HELPER_HEADER))])
                if end < len(out):
                    nxt = out[end]
                    blank = 0
                    for line in nxt.leading_lines:
                        if line.comment is not None:
                            break
                        blank += 1
                    if blank < 2:
                        out[end] = nxt.with_changes(
                            leading_lines=[cst.EmptyLine()] * (2 - blank) + list(nxt.leading_lines))
                out[end:end] = stmts
        return out

    def leave_Module(self, original, updated):
        return updated.with_changes(body=self._body(updated.body, True))

    def leave_IndentedBlock(self, original, updated):
        body = self._body(updated.body, False)
        return updated.with_changes(body=body or [cst.SimpleStatementLine([cst.Pass()])])


def _is_docstring_or_future(stmt) -> bool:
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return False
    small = stmt.body[0]
    if isinstance(small, cst.Expr) and isinstance(small.value, (cst.SimpleString, cst.ConcatenatedString)):
        return True
    return isinstance(small, cst.ImportFrom) and small.module is not None and \
        scan.attribute_name(small.module) == "__future__"


def _leading_block_end(body) -> int:
    """Index after the docstring / __future__ / import statements at the top of a module."""
    end = 0
    for i, stmt in enumerate(body):
        if _is_docstring_or_future(stmt) or (isinstance(stmt, cst.SimpleStatementLine) and all(
                isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body)):
            end = i + 1
            continue
        break
    return end


# ---------------------------------------------------------------- per file

@dataclass
class Plan:
    scan: scan.FileScan
    sites: list
    changes: list = field(default_factory=list)
    helpers: set = field(default_factory=set)
    need_mlflow: bool = False
    v1_left: bool = False   # something stays on Azure ML v1: the bridge import stays

    @property
    def metrics(self) -> bool:
        """Metrics are rewritten: they go out in the background, as in v1."""
        return any(c.kind in ("rewritten", "partial") and c.site.method in METRIC_METHODS for c in self.changes)
    taken: set = field(default_factory=set)
    temps: dict = field(default_factory=dict)

    def temp(self, base: str) -> str:
        """A name for `base` that the file does not use (the same one for every site)."""
        if base not in self.temps:
            name, n = base, 1
            while name in self.taken:
                name = f"_{base}" if n == 1 else f"_{base}{n}"
                n += 1
            self.temps[base] = name
        return self.temps[base]

    def need_helper(self, name: str) -> None:
        if name in self.helpers:
            return
        self.helpers.add(name)
        for dep in _runtime()[1][name][0]:
            self.need_helper(dep)


@dataclass
class FileResult:
    path: str
    old: str
    new: str
    changes: list
    notebook: dict | None = None
    new_notebook: dict | None = None
    cells: list = field(default_factory=list)   # (cell index, old source, new source)
    error: str = ""                               # could not be read or parsed: one line
    scripts: dict = field(default_factory=dict)  # cell index -> the script a %%writefile cell writes

    @property
    def changed(self) -> bool:
        return self.old != self.new

    @property
    def todos(self) -> list:
        return [c for c in self.changes if c.kind != "rewritten"]

    def diff(self) -> str:
        if not self.changed:
            return ""
        if self.notebook is None:
            return "".join(difflib.unified_diff(self.old.splitlines(keepends=True), self.new.splitlines(keepends=True),
                                                f"a/{self.path}", f"b/{self.path}"))
        parts = []
        for index, old, new in self.cells:
            if old != new:
                parts.append("".join(difflib.unified_diff(
                    _lines(old), _lines(new), f"a/{self.path} (cell {index})", f"b/{self.path} (cell {index})")))
        return "".join(parts)


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


def _all_names(units) -> set:
    names = set()
    for unit in units:
        if unit.module is not None:
            v = _Names()
            unit.module.visit(v)
            names |= v.names | v.defined
    return names


# Azure ML calls that are not tracking (workspaces, compute, data sets, environments, submit):
# --tracking-only (migrate's default) leaves them without a TODO.
CONTROL_PLANE = ("outside",)


def migrate_file(path: str, tracking_only: bool = True) -> FileResult:
    """The migrated text of one file (nothing written). A file that cannot be read or parsed
    comes back unchanged with `error` set."""
    check_rules()
    fs = scan.scan_file(path)
    units = fs.units
    if fs.analysis is None:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError):
            text = ""
        return FileResult(path, text, text, [], error=fs.error)
    QUOTE.set(prefer_quote("".join(u.source for u in units)))
    changes, new_texts = [], {}
    for group in fs.groups:
        plan = Plan(fs, [s for s in fs.sites if s.node is not None and s.unit in group], taken=_all_names(group))
        new_texts.update(_migrate_group(plan, group, tracking_only))
        changes += plan.changes
    changes.sort(key=lambda c: (units.index(c.site.unit), c.site.line, c.site.column))
    if fs.notebook is None:
        old = units[0].source
        return FileResult(path, old, new_texts.get(id(units[0]), old), changes, error=fs.error)
    notebook = json.loads(json.dumps(fs.notebook))
    cells = []
    for unit in units:
        if unit.module is None:
            continue
        cell = notebook["cells"][unit.cell]
        before = scan.cell_source(cell)
        after = unit.head + new_texts[id(unit)] if unit.writefile else scan.restore_magics(new_texts[id(unit)])
        if after == unit.head + unit.source:
            after = before  # unchanged, leading blank lines included
        cells.append((unit.cell, before, after))
        if after != before:
            if isinstance(cell.get("source"), list):
                cell["source"] = after.splitlines(keepends=True)
            else:
                cell["source"] = after
    with open(path, encoding="utf-8") as fh:
        old = fh.read()
    new = old if all(b == a for _, b, a in cells) else _dump_notebook(notebook, old)
    return FileResult(path, old, new, changes, fs.notebook, notebook, cells, error=fs.error,
                      scripts={u.cell: u.writefile for u in units if u.writefile})


def _migrate_group(plan: "Plan", units: list, tracking_only: bool) -> dict:
    """New source text per unit (by id) of units that share one namespace."""
    sites = plan.sites
    new_modules = {}
    for unit in units:
        if unit.module is None:
            continue
        rewriter = Rewriter(plan, unit)
        for site in sites:
            if site.unit is not unit:
                continue
            if site.extra.get("v1") and site.kind in ("read", "unmapped"):
                continue  # read from a run that stays v1: it works as before
            if site.extra.get("v1"):
                rewriter.todo(site, site.todo or site.flag, kind="kept")
                plan.v1_left = True
            elif site.kind in CONTROL_PLANE and tracking_only:
                continue
            elif not site.mapped and not is_register_model(site):  # that one: Rewriter.leave_Call
                rewriter.todo(site, site.todo or site.flag)
            elif site.kind == "with":
                try:
                    rewriter.emit(site, None)
                except Todo as why:
                    rewriter.todo(site, str(why))
        new_modules[id(unit)] = unit.wrapper.module.visit(rewriter) if unit.wrapper else unit.module
    # imports: what is still used across every unit (cells share one namespace)
    used: set = set()
    defined: set = set()
    for module in new_modules.values():
        v = _Names()
        module.visit(v)
        used |= v.names
        defined |= v.defined
    if plan.metrics and BACKGROUND not in "".join(u.source for u in units):
        plan.need_helper("_v1_background")
    helpers = [h for h in _runtime()[1] if h in plan.helpers and h not in defined]
    modules_needed = {"mlflow"} if (plan.need_mlflow or helpers) else set()
    for h in helpers:
        modules_needed |= set(_runtime()[1][h][1])
    present = _present_imports(new_modules.values())
    add = sorted(f"import {m}" for m in modules_needed - {"mlflow"} if m not in present)
    if "mlflow" in modules_needed and "mlflow" not in present:
        add.append("import mlflow")
    if plan.v1_left and not any(name.split(".")[0] == "azml_v1_bridge" for name in present):
        add.append(BRIDGE_IMPORT)
    sources = _runtime()[0]
    helper_code = [sources[h] for h in helpers]
    if "_v1_background" in helpers:
        helper_code.append(BACKGROUND)
    first = _first_unit(plan.sites, units)
    new_texts = {}
    for unit in units:
        if unit.module is None:
            continue
        module = new_modules[id(unit)]
        transformer = _Imports(used, add if unit is first else None, helper_code if unit is first else [],
                               keep_bridge=plan.v1_left)
        module = module.visit(transformer)
        new_texts[id(unit)] = module.code
    return new_texts


# v1's run.log returned at once and its client sent metrics in batches from a background thread;
# MLflow does the same once asked (_v1_background). Without it, each point is a round trip to the
# store: a logging loop ran several times slower than under the bridge (benchmarks/bench_migrate.py).
BACKGROUND = "_v1_background()  # as in v1, metrics go out in the background (all sent at exit)"
METRIC_METHODS = ("log", "log_list", "log_row", "log_table")
BRIDGE_IMPORT = "import azml_v1_bridge  # noqa: F401  (serves the calls kept on Azure ML v1)"


def _present_imports(modules) -> set:
    present = set()
    for module in modules:
        for stmt in module.body:
            if isinstance(stmt, cst.SimpleStatementLine):
                for small in stmt.body:
                    if isinstance(small, cst.Import):
                        for alias in small.names:
                            if alias.asname is None:
                                present.add(scan.attribute_name(alias.name))
    return present


def _first_unit(sites, units):
    for site in sites:
        if site.node is not None and site.unit.module is not None:
            return site.unit
    return next((u for u in units if u.module is not None), None)


def _dump_notebook(notebook: dict, old: str) -> str:
    indent = 1
    match = re.match(r'\{\s*\n( +)"', old)
    if match:
        indent = len(match.group(1))
    return json.dumps(notebook, indent=indent, ensure_ascii=False) + ("\n" if old.endswith("\n") else "")


def migrate_paths(paths, tracking_only: bool = True) -> list[FileResult]:
    """Every file under `paths`; one that cannot be read or parsed has `error` set, the rest go on."""
    results = []
    for path in scan.iter_files(paths):
        try:
            results.append(migrate_file(path, tracking_only=tracking_only))
        except Exception as exc:  # a rewrite this tool could not make: one line, the rest goes on
            results.append(FileResult(path, "", "", [], error=f"could not migrate: {type(exc).__name__}: {exc}"))
    return results


# ---------------------------------------------------------------- --check: the proof

SYSTEM_TAG_PREFIXES = ("mlflow.", "azml_v1_bridge.")
# The bridge's own artifacts (its report); values it moved out of long tags and params are data.
SYSTEM_ARTIFACT_PREFIX = "azml_v1_bridge/"
DATA_ARTIFACT_PREFIX = translate.LONG_VALUES_DIR + "/"
SYSTEM_TAGS = frozenset((translate.V1_RUN_ID_TAG,))
USER_MLFLOW_TAGS = frozenset(("mlflow.note.content",))
GENERATED_NAME = re.compile(r"^[a-z]+-[a-z]+-\d+$")
IMAGE_SERIES = re.compile(r"^(?P<key>.+)\+step\+(?P<step>\d+)\+timestamp\+\d+\+[0-9a-f-]+(?P<rest>(\+compressed)?\.\w+)$")
BOOT = ("import runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, __import__('os').path.dirname("
        "__import__('os').path.abspath(sys.argv[0]))); import azml_v1_bridge; "
        "runpy.run_path(sys.argv[0], run_name='__main__')")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def system_tag(key: str) -> bool:
    if key in USER_MLFLOW_TAGS:
        return False
    return key in SYSTEM_TAGS or key.startswith(SYSTEM_TAG_PREFIXES)


def _normal_artifact(path: str) -> str:
    head, _, base = path.rpartition("/")
    m = IMAGE_SERIES.match(base)
    if m and head.startswith("images"):
        return f"{head}/{m.group('key')}+step+{m.group('step')}{m.group('rest')}"
    return path


def read_record(uri: str, workdir: str) -> list[dict]:
    """Every run of a store as plain data, nested under its parent. No progress bars in
    --check's output while it reads; the caller's setting is back afterwards (the notebook
    tests' processes inherited "false" from a pytest worker that had run a --check)."""
    from azml_v1_bridge import config

    with config.quiet_progress_bars():  # threads of --check read at once: one setting for all
        return _read_record(uri, workdir)


def _read_record(uri: str, workdir: str) -> list[dict]:
    from mlflow.artifacts import download_artifacts
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "no artifacts found to download" per run
    client = MlflowClient(uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ALL)}
    runs = client.search_runs(list(experiments), run_view_type=ViewType.ALL, max_results=50000) if experiments else []
    records = {}
    for run in runs:
        rid = run.info.run_id
        metrics = {}
        for key in run.data.metrics:
            points = client.get_metric_history(rid, key)
            metrics[key] = sorted((int(p.step), float(p.value)) for p in points)
        artifacts = {}
        root = download_artifacts(run_id=rid, dst_path=os.path.join(workdir, rid), tracking_uri=uri)
        for folder, _, files in os.walk(root):
            for name in files:
                full = os.path.join(folder, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                if rel.startswith(SYSTEM_ARTIFACT_PREFIX) and not rel.startswith(DATA_ARTIFACT_PREFIX):
                    continue
                with open(full, "rb") as fh:
                    artifacts[_normal_artifact(rel)] = fh.read()
        records[rid] = {
            "id": rid, "name": run.info.run_name, "status": run.info.status,
            "experiment": experiments.get(run.info.experiment_id), "start": run.info.start_time,
            "parent": run.data.tags.get("mlflow.parentRunId"),
            "metrics": metrics, "params": dict(run.data.params),
            "tags": {k: v for k, v in run.data.tags.items() if not system_tag(k)},
            "artifacts": artifacts, "children": [],
        }
    roots = []
    for rec in sorted(records.values(), key=_run_order):
        parent = records.get(rec["parent"]) if rec["parent"] else None
        (parent["children"] if parent is not None else roots).append(rec)
    return roots


def _run_order(rec: dict):
    """Runs in the order they were made; runs made in the same millisecond (a list of children)
    in the order of what they hold, which is the same on both sides when the records are equal."""
    name = "" if GENERATED_NAME.match(rec["name"] or "") else rec["name"]
    return (rec["start"] or 0, name, sorted(rec["tags"].items()), sorted(rec["params"].items()))


def _short(value, limit=160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def compare_records(original: list, migrated: list, label="") -> list[str]:
    """A precise list of differences (empty when equal). Timestamps and system tags aside."""
    diffs = []
    if len(original) != len(migrated):
        diffs.append(f"{label or 'store'}: {len(original)} run(s) under the bridge, {len(migrated)} migrated "
                     f"({[r['name'] for r in original]} vs {[r['name'] for r in migrated]})")
    for i, (a, b) in enumerate(zip(original, migrated)):
        name = a["name"] if not GENERATED_NAME.match(a["name"] or "") else f"#{i + 1}"
        where = f"{label} > run {name}" if label else f"run {name}"
        if a["name"] != b["name"] and not (GENERATED_NAME.match(a["name"] or "") and GENERATED_NAME.match(b["name"] or "")):
            diffs.append(f"{where}: name {a['name']!r} vs {b['name']!r}")
        for field_ in ("experiment", "status"):
            if a[field_] != b[field_]:
                diffs.append(f"{where}: {field_} {a[field_]!r} vs {b[field_]!r}")
        for kind in ("metrics", "params", "tags"):
            x, y = a[kind], b[kind]
            for key in sorted(set(x) | set(y)):
                if key not in y:
                    diffs.append(f"{where}: {kind[:-1]} {key!r} only under the bridge: {_short(x[key])}")
                elif key not in x:
                    diffs.append(f"{where}: {kind[:-1]} {key!r} only in the migrated run: {_short(y[key])}")
                elif x[key] != y[key]:
                    diffs.append(f"{where}: {kind[:-1]} {key!r}: {_short(x[key])} vs {_short(y[key])}")
        x, y = a["artifacts"], b["artifacts"]
        for path in sorted(set(x) | set(y)):
            if path not in y:
                diffs.append(f"{where}: artifact {path} only under the bridge ({len(x[path])} bytes)")
            elif path not in x:
                diffs.append(f"{where}: artifact {path} only in the migrated run ({len(y[path])} bytes)")
            elif x[path] != y[path]:
                diffs.append(f"{where}: artifact {path}: bytes differ ({len(x[path])} vs {len(y[path])} bytes)"
                             + _first_difference(x[path], y[path]))
        diffs += compare_records(a["children"], b["children"], where)
    return diffs


def _first_difference(a: bytes, b: bytes) -> str:
    i = next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))
    return f"; first at byte {i}: {a[max(0, i - 20):i + 20]!r} vs {b[max(0, i - 20):i + 20]!r}"


def _count(records) -> dict:
    out = {"runs": 0, "metric points": 0, "params": 0, "tags": 0, "artifacts": 0}
    for r in records:
        out["runs"] += 1
        out["metric points"] += sum(len(v) for v in r["metrics"].values())
        out["params"] += len(r["params"])
        out["tags"] += len(r["tags"])
        out["artifacts"] += len(r["artifacts"])
        for k, v in _count(r["children"]).items():
            out[k] += v
    return out


@dataclass
class CheckResult:
    script: str
    equal: bool
    diffs: list
    counts: dict
    failures: list
    result: FileResult | None = None
    cannot_run: bool = False   # the original failed here: nothing to compare (not the migration's fault)

    @property
    def exit_code(self) -> int:
        if self.equal:
            return EXIT_OK
        if self.cannot_run:
            return EXIT_CANNOT_RUN
        if self.failures and not self.diffs and self.result is None:
            return EXIT_INPUT
        return EXIT_DIFFERENT

    def report(self) -> str:
        lines = []
        if self.failures:
            lines += self.failures
        elif self.equal:
            counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
            lines.append(f"{self.script}: equal records ({counts}) under the bridge (mlflow mode) and migrated")
        else:
            lines.append(f"{self.script}: records differ in {len(self.diffs)} place(s):")
            lines += ["  " + d for d in self.diffs]
        if self.failures:
            return "\n".join(lines)
        lines.append("  (compared: runs and nesting, names, status, metric keys/values/steps, params, tags "
                     "without system tags, artifact paths and bytes; the bridge ran with AZML_V1_BRIDGE_CHARTS=0, "
                     "AZML_V1_BRIDGE_OUTPUTS=0: its rich-metric charts and the ./outputs upload of v1 jobs have "
                     "no call to migrate)")
        return "\n".join(lines)


# Not copied into --check's working folders: stores, journals, the bridge's own files, and
# what the script makes itself (each side starts without them, as a fresh job did).
CHECK_SKIP = tuple(scan.SKIP_DIRS) + ("*.db", "azml_v1_bridge_journal", "azml_v1_bridge", "outputs", "logs")
# Files this big are linked, not copied (data sets): scripts read them, they do not rewrite them.
LINK_BYTES = 1 << 20


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_tmp(folder: str) -> str:
    """A fresh temp folder outside `folder` (TMPDIR may lie inside the project)."""
    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp", os.path.dirname(os.path.realpath(folder))):
        if base and os.path.isdir(base) and not _inside(base, folder) and os.access(base, os.W_OK):
            return tempfile.mkdtemp(prefix="azml-v1-bridge-check-", dir=base)
    raise OSError(f"no writable temp folder outside {folder} (set TMPDIR to one)")


_template_lock = threading.Lock()
_template: list = []  # [path of the empty store this process made, or None: it could not]


def _template_store(folder: str) -> str | None:
    """An empty sqlite store with MLflow's schema, made once per process (outside `folder`, as
    the check's own temp folder): each side of each check gets a copy instead of running
    MLflow's schema migrations (~1 s of CPU a store)."""
    with _template_lock:
        if not _template:
            import atexit
            import logging

            loggers = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic")]
            levels = [lg.level for lg in loggers]
            for lg in loggers:  # "Creating initial MLflow database tables..." is not --check's
                lg.setLevel(logging.WARNING)
            try:
                from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

                made = _check_tmp(folder)
                atexit.register(shutil.rmtree, made, True)
                path = os.path.join(made, "mlflow.db")
                SqlAlchemyStore(f"sqlite:///{path}", os.path.join(made, "mlruns")).engine.dispose()
            except Exception:  # once (mlflow-skinny without SQLAlchemy, say): scripts make their own
                path = None
            finally:
                for lg, level in zip(loggers, levels):
                    lg.setLevel(level)
            _template.append(path)
        return _template[0]


def _empty_store(store: str, work: str, python: str, folder: str) -> None:
    """store/mlflow.db: a copy of the template whose Default experiment keeps its artifacts
    where a store the script made itself would (`work`/mlruns), when the script runs on this
    interpreter (the same MLflow, the same schema); otherwise the script makes its own."""
    if os.path.abspath(python) != os.path.abspath(sys.executable):  # not realpath: venvs share one
        return
    import sqlite3

    target = os.path.join(store, "mlflow.db")
    try:
        template = _template_store(folder)
        if template is None:
            return
        shutil.copyfile(template, target)
        made = os.path.dirname(template)
        with sqlite3.connect(target) as db:
            for eid, location in db.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall():
                if location and made in location:
                    db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                               (location.replace(made, work), eid))
        db.close()
    except Exception:  # the script then makes its own store, as without a template
        if os.path.exists(target):
            os.remove(target)


def _copy_tree(src: str, dst: str, avoid: str | None = None) -> None:
    """The script's folder for one side: small files copied, big ones linked, never `avoid`
    (the check's own temp folder) nor CHECK_SKIP."""
    skip = shutil.ignore_patterns(*CHECK_SKIP)

    def ignore(folder, names):
        out = set(skip(folder, names))
        if avoid is not None:
            out |= {n for n in names if _inside(os.path.join(folder, n), avoid)}
        return out

    def copy(source, target):
        if os.path.getsize(source) >= LINK_BYTES:
            os.symlink(os.path.abspath(source), target)
        else:
            shutil.copy2(source, target)

    shutil.copytree(src, dst, ignore=ignore, symlinks=True, copy_function=copy)


def _one_line(text: str, limit: int = 400) -> str:
    """What a script's stderr says went wrong, in one line: the exception of its last
    traceback (log lines may follow it) with its message, also when the message is on the
    lines below (Azure ML's `UserErrorException:` then an indented `Message: ...`), else the
    last line. Progress bars (carriage returns) are dropped."""
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    out = lines[-1].strip() if lines else "(no output)"
    if starts:
        rest = lines[starts[-1] + 1:]
        for i, line in enumerate(rest):
            if not line.startswith((" ", "\t")):
                out = line.strip()
                if out.endswith(":") or len(out.split(":", 1)[-1].strip()) == 0:
                    more = [x.strip() for x in rest[i + 1:i + 12] if x.startswith((" ", "\t"))]
                    out = " ".join([out] + [m for m in more if m not in ("{", "}")])
                break
    out = " ".join(out.split())
    return out if len(out) <= limit else out[:limit - 3] + "..."


def _script_of(result: FileResult, migrated: bool = True) -> str:
    """The migrated (or original) source as one script; a notebook's cells without magics and
    without the scripts its %%writefile cells write (those are checked on their own)."""
    if result.notebook is None:
        return result.new if migrated else result.old
    parts = []
    for index, old, new in result.cells:
        if index in result.scripts:
            continue
        code = new if migrated else old
        parts.append("\n".join(l for l in code.splitlines() if not l.lstrip().startswith(("%", "!"))))
    return "\n\n".join(parts) + "\n"


def _written_name(target: str) -> str:
    """Where a %%writefile script goes in --check's copy of the folder: its path when that is a
    plain relative path inside the folder, else its file name ($folder/train.py -> train.py)."""
    norm = posixpath.normpath(target.replace("\\", "/"))
    if any(c in target for c in "${}") or norm.startswith(("..", "/")) or re.match(r"^[A-Za-z]:", norm):
        return posixpath.basename(norm)
    return norm


def _scripts(result: FileResult, migrated: bool) -> dict:
    """The files a notebook's %%writefile cells write: relative name -> text."""
    out = {}
    for index, old, new in result.cells:
        if index in result.scripts:
            text = new if migrated else old
            out[_written_name(result.scripts[index])] = text.split("\n", 1)[1] if "\n" in text else ""
    return out


def check_all(result: FileResult, args=(), timeout: float = 600, keep: bool = False,
              python: str | None = None) -> list:
    """--check of a file: a script; a notebook's own cells when they changed, and each script
    its %%writefile cells write that changed, as the script it is."""
    if result.notebook is None:
        return [check(result.path, args, timeout, keep, result, python)]
    outcomes = []
    if any(old != new for index, old, new in result.cells if index not in result.scripts):
        outcomes.append(check(result.path, args, timeout, keep, result, python))
    for index, old, new in result.cells:
        if index in result.scripts and old != new:
            outcomes.append(check(result.path, args, timeout, keep, result, python,
                                  script_name=_written_name(result.scripts[index])))
    return outcomes


def check(script: str, args=(), timeout: float = 600, keep: bool = False, result: FileResult | None = None,
          python: str | None = None, script_name: str | None = None) -> CheckResult:
    """Run the original under the bridge (mlflow mode) and the migrated script with plain MLflow,
    each into a fresh store and a fresh copy of the script's folder; compare the records.
    `script_name`: a script a notebook writes (%%writefile), checked instead of the notebook."""
    script = os.path.abspath(script)
    folder = os.path.dirname(script)
    label = f"{script} [{script_name}]" if script_name else script
    try:
        result = result or migrate_file(script)
        if result.error and not result.changed:
            raise ValueError(result.error)
        tmp = _check_tmp(folder)
    except Exception as exc:  # one line, never a traceback
        return CheckResult(label, False, [], {}, [f"{label}: --check could not start: "
                                                  f"{type(exc).__name__}: {exc}"], None)
    python = python or sys.executable
    try:
        return _check_in(label, folder, tmp, args, timeout, result, python, script_name)
    except Exception as exc:
        return CheckResult(label, False, [], {}, [f"{label}: --check failed: {type(exc).__name__}: {exc}"],
                           result)
    finally:
        if keep:
            print(f"{TOOL} migrate --check: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _check_in(script, folder, tmp, args, timeout, result, python, script_name=None) -> CheckResult:
    if script_name is None:
        name = os.path.splitext(os.path.basename(result.path))[0] + ".py"
    else:
        name = script_name
    procs = {}
    for side in ("original", "migrated"):
        work = os.path.join(tmp, side)
        _copy_tree(folder, work, avoid=tmp)
        files = _scripts(result, migrated=side == "migrated") if result.notebook is not None else {}
        if script_name is None:
            files[name] = _script_of(result, migrated=side == "migrated")
        for rel, text in files.items():
            target = os.path.join(work, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as fh:
                fh.write(text)
        target = os.path.join(work, *name.split("/"))
        store = os.path.join(tmp, side + "-store")
        os.makedirs(store)
        _empty_store(store, os.path.dirname(target), python, folder)
        uri = f"sqlite:///{store}/mlflow.db"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AZML_V1_BRIDGE_") and k not in (
                   "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI")}
        env.update(MLFLOW_TRACKING_URI=uri, MPLBACKEND="Agg", PYTHONHASHSEED="0",
                   MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
        # the bridge, importable on both sides: the migrated script uses it only where it still
        # imports it (calls kept on Azure ML v1)
        env.update(AZML_V1_BRIDGE_MODE="mlflow", AZML_V1_BRIDGE_CHARTS="0", AZML_V1_BRIDGE_OUTPUTS="0",
                   AZML_V1_BRIDGE_REPORT="0", AZML_V1_BRIDGE_JOURNAL=os.path.join(store, "journal.jsonl"))
        env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        if side == "original":
            cmd = [python, "-c", BOOT, target, *args]
        else:
            cmd = [python, target, *args]
        procs[side] = (subprocess.Popen(cmd, cwd=os.path.dirname(target), env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True), uri, work)
    failed = {}
    for side, (proc, uri, work) in procs.items():
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            failed[side] = f"did not finish in {timeout}s"
            continue
        if proc.returncode != 0:
            failed[side] = f"exited with {proc.returncode}: {_one_line(err)}"
    if "original" in failed:
        return CheckResult(script, False, [], {}, [
            f"{script}: the original cannot run here (under the bridge, mlflow mode): it {failed['original']}"
            + (f"; the migrated script {failed['migrated']}" if "migrated" in failed else "")],
            result, cannot_run=True)
    if "migrated" in failed:
        return CheckResult(script, False, [], {}, [
            f"{script}: the migrated script failed where the original ran: it {failed['migrated']}"], result)
    records = {side: read_record(uri, os.path.join(tmp, side + "-download"))
               for side, (_, uri, _) in procs.items()}
    diffs = compare_records(records["original"], records["migrated"])
    return CheckResult(script, not diffs, diffs, _count(records["original"]), [], result)


# ---------------------------------------------------------------- command line

LABELS = {"todo": "TODO", "partial": "partial", "kept": "stays on v1"}


def _report_changes(results, stream) -> dict:
    """One line per call not fully rewritten and per file that could not be read; the summary."""
    for r in results:
        if r.error:
            print(f"{r.path}: skipped: {r.error}", file=stream)
        for c in r.todos:
            print(f"{c.where}: {LABELS[c.kind]}: {c.site.code}: {c.message}", file=stream)
    counts = {kind: sum(1 for r in results for c in r.changes if c.kind == kind)
              for kind in ("rewritten", "partial", "todo", "kept")}
    # the TODO comments the diff adds, counted in the text itself (a note on a rewritten call
    # is a TODO comment too)
    counts["comments"] = sum(max(0, r.new.count(TODO_PREFIX) - r.old.count(TODO_PREFIX)) for r in results)
    counts["errors"] = sum(1 for r in results if r.error)
    changed = sum(1 for r in results if r.changed)
    print(f"{changed} file(s) to change: {counts['rewritten'] + counts['partial']} call(s) rewritten "
          f"({counts['partial']} with a note), {counts['todo']} left as is, {counts['kept']} kept on Azure ML v1 "
          f"(served by the bridge); {counts['comments']} left with a TODO comment"
          + (f"; {counts['errors']} file(s) could not be read or parsed" if counts["errors"] else ""),
          file=stream)
    return counts


# migrate's exit codes (README: "The way out")
EXIT_OK = 0
EXIT_DIFFERENT = 1      # --check: the records differ (or the migrated script failed where the original ran);
                        # --strict: something would be left unconverted
EXIT_INPUT = 2          # no such path, or a file could not be read or parsed (the rest was done)
EXIT_CANNOT_RUN = 3     # --check: the original script cannot run here (the cause is printed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=f"{TOOL} migrate", description=(
        "Rewrite Azure ML SDK v1 tracking calls into plain MLflow code (shows a unified diff; "
        "--write applies it; --check SCRIPT proves the rewrite by running both)."),
        epilog="exit status: 0 done (--check: equal records); 1 --check: records differ, or the migrated "
               "script failed where the original ran; --strict: a call would be left unconverted; "
               "2 a path is missing or a file could not be read or parsed (the others are done); "
               "3 --check: the original cannot run here (the cause is printed)")
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--write", action="store_true", help="apply the rewrite to the files")
    parser.add_argument("--check", action="store_true",
                        help="run each SCRIPT under the bridge (mlflow mode) and migrated with plain MLflow, "
                             "each into a fresh store, and compare the records")
    parser.add_argument("--tracking-only", action=argparse.BooleanOptionalAction, default=True,
                        help="TODO comments only for tracking (runs and their calls); control-plane code "
                             "(workspaces, compute, data sets, submit) is left alone (default: on)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any call would be left unconverted (a TODO, or kept on v1)")
    parser.add_argument("--args", default="", help="arguments for the script(s) under --check")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="--check: keep the working folders and stores")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        print(f"{TOOL} migrate: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_INPUT
    results = migrate_paths(args.paths, tracking_only=args.tracking_only)
    errors = [r for r in results if r.error]
    if args.check:
        import shlex

        codes = [EXIT_INPUT] * len(errors)
        for r in errors:
            print(f"{r.path}: skipped: {r.error}")
        for r in results:
            if not r.changes and not r.changed:
                continue
            for outcome in check_all(r, shlex.split(args.args), timeout=args.timeout, keep=args.keep):
                print(outcome.report())
                codes.append(outcome.exit_code)
        return combined_exit(codes)
    for r in results:
        if args.write:
            if r.changed:
                with open(r.path, "w", encoding="utf-8") as fh:
                    fh.write(r.new)
        else:
            sys.stdout.write(r.diff())
    counts = _report_changes(results, sys.stderr)
    if args.write:
        print(f"written: {sum(1 for r in results if r.changed)} file(s)", file=sys.stderr)
    if errors:
        return EXIT_INPUT
    if args.strict and (counts["todo"] or counts["kept"]):
        return EXIT_DIFFERENT
    return EXIT_OK


# which outcome wins when several scripts are checked: a difference beats everything
CHECK_SEVERITY = [EXIT_OK, EXIT_CANNOT_RUN, EXIT_INPUT, EXIT_DIFFERENT]


def combined_exit(codes) -> int:
    """--check of several scripts: 1 if any differs, else 2 if a file could not be read or
    checked, else 3 if an original cannot run here, else 0."""
    return max(codes, key=CHECK_SEVERITY.index, default=EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
