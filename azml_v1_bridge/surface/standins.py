"""What a v1 method returns in mlflow mode, where v1 itself does not run.

Run-returning methods hand back real `_OfflineRun` objects: they are patched
like every v1 run, so the script keeps logging into MLflow through them.
"""
from __future__ import annotations

import time
import uuid

from . import reads, workspace


def _offline_run(run_id: str):
    from azureml.core.run import _OfflineRun
    run = _OfflineRun(run_id=run_id)
    reads.remember(run)  # `parent` / `get_children()` give this very object back
    return run


def _remember(run) -> None:
    reads.remember(run)


def child_run(run, name=None, run_id=None, outputs=None):
    _remember(run)
    # unique even for a repeated name: v1 makes a new run for every child_run("fold")
    suffix = uuid.uuid4().hex[:8]
    return _offline_run(run_id or f"{run.id}.{name}.{suffix}" if name is not None
                        else run_id or f"{run.id}.{uuid.uuid4()}")


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
    _remember(run)
    batch = uuid.uuid4().hex[:8]  # a second create_children on the same run makes new runs
    return [_offline_run(f"{run.id}_{batch}_{i}") for i in range(n)]


def start_logging(experiment, *args, **kwargs):
    run_id = kwargs.get("run_id") or f"{getattr(experiment, 'name', 'run')}_{int(time.time())}_{uuid.uuid4().hex[:8]}"
    run = _offline_run(run_id)
    run.__dict__["_experiment"] = experiment  # as v1's runs keep it (register_model's workspace)
    return run


def enter(run):
    return run


def exit_(run, *args, **kwargs):
    return None  # never swallow the block's exception


# ---------------------------------------------------------------- reads (reads.py)
# v1's signatures; served from the MLflow run (reads.NotMapped: v1 answers instead).

def get_metrics(run, name=None, recursive=False, run_type=None, populate=False):
    return reads.get_metrics(run, name=name, recursive=recursive)


def get_tags(run):
    return reads.get_tags(run)


def get_properties(run):
    return reads.get_properties(run)


def get_file_names(run):
    return reads.get_file_names(run)


def download_file(run, name, output_file_path=None, _validate_checksum=False):
    return reads.download_file(run, name, output_file_path)


def download_files(run, prefix=None, output_directory=None, output_paths=None, batch_size=100,
                   append_prefix=True, timeout_seconds=None):
    return reads.download_files(run, prefix=prefix, output_directory=output_directory,
                                output_paths=output_paths, append_prefix=append_prefix)


def get_children(run, recursive=False, tags=None, properties=None, type=None, status=None,
                 _rehydrate_runs=True):
    return reads.get_children(run, recursive=recursive, tags=tags, properties=properties,
                              status=status)


def get_status(run):
    return reads.get_status(run)


def get_details(run):
    return reads.get_details(run)


# Read-only properties (getters), served the same way.
def parent(run):
    return reads.parent(run)


def display_name(run):
    return reads.display_name(run)


def description(run):
    return reads.description(run)


def experiment(run):
    return workspace.experiment(run)


# v1 method -> stand-in; methods not listed return None in mlflow mode.
STANDINS = {
    "child_run": child_run,
    "create_children": create_children,
    "start_logging": start_logging,
    "__enter__": enter,
    "__exit__": exit_,
    "get_metrics": get_metrics,
    "get_tags": get_tags,
    "get_properties": get_properties,
    "get_file_names": get_file_names,
    "download_file": download_file,
    "download_files": download_files,
    "get_children": get_children,
    "get_status": get_status,
    "get_details": get_details,
}
# property -> getter in mlflow mode (`tags` and `properties` are get_tags / get_properties).
GETTERS = {
    "tags": get_tags,
    "properties": get_properties,
    "parent": parent,
    "display_name": display_name,
    "description": description,
    "experiment": experiment,
}
