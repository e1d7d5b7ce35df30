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
__all__ = ["enable", "disable", "is_enabled", "flush", "finish", "mlflow_run_id", "ConfigError",
           "BridgeError", "MODES", "__version__"]

enable()
