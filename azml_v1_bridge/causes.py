"""Why a tracking store failed: one classifier for the writer, `replay` and `doctor`.

`classify(exc, uri)` walks the exception's chain (`__cause__`, `__context__`, and
the `reason` that urllib3/requests keep) and returns a `Cause`: a short `kind`,
one `message` line that names the cause and the fix (credentials redacted), and
whether the failure is `transient` (worth retrying).

The order of the checks matters: an Azure sign-in failure often carries a DNS
or connection error from the credential probes it tried (managed identity,
the IMDS endpoint), so authentication is decided before the network; a
missing module is decided before the text of the message.

`quiet_azure_sign_in()` installs a logging handler that turns the dozens of
lines azure.identity / msal / azureml log on a failed sign-in into one line.
"""
from __future__ import annotations

import errno
import logging
import re
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from . import config

UNRESOLVED = "unresolved_host"
REFUSED = "connection_refused"
TIMEOUT = "timeout"
AUTH = "authentication"
MISSING_DRIVER = "missing_driver"
MISSING_SQLALCHEMY = "missing_sqlalchemy"
SCHEMA = "schema"
BUSY = "store_busy"
PLUGIN = "plugin"
READ_ONLY = "read_only"
DISK_FULL = "disk_full"
SERVER_ERROR = "server_error"
OTHER = "other"
KINDS = (UNRESOLVED, REFUSED, TIMEOUT, AUTH, MISSING_DRIVER, MISSING_SQLALCHEMY, SCHEMA, BUSY,
         PLUGIN, READ_ONLY, DISK_FULL, SERVER_ERROR, OTHER)

# A database driver module -> (pip package, the URI scheme that uses it).
DRIVERS = {
    "psycopg2": ("psycopg2-binary", "postgresql+psycopg2://"),
    "psycopg": ("psycopg[binary]", "postgresql+psycopg://"),
    "pg8000": ("pg8000", "postgresql+pg8000://"),
    "pymysql": ("PyMySQL", "mysql+pymysql://"),
    "MySQLdb": ("mysqlclient", "mysql+mysqldb://"),
    "pyodbc": ("pyodbc", "mssql+pyodbc://"),
    "pymssql": ("pymssql", "mssql+pymssql://"),
}
# What the embedded sqlite store needs on top of mlflow-skinny.
STORE_MODULES = {"sqlalchemy": "SQLAlchemy", "alembic": "alembic", "sqlparse": "sqlparse"}
STORE_EXTRA = "pip install 'azml_v1_bridge[sqlite]'"
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# Schemes served by a plugin package, for "no store for this scheme".
PLUGINS = {"azureml": "azureml-mlflow"}
CREDENTIALS_HINT = ("check the credentials (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
                    "or MLFLOW_TRACKING_TOKEN)")

_DNS_TEXT = ("name or service not known", "nodename nor servname", "temporary failure in name resolution",
             "failed to resolve", "getaddrinfo failed", "no address associated with hostname",
             "nameresolutionerror")
_TIMEOUT_TEXT = ("timed out", "read timeout", "connect timeout", "timeouterror")
_SIGN_IN_MODULES = ("azure.identity", "azure.core.exceptions", "msal", "adal", "azureml._base_sdk_common",
                    "azureml.exceptions", "azureml.core.authentication", "azureml.mlflow")
_SIGN_IN_TEXT = ("failed to retrieve a token", "defaultazurecredential", "az login", "aadsts",
                 "credentialunavailable", "authenticationexception", "interactive authentication",
                 "managedidentitycredential", "please run 'az login'", "clientauthenticationerror")
_HTTP_CODE = re.compile(r"(?:error code|status code|status|HTTP(?: Error)?|too many)[ :]*(\d{3})\b",
                        re.IGNORECASE)


@dataclass(frozen=True)
class Cause:
    kind: str          # one of KINDS
    message: str       # one line: the store, the cause and the fix, credentials redacted
    transient: bool    # worth retrying

    def __str__(self) -> str:
        return self.message

    @property
    def reason(self) -> str:
        """The message without the leading "<store>: " (for a line that names the store already)."""
        return self._reason or self.message

    _reason: str = field(default="", repr=False, compare=False)


