"""The tools around the bridge: the `azml-v1-bridge` CLI, `doctor`, `scan`, `migrate`, `replay`.

Importing them never activates the bridge: nothing is patched and no exit or
signal handler is installed. `azml_v1_bridge/__init__.py` sees this package
being imported and leaves the runtime off (`azml_v1_bridge.enable()` still
turns it on). Only `import azml_v1_bridge` and the launcher's bootstrap activate.
"""
