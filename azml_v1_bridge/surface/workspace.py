"""v1's workspace, experiments and run refetch in mlflow mode: no config file, sign-in or network.

Why real azureml-core objects, and how they are built. `Workspace.__init__` itself
touches nothing when told `_disable_service_check=True`: the wrapper calls it (once)
with that and an `_NoAzureAuth`, so `ws` is a real `Workspace` with v1's own `name`,
`subscription_id`, `resource_group`, `__repr__`. `Experiment.__init__` cannot run without
Azure (it builds a service client, and its portal mixin discovers service URLs), so in
mlflow mode, as for every v1 method, v1's body does not run: the wrapper fills the fields
v1's own properties read (`name`, `workspace`, `tags`, `__repr__`) and the id is the MLflow
experiment's. `Run(experiment, run_id)` returns the bridge's run object for the MLflow run
that id maps to (an `_OfflineRun`, as every run the bridge hands out in mlflow mode), so
reads and further logging go through the machinery in reads.py.

Every Azure service of such a workspace (datastores, compute, environments, ...) raises
`NoAzureError`, naming mlflow mode and what to do: the named services explicitly, the rest
where they all pass (the workspace's `service_context` and its authentication object), so
nothing ever prompts for a sign-in or waits on the network.

Workspaces v1 builds itself from a job's service context (`run.experiment.workspace` in an
Azure ML job) are left alone: they are real ones.
"""
from __future__ import annotations

import json
import logging
import os

from .. import bridge, config
from ..translate import V1_RUN_ID_TAG
from . import display, reads

logger = logging.getLogger("azml_v1_bridge")

MARK = "_azml_v1_bridge_mlflow"  # set on the workspaces and experiments built here
# A workspace's identity where no config.json or argument gives it: stated local values,
# strings as v1's are (notebooks print `'Subscription id: ' + ws.subscription_id`).
LOCATION = "local"
DEFAULT_WORKSPACE = "mlflow"
LOCAL_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"  # a GUID's shape, as v1's
LOCAL_RESOURCE_GROUP = "local"
# Workspace services (properties, methods) that need Azure ML: they raise NoAzureError here.
SERVICE_PROPERTIES = ("compute_targets", "datastores", "datasets", "environments", "images",
                      "webservices", "linked_services", "private_endpoints", "sku", "tags",
                      "discovery_url")
SERVICE_METHODS = ("get_default_datastore", "set_default_datastore", "get_default_compute_target",
                   "get_default_keyvault", "get_details", "list_keys", "delete", "update",
                   "update_dependencies", "sync_keys", "add_private_endpoint", "diagnose_workspace",
                   "set_connection", "list_connections", "get_connection", "delete_connection")
VIEW_TYPES = {"ActiveOnly": "ACTIVE_ONLY", "ArchivedOnly": "DELETED_ONLY", "All": "ALL"}


def _mlflow_mode() -> bool:
    return bridge.STATE.mode == "mlflow"


def is_local(obj) -> bool:
    """A workspace or experiment built here (no Azure behind it)."""
    return bool(getattr(obj, "__dict__", {}).get(MARK))


def no_azure(what: str, hint: str | None = None):
    """The one error every Azure service of an mlflow-mode workspace raises
    (`azml_v1_bridge.NoAzureError`, a UserErrorException), naming the user's call: `what`
    when the user called it, else the azureml-core call that led to it."""
    from ..no_azure import no_azure as error

    return error(what, hint)


class _NoAzureAuth:
    """The authentication of an mlflow-mode workspace: asked for a token, it refuses at once
    (a sign-in would prompt, or hang on a machine without Azure). Not v1's
    AbstractAuthentication: its constructor loads cloud metadata from the network."""

    _cloud_type = None

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise no_azure("signing in to Azure")

    def __repr__(self):
        return "NoAzureAuth(azml_v1_bridge mlflow mode)"


class _NoService:
    """Stands where v1 keeps its service clients: any use raises NoAzureError."""

    def __init__(self, what: str):
        self._what = what

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise no_azure(self._what)


# ---------------------------------------------------------------- Workspace

