"""What a v1 method returns in mlflow mode, where v1 itself does not run.

Run-returning methods hand back real `_OfflineRun` objects: they are patched
like every v1 run, so the script keeps logging into MLflow through them.
"""
from __future__ import annotations

import os
import time
import uuid

from . import display, reads, workspace

OUTPUTS_DIR = "./outputs"  # v1's azureml.core.run OUTPUTS_DIR


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
    def fields(name=None, run_id=None, outputs=None, snapshot_directory=".", **rest):
        return run_id, outputs

    run_id, outputs = fields(*args, **kwargs)
    run_id = run_id or f"{getattr(experiment, 'name', 'run')}_{int(time.time())}_{uuid.uuid4().hex[:8]}"
    # v1 makes the outputs folder it tracks (./outputs unless told): scripts write into it at once
    folder = OUTPUTS_DIR if outputs is True or not outputs and outputs is not False else outputs
    if folder:
        os.makedirs(folder, exist_ok=True)
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


def wait_for_completion(run, show_output=False, wait_post_processing=False, raise_on_error=True):
    return reads.wait_for_completion(run, show_output=show_output, raise_on_error=raise_on_error)


def get_details_with_logs(run):
    return reads.get_details_with_logs(run)


def get_all_logs(run, destination=None):
    return reads.get_all_logs(run, destination)


def get_portal_url(run):
    return reads.get_portal_url(run)


def get_detailed_status(run):
    return reads.get_detailed_status(run)


def status(run):
    return reads.get_status(run)


def repr_html(run):
    """What a notebook shows for the run: where it is in MLflow."""
    t = reads.target(run)
    experiment_name = t.client.get_experiment(t.run.info.experiment_id).name
    rows = {"Experiment": experiment_name, "Id": t.v1_id, "Status": reads._status(t),
            "MLflow run id": t.run_id}
    rows.update(display.where(reads.portal_uri(t), t.run.info.experiment_id, t.run_id))
    return display.table(rows)


def _needs_azure(call: str, hint: str):
    def standin(run, *args, **kwargs):
        if type(run).__name__ != "_OfflineRun":
            raise reads.NotMapped(run)  # a run with Azure behind it (a job's): v1 answers
        raise workspace.no_azure(call, hint)

    return standin


SNAPSHOT_HINT = ("MLflow keeps no code snapshot of a run: its files are the run's artifacts "
                 "(run.download_files(), mlflow.artifacts.download_artifacts)")
# Run methods that need Azure ML itself: NoAzureError, naming the call.
NEEDS_AZURE = {
    "restore_snapshot": _needs_azure("run.restore_snapshot()", SNAPSHOT_HINT),
    "take_snapshot": _needs_azure("run.take_snapshot()", "log the files with run.upload_folder() "
                                  "instead"),
    "get_snapshot_id": _needs_azure("run.get_snapshot_id()", SNAPSHOT_HINT),
    "get_environment": _needs_azure("run.get_environment()", "an MLflow run records no Azure ML "
                                    "environment"),
    "clean": _needs_azure("run.clean()", "an interactive run leaves nothing on a compute target"),
    "get_secret": _needs_azure("run.get_secret()", "read the secret from the environment or "
                               "your own vault"),
    "get_secrets": _needs_azure("run.get_secrets()", "read the secrets from the environment or "
                                "your own vault"),
}

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
    "wait_for_completion": wait_for_completion,
    "get_details_with_logs": get_details_with_logs,
    "get_all_logs": get_all_logs,
    "get_portal_url": get_portal_url,
    "get_detailed_status": get_detailed_status,
    "_repr_html_": repr_html,
    **NEEDS_AZURE,
}
# property -> getter in mlflow mode (`tags` and `properties` are get_tags / get_properties).
GETTERS = {
    "tags": get_tags,
    "properties": get_properties,
    "parent": parent,
    "display_name": display_name,
    "description": description,
    "experiment": experiment,
    "status": status,
}
