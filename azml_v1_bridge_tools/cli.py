"""`azml-v1-bridge`: the launcher and the tools around the bridge.

    azml-v1-bridge run [--mode M] [--tracking-uri U] [--experiment X] [--run-per-process] -- COMMAND ARGS...
    azml-v1-bridge doctor [--mode M] [--tracking-uri U] [--experiment X]
    azml-v1-bridge replay ...        (azml_v1_bridge_tools.replay)
    azml-v1-bridge scan ... / migrate ...

`run` starts COMMAND with `_bootstrap/` first on PYTHONPATH: every Python process
it starts, however deep, loads `_bootstrap/sitecustomize.py`, which imports the
bridge. The options are only a spelling of the environment variables named in
config.py; COMMAND's exit code is passed through (killed by signal N: 128+N).
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys

from azml_v1_bridge import config

PROG = "azml-v1-bridge"
# The runtime's folder, found without importing it (an import would activate the bridge here).
BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(config.__file__)), "_bootstrap")
DELEGATED = {
    "replay": "deliver a journal written while the tracking store was unreachable",
    "scan": "list the v1 calls in a code base and how each maps to MLflow",
    "migrate": "rewrite v1 calls to MLflow calls",
}
# A module a tool needs that is an extra of the package: module -> (package, extra).
OPTIONAL = {"libcst": ("libcst", "tools")}
# Signals the launcher passes on to COMMAND while it waits.
FORWARDED = ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# Sent by a terminal to its whole foreground process group: COMMAND has it already.
TERMINAL_SIGNALS = ("SIGINT", "SIGQUIT")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        _usage(sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from azml_v1_bridge import __version__

        print(f"{PROG} {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run_command(rest)
    if command == "doctor":
        from . import doctor

        return doctor.main(rest)
    if command in DELEGATED:
        return _delegate(command, rest)
    print(f"{PROG}: unknown command {command!r}", file=sys.stderr)
    _usage(sys.stderr)
    return 2


def _usage(out) -> None:
    lines = [
        f"usage: {PROG} COMMAND ...",
        "",
        "commands:",
        "  run [OPTIONS] -- COMMAND ARGS...   run COMMAND with the bridge active in every Python process it starts",
        "  doctor [OPTIONS]                   show the resolved configuration and check it; non-zero exit on problems",
    ]
    lines += [f"  {name:<34} {what}" for name, what in DELEGATED.items()]
    lines += ["", "options:", f"  {'-h, --help':<34} show this help", f"  {'--version':<34} print the version and exit"]
    lines += ["", f"`{PROG} COMMAND --help` tells more. `python -m azml_v1_bridge script.py ARGS` runs one "
              "script with the bridge."]
    out.write("\n".join(lines) + "\n")


def _delegate(name: str, argv: list[str]) -> int:
    module_name = f"azml_v1_bridge_tools.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name in OPTIONAL and exc.name != module_name:  # an extra that is not installed
            package, extra = OPTIONAL[exc.name]
            print(f"{PROG}: {name} needs {package}: pip install 'azml_v1_bridge[{extra}]'", file=sys.stderr)
            return 2
        if exc.name != module_name:
            raise
        print(f"{PROG}: the `{name}` command is not available in this installation "
              f"({module_name} is missing)", file=sys.stderr)
        return 2
    result = module.main(argv)
    return int(result or 0)


# ---------------------------------------------------------------- shared options

def add_config_options(parser: argparse.ArgumentParser) -> None:
    """The options `run` and `doctor` share: each one sets one variable of config.py."""
    parser.add_argument("--mode", choices=config.MODES,
                        help=f"bridge mode ({config.MODE}); default: the variable, else {config.DEFAULT_MODE}")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help=f"MLflow tracking URI ({config.MLFLOW_TRACKING_URI}; with a password in it, "
                             "prefer the variable: command lines are visible to other users)")
    parser.add_argument("--experiment", metavar="NAME",
                        help=f"MLflow experiment name ({config.MLFLOW_EXPERIMENT_NAME}; "
                             f"clears {config.MLFLOW_EXPERIMENT_ID})")
    parser.add_argument("--journal", metavar="PATH",
                        help=f"where undelivered data is journaled ({config.JOURNAL})")
    parser.add_argument("--no-report", action="store_true",
                        help=f"do not print the end-of-run report ({config.REPORT}=0)")


def apply_config_options(args: argparse.Namespace, env: dict) -> dict:
    """Write the options into `env` (a copy of os.environ, or os.environ itself)."""
    if getattr(args, "mode", None):
        env[config.MODE] = args.mode
    if getattr(args, "tracking_uri", None):
        env[config.MLFLOW_TRACKING_URI] = args.tracking_uri
    if getattr(args, "experiment", None):
        env[config.MLFLOW_EXPERIMENT_NAME] = args.experiment
        env.pop(config.MLFLOW_EXPERIMENT_ID, None)
    if getattr(args, "journal", None):
        env[config.JOURNAL] = os.path.abspath(args.journal)
    if getattr(args, "no_report", False):
        env[config.REPORT] = "0"
    return env


def with_bootstrap(pythonpath: str | None) -> str:
    """PYTHONPATH with the bootstrap folder first (once, however often launchers nest)."""
    entries = [p for p in pythonpath.split(os.pathsep) if p != BOOTSTRAP_DIR] if pythonpath else []
    return os.pathsep.join([BOOTSTRAP_DIR] + entries)


# ---------------------------------------------------------------- run

def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} run",
        description="Run COMMAND (a script, `python -m pkg`, a shell wrapper...) with the bridge "
                    "active in every Python process it starts; the scripts import nothing. "
                    "COMMAND's exit code is passed through (killed by signal N: 128+N).")
    add_config_options(parser)
    parser.add_argument("--one-run", action="store_true",
                        help="the default, kept for old command lines: one MLflow run for the whole "
                             f"command, created up front and handed to every process "
                             f"({config.LAUNCHER_RUN_ID}) as the run of Run.get_context(); the launcher ends "
                             "it after COMMAND exits: FINISHED, or FAILED when the exit code is not 0 "
                             "or a process failed")
    parser.add_argument("--run-per-process", action="store_true",
                        help="each Python process makes its own MLflow run(s) instead")
    parser.add_argument("--run-name", metavar="NAME", help="name of the command's run (not with --run-per-process)")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS",
                        help="the command to run")
    return parser


def run_command(argv: list[str]) -> int:
    parser = _run_parser()
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.print_usage(sys.stderr)
        print(f"{PROG} run: no COMMAND given (try `{PROG} run -- python train.py`)", file=sys.stderr)
        return 2
    env = apply_config_options(args, dict(os.environ))
    try:
        config.load(env)  # a bad setting stops here, before anything starts
    except config.ConfigError as exc:
        print(f"{PROG} run: {exc}", file=sys.stderr)
        return 2
    command = bridged_python(command, env)
    env[config.PYTHONPATH] = with_bootstrap(env.get(config.PYTHONPATH))
    if args.one_run and args.run_per_process:
        print(f"{PROG} run: --one-run and --run-per-process exclude each other", file=sys.stderr)
        return 2
    # One job, one run (as v1 jobs were), unless asked otherwise or nothing is bridged.
    one_run = not args.run_per_process and config.load(env).mode != "off"
    if one_run and env.get(config.LAUNCHER_RUN_ID):
        one_run = False  # under another `azml-v1-bridge run`: its run is the job's run
    if one_run and env.get(config.MLFLOW_RUN_ID) and not args.one_run:
        one_run = False  # a run is given (Azure ML v2 jobs set it): every process logs to it, quietly
    shared = start_shared_run(env, command, args.run_name) if one_run else None
    code = execute(command, env)
    if shared is not None:
        end_shared_run(shared, code, env)
    return code


_BARE_PYTHON = re.compile(r"python(3(\.\d+)?)?")


def bridged_python(command: list[str], env: dict) -> list[str]:
    """`python`/`python3` as COMMAND runs the first one on PATH: from a venv that is not
    activated that is another interpreter, without the bridge. Then COMMAND runs on the
    launcher's own interpreter instead (which has the bridge), and a note names both."""
    word = command[0]
    if os.sep in word or not _BARE_PYTHON.fullmatch(word):
        return command
    found = shutil.which(word, path=env.get("PATH", os.defpath))
    if found is None or _same_folder(found, sys.executable):  # this very environment
        return command
    probe_env = dict(env)
    probe_env.pop("PYTHONSTARTUP", None)
    try:
        probe = subprocess.run([found, "-c", "import importlib.util as u, sys; "
                                "sys.exit(0 if u.find_spec('azml_v1_bridge') else 3)"],
                               env=probe_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=10)
        bridged = probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        bridged = False
    if bridged:
        return command
    print(f"{PROG} run: `{word}` on PATH is {found}, which cannot import azml_v1_bridge; running "
          f"COMMAND with the launcher's own interpreter {sys.executable} instead (give a full path "
          "to choose another)", file=sys.stderr)
    return [sys.executable] + command[1:]


