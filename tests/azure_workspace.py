"""A loopback stand-in for an Azure ML workspace's data plane, under Azure's real host names.

Run inside `unshare --net --mount` (a network namespace of its own: only its loopback exists, so
nothing can leave it), as `python tests/azure_workspace.py SPEC.json RESULT.json`:

1. brings up `lo`, bind-mounts a private hosts file over /etc/hosts that sends the workspace's
   region host, its storage account's blob host and management.azure.com (where azureml-mlflow
   fetches cloud metadata from when AZUREML_CURRENT_CLOUD is unset) to 127.0.0.1;
2. makes a throwaway CA and a certificate for those names (REQUESTS_CA_BUNDLE for the jobs);
3. starts a real `mlflow server` on 127.0.0.1 (the workspace's MLflow), and on 127.0.0.1:443 the
   stand-in, which speaks what the real azureml-mlflow plugin sends (see its source):
   - https://<region>.api.azureml.ms/mlflow/v{1,2}.0/subscriptions/../workspaces/<W>/api/...:
     MLflow's REST API, proxied to the real server with the workspace prefix taken off; the
     run artifact URIs in its answers get Azure's `/experiments/<id>/runs/<run>/artifacts` shape.
     MLflow 3's logged-models API is answered 404, as Azure ML does;
   - https://<region>.api.azureml.ms/history/v1.0/../experiments/<e>/runs/<run>/artifacts
     (list), /artifacts/contentinfo?path=, /artifacts/batch/metadata: run history's artifact
     API, handing out SAS URLs on the blob host;
   - https://<account>.blob.core.windows.net/azureml/ExperimentRun/dcid.<run>/<path>: blob PUT
     and (ranged) GET;
   - every workspace call needs `Authorization: Bearer <a token the stand-in issued>`; any
     other is refused as Azure ML refuses it: 401, {"error": {"code": "UserError", "message":
     "Bearer token not provided or not valid."}};
   and, on plain http://127.0.0.1:<port>/MSI/auth, the managed identity endpoint of an Azure ML
   compute (MSI_ENDPOINT / MSI_SECRET, API 2017-09-01);
4. creates the job's experiment and run (what Azure ML does before a command job starts), runs
   each job of the spec with a v2 command job's environment, and writes RESULT.json: every job's
   exit code and output, what the workspace holds afterwards (read back with MlflowClient from
   the server, artifacts from the blob store) and every request the stand-in answered.

SPEC: {"jobs": [{"argv": [...], "auth": "token" | "msi" | "refused", "env": {...}}],
       "experiment": "legacy-exp", "mlflow": "/path/to/mlflow"}; argv "{python}" is this
interpreter, "{run_id}" the job's run id. Each job gets a run of its own.
"""
from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import re
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

REGION_HOST = "eastus.api.azureml.ms"
BLOB_HOST = "wsstore4217.blob.core.windows.net"
CLOUD_METADATA_HOST = "management.azure.com"
SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
RESOURCE_GROUP = "legacy-rg"
WORKSPACE = "legacy-ws"
SCOPE = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
         f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}")
TRACKING_URI = f"azureml://{REGION_HOST}/mlflow/v1.0{SCOPE}"
REFUSAL = {"error": {"code": "UserError", "message": "Bearer token not provided or not valid."}}
MSI_SECRET = "msi-secret-" + uuid.uuid4().hex[:8]

_MLFLOW_PREFIX = re.compile(r"^/mlflow/v[12]\.0" + re.escape(SCOPE) + r"(/.*)$", re.IGNORECASE)
_HISTORY = re.compile(r"^/history/v1\.0" + re.escape(SCOPE)
                      + r"/experiment(?:s|ids)/([^/]+)/runs/([^/]+)/artifacts(/.*)?$", re.IGNORECASE)
_ARTIFACT_URI = re.compile(r"(/experiments/[^/\"]+)/([0-9a-f]{32})/artifacts")


def jwt(exp: float, **claims) -> str:
    """An unsigned but well-formed JWT (the plugin reads its `exp`; only the stand-in checks it)."""
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return ".".join((part({"alg": "RS256", "typ": "JWT"}), part(dict(claims, exp=int(exp))),
                     base64.urlsafe_b64encode(b"not-signed").rstrip(b"=").decode()))


# ---------------------------------------------------------------- TLS

