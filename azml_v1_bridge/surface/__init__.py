"""The v1 surface mlflow mode serves instead of Azure: run reads, workspaces, experiments,
refetched runs and models, answered from MLflow.

It depends on the bridge (`bridge`, `patch`, `translate`, `runs`), never the other way:
importing this package hands `patch` what to install (`patch.serve`), and the activation
(`import azml_v1_bridge`, the launcher's bootstrap) imports it before patching.
"""
from __future__ import annotations

import types

from .. import patch
from . import models, reads, standins, workspace


def _patch_run_module(module, wrap, add) -> None:
    cls = module.Run
    add(cls, "__new__", staticmethod(workspace.run_new))
    wrap(cls, "list", workspace.run_list)
    wrap(cls, "get", workspace.run_get)
    wrap(cls, "register_model", models.run_register_model_wrapper)
    if "register_model" not in module._OfflineRun.__dict__:
        def register_model(self, *args, **kwargs):
            return models.register_from_run(self, *args, **kwargs)

        add(module._OfflineRun, "register_model",
            patch.MlflowModeOnly("register_model", lambda run: types.MethodType(register_model, run)))


patch.serve(patch.Surface(
    standins=standins.STANDINS,
    getters=standins.GETTERS,
    not_mapped=reads.NotMapped,
    hooks={
        "azureml.core.run": _patch_run_module,
        "azureml.core.experiment": workspace.patch_experiment_module,
        "azureml.core.workspace": workspace.patch_workspace_module,
        "azureml.core.model": models.patch_model_module,
    },
))
