"""CPU of each form of run.log on the calling thread, tight loop (mlflow mode; run it in a
folder for its mlflow.db, AZML_V1_BRIDGE_MODE=mlflow, PYTHONPATH at the repository)."""
import time, numpy as np
import azml_v1_bridge
from azml_v1_bridge import bridge
from azureml.core import Run
run = Run.get_context()
run.log("warm", 1.0); bridge.flush()
N = 50_000
def t(label, fn):
    best = []
    for r in range(3):
        t0 = time.thread_time()
        for i in range(N):
            fn(i)
        best.append((time.thread_time() - t0) / N * 1e6)
        bridge.flush()
    print(f"{label:12} {min(best):.2f} us")
names = [f"new/{i}" for i in range(4 * N)]
it = iter(names)
t("log", lambda i: run.log("a", 0.5))
t("step", lambda i: run.log("b", 0.5, step=i))
t("positional", lambda i: run.log("c", 0.5, "", i))
f64, f32, i64 = np.float64(0.5), np.float32(0.5), np.int64(3)
t("np.float64", lambda i: run.log("d", f64))
t("np.float32", lambda i: run.log("e", f32))
t("np.int64", lambda i: run.log("f", i64))
t("new", lambda i: run.log(next(it), 0.5))