def _same_folder(a: str, b: str) -> bool:
    # Not samefile: a venv's python is a symlink to the base interpreter, with other packages.
    return os.path.dirname(os.path.abspath(a)) == os.path.dirname(os.path.abspath(b))


def execute(command: list[str], env: dict) -> int:
    """Start COMMAND, pass signals on while it runs, and return its exit code like a shell."""
    started: list = []   # the Popen, once there is one
    pending: list = []   # signals that came before it

    def forward(signum, frame):
        if signal.Signals(signum).name in TERMINAL_SIGNALS and _terminal_sent_it():
            return
        if not started:
            pending.append(signum)
            return
        try:
            started[0].send_signal(signum)
        except OSError:
            pass

    previous = {}
    for name in FORWARDED:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            previous[signum] = signal.signal(signum, forward)
        except (OSError, ValueError):  # not the main thread
            pass
    try:
        try:
            proc = subprocess.Popen(command, env=env)
        except FileNotFoundError:
            print(f"{PROG} run: {command[0]}: command not found", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"{PROG} run: {command[0]}: permission denied", file=sys.stderr)
            return 126
        except OSError as exc:
            print(f"{PROG} run: {command[0]}: {exc.strerror or exc}", file=sys.stderr)
            return 126
        started.append(proc)
        for signum in pending:
            forward(signum, None)
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # keep waiting for COMMAND, as a shell does
                continue
    finally:
        for signum, handler in previous.items():
            try:
                signal.signal(signum, handler)
            except (OSError, ValueError, TypeError):
                pass
    return code if code >= 0 else 128 - code


