"""`azml-v1-bridge scan PATH...`: where a code base uses Azure ML SDK v1 tracking.

Reads Python files and notebook code cells, finds the v1 imports, the runs
(`Run.get_context()`, `Experiment.start_logging()`, `child_run()`,
`create_children()`), and every call on a name bound to such a run (attribute
chains such as `self.run` included, and function parameters a run is passed
to). Each call is listed with what the bridge maps it to, worked out by
asking translate.py itself (the mapping table in code) about the call's own
arguments, and a flag where it needs attention.

The analysis here is shared with migrate.py: a `Site` carries what migrate
needs to rewrite the call (bound arguments, inferred value types, which run
it goes to, whether it runs once).
"""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import libcst as cst
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

from azml_v1_bridge import ops as ops_module
from azml_v1_bridge import patch, translate

TOOL = "azml-v1-bridge"
TODO_PREFIX = "# TODO(azml-v1-bridge): "

# How v1 hands out runs. get_context is not in TRANSLATORS: it is how a script gets
# its run, and the bridge maps the run object, not this call.
TOP_LEVEL_PRODUCERS = ("get_context", "start_logging")
# v1 Run methods and attributes that read from Azure ML (nothing to record in MLflow).
READ_METHODS = frozenset((
    "get_metrics", "get_details", "get_details_with_logs", "get_detailed_status", "get_status",
    "get_tags", "get_properties", "get_file_names", "download_file", "download_files",
    "get_children", "get_all_logs", "get_portal_url", "get_environment", "get_snapshot_id",
    "get_secret", "get_secrets", "get_submitted_run", "wait_for_completion", "get_docs_url",
))
READ_ATTRIBUTES = frozenset((
    "id", "name", "number", "parent", "experiment", "properties", "tags", "status", "type",
    "portal_url", "identity", "display_name", "description",
))
# What makes a run feed other Azure ML code: read from it, or called on it, these give Azure ML
# objects (a workspace, data sets, secrets, an environment). Such a run stays a v1 run.
FEEDS_ATTRIBUTES = frozenset(("experiment", "input_datasets", "output_datasets", "parent", "service_context"))
FEEDS_METHODS = frozenset(("get_secret", "get_secrets", "get_environment", "get_submitted_run"))
# Methods of Azure ML objects that return plain data (a DataFrame, a dict): not Azure ML objects.
PLAIN_DATA_METHODS = frozenset((
    "to_pandas_dataframe", "to_spark_dataframe", "to_dask_dataframe", "get_metrics", "get_details",
    "get_tags", "get_properties", "get_status", "get_file_names", "keys", "values", "items",
    "serialize", "to_json", "as_dict", "get_logs", "download", "download_files", "to_path",
))
PROPERTY_METHODS = ("display_name", "description")  # set as attributes, mapped by translate
WITH_METHODS = ("__enter__", "__exit__")
LIST_OR_DICT = {"log_list": "list", "log_table": "dict", "log_confusion_matrix": "dict",
                "log_accuracy_table": "dict", "log_predictions": "dict", "log_residuals": "dict"}
RICH_METHODS = ("log_confusion_matrix", "log_accuracy_table", "log_predictions", "log_residuals")

SKIP_DIRS = frozenset((".git", ".hg", ".svn", "__pycache__", ".ipynb_checkpoints", "node_modules",
                       ".venv", "venv", ".tox", "mlruns", "build", "dist", ".mypy_cache"))

MAGIC_MARK = "#azml-v1-bridge-magic:"


# ---------------------------------------------------------------- sources

@dataclass
class Unit:
    """One parsed piece of source: a .py file, or one notebook code cell."""

    path: str
    cell: int | None          # notebook cell index (of all cells), None for .py
    source: str               # the text as parsed (magics commented out)
    module: cst.Module | None = None
    wrapper: MetadataWrapper | None = None
    error: str | None = None
    writefile: str | None = None  # a `%%writefile PATH` cell: the script it writes (its own namespace)
    head: str = ""                # that cell's first line, kept as it is

    @property
    def label(self) -> str:
        if self.cell is None:
            return ""
        return f"[cell {self.cell}" + (f": {self.writefile}" if self.writefile else "") + "]"


def hide_magics(source: str) -> str:
    """IPython magics and shell escapes are not Python: comment them out for parsing."""
    out = []
    for line in source.splitlines(keepends=True):
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            indent = line[: len(line) - len(stripped)]
            out.append(indent + MAGIC_MARK + stripped)
        else:
            out.append(line)
    return "".join(out)


def restore_magics(source: str) -> str:
    return re.sub(r"(?m)^(\s*)" + re.escape(MAGIC_MARK), r"\1", source)


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def read_units(path: str) -> tuple[list[Unit], dict | None]:
    """The units of a file, and the notebook JSON when it is one."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith(".ipynb"):
        notebook = json.loads(text)
        units = []
        for index, cell in enumerate(notebook.get("cells", [])):
            if cell.get("cell_type") != "code":
                continue
            source = cell_source(cell)
            if source.lstrip().startswith("%%"):
                head, newline, body = source.lstrip().partition("\n")
                words = head.split()
                target = next((w for w in words[1:] if not w.startswith("-")), "")
                if words[0] == "%%writefile" and target.endswith(".py"):
                    # the training script of the notebook: scanned and migrated as its own file
                    lead = source[:len(source) - len(source.lstrip())]
                    units.append(Unit(path, index, body, writefile=target, head=lead + head + newline))
                continue  # another cell magic: the cell is not Python
            units.append(Unit(path, index, hide_magics(source)))
        return units, notebook
    return [Unit(path, None, text)], None


def parse_units(units: list[Unit]) -> None:
    for unit in units:
        try:
            unit.module = cst.parse_module(unit.source)
            unit.wrapper = MetadataWrapper(unit.module)
        except cst.ParserSyntaxError as exc:
            unit.error = f"could not parse: {str(exc).splitlines()[0]}"


def iter_files(paths) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
                for name in sorted(names):
                    if name.endswith((".py", ".ipynb")):
                        files.append(os.path.join(folder, name))
        else:
            files.append(path)
    return files


# ---------------------------------------------------------------- what translate says

class _ProbeFigure:
    """Stands in for a figure when asking translate what log_image(plot=) becomes."""

    def savefig(self, buffer, format=None):  # noqa: A002 - matplotlib's name
        buffer.write(b"")


def translator(method: str):
    return translate.TRANSLATORS[method]


def v1_parameters(method: str) -> list[inspect.Parameter]:
    """The v1 parameters of a method: its translator's signature without `call`."""
    return list(inspect.signature(translator(method)).parameters.values())[1:]


def probe(method: str, *args, result=None, instance=None, **kwargs) -> list:
    """The operations translate produces for one call with these arguments (fresh run state)."""
    call = translate.Call(translate.RunState(), 0, result, instance)
    return translate.TRANSLATORS[method](call, *args, **kwargs)


def doc_line(method: str) -> str:
    doc = inspect.getdoc(translator(method)) or ""
    return " ".join(doc.split("\n\n")[0].split())


# ---------------------------------------------------------------- sites

