"""azml_v1_bridge: Azure ML SDK v1 run logging, recorded in MLflow.

``import azml_v1_bridge`` is the whole integration: it wraps azureml.core's Run
logging methods (now, or when azureml.core is imported later) in the mode
named by AZML_V1_BRIDGE_MODE: ``mirror`` (default), ``mlflow`` or ``off``.
An unknown mode fails here, before any training starts.

The tools (``azml_v1_bridge_tools``: CLI, doctor, scan, migrate, replay) import
this package without activating it.
"""
from __future__ import annotations

import sys

from .config import MODES, ConfigError

__version__ = "0.2.0"

__all__ = ["enable", "disable", "is_enabled", "flush", "finish", "mlflow_run_id", "ConfigError",
           "BridgeError", "NoAzureError", "MODES", "__version__"]


def _imported_by_tools() -> bool:
    # The tools package is in sys.modules while it (or a tool module) imports us.
    return "azml_v1_bridge_tools" in sys.modules


def _started_as_cli() -> bool:
    # `python -m azml_v1_bridge doctor` must be able to *report* a bad mode, not die importing us.
    orig = list(getattr(sys, "orig_argv", ()))
    return any(orig[i] == "-m" and orig[i + 1] == "azml_v1_bridge" and orig[i + 2:i + 3] != []
               and orig[i + 2] in ("run", "doctor", "replay", "scan", "migrate", "--version", "help")
               for i in range(len(orig) - 1))


# Loaded on first use: `azml-v1-bridge --help` must not pay for wrapt and the writer, nor any
# import of azml_v1_bridge for azureml's exceptions (NoAzureError subclasses v1's).
_LAZY = {"NoAzureError": "no_azure"}
if _imported_by_tools():
    _LAZY.update({"BridgeError": "bridge", "finish": "lifecycle", "flush": "bridge",
                  "mlflow_run_id": "bridge", "disable": "patch", "enable": "patch",
                  "is_enabled": "patch"})


def __getattr__(name):
    if name in _LAZY:
        import importlib

        if name == "enable":  # patching needs mlflow mode's v1 surface handed to patch
            importlib.import_module(".surface", __name__)
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not _imported_by_tools():
    from .bridge import BridgeError, flush, mlflow_run_id
    from .lifecycle import finish
    from .patch import disable, enable, is_enabled
    from . import surface  # noqa: F401  (hands patch mlflow mode's v1 surface; before enable())

    try:
        enable()
    except ConfigError:
        if not _started_as_cli():
            raise
