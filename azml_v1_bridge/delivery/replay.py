"""Deliver what the writer journaled while the store was down (`azml-v1-bridge replay JOURNAL`,
and the writer itself once the store answers again).

Where to: `--tracking-uri`, else MLFLOW_TRACKING_URI, else the URI each run was headed
to when it was journaled (recorded without credentials; a relative sqlite or file
path is resolved against the directory the training process ran in).

Replaying is idempotent, so a replay that was interrupted, or run twice, adds
nothing twice:
- a run is found again by its recorded MLflow run id, else by the tag
  `azml_v1_bridge.local_run_id` it was created with; only when neither finds it
  is it created (nested under its parent, in its recorded experiment, with its
  original start time, name and tags);
- metric points already in the run (same key, step, timestamp and value) are skipped;
- params already there with the same value are skipped (a different value is
  reported: params are write-once);
- tags and artifacts are set again (same values, same paths: nothing changes);
- image steps already present are skipped; terminal statuses are set again.
"""
from __future__ import annotations

import base64
import logging
import os
import re
import stat
import tempfile

from .. import config
from ..runs import LOCAL_ID_TAG
from .batching import MAX_METRICS, MAX_PARAMS, MAX_TAGS
from .errors import describe_error, is_item_error
from .journal import JournalRun, artifact_path_ok, file_name_ok, point_value, read_journal

logger = logging.getLogger("azml_v1_bridge")

REQUESTED_RUN_TAG = "azml_v1_bridge.requested_run_id"


def resolve_uri(recorded: str | None, cwd: str | None) -> str | None:
    """The recorded URI, with a relative sqlite/file path made absolute against `cwd`."""
    if not recorded or not cwd:
        return recorded
    if recorded.startswith("sqlite:///") and not recorded.startswith("sqlite:////"):
        return "sqlite:///" + os.path.join(cwd, recorded[len("sqlite:///"):])
    if "://" not in recorded and not recorded.startswith("databricks") and not os.path.isabs(recorded):
        return os.path.join(cwd, recorded)
    if recorded.startswith("file:") and not recorded.startswith("file:/"):
        return "file:" + os.path.join(cwd, recorded[len("file:"):])
    return recorded


def _local_store(uri: str | None) -> str | None:
    """The path of a local store (sqlite database, file store), None for any other."""
    if not isinstance(uri, str) or not uri:
        return None
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///"):].split("?", 1)[0] or None
    if uri.startswith("file:"):
        return uri[len("file:"):].lstrip("/") and "/" + uri[len("file:"):].lstrip("/")
    if "://" not in uri and not uri.startswith("databricks"):
        return uri
    return None


