"""Session 10 (issue 27): does a numpy scalar made in the call cost a cache-cold loop without the
bridge? Paired ABBA blocks, CPU time, a ~100 us pure-Python step; the sink does what the bound
run.log does (float() the value, append a 6-tuple). Usage: python numpy_lifetime.py [forms] [cycles]
Result 2026-12-08 (20 cycles, taken while the test suite ran): no difference (float 1.026, np_in_call
1.009, np_user_float 1.015; A/A 1.002). Too noisy: the quiet 16-round sink runs inside the forms
benchmark (numpy-sinks.patch, NOTES.md session 10) found the 3% and its cause (the timestamp's order)."""
import statistics, sys, time
import numpy as np

def step(k):
    acc = 0.0
    for i in range(k):
        acc += i * 0.5
    return acc

k = 2000
for _ in range(8):
    t0 = time.thread_time()
    for _ in range(500): step(k)
    per = (time.thread_time() - t0) / 500 * 1e6
    k = max(1, round(k * 100 / per))

q = []
append = q.append
f64 = np.float64
def sink(name, value):
    t = type(value)
    if t is float:
        n = value
    else:
        n = float(value)
    append((1, "log", name, n, int(time.time() * 1000), 0))
    if len(q) > 5000: q.clear()

def sink_keep(name, value):  # keeps the scalar itself
    append((1, "log", name, value, int(time.time() * 1000), 0))
    if len(q) > 5000: q.clear()

X = f64(0.5)
forms = {
    "aa": None,
    "float": lambda i, v: sink("a", v),
    "np_in_call": lambda i, v: sink("a", f64(v)),
    "np_user_float": lambda i, v: sink("a", float(f64(v))),
    "np_premade": lambda i, v: sink("a", X),
    "np_made": lambda i, v: f64(v),
    "np_keep": lambda i, v: sink_keep("a", f64(v)),
}
if len(sys.argv) > 1 and sys.argv[1]:
    forms = {f: forms[f] for f in ["aa"] + sys.argv[1].split(",")}
names = list(forms)
res = {f: ([], []) for f in names}
B = 1000
for cycle in range(int(sys.argv[2]) if len(sys.argv) > 2 else 20):
    for j in range(len(names)):
        f = names[(j + cycle) % len(names)]
        call = forms[f]
        for logs in (False, True, True, False):
            t0 = time.thread_time()
            if logs and call is not None:
                for i in range(B):
                    v = step(k) * 1e-9
                    call(i, v)
            else:
                for i in range(B):
                    v = step(k) * 1e-9
            res[f][logs].append(time.thread_time() - t0)
for f in names:
    off, on = res[f]
    print(f"{f:14} {statistics.median(on)/statistics.median(off):.4f}")
