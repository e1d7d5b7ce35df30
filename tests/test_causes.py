"""causes.classify against real failures: dead ports, silent listeners, a loopback HTTP server
answering 401/403/500, imports that really fail, real schema mismatches, real Azure sign-in
failures. Nothing of MLflow is mocked: every exception comes from MlflowClient or the library
that really fails."""
import http.server
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import ROOT
from servers import free_port

from azml_v1_bridge import causes

PASSWORD = "s3cret-Pw-77"


@pytest.fixture(autouse=True)
def fast_http(monkeypatch):
    # One try, short timeout: the failure, not MLflow's retries, is under test.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


def failure(uri, call="search_experiments"):
    from mlflow.tracking import MlflowClient

    with pytest.raises(BaseException) as info:
        client = MlflowClient(tracking_uri=uri)
        if call == "search_experiments":
            client.search_experiments(max_results=1)
        else:
            client.create_experiment("e")
    return info.value


class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    # The bodies of MLflow's basic-auth app (plain text for 401, MLflow JSON for 403).
    BODIES = {401: ("text/plain", b"You are not authenticated. Please see the docs on how to authenticate."),
              403: ("application/json", b'{"error_code": "PERMISSION_DENIED", "message": "Permission denied"}'),
              500: ("text/html", b"<h1>Internal Server Error</h1>")}

    def _answer(self):
        kind, body = getattr(self.server, "body", None) or self.BODIES[self.server.status]
        self.send_response(self.server.status)
        self.send_header("Content-Type", kind)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_status():
    servers = []

    def start(status, body=None):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        server.status, server.body = status, body
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://alice:{PASSWORD}@127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run_python(code, env=None, timeout=120, prefix=()):
    full = dict(os.environ)
    full["PYTHONPATH"] = ROOT + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env or {})
    return subprocess.run(list(prefix) + [sys.executable, "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=timeout)


def can_unshare():
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


CLASSIFY_IN_CHILD = """
    import json, sys
    {before}
    from azml_v1_bridge_tools import cli  # the tools import the runtime without activating it
    from azml_v1_bridge import causes
    from mlflow.tracking import MlflowClient
    uri = {uri!r}
    try:
        MlflowClient(uri).search_experiments(max_results=1)
        print(json.dumps(None))
    except BaseException as exc:
        cause = causes.classify(exc, uri)
        print(json.dumps([cause.kind, cause.message, cause.transient]))
"""


def classify_in_child(uri, before="", prefix=(), env=None):
    result = run_python(CLASSIFY_IN_CHILD.format(uri=uri, before=before), prefix=prefix,
                        env=dict({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}, **(env or {})))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found is not None, "no failure"
    return causes.Cause(*found)


# ---------------------------------------------------------------- the network

def test_refused_connection_names_the_port_and_is_transient():
    port = free_port()
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
    cause = causes.classify(failure(uri), uri)
    assert cause.kind == causes.REFUSED and cause.transient
    assert f"connection refused: nothing listens at 127.0.0.1:{port}" in cause.message
    assert PASSWORD not in cause.message and "***@127.0.0.1" in cause.message


def test_a_listener_that_never_answers_is_a_timeout(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        cause = causes.classify(failure(uri), uri)
    assert cause.kind == causes.TIMEOUT and cause.transient
    assert "timed out" in cause.message and "MLFLOW_HTTP_REQUEST_TIMEOUT" in cause.message


@pytest.mark.skipif(not can_unshare(), reason="needs `unshare -m` (a private /etc/resolv.conf)")
def test_a_host_name_that_does_not_resolve(tmp_path):
    # The child's resolver asks a dead port on 127.0.0.1: a real getaddrinfo failure, no traffic out.
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CLASSIFY_IN_CHILD.format(uri="http://mlflow.example:5000", before="")))
    env = dict(os.environ, PYTHONPATH=ROOT, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    result = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {resolv} /etc/resolv.conf && "
                             f"exec {sys.executable} {script}"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    kind, message, transient = json.loads(result.stdout.strip().splitlines()[-1])
    assert kind == causes.UNRESOLVED
    assert "the host name mlflow.example does not resolve (DNS)" in message


# ---------------------------------------------------------------- authentication

@pytest.mark.parametrize("status, words", [(401, "HTTP 401, not signed in"), (403, "HTTP 403, access denied")])
def test_http_401_and_403_are_authentication(http_status, status, words):
    uri = http_status(status)
    cause = causes.classify(failure(uri), uri)
    assert cause.kind == causes.AUTH and not cause.transient
    assert words in cause.message and "MLFLOW_TRACKING_PASSWORD" in cause.message
    assert PASSWORD not in cause.message


def test_a_server_error_is_transient(http_status):
    uri = http_status(500)
    cause = causes.classify(failure(uri), uri)
    assert cause.kind == causes.SERVER_ERROR and cause.transient
    assert "HTTP 500" in cause.message


def _jwt(exp):
    import base64

    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256'})}.{part({'exp': exp})}.c2ln"


AZURE_REFUSALS = {  # what Azure ML's data plane answers a token it does not take
    "bearer": b'{"error": {"code": "UserError", "message": "Bearer token not provided or not valid."}}',
    "authorization": b'{"error": {"code": "AuthorizationError", "message": "The principal does not have '
                     b'permission on the workspace."}}',
}


@pytest.mark.parametrize("body, credential, words", [
    ("bearer", {"MLFLOW_TRACKING_TOKEN": _jwt(1700000000)},
     ["Bearer token not provided or not valid.", "MLFLOW_TRACKING_TOKEN's expiry (it expired at 2023-11-14"]),
    ("authorization", {"MSI_ENDPOINT": "http://127.0.0.1:1/MSI/auth"},
     ["does not have permission", "the job's identity", "managed identity (MSI_ENDPOINT)", "expiry"]),
], ids=["expired-token", "managed-identity"])
def test_azure_ml_refusing_the_jobs_credentials_is_a_sign_in_failure(http_status, monkeypatch, body,
                                                                      credential, words):
    # MLflow turns Azure ML's JSON refusal into RestException INTERNAL_ERROR (no HTTP status):
    # its words decide, so the writer journals at once instead of retrying an "outage".
    from azml_v1_bridge.delivery.errors import is_sign_in_refusal

    for name in ("MLFLOW_TRACKING_TOKEN", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in credential.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_RUN_ID", "job-run")
    uri = http_status(401, ("application/json", AZURE_REFUSALS[body]))
    exc = failure(uri)
    assert getattr(exc, "error_code", None) == "INTERNAL_ERROR"
    cause = causes.classify(exc, uri)
    assert cause.kind == causes.AUTH and not cause.transient and is_sign_in_refusal(exc)
    assert "sign-in refused by Azure ML, which did not accept the job's credentials" in cause.message
    for word in words:
        assert word in cause.message, cause.message
    assert PASSWORD not in cause.message


@pytest.mark.parametrize("status", [401, 403])
def test_azure_ml_run_history_refusing_the_job_is_a_sign_in_failure(http_status, monkeypatch, status):
    # azureml-mlflow's artifact calls go through azure-core, whose generated clients raise
    # ClientAuthenticationError (401) or HttpResponseError (403) with the response attached.
    from azure.core import PipelineClient
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, map_error
    from azure.core.rest import HttpRequest

    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.setenv("MSI_ENDPOINT", "http://127.0.0.1:1/MSI/auth")
    monkeypatch.setenv("AZUREML_RUN_ID", "job-run")
    base = http_status(status, ("application/json", AZURE_REFUSALS["authorization"])).replace(
        f"alice:{PASSWORD}@", "")
    response = PipelineClient(base_url=base).send_request(
        HttpRequest("GET", base + "/history/v1.0/artifacts/contentinfo"))
    with pytest.raises(HttpResponseError) as info:
        map_error(status_code=response.status_code, response=response,
                  error_map={401: ClientAuthenticationError})
        raise HttpResponseError(response=response)
    uri = ("azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g/providers/"
           "Microsoft.MachineLearningServices/workspaces/w")
    cause = causes.classify(info.value, uri)
    assert cause.kind == causes.AUTH and not cause.transient
    assert f"sign-in refused by Azure ML, which did not accept the job's credentials (HTTP {status}" in cause.message
    assert "the job's identity" in cause.message and "az login" not in cause.message


def test_azure_sign_in_failure_is_authentication_not_a_missing_module():
    # azureml-core's own sign-in fails for real without `az` (it chains a ModuleNotFoundError).
    from azureml.core.authentication import AzureCliAuthentication

    with pytest.raises(BaseException) as info:
        AzureCliAuthentication().get_authentication_header()
    uri = "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g"
    cause = causes.classify(info.value, uri)
    assert cause.kind == causes.AUTH and not cause.transient
    assert "Azure sign-in failed (AuthenticationException: " in cause.message
    assert "az login" in cause.message


# ---------------------------------------------------------------- what is not installed

def test_postgresql_without_its_driver_names_the_package_and_the_scheme(monkeypatch):
    # SQLAlchemy's own import of the driver really fails (a None in sys.modules blocks it).
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    uri = f"postgresql://alice:{PASSWORD}@127.0.0.1:{free_port()}/mlflow"
    cause = causes.classify(failure(uri), uri)
    assert cause.kind == causes.MISSING_DRIVER and not cause.transient
    # SQLAlchemy 2.1 loads psycopg (3) for postgresql://, 2.0 psycopg2: either way both are named.
    assert "psycopg2-binary" in cause.message and "postgresql+psycopg2://" in cause.message
    assert PASSWORD not in cause.message
    uri2 = f"postgresql+psycopg2://alice:{PASSWORD}@127.0.0.1:{free_port()}/mlflow"
    cause = causes.classify(failure(uri2), uri2)
    assert cause.kind == causes.MISSING_DRIVER
    assert "the database driver psycopg2 is not installed: pip install psycopg2-binary" in cause.message


def test_sqlite_without_sqlalchemy_names_the_extra(tmp_path):
    # In a fresh interpreter where SQLAlchemy cannot be imported, MLflow itself only says
    # "Model registry functionality is unavailable"; the cause is the missing package.
    cause = classify_in_child(f"sqlite:///{tmp_path}/mlflow.db", before="sys.modules['sqlalchemy'] = None")
    assert cause.kind == causes.MISSING_SQLALCHEMY
    assert "needs SQLAlchemy" in cause.message
    assert "pip install 'azml_v1_bridge[sqlite]'" in cause.message
    assert "Model registry" not in cause.message


def test_a_plugin_that_cannot_import_is_named(tmp_path, monkeypatch):
    # A real installed plugin (entry point in a dist-info) whose module imports a missing package;
    # MLflow turns that into a warning and "unsupported URI".
    info = tmp_path / "brokenstore_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenstore-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mlflow.tracking_store]\nbrokenstore = brokenstore_plugin:Store\n")
    (tmp_path / "brokenstore_plugin.py").write_text("import a_dependency_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    uri = "brokenstore://host/db"
    cause = causes.classify(failure(uri), uri)
    assert cause.kind == causes.PLUGIN
    assert ("the MLflow plugin for brokenstore:// URIs (brokenstore-plugin) is installed but cannot be "
            "imported (ModuleNotFoundError") in cause.message
    assert "a_dependency_nobody_installed" in cause.message


def test_no_plugin_for_azureml_uris_says_which_to_install():
    uri = "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g"
    cause = causes.classify(failure(uri), uri)
    assert cause.kind == causes.PLUGIN
    assert "no MLflow tracking store for azureml:// URIs is installed: pip install azureml-mlflow" in cause.message


# ---------------------------------------------------------------- the database itself

def _store_at_revision(source, tmp_path, revision):
    target = tmp_path / "old.db"
    shutil.copyfile(source, target)
    with sqlite3.connect(target) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    return f"sqlite:///{target}"


def test_an_old_schema_says_mlflow_db_upgrade(empty_store_file, tmp_path):
    from mlflow.store.db_migrations import versions  # noqa: F401 (the folder of revisions)

    # A real older revision id from MLflow's own migrations: the schema looks out of date.
    folder = os.path.dirname(versions.__file__) if getattr(versions, "__file__", None) else \
        list(versions.__path__)[0]
    oldest = sorted(f.split("_")[0] for f in os.listdir(folder) if f.endswith(".py") and f[0] != "_")[0]
    uri = _store_at_revision(empty_store_file, tmp_path, oldest)
    cause = causes.classify(failure(uri), uri)
    assert cause.kind == causes.SCHEMA and not cause.transient
    assert f"the database schema is older than this MLflow: back it up, then run `mlflow db upgrade {uri}`" \
        in cause.message


def test_a_schema_from_a_newer_mlflow(empty_store_file, tmp_path):
    uri = _store_at_revision(empty_store_file, tmp_path, "ffffffffffff")
    cause = causes.classify(failure(uri), uri)
    assert cause.kind == causes.SCHEMA
    assert ("the database schema does not match this MLflow: a newer MLflow wrote it (revision "
            "ffffffffffff is unknown here)") in cause.message


def test_cannot_create_the_sqlite_file(tmp_path):
    (tmp_path / "data").write_text("a file where a folder should be")
    uri = f"sqlite:///{tmp_path}/data/mlflow.db"
    # SQLAlchemy, as MLflow's store opens it (MLflow itself retries this for up to a minute).
    import sqlalchemy

    with pytest.raises(Exception) as info:
        sqlalchemy.create_engine(uri).connect()
    cause = causes.classify(info.value, uri)
    assert cause.kind == causes.READ_ONLY and not cause.transient
    assert f"cannot create {tmp_path}/data/mlflow.db: {tmp_path}/data is a file, not a folder" in cause.message
    assert causes.check_local_store(uri).message == cause.message
    assert causes.check_local_store(f"sqlite:///{tmp_path}/ok/mlflow.db") is None
    assert causes.check_local_store("http://127.0.0.1:5000") is None


@pytest.mark.skipif(not can_unshare(), reason="needs `unshare -m` (a read-only bind mount; tests run as root)")
def test_a_read_only_folder_is_named(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    code = f"""
        import json
        from azml_v1_bridge_tools import cli
        from azml_v1_bridge import causes
        import sqlalchemy
        uri = "sqlite:///{folder}/mlflow.db"
        print(json.dumps(causes.check_local_store(uri).message))
        try:
            sqlalchemy.create_engine(uri).connect().exec_driver_sql("create table t (x int)")
        except Exception as exc:
            print(json.dumps(causes.classify(exc, uri).kind))
    """
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    result = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {folder} {folder} && mount -o "
                             f"remount,bind,ro {folder} && exec {sys.executable} {script}"],
                            env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    message, kind = [json.loads(line) for line in result.stdout.strip().splitlines()[-2:]]
    assert f"cannot create {folder}/mlflow.db: the folder {folder} is read-only" in message
    assert kind == causes.READ_ONLY


# ---------------------------------------------------------------- chains and the rest

def test_the_chain_is_walked_to_the_cause():
    uri = f"http://127.0.0.1:{free_port()}"
    inner = failure(uri)
    try:
        try:
            raise inner
        except Exception as exc:
            raise RuntimeError("the writer gave up") from exc  # explicit: __cause__
    except RuntimeError as outer:
        assert causes.classify(outer, uri).kind == causes.REFUSED
    try:
        try:
            raise inner
        except Exception:
            raise KeyError("while handling")  # implicit: __context__
    except KeyError as outer:
        assert causes.classify(outer, uri).kind == causes.REFUSED


def test_anything_else_is_other_with_its_first_line():
    cause = causes.classify(ValueError(f"bad thing\nhttp://bob:{PASSWORD}@h/x"), "http://h")
    assert cause.kind == causes.OTHER and cause.transient
    assert cause.message == "http://h: ValueError: bad thing"
    assert str(cause) == cause.message and "\n" not in cause.message
    assert set(causes.KINDS) >= {causes.UNRESOLVED, causes.REFUSED, causes.TIMEOUT, causes.AUTH,
                                 causes.MISSING_DRIVER, causes.MISSING_SQLALCHEMY, causes.SCHEMA,
                                 causes.PLUGIN, causes.READ_ONLY, causes.OTHER}


# ---------------------------------------------------------------- sign-in noise

def test_sign_in_noise_becomes_one_line_and_other_records_pass(caplog):
    caplog.set_level(logging.INFO)
    identity = logging.getLogger("azure.identity._credentials.default")
    core = logging.getLogger("azureml.core.run")
    summary = causes.quiet_azure_sign_in()
    try:
        assert causes.quiet_azure_sign_in() is summary  # idempotent
        for i in range(40):
            identity.warning("DefaultAzureCredential failed to retrieve a token from the included "
                             "credentials.\nAttempted credentials:\n\tEnvironmentCredential: %d", i)
        logging.getLogger("msal.application").warning("Token cache miss; AADSTS700016")
        core.warning("Run is being cancelled")
        identity.info("EnvironmentCredential.get_token failed")  # below WARNING: passes as before
    finally:
        summary.restore()
    by_logger = [(r.name, r.getMessage()) for r in caplog.records]
    ours = [m for n, m in by_logger if n == "azml_v1_bridge"]
    assert len(ours) == 1
    assert ours[0].startswith("azml_v1_bridge: Azure sign-in failed (azure.identity._credentials.default: "
                              "DefaultAzureCredential failed to retrieve a token")
    assert "\n" not in ours[0]
    assert summary.suppressed == 40
    assert ("azureml.core.run", "Run is being cancelled") in by_logger
    assert ("azure.identity._credentials.default", "EnvironmentCredential.get_token failed") in by_logger
    assert not any("Attempted credentials" in m for _, m in by_logger)
    assert logging.getLogger("azure.identity").propagate and logging.getLogger("azureml").propagate


def test_sqlalchemy_too_new_for_an_older_mlflow(tmp_path):
    # MLflow < 3.9 imports a pool class SQLAlchemy 2.1 removed: the same import, really failing.
    sqlalchemy = pytest.importorskip("sqlalchemy")
    if not sqlalchemy.__version__.startswith("2.1"):
        pytest.skip("needs SQLAlchemy 2.1")
    with pytest.raises(ImportError) as info:
        from sqlalchemy.pool import FallbackAsyncAdaptedQueuePool  # noqa: F401
    cause = causes.classify(info.value, f"sqlite:///{tmp_path}/mlflow.db")
    assert cause.kind == causes.MISSING_SQLALCHEMY
    assert (f"this MLflow cannot use the installed SQLAlchemy {sqlalchemy.__version__} (cannot import "
            "FallbackAsyncAdaptedQueuePool): pip install 'sqlalchemy<2.1', or MLflow 3.9 or later") in cause.message


# ---------------------------------------------------------------- the same causes in replay

def test_replay_names_the_cause(tmp_path):
    from conftest import run_script

    journal = tmp_path / "spill.jsonl"
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_script("""
        import azml_v1_bridge
        from azureml.core import Run
        Run.get_context().log("m", 1.0)
    """, tmp_path, env={"MLFLOW_TRACKING_URI": dead, "AZML_V1_BRIDGE_JOURNAL": str(journal),
                        "AZML_V1_BRIDGE_RETRY_SECONDS": "0.2", "AZML_V1_BRIDGE_STRICT": "0",
                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert result.returncode == 0, result.stderr
    assert journal.exists(), result.stderr
    port = free_port()
    replay = subprocess.run([sys.executable, "-m", "azml_v1_bridge_tools.cli", "replay", str(journal),
                             "--tracking-uri", f"http://alice:{PASSWORD}@127.0.0.1:{port}"],
                            env=dict(os.environ, PYTHONPATH=ROOT, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"),
                            capture_output=True, text=True, timeout=180)
    assert replay.returncode == 1
    assert (f": http://***@127.0.0.1:{port}: connection refused: nothing listens at 127.0.0.1:{port}"
            in replay.stderr), replay.stderr
    assert PASSWORD not in replay.stdout + replay.stderr


def test_a_locked_sqlite_store_is_busy_and_transient(empty_store_file, tmp_path):
    # Another process holds the database (as during a concurrent migration). SQLAlchemy as
    # MLflow's store uses it, with a short busy timeout (MLflow's own waits ~20 s).
    import sqlalchemy

    shutil.copyfile(empty_store_file, tmp_path / "busy.db")
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    uri = f"sqlite:///{tmp_path}/busy.db"
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"timeout": 0.1})
        with pytest.raises(Exception) as info, engine.connect() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM experiments").fetchall()
    finally:
        holder.close()
    cause = causes.classify(info.value, uri)
    assert cause.kind == causes.BUSY and cause.transient
    assert "the database is locked by another process" in cause.message
