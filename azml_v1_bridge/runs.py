"""Which MLflow run a v1 run object maps to.

A `RunRecord` is made on the caller's thread the first time a v1 run is seen;
it captures everything MLflow's own resolution would look at *then* (the
thread's active run, `mlflow.set_experiment`, MLFLOW_* variables). The MLflow
run itself is created later by the writer, so no call waits on the store.
"""
from __future__ import annotations

import collections
import os
import sys
import threading
import time
import uuid

from . import config
from .delivery.batching import Documents
from .translate import RunState

ATTR = "_azml_v1_bridge_record"
LOCAL_ID_TAG = "azml_v1_bridge.local_run_id"


class RunStats:
    """What happened to one run, for the end-of-run report."""

    def __init__(self):
        self.calls: collections.Counter = collections.Counter()
        self.metric_points = 0
        self.artifacts = 0
        self.renamed: dict[str, str] = {}
        self.notes: list[dict] = []
        self.delivery_failures = 0
        self.journaled = 0

    def to_json(self) -> dict:
        return {"calls": dict(self.calls), "metric_points": self.metric_points,
                "artifacts": self.artifacts, "renamed": self.renamed, "notes": self.notes,
                "delivery_failures": self.delivery_failures, "journaled": self.journaled}

    def update(self, data: dict) -> None:
        for name, value in data.items():
            setattr(self, name, collections.Counter(value) if name == "calls" else value)


class Ledger:
    """What a run accumulated that no single call holds: its growing documents and its
    report counts. It belongs to the run, so a writer that is replaced (new settings,
    a fork, a lost writer process) never restarts a document or loses a count."""

    __slots__ = ("docs", "stats")

    def __init__(self):
        self.docs = Documents()
        self.stats = RunStats()


class RunRecord:
    __slots__ = (
        "local_id", "v1_id", "parent", "state", "ledger", "experiment_id", "experiment_name",
        "tracking_uri", "mlflow_run_id", "adopted", "run_name", "start_ms", "owner_pid",
        "ended", "muted", "outputs", "tags", "key_suffix", "__weakref__",
    )

    def __init__(self, v1_id: str, parent: RunRecord | None = None):
        self.local_id = uuid.uuid4().hex
        self.v1_id = v1_id
        self.parent = parent
        self.state = RunState()
        self.ledger = Ledger()
        self.experiment_id: str | None = None
        self.experiment_name: str | None = None
        self.tracking_uri: str | None = None
        self.mlflow_run_id: str | None = None  # known up front when adopted
        self.adopted = False                   # MLFLOW_RUN_ID / user's active run: not ours to end
        self.run_name: str | None = None
        self.start_ms = int(time.time() * 1000)
        self.owner_pid = os.getpid()
        self.ended = False
        self.muted = False                     # mirror mode into the very same run: v1 writes it
        self.outputs: str | bool | None = None  # None: ./outputs; False: none (start_logging)
        self.tags: dict[str, str] = {}
        self.key_suffix = ""  # "/fork_<pid>" in a forked child writing into its parent's run

    def describe(self) -> dict:
        """What the journal needs to find or re-create this run elsewhere."""
        return {
            "local_id": self.local_id, "v1_id": self.v1_id,
            "parent": self.parent.local_id if self.parent else None,
            "experiment_id": self.experiment_id, "experiment_name": self.experiment_name,
            "mlflow_run_id": self.mlflow_run_id, "run_name": self.run_name,
            "start_ms": self.start_ms, "tags": self.tags, "adopted": self.adopted,
        }

    def __repr__(self):
        return f"RunRecord(v1={self.v1_id!r}, mlflow={self.mlflow_run_id!r})"


