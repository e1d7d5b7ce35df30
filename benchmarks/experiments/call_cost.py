"""CPU of one bridged run.log on the calling thread, and a cProfile of the call path.

Run in a folder with an mlflow.db, with AZML_V1_BRIDGE_MODE=mlflow AZML_V1_BRIDGE_WRITER=process
and PYTHONPATH at the repository: 3.7 us a call measured on 2026-12-03 (see NOTES.md)."""
import os, sys, time, gc
import azml_v1_bridge
from azml_v1_bridge import bridge
from azureml.core import Run
run = Run.get_context()
N = 200_000
def measure(fn, n=N):
    best = []
    for r in range(3):
        t = time.thread_time()
        for i in range(n):
            fn("loss", i * 0.001)
        best.append((time.thread_time() - t) / n * 1e6)
        bridge.flush() if fn is run.log else None
    return min(best)
run.log("warm", 1.0); bridge.flush()
print("run.log (full path)           %.2f us" % measure(run.log))
def noop(name, value): pass
print("python call of a no-op         %.2f us" % measure(noop))
print("gc counts", gc.get_count(), "gc collections", [s["collections"] for s in gc.get_stats()])
import cProfile, pstats
pr = cProfile.Profile(); pr.enable()
for i in range(50_000): run.log("loss", i * 0.001)
pr.disable(); bridge.flush()
pstats.Stats(pr).sort_stats("tottime").print_stats(12)
