"""The one module that talks to MLflow: one `Store` per tracking URI.

Each method is one attempt; retry policy, journaling and ordering are the writer's.
Nothing here holds a lock across a call, so `os.fork()` never waits for the network.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile

from .batching import batch_json
from .errors import Unusable

logger = logging.getLogger("azml_v1_bridge")


def creation_tags(record) -> dict:
    """The tags a run is created with: the record's (the v1 run id, who ran what, as MLflow's
    own start_run records it; see runs.py); the parent's id is added by whoever creates it."""
    return {k: v for k, v in record.tags.items() if k != "mlflow.parentRunId"}


def sqlite_path(uri: str | None) -> str | None:
    if uri and uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return path if path and path != ":memory:" else None
    return None


class _FirstUseLock:
    """Serialises the first open of an sqlite store across processes (MLflow's schema
    migrations are not safe when two processes create one database at once)."""

    def __init__(self, db_path: str):
        self.path = os.path.abspath(db_path) + ".azml_v1_bridge.lock"
        self.fd = None

    def __enter__(self):
        try:
            import fcntl

            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError):  # a read-only folder: the store's own error will say so
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock


class Store:
    def __init__(self, uri: str):
        self.uri = uri
        self._client = None
        self._fast = False       # MLflow's RestStore, for the direct log-batch path (or None)
        self._experiments: dict = {}
        self._keys: dict = {}    # metric key -> its JSON string
        self.adopted: set = set()  # run ids the bridge adopted here and checked

    @property
    def client(self):
        if self._client is None:
            from .. import causes

            cause = causes.check_store_modules(self.uri) or causes.check_local_store(self.uri)
            if cause is not None:
                raise Unusable(cause)
            if self.uri.startswith("azureml:"):  # a failed sign-in logs dozens of lines
                causes.quiet_azure_sign_in()
            from mlflow.tracking import MlflowClient

            path = sqlite_path(self.uri)
            if path is None:
                self._client = MlflowClient(tracking_uri=self.uri)
            else:
                with _FirstUseLock(path):  # the client creates the schema, once
                    client = MlflowClient(tracking_uri=self.uri)
                    client.search_experiments(max_results=1)
                self._client = client
        return self._client

    def probe(self) -> None:
        self.client.search_experiments(max_results=1)

    # ----------------------------------------------------------- runs

    def experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            client = self.client
            found = client.get_experiment_by_name(name)
            if found is None:
                try:
                    self._experiments[name] = client.create_experiment(name)
                except Exception:
                    found = client.get_experiment_by_name(name)  # another process was first
                    if found is None:
                        raise
            if found is not None:
                self._experiments[name] = found.experiment_id
        return self._experiments[name]

    def create_run(self, experiment_id: str, start_ms: int, tags: dict, name: str | None) -> str:
        run = self.client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name)
        return run.info.run_id

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def find_run(self, tag: str, value: str) -> str | None:
        """The run created with tag=value (a forked child looking for its parent's run)."""
        from mlflow.entities import ViewType

        client = self.client
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        if not experiments:
            return None
        found = client.search_runs(experiments, filter_string=f"tags.`{tag}` = '{value}'",
                                   run_view_type=ViewType.ALL, max_results=1)
        return found[0].info.run_id if found else None

    def set_tags(self, run_id: str, tags: dict) -> None:
        self.log_batch(run_id, [], [], list(tags.items()))

    def set_terminated(self, run_id: str, status: str, end_ms: int) -> None:
        self.client.set_terminated(run_id, status=status, end_time=end_ms)

    # ----------------------------------------------------------- data

    def log_batch(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        store = self._fast_store() if self._fast is False else self._fast
        if store is not None:
            try:
                from mlflow.protos.service_pb2 import LogBatch

                store._call_endpoint(LogBatch, batch_json(run_id, metrics, params, tags, self._keys))
                return
            except (AttributeError, TypeError, ImportError, KeyError) as exc:
                # MLflow changed its internals: use the public path from now on
                logger.debug("azml_v1_bridge: direct log-batch unavailable: %s", exc)
                self._fast = None
        from mlflow.entities import Metric, Param, RunTag

        target = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        args = dict(metrics=[Metric(k, v, int(ts), int(s)) for k, v, ts, s in metrics],
                    params=[Param(k, v) for k, v in params], tags=[RunTag(k, v) for k, v in tags])
        if target is not None and hasattr(target, "log_batch"):
            target.log_batch(run_id, **args)
        else:
            self.client.log_batch(run_id, synchronous=True, **args)

    def _fast_store(self):
        """MLflow's RestStore, when it is exactly that class: its log-batch body is then built
        here and sent through the store's own `_call_endpoint` (MLflow's HTTP session, auth
        and retry settings)."""
        store = None
        try:
            from mlflow.store.tracking.rest_store import RestStore

            candidate = self.client._tracking_client.store
            if type(candidate) is RestStore and callable(getattr(candidate, "_call_endpoint", None)):
                store = candidate
        except Exception:
            store = None
        self._fast = store
        return store

    def log_files(self, run_id: str, files: list) -> None:
        """[(artifact path, bytes | a staged file's path)] in one upload."""
        with tempfile.TemporaryDirectory(prefix="azml_v1_bridge-upload-") as tmp:
            for path, data in files:
                target = os.path.join(tmp, *path.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.lexists(target):  # same path twice in one cycle: the later one wins
                    os.remove(target)
                if isinstance(data, (bytes, bytearray)):
                    with open(target, "wb") as fh:
                        fh.write(data)
                else:
                    os.symlink(os.path.abspath(data), target)
            self.client.log_artifacts(run_id, tmp)

    def log_image(self, run_id: str, key: str, data: bytes, step: int, timestamp: int) -> None:
        """One step of MLflow's image series; the plain PNG where that cannot be had."""
        try:
            from PIL import Image as PILImage

            image = PILImage.open(io.BytesIO(data))
            image.load()
        except Exception as exc:  # no PIL: keep the PNG
            logger.debug("azml_v1_bridge: image series unavailable (%s)", exc)
            image = None
        if image is not None:
            try:
                self.client.log_image(run_id, image, key=key, step=step, timestamp=timestamp,
                                      synchronous=True)
                return
            except TypeError as exc:  # an MLflow without image series
                logger.debug("azml_v1_bridge: image series unavailable (%s)", exc)
        self.log_files(run_id, [(f"images/{key}_step{step}.png", data)])