class Replayer:
    def __init__(self, files_dir: str, tracking_uri: str | None = None):
        self.files_dir = files_dir
        self.override = tracking_uri
        self.clients: dict = {}
        self.counts = {"runs_created": 0, "runs_found": 0, "metrics_sent": 0,
                       "metrics_skipped": 0, "params_sent": 0, "params_skipped": 0,
                       "tags_sent": 0, "artifacts_sent": 0, "images_sent": 0,
                       "images_skipped": 0, "ends": 0, "runs": {}, "errors": []}
        self._run_ids: dict = {}   # local id -> (uri, mlflow run id, found)
        self._experiments: dict = {}

    def client(self, uri: str | None):
        from mlflow.tracking import MlflowClient

        key = uri or ""
        if key not in self.clients:
            self.clients[key] = MlflowClient(tracking_uri=uri) if uri else MlflowClient()
        return self.clients[key]

    def uri_of(self, run: JournalRun) -> str | None:
        if self.override:
            return self.override
        env = config.mlflow_setting(config.MLFLOW_TRACKING_URI)
        if env:
            return env
        uri = resolve_uri(run.desc.get("tracking_uri"), run.cwd)
        local = _local_store(uri)
        if local is not None and not os.path.exists(local):
            # the journal is untrusted: its word never makes a store (a folder, a database)
            raise ValueError(f"the journal names a local store that does not exist ({local}); "
                             "give the store with --tracking-uri")
        if local is None and uri:
            # ...nor gets a remote host the user's credentials: MLflow sends those to any store
            # it talks to, and Azure's (a sign-in, a managed identity) are always at hand
            sent = [name for name in config.STORE_CREDENTIALS if os.environ.get(name)]
            if sent or uri.startswith("azureml:"):
                what = ", ".join(sent) if sent else "your Azure sign-in"
                raise ValueError(f"the journal names a remote store ({config.redact(uri)}) and "
                                 f"credentials are set ({what}): replay sends them only to a "
                                 f"store you name; give it with --tracking-uri or "
                                 f"MLFLOW_TRACKING_URI")
        return uri

    # ------------------------------------------------------------ runs

    def resolve(self, runs: dict, lid: str) -> tuple:
        """(uri, run id, found): the run of `lid` in its target store, created if needed."""
        known = self._run_ids.get(lid)
        if known is not None:
            return known
        run = runs[lid]
        uri = self.uri_of(run)
        client = self.client(uri)
        desc = run.desc
        run_id, found = self._find(client, run), True
        if run_id is None:
            found = False
            parent_id = None
            if desc.get("parent") and desc["parent"] in runs:
                parent_id = self.resolve(runs, desc["parent"])[1]
            tags = dict(desc.get("tags") or {})
            tags[LOCAL_ID_TAG] = lid
            if desc.get("adopted") and desc.get("mlflow_run_id"):
                tags[REQUESTED_RUN_TAG] = desc["mlflow_run_id"]
            if parent_id:
                tags["mlflow.parentRunId"] = parent_id
            created = client.create_run(self._experiment(client, uri, desc),
                                        start_time=desc.get("start_ms"), tags=tags,
                                        run_name=desc.get("run_name"))
            run_id = created.info.run_id
            self.counts["runs_created"] += 1
        else:
            self.counts["runs_found"] += 1
        self._run_ids[lid] = (uri, run_id, found)
        self.counts["runs"][lid] = run_id
        return uri, run_id, found

    def _find(self, client, run: JournalRun) -> str | None:
        wanted = run.desc.get("mlflow_run_id")
        if wanted:
            try:
                return client.get_run(wanted).info.run_id
            except Exception as exc:
                if getattr(exc, "error_code", None) not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND",
                                                            "INVALID_PARAMETER_VALUE"):
                    raise
        from mlflow.entities import ViewType

        query = f"tags.`{LOCAL_ID_TAG}` = '{run.local_id}'"
        for ids in self._experiment_ids(client, run):
            found = client.search_runs(ids, filter_string=query, run_view_type=ViewType.ALL,
                                       max_results=1)
            if found:
                return found[0].info.run_id
        return None

    def _experiment_ids(self, client, run: JournalRun):
        """Where to look for a run: its recorded experiment first, then every experiment."""
        from mlflow.entities import ViewType

        first = []
        if run.desc.get("experiment_id"):
            first.append(str(run.desc["experiment_id"]))
        name = run.desc.get("experiment_name")
        if name:
            experiment = client.get_experiment_by_name(name)
            if experiment is not None and experiment.experiment_id not in first:
                first.append(experiment.experiment_id)
        existing = []
        for experiment_id in first:
            try:
                client.get_experiment(experiment_id)
                existing.append(experiment_id)
            except Exception:
                pass
        if existing:
            yield existing
        rest = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)
                if e.experiment_id not in existing]
        for i in range(0, len(rest), 50):
            yield rest[i:i + 50]

    def _experiment(self, client, uri, desc) -> str:
        name, wanted = desc.get("experiment_name"), desc.get("experiment_id")
        key = (uri, name, wanted)
        if key in self._experiments:
            return self._experiments[key]
        experiment_id = None
        if name:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    experiment_id = client.create_experiment(name)
                except Exception:
                    experiment = client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
                    experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
        elif wanted:
            try:
                experiment_id = client.get_experiment(str(wanted)).experiment_id
            except Exception:
                logger.warning("azml_v1_bridge replay: experiment %s does not exist in %s; "
                               "using the default experiment", wanted, config.redact(uri or ""))
        self._experiments[key] = experiment_id or "0"
        return self._experiments[key]

    # ------------------------------------------------------------ data

    def deliver(self, runs: dict, lid: str) -> None:
        run = runs[lid]
        uri, run_id, found = self.resolve(runs, lid)
        client = self.client(uri)
        metrics, params, tags = run.metrics, run.params, dict(run.tags)
        if found:
            metrics = self._new_points(client, run_id, metrics)
            existing = client.get_run(run_id).data
            kept = []
            for key, value in params:
                if key in existing.params:
                    self.counts["params_skipped"] += 1
                    if existing.params[key] != value:
                        self._error(f"run {run_id}: param {key!r} is {existing.params[key]!r} "
                                    f"there; the journal's {value!r} was not sent")
                else:
                    kept.append((key, value))
            params = kept
            tags = {k: v for k, v in tags.items() if existing.tags.get(k) != v}
        self._send_batches(client, run_id, metrics, params, tags)
        if run.artifacts:
            self._send_artifacts(client, run_id, list(run.artifacts.values()))
        if run.images:
            self._send_images(client, run_id, run.images, found)
        if run.end is not None and not run.desc.get("adopted"):
            config.quiet_run_links(uri)  # MLflow's run link would show the password
            client.set_terminated(run_id, status=run.end["status"], end_time=run.end["timestamp"])
            self.counts["ends"] += 1

    def _new_points(self, client, run_id, points: list) -> list:
        by_key: dict = {}
        for point in points:
            by_key.setdefault(point[0], []).append(point)
        fresh = []
        for key, wanted in by_key.items():
            there = {(m.step, m.timestamp, point_value(m.value))
                     for m in client.get_metric_history(run_id, key)}
            for point in wanted:
                if (point[3], point[2], point_value(point[1])) in there:
                    self.counts["metrics_skipped"] += 1
                else:
                    fresh.append(point)
        return fresh

    def _send_batches(self, client, run_id, metrics, params, tags) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics = [Metric(k, v, t, s) for k, v, t, s in metrics]
        params = [Param(k, v) for k, v in params]
        tags = [RunTag(k, v) for k, v in tags.items()]
        while metrics or params or tags:
            p, t = params[:MAX_PARAMS], tags[:MAX_TAGS]
            m = metrics[:min(MAX_METRICS, 1000 - len(p) - len(t))]
            self._log_batch(client, run_id, m, p, t)
            del metrics[:len(m)], params[:len(p)], tags[:len(t)]

    def _log_batch(self, client, run_id, m, p, t) -> None:
        try:
            client.log_batch(run_id, metrics=m, params=p, tags=t, synchronous=True)
        except Exception as exc:
            if not is_item_error(exc):  # a store refusing the whole request: not an item's fault
                raise
            items = [("m", x) for x in m] + [("p", x) for x in p] + [("t", x) for x in t]
            if len(items) == 1:
                self._error(f"run {run_id}: {items[0][1].key!r} refused: {describe_error(exc)}")
                return
            half = len(items) // 2
            for part in (items[:half], items[half:]):
                self._log_batch(client, run_id, [x for k, x in part if k == "m"],
                                [x for k, x in part if k == "p"], [x for k, x in part if k == "t"])
            return
        self.counts["metrics_sent"] += len(m)
        self.counts["params_sent"] += len(p)
        self.counts["tags_sent"] += len(t)

    def _bytes(self, line: dict) -> bytes:
        """The payload of a line: inline, or a regular file directly in the journal's own
        `.files` folder (read_journal checked the name; no symlink is followed here)."""
        if "b64" in line:
            return base64.b64decode(line["b64"], validate=True)
        name = line["file"]
        if not file_name_ok(name):
            raise ValueError(f"file {name!r} is not a name in the journal's .files folder")
        folder = os.lstat(self.files_dir)
        if not stat.S_ISDIR(folder.st_mode):
            raise ValueError(f"{self.files_dir} is not a folder")
        fd = os.open(os.path.join(self.files_dir, name),
                     os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{name} in {self.files_dir} is not a regular file")
            return fh.read()

    def _send_artifacts(self, client, run_id, lines: list) -> None:
        sent = 0
        with tempfile.TemporaryDirectory(prefix="azml_v1_bridge-replay-") as tmp:
            for line in lines:
                path = line["path"]
                try:
                    if not artifact_path_ok(path):
                        raise ValueError("not a relative artifact name")
                    target = os.path.join(tmp, *path.split("/"))
                    if os.path.commonpath([tmp, os.path.abspath(target)]) != tmp:
                        raise ValueError("outside the run")
                    data = self._bytes(line)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                 | getattr(os, "O_NOFOLLOW", 0), 0o600)
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                    sent += 1
                except (OSError, ValueError) as exc:
                    self._error(f"run {run_id}: artifact {path!r} not sent: "
                                f"{type(exc).__name__}: {exc}")
            if sent:
                client.log_artifacts(run_id, tmp)
        self.counts["artifacts_sent"] += sent

    def _send_images(self, client, run_id, lines: list, found: bool) -> None:
        present: list = []
        if found:
            try:
                present = [os.path.basename(f.path) for f in client.list_artifacts(run_id, "images")]
            except Exception:
                present = []
        for line in lines:
            key, step, timestamp = line["key"], line["step"] or 0, line["timestamp"]
            stem = re.sub(r"/", "~", key)
            prefixes = tuple(f"{stem}{sep}step{sep}{step}{sep}timestamp{sep}{timestamp}{sep}"
                             for sep in "+%") + (f"{key.replace('/', '_')}_step{step}.png",)
            if any(name.startswith(prefixes) for name in present):
                self.counts["images_skipped"] += 1
                continue
            data = self._bytes(line)
            try:
                import io

                from PIL import Image

                image = Image.open(io.BytesIO(data))
                image.load()
                client.log_image(run_id, image, key=key, step=step, timestamp=timestamp)
            except ImportError:
                with tempfile.TemporaryDirectory() as tmp:
                    target = os.path.join(tmp, f"{key.replace('/', '_')}_step{step}.png")
                    with open(target, "wb") as fh:
                        fh.write(data)
                    client.log_artifact(run_id, target, "images")
            self.counts["images_sent"] += 1

    def _error(self, message: str) -> None:
        self.counts["errors"].append(config.redact(message))
        logger.warning("azml_v1_bridge replay: %s", config.redact(message))


