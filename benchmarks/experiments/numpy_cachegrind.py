"""Session 10 (issue 27): the training process of `run.log(k, np.float64(x))` against
`run.log(k, float(np.float64(x)))` (and a float, and no call) under valgrind, per step:
    AZML_V1_BRIDGE_MODE=mlflow valgrind --tool=cachegrind --cache-sim=yes python numpy_cachegrind.py np 3000
Result 2026-12-08 (3000 steps): np and npu execute the same instructions (21.6k vs 22.0k a step
over `none`, float 14.6k) with the same simulated D1/LL misses; natively, the same minor page
faults (~90 per 30,000 steps for every logging form)."""
import sys, os
import numpy as np
form = sys.argv[1]
import azml_v1_bridge
from azml_v1_bridge import bridge
from azureml.core import Run
run = Run.get_context()
def step(k):
    acc = 0.0
    for i in range(k):
        acc += i * 0.5
    return acc
f64 = np.float64
run.log("w", 1.0); run.log("w", 1.0); run.log("np", f64(1.0)); run.log("np", f64(1.0)); run.log("npu", 1.0); run.log("npu", 1.0)
bridge.flush()
calls = {"none": lambda i, v: f64(v), "float": lambda i, v: (f64(v), run.log("w", v)),
         "np": lambda i, v: run.log("np", f64(v)), "npu": lambda i, v: run.log("npu", float(f64(v)))}
call = calls[form]
N = int(sys.argv[2])
import resource as _r; _f0 = _r.getrusage(_r.RUSAGE_SELF); import time as _t; _c0 = _t.process_time()
for i in range(N):
    v = step(1500) * 1e-9
    call(i, v)
import resource, time
r = resource.getrusage(resource.RUSAGE_SELF)
print(form, "minflt", r.ru_minflt, "utime", r.ru_utime, "stime", r.ru_stime)
print(form, "loop minflt", r.ru_minflt - _f0.ru_minflt, "loop stime", r.ru_stime - _f0.ru_stime, "loop cpu", time.process_time() - _c0)
