"""Where a bridged run.log's time goes inside a training loop (cache-cold), not in a tight loop.

One interpreter, blocks of 1000 ~80 us pure-Python steps; each block makes one kind of call
after every step, blocks of all kinds interleaved, repeated. Reports the main thread's CPU
per step of each kind minus the no-call blocks (median of repeats). Run with the bridge's
environment (AZML_V1_BRIDGE_MODE=mlflow, a tracking URI) and PYTHONPATH at the repository:

    AZML_V1_BRIDGE_MODE=mlflow PYTHONPATH=. python benchmarks/experiments/cold_call.py
"""
import statistics
import sys
import time

import azml_v1_bridge  # noqa: F401
from azml_v1_bridge import bridge
from azureml.core import Run

sys.path.insert(0, "benchmarks")
from bench_training import step  # noqa: E402

K = int(sys.argv[1]) if len(sys.argv) > 1 else 1900
BLOCK, REPEATS = 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 15

run = Run.get_context()
run.log("loss", 0.0)
bridge.flush()
record = run.__dict__[bridge.ATTR]
writer = bridge.STATE.writer
lid = record.local_id
log = run.log


def noop(name, value):
    pass


def direct(name, value):  # handle_log without wrapt's binding
    bridge.handle_log(None, run, (name, value), {})


def put(name, value):  # only the queue append (what any path must do)
    writer.put((lid, "log", name, value, 0, 0))


KINDS = {"none": None, "noop": noop, "put": put, "direct": direct, "run.log": None}
cpu = {k: [] for k in KINDS}
for r in range(REPEATS):
    order = list(KINDS) if r % 2 == 0 else list(reversed(KINDS))
    for kind in order:
        fn = KINDS[kind]
        t0 = time.thread_time()
        if kind == "none":
            for i in range(BLOCK):
                step(K)
        elif kind == "run.log":
            for i in range(BLOCK):
                run.log("loss", step(K) * 1e-9 + i)
        else:
            for i in range(BLOCK):
                fn("loss", step(K) * 1e-9 + i)
        cpu[kind].append((time.thread_time() - t0) / BLOCK * 1e6)
base = statistics.median(cpu["none"])
print(f"step {base:.1f} us CPU; extra CPU per step over no call (median of {REPEATS}):")
for kind in KINDS:
    extra = [c - b for c, b in zip(cpu[kind], cpu["none"])]
    print(f"  {kind:8} {statistics.median(extra):6.2f} us")
bridge.flush()
