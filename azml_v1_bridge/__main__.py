"""`python -m azml_v1_bridge script.py ARGS` / `python -m azml_v1_bridge -m pkg ARGS`.

Runs one script (or module) as `python script.py ARGS` would, with the bridge active
in this process; it is already on by the time this runs, as the package's import
turned it on. Python processes the script starts are bridged too (the launcher's
bootstrap goes on PYTHONPATH), as under `azml-v1-bridge run -- python script.py`.

`python -m azml_v1_bridge run|doctor|replay|scan|migrate ...` is the CLI itself.
"""
from __future__ import annotations

import os
import runpy
import sys

from azml_v1_bridge_tools import cli

from . import config, enable

USAGE = ("usage: python -m azml_v1_bridge SCRIPT.py [ARGS...]\n"
         "       python -m azml_v1_bridge -m MODULE [ARGS...]\n"
         "       python -m azml_v1_bridge run|doctor|replay|scan|migrate ...   (the azml-v1-bridge CLI)\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(USAGE)
        return 0 if argv else 2
    if argv[0] in ("run", "doctor", "help", "--version") or argv[0] in cli.DELEGATED:
        if not os.path.isfile(argv[0]):  # a script that happens to be called `run` still runs
            return cli.main(argv)
    try:
        enable()  # on already, unless the package's import let a bad setting pass for the CLI
    except config.ConfigError as exc:
        sys.stderr.write(f"azml_v1_bridge: {exc}\n")
        return 2
    os.environ[config.PYTHONPATH] = cli.with_bootstrap(os.environ.get(config.PYTHONPATH))
    if argv[0] == "-m" or (argv[0].startswith("-m") and len(argv[0]) > 2):
        module = argv[1] if argv[0] == "-m" else argv[0][2:]
        rest = argv[2:] if argv[0] == "-m" else argv[1:]
        if not module:
            sys.stderr.write(USAGE)
            return 2
        # As `python -m`: the working directory first on sys.path, argv[0] the module's file.
        sys.path[0] = os.getcwd()
        sys.argv = [module] + rest
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    script, rest = argv[0], argv[1:]
    if not os.path.exists(script):
        sys.stderr.write(f"{sys.executable}: can't open file {os.path.abspath(script)!r}: "
                         "[Errno 2] No such file or directory\n")
        return 2
    # As `python script.py`: the script's folder first on sys.path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    sys.argv = [script] + rest
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