def _cause(kind: str, store: str, reason: str, transient: bool) -> Cause:
    return Cause(kind, f"{store}: {reason}", transient, reason)


def check_store_modules(uri: str | None) -> Cause | None:
    """Before the first run: a database store whose SQLAlchemy or alembic is missing (the case
    MLflow itself reports as "Model registry functionality is unavailable")."""
    scheme = urlsplit(uri or "").scheme.lower().split("+")[0]
    if scheme not in DATABASE_SCHEMES:
        return None
    absent = _absent(("sqlalchemy", "alembic"))
    if not absent:
        return None
    names = " and ".join(STORE_MODULES[m] for m in absent)
    one = len(absent) == 1
    return _cause(MISSING_SQLALCHEMY, config.redact(uri), f"a {scheme}:// store needs {names}, which "
                                     f"{'is' if one else 'are'} not installed (mlflow-skinny leaves "
                                     f"{'it' if one else 'them'} out): {STORE_EXTRA}", False)


def chain(exc: BaseException) -> list:
    """`exc` and everything behind it, outermost first, each once."""
    seen, out, todo = set(), [], [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen or not isinstance(current, BaseException):
            continue
        seen.add(id(current))
        out.append(current)
        todo.append(current.__cause__)
        todo.append(current.__context__)
        todo.append(getattr(current, "reason", None))  # urllib3 MaxRetryError, URLError
        todo.extend(a for a in getattr(current, "args", ())[:2] if isinstance(a, BaseException))
    return out


def classify(exc: BaseException, uri: str | None = None) -> Cause:
    """The cause of a store failure, from the exception MLflow (or a plugin) raised."""
    excs = chain(exc)
    text = "\n".join(_text(e) for e in excs)
    lowered = text.lower()
    store = config.redact(uri) if uri else "the tracking store"
    host = _host(uri)

    # A database driver or SQLAlchemy that is not there.
    missing = [found for found in (_missing_module(e, uri) for e in excs if isinstance(e, ImportError))
               if found is not None]
    for found in missing:
        if found.kind in (MISSING_DRIVER, MISSING_SQLALCHEMY):
            return found
    # An Azure ML workspace refusing the token it was given (see _azure_refusal).
    refused = _azure_refusal(excs, text, uri)
    if refused is not None:
        return _cause(AUTH, store, refused, False)
    # Before the network: a failed sign-in carries the errors of the credential probes it tried.
    signed = _sign_in_failure(excs, lowered)
    if signed is not None:
        return _cause(AUTH, store, f"Azure sign-in failed ({signed}): sign in with `az login`, or give "
                           "the job a managed identity or a service principal (AZURE_CLIENT_ID, "
                           "AZURE_TENANT_ID, AZURE_CLIENT_SECRET)", False)
    if missing:  # a plugin (or MLflow itself) that cannot import
        return missing[0]
    status = _http_status(excs, text)
    code = _error_code(excs)
    if status in (401, 403) or code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        status = status or (401 if code == "UNAUTHENTICATED" else 403)
        what = {401: "HTTP 401, not signed in", 403: "HTTP 403, access denied"}[status]
        return _cause(AUTH, store, f"authentication refused ({what}): {CREDENTIALS_HINT}", False)

    if any(isinstance(e, socket.gaierror) for e in excs) or any(s in lowered for s in _DNS_TEXT):
        name = _host(uri, port=False) or "of the store"
        return _cause(UNRESOLVED, store, f"the host name {name} does not resolve (DNS): check the "
                                 "spelling of the URI and the network", True)
    if (any(isinstance(e, ConnectionRefusedError) for e in excs)
            or "connection refused" in lowered or "errno 111" in lowered):
        return _cause(REFUSED, store, f"connection refused: nothing listens at {host or 'that address'} "
                              "(is `mlflow server` running, on that port?)", True)
    if (any(isinstance(e, (TimeoutError, socket.timeout)) or "Timeout" in type(e).__name__ for e in excs)
            or any(s in lowered for s in _TIMEOUT_TEXT)):
        return _cause(TIMEOUT, store, f"timed out: the store accepted the connection but did not answer "
                              "in time (overloaded or stuck; raise MLFLOW_HTTP_REQUEST_TIMEOUT for a slow "
                              "store)", True)

    if "database is locked" in lowered or "database table is locked" in lowered:
        return _cause(BUSY, store, "the database is locked by another process (several processes creating "
                                   "or migrating the same sqlite file at once): it passes once that process "
                                   "is done", True)
    found = re.search(r"found version (\w+)", text)
    if found and "out-of-date database schema" in lowered and _unknown_revision(found.group(1)):
        return _cause(SCHEMA, store, f"the database schema does not match this MLflow: a newer MLflow "
                             f"wrote it (revision {found.group(1)} is unknown here): upgrade MLflow in "
                             "this environment, or use a fresh database", False)
    if "out-of-date database schema" in lowered or "alembic upgrade" in lowered:
        return _cause(SCHEMA, store, f"the database schema is older than this MLflow: back it up, then "
                             f"run `mlflow db upgrade {_safe_uri(uri)}`", False)
    if ("can't locate revision" in lowered or "no such table" in lowered or "alembic" in lowered
            or ("already exists" in lowered and "table" in lowered)):
        return _cause(SCHEMA, store, f"the database schema does not match this MLflow (a newer MLflow "
                             "wrote it, or a migration was interrupted): use the MLflow version that "
                             "created it, or a fresh database", False)

    if (any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
            for e in excs) or "no space left on device" in lowered
            or "database or disk is full" in lowered or "disk quota exceeded" in lowered):
        where = _local_path(uri)
        return _cause(DISK_FULL, store, f"no space left on device{f' (the folder of {where})' if where else ''}: "
                                        "free some space or point it at another disk", False)
    local = _local_path(uri)
    if any(_is_read_only(e, local is not None) for e in excs) or "unable to open database file" in lowered \
            or "readonly database" in lowered or "read-only file system" in lowered:
        return _cause(READ_ONLY, store, f"{unwritable(local)}: point MLFLOW_TRACKING_URI "
                                "at a writable folder", False)

    if "unsupported uri" in lowered or "could not find a registered" in lowered:
        scheme = urlsplit(uri or "").scheme.lower() or "this"
        missing_store = check_store_modules(uri)
        if missing_store is not None:  # MLflow registers its database stores only with SQLAlchemy
            return missing_store
        broken = _broken_plugin(scheme)
        if broken is not None:
            return _cause(PLUGIN, store, f"{broken}", False)
        package = PLUGINS.get(scheme)
        fix = f": pip install {package}" if package else ""
        return _cause(PLUGIN, store, f"no MLflow tracking store for {scheme}:// URIs is installed{fix}", False)

    if status is not None and status >= 500:
        return _cause(SERVER_ERROR, store, f"the server failed (HTTP {status}): see the server's log",
                     True)
    if "deadlock detected" in lowered:
        return _cause(OTHER, store, f"an import deadlock between threads while loading MLflow; "
                            "retrying", True)
    return _cause(OTHER, store, f"{_first_line(exc)}", True)


