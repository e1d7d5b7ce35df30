"""Loaded by every Python process started under `azml-v1-bridge run` (this folder is
first on PYTHONPATH): turns the bridge on in an unmodified program.

1. Chains to the sitecustomize this one shadows (a venv's, a distro's, another
   launcher's), as Python would have loaded it, errors reported as site.py does.
2. Imports azml_v1_bridge, which patches azureml.core now or when it is imported.

It never breaks the interpreter: if the bridge cannot be imported here (another
Python without it, a missing dependency) the program runs unbridged, and says so
at exit only if it used azureml.core. The one exception is a setting the bridge
refuses (AZML_V1_BRIDGE_MODE=bogus): that stops the process at once with exit
code 2, as `import azml_v1_bridge` in the script would have.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _same(entry):
    try:
        return os.path.abspath(entry or os.curdir) == _HERE
    except Exception:
        return False


def _chain():
    """Import the next sitecustomize on sys.path, if any (this folder leaves sys.path)."""
    me = sys.modules.pop("sitecustomize", None)
    sys.path[:] = [p for p in sys.path if not _same(p)]
    try:
        import sitecustomize  # noqa: F401  (the shadowed one)
    except ImportError as exc:
        if exc.name != "sitecustomize":
            _site_error(exc)
    except Exception as exc:
        _site_error(exc)
    if "sitecustomize" not in sys.modules and me is not None:
        sys.modules["sitecustomize"] = me


def _site_error(exc):
    # What site.py prints for a failing sitecustomize, and it goes on the same way.
    if sys.flags.verbose:
        sys.excepthook(*sys.exc_info())
    else:
        sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                         f"{type(exc).__name__}: {exc}\n")


def _import_bridge():
    try:
        import azml_v1_bridge  # noqa: F401  (patches on import)
        return None
    except ImportError as exc:
        if exc.name != "azml_v1_bridge":
            return exc
    # Not importable by this interpreter. When the bridge runs from a source tree (not
    # site-packages), that tree can be added at the end of sys.path without shadowing
    # anything of the program's.
    root = os.path.dirname(os.path.dirname(_HERE))
    if os.path.basename(root) in ("site-packages", "dist-packages") or root in sys.path:
        return ImportError("azml_v1_bridge is not installed for this Python")
    sys.path.append(root)
    try:
        import azml_v1_bridge  # noqa: F401,F811
        return None
    except ImportError as exc:
        if root in sys.path:
            sys.path.remove(root)
        return exc


def _start():
    try:
        _chain()
    except Exception as exc:  # never let the chaining itself break startup
        _site_error(exc)
    try:
        problem = _import_bridge()
    except Exception as exc:
        if type(exc).__name__ == "ConfigError" and type(exc).__module__.startswith("azml_v1_bridge"):
            sys.stderr.write(f"azml_v1_bridge: {exc}\n"
                             "azml_v1_bridge: this Python process was started by `azml-v1-bridge run`"
                             " and stops here (exit code 2)\n")
            sys.stderr.flush()
            os._exit(2)
        problem = exc
    if problem is not None:
        import atexit

        atexit.register(_warn_unbridged, problem)


def _warn_unbridged(problem):
    if "azureml.core" not in sys.modules:
        return  # a Python process that never used v1: nothing was lost
    try:
        sys.stderr.write(
            f"azml_v1_bridge: this Python ({sys.executable}) used azureml.core under "
            f"`azml-v1-bridge run` but could not load the bridge ({type(problem).__name__}: "
            f"{problem}); its v1 calls were not recorded in MLflow. Install azml_v1_bridge "
            "for this interpreter.\n")
    except Exception:
        pass


_start()