def _config_names(path=None, file_name=None) -> tuple:
    """(subscription_id, resource_group, workspace_name) from v1's config.json when there is
    one (read, never required), else from AZUREML_ARM_* variables, else placeholders."""
    start = os.path.abspath(path or ".")
    candidates = []
    if os.path.isfile(start):
        candidates.append(start)
    else:
        folder = start
        while True:
            for sub in (".azureml", "aml_config", ""):
                for name in ([file_name] if file_name else ["config.json", "project.json"]):
                    candidates.append(os.path.join(folder, sub, name))
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    for candidate in candidates:
        if os.path.isfile(candidate):
            try:
                with open(candidate, encoding="utf-8") as fh:
                    data = json.load(fh)
                return (data.get("subscription_id") or LOCAL_SUBSCRIPTION,
                        data.get("resource_group") or LOCAL_RESOURCE_GROUP,
                        data.get("workspace_name") or DEFAULT_WORKSPACE)
            except (OSError, ValueError, AttributeError):
                continue
    return (os.environ.get("AZUREML_ARM_SUBSCRIPTION") or LOCAL_SUBSCRIPTION,
            os.environ.get("AZUREML_ARM_RESOURCEGROUP") or LOCAL_RESOURCE_GROUP,
            os.environ.get("AZUREML_ARM_WORKSPACE_NAME") or DEFAULT_WORKSPACE)


def _ws_init(wrapped, instance, args, kwargs):
    if not _mlflow_mode() or (kwargs.get("_disable_service_check") and kwargs.get("auth") is not None):
        return wrapped(*args, **kwargs)  # v1's own, or one v1 builds from a job's service context

    def fields(subscription_id, resource_group, workspace_name, auth=None, _location=None,
               _disable_service_check=False, _workspace_id=None, sku="basic", tags=None,
               _cloud="AzureCloud"):
        return dict(subscription_id=str(subscription_id or LOCAL_SUBSCRIPTION),
                    resource_group=str(resource_group or LOCAL_RESOURCE_GROUP),
                    workspace_name=str(workspace_name or DEFAULT_WORKSPACE),
                    _location=str(_location or LOCATION),
                    _workspace_id=_workspace_id, sku=sku, tags=tags, _cloud=_cloud)

    # v1's constructor, told not to ask the service: it only keeps the names
    result = wrapped(**fields(*args, **kwargs), auth=_NoAzureAuth(), _disable_service_check=True)
    instance.__dict__[MARK] = True
    return result


def _ws_from_config(wrapped, instance, args, kwargs):
    if not _mlflow_mode():
        return wrapped(*args, **kwargs)
    path = args[0] if args else kwargs.get("path")
    sub, group, name = _config_names(path, kwargs.get("_file_name"))
    from azureml.core.workspace import Workspace

    return Workspace(sub, group, name)


def _ws_get(wrapped, instance, args, kwargs):
    if not _mlflow_mode():
        return wrapped(*args, **kwargs)

    def names(name, auth=None, subscription_id=None, resource_group=None, location=None,
              cloud="AzureCloud", id=None):
        return subscription_id, resource_group, name, location

    from azureml.core.workspace import Workspace

    sub, group, name, location = names(*args, **kwargs)
    return Workspace(sub, group, name, _location=location)


def _local_only(what: str):
    """A wrapper for a workspace service: NoAzureError on an mlflow-mode workspace."""
    def wrapper(wrapped, instance, args, kwargs):
        if instance is not None and is_local(instance):
            raise no_azure(what)
        return wrapped(*args, **kwargs)

    return wrapper


def _local_property(name: str, original: property, getter=None) -> property:
    def fget(self):
        if is_local(self):
            if getter is None:
                raise no_azure(f"Workspace.{name}")
            return getter(self)
        return original.fget(self)

    return property(fget, original.fset, original.fdel, original.__doc__)


def _experiments(ws) -> dict:
    from azureml.core.experiment import Experiment

    return {e.name: e for e in Experiment.list(ws)}


def _models(ws) -> dict:
    from azureml.core.model import Model

    return {m.name: m for m in Model.list(ws, latest=True)}


def _ws_tracking_uri(wrapped, instance, args, kwargs):
    if instance is not None and is_local(instance):
        import mlflow

        return mlflow.get_tracking_uri()
    return wrapped(*args, **kwargs)