@dataclass
class Site:
    """One v1 usage: an import, a run, a call on a run, or an Azure ML call outside tracking."""

    unit: Unit
    line: int
    column: int
    kind: str           # import | run | call | with | property | read | unmapped | outside | error
    method: str
    code: str
    maps_to: str = ""
    flag: str = ""
    mapped: bool = True
    node: Any = None                 # Call / Import / ImportFrom / With / Assign
    stmt: Any = None                 # innermost enclosing statement
    receiver: Any = None             # receiver expression of a run method call
    route: str | None = None         # code of the run to name explicitly; None: the active run
    args: dict = field(default_factory=dict)      # v1 parameter -> cst expression
    columns: dict = field(default_factory=dict)   # log_row keyword columns -> cst expression
    splats: list = field(default_factory=list)    # log_row **mappings
    types: dict = field(default_factory=dict)     # v1 parameter -> inferred type
    in_loop: bool = False
    keys: list = field(default_factory=list)      # (namespace, literal or regex or None)
    once: bool = False
    extra: dict = field(default_factory=dict)
    todo: str = ""

    @property
    def where(self) -> str:
        return f"{self.unit.path}{self.unit.label}:{self.line}"

    def to_json(self) -> dict:
        return {"file": self.unit.path, "cell": self.unit.cell, "writefile": self.unit.writefile, "line": self.line,
                "column": self.column, "kind": self.kind, "method": self.method,
                "code": self.code, "maps_to": self.maps_to, "flag": self.flag,
                "mapped": self.mapped}


@dataclass
class Binding:
    kind: str                 # run | runlist | experiment | azureml | pyplot
    origin: str = ""          # get_context | start_logging | child_run | create_children | param | ...
    extra: dict = field(default_factory=dict)


def dotted(node) -> str | None:
    """'a.b.c' for a Name / Attribute chain of names, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def attribute_name(node) -> str:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return attribute_name(node.value) + "." + node.attr.value
    raise ValueError(node)


def literal(node):
    """The Python value of a literal expression (strings, numbers, lists, dicts...), else raise."""
    code = cst.Module([]).code_for_node(node)
    return ast.literal_eval(code.strip())


def is_literal(node) -> bool:
    try:
        literal(node)
        return True
    except Exception:
        return False


def given(site, name: str) -> bool:
    """The call passes this v1 parameter, and not as a literal None."""
    node = site.args.get(name)
    if node is None:
        return False
    try:
        return literal(node) is not None
    except Exception:
        return True


def fstring_pattern(node) -> str | None:
    """A regex matching every value of an f-string (holes match anything)."""
    if not isinstance(node, cst.FormattedString):
        return None
    parts = []
    for part in node.parts:
        if isinstance(part, cst.FormattedStringText):
            parts.append(re.escape(part.value))
        else:
            parts.append(".*")
    return "^" + "".join(parts) + "$"


def display_name(node) -> str:
    """How a name argument reads in a report: the string itself, or the f-string's text."""
    try:
        value = literal(node)
        if isinstance(value, str):
            return value
    except Exception:
        pass
    if isinstance(node, cst.FormattedString):
        return cst.Module([]).code_for_node(node)[len(node.start):-len(node.end)]
    return "<" + cst.Module([]).code_for_node(node) + ">"


NUMBER_CALLS = frozenset(("float", "int", "len", "round", "abs", "sum", "math.sqrt", "math.log",
                          "math.exp", "np.mean", "np.sum", "np.std", "numpy.mean", "time.time",
                          "time.perf_counter", "time.monotonic"))
STR_CALLS = frozenset(("str", "repr", "format", "json.dumps", "os.path.join", "os.path.basename"))
STR_METHODS = frozenset(("format", "join", "upper", "lower", "strip", "replace", "title"))
LIST_CALLS = frozenset(("list", "sorted", "tuple", "range"))


# ---------------------------------------------------------------- the analysis

