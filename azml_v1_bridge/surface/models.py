"""v1's model registry in mlflow mode, served by MLflow's model registry.

`run.register_model(name, path)` registers a version whose source is that run's artifacts
at `path` (a local file or folder of that path not yet uploaded is uploaded first: v1
scripts register `outputs/model.pkl` before the job's end uploads ./outputs).
`Model.register(ws, path, name)` has no run: the files go to an MLflow logged model (MLflow
3's home for a model without a run) and the version points at it; Azure ML has no logged
models, so there (azureml://) the files go into the job's run and both name `runs:/` sources
(see the end of this file). Both return a real v1
`Model` object (v1's constructor with no workspace does nothing; its fields are filled from
the version): `name`, `version` (int), `id` ("name:version", as v1), `tags`, `properties`,
`description`, `run_id` (the v1 run id), `url` (the source). v1 tags are version tags;
properties and v1 bookkeeping are tags under `azureml.v1.` (hidden from `tags`).
"""
from __future__ import annotations

import datetime
import os
import shutil
import tempfile

from .. import azure, bridge, config
from ..translate import V1_RUN_ID_TAG
from . import reads
from . import workspace as workspace_module

PROPERTY_PREFIX = "azureml.v1.property."
EXPERIMENT_TAG = "azureml.v1.experiment_name"
FRAMEWORK_TAG = "azureml.v1.model_framework"
FRAMEWORK_VERSION_TAG = "azureml.v1.model_framework_version"
# A model of one file: its source is a folder holding only that file (MLflow's models:/ URIs
# download a folder, and a file as source downloads nothing); this tag names the file in it.
FILE_TAG = "azureml.v1.model_file"
FILE_FOLDER = "azml_v1_bridge/models"  # where MLflow 2 (no logged models) keeps that folder
HIDDEN = ("azureml.v1.", "mlflow.")


def _client():
    return reads._client(None)


def _model_error(message: str):
    from azureml.exceptions import WebserviceException

    return WebserviceException(message)


def _path_error(message: str):
    from azureml.exceptions import UserErrorException

    return UserErrorException(message)


def _version_tags(tags, properties, framework, framework_version, extra: dict) -> dict:
    out = {str(k): "" if v is None else str(v) for k, v in dict(tags or {}).items()}
    out.update({PROPERTY_PREFIX + str(k): "" if v is None else str(v)
                for k, v in dict(properties or {}).items()})
    if framework:
        out[FRAMEWORK_TAG] = str(framework)
    if framework_version:
        out[FRAMEWORK_VERSION_TAG] = str(framework_version)
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _create_version(name: str, source: str, run_id, tags: dict, description, model_id=None):
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    return client.create_model_version(name, source, run_id=run_id, tags=tags,
                                       description=description or None, model_id=model_id)


def model_object(version, workspace=None):
    """A real v1 Model for an MLflow model version."""
    from azureml.core.model import Model

    model = Model(None)  # v1's constructor without a workspace only sets its fields to None
    tags = dict(version.tags or {})
    model.name = version.name
    model.version = int(version.version)
    model.id = f"{version.name}:{version.version}"
    model.tags = {k: v for k, v in tags.items() if not k.startswith(HIDDEN)}
    model.properties = {k[len(PROPERTY_PREFIX):]: v for k, v in tags.items()
                        if k.startswith(PROPERTY_PREFIX)}
    model.description = version.description or None
    model.created_time = datetime.datetime.fromtimestamp(
        (version.creation_timestamp or 0) / 1000, tz=datetime.timezone.utc)
    model.url = version.source
    model.run_id = tags.get(V1_RUN_ID_TAG) or version.run_id
    model.experiment_name = tags.get(EXPERIMENT_TAG)
    model.model_framework = tags.get(FRAMEWORK_TAG)
    model.model_framework_version = tags.get(FRAMEWORK_VERSION_TAG)
    model.mime_type = "application/octet-stream"
    model.unpack = False
    model.workspace = workspace
    source = version.source
    if tags.get(FILE_TAG):  # the one file in the version's folder
        source = source.rstrip("/") + "/" + tags[FILE_TAG]
    model.url = source
    model.__dict__["_azml_v1_bridge_source"] = source
    return model


# ---------------------------------------------------------------- run.register_model

def _artifact_kind(t, path: str) -> str | None:
    """"file", "dir" or None: what the run's artifacts hold at `path`."""
    if reads._is_file(t, path):
        return "file"
    try:
        return "dir" if t.client.list_artifacts(t.run_id, path) else None
    except Exception:
        return None