def _ws_repr_html(self):
    """Where an mlflow-mode workspace's data is (v1's Workspace has no HTML: None for others)."""
    if not is_local(self):
        return None
    import mlflow

    rows = {"Name": self.name, "Subscription id": self.subscription_id,
            "Resource group": self.resource_group, "Location": self.location}
    rows.update(display.where(mlflow.get_tracking_uri()))
    return display.table(rows)


def _exp_repr_html(wrapped, instance, args, kwargs):
    if instance is None or not is_local(instance):
        return wrapped(*args, **kwargs)
    import mlflow

    found = _mlflow_experiment(instance, create=False)  # showing it creates nothing
    experiment_id = found.experiment_id if found is not None else None
    rows = {"Name": instance.name, "Workspace": instance.workspace.name,
            "MLflow experiment id": experiment_id or "(created by its first run)"}
    rows.update(display.where(mlflow.get_tracking_uri(), experiment_id or None))
    return display.table(rows)


def is_patched() -> bool:
    """Whether Workspace and Experiment are patched (then mlflow mode builds them without Azure)."""
    import sys

    pairs = (("azureml.core.workspace", "Workspace", _ws_init),
             ("azureml.core.experiment", "Experiment", _exp_init))
    for module_name, class_name, wrapper in pairs:
        module = sys.modules.get(module_name)
        init = getattr(module, class_name).__dict__.get("__init__") if module is not None else None
        if getattr(init, "_self_wrapper", None) is not wrapper:
            return False
    return True


def patch_workspace_module(module, wrap, add) -> None:
    cls = module.Workspace
    wrap(cls, "__init__", _ws_init)
    wrap(cls, "from_config", _ws_from_config)
    wrap(cls, "get", _ws_get)
    wrap(cls, "get_mlflow_tracking_uri", _ws_tracking_uri)
    for name in ("list", "create"):
        if name in cls.__dict__:
            wrap(cls, name, _static_no_azure(f"Workspace.{name}()"))
    for name in SERVICE_METHODS:
        if name in cls.__dict__:
            wrap(cls, name, _local_only(f"Workspace.{name}()"))
    add(cls, "_repr_html_", _ws_repr_html)
    getters = {"experiments": _experiments, "models": _models}
    for name in SERVICE_PROPERTIES + ("service_context", "experiments", "models"):
        original = cls.__dict__.get(name)
        if isinstance(original, property):
            add(cls, name, _local_property(name, original, getters.get(name)))