class Analysis:
    """v1 usage across the units of one file (notebook cells share one namespace, in order)."""

    def __init__(self, units: list[Unit], param_runs: dict | None = None, seeds: dict | None = None):
        self.units = units
        self.seeds: dict[str, Binding] = dict(seeds or {})   # module-level runs, for function bodies
        self.global_bindings: dict[str, Binding] = {}        # found in this pass
        self.depth = 0                                       # how many functions deep the walk is
        self.imports: dict[str, str] = {}      # local name -> qualified azureml name
        self.bindings: dict[str, Binding] = {}
        self.stack: list[str] = []             # runs active at this point of the text
        self.sites: list[Site] = []
        self.assigns: dict = {}                # (scope, name) -> [(order, expr)]
        self.functions: dict[str, list[list[str]]] = {}
        self.param_runs: dict[str, set] = {k: set(v) for k, v in (param_runs or {}).items()}
        self.found_param_runs: dict[str, set] = {}
        self.get_context_sites = 0
        self.class_runs: dict[str, dict] = {}  # class -> {attribute: Binding} of self.<attribute> runs
        self.feeds: dict[str, str] = {}         # run name -> how it feeds other Azure ML code (first use)
        self.param_sources: dict = {}           # (function, slot) -> run names passed there

    # -- names
    def qualified(self, node) -> str | None:
        """The azureml name an expression stands for ('azureml.core.Run'), if it is one."""
        name = dotted(node)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        base = self.imports.get(head)
        if base is None:
            return None
        return base + ("." + rest if rest else "")

    def is_azureml(self, node) -> bool:
        q = self.qualified(node)
        return q is not None and q.startswith("azureml")

    def is_class(self, node, cls: str) -> bool:
        q = self.qualified(node)
        return q is not None and q.startswith("azureml") and q.rsplit(".", 1)[-1] == cls

    def binding_of(self, node) -> Binding | None:
        name = dotted(node)
        if name is None:
            return None
        found = self.bindings.get(name)
        if found is None and self.depth:
            # a function body runs later: a run bound at module level after the def is its run too
            found = self.seeds.get(name)
        return found

    # -- what an expression is
    def expr_kind(self, node) -> tuple[str, str] | None:
        """('run', origin) / ('runlist', ...) / ('experiment', ...) / ('azureml', ...) / None."""
        if isinstance(node, cst.Call):
            func = node.func
            if isinstance(func, cst.Attribute):
                attr = func.attr.value
                if attr == "get_context" and self.is_class(func.value, "Run"):
                    return "run", "get_context"
                if attr == "start_logging" and (self.is_experiment(func.value) or self.imports):
                    return "run", "start_logging"
                if attr == "child_run" and self.is_run(func.value):
                    return "run", "child_run"
                if attr == "create_children" and self.is_run(func.value):
                    return "runlist", "create_children"
                if attr == "submit" and (self.is_experiment(func.value) or re.search(
                        r"exp", dotted(func.value) or "", re.I)):
                    return "run", "remote"  # a job Azure ML runs elsewhere
                if attr == "get" and self.is_class(func.value, "Run"):
                    return "run", "remote"
            if self.is_class(func, "Run"):
                return "run", "remote"  # Run(experiment, run_id): a run fetched by id
            if self.is_class(func, "Experiment"):
                return "experiment", "Experiment"
            if self.is_azureml(func):
                return "azureml", self.qualified(func)
            receiver = func.value if isinstance(func, cst.Attribute) else None
            if receiver is not None:
                b = self.binding_of(receiver)
                if b is not None and b.kind in ("azureml", "experiment"):
                    return "azureml", dotted(receiver) + "." + func.attr.value
            return None
        if isinstance(node, cst.Subscript):
            b = self.binding_of(node.value)
            if b is not None and b.kind == "runlist":
                return "run", "create_children"
            return None
        if isinstance(node, (cst.ListComp, cst.GeneratorExp)) and self.is_run(node.elt):
            return "runlist", "create_children"  # [run.child_run(...) for ...]: runs of MlflowClient
        if isinstance(node, (cst.List, cst.Tuple)) and node.elements and all(
                not isinstance(e, cst.StarredElement) and self.is_run(e.value) for e in node.elements):
            return "runlist", "create_children"
        b = self.binding_of(node)
        if b is not None:
            return b.kind, b.origin
        return None

    def is_run(self, node) -> bool:
        kind = self.expr_kind(node)
        return kind is not None and kind[0] == "run"

    def is_experiment(self, node) -> bool:
        kind = self.expr_kind(node)
        return kind is not None and kind[0] == "experiment"

    # -- value types
    def infer(self, node, scope, order, depth=0) -> str | None:
        if depth > 5:
            return None
        if isinstance(node, (cst.Integer, cst.Float)):
            return "number"
        if isinstance(node, cst.UnaryOperation):
            inner = self.infer(node.expression, scope, order, depth + 1)
            return inner if inner in ("number", "bool") and not isinstance(node.operator, cst.Not) else (
                "bool" if isinstance(node.operator, cst.Not) else None)
        if isinstance(node, (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString)):
            if isinstance(node, cst.SimpleString) and "b" in node.prefix.lower():
                return None
            return "str"
        if isinstance(node, cst.Name):
            if node.value in ("True", "False"):
                return "bool"
            if node.value == "None":
                return "none"
            return self.infer_name(node.value, scope, order, depth)
        if isinstance(node, (cst.List, cst.Tuple, cst.ListComp, cst.GeneratorExp, cst.Set)):
            return "list"
        if isinstance(node, (cst.Dict, cst.DictComp)):
            return "dict"
        if isinstance(node, cst.Comparison):
            return "bool"
        if isinstance(node, cst.BinaryOperation):
            left = self.infer(node.left, scope, order, depth + 1)
            right = self.infer(node.right, scope, order, depth + 1)
            if left == "str" and isinstance(node.operator, (cst.Add, cst.Modulo)):
                return "str"
            if left in ("number", "bool") and right in ("number", "bool"):
                return "number"
            return None
        if isinstance(node, cst.IfExp):
            a = self.infer(node.body, scope, order, depth + 1)
            b = self.infer(node.orelse, scope, order, depth + 1)
            return a if a == b else None
        if isinstance(node, cst.Call):
            name = dotted(node.func)
            if name in NUMBER_CALLS:
                return "number"
            if name in STR_CALLS:
                return "str"
            if name in LIST_CALLS:
                return "list"
            if name == "dict":
                return "dict"
            if name == "bool":
                return "bool"
            if isinstance(node.func, cst.Attribute):
                attr = node.func.attr.value
                if attr == "item":
                    return "number"
                if attr == "tolist":
                    return None
                if attr in STR_METHODS and self.infer(node.func.value, scope, order, depth + 1) == "str":
                    return "str"
                if attr in ("format", "join") and isinstance(node.func.value, (cst.SimpleString, cst.FormattedString)):
                    return "str"
        return None

    def infer_name(self, name, scope, order, depth) -> str | None:
        for key in ((scope, name), ("<module>", name)):
            found = [expr for o, expr in self.assigns.get(key, ()) if o < order]
            if found:
                kinds = {self.infer(e, key[0], order, depth + 1) if not isinstance(e, str) else e
                         for e in found}
                return kinds.pop() if len(kinds) == 1 else None
        return None

    # -- the stack of active runs (in the order of the text)
    def push(self, key: str) -> None:
        if key in self.stack:
            self.stack.remove(key)
        self.stack.append(key)

    def end(self, key: str) -> None:
        if key in self.stack:
            self.stack.remove(key)

    def route_for(self, receiver) -> str | None:
        """None when the call can go to MLflow's active run; else the code of its run."""
        key = dotted(receiver)
        if key is None:
            if isinstance(receiver, cst.Call):
                return None  # a chained Run.get_context().log(...): the active (or a new) run
            return cst.Module([]).code_for_node(receiver)  # children[0].log(...)
        binding = self.bindings.get(key) or self.seeds.get(key)
        if binding is not None and binding.origin == "param":
            return key  # whatever run the caller passed (analyse() may route it to the active run)
        if self.stack and self.stack[-1] == key:
            return None
        if not self.stack and binding is not None and binding.origin in ("get_context", "start_logging", "child_run"):
            return None
        return key

    def feed(self, run_node, what: str, line: int) -> None:
        """`run_node` (a run) feeds other Azure ML code here."""
        key = dotted(run_node)
        if key is not None and self.expr_kind(run_node) != ("run", "remote"):
            self.feeds.setdefault(key, f"{what} at line {line}")