# ---------------------------------------------------------------- run --one-run

# `<prefix><rank or host-pid>` = the status a process would have given its run (see _a_process_failed).
PROCESS_STATUS_TAG = "azml_v1_bridge.process_status."


class SharedRun:
    def __init__(self, client, run_id: str, uri: str, experiment_id: str):
        self.client, self.run_id, self.uri, self.experiment_id = client, run_id, uri, experiment_id


def _warn(message: str) -> None:
    print(config.redact(f"{PROG} run: {message}"), file=sys.stderr)


def start_shared_run(env: dict, command: list[str], run_name: str | None) -> SharedRun | None:
    """Create the run every process of COMMAND logs to; None (and a warning) if that fails:
    training is never held back by the tracking store."""
    if env.get(config.MLFLOW_RUN_ID):
        _warn(f"--one-run: {config.MLFLOW_RUN_ID} is already set; every process logs to that run "
              "and its owner ends it")
        return None
    for name, value in config.HTTP_DEFAULTS.items():  # this process's MLflow: fail fast
        os.environ[name] = env.get(name) or value
    try:
        import mlflow
        from mlflow.tracking import MlflowClient

        uri = env.get(config.MLFLOW_TRACKING_URI) or mlflow.get_tracking_uri()
        client = MlflowClient(tracking_uri=uri)
        experiment_id = env.get(config.MLFLOW_EXPERIMENT_ID) or "0"
        name = env.get(config.MLFLOW_EXPERIMENT_NAME)
        if name:
            found = client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
        source = _source_name(command)
        tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL",
                "azml_v1_bridge.launcher": "one-run"}
        run = client.create_run(experiment_id, tags=tags, run_name=run_name or source)
    except Exception as exc:
        _warn(f"could not create the command's MLflow run ({type(exc).__name__}: "
              f"{str(exc)[:300]}); every process creates its own runs instead")
        return None
    run_id = run.info.run_id
    # The children must resolve the very same store, whatever their working directory.
    env[config.MLFLOW_TRACKING_URI] = uri
    # The job's run goes down in the bridge's own variable, not MLFLOW_RUN_ID: that one would
    # take over the script's own mlflow.start_run() (and refuse it after set_experiment()).
    env[config.LAUNCHER_RUN_ID] = run_id
    return SharedRun(client, run_id, uri, run.info.experiment_id)