def make_certificates(folder: str, names: list) -> tuple[str, str, str]:
    """(CA bundle, server certificate, server key) paths: a throwaway CA that signed one
    certificate for `names`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "azml_v1_bridge test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       key_cert_sign=True, crl_sign=True, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(folder, n) for n in ("ca.pem", "server.pem", "server.key"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


# ---------------------------------------------------------------- the stand-in

class Workspace:
    """State of the stand-in: tokens it issued, blobs, artifact paths per run, requests."""

    def __init__(self, mlflow_url: str):
        self.mlflow_url = mlflow_url
        self.tokens: set = set()
        self.blobs: dict = {}                  # (run id, path) -> bytes
        self.registered: dict = {}             # run id -> [paths], batch metadata order
        self.requests: list = []
        self.lock = threading.Lock()

    def issue(self, lifetime: float = 3600) -> str:
        token = jwt(time.time() + lifetime, aud="https://management.azure.com", jti=uuid.uuid4().hex)
        self.tokens.add(token)
        return token

    def record(self, **entry) -> None:
        with self.lock:
            self.requests.append(entry)

    def sas(self, run_id: str, path: str) -> str:
        quoted = urllib.parse.quote(f"ExperimentRun/dcid.{run_id}/{path}")
        return (f"https://{BLOB_HOST}/azureml/{quoted}?sv=2019-07-07&sr=b&sp=rcw"
                f"&se=2099-01-01T00%3A00%3A00Z&sig=c3RhbmQtaW4%3D")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stand-in"
    ws: Workspace = None  # set on the subclass

    def log_message(self, *args):
        pass

    # -- plumbing
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, body=b"", headers=None, kind="application/json") -> None:
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
        self.send_response(status)
        if kind and body:
            self.send_header("Content-Type", kind)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._status = status

    def _route(self):
        self._status = None
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        body = self._body()
        try:
            if host == REGION_HOST:
                self._workspace(path, url.query, body)
            elif host == BLOB_HOST:
                self._blob(path, url.query, body)
            elif host == "127.0.0.1" and path == "/MSI/auth":
                self._msi(url.query)
            else:
                self._reply(404, {"error": {"code": "NotFound", "message": f"no such host/path {host}{path}"}})
        finally:
            self.ws.record(method=self.command, host=host, path=path, status=self._status,
                           auth=self.headers.get("Authorization", "")[:7])

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _route

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer ") and header[7:] in self.ws.tokens:
            return True
        self._reply(401, REFUSAL, headers={"WWW-Authenticate": "Bearer"})
        return False

    # -- https://<region>.api.azureml.ms
    def _workspace(self, path: str, query: str, body: bytes) -> None:
        mlflow = _MLFLOW_PREFIX.match(path)
        history = _HISTORY.match(path)
        if not (mlflow or history):
            return self._reply(404, {"error": {"code": "NotFound", "message": f"no route {path}"}})
        if not self._authorized():
            return
        if mlflow:
            rest = mlflow.group(1)
            if "/mlflow/logged-models" in rest:  # MLflow 3's logged models: not served by Azure ML
                return self._reply(404, {"error": {"code": "UserError", "message": "Not Found"}})
            if rest.endswith("/model-versions/create") and b'"refused-' in body:  # a refusal to name
                return self._reply(400, {"error": {"code": "UserError", "message": (
                    "Model format not supported for this operation")}})
            return self._proxy(rest, query, body)
        run_id, tail = history.group(2), history.group(3) or ""
        if tail == "/batch/metadata" and self.command == "POST":
            paths = [p["path"] for p in json.loads(body or b"{}").get("paths", [])]
            with self.ws.lock:
                known = self.ws.registered.setdefault(run_id, [])
                known.extend(p for p in paths if p not in known)
            info = {p: self._content_info(run_id, p) for p in paths}
            return self._reply(200, {"artifacts": {p: {k: v for k, v in info[p].items() if k != "contentUri"}
                                                   for p in paths},
                                     "artifactContentInformation": info, "errors": {}})
        if tail == "/contentinfo" and self.command == "GET":
            wanted = urllib.parse.parse_qs(query).get("path", [""])[0]
            if (run_id, wanted) not in self.ws.blobs:
                return self._reply(404, {"error": {"code": "UserError", "message": "Artifact not found"}})
            return self._reply(200, self._content_info(run_id, wanted))
        if tail == "" and self.command == "GET":
            paths = [p for p in self.ws.registered.get(run_id, []) if (run_id, p) in self.ws.blobs]
            return self._reply(200, {"value": [self._content_info(run_id, p) for p in paths],
                                     "nextLink": None})
        return self._reply(404, {"error": {"code": "NotFound", "message": f"no route {path}"}})

    def _content_info(self, run_id: str, path: str) -> dict:
        return {"contentUri": self.ws.sas(run_id, path), "origin": "ExperimentRun",
                "container": f"dcid.{run_id}", "path": path}

    def _proxy(self, rest: str, query: str, body: bytes) -> None:
        target = self.ws.mlflow_url + rest + (f"?{query}" if query else "")
        request = urllib.request.Request(target, data=body if self.command != "GET" else None,
                                         method=self.command,
                                         headers={"Content-Type": self.headers.get("Content-Type",
                                                                                   "application/json")})
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                status, data, kind = reply.status, reply.read(), reply.headers.get("Content-Type")
        except urllib.error.HTTPError as exc:
            status, data, kind = exc.code, exc.read(), exc.headers.get("Content-Type")
        if kind and "json" in kind:
            data = _ARTIFACT_URI.sub(r"\1/runs/\2/artifacts", data.decode()).encode()
        self._reply(status, data, kind=kind or "application/json")

    # -- https://<account>.blob.core.windows.net
    def _blob(self, path: str, query: str, body: bytes) -> None:
        match = re.match(r"^/azureml/ExperimentRun/dcid\.([^/]+)/(.+)$", path)
        if not match or "sig=" not in query:
            return self._reply(403, b"<Error><Code>AuthenticationFailed</Code></Error>", kind="application/xml")
        key = (match.group(1), match.group(2))
        stamp = {"ETag": '"0x8DC0000000000001"', "Last-Modified": "Mon, 07 Dec 2026 10:00:00 GMT",
                 "x-ms-version": self.headers.get("x-ms-version", "2021-08-06"),
                 "x-ms-request-id": str(uuid.uuid4())}
        if self.command == "PUT":
            if self.headers.get("x-ms-blob-type") != "BlockBlob":
                return self._reply(400, b"<Error><Code>InvalidHeaderValue</Code></Error>",
                                   kind="application/xml")
            with self.ws.lock:
                self.ws.blobs[key] = body
            return self._reply(201, b"", headers=dict(stamp, **{"x-ms-request-server-encrypted": "true"}))
        if self.command in ("GET", "HEAD"):
            data = self.ws.blobs.get(key)
            if data is None:
                return self._reply(404, b"<Error><Code>BlobNotFound</Code></Error>", kind="application/xml")
            headers = dict(stamp, **{"x-ms-blob-type": "BlockBlob", "Accept-Ranges": "bytes"})
            wanted = self.headers.get("x-ms-range") or self.headers.get("Range")
            found = re.match(r"bytes=(\d+)-(\d*)", wanted or "")
            if found and data:
                start = int(found.group(1))
                end = min(int(found.group(2) or len(data) - 1), len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._reply(206, data[start:end + 1], headers=headers, kind="application/octet-stream")
            return self._reply(200, data, headers=headers, kind="application/octet-stream")
        return self._reply(405, b"")

    # -- http://127.0.0.1:<port>/MSI/auth
    def _msi(self, query: str) -> None:
        params = urllib.parse.parse_qs(query)
        if self.headers.get("secret") != MSI_SECRET or params.get("api-version") != ["2017-09-01"]:
            return self._reply(400, {"error": "invalid_request", "error_description": "bad secret"})
        token = self.ws.issue()
        self._reply(200, {"access_token": token, "expires_on": str(int(time.time()) + 3600),
                          "resource": params.get("resource", [""])[0], "token_type": "Bearer"})


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(ws: Workspace, port: int, context=None) -> _Server:
    handler = type("BoundHandler", (Handler,), {"ws": ws})
    server = _Server(("127.0.0.1", port), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---------------------------------------------------------------- the namespace's setup

def isolate(folder: str) -> None:
    """This process is in a fresh network and mount namespace: loopback up, private hosts file."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    hosts = os.path.join(folder, "hosts")
    with open(hosts, "w") as f:
        f.write(f"127.0.0.1 localhost {REGION_HOST} {BLOB_HOST} {CLOUD_METADATA_HOST}\n")
    subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True)


