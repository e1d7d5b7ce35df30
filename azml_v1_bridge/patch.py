"""Which v1 methods are wrapped, and `enable()` / `disable()`. Nothing else.

wrapt post-import hooks patch `azureml.core` whether it was imported before or
after the bridge. `disable()` puts back the exact original attributes.
"""
from __future__ import annotations

import functools
import logging
import threading
import types

import wrapt

from . import azure, bridge, config, lifecycle
from .bridge import is_bridged

logger = logging.getLogger("azml_v1_bridge")

# v1 logging methods; each has a translate_<name> in translate.TRANSLATORS.
RUN_METHODS = (
    "log", "log_list", "log_row", "log_table", "log_image",
    "log_confusion_matrix", "log_accuracy_table", "log_predictions", "log_residuals",
    "tag", "set_tags", "add_properties",
    "upload_file", "upload_files", "upload_folder",
    "complete", "fail", "cancel", "flush",
    "child_run", "create_children", "__enter__", "__exit__",
)
# (module, class, methods): Run covers the subclasses that inherit; _OfflineRun
# (what get_context() returns outside a job) is not a Run subclass at all.
TARGETS = (
    ("azureml.core.run", "Run", RUN_METHODS),
    ("azureml.core.run", "_OfflineRun", RUN_METHODS),
    ("azureml.core.experiment", "Experiment", ("start_logging",)),
)
# Property setters: display_name -> run name, description -> note.
PROPERTIES = ("display_name", "description")
# Reads served from the MLflow run in mlflow mode (v1 would ask Azure ML, or its cached
# copy of the run, which v1's writes no longer update): methods, and properties (Surface.getters).
READ_METHODS = ("get_metrics", "get_tags", "get_properties", "get_file_names", "download_file",
                "download_files", "get_children", "get_status", "get_details",
                "tags", "properties", "parent", "status",
                # waiting and the rest of v1's run surface notebooks call (some need Azure:
                # their stand-ins raise NoAzureError)
                "wait_for_completion", "get_details_with_logs", "get_all_logs", "get_portal_url",
                "get_detailed_status", "_repr_html_", "restore_snapshot", "take_snapshot",
                "get_snapshot_id", "get_environment", "clean", "get_secret", "get_secrets")
# What _OfflineRun lacks that scripts written for jobs use: given to it in mlflow mode only
# (outside mlflow mode they raise AttributeError, as v1's _OfflineRun does).
OFFLINE_ADDITIONS = ("create_children",) + READ_METHODS + ("experiment",)




class Surface:
    """What mlflow mode serves where v1 would ask Azure (azml_v1_bridge.surface hands it over):
    run-returning and read stand-ins, property getters, the exception by which a read says
    "no MLflow run here, let v1 answer", and, per azureml module, a function that patches it
    (called with this module's `_wrap` and `_add`, so `disable()` undoes it)."""

    def __init__(self, standins=None, getters=None, not_mapped=(), hooks=None):
        self.standins, self.getters = dict(standins or {}), dict(getters or {})
        self.not_mapped, self.hooks = not_mapped, dict(hooks or {})


SURFACE = Surface()  # empty until azml_v1_bridge.surface is imported
# Modules patched by this module's own hooks (the surface's hooks for them run inside).
OWN_MODULES = ("azureml.core.run", "azureml.core.experiment")


def serve(surface: Surface) -> None:
    """Use `surface` for the patches made from now on (before enable(): the activation's order)."""
    global SURFACE
    SURFACE = surface


class _Patches:
    def __init__(self):
        self.lock = threading.RLock()
        self.active = False
        self.hooks_registered = False
        self.saved: list = []  # (cls, name, original attribute or _ABSENT)


_ABSENT = object()
PATCHES = _Patches()


def _wrapper(method: str):
    # wrapt calls wrapper(wrapped, instance, args, kwargs); a partial saves a Python frame per call
    if method == "log" and "log" not in SURFACE.standins:
        wrapper = functools.partial(bridge.handle_log)
    else:
        wrapper = functools.partial(bridge.handle, method, standin=SURFACE.standins.get(method))
    wrapper._azml_v1_bridge = True
    return wrapper


def _read_wrapper(method: str):
    standin, not_mapped = SURFACE.standins[method], SURFACE.not_mapped

    def wrapper(wrapped, instance, args, kwargs):
        if bridge.STATE.mode == "mlflow" and instance is not None:
            try:
                return standin(instance, *args, **kwargs)
            except not_mapped:  # a v1 run no MLflow run stands for: v1 answers
                pass
        return wrapped(*args, **kwargs)

    wrapper._azml_v1_bridge = True
    return wrapper