class _Visitor(cst.CSTVisitor):
    METADATA_DEPENDENCIES = (PositionProvider, ParentNodeProvider)

    def __init__(self, analysis: Analysis, unit: Unit):
        super().__init__()
        self.a = analysis
        self.unit = unit
        self.loops = 0
        self.scopes: list[str] = ["<module>"]
        self.classes: list[str] = []
        self.site_for_call: dict = {}  # Call node -> its site (runs made by a call)
        self.with_ends: dict = {}      # With node -> keys to end when it closes

    # -- helpers
    def pos(self, node):
        return self.get_metadata(PositionProvider, node).start

    def code(self, node) -> str:
        text = self.unit.module.code_for_node(node).strip()
        text = " ".join(text.split())
        return text if len(text) <= 90 else text[:87] + "..."

    def statement(self, node):
        current = node
        while current is not None:
            if isinstance(current, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
                return current
            current = self.get_metadata(ParentNodeProvider, current, None)
        return None

    def parent(self, node):
        return self.get_metadata(ParentNodeProvider, node, None)

    def add(self, node, kind, method, **fields) -> Site:
        p = self.pos(node)
        site = Site(self.unit, p.line, p.column, kind, method, self.code(node), node=node,
                    stmt=self.statement(node), in_loop=self.loops > 0 or len(self.scopes) > 1,
                    **fields)
        if len(self.scopes) > 1:
            site.extra["function"] = self.scopes[-1].rsplit(":", 1)[-1]
        if site.receiver is not None:
            kind = self.a.expr_kind(site.receiver)
            if kind is not None:
                site.extra["origin"] = kind[1]  # the run as bound here, not at the end of the file
        self.a.sites.append(site)
        return site

    def order_of(self, node) -> int:
        p = self.pos(node)
        index = self.a.units.index(self.unit)
        return (index, p.line, p.column)

    # -- imports
    def visit_Import(self, node: cst.Import) -> None:
        azure = False
        for alias in node.names:
            name = attribute_name(alias.name)
            if name == "azureml" or name.startswith("azureml."):
                azure = True
                if alias.asname is not None:
                    self.a.imports[alias.asname.name.value] = name
                else:
                    self.a.imports["azureml"] = "azureml"
            elif name == "azml_v1_bridge" or name.startswith("azml_v1_bridge."):
                self.add(node, "import", "import", maps_to="removed: the migrated script needs no bridge")
            elif name == "matplotlib.pyplot" and alias.asname is not None:
                self.a.bindings[alias.asname.name.value] = Binding("pyplot")
        if azure:
            self.add(node, "import", "import", maps_to="removed once nothing uses it")
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        if node.module is None or node.relative:
            return
        module = attribute_name(node.module)
        if module == "azml_v1_bridge" or module.startswith("azml_v1_bridge."):
            self.add(node, "import", "import", maps_to="removed: the migrated script needs no bridge")
            return
        if module == "matplotlib" and not isinstance(node.names, cst.ImportStar):
            for alias in node.names:
                if alias.name.value == "pyplot":
                    local = alias.asname.name.value if alias.asname else "pyplot"
                    self.a.bindings[local] = Binding("pyplot")
            return
        if not (module == "azureml" or module.startswith("azureml.")):
            return False
        if isinstance(node.names, cst.ImportStar):
            site = self.add(node, "import", "import *", maps_to="left: names unknown",
                            flag="`import *` from azureml: names cannot be tracked", mapped=False)
            site.todo = site.flag
            return
        for alias in node.names:
            name = alias.name.value
            local = alias.asname.name.value if alias.asname else name
            qualified = f"{module}.{name}"
            # azureml.core.run.Run and azureml.core.Run are the same class
            if module.startswith("azureml.core.") and name in ("Run", "Experiment", "Workspace"):
                qualified = f"azureml.core.{name}"
            self.a.imports[local] = qualified
        self.add(node, "import", "import", maps_to="removed once nothing uses it")
        return False

    # -- scopes and loops
    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.scopes.append(f"{self.unit.cell}:{self.pos(node).line}:{node.name.value}")
        self.a.depth += 1
        name = node.name.value
        params = [p.name.value for p in node.params.params]
        runs = self.a.param_runs.get(name, ())
        for param in params:
            if param in runs:
                self.a.bindings[param] = Binding("run", "param")

    def leave_FunctionDef(self, node) -> None:
        self.scopes.pop()
        self.a.depth -= 1

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.classes.append(node.name.value)

    def leave_ClassDef(self, node: cst.ClassDef) -> None:
        self.classes.pop()

    def visit_Lambda(self, node) -> None:
        self.loops += 1

    def leave_Lambda(self, node) -> None:
        self.loops -= 1

    def visit_For(self, node: cst.For) -> None:
        self.loops += 1
        kind = self.a.expr_kind(node.iter)
        target = node.target
        if kind is None and isinstance(node.iter, cst.Call) and dotted(node.iter.func) == "enumerate" \
                and node.iter.args and isinstance(target, cst.Tuple) and len(target.elements) == 2:
            kind = self.a.expr_kind(node.iter.args[0].value)  # for i, child in enumerate(children)
            target = target.elements[1].value
        if kind is not None and kind[0] == "runlist":
            name = dotted(target)
            if name:
                self.a.bindings[name] = Binding("run", "create_children")
        elif isinstance(node.target, cst.Name) and isinstance(node.iter, cst.Call) \
                and dotted(node.iter.func) == "range":
            self.record_assign(node.target.value, "number", node)

    def leave_For(self, node) -> None:
        self.loops -= 1

    def visit_While(self, node) -> None:
        self.loops += 1

    def leave_While(self, node) -> None:
        self.loops -= 1

    def visit_ListComp(self, node) -> None:
        self.loops += 1

    def leave_ListComp(self, node) -> None:
        self.loops -= 1

    visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_ListComp
    leave_SetComp = leave_DictComp = leave_GeneratorExp = leave_ListComp

    # -- assignments: bindings and value types
    def record_assign(self, name, expr, node) -> None:
        self.a.assigns.setdefault((self.scopes[-1], name), []).append((self.order_of(node), expr))

    def leave_Assign(self, node: cst.Assign) -> None:
        kind = self.a.expr_kind(node.value)
        if kind is not None and kind[0] == "azureml" and isinstance(node.value, cst.Call) \
                and isinstance(node.value.func, cst.Attribute) and node.value.func.attr.value in PLAIN_DATA_METHODS:
            kind = None  # df = dataset.to_pandas_dataframe(): df.head() is pandas, not Azure ML
        for target in node.targets:
            t = target.target
            name = dotted(t)
            if isinstance(t, cst.Attribute) and t.attr.value in PROPERTY_METHODS and self.a.is_run(t.value):
                self.property_set(node, t)
                continue
            if name is None:
                continue
            if isinstance(t, cst.Name):
                self.record_assign(name, node.value, node)
            if kind is None:
                self.a.bindings.pop(name, None)
                if isinstance(node.value, cst.Call) and dotted(node.value.func) in self.a.class_runs:
                    for attr, b in self.a.class_runs[dotted(node.value.func)].items():
                        self.a.bindings[f"{name}.{attr}"] = b
                continue
            binding = Binding(kind[0], kind[1])
            producer = self.site_for_call.get(node.value)
            if producer is not None and producer.method == "get_context":
                producer.extra.setdefault("names", []).append(name)
            if self.classes and name.startswith("self."):  # Trainer().run is this run too
                self.a.class_runs.setdefault(self.classes[-1], {})[name[5:]] = binding
            if kind[0] == "experiment" and isinstance(node.value, cst.Call):
                binding.extra["name"] = self.experiment_name(node.value)
            self.a.bindings[name] = binding
            if len(self.scopes) == 1 or name.startswith("self."):
                self.a.global_bindings[name] = binding
            if kind[0] == "run" and kind[1] in ("get_context", "start_logging"):
                self.a.push(name)
            elif kind[0] == "run" and kind[1] == "child_run":
                call = node.value
                site = self.site_for_call.get(call)
                if site is not None and site.route is None and not site.extra.get("client"):
                    self.a.push(name)

    def leave_AnnAssign(self, node: cst.AnnAssign) -> None:
        if node.value is None:
            return
        name = dotted(node.target)
        kind = self.a.expr_kind(node.value)
        if name and kind is not None:
            self.a.bindings[name] = Binding(kind[0], kind[1])
            if kind[0] == "run" and kind[1] in ("get_context", "start_logging"):
                self.a.push(name)

    def experiment_name(self, call: cst.Call):
        for i, arg in enumerate(call.args):
            if (arg.keyword is not None and arg.keyword.value == "name") or (arg.keyword is None and i == 1):
                return arg.value
        return None

    def property_set(self, node: cst.Assign, target: cst.Attribute) -> None:
        method = target.attr.value
        site = self.add(node, "property", method, receiver=target.value)
        site.args = {"value": node.value}
        site.route = self.a.route_for(target.value)
        self.describe(site)

    # -- with
    def visit_With(self, node: cst.With) -> None:
        ends = []
        for item in node.items:
            kind = self.a.expr_kind(item.item)
            if kind is None or kind[0] != "run":
                continue
            key = dotted(item.asname.name) if item.asname is not None else dotted(item.item)
            site = self.add(node, "with", "with", receiver=item.item)
            site.extra["item"] = item
            site.code = "with " + self.code(item)
            if isinstance(item.item, cst.Call):  # with Run.get_context() as run / with run.child_run() as c
                if key:
                    self.a.bindings[key] = Binding("run", kind[1])
            if key:
                ends.append(key)
            binding = self.a.binding_of(item.item)
            site.extra["client_run"] = binding is not None and binding.origin == "create_children"
            self.describe(site)
        self.with_ends[node] = ends

    def leave_With(self, node: cst.With) -> None:
        for key in self.with_ends.pop(node, ()):
            self.a.end(key)

    def leave_WithItem(self, node: cst.WithItem) -> None:
        key = dotted(node.asname.name) if node.asname is not None else dotted(node.item)
        if key and isinstance(node.item, cst.Call) and self.a.is_run(node.item):
            site = self.site_for_call.get(node.item)
            if site is None or not site.extra.get("client"):
                self.a.push(key)
        elif key and self.a.is_run(node.item):
            self.a.push(key)

    # -- calls
    def visit_Call(self, node: cst.Call) -> None:
        self.note_param_runs(node)
        func = node.func
        if isinstance(func, cst.Attribute) and func.attr.value in ("append", "insert") and node.args \
                and self.a.is_run(node.args[-1].value) and dotted(func.value):
            self.a.bindings[dotted(func.value)] = Binding("runlist", "create_children")  # runs.append(child)
        if node.args and (self.a.is_azureml(func) or (isinstance(func, cst.Attribute) and (
                self.a.expr_kind(func.value) or ("",))[0] in ("azureml", "experiment"))):
            for arg in node.args:
                if self.a.is_run(arg.value):
                    self.a.feed(arg.value, f"{self.code(func)}(run)", self.pos(node).line)
        if isinstance(func, cst.Attribute):
            attr = func.attr.value
            receiver = func.value
            if attr in TOP_LEVEL_PRODUCERS and self.a.is_run(node):
                self.producer(node, attr, receiver)
                return
            if self.a.is_run(receiver):
                self.run_call(node, attr, receiver)
                return
        kind = self.a.expr_kind(node)
        if kind is not None and kind[0] in ("azureml", "experiment"):
            self.add(node, "outside", kind[1].rsplit(".", 1)[-1] if kind[0] == "azureml" else "Experiment",
                     maps_to="left as is (not tracking)",
                     flag=f"Azure ML call outside tracking ({kind[1]}): keeps azureml-core",
                     mapped=False)

    def visit_Name(self, node: cst.Name) -> None:
        """A bare use of an imported azureml name (isinstance(run, _OfflineRun), an annotation)."""
        qualified = self.a.imports.get(node.value)
        if qualified is None or not qualified.startswith("azureml"):
            return
        parent = self.parent(node)
        if isinstance(parent, cst.Attribute) and parent.value is node:
            return  # Run.get_context(), Workspace.from_config(): reported as calls
        if isinstance(parent, cst.Call) and parent.func is node:
            return  # Experiment(ws, name): reported as a call
        if isinstance(parent, (cst.Attribute, cst.AssignTarget, cst.ImportAlias, cst.ExceptHandler)):
            return  # `except ComputeTargetException:` is not about runs
        if isinstance(parent, cst.Element) and isinstance(self.parent(parent), cst.Tuple) \
                and isinstance(self.parent(self.parent(parent)), cst.ExceptHandler):
            return
        kind = "outside"
        if isinstance(parent, cst.Arg):
            call = self.parent(parent)
            if isinstance(call, cst.Call) and dotted(call.func) in ("isinstance", "issubclass") and any(
                    self.a.is_run(a.value) for a in call.args):
                kind = "unmapped"  # isinstance(run, _OfflineRun): about a run, so tracking
        self.add(node, kind, node.value, maps_to="left as is (not tracking)",
                 flag=f"uses Azure ML's {node.value} ({qualified}): keeps azureml-core; an MLflow run is "
                      f"never one", mapped=False).todo = (
            f"uses Azure ML's {node.value}: an MLflow run is never one, and it keeps azureml-core")

    def visit_Attribute(self, node: cst.Attribute) -> None:
        parent = self.parent(node)
        if isinstance(parent, cst.Call) and parent.func is node:
            return
        if not self.a.is_run(node.value):
            return
        attr = node.attr.value
        if self.a.is_run(node):
            return  # `self.run` itself is a run, not something read from one
        if self.a.expr_kind(node.value) == ("run", "remote"):
            return  # a submitted job's run: control plane
        if attr in FEEDS_ATTRIBUTES:
            self.a.feed(node.value, f"run.{attr}", self.pos(node).line)
        if isinstance(parent, cst.AssignTarget):
            return  # run.display_name = ...: a property set, handled with the assignment
        if attr in READ_ATTRIBUTES:
            site = self.add(node, "read", attr, maps_to="no MLflow write (v1 reads the run)",
                            flag=f"read-back of run.{attr}: v1 asks Azure ML; give it an MLflow meaning by hand",
                            mapped=False, receiver=node.value)
        else:
            site = self.add(node, "unmapped", attr, maps_to="no mapping in the bridge",
                            flag=f"run.{attr} has no MLflow mapping", mapped=False, receiver=node.value)
        site.todo = site.flag

    def in_container(self, node) -> bool:
        """A child run made into a list (a comprehension, a list literal, `.append()`): runs that
        live side by side, not one nested in the other."""
        parent = self.parent(node)
        if isinstance(parent, (cst.ListComp, cst.GeneratorExp, cst.SetComp)) and parent.elt is node:
            return True
        if isinstance(parent, cst.Element):
            return True
        if isinstance(parent, cst.DictElement) and parent.value is node:
            return True
        if isinstance(parent, cst.Arg):
            call = self.parent(parent)
            return isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute) \
                and call.func.attr.value in ("append", "insert")
        return False

    def note_param_runs(self, node: cst.Call) -> None:
        """`train(run)` where train is defined in this file: train's parameter is a run too."""
        func = node.func
        name = func.value if isinstance(func, cst.Name) else (
            func.attr.value if isinstance(func, cst.Attribute) and dotted(func.value) in ("self", "cls") else None)
        if name is None:
            return
        for i, arg in enumerate(node.args):
            if arg.star or not self.a.is_run(arg.value):
                continue
            slot = arg.keyword.value if arg.keyword is not None else i + (1 if isinstance(func, cst.Attribute) else 0)
            self.a.found_param_runs.setdefault(name, set()).add(slot)
            self.a.param_sources.setdefault(name, set()).add((dotted(arg.value), self.a.expr_kind(arg.value)[1]))

    def producer(self, node: cst.Call, attr: str, receiver) -> None:
        if attr == "get_context":
            self.a.get_context_sites += 1
            site = self.add(node, "run", "get_context", receiver=receiver,
                            maps_to="an MLflow run (mlflow.start_run())")
            site.extra["repeat"] = self.a.get_context_sites > 1 or site.in_loop
            self.site_for_call[node] = site
            return
        site = self.add(node, "run", "start_logging", receiver=receiver)
        binding = self.a.binding_of(receiver)
        site.extra["experiment"] = binding.extra.get("name") if binding is not None else None
        self.bind(site, node)
        self.site_for_call[node] = site
        self.describe(site)

    def run_call(self, node: cst.Call, attr: str, receiver) -> None:
        if self.a.expr_kind(receiver) == ("run", "remote"):
            if attr in translate.TRANSLATORS:
                why = ("a run of experiment.submit() (or fetched by id) is a job Azure ML runs, not a run "
                       "this script makes: the call stays on Azure ML v1 (the bridge serves it)")
                site = self.add(node, "call", attr, receiver=receiver, maps_to="left on v1", flag=why,
                                mapped=False)
                site.todo = why
                site.extra["v1"] = True
            else:
                self.add(node, "outside", attr, maps_to="left as is (not tracking)",
                         flag=f"Azure ML call outside tracking (a submitted run's {attr}): keeps azureml-core",
                         mapped=False)
            return
        if attr in FEEDS_METHODS:
            self.a.feed(receiver, f"run.{attr}()", self.pos(node).line)
        if attr in translate.TRANSLATORS and attr not in WITH_METHODS + PROPERTY_METHODS + ("start_logging",):
            site = self.add(node, "call", attr, receiver=receiver)
            site.extra["statement"] = isinstance(self.parent(node), cst.Expr)
            site.route = self.a.route_for(receiver)
            self.bind(site, node)
            self.site_for_call[node] = site
            if attr == "child_run":
                parent_key = dotted(receiver)
                top = self.a.stack[-1] if self.a.stack else None
                site.extra["client"] = not (top is None or top == parent_key) or self.in_container(node)
            if attr in ("complete", "fail", "cancel"):
                key = dotted(receiver)
                if key:
                    self.a.end(key)
            self.describe(site)
            return
        if attr in READ_METHODS:
            served = attr in getattr(patch, "READ_METHODS", ())
            site = self.add(node, "read", attr, receiver=receiver,
                            maps_to="read from MLflow by the bridge (mlflow mode); no native form" if served
                            else "no MLflow write (v1 reads the run)",
                            flag=f"read-back: run.{attr}() asks Azure ML; rewrite it against MLflow by hand",
                            mapped=False)
        elif attr == "register_model":
            site = self.add(node, "unmapped", attr, receiver=receiver,
                            maps_to="mlflow.register_model on the run's artifacts (migrate); the bridge "
                                    "registers it in MLflow's model registry (mlflow mode)",
                            flag="run.register_model(): a model registry call, rewritten by migrate",
                            mapped=False)
            site.route = self.a.route_for(receiver)  # the run whose artifacts hold the model
        else:
            site = self.add(node, "unmapped", attr, receiver=receiver,
                            maps_to="no mapping in the bridge",
                            flag=f"run.{attr}() has no MLflow mapping", mapped=False)
        site.todo = site.flag

    # -- arguments
    def bind(self, site: Site, node: cst.Call) -> None:
        params = v1_parameters(site.method)
        positional, keywords, splats = [], {}, []
        for arg in node.args:
            if arg.star == "*":
                site.mapped, site.kind = False, "unmapped"
                site.flag = "arguments passed with *: cannot be matched to v1's parameters"
                site.todo = site.flag
                return
            if arg.star == "**":
                splats.append(arg.value)
            elif arg.keyword is not None:
                keywords[arg.keyword.value] = arg.value
            else:
                positional.append(arg.value)
        has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
        if splats and not has_var_kw:
            site.mapped, site.kind = False, "unmapped"
            site.flag = "arguments passed with **: cannot be matched to v1's parameters"
            site.todo = site.flag
            return
        sig = inspect.Signature(params)
        try:
            bound = sig.bind(*range(len(positional)), **{k: k for k in keywords})
        except TypeError as exc:
            site.mapped, site.kind = False, "unmapped"
            site.flag = f"arguments do not fit v1's {site.method}(): {exc}"
            site.todo = site.flag
            return
        for pname, placeholder in bound.arguments.items():
            param = sig.parameters[pname]
            if param.kind is param.VAR_KEYWORD:
                site.columns = {k: keywords[k] for k in placeholder}
            elif param.kind is param.VAR_POSITIONAL:
                continue  # complete(*args): nothing the mapping reads
            elif isinstance(placeholder, int):
                site.args[pname] = positional[placeholder]
            else:
                site.args[pname] = keywords[placeholder]
        site.splats = splats
        scope, order = self.scopes[-1], self.order_of(node)
        for pname, expr in list(site.args.items()) + list(site.columns.items()):
            site.types[pname] = self.a.infer(expr, scope, order)
        if site.method == "log_image":
            plot = site.args.get("plot")
            if plot is not None:
                b = self.a.binding_of(plot)
                site.extra["pyplot"] = b is not None and b.kind == "pyplot"

    def describe(self, site: Site) -> None:
        describe_site(site)