def start_mlflow(mlflow: str, folder: str) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from servers import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AZML_V1_BRIDGE_"))}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    log = open(os.path.join(folder, "mlflow-server.log"), "wb")
    root = f"azureml://{REGION_HOST}/mlflow/v2.0{SCOPE}/experiments"
    proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{folder}/ws.db",
                             "--default-artifact-root", root, "--no-serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            cwd=folder)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("mlflow server exited: " + open(log.name).read()[-3000:])
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                if reply.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("mlflow server did not answer: " + open(log.name).read()[-3000:])


def job_env(base: dict, auth: str, run, experiment, ws: Workspace, msi_port: int, ca: str) -> dict:
    """What Azure ML sets for a v2 command job (plus the test CA)."""
    env = {k: v for k, v in base.items()
           if not k.startswith(("MLFLOW_", "AZUREML_", "MSI_", "IDENTITY_", "AZURE_"))}
    env.update({
        "MLFLOW_TRACKING_URI": TRACKING_URI,
        "MLFLOW_RUN_ID": run.info.run_id,
        "MLFLOW_EXPERIMENT_ID": experiment.experiment_id,
        "MLFLOW_EXPERIMENT_NAME": experiment.name,
        "AZUREML_RUN_ID": run.info.run_id,
        "AZUREML_ARM_SUBSCRIPTION": SUBSCRIPTION,
        "AZUREML_ARM_RESOURCEGROUP": RESOURCE_GROUP,
        "AZUREML_ARM_WORKSPACE_NAME": WORKSPACE,
        "AZUREML_ARM_PROJECT_NAME": experiment.name,
        "REQUESTS_CA_BUNDLE": ca,
        "SSL_CERT_FILE": ca,
    })
    if auth == "token":
        env["MLFLOW_TRACKING_TOKEN"] = ws.issue()
    elif auth == "refused":
        env["MLFLOW_TRACKING_TOKEN"] = jwt(time.time() + 3600, aud="someone-else")  # never issued
    elif auth == "msi":
        env["MSI_ENDPOINT"] = f"http://127.0.0.1:{msi_port}/MSI/auth"
        env["MSI_SECRET"] = MSI_SECRET
    else:
        raise ValueError(auth)
    return env