def _missing_module(e: ImportError, uri: str | None) -> Cause | None:
    store = config.redact(uri) if uri else "the tracking store"
    wanted = re.search(r"cannot import name '([^']+)' from '([^']+)'", str(e))
    if wanted and wanted.group(2).split(".")[0] in STORE_MODULES:
        # Installed, but not a version this MLflow can use (MLflow < 3.9 with SQLAlchemy 2.1).
        module = wanted.group(2).split(".")[0]
        fix = ("pip install 'sqlalchemy<2.1', or MLflow 3.9 or later" if wanted.group(1) ==
               "FallbackAsyncAdaptedQueuePool" else f"install the {STORE_MODULES[module]} version this "
               "MLflow supports")
        return _cause(MISSING_SQLALCHEMY, store, f"this MLflow cannot use the installed "
                                                 f"{STORE_MODULES[module]} {_version(module)} (cannot import "
                                                 f"{wanted.group(1)}): {fix}", False)
    if not isinstance(e, ModuleNotFoundError) and wanted:
        return None  # an incompatible version of something else: the text says it
    name = (getattr(e, "name", None) or "")
    if not name:
        match = re.search(r"No module named '([^']+)'", str(e))
        name = match.group(1) if match else ""
    top = name.split(".")[0]
    if top in DRIVERS:
        package, scheme = DRIVERS[top]
        fix = f"pip install '{package}'" if "[" in package else f"pip install {package}"
        if top == "psycopg":  # what SQLAlchemy 2 loads for a bare postgresql:// URI
            fix += ", or pip install psycopg2-binary and write the URI as postgresql+psycopg2://"
        elif top == "psycopg2":
            fix += f" (the URI then reads {scheme})"
        return _cause(MISSING_DRIVER, store, f"the database driver {top} is not installed: {fix}", False)
    if top in STORE_MODULES:
        return _cause(MISSING_SQLALCHEMY, store, f"a database store needs {STORE_MODULES[top]}, which is not "
                                         f"installed (mlflow-skinny leaves it out): {STORE_EXTRA}", False)
    if not top:
        return None
    # Any other missing module on the way into a plugin or MLflow itself.
    package = next((p for s, p in PLUGINS.items() if uri and uri.lower().startswith(s + ":")), None)
    plugin = f" (the {package} plugin)" if package else ""
    return _cause(PLUGIN, store, f"importing the tracking store{plugin} failed: no module named "
                         f"{name!r}: pip install the package that provides it", False)


