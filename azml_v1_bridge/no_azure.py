"""`NoAzureError`: what mlflow mode raises for a v1 call that truly needs the Azure ML service.

One class, a subclass of v1's `UserErrorException` (what v1 raises for a misuse), so
`except UserErrorException` in legacy code still catches it, and importable as
`azml_v1_bridge.NoAzureError` (loaded on first use: this module imports azureml's
exceptions, which `import azml_v1_bridge` alone never pays for).

The message names the call the user made (`Datastore.get()`, `Workspace.datastores`), not
the attribute deep inside azureml-core where the service was first needed (its
`service_context`, its authentication): `users_call` finds it on the stack.
"""
from __future__ import annotations

import sys

from azureml.exceptions import UserErrorException

WHAT_TO_DO = ("azml_v1_bridge's mlflow mode (AZML_V1_BRIDGE_MODE=mlflow) has no Azure ML "
              "workspace behind it: only tracking (experiments, runs, metrics, files, models) is "
              "served, from MLflow. Run this part in mirror mode (AZML_V1_BRIDGE_MODE=mirror) with "
              "a real workspace, or replace it with its SDK v2 or local equivalent")
# Frames that are the bridge's or the wrapping's, never the user's call.
_OURS = ("azml_v1_bridge", "wrapt")
# Frames of the Azure SDK: the user's call is the outermost of these.
_AZURE = ("azureml.", "azure.", "msrest")


class NoAzureError(UserErrorException):
    """A v1 call that needs the Azure ML service, made in mlflow mode (no Azure behind it)."""

    def __init__(self, call: str, hint: str | None = None, **kwargs):
        self.call = call
        text = f"{call} needs the Azure ML service: {WHAT_TO_DO}"
        super().__init__(text + (f". {hint}" if hint else "") + ".", **kwargs)


NoAzureError.__module__ = "azml_v1_bridge"  # where users import it from (and how it prints)


def users_call(default: str) -> str:
    """The v1 call the user made that led here: the outermost azureml-core function on the
    stack below the user's own code (`ComputeTarget(...)`, `Datastore.get()`), else `default`
    (the bridge's own wrapper was called directly: it knows its name)."""
    frame = sys._getframe(1)
    outermost = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "") or ""
        if module.startswith(_AZURE):
            name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            if "<" not in name:  # not a decorator's inner wrapper, a lambda, a comprehension
                outermost = name
        elif not module.startswith(_OURS) and outermost is not None:
            break
        frame = frame.f_back
    if outermost is None:
        return default
    cls, _, method = outermost.rpartition(".")
    if method in ("__init__", "__new__") and cls:
        return f"{cls}(...)"
    return f"{outermost}()"


def no_azure(default_call: str, hint: str | None = None) -> NoAzureError:
    return NoAzureError(users_call(default_call), hint)