# ---------------------------------------------------------------- describing a site

def _sample(site: Site, pname: str):
    """A value for a parameter when asking translate: the literal itself, else one of its inferred type."""
    expr = site.args.get(pname)
    if expr is None:
        expr = site.columns.get(pname)
    try:
        return literal(expr)
    except Exception:
        pass
    if pname in ("name", "key"):
        return "NAMEPROBE"
    if pname == "plot":
        return _ProbeFigure()
    kind = site.types.get(pname)
    if kind is None and pname == "value" and site.method in LIST_OR_DICT:
        kind = LIST_OR_DICT[site.method]
    if kind == "str" and site.method in RICH_METHODS:
        return json.dumps({"COLPROBE": [1.0]})  # v1 rich metrics take JSON text too
    return {"number": 1.0, "bool": True, "str": "text", "list": [1.0], "dict": {"COLPROBE": [1.0]},
            "none": None}.get(kind, 1.0 if pname not in ("path", "path_or_stream", "names", "paths",
                                                         "tags", "properties") else _default(pname))


def _default(pname):
    return {"path": "PATHPROBE.png", "path_or_stream": "PATHPROBE", "names": ["NAMEPROBE"],
            "paths": ["PATHPROBE"], "tags": {"NAMEPROBE": "text"},
            "properties": {"NAMEPROBE": "text"}}[pname]