# What Azure ML (and Azure AD behind it) answers a token it does not take. MLflow turns the
# workspace's JSON refusal into RestException INTERNAL_ERROR, so the body's words decide.
_AZURE_REFUSAL_TEXT = ("bearer token", "authorizationerror", "invalidauthenticationtoken",
                       "expiredauthenticationtoken", "token is expired", "token has expired",
                       "tokenexpired", "lifetime validation failed")
_AZURE_MESSAGE = re.compile(r"""["']message["']:\s*["']((?:[^"'\\]|\\.)+)["']""")


def _azure_refusal(excs: list, text: str, uri: str | None) -> str | None:
    """An Azure ML workspace (or the Azure AD it asks) refusing the credential it was given,
    as one line: what it said and what to check. None for anything else: a credential that
    could not be had at all is _sign_in_failure's."""
    from . import azure

    lowered = text.lower()
    status = _http_status(excs, text)
    azure_side = azure.is_azureml(uri) or any(
        (type(e).__module__ or "").startswith(("azure.", "azureml.")) for e in excs)
    if not (any(s in lowered for s in _AZURE_REFUSAL_TEXT) or (status in (401, 403) and azure_side)):
        return None
    said = _AZURE_MESSAGE.search(text)
    detail = config.redact(said.group(1)[:150]) if said else _first_line(excs[0])
    if status in (401, 403):
        detail = f"HTTP {status}: {detail}"
    import os

    whose = "the job's credentials" if (os.environ.get(config.MLFLOW_RUN_ID)
                                        or os.environ.get(config.AZUREML_RUN_ID)) else "the credentials"
    return f"sign-in refused by Azure ML, which did not accept {whose} ({detail}): {azure.what_to_check()}"


_AZURE_CODE = re.compile(r"""["']code["']:\s*["']([A-Za-z]+)["']""")


def azure_said(exc: BaseException) -> str:
    """What an Azure ML error body said ("UserError: <message>"), from the JSON MLflow wraps
    in RestException INTERNAL_ERROR; else the exception's first line."""
    text = _text(exc)
    said, code = _AZURE_MESSAGE.search(text), _AZURE_CODE.search(text)
    if said is None:
        return _first_line(exc)
    return config.redact((f"{code.group(1)}: " if code else "") + said.group(1)[:200])


def _sign_in_failure(excs: list, lowered: str) -> str | None:
    """A short description of the sign-in failure in the chain, or None."""
    for e in excs:
        module = type(e).__module__ or ""
        name = type(e).__name__
        if (name in ("ClientAuthenticationError", "CredentialUnavailableError", "AuthenticationException",
                     "AuthenticationRequiredError")
                or (module.startswith(_SIGN_IN_MODULES)
                    and ("Auth" in name or "Credential" in name or "Msal" in name))):
            return f"{name}: {_sign_in_detail(e)}"
    if any(s in lowered for s in _SIGN_IN_TEXT):
        return "no credential could get a token"
    return None