def replay_journal(path: str, tracking_uri: str | None = None, only=None) -> dict:
    """Deliver the journal at `path`; returns counts (runs created/found, metrics sent and
    skipped as already present, params, tags, artifacts, images, ends), `runs` (journal
    local id -> MLflow run id, parents included), `failed` (local ids not fully delivered)
    and `errors` (what could not be delivered). `only`: deliver just these local ids (the
    writer recovering its own runs once the store is back)."""
    runs, order, bad = read_journal(path)
    replayer = Replayer(path + ".files", tracking_uri)
    failed = []
    for lid in order:
        if only is not None and lid not in only:
            continue
        errors = len(replayer.counts["errors"])
        try:
            replayer.deliver(runs, lid)
        except Exception as exc:
            from ..causes import classify  # the cause, named as doctor and the writer name it

            try:
                uri = replayer.uri_of(runs[lid])
            except ValueError:
                uri = None
            message = str(exc) if isinstance(exc, ValueError) else classify(exc, uri).message
            replayer._error(f"run {lid}: {message}")
        if len(replayer.counts["errors"]) > errors:
            failed.append(lid)
    replayer.counts["bad_lines"] = len(bad)
    replayer.counts["bad"] = bad
    replayer.counts["failed"] = failed
    return replayer.counts