def site_ops(site: Site) -> list:
    """What translate makes of this call, for sample values where the code is not literal."""
    method = site.method
    if site.kind == "with":
        return probe("__enter__") + probe("__exit__")
    kwargs = {p: _sample(site, p) for p in site.args}
    if site.columns or site.splats:
        kwargs.update({c: _sample(site, c) for c in site.columns})
        if site.splats:
            kwargs["COLPROBE"] = 1.0
    result = None
    if method == "child_run":
        result = object()
    elif method == "create_children":
        count = kwargs.get("count")
        values = kwargs.get("tag_values")
        n = count if isinstance(count, int) else (len(values) if isinstance(values, list) else 1)
        result = [object()] * max(1, min(n, 3))
    instance = None
    if method == "start_logging":
        instance = type("Experiment", (), {"name": "EXPERIMENTPROBE"})()
    if method == "log_image" and kwargs.get("path") is None and kwargs.get("plot") is None:
        kwargs.pop("path", None)
    return probe(method, result=result, instance=instance, **kwargs)


def _show(text: str, site: Site) -> str:
    name = display_name(site.args["name"]) if "name" in site.args else None
    if name is not None:
        text = text.replace("NAMEPROBE", name)
    return text.replace("EXPERIMENTPROBE", "<experiment name>").replace("COLPROBE", "<column>")


def describe_ops(ops: list, site: Site) -> str:
    parts: list[str] = []
    seen: set = set()

    def add(text):
        if text not in seen:
            seen.add(text)
            parts.append(text)

    metric_keys = []
    for op in ops:
        t = type(op)
        if t is ops_module.Metric:
            if op.key not in metric_keys:
                metric_keys.append(op.key)
        elif t is ops_module.Param:
            add(f"param {op.key}")
        elif t is ops_module.Tag:
            if op.key.startswith(translate.RENAMED_TAG_PREFIX):
                continue
            add(f"tag {op.key}")
        elif t is ops_module.AppendText:
            add(f"text artifact {op.path} (every value, one per line)")
        elif t is ops_module.AppendTable:
            add(f"JSON table artifact {op.path}")
        elif t is ops_module.ExtendList:
            add(f"JSON list artifact {op.path}")
        elif t in (ops_module.Artifact, ops_module.ArtifactFile):
            add(f"artifact {op.path}")
        elif t is ops_module.Chart:
            add(f"chart {op.path}")
        elif t is ops_module.Image:
            add(f"image series {op.key} (step = n-th time)")
        elif t is ops_module.End:
            add(f"run status {op.status}")
        elif t is translate.NewRun:
            if op.experiment:
                add(f"run in experiment {op.experiment}")
            else:
                add("nested run" + (f" {op.name}" if op.name else "") +
                    (" tagged " + ", ".join(op.tags) if op.tags else ""))
        elif t is ops_module.CreateRun:
            add("the run from the start of the block")
    if metric_keys:
        if site.method in ("log_row", "log_table"):
            step = "step = row index"
        elif site.method == "log_list" or (site.method == "log" and site.types.get("value") == "list"):
            step = "one step per element"
        elif "step" in site.args:
            step = "step=" + cst.Module([]).code_for_node(site.args["step"])
        else:
            step = "step = per-run counter 0,1,2…"
        keys = ", ".join(metric_keys[:4]) + (", …" if len(metric_keys) > 4 else "")
        parts.insert(0, f"metric {keys} ({step})")
    return _show("; ".join(parts) if parts else "nothing to record", site)