def _sign_in_detail(e: BaseException) -> str:
    text = str(e)
    match = re.search(r'"message":\s*"((?:[^"\\]|\\.)+)"', text)  # azureml's JSON error body
    line = match.group(1) if match else next((p.strip() for p in text.splitlines() if p.strip()), "")
    line = line.split(". ")[0]
    return config.redact(line[:150])


def _http_status(excs: list, text: str) -> int | None:
    for e in excs:
        for holder in (e, getattr(e, "response", None)):
            code = getattr(holder, "status_code", None) or getattr(holder, "code", None)
            if isinstance(code, int) and 100 <= code <= 599:
                return code
    match = _HTTP_CODE.search(text)
    return int(match.group(1)) if match else None


def _error_code(excs: list) -> str | None:
    for e in excs:
        code = getattr(e, "error_code", None)
        if isinstance(code, str):
            return code
    return None


def _is_read_only(e: BaseException, local_store: bool) -> bool:
    import errno

    codes = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR) + ((errno.EEXIST,) if local_store else ())
    return isinstance(e, OSError) and e.errno in codes


def check_local_store(uri: str | None) -> Cause | None:
    """Before MLflow tries (and retries for a minute): a local store whose file cannot be
    created or written. None when it can, or for a remote store."""

    path = _local_path(uri)
    if path is None or path == ":memory:":
        return None
    reason = unwritable(path)
    if reason.startswith("cannot create or write"):
        return None
    return _cause(READ_ONLY, config.redact(uri), f"{reason}: point MLFLOW_TRACKING_URI at a writable "
                            "folder", False)


def unwritable(path: str | None) -> str:
    """Why the store's file at `path` cannot be created or written, in a few words."""
    import os

    if not path:
        return "the store's file cannot be created (read-only folder)"
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"cannot create {path}: {folder} is a file, not a folder"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"cannot write {path}: the file is read-only"
    if not os.access(folder, os.W_OK | os.X_OK):  # sqlite writes its journal next to the file
        return f"cannot create {path}: the folder {folder} is read-only"
    return f"cannot create or write {path}"


def _broken_plugin(scheme: str) -> str | None:
    """MLflow turns a plugin that fails to import into a warning and "unsupported URI":
    load the plugin registered for `scheme` again to name the real error."""
    from importlib import metadata

    try:
        found = [ep for ep in metadata.entry_points(group="mlflow.tracking_store") if ep.name == scheme]
    except Exception:
        return None
    for ep in found:
        try:
            ep.load()
        except Exception as exc:
            dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":")[0]
            missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
            fix = f": pip install the package that provides {missing!r}" if missing else \
                f": reinstall {dist}"
            return (f"the MLflow plugin for {scheme}:// URIs ({dist}) is installed but cannot be "
                    f"imported ({type(exc).__name__}: {_first_line_of(exc)}){fix}")
    return None


def _unknown_revision(revision: str) -> bool:
    """Whether this MLflow has no migration named `revision` (a newer MLflow made the schema)."""
    import importlib.util
    import os

    try:
        spec = importlib.util.find_spec("mlflow")
        root = os.path.dirname(spec.origin) if spec and spec.origin else None
        folder = os.path.join(root, "store", "db_migrations", "versions") if root else None
        names = os.listdir(folder) if folder else []
    except (ImportError, ValueError, OSError):
        return False
    return bool(names) and not any(name.startswith(revision) for name in names)


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except Exception:
        return "(version unknown)"


def _absent(modules) -> list:
    import importlib.util

    absent = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                absent.append(name)
        except (ImportError, ValueError):  # ValueError: None in sys.modules
            absent.append(name)
    return absent


def _text(e: BaseException) -> str:
    try:
        return f"{type(e).__module__}.{type(e).__name__}: {e}"
    except Exception:
        return type(e).__name__


def _first_line_of(exc: BaseException) -> str:
    line = next((part.strip() for part in str(exc).splitlines() if part.strip()), "")
    return config.redact(line[:150])