def _static_no_azure(what: str):
    def wrapper(wrapped, instance, args, kwargs):
        if _mlflow_mode():
            raise no_azure(what)
        return wrapped(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- Experiment

def _exp_init(wrapped, instance, args, kwargs):
    def fields(workspace, name, _skip_name_validation=False, _id=None, _archived_time=None,
               _create_in_cloud=True, _experiment_dto=None, **rest):
        return workspace, name, _skip_name_validation, _id, _archived_time

    workspace, name, skip_validation, id_, archived = fields(*args, **kwargs)
    if not (_mlflow_mode() and is_local(workspace)):
        return wrapped(*args, **kwargs)
    if not skip_validation:
        from azureml._base_sdk_common.common import check_valid_resource_name

        check_valid_resource_name(name, "Experiment")
    # v1's constructor needs Azure (service client, portal discovery): its fields, filled here
    d = instance.__dict__
    d.update({MARK: True, "_workspace": workspace, "_name": name, "_id": id_,
              "_archived_time": archived, "_experiment_dto": None, "_tags": {},
              "_workspace_client": _NoService(f"Experiment {name!r}'s Azure ML service"),
              "_identity": f"Experiment#{name}",
              "_logger": logging.getLogger("azureml").getChild(f"Experiment#{name}"),
              "_portal_url": None, "_formatted_tid": "", "_workspace_url": None,
              "_experiment_url": None})
    return None


def _mlflow_experiment(experiment, create: bool):
    """The MLflow experiment of a local v1 experiment (None if it does not exist and not create)."""
    client = reads._client(None)
    found = client.get_experiment_by_name(experiment.name)
    if found is None and create:
        from mlflow.exceptions import MlflowException

        try:
            client.create_experiment(experiment.name)
        except MlflowException:
            pass  # made meanwhile by the writer or another process
        found = client.get_experiment_by_name(experiment.name)
    if found is not None:
        experiment.__dict__["_id"] = found.experiment_id
        experiment.__dict__["_tags"] = dict(found.tags or {})
    return found


def _exp_id(original: property) -> property:
    def fget(self):
        if is_local(self):
            if self.__dict__.get("_id") is None:
                _mlflow_experiment(self, create=True)  # created when first used
            return self.__dict__.get("_id")
        return original.fget(self)

    return property(fget, original.fset, original.fdel, original.__doc__)


def _exp_tags(original: property) -> property:
    def fget(self):
        if is_local(self):
            found = _mlflow_experiment(self, create=False)
            return {} if found is None else {k: v for k, v in (found.tags or {}).items()
                                             if not k.startswith("mlflow.")}
        return original.fget(self)

    return property(fget, original.fset, original.fdel, original.__doc__)


def _exp_set_tags(wrapped, instance, args, kwargs):
    if instance is None or not is_local(instance):
        return wrapped(*args, **kwargs)

    def tags_of(tags):
        return tags

    found = _mlflow_experiment(instance, create=True)
    client = reads._client(None)
    for key, value in dict(tags_of(*args, **kwargs) or {}).items():
        client.set_experiment_tag(found.experiment_id, str(key), "" if value is None else str(value))
    return None


def _exp_tag(wrapped, instance, args, kwargs):
    if instance is None or not is_local(instance):
        return wrapped(*args, **kwargs)

    def kv(key, value=None):
        return key, value

    key, value = kv(*args, **kwargs)
    found = _mlflow_experiment(instance, create=True)
    reads._client(None).set_experiment_tag(found.experiment_id, str(key),
                                          "" if value is None else str(value))
    return None


def local_experiment(ws, name: str, experiment_id: str | None = None):
    from azureml.core.experiment import Experiment

    return Experiment(ws, name, _skip_name_validation=True, _id=experiment_id)


def _exp_list(wrapped, instance, args, kwargs):
    def fields(workspace, experiment_name=None, view_type="ActiveOnly", tags=None):
        return workspace, experiment_name, view_type, tags

    workspace, name, view_type, tags = fields(*args, **kwargs)
    if not (_mlflow_mode() and is_local(workspace)):
        return wrapped(*args, **kwargs)
    from mlflow.entities import ViewType

    client = reads._client(None)
    view = getattr(ViewType, VIEW_TYPES.get(view_type, "ACTIVE_ONLY"))
    out, token = [], None
    while True:
        page = client.search_experiments(view_type=view, max_results=1000, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    experiments = []
    for found in sorted(out, key=lambda e: int(e.experiment_id) if str(e.experiment_id).isdigit()
                        else 0):
        if name is not None and found.name != name:
            continue
        if tags is not None and not reads._matches(dict(found.tags or {}), tags):
            continue
        experiments.append(local_experiment(workspace, found.name, found.experiment_id))
    return experiments


def patch_experiment_module(module, wrap, add) -> None:
    cls = module.Experiment
    wrap(cls, "__init__", _exp_init)
    wrap(cls, "list", _exp_list)
    wrap(cls, "set_tags", _exp_set_tags)
    wrap(cls, "tag", _exp_tag)
    wrap(cls, "_repr_html_", _exp_repr_html)
    for name in ("submit", "archive", "reactivate", "remove_tags", "refresh"):
        if name in cls.__dict__:
            wrap(cls, name, _local_only(f"Experiment.{name}()"))
    add(cls, "id", _exp_id(cls.__dict__["id"]))
    add(cls, "tags", _exp_tags(cls.__dict__["tags"]))


# ---------------------------------------------------------------- runs of an experiment

def find_run(run_id: str, experiment_ids=None):
    """The MLflow run a v1 run id maps to: the run tagged with it (a run the bridge gave out),
    else the MLflow run of that id; None if neither exists."""
    bridge.flush(bridge.STATE.cfg.exit_timeout)  # a run the script just made is found
    client = reads._client(None)
    ids = experiment_ids
    if ids is None:
        from mlflow.entities import ViewType

        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL,
                                                                  max_results=1000)]
    if ids:
        found = client.search_runs(ids, filter_string=f"tags.`{V1_RUN_ID_TAG}` = "
                                                      f"'{reads._quote(str(run_id))}'",
                                   max_results=1)
        if found:
            return found[0]
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(str(run_id))
    except MlflowException:
        return None


