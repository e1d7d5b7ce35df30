"""Test-only emulator of the Azure ML SDK v1 run-history HTTP service.

The real azureml-core client (1.61) talks to this emulator when
``Run.get_context()`` is given the environment of a remote run whose service
endpoint is ``http://127.0.0.1:PORT``.  Nothing in azureml-core is mocked except
the blob upload function (see ``loopback_blob_uploads``).

Import
------
This is a plain module (no pytest fixtures, no conftest).  Test files put
``tests/`` on ``sys.path`` themselves and ``import emulator``::

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from emulator import RunHistoryEmulator, submitted_run, loopback_blob_uploads

API
---
``RunHistoryEmulator(auto_create_runs=True)``
    Threaded HTTP server on 127.0.0.1 (free port).  Context manager, or
    ``start()`` / ``stop()``.  ``.url`` is ``"http://127.0.0.1:PORT"``.

    ``requests``: list of ``Recorded`` (thread-safe snapshot; append-only).
        ``Recorded`` fields: ``method``, ``path`` (unquoted, no query),
        ``query`` (dict, last value wins), ``query_string``, ``headers``,
        ``body`` (parsed JSON or ``None``), ``raw`` (bytes), ``timestamp``
        (``time.time()`` on arrival), ``kind`` (see below), ``run_id``
        (run id or artifact container owner when known), ``status`` (HTTP
        status replied), ``injected`` (True when the reply came from ``fail``).
    ``env(run_id, experiment="exp", home=None, experiment_id=None)`` -> dict
        Every environment variable needed for ``Run.get_context()`` to build a
        real ``_SubmittedRun``: AZUREML_ARM_SUBSCRIPTION / RESOURCEGROUP /
        WORKSPACE_NAME / PROJECT_NAME, AZUREML_RUN_ID, AZUREML_RUN_TOKEN (an
        unsigned-but-well-formed JWT with ``exp`` one day ahead),
        AZUREML_SERVICE_ENDPOINT, AZUREML_DISCOVERY_SERVICE_ENDPOINT (unique per
        emulator instance) and HOME (``home`` or one temp dir per process,
        removed at exit).  ``experiment_id`` additionally sets AZUREML_EXPERIMENT_ID,
        which makes the client use ``/experimentids/{id}/runs/...`` URLs for
        GET/PATCH of the run (both URL shapes are served).  Calling ``env``
        also registers the run (status ``Running``).
    ``add_run(run_id, experiment="exp", parent=None, status="Running",
              tags=None, properties=None, **fields)`` -> run dict (pre-seed).
    ``fail(path_regex, status=500, times=None, method=None)``
        The next ``times`` requests (``None`` = until ``clear_failures()``)
        whose path matches ``re.search(path_regex, path)`` (and method, if
        given) get ``status`` with an azureml error body
        ``{"error": {"code", "message", "details": [] ...}}``.  Injected
        failures never change state.  Returns the rule; ``rule.hits`` counts
        replies it produced.
    ``clear_failures()``
    ``metrics(run_id, name=None)`` -> list of dicts, one per metric *value*, in
        arrival order: ``name``, ``value`` (``data[name]`` when present, else
        the whole ``data`` row, e.g. for log_row/log_table), ``data``, ``step``,
        ``metric_id``, ``created_utc``, ``columns``, ``type`` (uxMetricType,
        e.g. ``azureml.v1.scalar``), ``raw`` (the MetricV2Dto it came in),
        ``api`` (``"v2"``; ``"v1"`` for the legacy history metric routes).
        Values rejected by ``fail`` are not stored.
    ``tags(run_id)``, ``properties(run_id)`` -> dict
    ``artifacts(run_id)`` -> {artifact path: bytes} (only uploaded blobs)
    ``artifact_paths(run_id)`` -> every path registered via batch metadata,
        uploaded or not.
    ``status(run_id)`` -> str; ``children(run_id)`` -> [child run ids] in
        creation order; ``events(run_id)`` -> list of event dicts (name,
        timestamp, data); ``run(run_id)`` -> copy of the run document (RunDto
        JSON as served).
    ``traffic(kind=None, run_id=None, method=None)`` -> [Recorded]
        ``kind`` matches exactly or as a dotted prefix.  Kinds:
        ``discovery``, ``run.get``, ``run.patch``, ``run.details``,
        ``run.children``, ``run.query``, ``run.delete_tags``, ``run.batch``
        (batch child creation), ``events`` (per run), ``events.batch``,
        ``metric`` (v2 batch POST), ``metric.list``, ``metric.full``,
        ``metric.v1``, ``metricsingest``, ``artifact.create`` (batch
        metadata), ``artifact.list``, ``artifact.contentinfo``,
        ``artifact.prefix``, ``artifact.metadata``, ``artifact.content``,
        ``blob.put``, ``blob.get``, ``unknown``.  Convenience aliases: ``tags`` / ``properties``
        / ``display_name`` / ``description`` (run.patch requests whose body
        contains that field), ``artifact`` (includes ``blob.*``).
    ``unhandled()`` -> requests nobody routed (replied 404), should be empty.
    ``wait_for(predicate, timeout=10)`` -> poll helper.

``submitted_run(emu, run_id, experiment="exp", monkeypatch=None, **env_kwargs)``
    Sets ``emu.env(...)`` (with ``monkeypatch.setenv`` when given, otherwise
    directly in ``os.environ``) and returns ``Run.get_context()``, raising if
    it is not a real ``azureml.core.run._SubmittedRun``.

``loopback_blob_uploads(emu=None)``
    Context manager.  azureml-core rebuilds blob URLs as
    ``https://{account}.blob.{suffix}`` (``azureml._file_utils.upload.
    upload_blob_from_stream``) so it cannot reach a loopback server.  This
    replaces ``azureml._restclient.artifacts_client.upload_blob_from_stream``
    (the name ``ArtifactsClient`` calls; also the copy imported in
    ``azureml._restclient.snapshots_client``) with a plain HTTP ``PUT`` of the
    stream to the SAS URL, for loopback URLs only (other URLs go to the
    original function), using azureml-core's own retry helper
    ``execute_func_with_reset`` with the same arguments.  Restores on exit.
    Downloads need no patch: azureml-core only uses the blob SDK for URLs
    matching ``https://*.blob.core.windows.net/...``; others are plain GETs.

What azureml-core 1.61 sends (observed through this emulator)
-------------------------------------------------------------
* get_context: GET discovery (once per discovery URL, then cached on disk),
  GET run.
* log / log_list / log_row / log_table: nothing at call time; a 1 s daemon (or
  flush) POSTs ``{"values": [MetricV2Dto...], "reportErrors": true}`` to the v2
  metric ``/batch`` route, at most 45 dtos per POST, batches in parallel.  One
  dto per call: log_list -> one dto with N values; log_row -> one dto, one
  value whose data is the row (uxMetricType ``azureml.v1.table``); log_table ->
  one dto with one value per row.  flush/complete end with GET
  ``.../metricsingest/wait``.
* log_image / log_confusion_matrix / log_accuracy_table / log_predictions /
  log_residuals: synchronously, inside the call, POST batch/metadata + blob PUT
  (image bytes, or ``json.dumps(value)`` named after the metric; log_image(path=)
  uses the local path *as given* as artifact name, plot= uses
  ``{name}_{unix time}.png``), then a queued metric whose column type is
  ``Artifact`` and value ``aml://artifactId/ExperimentRun/{container}/{path}``
  (uxMetricType ``azureml.v2.image`` / ``azureml.v2.confusion_matrix`` ...).
* tag / set_tags / add_properties / display_name / description: one
  synchronous PATCH of the run each (non-string tag values stringified
  client-side, ``tag(k)`` sends ``null``).  remove_tags: DELETE .../tags.
* child_run: PATCH (create, ``parentRunId``, status NotStarted, name ``">"+name``)
  then Start event.  create_children: PATCH .../batch/runs then POST
  .../batch/events (Start events).
* _SubmittedRun.complete(): flush only (no status event);
  _SubmittedRun.fail(): flush + ``Run.Error`` event only; _SubmittedRun.cancel():
  no traffic (warning).  Child (plain) runs post Completed / Error+Failed /
  Canceled events.
* A failed metric POST never raises from ``log``; it raises from the next
  flush()/complete() after ClientBase retries (none for most 4xx, immediate for
  408/502/504, 2/4/8 s for 500, 2-10 s for 503, 32 s for 429) and one more round
  after a fixed 3 s pause in ``MetricsClient._log_batch_v2``.  The failed batch
  is dropped, not re-queued.

Notes / limits
--------------
* ``_SubmittedRun`` objects and token auth are cached per process by
  (subscription, group, workspace, experiment, run id): use a unique run id per
  test (``unique_run_id()`` helps).
* The discovery cache file path is fixed when
  ``azureml._base_sdk_common.service_discovery`` is first imported (default
  argument built from ``~``), so HOME from ``env()`` only isolates it if azureml
  is imported afterwards (``submitted_run`` sets HOME before importing azureml;
  a subprocess is always fine).  If something imported azureml earlier, each
  emulator adds one entry to the real ``~/.azureml/.discovery``; set HOME to a
  temp dir before azureml is imported (e.g. in conftest) to avoid that, and see
  ``azureml_discovery_cache_path()``.  The discovery URL is unique per emulator
  instance, so stale cache entries are never reused.
* Each ``_SubmittedRun`` keeps a metrics daemon timer (1 s) for the life of the
  process; flush before stopping the emulator, or queued values are posted to
  a dead port in the background (retries + logged errors).
* Run properties are merged like tags (the real service refuses to change an
  existing property; the emulator does not).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = [
    "Recorded",
    "FailureRule",
    "RunHistoryEmulator",
    "submitted_run",
    "loopback_blob_uploads",
    "make_jwt",
    "unique_run_id",
    "azureml_discovery_cache_path",
]

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "emu-rg"
WORKSPACE = "emu-ws"

_WS = (r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
       r"/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)")
_EXP = r"/(?:experiments/(?P<exp>[^/]+)|experimentids/(?P<expid>[^/]+))"
_RUN = _EXP + r"/runs/(?P<run>[^/]+)"
_HIST = r"^/history/v1\.0" + _WS
_METRIC = r"^/metric/v2\.0" + _WS + r"/runs/(?P<run>[^/]+)"
_ART = r"^/artifact/v2\.0" + _WS + r"/artifacts"


_PROCESS_HOME: str | None = None


def _process_home() -> str:
    """One temp HOME per process (removed at exit), shared by all emulators.

    Shared rather than per-emulator because azureml-core binds the discovery cache
    path to the HOME seen when it was first imported; deleting that directory
    between tests would only make later cache writes log warnings.
    """
    global _PROCESS_HOME
    if _PROCESS_HOME is None or not os.path.isdir(_PROCESS_HOME):
        _PROCESS_HOME = tempfile.mkdtemp(prefix="azml_emu_home_")
        atexit.register(shutil.rmtree, _PROCESS_HOME, True)
    return _PROCESS_HOME


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(lifetime_seconds: int = 86400, **claims: Any) -> str:
    """A well-formed HS256 JWT with ``exp``; the signature is garbage (never checked)."""
    now = int(time.time())
    payload = {"iat": now, "nbf": now, "exp": now + lifetime_seconds,
               "iss": "azureml-emulator", "aud": "azureml", "sub": "emulator"}
    payload.update(claims)
    header = {"alg": "HS256", "typ": "JWT"}
    return ".".join([_b64url(json.dumps(header).encode()),
                     _b64url(json.dumps(payload).encode()),
                     _b64url(b"not-a-real-signature")])


def unique_run_id(prefix: str = "emu") -> str:
    return "{}_{}".format(prefix, uuid.uuid4().hex[:12])


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    query_string: str
    headers: dict
    body: Any
    raw: bytes
    timestamp: float
    kind: str = "unknown"
    run_id: str | None = None
    status: int | None = None
    injected: bool = False

    def __repr__(self) -> str:  # keep pytest output readable
        return "Recorded({} {} kind={} status={}{})".format(
            self.method, self.path, self.kind, self.status, " injected" if self.injected else "")


@dataclass
class FailureRule:
    pattern: "re.Pattern[str]"
    status: int
    times: int | None
    method: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return self.pattern.search(path) is not None


class _Reply(Exception):
    """Raised by handlers to short-circuit with an error reply."""

    def __init__(self, status: int, message: str, code: str = "UserError"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _error_body(status: int, message: str, code: str) -> dict:
    return {
        "error": {
            "code": code,
            "severity": None,
            "message": message,
            "messageFormat": message,
            "messageParameters": {},
            "referenceCode": None,
            "detailsUri": None,
            "target": None,
            "details": [],
            "innerError": None,
            "additionalInfo": None,
        },
        "correlation": {"operation": uuid.uuid4().hex, "request": uuid.uuid4().hex[:16]},
        "environment": "emulator",
        "location": "local",
        "time": _now_iso(),
        "componentName": "run-history-emulator",
        "statusCode": status,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "RunHistoryEmulator/1.0"
    timeout = 60  # idle keep-alive connections are dropped after this

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def setup(self) -> None:
        super().setup()
        self.server.emulator._track_socket(self.connection, True)  # type: ignore[attr-defined]

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._track_socket(self.connection, False)  # type: ignore[attr-defined]

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline().strip()
                size = int(line.split(b";")[0], 16) if line else 0
                if size == 0:
                    # consume trailer
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        emu: RunHistoryEmulator = self.server.emulator  # type: ignore[attr-defined]
        raw = self._read_body()
        split = urlsplit(self.path)
        path = unquote(split.path)
        body = None
        if raw:
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                body = None
        rec = Recorded(method=self.command, path=path, query=dict(parse_qsl(split.query, keep_blank_values=True)),
                       query_string=split.query, headers=dict(self.headers.items()), body=body, raw=raw,
                       timestamp=time.time())
        status, headers, payload = emu._handle(rec)
        if isinstance(payload, (bytes, bytearray)):
            data = bytes(payload)
        elif payload is None:
            data = b""
        else:
            data = json.dumps(payload).encode("utf-8")
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", uuid.uuid4().hex)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class RunHistoryEmulator:
    """In-process emulator of the AzureML v1 run-history / metric / artifact services."""

    def __init__(self, auto_create_runs: bool = True,
                 subscription: str = SUBSCRIPTION, resource_group: str = RESOURCE_GROUP,
                 workspace: str = WORKSPACE):
        self.auto_create_runs = auto_create_runs
        self.subscription = subscription
        self.resource_group = resource_group
        self.workspace = workspace
        self._lock = threading.RLock()
        self._requests: list[Recorded] = []
        self._failures: list[FailureRule] = []
        self._runs: dict[str, dict] = {}
        self._children: dict[str, list[str]] = {}
        self._events: dict[str, list[dict]] = {}
        self._metrics: dict[str, list[dict]] = {}
        self._metric_series: dict[str, dict[str, dict]] = {}  # run -> name -> merged MetricV2Dto
        self._artifact_meta: dict[str, dict[str, dict]] = {}  # container -> path -> ArtifactDto
        self._blobs: dict[str, dict[str, bytes]] = {}  # container -> path -> bytes
        self._container_owner: dict[str, str] = {}
        self._experiment_ids: dict[str, str] = {}
        self._run_numbers = itertools.count(1)
        self._sockets: set = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._discovery_id = uuid.uuid4().hex
        self.url = ""
        self._routes = self._build_routes()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "RunHistoryEmulator":
        if self._server is not None:
            return self
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.emulator = self  # type: ignore[attr-defined]
        port = self._server.server_address[1]
        self.url = "http://127.0.0.1:{}".format(port)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="RunHistoryEmulator:{}".format(port), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            with self._lock:
                socks = list(self._sockets)
            for s in socks:  # wake handler threads stuck on idle keep-alive connections
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if self._thread is not None:
                self._thread.join(5)

    def __enter__(self) -> "RunHistoryEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _track_socket(self, sock: Any, add: bool) -> None:
        with self._lock:
            (self._sockets.add if add else self._sockets.discard)(sock)

    # ------------------------------------------------------------------ environment
    @property
    def discovery_url(self) -> str:
        return "{}/discovery/{}".format(self.url, self._discovery_id)

    def workspace_scope(self) -> str:
        return ("/subscriptions/{}/resourceGroups/{}/providers/Microsoft.MachineLearningServices/workspaces/{}"
                .format(self.subscription, self.resource_group, self.workspace))

    def env(self, run_id: str, experiment: str = "exp", home: str | None = None,
            experiment_id: str | None = None) -> dict[str, str]:
        if not self.url:
            raise RuntimeError("start the emulator first")
        if home is None:
            home = _process_home()
        if experiment_id is not None:
            with self._lock:
                self._experiment_ids[experiment] = experiment_id
        if run_id not in self._runs:
            self.add_run(run_id, experiment=experiment)
        env = {
            "AZUREML_ARM_SUBSCRIPTION": self.subscription,
            "AZUREML_ARM_RESOURCEGROUP": self.resource_group,
            "AZUREML_ARM_WORKSPACE_NAME": self.workspace,
            "AZUREML_ARM_PROJECT_NAME": experiment,
            "AZUREML_RUN_ID": run_id,
            "AZUREML_RUN_TOKEN": make_jwt(),
            "AZUREML_SERVICE_ENDPOINT": self.url,
            "AZUREML_DISCOVERY_SERVICE_ENDPOINT": self.discovery_url,
            "HOME": home,
        }
        if experiment_id is not None:
            env["AZUREML_EXPERIMENT_ID"] = experiment_id
        return env

    def discovery_document(self) -> dict[str, str]:
        return {k: self.url for k in ("api", "catalog", "experimentation", "gallery", "history",
                                      "hyperdrive", "labeling", "modelmanagement", "pipelines", "studio")}

    # ------------------------------------------------------------------ state helpers
    def _experiment_id(self, experiment: str) -> str:
        with self._lock:
            if experiment not in self._experiment_ids:
                self._experiment_ids[experiment] = str(uuid.uuid5(uuid.NAMESPACE_URL, "emu-exp/" + experiment))
            return self._experiment_ids[experiment]

    def _experiment_name(self, experiment_id: str) -> str:
        with self._lock:
            for name, eid in self._experiment_ids.items():
                if eid == experiment_id:
                    return name
        return experiment_id

    def add_run(self, run_id: str, experiment: str = "exp", parent: str | None = None,
                status: str = "Running", tags: dict | None = None, properties: dict | None = None,
                **fields: Any) -> dict:
        with self._lock:
            if run_id in self._runs:
                return self._runs[run_id]
            root = run_id
            if parent is not None:
                root = self._runs[parent]["rootRunId"] if parent in self._runs else parent
                self._children.setdefault(parent, []).append(run_id)
            now = _now_iso()
            container = "dcid." + run_id
            run = {
                "runNumber": next(self._run_numbers),
                "rootRunId": root,
                "experimentId": self._experiment_id(experiment),
                "createdUtc": now,
                "createdBy": {"userObjectId": "emulator", "userTenantId": "emulator", "userName": "Emulator User"},
                "userId": "emulator",
                "runId": run_id,
                "runUuid": str(uuid.uuid4()),
                "parentRunId": parent,
                "status": status,
                "startTimeUtc": now if status not in ("NotStarted",) else None,
                "endTimeUtc": None,
                "heartbeatEnabled": False,
                "name": fields.pop("name", None),
                "displayName": fields.pop("displayName", run_id),
                "dataContainerId": container,
                "description": fields.pop("description", None),
                "hidden": False,
                "runType": fields.pop("runType", None),
                "properties": dict(properties or {}),
                "scriptName": None,
                "target": fields.pop("target", None),
                "tags": dict(tags or {}),
                "runDefinition": None,
                "cancelUri": None,
                "diagnosticsUri": None,
                "error": None,
                "warnings": None,
                "experimentName": experiment,
            }
            run.update(fields)
            self._runs[run_id] = run
            self._container_owner[container] = run_id
            return run

    def _get_or_create(self, run_id: str, experiment: str) -> dict:
        with self._lock:
            if run_id not in self._runs:
                if not self.auto_create_runs:
                    raise _Reply(404, "Run {} was not found".format(run_id), "NotFound")
                self.add_run(run_id, experiment=experiment)
            return self._runs[run_id]

    def _run_doc(self, run: dict) -> dict:
        doc = json.loads(json.dumps(run))
        doc.pop("experimentName", None)
        return doc

    def _apply_patch(self, run: dict, body: dict) -> None:
        for key in ("tags", "properties"):
            if body.get(key):
                run[key].update({k: v for k, v in body[key].items()})
        for key in ("displayName", "description", "name", "target", "scriptName", "runType",
                    "heartbeatEnabled", "hidden", "primaryMetricName", "runDefinition", "runTypeV2"):
            if body.get(key) is not None:
                run[key] = body[key]
        if body.get("status"):
            self._set_status(run, body["status"])
        for key in ("inputDatasets", "outputDatasets"):
            if body.get(key) is not None:
                run.setdefault(key, [])
                run[key].extend(body[key])

    def _set_status(self, run: dict, status: str) -> None:
        run["status"] = status
        if status == "Running" and not run.get("startTimeUtc"):
            run["startTimeUtc"] = _now_iso()
        if status in ("Completed", "Failed", "Canceled"):
            run["endTimeUtc"] = _now_iso()

    def _apply_event(self, run_id: str, event: dict) -> None:
        run = self._runs.get(run_id)
        with self._lock:
            self._events.setdefault(run_id, []).append(event)
        if run is None:
            return
        name = event.get("name", "")
        status = {
            "Microsoft.MachineLearning.Run.Start": "Running",
            "Microsoft.MachineLearning.Run.Completed": "Completed",
            "Microsoft.MachineLearning.Run.Failed": "Failed",
            "Microsoft.MachineLearning.Run.Canceled": "Canceled",
            "Microsoft.MachineLearning.Run.CancelRequested": "CancelRequested",
        }.get(name)
        if status:
            self._set_status(run, status)
        if name == "Microsoft.MachineLearning.Run.Error":
            run["error"] = (event.get("data") or {}).get("ErrorResponse")

    # ------------------------------------------------------------------ public inspection
    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def fail(self, path_regex: str, status: int = 500, times: int | None = None,
             method: str | None = None) -> FailureRule:
        rule = FailureRule(re.compile(path_regex), status, times, method)
        with self._lock:
            self._failures.append(rule)
        return rule

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def metrics(self, run_id: str, name: str | None = None) -> list[dict]:
        with self._lock:
            values = list(self._metrics.get(run_id, []))
        return [v for v in values if name is None or v["name"] == name]

    def tags(self, run_id: str) -> dict:
        with self._lock:
            return dict(self._runs[run_id]["tags"])

    def properties(self, run_id: str) -> dict:
        with self._lock:
            return dict(self._runs[run_id]["properties"])

    def run(self, run_id: str) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._runs[run_id]))

    def runs(self) -> list[str]:
        with self._lock:
            return list(self._runs)

    def status(self, run_id: str) -> str:
        with self._lock:
            return self._runs[run_id]["status"]

    def children(self, run_id: str) -> list[str]:
        with self._lock:
            return list(self._children.get(run_id, []))

    def events(self, run_id: str) -> list[dict]:
        with self._lock:
            return list(self._events.get(run_id, []))

    def _container_of(self, run_id: str) -> str:
        with self._lock:
            return self._runs[run_id]["dataContainerId"] if run_id in self._runs else "dcid." + run_id

    def artifacts(self, run_id: str) -> dict[str, bytes]:
        with self._lock:
            return dict(self._blobs.get(self._container_of(run_id), {}))

    def artifact_paths(self, run_id: str) -> list[str]:
        with self._lock:
            return list(self._artifact_meta.get(self._container_of(run_id), {}))

    _ALIASES = {
        "tags": ("run.patch", "tags"),
        "properties": ("run.patch", "properties"),
        "display_name": ("run.patch", "displayName"),
        "description": ("run.patch", "description"),
    }

    def traffic(self, kind: str | None = None, run_id: str | None = None,
                method: str | None = None) -> list[Recorded]:
        out = []
        for r in self.requests:
            if run_id is not None and r.run_id != run_id:
                continue
            if method is not None and r.method != method.upper():
                continue
            if kind is not None:
                if kind in self._ALIASES:
                    k, fld = self._ALIASES[kind]
                    if r.kind != k or not isinstance(r.body, dict) or r.body.get(fld) in (None, {}):
                        continue
                elif kind == "artifact":
                    if not (r.kind.startswith("artifact") or r.kind.startswith("blob")):
                        continue
                elif not (r.kind == kind or r.kind.startswith(kind + ".")):
                    continue
            out.append(r)
        return out

    def unhandled(self) -> list[Recorded]:
        return self.traffic("unknown")

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
        deadline = time.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.time() > deadline:
                raise TimeoutError("condition not met within {}s".format(timeout))
            time.sleep(interval)

    # ------------------------------------------------------------------ dispatch
    def _build_routes(self) -> list[tuple[str, "re.Pattern[str]", str, Callable]]:
        r = []

        def add(method: str, pattern: str, kind: str, fn: Callable) -> None:
            r.append((method, re.compile(pattern + "$"), kind, fn))

        add("GET", r"^/discovery(?:/.*)?", "discovery", self._h_discovery)
        # run history
        add("GET", _HIST + _RUN, "run.get", self._h_run_get)
        add("PATCH", _HIST + _RUN, "run.patch", self._h_run_patch)
        add("GET", _HIST + r"/runs/(?P<run>[^/]+)", "run.get", self._h_run_get)
        add("GET", _HIST + _RUN + r"/details", "run.details", self._h_run_details)
        add("GET", _HIST + _RUN + r"/children", "run.children", self._h_run_children)
        add("POST", _HIST + _EXP + r"/runs:query", "run.query", self._h_run_query)
        add("DELETE", _HIST + _RUN + r"/tags", "run.delete_tags", self._h_run_delete_tags)
        add("PATCH", _HIST + _EXP + r"/batch/runs", "run.batch", self._h_run_batch)
        add("POST", _HIST + _RUN + r"/events", "events", self._h_events)
        add("POST", _HIST + _EXP + r"/batch/events", "events.batch", self._h_events_batch)
        add("GET", _HIST + _RUN + r"/metricsingest/wait", "metricsingest", self._h_ok)
        add("POST", _HIST + _RUN + r"/(?:batch/)?metrics", "metric.v1", self._h_metric_v1)
        # metrics v2
        add("POST", _METRIC + r"/batch", "metric", self._h_metric_batch)
        add("POST", _METRIC + r"/list", "metric.list", self._h_metric_list)
        add("POST", _METRIC + r"/full", "metric.full", self._h_metric_full)
        # artifacts v2
        add("POST", _ART + r"/batch/metadata/(?P<origin>[^/]+)/(?P<container>[^/]+)", "artifact.create",
            self._h_art_create)
        add("GET", _ART + r"/contentinfo/(?P<origin>[^/]+)/(?P<container>[^/]+)/(?P<apath>.+)",
            "artifact.contentinfo", self._h_art_contentinfo)
        add("GET", _ART + r"/prefix/contentinfo/(?P<origin>[^/]+)/(?P<container>[^/]+)(?:/(?P<apath>.*))?",
            "artifact.prefix", self._h_art_prefix)
        add("GET", _ART + r"/metadata/(?P<origin>[^/]+)/(?P<container>[^/]+)/(?P<apath>.+)",
            "artifact.metadata", self._h_art_metadata)
        add("GET", _ART + r"/content/(?P<origin>[^/]+)/(?P<container>[^/]+)/(?P<apath>.+)", "artifact.content",
            self._h_blob_get)
        add("GET", _ART + r"/(?P<origin>[^/]+)/(?P<container>[^/]+)", "artifact.list",
            self._h_art_list)
        # blob store stand-in
        add("PUT", r"^/blob/(?P<origin>[^/]+)/(?P<container>[^/]+)/(?P<apath>.+)", "blob.put", self._h_blob_put)
        add("GET", r"^/blob/(?P<origin>[^/]+)/(?P<container>[^/]+)/(?P<apath>.+)", "blob.get", self._h_blob_get)
        add("HEAD", r"^/blob/(?P<origin>[^/]+)/(?P<container>[^/]+)/(?P<apath>.+)", "blob.get", self._h_blob_get)
        return r

    def _handle(self, rec: Recorded) -> tuple[int, dict, Any]:
        match = None
        handler = None
        for method, pattern, kind, fn in self._routes:
            if method != rec.method:
                continue
            m = pattern.match(rec.path)
            if m:
                match, handler, rec.kind = m, fn, kind
                break
        if match is not None:
            gd = match.groupdict()
            if gd.get("run"):
                rec.run_id = gd["run"]
            elif gd.get("container"):
                rec.run_id = self._container_owner.get(gd["container"])
        with self._lock:
            self._requests.append(rec)
            rule = next((f for f in self._failures if f.matches(rec.method, rec.path)), None)
            if rule is not None:
                rule.hits += 1
        if rule is not None:
            rec.status, rec.injected = rule.status, True
            return rule.status, {}, _error_body(rule.status, "Injected failure ({}) for {} {}".format(
                rule.status, rec.method, rec.path), "ServiceError" if rule.status >= 500 else "UserError")
        if handler is None:
            rec.status = 404
            return 404, {}, _error_body(404, "Emulator has no route for {} {}".format(rec.method, rec.path),
                                        "NotFound")
        try:
            with self._lock:
                result = handler(rec, match.groupdict())
        except _Reply as e:
            rec.status = e.status
            return e.status, {}, _error_body(e.status, e.message, e.code)
        except Exception as e:  # pragma: no cover - emulator bug, surface it to the client
            rec.status = 500
            return 500, {}, _error_body(500, "Emulator error: {!r}".format(e), "EmulatorError")
        if isinstance(result, tuple):
            status, headers, payload = result
        else:
            status, headers, payload = 200, {}, result
        rec.status = status
        return status, headers, payload

    @staticmethod
    def _exp_name(emu: "RunHistoryEmulator", gd: dict) -> str:
        if gd.get("exp"):
            return gd["exp"]
        if gd.get("expid"):
            return emu._experiment_name(gd["expid"])
        return "exp"

    # ------------------------------------------------------------------ handlers: run history
    def _h_discovery(self, rec: Recorded, gd: dict) -> Any:
        return self.discovery_document()

    def _h_ok(self, rec: Recorded, gd: dict) -> Any:
        return {}

    def _h_run_get(self, rec: Recorded, gd: dict) -> Any:
        return self._run_doc(self._get_or_create(gd["run"], self._exp_name(self, gd)))

    def _h_run_patch(self, rec: Recorded, gd: dict) -> Any:
        body = rec.body if isinstance(rec.body, dict) else {}
        run_id = gd["run"]
        exp = self._exp_name(self, gd)
        if run_id not in self._runs:
            parent = body.get("parentRunId")
            if parent is None and not self.auto_create_runs:
                raise _Reply(404, "Run {} was not found".format(run_id), "NotFound")
            self.add_run(run_id, experiment=exp, parent=parent, status=body.get("status") or "NotStarted")
        run = self._runs[run_id]
        self._apply_patch(run, body)
        return self._run_doc(run)

    def _h_run_details(self, rec: Recorded, gd: dict) -> Any:
        run = self._get_or_create(gd["run"], self._exp_name(self, gd))
        return {
            "runId": run["runId"],
            "target": run.get("target"),
            "status": run["status"],
            "startTimeUtc": run.get("startTimeUtc"),
            "endTimeUtc": run.get("endTimeUtc"),
            "error": run.get("error"),
            "warnings": run.get("warnings"),
            "properties": dict(run["properties"]),
            "inputDatasets": run.get("inputDatasets", []),
            "outputDatasets": run.get("outputDatasets", []),
            "runDefinition": run.get("runDefinition"),
            "logFiles": {},
            "services": {},
        }

    def _h_run_children(self, rec: Recorded, gd: dict) -> Any:
        parent = gd["run"]
        docs = [self._run_doc(self._runs[c]) for c in self._children.get(parent, [])]
        return {"value": docs, "continuationToken": None, "nextLink": None}

    _CLAUSE = re.compile(r"^\s*(?P<field>[\w./]+)\s+(?P<op>eq|ne)\s+'?(?P<value>[^']*?)'?\s*$", re.I)

    def _h_run_query(self, rec: Recorded, gd: dict) -> Any:
        body = rec.body if isinstance(rec.body, dict) else {}
        flt = body.get("filter") or rec.query.get("$filter") or ""
        fields = {"runid": "runId", "rootrunid": "rootRunId", "parentrunid": "parentRunId", "status": "status",
                  "runtype": "runType"}
        clauses = []
        for part in re.split(r"\s+and\s+", flt, flags=re.I) if flt else []:
            m = self._CLAUSE.match(part.strip().strip("()"))
            if m and m.group("field").lower() in fields:
                clauses.append((fields[m.group("field").lower()], m.group("op").lower(), m.group("value")))
        exp = self._exp_name(self, gd)
        out = []
        for run in self._runs.values():
            if run.get("experimentName") != exp:
                continue
            ok = True
            for fld, op, value in clauses:
                equal = str(run.get(fld)) == value
                if (op == "eq") != equal:
                    ok = False
                    break
            if ok:
                out.append(self._run_doc(run))
        return {"value": out, "continuationToken": None, "nextLink": None}

    def _h_run_delete_tags(self, rec: Recorded, gd: dict) -> Any:
        run = self._get_or_create(gd["run"], self._exp_name(self, gd))
        for key in rec.body or []:
            run["tags"].pop(key, None)
        return self._run_doc(run)

    def _h_run_batch(self, rec: Recorded, gd: dict) -> Any:
        body = rec.body if isinstance(rec.body, dict) else {}
        exp = self._exp_name(self, gd)
        runs = {}
        for dto in body.get("runs") or []:
            run_id = dto.get("runId") or str(uuid.uuid4())
            if run_id not in self._runs:
                self.add_run(run_id, experiment=exp, parent=dto.get("parentRunId"),
                             status=dto.get("status") or "NotStarted")
            run = self._runs[run_id]
            self._apply_patch(run, dto)
            runs[run_id] = self._run_doc(run)
        return {"runs": runs, "errors": {}}

    def _h_events(self, rec: Recorded, gd: dict) -> Any:
        self._get_or_create(gd["run"], self._exp_name(self, gd))
        if isinstance(rec.body, dict):
            self._apply_event(gd["run"], rec.body)
        return {}

    def _h_events_batch(self, rec: Recorded, gd: dict) -> Any:
        body = rec.body if isinstance(rec.body, dict) else {}
        for event in body.get("events") or []:
            run_id = (event.get("data") or {}).get("RunId")
            if run_id:
                self._apply_event(run_id, event)
        return {"errors": []}

    def _h_metric_v1(self, rec: Recorded, gd: dict) -> Any:
        run_id = gd["run"]
        body = rec.body if isinstance(rec.body, dict) else {}
        dtos = body.get("values") if "values" in body else [body]
        for dto in dtos or []:
            for cell in dto.get("cells") or [{}]:
                self._metrics.setdefault(run_id, []).append({
                    "name": dto.get("name"), "value": cell.get(dto.get("name"), cell), "data": cell,
                    "step": None, "metric_id": dto.get("metricId"), "created_utc": dto.get("createdUtc"),
                    "columns": None, "type": dto.get("metricType"), "raw": dto, "api": "v1"})
        return {}

    # ------------------------------------------------------------------ handlers: metrics v2
    def _h_metric_batch(self, rec: Recorded, gd: dict) -> Any:
        run_id = gd["run"]
        body = rec.body if isinstance(rec.body, dict) else {}
        for dto in body.get("values") or []:
            name = dto.get("name")
            columns = dto.get("columns") or {}
            ux = (dto.get("properties") or {}).get("uxMetricType")
            series = self._metric_series.setdefault(run_id, {}).get(name)
            if series is None:
                series = {"dataContainerId": self._container_of(run_id), "name": name, "columns": {},
                          "value": [], "continuationToken": None, "properties": {"uxMetricType": ux}}
                self._metric_series[run_id][name] = series
            for col, typ in columns.items():
                series["columns"].setdefault(col, typ)
            for val in dto.get("value") or []:
                data = val.get("data") or {}
                series["value"].append(val)
                self._metrics.setdefault(run_id, []).append({
                    "name": name,
                    "value": data[name] if name in data else data,
                    "data": data,
                    "step": val.get("step"),
                    "metric_id": val.get("metricId"),
                    "created_utc": val.get("createdUtc"),
                    "columns": columns,
                    "type": ux,
                    "raw": dto,
                    "api": "v2",
                })
        return {"errors": []}

    def _h_metric_list(self, rec: Recorded, gd: dict) -> Any:
        series = self._metric_series.get(gd["run"], {})
        return {"value": [{"metricKey": {"namespace": None, "name": n}, "columns": s["columns"]}
                          for n, s in series.items()],
                "continuationToken": None}

    def _h_metric_full(self, rec: Recorded, gd: dict) -> Any:
        body = rec.body if isinstance(rec.body, dict) else {}
        name = body.get("metricName")
        series = self._metric_series.get(gd["run"], {}).get(name)
        if series is None:
            raise _Reply(404, "Metric {} not found for run {}".format(name, gd["run"]), "NotFound")
        return json.loads(json.dumps(series))

    # ------------------------------------------------------------------ handlers: artifacts
    def _blob_uri(self, origin: str, container: str, path: str) -> str:
        return "{}/blob/{}/{}/{}?sv=2019-02-02&sr=b&sig=emulator".format(
            self.url, quote(origin, safe=""), quote(container, safe=""), quote(path, safe="/"))

    def _artifact_dto(self, origin: str, container: str, path: str) -> dict:
        return {"artifactId": "{}/{}/{}".format(origin, container, path), "origin": origin,
                "container": container, "path": path, "etag": uuid.uuid4().hex, "createdTime": _now_iso(),
                "dataPath": None}

    def _content_info(self, origin: str, container: str, path: str) -> dict:
        return {"contentUri": self._blob_uri(origin, container, path), "origin": origin,
                "container": container, "path": path}

    def _h_art_create(self, rec: Recorded, gd: dict) -> Any:
        origin, container = gd["origin"], gd["container"]
        body = rec.body if isinstance(rec.body, dict) else {}
        meta = self._artifact_meta.setdefault(container, {})
        artifacts, infos = {}, {}
        for item in body.get("paths") or []:
            path = item.get("path")
            dto = meta.get(path) or self._artifact_dto(origin, container, path)
            meta[path] = dto
            artifacts[path] = dto
            infos[path] = self._content_info(origin, container, path)
        return {"artifacts": artifacts, "artifactContentInformation": infos, "errors": {}}

    def _h_art_contentinfo(self, rec: Recorded, gd: dict) -> Any:
        origin, container, path = gd["origin"], gd["container"], gd["apath"]
        if path not in self._artifact_meta.get(container, {}):
            raise _Reply(404, "Artifact {}/{}/{} not found".format(origin, container, path), "NotFound")
        return self._content_info(origin, container, path)

    def _h_art_metadata(self, rec: Recorded, gd: dict) -> Any:
        origin, container, path = gd["origin"], gd["container"], gd["apath"]
        dto = self._artifact_meta.get(container, {}).get(path)
        if dto is None:
            raise _Reply(404, "Artifact {}/{}/{} not found".format(origin, container, path), "NotFound")
        return dto

    def _h_art_prefix(self, rec: Recorded, gd: dict) -> Any:
        origin, container, prefix = gd["origin"], gd["container"], gd.get("apath") or ""
        paths = [p for p in self._artifact_meta.get(container, {}) if p.startswith(prefix)]
        return {"value": [self._content_info(origin, container, p) for p in paths], "continuationToken": None}

    def _h_art_list(self, rec: Recorded, gd: dict) -> Any:
        origin, container = gd["origin"], gd["container"]
        return {"value": list(self._artifact_meta.get(container, {}).values()), "continuationToken": None}

    def _h_blob_put(self, rec: Recorded, gd: dict) -> Any:
        container, path = gd["container"], gd["apath"]
        self._blobs.setdefault(container, {})[path] = rec.raw
        meta = self._artifact_meta.setdefault(container, {})
        if path not in meta:
            meta[path] = self._artifact_dto(gd["origin"], container, path)
        return 201, {"ETag": '"{}"'.format(uuid.uuid4().hex)}, None

    def _h_blob_get(self, rec: Recorded, gd: dict) -> Any:
        data = self._blobs.get(gd["container"], {}).get(gd["apath"])
        if data is None:
            raise _Reply(404, "BlobNotFound", "BlobNotFound")
        return 200, {"Content-Type": "application/octet-stream", "x-ms-blob-type": "BlockBlob"}, data


# ---------------------------------------------------------------------- helpers
def submitted_run(emu: RunHistoryEmulator, run_id: str, experiment: str = "exp", monkeypatch: Any = None,
                  **env_kwargs: Any):
    """Point the process at ``emu`` and return ``Run.get_context()`` (a real ``_SubmittedRun``).

    With ``monkeypatch`` the variables are set through ``monkeypatch.setenv`` (undone
    after the test); without it ``os.environ`` is modified and left that way.
    """
    env = emu.env(run_id, experiment=experiment, **env_kwargs)
    for key, value in env.items():
        if monkeypatch is not None:
            monkeypatch.setenv(key, value)
        else:
            os.environ[key] = value
    from azureml.core.run import Run, _SubmittedRun

    run = Run.get_context()
    if not isinstance(run, _SubmittedRun):
        raise RuntimeError("Run.get_context() returned {!r}, not a _SubmittedRun; is an env var missing?"
                           .format(type(run)))
    return run


def azureml_discovery_cache_path() -> str | None:
    """Where azureml-core writes its discovery cache in this process (None if not imported yet).

    The path is a default argument evaluated from ``~`` when
    ``azureml._base_sdk_common.service_discovery`` is first imported; read-only helper.
    """
    import sys

    mod = sys.modules.get("azureml._base_sdk_common.service_discovery")
    if mod is None:
        return None
    return mod.CachedServiceDiscovery.__init__.__defaults__[0]


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def loopback_blob_uploads(emu: RunHistoryEmulator | None = None):
    """Replace azureml-core's blob upload with a plain HTTP PUT for loopback SAS URLs.

    azureml-core's ``upload_blob_from_stream`` rebuilds the account URL as
    ``https://{account}.blob.{suffix}``, which cannot point at a loopback HTTP
    server.  While this context is active,
    ``azureml._restclient.artifacts_client.upload_blob_from_stream`` and
    ``azureml._restclient.snapshots_client.upload_blob_from_stream`` are replaced by
    a function that PUTs the stream's bytes to the (loopback) URL and raises on an
    HTTP error, wrapped in azureml-core's own ``execute_func_with_reset`` retry
    helper with the caller's backoff/retries.  Non-loopback URLs go to the
    original function.  ``emu`` is accepted for readability only.
    """
    import requests
    from azureml._restclient import artifacts_client, snapshots_client
    from azureml._restclient.clientbase import execute_func_with_reset

    originals = {mod: mod.upload_blob_from_stream for mod in (artifacts_client, snapshots_client)}
    original = originals[artifacts_client]

    def upload_blob_from_stream(stream, url, content_type=None, session=None, timeout=None, backoff=None,
                                retries=None):
        if not _is_loopback(url):
            return original(stream, url, content_type=content_type, session=session, timeout=timeout,
                            backoff=backoff, retries=retries)
        start = stream.tell()

        def put():
            stream.seek(start)
            data = stream.read()
            if isinstance(data, str):
                data = data.encode("utf-8")
            headers = {"x-ms-blob-type": "BlockBlob"}
            if content_type:
                headers["Content-Type"] = content_type
            response = requests.put(url, data=data, headers=headers, timeout=timeout or 30)
            response.raise_for_status()
            return response

        def reset(*args, **kwargs):
            stream.seek(start)

        execute_func_with_reset(backoff, retries, put, reset)

    for mod in originals:
        mod.upload_blob_from_stream = upload_blob_from_stream
    try:
        yield
    finally:
        for mod, fn in originals.items():
            mod.upload_blob_from_stream = fn