def _first_line(exc: BaseException) -> str:
    line = next((part.strip() for part in str(exc).splitlines() if part.strip()), "")
    if len(line) > 200:
        line = line[:197] + "..."
    return config.redact(f"{type(exc).__name__}: {line}" if line else type(exc).__name__)


def _host(uri: str | None, port: bool = True) -> str | None:
    if not uri:
        return None
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return None
    if not host:
        return None
    return f"{host}:{parts.port}" if port and parts.port else host


def _local_path(uri: str | None) -> str | None:
    if not uri:
        return None
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "sqlite":
        rest = uri.split("://", 1)[1] if "://" in uri else ""
        path = (rest[1:] if rest.startswith("/") else rest).split("?", 1)[0]
        return path or None
    if scheme in ("", "file"):
        return urlsplit(uri).path or uri
    return None


def _safe_uri(uri: str | None) -> str:
    return config.redact(uri) if uri else "URI"


# ---------------------------------------------------------------- Azure sign-in noise

# Loggers whose records on a failed sign-in are summarised. "azureml" also carries
# records that are not about signing in: those pass as before.
SIGN_IN_LOGGERS = ("azure.identity", "msal", "adal-python", "azureml")
_SIGN_IN_LOGGER_PREFIXES = ("azure.identity", "msal", "adal-python", "azureml.core.authentication",
                            "azureml._base_sdk_common", "azureml.mlflow")
_summary_lock = threading.Lock()
_summary: "SignInSummary | None" = None


class SignInSummary(logging.Handler):
    """Stands in for propagation on the sign-in loggers: the first sign-in record at WARNING
    or above becomes one line on the `azml_v1_bridge` logger, later ones are only counted
    (`suppressed`); every other record goes on to the parent loggers' handlers unchanged."""

    def __init__(self, names=SIGN_IN_LOGGERS):
        super().__init__(logging.NOTSET)
        self.names = tuple(names)
        self.suppressed = 0
        self.told = False
        self._saved: dict = {}

    def install(self) -> "SignInSummary":
        for name in self.names:
            target = logging.getLogger(name)
            self._saved[name] = target.propagate
            target.addHandler(self)
            target.propagate = False
        return self

    def restore(self) -> None:
        """Put the loggers back as they were."""
        for name, propagate in self._saved.items():
            target = logging.getLogger(name)
            target.removeHandler(self)
            target.propagate = propagate
        self._saved.clear()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING or not _about_sign_in(record):
            self._pass_on(record)
            return
        with self.lock:
            first, self.told = not self.told, True
            if not first:
                self.suppressed += 1
                return
        logging.getLogger("azml_v1_bridge").warning(
            "azml_v1_bridge: Azure sign-in failed (%s: %s); further sign-in messages are summarised. "
            "Sign in with `az login`, a managed identity or a service principal "
            "(AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_CLIENT_SECRET)", record.name, _one_line(record))


    def _pass_on(self, record: logging.LogRecord) -> None:
        """What propagation above the sign-in logger would have done."""
        current = logging.getLogger(record.name)
        while current is not None and self not in current.handlers:
            current = current.parent
        current = current.parent if current is not None else None
        while current is not None:
            for handler in current.handlers:
                if handler is not self and record.levelno >= handler.level:
                    handler.handle(record)
            if not current.propagate and current.name not in self._saved:
                break
            current = current.parent


def quiet_azure_sign_in() -> SignInSummary:
    """Summarise Azure sign-in noise (azure.identity, msal, azureml) in one line; idempotent.
    Returns the installed summary (`.suppressed` counts the records dropped, `.restore()`
    undoes it)."""
    global _summary
    with _summary_lock:
        if _summary is None or not _summary._saved:
            _summary = SignInSummary().install()
        return _summary


def _about_sign_in(record: logging.LogRecord) -> bool:
    if record.name.startswith(_SIGN_IN_LOGGER_PREFIXES):
        return True
    text = _one_line(record).lower()
    return any(s in text for s in _SIGN_IN_TEXT) or "authenticat" in text or "token" in text


def _one_line(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception:
        text = str(record.msg)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return config.redact(line[:200])
