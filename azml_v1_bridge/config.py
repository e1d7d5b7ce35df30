"""Every environment variable the bridge reads, named once and parsed once.

Other modules import the constants and call :func:`load`; nothing else in the
package touches ``os.environ`` for its own settings.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from typing import Mapping

# The bridge's own switches.
MODE = "AZML_V1_BRIDGE_MODE"
STRICT = "AZML_V1_BRIDGE_STRICT"
JOURNAL = "AZML_V1_BRIDGE_JOURNAL"
REPORT = "AZML_V1_BRIDGE_REPORT"
CHARTS = "AZML_V1_BRIDGE_CHARTS"
OUTPUTS = "AZML_V1_BRIDGE_OUTPUTS"
QUEUE_MAX = "AZML_V1_BRIDGE_QUEUE_MAX"
FLUSH_INTERVAL = "AZML_V1_BRIDGE_FLUSH_INTERVAL"
RETRY_SECONDS = "AZML_V1_BRIDGE_RETRY_SECONDS"
EXIT_TIMEOUT = "AZML_V1_BRIDGE_EXIT_TIMEOUT"
SIGTERM_TIMEOUT = "AZML_V1_BRIDGE_SIGTERM_TIMEOUT"
WRITER = "AZML_V1_BRIDGE_WRITER"
# Set by the launcher: the run it created for every process it starts.
LAUNCHER_RUN_ID = "AZML_V1_BRIDGE_LAUNCHER_RUN_ID"
RANK = "AZML_V1_BRIDGE_RANK"

# MLflow's own variables that decide where data goes. They are read live (via
# `mlflow_setting`) when a run is first seen: `mlflow.set_experiment` writes
# MLFLOW_EXPERIMENT_ID into os.environ at any time.
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
MLFLOW_RUN_ID = "MLFLOW_RUN_ID"
MLFLOW_EXPERIMENT_NAME = "MLFLOW_EXPERIMENT_NAME"
MLFLOW_EXPERIMENT_ID = "MLFLOW_EXPERIMENT_ID"
MLFLOW_TRACKING_TOKEN = "MLFLOW_TRACKING_TOKEN"
# What MLflow's REST client (and Databricks') sends to whatever store it talks to.
STORE_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", MLFLOW_TRACKING_TOKEN,
                     "MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
                     "MLFLOW_TRACKING_AWS_SIGV4", "DATABRICKS_TOKEN", "DATABRICKS_CLIENT_SECRET")
# An Azure ML job's: its run (a v2 command job's MLflow run id), its managed identity, and the
# cloud azureml-mlflow resolves endpoints in (see azure.py).
AZUREML_RUN_ID = "AZUREML_RUN_ID"
MSI_ENDPOINT = "MSI_ENDPOINT"
AZUREML_CURRENT_CLOUD = "AZUREML_CURRENT_CLOUD"
# MLflow's HTTP retry settings: the bridge sets defaults for them (never
# overriding the user's) so a dead server fails in seconds, not minutes.
MLFLOW_HTTP_REQUEST_MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
MLFLOW_HTTP_REQUEST_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
# MLflow's progress bars on artifact transfers: off while the bridge reads files for v1 calls
# (download_file, Model.download...), unless the user set it.
MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
HTTP_DEFAULTS = {
    MLFLOW_HTTP_REQUEST_MAX_RETRIES: "2",
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: "1",
    MLFLOW_HTTP_REQUEST_TIMEOUT: "10",
}

MODES = ("mirror", "mlflow", "off")
WRITERS = ("process", "thread")  # first is the default: MLflow's work off the training GIL
DEFAULT_MODE = "mirror"
DEFAULT_QUEUE_MAX = 100_000
DEFAULT_JOURNAL_DIR = "azml_v1_bridge_journal"


class ConfigError(ValueError):
    """A setting the bridge cannot run with; raised before any training starts."""


@dataclass(frozen=True)
class Config:
    mode: str = DEFAULT_MODE
    strict: bool = False
    journal: str = ""
    report: bool = True
    charts: bool = True
    outputs: bool | None = None  # None: on in mlflow mode, off in mirror mode
    queue_max: int = DEFAULT_QUEUE_MAX
    flush_interval: float = 0.5
    retry_seconds: float = 30.0
    exit_timeout: float = 120.0
    sigterm_timeout: float = 25.0  # clusters usually grant 30 s between SIGTERM and SIGKILL
    writer: str = "process"
    launcher_run_id: str | None = None
    rank: str | None = None

    def writer_settings(self) -> tuple:
        """What a writer is built with: a change here needs a new writer; a new mode does not."""
        return (self.journal, self.charts, self.queue_max, self.flush_interval,
                self.retry_seconds, self.exit_timeout, self.sigterm_timeout, self.writer)

    def outputs_enabled(self) -> bool:
        return self.mode == "mlflow" if self.outputs is None else self.outputs


def check_mode(value: str | None) -> str:
    mode = (value or DEFAULT_MODE).strip().lower()
    if mode not in MODES:
        raise ConfigError(
            f"{MODE}={value!r} is not a valid mode; valid values are: "
            + ", ".join(MODES)
            + f" (default {DEFAULT_MODE})"
        )
    return mode


def _flag(env: Mapping[str, str], name: str, default: bool | None) -> bool | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a valid switch; use 1 or 0")


def _number(env: Mapping[str, str], name: str, default, kind=float):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} is not valid; valid values are: " + ", ".join(choices))
    return raw


def default_journal_path(pid: int | None = None) -> str:
    import time

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return os.path.join(DEFAULT_JOURNAL_DIR, f"{stamp}-{pid or os.getpid()}.jsonl")


def load(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    return Config(
        mode=check_mode(env.get(MODE)),
        strict=bool(_flag(env, STRICT, False)),
        journal=env.get(JOURNAL, "").strip(),
        report=bool(_flag(env, REPORT, True)),
        charts=bool(_flag(env, CHARTS, True)),
        outputs=_flag(env, OUTPUTS, None),
        queue_max=_number(env, QUEUE_MAX, DEFAULT_QUEUE_MAX, int),
        flush_interval=_number(env, FLUSH_INTERVAL, 0.5),
        retry_seconds=_number(env, RETRY_SECONDS, 30.0),
        exit_timeout=_number(env, EXIT_TIMEOUT, 120.0),
        sigterm_timeout=_number(env, SIGTERM_TIMEOUT, 25.0),
        writer=_choice(env, WRITER, WRITERS),
        launcher_run_id=env.get(LAUNCHER_RUN_ID) or None,
        rank=(env.get(RANK) or "").strip() or _launcher_rank(env),
    )


def _launcher_rank(env: Mapping[str, str]) -> str | None:
    # torchrun, mpirun, srun... name the rank in their own variables (ranks.RANK_VARIABLES)
    from .ranks import rank_from

    return rank_from(env)


# userinfo runs to the LAST `@` before the path, query or fragment (what requests and urllib3
# do: `http://alice:p@ss word@host` signs in as alice with `p@ss word`), so a password
# holding a raw `@` or a space is hidden whole. A line break ends it.
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/?#\r\n]*)@")


def redact(text: str) -> str:
    """Hide user:password in any URI inside ``text`` (whatever it holds: `@`, `:`, spaces)."""
    return _CREDENTIALS.sub(lambda m: m.group("scheme") + "***@", str(text))


MLFLOW_SUPPRESS_PRINTING_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def has_credentials(uri: str | None) -> bool:
    return bool(uri) and redact(uri) != uri


def quiet_run_links(uri: str | None) -> None:
    """MLflow prints "View run ... at: <tracking URI>/#/..." when a client ends a run, the
    URI's user:password included: off for a URI that holds credentials (whatever the user
    set), and off by default for the bridge's own runs otherwise."""
    if has_credentials(uri):
        os.environ[MLFLOW_SUPPRESS_PRINTING_URL] = "true"


def mlflow_setting(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None

# Python's own: `azml-v1-bridge run` puts the bootstrap folder (sitecustomize) first on it.
PYTHONPATH = "PYTHONPATH"


_quiet_lock = threading.Lock()
_quiet_depth = 0


@contextlib.contextmanager
def quiet_progress_bars():
    """No MLflow progress bars inside the block (in any thread: MLflow reads the variable
    when it draws one); a value the user gave MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR stands, and
    the variable is as it was once the last block (of any thread) ends."""
    global _quiet_depth
    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    with _quiet_lock:
        users = _quiet_depth == 0 and name in os.environ
        if not users:
            _quiet_depth += 1
            os.environ[name] = "false"
    if users:
        yield
        return
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                os.environ.pop(name, None)
