"""The one module that talks to MLflow: one `Store` per tracking URI.

Each method is one attempt; retry policy, journaling and ordering are the writer's.
Nothing here holds a lock across a call, so `os.fork()` never waits for the network.
"""
from __future__ import annotations

import io
import logging
import os
import tempfile
import time

from ..ops import INT64_MAX, INT64_MIN
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


_LOCK_FILES: set = set()  # first-use lock files this process opened beside sqlite stores


def remove_lock_files() -> None:
    """At a clean exit, nothing is left beside the store: the lock only guards the first
    schema creation, which is over once this process used the store."""
    for path in list(_LOCK_FILES):
        _LOCK_FILES.discard(path)
        try:
            os.unlink(path)
        except OSError:  # another process removed it first, or the folder is read-only
            pass


# Descriptors of first-use locks held now. A fork copies them, and a flock belongs to the open
# file, not the process: the child's copy would keep the lock held for as long as the child
# lives, and the child's own writer would then wait for it for ever (a Pool forked while the
# parent's writer thread opens the store). The child closes its copies at once.
_HELD: set = set()


def _forget_held_locks() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_held_locks)


class _FirstUseLock:
    """Serialises the first open of an sqlite store across processes (MLflow's schema
    migrations are not safe when two processes create one database at once). Waited for at
    most WAIT seconds: past that the store is opened without it."""

    WAIT = 120.0

    def __init__(self, db_path: str):
        self.path = os.path.abspath(db_path) + ".azml_v1_bridge.lock"
        self.fd = None

    def __enter__(self):
        try:
            import fcntl

            # never through a symlink (a dangling one would create its target), private
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                              | getattr(os, "O_CLOEXEC", 0), 0o600)
            _HELD.add(self.fd)  # before the flock: a fork in between must not keep it either
            deadline = time.monotonic() + self.WAIT
            delay = 0.01
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 0.2)
            _LOCK_FILES.add(self.path)
        except (ImportError, OSError):  # a read-only folder, a symlink: no lock (the store's own
            self._release()             # error says what is wrong with the folder)
        return self

    def __exit__(self, *exc):
        self._release()  # closing releases the flock

    def _release(self) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


