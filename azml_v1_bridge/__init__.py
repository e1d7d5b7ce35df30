"""azml_v1_bridge: Azure ML SDK v1 run logging, recorded in MLflow.

``import azml_v1_bridge`` is the whole integration: it wraps azureml.core's Run
logging methods (now, or when azureml.core is imported later) in the mode
named by AZML_V1_BRIDGE_MODE: ``mirror`` (default), ``mlflow`` or ``off``.
An unknown mode fails here, before any training starts.
"""
from __future__ import annotations

from .bridge import BridgeError, finish, flush, mlflow_run_id
from .config import MODES, ConfigError
from .patch import disable, enable, is_enabled

__version__ = "0.1.0"


def _started_as_cli() -> bool:
    # `azml-v1-bridge doctor` must be able to *report* a bad mode, not die importing us.
    import os
    import sys

    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0.startswith("azml-v1-bridge"):
        return True
    orig = list(getattr(sys, "orig_argv", ()))
    return any(orig[i] == "-m" and orig[i + 1] in ("azml_v1_bridge", "azml_v1_bridge.cli")
               for i in range(len(orig) - 1))


__all__ = ["enable", "disable", "is_enabled", "flush", "finish", "mlflow_run_id", "ConfigError",
           "BridgeError", "MODES", "__version__"]

try:
    enable()
except ConfigError:
    if not _started_as_cli():
        raise