def describe_site(site: Site) -> None:
    """Fill maps_to and flag from translate."""
    if not site.mapped:
        return
    try:
        ops = site_ops(site)
    except Exception:
        ops = None
    if ops is None:
        site.maps_to = doc_line(site.method if site.kind != "with" else "__enter__")
        return
    site.maps_to = describe_ops(ops, site)
    if site.kind == "with":
        failed = [op.status for op in probe("__exit__", ValueError, ValueError("x"), None)
                  if type(op) is ops_module.End]
        site.maps_to = f"{site.maps_to} at the end of the block ({failed[0]} on an exception)"
    flags = []
    for op in ops:
        if type(op) is ops_module.Note:
            if op.what == "renamed":
                flags.append(f"{op.name!r} is not a valid MLflow key: recorded as {op.detail!r}")
            elif op.what == "list_in_log":
                flags.append("log() of a list: the bridge logs it as log_list (one step per element)")
    if site.method == "log" and site.types.get("value") is None and "value" in site.args \
            and not is_literal(site.args["value"]):
        site.maps_to += " if a number (a str: text artifact; a list: one step per element)"
    if site.method == "log" and "step" in site.args:
        binding_origin = site.extra.get("origin")
        if binding_origin in (None, "get_context", "param"):
            flags.append("step= on a run that may be offline (Run.get_context() outside a job)")
    site.flag = "; ".join(flags)


# ---------------------------------------------------------------- per file

@dataclass
class FileScan:
    path: str
    units: list
    notebook: dict | None
    analysis: Analysis | None
    sites: list
    error: str = ""   # the file could not be read or parsed: one line

    @property
    def groups(self) -> list:
        """Units that share one namespace: a notebook's cells; each `%%writefile` script alone."""
        main = [u for u in self.units if u.writefile is None]
        return ([main] if main else []) + [[u] for u in self.units if u.writefile is not None]

    @property
    def unmapped(self) -> list:
        return [s for s in self.sites if not s.mapped and not s.extra.get("v1")]


def analyse(units: list[Unit]) -> Analysis:
    """Two passes: the second knows which function parameters receive a run."""
    param_runs: dict = {}
    seeds: dict = {}
    functions = _function_params(units)
    for _ in range(3):
        analysis = Analysis(units, param_runs, seeds)
        for unit in units:
            if unit.wrapper is None:
                continue
            visitor = _Visitor(analysis, unit)
            unit.wrapper.visit(visitor)
        found = {}
        for fname, slots in analysis.found_param_runs.items():
            for params in functions.get(fname, ()):
                for slot in slots:
                    if isinstance(slot, int):
                        if slot < len(params):
                            found.setdefault(fname, set()).add(params[slot])
                    elif slot in params:
                        found.setdefault(fname, set()).add(slot)
        new_seeds = {k: v for k, v in analysis.global_bindings.items() if k not in seeds}
        if all(found.get(k, set()) <= param_runs.get(k, set()) for k in found) and not new_seeds:
            break
        seeds.update(new_seeds)
        for k, v in found.items():
            param_runs.setdefault(k, set()).update(v)
    for site in analysis.sites:
        if site.receiver is not None:
            b = analysis.binding_of(site.receiver)
            site.extra.setdefault("origin", b.origin if b else None)
        if site.kind == "call" and site.method == "log" and "step" in site.args and site.mapped:
            describe_site(site)
    _keep_runs_that_feed_azure_ml(analysis)
    _mark_once(analysis)
    return analysis


def _keep_runs_that_feed_azure_ml(analysis: Analysis) -> None:
    """A run whose object other Azure ML code needs (`run.experiment.workspace`, `run.input_datasets`,
    `ExplanationClient.from_run(run)`) stays a v1 run: its Run.get_context() is kept, what it feeds
    works as before, and its tracking calls go to MLflow's active run. A function given a run of
    experiment.submit() keeps its calls on v1."""
    kept = {}
    for site in analysis.sites:
        if site.method == "get_context" and site.kind == "run":
            for name in site.extra.get("names", ()):
                if name in analysis.feeds:
                    kept[name] = analysis.feeds[name]
                    site.extra["keep"] = (f"{name} feeds other Azure ML code ({analysis.feeds[name]}): it "
                                          "stays a v1 run for that; its tracking calls go to MLflow")
                    site.maps_to = "stays a v1 run (mlflow.start_run() is put before it for the tracking calls)"
                    site.flag = site.extra["keep"]
    remote_fns = {fn for fn, sources in analysis.param_sources.items() if any(o == "remote" for _, o in sources)}
    kept_fns = {fn for fn, sources in analysis.param_sources.items() if any(n in kept for n, _ in sources)}
    for site in analysis.sites:
        key = dotted(site.receiver) if site.receiver is not None else None
        fn = site.extra.get("function")
        param = site.extra.get("origin") == "param"
        if key in kept or (param and fn in kept_fns):
            if site.kind in ("read", "unmapped") and site.method != "register_model":
                site.extra["v1"] = True  # a v1 run: what it reads still works
                site.maps_to, site.flag, site.todo = "left as it is: the run stays a v1 run", "", ""
            site.route = None
        if param and fn in remote_fns and site.kind == "call":
            why = (f"{fn}() is given a run of experiment.submit(): a job Azure ML runs, not a run this "
                   "script makes; the call stays on Azure ML v1 (the bridge serves it)")
            site.mapped, site.todo, site.flag, site.maps_to = False, why, why, "left on v1"
            site.extra["v1"] = True


def _function_params(units) -> dict:
    functions: dict = {}
    for unit in units:
        if unit.module is None:
            continue

        class Collect(cst.CSTVisitor):
            def visit_FunctionDef(self, node):
                functions.setdefault(node.name.value, []).append([p.name.value for p in node.params.params])

        unit.module.visit(Collect())
    return functions


def _matcher(expr, fmt="{}"):
    """A literal name, or a regex for an f-string, or None (could be anything)."""
    try:
        value = literal(expr)
        if isinstance(value, str):
            return ("literal", fmt.format(value))
    except Exception:
        pass
    pattern = fstring_pattern(expr)
    if pattern is not None:
        return ("regex", pattern)
    return None


def _keys(site: Site) -> list:
    """The counters and accumulated artifacts a call touches: (namespace, matcher)."""
    m, name = site.method, site.args.get("name")
    kind = site.types.get("value")
    if site.kind != "call" or not site.mapped or name is None:
        return []
    if m == "log":
        if kind == "str":
            return [("text", _matcher(name))]
        if "step" in site.args and kind != "list":
            return []
        return [("step", _matcher(name))]
    if m == "log_list":
        return [("step", _matcher(name)), ("list", _matcher(name))]
    if m == "log_image":
        if given(site, "plot"):
            return [("image", _matcher(name))]
        return [("repeat", _matcher(name))]
    if m in ("log_confusion_matrix", "log_accuracy_table", "log_predictions", "log_residuals"):
        return [("repeat", _matcher(name))]
    return []


