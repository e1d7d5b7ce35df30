"""What the bridge needs to know about an `azureml://` tracking store (the azureml-mlflow plugin)
and the Azure ML v2 command job it runs in. Pure functions of a URI and the environment: no
Azure SDK, no network.

A v2 command job sets MLFLOW_TRACKING_URI=azureml://<region>.api.azureml.ms/mlflow/v1.0/
subscriptions/<S>/resourceGroups/<R>/providers/Microsoft.MachineLearningServices/workspaces/<W>,
MLFLOW_RUN_ID and AZUREML_RUN_ID (both the job's run), MLFLOW_EXPERIMENT_ID/_NAME and a token
(MLFLOW_TRACKING_TOKEN) or a managed identity (MSI_ENDPOINT/MSI_SECRET).
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import re
from typing import Mapping
from urllib.parse import urlsplit

from . import config

SCHEME = "azureml"
STUDIO = "https://ml.azure.com"
# The Azure ML API host's suffix -> the cloud azureml-mlflow knows it by (AZUREML_CURRENT_CLOUD).
CLOUDS = (("api.azureml.ms", "AzureCloud"), ("api.ml.azure.cn", "AzureChinaCloud"),
          ("api.ml.azure.us", "AzureUSGovernment"))
_WORKSPACE = re.compile(r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/"
                        r"Microsoft\.MachineLearningServices/workspaces/([^/?#]+)", re.IGNORECASE)


def is_azureml(uri: str | None) -> bool:
    return bool(uri) and uri.strip().lower().startswith(SCHEME + "://")


def workspace_of(uri: str | None) -> tuple[str, str, str] | None:
    """(subscription, resource group, workspace) named by an azureml:// tracking URI."""
    if not is_azureml(uri):
        return None
    found = _WORKSPACE.search(urlsplit(uri).path)
    return found.groups() if found else None


def cloud_of(uri: str | None) -> str | None:
    """The Azure cloud an azureml:// URI's host belongs to; None for a host we do not know."""
    if not is_azureml(uri):
        return None
    host = (urlsplit(uri).hostname or "").lower()
    return next((cloud for suffix, cloud in CLOUDS if host == suffix or host.endswith("." + suffix)), None)


def set_cloud_default(env=None, uri: str | None = None) -> str | None:
    """AZUREML_CURRENT_CLOUD from the tracking URI's host (`uri`, else MLFLOW_TRACKING_URI),
    where it is unset: without it,
    azureml-mlflow first fetches cloud metadata from management.azure.com (a network call, and
    an error printed where the job may not reach it). The user's value is never overridden."""
    env = os.environ if env is None else env
    if env.get(config.AZUREML_CURRENT_CLOUD):
        return None
    cloud = cloud_of(uri or env.get(config.MLFLOW_TRACKING_URI))
    if cloud is not None:
        env[config.AZUREML_CURRENT_CLOUD] = cloud
    return cloud


def studio_url(uri: str | None, run_id: str | None) -> str | None:
    """The run's page in Azure ML studio."""
    workspace = workspace_of(uri)
    if workspace is None or not run_id:
        return None
    subscription, group, name = workspace
    return f"{STUDIO}/runs/{run_id}?wsid=/subscriptions/{subscription}/resourcegroups/{group}/workspaces/{name}"


def job_run_id(env: Mapping[str, str] | None = None) -> str | None:
    """The run of the Azure ML job this process runs in: AZUREML_RUN_ID, when MLFLOW_RUN_ID (if
    set) names the same run and the store is azureml:// (a v2 command job)."""
    env = os.environ if env is None else env
    job = (env.get(config.AZUREML_RUN_ID) or "").strip()
    adopted = (env.get(config.MLFLOW_RUN_ID) or "").strip()
    if not job or (adopted and adopted != job) or not is_azureml(env.get(config.MLFLOW_TRACKING_URI)):
        return None
    return job


def token_expiry(token: str | None) -> datetime.datetime | None:
    """When a JWT (MLFLOW_TRACKING_TOKEN) expires, read without verifying it; None if it is not one."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return datetime.datetime.fromtimestamp(int(claims["exp"]), tz=datetime.timezone.utc)
    except Exception:
        return None


def what_to_check(env: Mapping[str, str] | None = None) -> str:
    """For a refused sign-in to an Azure ML workspace: which credential the job used, and what
    to check about it."""
    env = os.environ if env is None else env
    token = env.get(config.MLFLOW_TRACKING_TOKEN)
    if token:
        expiry = token_expiry(token)
        now = datetime.datetime.now(datetime.timezone.utc)
        when = ("its expiry cannot be read (not a JWT)" if expiry is None else
                f"it expired at {expiry:%Y-%m-%d %H:%M:%S} UTC" if expiry <= now else
                f"it expires at {expiry:%Y-%m-%d %H:%M:%S} UTC, so the workspace does not accept it")
        return (f"check MLFLOW_TRACKING_TOKEN's expiry ({when}) and that it is this job's token for "
                "this workspace (Azure ML sets it for the job's own run)")
    if env.get(config.MSI_ENDPOINT):
        return ("check the job's identity: the compute's managed identity (MSI_ENDPOINT) needs a role "
                "on the workspace (AzureML Data Scientist or Contributor), and its token's expiry")
    return ("check the identity signed in (az login, a managed identity or a service principal: "
            "AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_CLIENT_SECRET), its role on the workspace and "
            "its token's expiry")