def register_from_run(run, model_name, model_path=None, tags=None, properties=None,
                      model_framework=None, model_framework_version=None, description=None,
                      datasets=None, sample_input_dataset=None, sample_output_dataset=None,
                      resource_configuration=None, **kwargs):
    from azureml._model_management._util import model_name_validation

    model_name_validation(model_name)
    path = str(model_path if model_path is not None else model_name).replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    path = path.rstrip("/")
    t = reads.target(run)
    kind = _artifact_kind(t, path)
    if kind is None:
        local = os.path.abspath(path)
        if os.path.isfile(local):
            t.client.log_artifact(t.run_id, local, os.path.dirname(path) or None)
            kind = "file"
        elif os.path.isdir(local):
            t.client.log_artifacts(t.run_id, local, path)
        else:
            raise _path_error(f"register_model: {path!r} is neither in run {t.v1_id!r}'s files "
                              f"nor a local file or folder (files: {reads._file_names(t)[:20]})")
    experiment = t.client.get_experiment(t.run.info.experiment_id).name
    if azure.is_azureml(t.client.tracking_uri):
        return _azure_version(model_name, f"runs:/{t.run_id}/{path}", t.run_id, _version_tags(
            tags, properties, model_framework, model_framework_version,
            {V1_RUN_ID_TAG: t.v1_id, EXPERIMENT_TAG: experiment}), description, _workspace_of(run))
    source = t.run.info.artifact_uri.rstrip("/") + "/" + path
    model_id = None
    extra = {}
    if kind == "file":
        source, model_id = _file_model(t, model_name, path)
        extra[FILE_TAG] = posix_basename(path)
    version = _create_version(
        model_name, source, t.run_id,
        _version_tags(tags, properties, model_framework, model_framework_version,
                      {V1_RUN_ID_TAG: t.v1_id, EXPERIMENT_TAG: experiment, **extra}),
        description, model_id=model_id)
    return model_object(version, _workspace_of(run))


def _file_model(t, model_name: str, path: str):
    """(source, model id) for a model of one run file: a folder holding a copy of just that
    file, an MLflow logged model of the run (MLflow 3), else a folder among the run's own
    artifacts (MLflow 2), so that models:/name/version downloads the file."""
    import uuid

    with tempfile.TemporaryDirectory(prefix="azml_v1_bridge-model-") as tmp, config.quiet_progress_bars():
        local = t.client.download_artifacts(t.run_id, path, tmp)
        if hasattr(t.client, "create_logged_model"):
            logged = t.client.create_logged_model(t.run.info.experiment_id, name=model_name,
                                                  source_run_id=t.run_id)
            t.client.log_model_artifacts(logged.model_id, os.path.dirname(local))
            t.client.finalize_logged_model(logged.model_id, "READY")
            return logged.artifact_location, logged.model_id
        folder = f"{FILE_FOLDER}/{uuid.uuid4().hex}"
        t.client.log_artifact(t.run_id, local, folder)
        return t.run.info.artifact_uri.rstrip("/") + "/" + folder, None


def _workspace_of(run):
    experiment = run.__dict__.get("_experiment") if hasattr(run, "__dict__") else None
    return getattr(experiment, "workspace", None) if experiment is not None else None


def run_register_model_wrapper(wrapped, instance, args, kwargs):
    if bridge.STATE.mode == "mlflow" and instance is not None:
        return register_from_run(instance, *args, **kwargs)
    return wrapped(*args, **kwargs)


# ---------------------------------------------------------------- Model

def _is_local(workspace) -> bool:
    return bridge.STATE.mode == "mlflow" and workspace_module.is_local(workspace)


