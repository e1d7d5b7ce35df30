"""Start-up of the CLI: time from launch to the first line of output, medians of rounds.

    python benchmarks/bench_startup.py [--rounds 15] [--root SOURCE_TREE]

Each round starts a fresh interpreter for: `python -c pass` (the floor), `azml-v1-bridge --help`,
and `azml-v1-bridge doctor` (first line, and the whole run on a local sqlite store). The CLI runs
as `python -m azml_v1_bridge_tools.cli` with PYTHONPATH=ROOT, so another checkout (e.g. an older
commit unpacked with `git archive`) can be measured the same way for a before/after.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def first_line_and_total(cmd, env, cwd):
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdout.readline()
    first = time.perf_counter() - started
    proc.stdout.read()
    proc.wait()
    return first, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--root", default=os.path.dirname(HERE), help="the source tree to measure")
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    cli = [sys.executable, "-m", "azml_v1_bridge_tools.cli"]
    with tempfile.TemporaryDirectory(prefix="azml-startup-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AZML_V1_BRIDGE_"))}
        env.update(PYTHONPATH=root, HOME=tmp, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
        cases = {
            "python -c pass": [sys.executable, "-c", "print()"],
            "azml-v1-bridge --help": cli + ["--help"],
            "azml-v1-bridge doctor": cli + ["doctor"],
        }
        results = {name: ([], []) for name in cases}
        for _ in range(args.rounds):  # alternate the cases, so load changes hit them alike
            for name, cmd in cases.items():
                first, total = first_line_and_total(cmd, env, tmp)
                results[name][0].append(first)
                results[name][1].append(total)
    print(f"start-up, {args.rounds} rounds, source {root} (load average {os.getloadavg()[0]:.1f})")
    print(f"  {'command':<24} {'first line (median)':>20} {'best':>8} {'whole run (median)':>20}")
    for name, (firsts, totals) in results.items():
        print(f"  {name:<24} {statistics.median(firsts):>19.3f}s {min(firsts):>7.3f}s "
              f"{statistics.median(totals):>19.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