def _source_name(command: list[str]) -> str:
    """What COMMAND runs, for the run's name: the script of `python x.py`, else the program."""
    words = [os.path.basename(w) for w in command]
    if words and words[0].startswith("python"):
        rest = command[1:]
        if len(rest) >= 2 and rest[0] == "-m":
            return rest[1]
        for word in rest:
            if not word.startswith("-"):
                return os.path.basename(word)
    return words[0] if words else "command"


def end_shared_run(shared: SharedRun, code: int, env: dict) -> None:
    """After the last process: merge their reports and write the terminal status, once."""
    from azml_v1_bridge import report

    status = "FINISHED" if code == 0 else "FAILED"
    if status == "FINISHED" and _a_process_failed(shared):
        status = "FAILED"
    merged = 0
    try:
        parts = _report_parts(shared)
        if parts:
            uri = report.public_uri(shared.uri)
            merged_report = dict(report.merge(parts), mlflow_run_id=shared.run_id,
                                 experiment_id=shared.experiment_id, status=status, exit_code=code,
                                 tracking_uri=uri, run_url=report.run_url(uri, shared.experiment_id,
                                                                          shared.run_id))
            shared.client.log_text(shared.run_id, report._dump(merged_report).decode("utf-8"),
                                   report.ARTIFACT)
            merged = len(parts)
    except Exception as exc:
        _warn(f"could not merge the process reports: {type(exc).__name__}: {str(exc)[:300]}")
    _upload_outputs(shared, env)
    config.quiet_run_links(shared.uri)  # MLflow's run link would show the password
    try:
        shared.client.set_terminated(shared.run_id, status=status)
    except Exception as exc:
        _warn(f"could not end MLflow run {shared.run_id} as {status}: {type(exc).__name__}: "
              f"{str(exc)[:300]}")
        return
    try:
        quiet = not config.load(env).report
    except config.ConfigError:
        quiet = False
    if not quiet:
        print(f"{PROG} run: MLflow run {shared.run_id} ended {status} (exit code {code}); "
              f"{merged} process report(s) merged into {report.ARTIFACT}", file=sys.stderr)


def _upload_outputs(shared: SharedRun, env: dict) -> None:
    """./outputs into the shared run, as the v1 job runtime did after the job (the ranks do not:
    the run is not theirs to end); AZML_V1_BRIDGE_OUTPUTS as for any run."""
    from azml_v1_bridge import outputs

    try:
        enabled = config.load(env).outputs_enabled()
    except config.ConfigError:
        return
    if not enabled or not os.path.isdir(outputs.DEFAULT_FOLDER):
        return
    try:
        outputs.upload(shared.client, shared.run_id, outputs.DEFAULT_FOLDER)
    except outputs.PartialUpload as exc:
        _warn(f"uploading ./outputs stopped after {len(exc.done)} files: "
              f"{type(exc.error).__name__}: {str(exc.error)[:300]}")


def _a_process_failed(shared: SharedRun) -> bool:
    """A process that ended its v1 run FAILED/KILLED (run.fail(), an uncaught exception) while
    COMMAND still exited 0 says so with a PROCESS_STATUS_TAG tag on the shared run."""
    try:
        tags = shared.client.get_run(shared.run_id).data.tags
    except Exception:
        return False
    return any(k.startswith(PROCESS_STATUS_TAG) and v in ("FAILED", "KILLED") for k, v in tags.items())


def _report_parts(shared: SharedRun) -> list:
    import json
    import tempfile

    import mlflow

    from azml_v1_bridge import report

    listed = shared.client.list_artifacts(shared.run_id, report.PART_DIR)
    paths = sorted(f.path for f in listed if not f.is_dir and f.path.endswith(".json"))
    if not paths:
        return []
    parts = []
    with tempfile.TemporaryDirectory(prefix="azml_v1_bridge-reports-") as tmp:
        for path in paths:
            local = mlflow.artifacts.download_artifacts(run_id=shared.run_id, artifact_path=path,
                                                        dst_path=tmp, tracking_uri=shared.uri)
            with open(local, encoding="utf-8") as fh:
                parts.append(json.load(fh))
    return parts


def _terminal_sent_it() -> bool:
    """Whether we are in the terminal's foreground group (so COMMAND got the key too)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


if __name__ == "__main__":  # python -m azml_v1_bridge_tools.cli
    sys.exit(main())