def _register(workspace, model_path, model_name, tags=None, properties=None, description=None,
              datasets=None, model_framework=None, model_framework_version=None, child_paths=None,
              sample_input_dataset=None, sample_output_dataset=None, resource_configuration=None):
    from azureml._model_management._util import model_name_validation

    model_name_validation(model_name)
    local = os.path.abspath(os.fspath(model_path))
    if not os.path.exists(local):
        raise _path_error(f"Model.register: {model_path!r} does not exist")
    client = _client()
    if azure.is_azureml(client.tracking_uri):
        return _register_on_azure(client, workspace, local, model_name, child_paths, _version_tags(
            tags, properties, model_framework, model_framework_version, {}), description)
    experiment_id = _experiment_id(client)
    logged = client.create_logged_model(experiment_id, name=model_name)
    with tempfile.TemporaryDirectory(prefix="azml_v1_bridge-model-") as tmp:
        if os.path.isdir(local):
            folder = local
            if child_paths:
                folder = os.path.join(tmp, "files")
                for child in child_paths:
                    target = os.path.join(folder, child)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copy2(os.path.join(local, child), target)
            client.log_model_artifacts(logged.model_id, folder, os.path.basename(local.rstrip(os.sep)))
        else:
            shutil.copy2(local, os.path.join(tmp, os.path.basename(local)))
            client.log_model_artifacts(logged.model_id, tmp)
    client.finalize_logged_model(logged.model_id, "READY")
    name_in = os.path.basename(local.rstrip(os.sep))
    source = logged.artifact_location.rstrip("/") + "/" + name_in
    extra = {}
    if not os.path.isdir(local):  # one file: the folder holding it (what models:/ downloads)
        source, extra = logged.artifact_location, {FILE_TAG: name_in}
    version = _create_version(model_name, source, None,
                              _version_tags(tags, properties, model_framework,
                                            model_framework_version, extra),
                              description, model_id=logged.model_id)
    return model_object(version, workspace)


def _experiment_id(client) -> str:
    """Where a model without a run is kept: the experiment a run would land in."""
    name = config.mlflow_setting(config.MLFLOW_EXPERIMENT_NAME)
    if name:
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else client.create_experiment(name)
    return config.mlflow_setting(config.MLFLOW_EXPERIMENT_ID) or "0"


def _versions(name=None) -> list:
    client = _client()
    filter_string = f"name = '{reads._quote(name)}'" if name is not None else None
    out, token = [], None
    while True:
        page = client.search_model_versions(filter_string, max_results=10000, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    # newest first, as v1 lists
    return sorted(out, key=lambda v: (v.creation_timestamp or 0, int(v.version)), reverse=True)


def _wanted(pairs, values: dict) -> bool:
    """v1's tags/properties filter: a list of 'key' or [key, value]."""
    if not pairs:
        return True
    for item in pairs:
        if isinstance(item, (list, tuple)):
            key, value = item[0], item[1]
            if values.get(key) != value:
                return False
        elif item not in values:
            return False
    return True


def list_models(workspace, name=None, tags=None, properties=None, run_id=None, latest=False,
                dataset_id=None, expand=True, page_count=255, model_framework=None) -> list:
    models = [model_object(v, workspace) for v in _versions(name)]
    models = [m for m in models if _wanted(tags, m.tags) and _wanted(properties, m.properties)
              and (run_id is None or m.run_id == run_id)
              and (model_framework is None or m.model_framework == model_framework)]
    if latest:
        best: dict = {}
        for m in models:
            if m.name not in best or m.version > best[m.name].version:
                best[m.name] = m
        models = [m for m in models if best[m.name] is m]
    return models


def _fill(model, workspace, name=None, id=None, tags=None, properties=None, version=None,
          run_id=None, model_framework=None, expand=True, **kwargs) -> None:
    if id is not None:
        name, _, number = str(id).partition(":")
        version = number or version
    candidates = list_models(workspace, name=name, tags=tags, properties=properties,
                             run_id=run_id, model_framework=model_framework)
    if version is not None:
        candidates = [m for m in candidates if m.version == int(version)]
    if not candidates:
        raise _model_error(f"ModelNotFound: no model in MLflow's registry matches name={name!r} "
                           f"version={version!r} id={id!r} (tracking URI "
                           f"{reads._client(None).tracking_uri})")
    found = max(candidates, key=lambda m: m.version) if name is not None else candidates[0]
    model.__dict__.update(found.__dict__)


def _model_init(wrapped, instance, args, kwargs):
    workspace = args[0] if args else kwargs.get("workspace")
    if not _is_local(workspace):
        return wrapped(*args, **kwargs)
    result = wrapped(None)  # v1's own fields, all None: nothing asked of Azure
    rest = dict(zip(("name", "id", "tags", "properties", "version", "run_id", "model_framework",
                     "expand"), args[1:]))
    rest.update({k: v for k, v in kwargs.items() if k != "workspace"})
    _fill(instance, workspace, **rest)
    return result


def _model_register(wrapped, instance, args, kwargs):
    workspace = args[0] if args else kwargs.get("workspace")
    if not _is_local(workspace):
        return wrapped(*args, **kwargs)
    return _register(*args, **kwargs)


def _model_list(wrapped, instance, args, kwargs):
    workspace = args[0] if args else kwargs.get("workspace")
    if not _is_local(workspace):
        return wrapped(*args, **kwargs)
    return list_models(*args, **kwargs)


def _model_download(wrapped, instance, args, kwargs):
    source = getattr(instance, "__dict__", {}).get("_azml_v1_bridge_source")
    if source is None:
        return wrapped(*args, **kwargs)

    def fields(target_dir=".", exist_ok=False, exists_ok=None):
        return target_dir, exist_ok or bool(exists_ok)

    target_dir, exist_ok = fields(*args, **kwargs)
    destination = os.path.join(target_dir, posix_basename(source))
    if os.path.exists(destination) and not exist_ok:
        raise _model_error(f"File already exists: {destination} (pass exist_ok=True)")
    import mlflow

    os.makedirs(target_dir, exist_ok=True)
    with config.quiet_progress_bars():
        return mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=target_dir,
                                                   tracking_uri=reads._client(None).tracking_uri)


