"""Instructions a `run.log` costs the training process, counted by valgrind (deterministic).

Wall and CPU clocks on this VM cannot resolve a microsecond a call (NOTES.md: the same step
measures 80-145 us from one interpreter to the next); callgrind's instruction counts repeat
to within ~200 instructions a call. Each kind runs the same script under
`valgrind --tool=callgrind --separate-threads=yes`: a loop of N small steps, with one call
per step (`run.log` of a bridged `_OfflineRun` in mlflow mode, the default writer process,
or a hand-written list append with a timestamp) or none. Reported per call, over the
no-call run: instructions on the main thread, and on the writer's forwarder thread (its
pickling competes with the loop for the GIL). The writer process itself is not traced.

    python benchmarks/experiments/call_instructions.py [--calls 20000] [--roots DIR,DIR...]

`--roots` compares checkouts of the bridge (say a `git archive` of the previous commit):
each gets its own `run.log` row. About a minute per kind on 2 cores.
"""
import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def worker(kind: str, calls: int) -> None:
    import time

    import azml_v1_bridge  # noqa: F401
    from azml_v1_bridge import bridge
    from azureml.core import Run

    def step(k: int = 100) -> float:
        acc = 0.0
        for i in range(k):
            acc += i * 0.5
        return acc

    run = Run.get_context()
    run.log("loss", 0.0)
    run.log("loss", 0.5)
    bridge.flush()
    kept = []

    def handwritten(name, value):
        kept.append((name, value, int(time.time() * 1000), 0))

    if kind == "none":
        for i in range(calls):
            step()
    elif kind == "handwritten":
        for i in range(calls):
            handwritten("loss", step() * 1e-9 + i)
    else:
        for i in range(calls):
            run.log("loss", step() * 1e-9 + i)
    bridge.flush()


def totals(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        for line in fh:
            if line.startswith("totals:"):
                return int(line.split()[1])
    return 0


def measure(kind: str, calls: int, root: str, scratch: str, tag: str) -> tuple[int, int]:
    out = os.path.join(scratch, f"cg.{tag}")
    env = dict(os.environ, PYTHONHASHSEED="0", AZML_V1_BRIDGE_MODE="mlflow",
               AZML_V1_BRIDGE_REPORT="0", MLFLOW_TRACKING_URI=f"sqlite:///{scratch}/{tag}.db",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("AZML_V1_BRIDGE_WRITER", None)
    subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                    f"--callgrind-out-file={out}", sys.executable, os.path.abspath(__file__),
                    "--worker", kind, "--calls", str(calls)],
                   env=env, cwd=scratch, check=True, capture_output=True)
    return totals(out + "-01"), totals(out + "-02")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--roots", default=ROOT, help="checkouts of the bridge, comma-separated")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.calls)
        return 0
    roots = [os.path.abspath(r) for r in args.roots.split(",") if r]
    scratch = tempfile.mkdtemp(prefix="call-instructions-")
    base_main, base_thread = measure("none", args.calls, roots[0], scratch, "none")
    rows = [("handwritten", roots[0], "handwritten")]
    rows += [("run.log", root, f"log{i}") for i, root in enumerate(roots)]
    print(f"instructions per call over no call ({args.calls} calls, callgrind):")
    print(f"{'kind':12} {'main thread':>12} {'forwarder':>10}  checkout")
    for kind, root, tag in rows:
        main_ir, thread_ir = measure(kind, args.calls, root, scratch, tag)
        print(f"{kind:12} {(main_ir - base_main) / args.calls:12.0f} "
              f"{(thread_ir - base_thread) / args.calls:10.0f}  {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