class Registry:
    def __init__(self):
        self._lock = threading.RLock()  # RLock: a SIGTERM handler may end runs mid record_for
        self._by_v1_id: dict[str, RunRecord] = {}
        self.records: list[RunRecord] = []
        self.warned_same_run = False

    def record_for(self, run, mode: str, parent: RunRecord | None = None,
                   experiment: str | None = None, name: str | None = None,
                   started: bool = False) -> tuple[RunRecord, bool]:
        """The record of a v1 run object, and whether it was just made. `started`: a run the
        script started itself (start_logging), never the job's run."""
        rec = run.__dict__.get(ATTR) if hasattr(run, "__dict__") else None
        if rec is not None:
            return rec, False
        v1_id = str(getattr(run, "id", None) or id(run))
        # Run objects of one service run share a record; offline runs are each their own
        # (v1 gives two child_run("fold") calls the same offline id).
        shared = type(run).__name__ != "_OfflineRun"
        with self._lock:  # checked again inside: threads making the first call at once share one
            rec = run.__dict__.get(ATTR) if hasattr(run, "__dict__") else None
            if rec is not None:
                return rec, False
            rec = self._by_v1_id.get(v1_id) if shared else None
            fresh = rec is None
            if fresh:
                rec = self._new_record(run, v1_id, mode, parent, experiment, name, started)
                if shared:
                    self._by_v1_id[v1_id] = rec
                self.records.append(rec)
            try:
                run.__dict__[ATTR] = rec
            except (AttributeError, TypeError):
                pass
        return rec, fresh

    def _new_record(self, run, v1_id, mode, parent, experiment, name, started=False) -> RunRecord:
        rec = RunRecord(v1_id, parent)
        rec.run_name = name
        rec.tags = {"azureml.v1.run_id": v1_id, LOCAL_ID_TAG: rec.local_id, **_source_tags()}
        fluent = sys.modules.get("mlflow.tracking.fluent")
        # The store is fixed when the run is first seen, as mlflow.start_run() would fix it.
        rec.tracking_uri = config.mlflow_setting(config.MLFLOW_TRACKING_URI)
        if fluent is not None:
            try:
                import mlflow

                rec.tracking_uri = mlflow.get_tracking_uri()
            except Exception:
                pass
        if parent is not None:
            rec.experiment_id, rec.experiment_name = parent.experiment_id, parent.experiment_name
            rec.tracking_uri = parent.tracking_uri
            rec.tags["mlflow.parentRunId"] = ""  # filled in by the writer once the parent exists
            return rec
        adopted = config.mlflow_setting(config.MLFLOW_RUN_ID)
        if adopted is None and not started and _is_job_run(run):
            # `azml-v1-bridge run`: the job's own run (Run.get_context()) is the launcher's run,
            # shared by every process of the command; the script's own runs stay its own
            adopted = config.mlflow_setting(config.LAUNCHER_RUN_ID)
        if adopted is None and fluent is not None:
            try:
                active = fluent.active_run()
            except Exception:
                active = None
            if active is not None:
                adopted = active.info.run_id
        if adopted is not None:
            rec.mlflow_run_id, rec.adopted = adopted, True
            if mode == "mirror" and adopted == v1_id:
                rec.muted = True
            else:
                _as_job_run(rec, run)
            return rec
        # mlflow.start_run()'s order: set_experiment in this process, then the variables.
        active_experiment = getattr(fluent, "_active_experiment_id", None) if fluent else None
        if active_experiment:
            rec.experiment_id = str(active_experiment)
        elif config.mlflow_setting(config.MLFLOW_EXPERIMENT_NAME):
            rec.experiment_name = config.mlflow_setting(config.MLFLOW_EXPERIMENT_NAME)
        elif config.mlflow_setting(config.MLFLOW_EXPERIMENT_ID):
            rec.experiment_id = config.mlflow_setting(config.MLFLOW_EXPERIMENT_ID)
        else:
            rec.experiment_name = experiment or _v1_experiment_name(run)
        return rec

    def open_records(self, pid: int) -> list[RunRecord]:
        with self._lock:
            return [r for r in self.records if r.owner_pid == pid and not r.ended]

    def after_fork(self):
        self._lock = threading.RLock()


def _as_job_run(rec: RunRecord, run) -> None:
    """Inside an Azure ML job, v1's id of the job's run is AZUREML_RUN_ID: mlflow mode's stand-in
    (an offline run, `OfflineRun_<uuid>`) writing into that run takes it as its v1 id."""
    from . import azure

    job = azure.job_run_id()
    if job is not None and rec.mlflow_run_id == job and type(run).__name__ == "_OfflineRun":
        rec.v1_id = job
        rec.tags["azureml.v1.run_id"] = job


def _is_job_run(run) -> bool:
    """What Run.get_context() returns: v1's offline run, or a job's submitted run."""
    return type(run).__name__ in ("_OfflineRun", "_SubmittedRun")


def _source_tags() -> dict:
    """Who ran what, as MLflow's own start_run records it; taken here, in the training
    process (the writer may be a process of its own, with another argv)."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (a container running as a bare uid)
        user = ""
    source = sys.argv[0] if sys.argv and sys.argv[0] else ""
    return {"mlflow.source.name": os.path.basename(source), "mlflow.source.type": "LOCAL",
            "mlflow.user": user}


def _v1_experiment_name(run) -> str | None:
    try:
        experiment = run.__dict__.get("_experiment")
        return getattr(experiment, "name", None)
    except Exception:
        return None