def _read_getter(name: str, original_fget):
    """A property getter that reads the MLflow run in mlflow mode, else v1's own."""
    getter, not_mapped = SURFACE.getters[name], SURFACE.not_mapped

    def fget(self):
        if bridge.STATE.mode == "mlflow":
            try:
                value = getter(self)
            except not_mapped:
                return original_fget(self)
            if value is None and name == "parent":
                # no parent in MLflow: a pipeline step's v1 parent, from v1's own run document
                return original_fget(self)
            return value
        return original_fget(self)

    fget._azml_v1_bridge = True
    return fget


def _read_property(name: str, original: property) -> property:
    return property(_read_getter(name, original.fget), original.fset, original.fdel, original.__doc__)


def _save(cls, name) -> None:
    PATCHES.saved.append((cls, name, cls.__dict__.get(name, _ABSENT)))


def _wrap(cls, name: str, wrapper) -> None:
    _save(cls, name)
    wrapt.wrap_function_wrapper(cls, name, wrapper)


def _add(cls, name: str, function) -> None:
    _save(cls, name)
    setattr(cls, name, function)


def _patch_class(cls, methods) -> None:
    for name in methods:
        if name not in cls.__dict__:
            if not hasattr(cls, name) and not (cls.__name__ == "_OfflineRun" and name in OFFLINE_ADDITIONS):
                # an older or newer azureml-core without it: skip, never fail the import
                logger.debug("azml_v1_bridge: %s.%s does not exist in this azureml-core; "
                             "calls to it are not bridged", cls.__name__, name)
            continue  # inherited: the base class wrapper covers it
        if is_bridged(cls.__dict__[name]):
            continue
        _wrap(cls, name, _wrapper(name))


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _patch_run_module(module) -> None:
    with PATCHES.lock:
        if not PATCHES.active:
            return
        run_cls, offline_cls = module.Run, module._OfflineRun
        _patch_class(run_cls, RUN_METHODS)
        # Subclasses that override a method escape the base wrapper (_SubmittedRun.cancel);
        # those that call super() are wrapped twice, which bridge.handle collapses to one emit.
        for sub in _subclasses(run_cls):
            _patch_class(sub, RUN_METHODS)
        # ...and those defined later (ScriptRun, PipelineRun, HyperDriveRun live in modules
        # imported after azureml.core.run): bridged as they are defined.
        if not is_bridged_subclass_hook(run_cls.__dict__.get("__init_subclass__")):
            _add(run_cls, "__init_subclass__", _subclass_hook(run_cls))
        _patch_class(offline_cls, RUN_METHODS)
        for name in READ_METHODS:
            original = run_cls.__dict__.get(name)
            if name not in SURFACE.standins and name not in SURFACE.getters:
                continue  # no surface served (patch alone): v1's own
            if isinstance(original, property):
                _add(run_cls, name, _read_property(name, original))
            elif original is not None:
                _wrap(run_cls, name, _read_wrapper(name))
        for name in OFFLINE_ADDITIONS:
            if name not in offline_cls.__dict__ and (name in SURFACE.standins
                                                     or name in SURFACE.getters
                                                     or name in RUN_METHODS):
                _add(offline_cls, name, _offline_addition(name))
        for name in PROPERTIES:
            original = run_cls.__dict__.get(name)
            if isinstance(original, property):
                _add(run_cls, name, _bridged_property(name, original))
            if name not in offline_cls.__dict__:
                _add(offline_cls, name, _offline_property(name))
        _patch_surface("azureml.core.run", module)


def _subclass_hook(run_cls):
    original = run_cls.__dict__.get("__init_subclass__")

    def __init_subclass__(cls, **kwargs):
        if original is None:
            super(run_cls, cls).__init_subclass__(**kwargs)
        else:
            original.__get__(None, cls)(**kwargs)
        with PATCHES.lock:
            if PATCHES.active:
                _patch_class(cls, RUN_METHODS)

    __init_subclass__._azml_v1_bridge = True
    return classmethod(__init_subclass__)


def is_bridged_subclass_hook(attribute) -> bool:
    return bool(getattr(getattr(attribute, "__func__", None), "_azml_v1_bridge", False))


def _patch_experiment_module(module) -> None:
    with PATCHES.lock:
        if PATCHES.active:
            _patch_class(module.Experiment, ("start_logging",))
            _patch_surface("azureml.core.experiment", module)


def _patch_surface(module_name: str, module) -> None:
    """mlflow mode's workspace, experiments, refetch and models (azml_v1_bridge.surface)."""
    hook = SURFACE.hooks.get(module_name)
    if hook is not None:
        hook(module, _wrap, _add)


def _patch_module_hook(module_name: str):
    def hook(module):
        with PATCHES.lock:
            if PATCHES.active:
                _patch_surface(module_name, module)

    return hook


