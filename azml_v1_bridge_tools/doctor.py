"""`azml-v1-bridge doctor`: why would (or wouldn't) a v1 script's data reach MLflow?

Prints the resolved configuration (credentials redacted), where a script's runs
would land and why, the versions that matter, whether every v1 method the
bridge patches exists and is patched, and whether the tracking store answers.
Each problem that would stop data reaching MLflow is one line on stderr, and the
exit code is 1 if there is any.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from importlib import metadata
from urllib.parse import unquote, urlsplit

from azml_v1_bridge import azure, causes, config

from . import cli

DISTRIBUTIONS = (("azureml-core", ("azureml-core",)), ("mlflow", ("mlflow", "mlflow-skinny")),
                 ("wrapt", ("wrapt",)))
MODE_MEANING = {
    "mirror": "v1 calls go to Azure ML as before and are copied to MLflow",
    "mlflow": "v1 calls go to MLflow only (Azure ML is not called)",
    "off": "the bridge is off: nothing goes to MLflow",
}


DEFAULT_TIMEOUT = 60.0  # a cold store (server starting, first migration) can take tens of seconds
DEFAULT_SLOW = 5.0      # answered, but after this long: said to be slow


LABEL_WIDTH = len("tracking store")  # the longest label: lines print as they are found
HEADER = "azml-v1-bridge doctor"


class Doctor:
    def __init__(self, timeout: float = DEFAULT_TIMEOUT, slow: float = DEFAULT_SLOW, stream=None):
        self.timeout = timeout
        self.slow = slow
        self.stream = stream  # where to print each line as soon as it is known (else render() has all)
        self.started = False
        self.lines: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.problems: list[str] = []
        self.secrets: list[str] = []
        self.client = None
        self.uri: str | None = None

    # ------------------------------------------------------------ output

    def info(self, label: str, text: str) -> None:
        self.lines.append((label, text))
        if self.stream is not None:
            self.stream.write(self.scrub(self._line(label, text)) + "\n")
            self.stream.flush()

    @staticmethod
    def _line(label: str, text: str) -> str:
        return f"  {label.ljust(LABEL_WIDTH)}  {text}"

    def start(self) -> None:
        """The first line at once: the checks after it load MLflow and azureml (seconds)."""
        if self.stream is not None and not self.started:
            self.stream.write(HEADER + "\n")
            self.stream.flush()
        self.started = True

    def note(self, text: str) -> None:
        self.notes.append(text)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def scrub(self, text: str) -> str:
        text = config.redact(str(text))
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def render(self) -> tuple[str, str]:
        """stdout and stderr text; stdout without the lines already streamed."""
        out = [] if self.stream is not None else [HEADER] + [self._line(l, t) for l, t in self.lines]
        if self.notes:
            out.append("notes:")
            out += [f"  - {n}" for n in self.notes]
        if self.problems:
            out.append(f"{len(self.problems)} problem(s) would stop data reaching MLflow (listed on stderr)")
        else:
            out.append("OK: nothing found that would stop data reaching MLflow")
        err = [f"azml-v1-bridge doctor: problem: {p}" for p in self.problems]
        return (self.scrub("\n".join(out)) + "\n",
                self.scrub("\n".join(err)) + "\n" if err else "")

    # ------------------------------------------------------------ checks

    def run(self) -> None:
        self.collect_secrets()
        self.start()
        cfg = self.check_config()
        self.check_tracking_uri()
        self.check_versions()
        self.check_methods(cfg)
        self.check_store()
        self.check_destination()
        self.check_launcher()
        self.check_journals(cfg)

    def collect_secrets(self) -> None:
        uri = config.mlflow_setting(config.MLFLOW_TRACKING_URI) or ""
        userinfo = urlsplit(uri).netloc.rpartition("@")[0] if "@" in uri else ""
        candidates = [userinfo, userinfo.partition(":")[2]]
        candidates.append(unquote(userinfo.partition(":")[2]))
        for name in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            candidates.append(os.environ.get(name, ""))
        self.secrets = sorted({c for c in candidates if len(c) >= 3}, key=len, reverse=True)

    def check_config(self):
        raw = os.environ.get(config.MODE)
        try:
            cfg = config.load()
        except config.ConfigError as exc:
            self.problem(str(exc))
            self.info("mode", f"{raw!r} (invalid)")
            return None
        source = config.MODE if raw and raw.strip() else f"default; {config.MODE} is not set"
        self.info("mode", f"{cfg.mode} ({source}): {MODE_MEANING[cfg.mode]}")
        if cfg.mode == "off":
            self.problem(f"{config.MODE}=off: the bridge is disabled, no v1 call reaches MLflow")
        settings = [f"{name}={os.environ[name].strip()}" for name in sorted(_bridge_variables())
                    if name != config.MODE and os.environ.get(name, "").strip()]
        if settings:
            self.info("settings", ", ".join(settings))
        return cfg

    def check_tracking_uri(self) -> None:
        uri = config.mlflow_setting(config.MLFLOW_TRACKING_URI)
        source = config.MLFLOW_TRACKING_URI
        if uri is None:
            try:
                import mlflow

                uri = mlflow.get_tracking_uri()
                source = f"MLflow's default: {config.MLFLOW_TRACKING_URI} is not set"
            except Exception as exc:
                uri, source = None, f"unknown: {type(exc).__name__}: {exc}"
        self.uri = uri
        self.info("tracking URI", f"{uri} ({source})")

    def check_versions(self) -> None:
        from azml_v1_bridge import __version__

        parts = [f"Python {sys.version.split()[0]}"]
        for label, names in DISTRIBUTIONS:
            version = found = None
            for name in names:
                try:
                    version, found = metadata.version(name), name
                    break
                except metadata.PackageNotFoundError:
                    continue
            parts.append(f"{found or label} {version or 'NOT INSTALLED'}")
            if version is None:
                self.problem(f"{label} is not installed in this Python ({sys.executable})")
        parts.append(f"azml_v1_bridge {__version__} ({os.path.dirname(os.path.abspath(config.__file__))})")
        self.info("versions", ", ".join(parts))

    def check_methods(self, cfg) -> None:
        """Every (class, method) the bridge patches: present in azureml-core, and patched."""
        import importlib

        try:
            import wrapt

            from azml_v1_bridge import patch
        except ImportError as exc:
            self.problem(f"the bridge cannot patch anything: {exc}")
            return
        proxy = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)
        bridged = getattr(patch, "is_bridged", None) or (lambda attribute: isinstance(attribute, proxy))
        active = cfg is not None and cfg.mode != "off" and patch.is_enabled()
        summary, missing, unpatched = [], [], []
        for module_name, _, _ in patch.TARGETS:  # importing them applies the patches
            try:
                importlib.import_module(module_name)
            except Exception:
                pass  # reported below
        # Methods the bridge gives a class that lacks them (_OfflineRun.create_children).
        added = {(cls, name) for cls, name, original in list(patch.PATCHES.saved)
                 if original is getattr(patch, "_ABSENT", None)}
        for module_name, class_name, methods in patch.TARGETS:
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except Exception as exc:
                self.problem(f"cannot import {module_name}.{class_name}: {type(exc).__name__}: {exc}")
                continue
            present = patched = 0
            for name in methods:
                owner = next((k for k in cls.__mro__ if name in k.__dict__), None)
                if owner is None:
                    missing.append(f"{class_name}.{name}")
                    continue
                present += 1
                if bridged(owner.__dict__[name]) or (owner, name) in added:
                    patched += 1
                elif active:
                    unpatched.append(f"{class_name}.{name} (defined in {owner.__name__})")
            text = f"{class_name} {present}/{len(methods)}"
            if active:
                text += f" present, {patched} patched"
            summary.append(text)
        self.info("v1 methods", "; ".join(summary) + ("" if active else " present (not patched: bridge off)"))
        if missing:
            self.note(f"missing in this azureml-core, skipped by the bridge (scripts cannot call them "
                      f"either): {', '.join(missing)}")
        if unpatched:
            self.problem(f"present but not patched, so not bridged: {', '.join(unpatched)}")

    def check_store(self) -> None:
        uri = self.uri
        if not uri:
            self.problem("no tracking URI could be resolved")
            return
        scheme = urlsplit(uri).scheme.lower()
        for early in (causes.check_store_modules(uri), causes.check_local_store(uri)):
            if early is not None:  # MLflow would say "unsupported URI", or retry for a minute
                self.problem(f"tracking store {early.message}")
                return
        if scheme in ("", "file", "sqlite"):
            local = _local_path(uri, scheme)
            if local is not None and not os.path.exists(local):
                self.info("tracking store", f"{local} does not exist yet; MLflow creates it on the first run")
                return
        try:  # loading MLflow takes seconds on a busy machine: not the store's time
            from mlflow.tracking import MlflowClient
        except Exception as exc:
            self.problem(f"tracking store {causes.classify(exc, uri).message}")
            return
        result: dict = {}
        answered = threading.Event()

        def probe():
            try:
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)
                result["client"] = client
            except BaseException as exc:  # noqa: BLE001 (reported, never raised)
                result["error"] = exc
            answered.set()

        # The probe's own HTTP settings: one try, as long as the whole wait (a run would retry,
        # see config.HTTP_DEFAULTS). A cold store (a server starting, a first sqlite migration)
        # can take tens of seconds: that is slow, not dead.
        os.environ[config.MLFLOW_HTTP_REQUEST_MAX_RETRIES] = "0"
        os.environ[config.MLFLOW_HTTP_REQUEST_TIMEOUT] = str(max(1, int(round(self.timeout))))
        azure.set_cloud_default(uri=uri)  # as a run would: no cloud metadata fetched first
        started = time.monotonic()
        threading.Thread(target=probe, name="azml_v1_bridge-doctor-probe", daemon=True).start()
        answered.wait(self.timeout + 5)
        took = time.monotonic() - started
        if not answered.is_set():
            self.problem(f"tracking store {config.redact(uri)}: timed out: no answer within "
                         f"{self.timeout:g}s (stuck or overloaded; `--timeout SECONDS` waits longer)")
        elif "error" in result:
            self.problem(f"tracking store {causes.classify(result['error'], uri).message}")
        else:
            self.client = result["client"]
            if took > self.slow:
                self.info("tracking store", f"answers ({scheme or 'file'}), but slowly: {took:.1f}s for "
                                            "the first request")
                self.note(f"the tracking store took {took:.1f}s to answer (a cold start or a loaded "
                          "store): slow, not down; the bridge's writer retries, so data still lands")
            else:
                self.info("tracking store", f"answers ({scheme or 'file'}) in {took:.1f}s")

    def check_destination(self) -> None:
        """Which experiment and run a v1 script would land in, and why (runs.py's order)."""
        run_id = config.mlflow_setting(config.MLFLOW_RUN_ID)
        launcher = config.mlflow_setting(config.LAUNCHER_RUN_ID)
        first = "mlflow.set_experiment()/mlflow.start_run() in the script would come first"
        if run_id:
            why = f"{config.MLFLOW_RUN_ID}"
            if launcher == run_id:
                why += ", created by `azml-v1-bridge run --one-run`, which ends it"
            else:
                why += "; the bridge never ends it"
            self.info("run", f"{run_id} ({why}): every top-level v1 run logs into it")
            experiment = "the experiment of that run"
            if self.client is not None:
                try:
                    run = self.client.get_run(run_id)
                    experiment = self._describe_experiment_id(run.info.experiment_id, "of that run")
                    if run.info.lifecycle_stage == "deleted":
                        self.problem(f"MLflow run {run_id} ({config.MLFLOW_RUN_ID}) is deleted: "
                                     "MLflow refuses data for it")
                except Exception as exc:
                    if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                        self.note(f"MLflow run {run_id} ({config.MLFLOW_RUN_ID}) does not exist in this "
                                  "store: the bridge logs to a new run instead")
                    else:
                        self.note(f"could not read MLflow run {run_id}: {_reason(exc, self.uri)}")
            self.info("experiment", experiment)
            return
        name = config.mlflow_setting(config.MLFLOW_EXPERIMENT_NAME)
        experiment_id = config.mlflow_setting(config.MLFLOW_EXPERIMENT_ID)
        if name:
            text = f"{name!r} ({config.MLFLOW_EXPERIMENT_NAME})"
            if experiment_id:
                text += f"; {config.MLFLOW_EXPERIMENT_ID}={experiment_id} is ignored"
            if self.client is not None:
                try:
                    found = self.client.get_experiment_by_name(name)
                    if found is None:
                        text += ": does not exist yet, created on the first run"
                    elif found.lifecycle_stage == "deleted":
                        self.problem(f"experiment {name!r} is deleted: MLflow refuses new runs in it "
                                     "(restore it, or choose another name)")
                        text += ": DELETED"
                    else:
                        text += f": id {found.experiment_id}"
                except Exception as exc:
                    text += f": could not be read ({_reason(exc, self.uri)})"
            self.info("experiment", text + f"; {first}")
        elif experiment_id:
            self.info("experiment", self._describe_experiment_id(experiment_id, f"({config.MLFLOW_EXPERIMENT_ID})",
                                                                 must_exist=True) + f"; {first}")
        else:
            self.info("experiment", "the v1 experiment's name (Experiment(ws, NAME), or the job's); "
                                    "a Run.get_context() outside a job has none: MLflow's default "
                                    f"experiment (id 0). {first}")
        if launcher:
            self.info("run", f"{launcher} ({config.LAUNCHER_RUN_ID}, created by `azml-v1-bridge run`, "
                             "which ends it) for Run.get_context(); start_logging() and the "
                             "script's own mlflow.start_run() make their own runs")
            return
        self.info("run", "a new MLflow run per v1 run (child runs nested under their parent), "
                         "ended when the v1 run ends, or at exit")

    def _describe_experiment_id(self, experiment_id: str, why: str, must_exist: bool = False) -> str:
        text = f"id {experiment_id} {why}"
        if self.client is None:
            return text
        try:
            found = self.client.get_experiment(experiment_id)
        except Exception as exc:
            if must_exist:
                self.problem(f"experiment id {experiment_id} ({config.MLFLOW_EXPERIMENT_ID}) cannot be "
                             f"used: {_reason(exc, self.uri)}")
            return text + ": NOT FOUND"
        if found.lifecycle_stage == "deleted":
            self.problem(f"experiment id {experiment_id} ({found.name!r}) is deleted: MLflow refuses "
                         "new runs in it")
            return text + f" {found.name!r}: DELETED"
        return text + f": {found.name!r}"

    def check_launcher(self) -> None:
        entries = os.environ.get(config.PYTHONPATH, "").split(os.pathsep)
        if cli.BOOTSTRAP_DIR in entries:
            self.info("launcher", "active: Python processes started from here load the bridge")
        else:
            self.info("launcher", "not active here: a script needs `import azml_v1_bridge`, or run it as "
                                  "`azml-v1-bridge run -- python script.py`")

    def check_journals(self, cfg) -> None:
        paths = set()
        folder = config.DEFAULT_JOURNAL_DIR
        if os.path.isdir(folder):
            paths.update(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jsonl"))
        if cfg is not None and cfg.journal and os.path.isfile(cfg.journal):
            paths.add(cfg.journal)
        for path in sorted(paths):
            if os.path.getsize(path) > 0:
                self.note(f"journal {os.path.abspath(path)} holds data that did not reach MLflow; "
                          f"deliver it with `azml-v1-bridge replay {path}`")


def _bridge_variables() -> list:
    return [value for name, value in vars(config).items()
            if name.isupper() and isinstance(value, str) and value.startswith("AZML_V1_BRIDGE_")]


def _local_path(uri: str, scheme: str) -> str | None:
    if scheme == "sqlite":
        rest = uri.split("://", 1)[1] if "://" in uri else ""
        path = rest[1:] if rest.startswith("/") else rest
        path = path.split("?", 1)[0]
        return None if path in ("", ":memory:") else path
    if scheme == "file":
        return unquote(urlsplit(uri).path)
    return uri


def _reason(exc: BaseException, uri: str | None = None) -> str:
    """One short line for a store error (causes.classify, without the store's name)."""
    return causes.classify(exc, uri).reason


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{cli.PROG} doctor",
        description="Show where a v1 script's data would go and check that it can get there. "
                    "The options act as the variables they name, for this check only.")
    cli.add_config_options(parser)
    parser.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for the tracking store to answer (default {DEFAULT_TIMEOUT:g}: "
                             "a cold store can take that long)")
    parser.add_argument("--slow", type=_positive, default=DEFAULT_SLOW, metavar="SECONDS",
                        help=f"an answer later than this is reported as slow (default {DEFAULT_SLOW:g})")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cli.apply_config_options(args, os.environ)
    doctor = Doctor(args.timeout, args.slow, stream=sys.stdout)
    doctor.collect_secrets()
    doctor.start()
    try:  # the options may change the mode: patch (or not) as a script would
        import azml_v1_bridge

        azml_v1_bridge.enable()
    except config.ConfigError:
        pass  # reported by check_config
    except Exception:
        pass  # reported by check_methods
    doctor.run()
    out, err = doctor.render()
    sys.stdout.write(out)
    sys.stdout.flush()
    if err:
        sys.stderr.write(err)
    return 1 if doctor.problems else 0