def posix_basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def patch_model_module(module, wrap, add) -> None:
    cls = module.Model
    wrap(cls, "__init__", _model_init)
    wrap(cls, "register", _model_register)
    wrap(cls, "list", _model_list)
    wrap(cls, "download", _model_download)


# ---------------------------------------------------------------- Azure ML's registry (azureml://)
# Azure ML serves MLflow's model registry, not MLflow 3's logged models (its
# /api/2.0/mlflow/logged-models answers 404): a version's files are a run's artifacts, named
# `runs:/<run>/<path>` as Azure's documentation names them.

AZURE_MODELS_PATH = "azml_v1_bridge/models"


def _register_on_azure(client, workspace, local, model_name, child_paths, tags, description):
    """Model.register on Azure ML: the files go into the job's run (MLFLOW_RUN_ID; without one,
    a run of their own in the job's experiment), under azml_v1_bridge/models/<name>/<stamp>/."""
    import uuid

    run_id = config.mlflow_setting(config.MLFLOW_RUN_ID)
    own = None
    if run_id is None:
        own = client.create_run(_experiment_id(client), run_name=f"Model.register {model_name}",
                                tags={"azml_v1_bridge.model_files": model_name})
        run_id = own.info.run_id
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    folder = f"{AZURE_MODELS_PATH}/{model_name}/{stamp}"
    name_in = os.path.basename(local.rstrip(os.sep))
    try:
        if os.path.isdir(local):
            with tempfile.TemporaryDirectory(prefix="azml_v1_bridge-model-") as tmp:
                source_dir = local
                if child_paths:
                    source_dir = os.path.join(tmp, name_in)
                    for child in child_paths:
                        target = os.path.join(source_dir, child)
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        shutil.copy2(os.path.join(local, child), target)
                client.log_artifacts(run_id, source_dir, f"{folder}/{name_in}")
        else:
            client.log_artifact(run_id, local, folder)
    finally:
        if own is not None:
            client.set_terminated(run_id)
    return _azure_version(model_name, f"runs:/{run_id}/{folder}/{name_in}", run_id, tags, description,
                          workspace)


def _azure_version(name, source, run_id, tags, description, workspace):
    """A version in Azure ML's registry, as a v1 Model. Where Azure ML refuses it, one warning
    line naming its reason and a v1 Model of what was asked (version None): the training
    script goes on. Not a bridge failure: strict mode does not raise it either."""
    from mlflow.exceptions import MlflowException

    try:
        return model_object(_create_version(name, source, run_id, tags, description), workspace)
    except MlflowException as exc:
        from .. import causes

        cause = causes.classify(exc, _client().tracking_uri)
        reason = cause.reason if cause.kind != causes.OTHER else causes.azure_said(exc)
        bridge.logger.warning("azml_v1_bridge: Azure ML refused to register model %r from %s (%s); "
                              "the script goes on (the files stay in the run)", name, source, reason)
        return _unregistered(name, source, run_id, tags, description, workspace)


def _unregistered(name, source, run_id, tags, description, workspace):
    from azureml.core.model import Model

    model = Model(None)
    model.name, model.version, model.id = name, None, None
    model.tags = {k: v for k, v in tags.items() if not k.startswith(HIDDEN)}
    model.properties = {k[len(PROPERTY_PREFIX):]: v for k, v in tags.items() if k.startswith(PROPERTY_PREFIX)}
    model.description = description or None
    model.url = source
    model.run_id = tags.get(V1_RUN_ID_TAG) or run_id
    model.workspace = workspace
    return model