def _mark_once(analysis: Analysis) -> None:
    """A call is `once` when it runs at most once and nothing else touches its counters."""
    touched: dict = {}
    for site in analysis.sites:
        site.keys = _keys(site)
        for ns, matcher in site.keys:
            touched.setdefault(ns, []).append((site, matcher))
    for site in analysis.sites:
        if not site.keys or site.in_loop:
            continue
        once = True
        for ns, matcher in site.keys:
            if matcher is None or matcher[0] != "literal":
                once = False
                break
            for other, other_matcher in touched[ns]:
                if other is site:
                    continue
                if other_matcher is None or (other_matcher[0] == "literal" and other_matcher[1] == matcher[1]) \
                        or (other_matcher[0] == "regex" and re.match(other_matcher[1], matcher[1])):
                    once = False
        site.once = once


def scan_file(path: str) -> FileScan:
    try:
        units, notebook = read_units(path)
    except UnicodeDecodeError as exc:
        why = f"could not read: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); " \
              "save it as UTF-8 to scan it"
        return _unreadable(path, why)
    except (OSError, ValueError) as exc:
        return _unreadable(path, f"could not read: {type(exc).__name__}: {exc}")
    if not any("azureml" in u.source or "azml_v1_bridge" in u.source for u in units):
        return FileScan(path, units, notebook, None, [])  # no v1 import: nothing can be bound to a v1 run
    parse_units(units)
    fs = FileScan(path, units, notebook, None, [])
    sites = []
    for group in fs.groups:
        analysis = analyse(group)
        fs.analysis = fs.analysis or analysis
        sites += analysis.sites
    errors = []
    for unit in units:
        if unit.error is not None and ("azureml" in unit.source or "Run." in unit.source):
            sites.append(Site(unit, 0, 0, "error", "parse", "", flag=unit.error, mapped=False))
            errors.append(f"{unit.label} {unit.error}".strip())
    fs.error = "; ".join(errors)
    sites.sort(key=lambda s: (units.index(s.unit), s.line, s.column))
    fs.sites = sites
    return fs


def _unreadable(path: str, why: str) -> FileScan:
    unit = Unit(path, None, "")
    site = Site(unit, 0, 0, "error", "read", "", maps_to="", flag=why, mapped=False)
    return FileScan(path, [unit], None, None, [site], error=why)


def scan_paths(paths) -> list[FileScan]:
    return [scan_file(p) for p in iter_files(paths)]


# ---------------------------------------------------------------- output

def _rows(scans):
    for fs in scans:
        for s in fs.sites:
            yield fs, s


TRACKING_KINDS = ("run", "call", "with", "property", "read", "unmapped")


def summary(scans) -> dict:
    """Counts that mean what they say: `mapped` and `unmapped` are tracking sites (runs, calls on
    runs, read-backs), never import lines nor control-plane calls, which are counted apart."""
    files = [fs for fs in scans if fs.sites]
    sites = [s for _, s in _rows(scans)]
    tracking = [s for s in sites if s.kind in TRACKING_KINDS]
    return {"files_scanned": len(scans), "files_with_v1": len(files), "sites": len(sites),
            "tracking": len(tracking),
            "mapped": sum(1 for s in tracking if s.mapped),
            "flagged": sum(1 for s in tracking if s.mapped and s.flag),
            "unmapped": sum(1 for s in tracking if not s.mapped and not s.extra.get("v1")),
            "kept_on_v1": sum(1 for s in tracking if s.extra.get("v1")),
            "imports": sum(1 for s in sites if s.kind == "import"),
            "control_plane": sum(1 for s in sites if s.kind == "outside"),
            "unreadable": sum(1 for fs in scans if fs.error)}


def format_json(scans) -> str:
    return json.dumps({"summary": summary(scans),
                       "files": [{"file": fs.path, "sites": [s.to_json() for s in fs.sites]}
                                 for fs in scans if fs.sites]}, indent=1, ensure_ascii=False)


def _call_text(s: Site) -> str:
    return s.code


def format_table(scans) -> str:
    lines = []
    for fs in scans:
        if not fs.sites:
            continue
        lines.append(f"{fs.path}  ({len(fs.sites)} v1 sites, {len(fs.unmapped)} unmapped)")
        rows = [(f"{s.line}" + (f" {s.unit.label}" if s.unit.cell is not None else ""),
                 _call_text(s), s.maps_to or "—", ("!! " if not s.mapped else "! ") + s.flag if s.flag else "")
                for s in fs.sites]
        width = [max(len(r[i]) for r in rows) for i in range(2)]
        width = [min(w, 60) for w in width]
        for r in rows:
            call = r[1] if len(r[1]) <= width[1] else r[1][: width[1] - 1] + "…"
            lines.append(f"  {r[0]:>{width[0]}}  {call:<{width[1]}}  -> {r[2]}")
            if r[3]:
                lines.append(f"  {'':>{width[0]}}  {'':<{width[1]}}     {r[3]}")
        lines.append("")
    lines.append(summary_line(scans))
    return "\n".join(lines)


def summary_line(scans) -> str:
    s = summary(scans)
    line = (f"{s['files_with_v1']} of {s['files_scanned']} files use Azure ML v1: {s['tracking']} tracking sites, "
            f"{s['mapped']} mapped ({s['flagged']} flagged), {s['unmapped']} unmapped, {s['kept_on_v1']} kept on v1; "
            f"besides: {s['imports']} import lines, {s['control_plane']} control-plane calls (left as they are)")
    if s["unreadable"]:
        line += f"; {s['unreadable']} file(s) could not be read or parsed"
    return line


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_markdown(scans) -> str:
    s = summary(scans)
    out = ["# Azure ML SDK v1 → MLflow migration", "",
           f"{s['files_with_v1']} of {s['files_scanned']} files use Azure ML v1: **{s['tracking']}** tracking "
           f"sites, {s['mapped']} mapped by the bridge ({s['flagged']} flagged), **{s['unmapped']}** need a "
           f"decision, {s['kept_on_v1']} kept on v1; besides, {s['imports']} import lines and "
           f"{s['control_plane']} control-plane calls.", ""]
    for fs in scans:
        if not fs.sites:
            continue
        out += [f"## `{fs.path}`", "", "| line | v1 call | MLflow | attention |", "|---:|---|---|---|"]
        for site in fs.sites:
            line = f"{site.line}" + (f" {site.unit.label}" if site.unit.cell is not None else "")
            mark = ("❌ " if not site.mapped else "⚠️ ") + site.flag if site.flag else ""
            out.append(f"| {line} | `{_md(site.code)}` | {_md(site.maps_to or '—')} | {_md(mark)} |")
        out.append("")
        todo = fs.unmapped
        if todo:
            out.append("- [ ] " + f"decide on {len(todo)} unmapped site(s) in `{fs.path}`")
            out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=f"{TOOL} scan", description=(
        "List Azure ML SDK v1 tracking usage in Python files and notebooks, with what the bridge "
        "maps each call to and where attention is needed."))
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (.py, .ipynb)")
    parser.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a tracking call cannot be mapped (read-backs, unmapped run methods, ...)")
    parser.add_argument("--tracking-only", action="store_true",
                        help="list tracking only: runs, their calls and read-backs (no control-plane calls "
                             "such as workspaces, compute, data sets, submit)")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        print(f"{TOOL} scan: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    scans = scan_paths(args.paths)
    if args.tracking_only:
        for fs in scans:
            fs.sites = [site for site in fs.sites if site.kind != "outside"]
    text = {"table": format_table, "json": format_json, "markdown": format_markdown}[args.format](scans)
    print(text)
    for fs in scans:
        if fs.error:
            print(f"{fs.path}: skipped: {fs.error}", file=sys.stderr)
    if args.strict and (summary(scans)["unmapped"] or summary(scans)["unreadable"]):
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