class Store:
    def __init__(self, uri: str):
        self.uri = uri
        self._client = None
        self._fast = False       # MLflow's RestStore, for the direct log-batch path (or None)
        self._sqlite = False     # SqliteMetrics for metric-only batches on sqlite (or None)
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
        from .. import config

        config.quiet_run_links(self.uri)  # MLflow's run link would show the password
        self.client.set_terminated(run_id, status=status, end_time=end_ms)

    # ----------------------------------------------------------- data

    def log_batch(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        if metrics and not params and not tags:
            lean = self._sqlite_metrics() if self._sqlite is False else self._sqlite
            if lean is not None and lean.usable and lean.write(run_id, metrics):
                return
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

    def _sqlite_metrics(self):
        """SqliteMetrics for an sqlite store, decided once: a server store never loads MLflow's
        database modules for it."""
        self._sqlite = SqliteMetrics.of(self.client) if sqlite_path(self.uri) else None
        return self._sqlite

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


class SqliteMetrics:
    """Metric-only batches into an sqlite store's own `metrics` and `latest_metrics` tables:
    one INSERT OR IGNORE executemany and one upsert, on MLflow's engine, in one transaction.

    SqlAlchemyStore.log_batch builds an ORM object per point and runs SQLAlchemy's unit of
    work: ~120 us of CPU a point, against ~7 here. In the writer process that CPU competes
    with the training loop for the machine's cores. The rows are the ones MLflow writes
    (duplicates ignored, latest_metrics keeps the greatest (step, timestamp, value)).
    `write` only takes batches it can vouch for: finite floats, int steps and timestamps,
    names MLflow's own check accepts, a run that exists and is active. Anything else
    returns False and goes through MLflow's path, which gives MLflow's errors."""

    COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")

    def __init__(self, engine, tables, check_name):
        self.engine = engine
        self.check_name = check_name
        self.names: set = set()  # metric names already checked
        self.points = 0          # written here, for tests and benchmarks
        self.usable = True
        self.busy_ms = 20_000    # how long a locked database is waited for: MLflow's own wait
        metrics_table, latest_table, runs_table = (t.name for t in tables)
        columns = ", ".join(self.COLUMNS)
        self.insert = (f"INSERT OR IGNORE INTO {metrics_table} ({columns}) "
                       "VALUES (?, ?, ?, ?, 0, ?)")
        self.upsert = (f"INSERT INTO {latest_table} AS old ({columns}) VALUES (?, ?, ?, ?, 0, ?) "
                       "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, "
                       "timestamp = excluded.timestamp, step = excluded.step, is_nan = 0 "
                       "WHERE (excluded.step, excluded.timestamp, excluded.value) "
                       "> (old.step, old.timestamp, old.value)")
        self.stage = f"SELECT lifecycle_stage FROM {runs_table} WHERE run_uuid = ?"

    @classmethod
    def of(cls, client):
        """The lean path for this client's store, or None when it is not an sqlite
        SqlAlchemyStore whose tables have exactly the columns written here."""
        try:
            import sqlite3

            from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
            from mlflow.utils.validation import _validate_metric_name

            store = client._tracking_client.store
            if (not isinstance(store, SqlAlchemyStore) or store.engine.dialect.name != "sqlite"
                    or sqlite3.sqlite_version_info < (3, 24)):  # upsert
                return None
            tables = (SqlMetric.__table__, SqlLatestMetric.__table__, SqlRun.__table__)
            for table in tables[:2]:
                if sorted(c.name for c in table.columns) != sorted(cls.COLUMNS):
                    return None
            if not {"run_uuid", "lifecycle_stage"} <= {c.name for c in tables[2].columns}:
                return None
            return cls(store.engine, tables, _validate_metric_name)
        except Exception as exc:  # an MLflow without these internals: its own path
            logger.debug("azml_v1_bridge: lean sqlite path unavailable: %s", exc)
            return None

    def write(self, run_id: str, metrics: list) -> bool:
        """True: written. False: not this path's to write (MLflow's path then writes it, or
        names the error). A database still locked after busy_ms raises: the writer's own
        retry handles it, instead of MLflow's path waiting as long again."""
        if len(metrics) > MAX_BATCH:  # what MLflow's log_batch refuses: its path says so
            return False
        rows, latest = [], {}
        for key, value, timestamp, step in metrics:
            if (type(value) is not float or not -_INF < value < _INF  # NaN, inf: MLflow's path
                    or type(timestamp) is not int or not 0 <= timestamp <= INT64_MAX
                    or type(step) is not int or not INT64_MIN <= step <= INT64_MAX):
                return False
            if key not in self.names:
                if type(key) is not str or len(key) > MAX_KEY:
                    return False
                try:
                    self.check_name(key)
                except Exception:
                    return False
                self.names.add(key)
            row = (key, value, timestamp, step, run_id)
            rows.append(row)
            old = latest.get(key)
            if old is None or (step, timestamp, value) > (old[3], old[2], old[1]):
                latest[key] = row
        try:
            with self.engine.begin() as conn:
                # what MLflow's own sessions set on the connection (outside the transaction)
                conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(self.busy_ms)}")
                conn.exec_driver_sql("PRAGMA foreign_keys = ON")
                conn.exec_driver_sql(self.insert, rows)  # writes first: the lock is taken at once
                conn.exec_driver_sql(self.upsert, list(latest.values()))
                stage = conn.exec_driver_sql(self.stage, (run_id,)).scalar()
                if stage != "active":
                    raise _Inactive()
        except _Inactive:  # rolled back; MLflow's path raises its own error for this run
            return False
        except Exception as exc:
            # A locked or unwritable database, a run that is not there (foreign key): MLflow's
            # path reports it as always. Anything else means these statements do not fit
            # this store: not again.
            from sqlalchemy.exc import IntegrityError, OperationalError

            if isinstance(exc, OperationalError) and "locked" in str(exc).lower():
                raise  # waited busy_ms already: MLflow's path would wait as long again
            if not isinstance(exc, (IntegrityError, OperationalError)):
                self.usable = False
            logger.debug("azml_v1_bridge: lean sqlite path: %s", exc)
            return False
        self.points += len(rows)
        return True


class _Inactive(Exception):
    pass


MAX_BATCH = 1000  # MLflow's log_batch: metrics a request
MAX_KEY = 250     # MLflow's key length


_INF = float("inf")