def read_back(url: str, ws: Workspace) -> dict:
    """Everything the workspace holds, read with MlflowClient from the real server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    out = {"experiments": {}, "runs": {}, "model_versions": []}
    for experiment in client.search_experiments():
        out["experiments"][experiment.experiment_id] = experiment.name
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            info = run.info
            out["runs"][info.run_id] = {
                "experiment_id": info.experiment_id, "status": info.status, "end_time": info.end_time,
                "name": info.run_name, "params": run.data.params, "tags": run.data.tags,
                "metrics": {key: sorted([m.step, m.value] for m in client.get_metric_history(info.run_id, key))
                            for key in run.data.metrics},
                "artifacts": sorted(p for (r, p) in ws.blobs if r == info.run_id),
            }
    for version in client.search_model_versions():
        out["model_versions"].append({"name": version.name, "version": version.version,
                                      "source": version.source, "run_id": version.run_id,
                                      "tags": version.tags, "description": version.description})
    return out


def main(spec_path: str, result_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    folder = tempfile.mkdtemp(prefix="azml-azure-ws-")
    isolate(folder)
    ca, cert, key = make_certificates(folder, [REGION_HOST, BLOB_HOST, CLOUD_METADATA_HOST])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server, url = start_mlflow(spec["mlflow"], folder)
    try:
        ws = Workspace(url)
        serve(ws, 443, context)
        msi = serve(ws, 0)
        msi_port = msi.server_address[1]
        from mlflow.tracking import MlflowClient

        admin = MlflowClient(url)
        experiment = admin.get_experiment(admin.create_experiment(spec.get("experiment", "legacy-exp")))
        result = {"jobs": [], "tracking_uri": TRACKING_URI, "scope": SCOPE,
                  "subscription": SUBSCRIPTION, "resource_group": RESOURCE_GROUP, "workspace": WORKSPACE,
                  "experiment_id": experiment.experiment_id, "experiment_name": experiment.name}
        for job in spec["jobs"]:
            run = admin.create_run(experiment.experiment_id, run_name=job.get("name", "job"))
            env = job_env(dict(os.environ), job["auth"], run, experiment, ws, msi_port, ca)
            env.update(job.get("env", {}))
            cwd = job.get("cwd") or tempfile.mkdtemp(prefix="job-", dir=folder)
            argv = [a.replace("{python}", sys.executable).replace("{run_id}", run.info.run_id)
                    for a in job["argv"]]
            start = time.monotonic()
            done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=job.get("timeout", 300))
            result["jobs"].append({"run_id": run.info.run_id, "rc": done.returncode, "stdout": done.stdout,
                                   "stderr": done.stderr, "seconds": time.monotonic() - start,
                                   "cwd": cwd})
        result["workspace_state"] = read_back(url, ws)
        result["requests"] = ws.requests
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
