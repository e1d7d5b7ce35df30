"""The bound run.log against the previous session's binding, side by side in one process.

Across processes a pure-Python loop's speed moves by several percent with the interpreter's
memory layout, more than a microsecond a call is worth; here both bindings run in the same
interpreter, on the same writer: two `_OfflineRun` objects, one with today's bound run.log
(`bridge._bound_log`, a closure), one with the previous one (a bound method that calls
`bridge.lean_log`, as before 2026-12-03 night), plus a hand-written list append and no call.
Blocks of 500 ~100 us steps, one call per step, the four kinds in a shuffled order per
repeat; reports each kind's median µs per step over the no-call blocks' median.

    AZML_V1_BRIDGE_MODE=mlflow MLFLOW_TRACKING_URI=sqlite:///ab.db \
        PYTHONPATH=. python benchmarks/experiments/bound_log_ab.py [repeats, default 120]
"""
import os
import random
import statistics
import sys
import time
import types

import azml_v1_bridge  # noqa: F401
from azml_v1_bridge import bridge
from azureml.core.run import _OfflineRun

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_training import calibrate, step  # noqa: E402

BLOCK, REPEATS = 500, int(sys.argv[1]) if len(sys.argv) > 1 else 120

k = calibrate()["k"]
new, old = _OfflineRun(), _OfflineRun()
for run in (new, old):
    for i in range(3):
        run.log("loss", float(i))
assert hasattr(new.__dict__["log"], "_azml_v1_bridge"), "run.log was not bound"


def old_log(self, *args, **kwargs):  # the previous binding (bridge.LogBinding before the closure)
    if bridge.lean_log(self, args, kwargs):
        return None
    return getattr(_OfflineRun, "log").__get__(self, _OfflineRun)(*args, **kwargs)


old.__dict__["log"] = types.MethodType(old_log, old)
kept: list = []


class Handwritten:
    @staticmethod
    def log(name, value):
        kept.append((name, value, int(time.time() * 1000), 0))


KINDS = {"none": None, "closure": new, "previous": old, "handwritten": Handwritten}
wall: dict = {kind: [] for kind in KINDS}
shuffle = random.Random(1).shuffle
for r in range(REPEATS):
    order = list(KINDS)
    shuffle(order)
    for kind in order:
        obj = KINDS[kind]
        t0 = time.perf_counter()
        if obj is None:
            for i in range(BLOCK):
                step(k)
        else:
            for i in range(BLOCK):
                obj.log("loss", step(k) * 1e-9 + i)
        wall[kind].append((time.perf_counter() - t0) / BLOCK * 1e6)
    if len(kept) > 100_000:
        kept.clear()
base = statistics.median(wall["none"])
print(f"step {base:.1f} us; per step over no call (median of {REPEATS} blocks):")
for kind in list(KINDS)[1:]:
    extra = statistics.median(wall[kind]) - base
    print(f"  {kind:12} {extra:+5.2f} us  ({1 + extra / base:.4f}x)")
bridge.flush()