def _not_found(run_id, where: str):
    from azureml.exceptions import UserErrorException

    return UserErrorException(f"Run {run_id!r} was not found in MLflow ({where}; tracking URI "
                              f"{_redacted_uri()}): mlflow mode serves the runs the bridge logged")


def _redacted_uri() -> str:
    import mlflow

    return config.redact(mlflow.get_tracking_uri())


def run_object(mlflow_run, workspace):
    """The bridge's v1 run object for an MLflow run (the script's own one if it holds it),
    whose `experiment` is a v1 Experiment of `workspace`."""
    run = reads._object_for(mlflow_run, None)
    if not is_local(run.__dict__.get("_experiment")):
        found = reads._client(None).get_experiment(mlflow_run.info.experiment_id)
        run.__dict__["_experiment"] = local_experiment(workspace, found.name, found.experiment_id)
    return run


def run_new(cls, *args, **kwargs):
    """Run(experiment, run_id) on a local experiment: the MLflow run that id maps to."""
    from azureml.core.run import Run

    if cls is Run and _mlflow_mode():
        experiment = args[0] if args else kwargs.get("experiment")
        run_id = args[1] if len(args) > 1 else kwargs.get("run_id")
        if is_local(experiment) and run_id is not None:
            found = find_run(run_id)
            if found is None:
                raise _not_found(run_id, f"experiment {experiment.name!r}")
            return run_object(found, experiment.workspace)
    return object.__new__(cls)


def _status_of(mlflow_run) -> str:
    return reads.STATUS.get(mlflow_run.info.status, str(mlflow_run.info.status).title())


def list_runs(experiment, type=None, tags=None, properties=None, status=None, include_children=False):
    """v1's Run.list on a local experiment: a generator of run objects, newest first."""
    bridge.flush(bridge.STATE.cfg.exit_timeout)
    found = _mlflow_experiment(experiment, create=False)
    if found is None:
        return iter(())
    if type is not None:
        logger.info("azml_v1_bridge: MLflow runs have no v1 run type; type=%r filters nothing", type)
    client = reads._client(None)
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    selected = []
    for mlflow_run in runs:
        if not include_children and mlflow_run.data.tags.get("mlflow.parentRunId"):
            continue
        t = reads.Target(client, mlflow_run.info.run_id, None)
        t._run = mlflow_run
        if tags is not None and not reads._matches(reads._tags_of(t), tags):
            continue
        if properties is not None and not reads._matches(reads._properties_of(t), properties):
            continue
        if status is not None and _status_of(mlflow_run) != status:
            continue
        selected.append(mlflow_run)
    return (run_object(r, experiment.workspace) for r in selected)


def run_list(wrapped, instance, args, kwargs):
    def fields(experiment, type=None, tags=None, properties=None, status=None,
               include_children=False, _rehydrate_runs=True):
        return experiment, dict(type=type, tags=tags, properties=properties, status=status,
                                include_children=include_children)

    experiment, options = fields(*args, **kwargs)
    if not (_mlflow_mode() and is_local(experiment)):
        return wrapped(*args, **kwargs)
    return list_runs(experiment, **options)


def run_get(wrapped, instance, args, kwargs):
    def fields(workspace, run_id):
        return workspace, run_id

    workspace, run_id = fields(*args, **kwargs)
    if not (_mlflow_mode() and is_local(workspace)):
        return wrapped(*args, **kwargs)
    found = find_run(run_id)
    if found is None:
        raise _not_found(run_id, f"workspace {workspace.name!r}")
    return run_object(found, workspace)


def experiment(run):
    """The MLflow experiment of the run: a v1 Experiment of the mlflow-mode workspace when the
    run came from one (this module), else its name and id (`reads.Experiment`)."""
    t = reads.target(run)
    experiment_id = t.run.info.experiment_id
    found = t.client.get_experiment(experiment_id)
    own = run.__dict__.get("_experiment") if hasattr(run, "__dict__") else None
    if is_local(own):
        if own.name == found.name:
            return own
        return local_experiment(own.workspace, found.name, experiment_id)
    if bridge.STATE.mode == "mlflow" and is_patched():
        # job scripts do `ws = run.experiment.workspace`: the mlflow-mode workspace
        from azureml.core import Workspace

        return local_experiment(Workspace.from_config(), found.name, experiment_id)
    return reads.Experiment(found.name, experiment_id, t.record.tracking_uri if t.record else None)
