"""What a v1 method returns in mlflow mode, where v1 itself does not run.

Run-returning methods hand back real `_OfflineRun` objects: they are patched
like every v1 run, so the script keeps logging into MLflow through them.
"""
from __future__ import annotations

import time
import uuid


def _offline_run(run_id: str):
    from azureml.core.run import _OfflineRun

    return _OfflineRun(run_id=run_id)


def child_run(run, name=None, run_id=None, outputs=None):
    return _offline_run(run_id or f"{run.id}.{name if name is not None else uuid.uuid4()}")


def create_children(run, count=None, tag_key=None, tag_values=None):
    from azureml.exceptions import UserErrorException

    # v1's own argument checks, so a script that is wrong in v1 is wrong here too
    if tag_key is None and tag_values is None and count is None:
        raise UserErrorException("Either count or tag_key and tag_values must be set")
    if tag_key is not None or tag_values is not None:
        if tag_key is None:
            raise UserErrorException("tag_key must not be null when tag_values is set")
        if tag_values is None:
            raise UserErrorException("tag_values must not be null when tag_key is set")
        if count is not None:
            raise UserErrorException("count can not be set when tag_key and tag_values are set")
    n = count if count is not None else len(tag_values)
    if n > 100:
        raise UserErrorException("create_children can not create more than 100 runs")
    return [_offline_run(f"{run.id}_{i}") for i in range(n)]


def start_logging(experiment, *args, **kwargs):
    run_id = kwargs.get("run_id") or f"{getattr(experiment, 'name', 'run')}_{int(time.time())}_{uuid.uuid4().hex[:8]}"
    return _offline_run(run_id)


def enter(run):
    return run


def exit_(run, *args, **kwargs):
    return None  # never swallow the block's exception


def get_metrics(run, name=None, recursive=False, run_type=None, populate=False):
    from . import reads

    return reads.get_metrics(run, name=name, recursive=recursive)


# v1 method -> stand-in; methods not listed return None in mlflow mode.
STANDINS = {
    "child_run": child_run,
    "create_children": create_children,
    "start_logging": start_logging,
    "__enter__": enter,
    "__exit__": exit_,
    "get_metrics": get_metrics,
}