class MlflowModeOnly:
    """An attribute _OfflineRun has in mlflow mode only: elsewhere it is absent, as in v1
    (AttributeError, so `hasattr(run, name)` stays False)."""

    def __init__(self, name: str, get):
        self.name, self.get = name, get

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        if bridge.STATE.mode != "mlflow":
            raise AttributeError(f"'{type(instance).__name__}' object has no attribute {self.name!r}")
        return self.get(instance)


def _offline_addition(name: str):
    """A method (or, for names in Surface.getters, a read-only property) for _OfflineRun."""
    if name in SURFACE.getters:
        return MlflowModeOnly(name, SURFACE.getters[name])
    standin = SURFACE.standins.get(name)

    def method(self, *args, **kwargs):
        if name in READ_METHODS:
            return standin(self, *args, **kwargs)
        return bridge.handle(name, None, self, args, kwargs, standin)

    method.__name__ = method.__qualname__ = name
    return MlflowModeOnly(name, lambda instance: types.MethodType(method, instance))


def _bridged_property(name: str, original: property) -> property:
    def setter(self, value):
        bridge.handle(name, lambda v: original.fset(self, v), self, (value,), {}, None)

    fget = _read_getter(name, original.fget) if name in SURFACE.getters else original.fget
    return property(fget, setter, original.fdel, original.__doc__)


def _offline_property(name: str) -> property:
    slot = "_azml_v1_bridge_" + name

    def getter(self):
        if bridge.STATE.mode == "mlflow" and name in SURFACE.getters:
            return SURFACE.getters[name](self)  # the MLflow run's, whoever set it
        return self.__dict__.get(slot)

    def store(self, value):
        self.__dict__[slot] = value

    def setter(self, value):
        bridge.handle(name, lambda v: store(self, v), self, (value,), {},
                      lambda run, v: store(run, v))

    return property(getter, setter)


def enable(mode: str | None = None) -> str:
    """Patch azureml.core (now or when it is imported). Idempotent; returns the mode."""
    cfg = config.load()
    azure.set_cloud_default()  # before azureml-mlflow loads: no cloud metadata fetched
    if mode is not None:
        from dataclasses import replace

        cfg = replace(cfg, mode=config.check_mode(mode))
    with PATCHES.lock:
        bridge.LOG_BINDING.invalidate()  # the mode may change: run.log bound on objects rebinds
        writer_changed = cfg.writer_settings() != bridge.STATE.cfg.writer_settings()
        if bridge.STATE.writer is not None and writer_changed:
            lifecycle.retire_writer()  # new settings: the next call starts a writer that has them
        bridge.STATE.cfg = cfg
        if cfg.mode == "off":
            disable()
            return "off"
        if PATCHES.active:
            if bridge.STATE.mode != cfg.mode:
                logger.info("azml_v1_bridge: mode %s -> %s", bridge.STATE.mode, cfg.mode)
            bridge.STATE.mode = cfg.mode
            return cfg.mode
        bridge.STATE.mode = cfg.mode
        PATCHES.active = True
        lifecycle.install()
        if not PATCHES.hooks_registered:
            PATCHES.hooks_registered = True
            wrapt.register_post_import_hook(_patch_run_module, "azureml.core.run")
            wrapt.register_post_import_hook(_patch_experiment_module, "azureml.core.experiment")
            for module_name in SURFACE.hooks:
                if module_name not in OWN_MODULES:
                    wrapt.register_post_import_hook(_patch_module_hook(module_name), module_name)
        else:  # hooks fire once per import: patch what is already loaded ourselves
            import sys

            if "azureml.core.run" in sys.modules:
                _patch_run_module(sys.modules["azureml.core.run"])
            if "azureml.core.experiment" in sys.modules:
                _patch_experiment_module(sys.modules["azureml.core.experiment"])
            for module_name in SURFACE.hooks:
                if module_name not in OWN_MODULES and module_name in sys.modules:
                    _patch_module_hook(module_name)(sys.modules[module_name])
    return cfg.mode


def disable() -> None:
    """Restore every original v1 attribute; data already logged is still delivered."""
    with PATCHES.lock:
        for cls, name, original in reversed(PATCHES.saved):
            if original is _ABSENT and name == "__new__":
                # CPython keeps an added __new__'s slot on the class and its subclasses once it
                # is deleted, and object.__new__ then refuses the constructor's arguments: a
                # neutral one stays instead (the only attribute disable() leaves behind).
                cls.__new__ = staticmethod(_object_new)
            elif original is _ABSENT:
                if name in cls.__dict__:
                    delattr(cls, name)
            else:
                setattr(cls, name, original)
        PATCHES.saved.clear()
        bridge.LOG_BINDING.unbind_all()
        PATCHES.active = False
        bridge.STATE.mode = "off"


def _object_new(cls, *args, **kwargs):
    return object.__new__(cls)


def is_enabled() -> bool:
    return PATCHES.active
