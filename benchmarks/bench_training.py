"""Training-loop benchmark (issue 13): what logging costs a busy Python training loop.

    python benchmarks/bench_training.py            # ~6 min on an idle 2-core machine (estimated;
                                                   # 25 min measured at load average 6-12)
    python benchmarks/bench_training.py --quick    # one round, shorter loops (~2 min)
    python benchmarks/bench_training.py --json out.json [--stores sqlite,server] [--variants log,row]

The training script: a legacy v1 script (`Run.get_context()`, a real `_OfflineRun`), whose
loop does a CPU-bound pure-Python step (~100 us, calibrated once in a fresh interpreter)
and logs one point per step, i.e. 10,000 points a second, for `--steps` steps:

- variant `log`: `run.log("loss", v)` every step;
- variant `row`: `run.log_row("metrics", col0=..., ..., col14=...)` every 15th step
  (15 numeric columns: the same 10,000 points a second, through the table path);
- variant `paired`: one process, its loop in blocks of 1000 steps that alternate without and
  with `run.log` every step (10,000 points a second inside a logging block), in the order
  without-with-with-without so that a slow drift favours neither kind. The ratio of the
  two kinds of block (medians) is the loop slowdown measured side by side in one interpreter:
  free of the ±10% by which the speed of pure Python differs from one process to the next
  (the no-logging client's own ratio shows what is left). The writer's background work
  spills into the blocks without logging, so this is a lower bound where that work is heavy.
- variant `forms` (clients `process`, `thread`, `baseline`): the paired measurement of every
  form of `run.log` a training loop calls, side by side in one interpreter and one run: for
  each form in turn (the order rotating from cycle to cycle) blocks go without, with, with,
  without it, and each form's ratio is the median of its own with-blocks over the median of
  its own without-blocks. The forms (FORMS): `aa` (no call: the A/A control), `handwritten`
  (a list append with a timestamp), `log` (`run.log(name, v)`), `step` (`step=i`),
  `positional` (`run.log(name, v, "", i)`), `np.float64`, `np.float32` and `np.int64`
  (a numpy scalar made in the loop, as a training loop gets it; `np.made` makes one of each
  and logs nothing: what the numpy forms cost without the bridge), `new` (a name never
  logged before, every call). Each block's CPU time of the whole training process (the writer's
  forwarder thread included; the writer process is another process) is recorded too: a
  ratio that the machine's other load (run-queue waits) moves far less than wall time.

Clients, each in a fresh interpreter, alternating order from round to round:

- `none`: the loop without logging (the baseline of loop slowdown);
- `thread` / `process`: `import azml_v1_bridge` (mlflow mode), AZML_V1_BRIDGE_WRITER=thread
  / =process (the default);
- `orm` (sqlite only): the writer process without its lean sqlite path, i.e. MLflow's
  `SqlAlchemyStore.log_batch` for every batch (what the lean path saves);
- `baseline` (with `--baseline-root`): the writer process of another checkout of the bridge
  (say a `git worktree` of the previous commit), to measure a change side by side;
- `async`: MLflow's own async logging (`mlflow.config.enable_async_logging()`,
  MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=1), `mlflow.log_metric(s)` with step;
- `sync`: synchronous `mlflow.log_metric(s)` (far fewer steps; reported per step);
- `handwritten`: points appended to a list in the loop, then `MlflowClient.log_batch`
  of 1000 points a request at the end (the baseline of whole-process time).

Every client imports `azureml.core` and calls `Run.get_context()` (the same script, only the
logging lines differ), so the ratios measure logging, not the import of azureml.

Stores: `sqlite` is the default store, `sqlite:///mlflow.db` in the script's (temporary)
folder; each script gets its own copy of an already-migrated empty database (a store that
exists, as after the first run; `--fresh-db` makes each script create it). `server` is a
local `mlflow server` (tests/servers.py: sqlite backend, one worker) shared by all scripts.

Figures per client (medians over rounds): loop seconds and loop slowdown (÷ `none`),
whole-process seconds (process start to exit, seen by this parent) and ÷ `handwritten`,
exit latency (the script's last call, i.e. its last logging call, to the process's exit, on a
healthy store), and the CPU seconds of the process tree (the writer process included).
After every script its run is read back with `MlflowClient` and the distinct (key, step)
pairs counted: a round that lost a point is reported as a loss.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")

STEP_US = 100.0            # target cost of one training step
STEPS = 30_000             # 3 s at 10,000 steps a second
QUICK_STEPS = 15_000
SYNC_STEPS = 200           # synchronous mlflow.log_metric: milliseconds a call
PAIR_BLOCK = 1000          # paired variant: steps a block
COLUMNS = 15               # log_row variant: 15 numeric columns ...
ROW_EVERY = COLUMNS        # ... every 15th step: still one point a step
BATCH = 1000               # hand-written log_batch: points a request
CLIENTS = ("none", "thread", "process", "orm", "async", "sync", "handwritten")
FORMS = ("aa", "handwritten", "log", "step", "positional", "np.float64", "np.float32", "np.int64",
         "np.made", "new")
FORM_CYCLES = 2            # forms variant: each form's without-with-with-without, this many times


def paired_logs(block: int) -> bool:
    """Blocks go without, with, with, without logging: a slow drift of the machine's speed
    then favours neither kind."""
    return block % 4 in (1, 2)


def form_schedule(blocks: int) -> list:
    """forms variant: (form, logs) per block; a cycle gives each form, in an order rotating
    from cycle to cycle, its blocks without, with, with, without."""
    schedule = []
    cycle = 0
    while len(schedule) < blocks:
        for j in range(len(FORMS)):
            form = FORMS[(j + cycle) % len(FORMS)]
            schedule += [(form, False), (form, True), (form, True), (form, False)]
        cycle += 1
    return schedule[:blocks]


def form_key(form: str) -> str:
    return "loss_" + form.replace(".", "_")


def form_calls(run, steps: int, hand: list) -> dict:
    """forms variant: per form, the call its with-blocks make each step (i, v)."""
    import numpy as np

    f64, f32, i64 = np.float64, np.float32, np.int64
    append = hand.append
    k = {form: form_key(form) for form in FORMS}
    new = [f"new/{i}" for i in range(steps)]  # made before the loop: the names are not the cost

    def handwritten(i, v, key=k["handwritten"]):
        append((key, v, int(time.time() * 1000), i))

    return {"aa": None, "handwritten": handwritten,
            "log": lambda i, v, key=k["log"]: run.log(key, v),
            "step": lambda i, v, key=k["step"]: run.log(key, v, step=i),
            "positional": lambda i, v, key=k["positional"]: run.log(key, v, "", i),
            "np.float64": lambda i, v, key=k["np.float64"]: run.log(key, f64(v)),
            "np.float32": lambda i, v, key=k["np.float32"]: run.log(key, f32(v)),
            "np.int64": lambda i, v, key=k["np.int64"]: run.log(key, i64(i)),
            "np.made": lambda i, v: (f64(v), f32(v), i64(i)),  # the numpy forms' own work
            "new": lambda i, v: run.log(new[i], v)}


def script_client(client: str) -> str:
    """What the training script does for a client: `orm` is the writer process (its
    environment switches the lean sqlite path off, see ORM_HOOK), so is `baseline` (another
    checkout's)."""
    return "process" if client in ("orm", "baseline") else client


# ------------------------------------------------------------------ the training script (workers)

def step(k: int) -> float:
    """One training step: pure Python, holds the GIL throughout."""
    acc = 0.0
    for i in range(k):
        acc += i * 0.5
    return acc


def calibrate(k: int = 2000) -> dict:
    # CPU time, not wall time: other work on the machine must not shorten the step. Medians
    # of several blocks, until the step is within 2% of STEP_US (a single block after start-up
    # left it at 80-85 us). Each training script calibrates again from the parent's k, before
    # its first logging call: the same k measured 80-145 us from one interpreter to the next.
    per_us = 0.0
    for _ in range(10):
        samples = []
        for _ in range(5):
            t0 = time.thread_time()
            for _ in range(500):
                step(k)
            samples.append((time.thread_time() - t0) / 500 * 1e6)
        per_us = statistics.median(samples)
        if abs(per_us - STEP_US) <= 0.02 * STEP_US:
            break
        k = max(1, round(k * STEP_US / per_us))
    return {"k": k, "step_us": per_us}


def schedstat(path: str) -> tuple[int, int]:
    """(ns on a CPU, ns waiting on a run queue) of one task, from /proc."""
    try:
        with open(path) as fh:
            on_cpu, waiting, _ = fh.read().split()
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return 0, 0


def tasks(pid) -> dict:
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            out[int(tid)] = schedstat(f"/proc/{pid}/task/{tid}/schedstat")
    except OSError:
        pass
    return out


def child_pids() -> list:
    pids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
        except OSError:
            pass
    return pids


def snapshot() -> dict:
    """CPU and run-queue time of every thread of this process and of its children."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    own = {names.get(tid, f"tid{tid}"): v for tid, v in tasks("self").items()}
    kids = {}
    for pid in child_pids():
        for tid, v in tasks(pid).items():
            kids[f"child{pid}/{tid}"] = v
    return {"threads": own, "children": kids}


def diff(after: dict, before: dict) -> dict:
    out = {}
    for group in ("threads", "children"):
        for name, (cpu, rq) in after[group].items():
            cpu0, rq0 = before[group].get(name, (0, 0))
            out[f"{group}:{name}"] = ((cpu - cpu0) / 1e9, (rq - rq0) / 1e9)
    return out


def worker_train(args) -> dict:
    from azureml.core import Run

    client, variant, steps = args.worker, args.variant, args.steps
    client = script_client(client)
    if os.environ.get("BENCH_SWITCH_INTERVAL"):  # --switch-interval: the GIL's forced hand-off
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
    names = [f"col{j}" for j in range(COLUMNS)]
    if client in ("thread", "process"):
        import azml_v1_bridge  # noqa: F401  (mlflow mode and the writer come from the environment)
    run = Run.get_context()
    log = None
    if client in ("thread", "process"):
        if variant in ("log", "paired"):
            def log(i, v):
                run.log("loss", v)
        else:
            def log(i, v):
                if i % ROW_EVERY == 0:
                    run.log_row("metrics", **{n: v + j for j, n in enumerate(names)})
    elif client in ("async", "sync"):
        import mlflow

        if client == "async":
            mlflow.config.enable_async_logging(True)
        mlflow.start_run()
        if variant in ("log", "paired"):
            def log(i, v):
                mlflow.log_metric("loss", v, step=i)
        else:
            def log(i, v):
                if i % ROW_EVERY == 0:
                    mlflow.log_metrics({f"metrics.{n}": v + j for j, n in enumerate(names)},
                                       step=i // ROW_EVERY)
    elif client == "handwritten":
        points: list = []
        append = points.append
        if variant in ("log", "paired"):
            def log(i, v):
                append(("loss", v, int(time.time() * 1000), i))
        else:
            def log(i, v):
                if i % ROW_EVERY == 0:
                    now, row = int(time.time() * 1000), i // ROW_EVERY
                    for j, n in enumerate(names):
                        append((f"metrics.{n}", v + j, now, row))

    own = calibrate(args.k)  # imports done, no logging call yet
    k = own["k"]
    import gc

    gc_time = [0.0, 0, None]  # seconds in the collector during the loop, full collections

    def on_gc(phase, info):  # the MLflow a thread writer imports makes every full collection long
        if phase == "start":
            gc_time[2] = time.perf_counter()
        elif gc_time[2] is not None:
            gc_time[0] += time.perf_counter() - gc_time[2]
            gc_time[1] += info["generation"] == 2
    gc.callbacks.append(on_gc)
    main0 = schedstat("/proc/thread-self/schedstat")
    before = snapshot()
    thread0, process0 = time.thread_time(), time.process_time()
    t0 = time.perf_counter()
    # paired: (wall, on CPU, run queue) seconds of each block, without / with logging
    blocks: dict = {False: [], True: []}
    forms: dict = {}  # forms variant: form -> {False: [wall s of each block], True: [...]}
    hand: list = []
    if variant == "forms":
        calls = form_calls(run, steps, hand)
        if client in ("thread", "process"):
            # the writer starts before the blocks: its start-up (a process importing MLflow)
            # inside the first form's first block made that form look 1.5% dearer than the
            # same call under another name; start-up is the log variant's and bench_startup's
            run.log("warm_up", 0.0)
            azml_v1_bridge.flush()
        for b, (form, logging_block) in enumerate(form_schedule(steps // PAIR_BLOCK)):
            first = b * PAIR_BLOCK
            call = calls[form] if logging_block else None
            cb, tb = time.process_time(), time.perf_counter()
            if call is not None:
                for i in range(first, first + PAIR_BLOCK):
                    call(i, step(k) * 1e-9 + i)
            else:
                for i in range(first, first + PAIR_BLOCK):
                    step(k)
            wall, cpu = time.perf_counter() - tb, time.process_time() - cb
            kinds = forms.setdefault(form, {False: [], True: [], "cpu": {False: [], True: []}})
            kinds[logging_block].append(wall)
            kinds["cpu"][logging_block].append(cpu)
    elif variant == "paired":
        for b in range(steps // PAIR_BLOCK):
            first = b * PAIR_BLOCK
            logging_block = paired_logs(b)
            sb = schedstat("/proc/thread-self/schedstat")
            tb = time.perf_counter()
            if logging_block and log is not None:
                for i in range(first, first + PAIR_BLOCK):
                    log(i, step(k) * 1e-9 + i)
            else:
                for i in range(first, first + PAIR_BLOCK):
                    step(k)
            wall = time.perf_counter() - tb
            se = schedstat("/proc/thread-self/schedstat")
            blocks[logging_block].append((wall, (se[0] - sb[0]) / 1e9, (se[1] - sb[1]) / 1e9))
    elif log is None:
        for i in range(steps):
            step(k)
    else:
        for i in range(steps):
            log(i, step(k) * 1e-9 + i)
    loop = time.perf_counter() - t0
    thread_cpu, process_cpu = time.thread_time() - thread0, time.process_time() - process0
    main1 = schedstat("/proc/thread-self/schedstat")
    during = diff(snapshot(), before)
    gc.callbacks.remove(on_gc)
    # The loop's wall time = on CPU + waiting for a CPU (run queue: other processes, or our own
    # writer process/server on a busy machine) + asleep (in this benchmark: waiting for the GIL).
    main_cpu, main_rq = (main1[0] - main0[0]) / 1e9, (main1[1] - main0[1]) / 1e9
    main_sleep = max(0.0, loop - main_cpu - main_rq)

    if client == "handwritten":
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        mlflow_client = MlflowClient()
        name = os.environ["MLFLOW_EXPERIMENT_NAME"]
        found = mlflow_client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else mlflow_client.create_experiment(name)
        run_id = mlflow_client.create_run(experiment).info.run_id
        for b in range(0, len(points), BATCH):
            mlflow_client.log_batch(run_id, metrics=[Metric(*p) for p in points[b:b + BATCH]],
                                    synchronous=True)
        mlflow_client.set_terminated(run_id)
    elif client in ("async", "sync"):
        mlflow.end_run()  # waits for the async queue
    last_call = time.monotonic()
    # The last line on stdout; what the interpreter does after this (the bridge's exit
    # delivery, MLflow's atexit) is what the parent measures as exit latency.
    print(json.dumps({"loop_s": loop, "thread_cpu_s": thread_cpu, "process_cpu_s": process_cpu,
                      "main_cpu_s": main_cpu, "main_runqueue_s": main_rq,
                      "main_sleep_s": main_sleep, "during_loop": during,
                      "gc_s": gc_time[0], "gc_full": gc_time[1],
                      "mlflow_imported": "mlflow" in sys.modules,
                      "last_call": last_call, "steps": steps, "step_us": own["step_us"],
                      "forms": {form: statistics.median(w[True]) / statistics.median(w[False])
                                for form, w in forms.items() if w[True] and w[False]},
                      "forms_cpu": {form: statistics.median(w["cpu"][True])
                                    / statistics.median(w["cpu"][False])
                                    for form, w in forms.items() if w[True] and w[False]},
                      "paired": ([[statistics.median(b[j] for b in blocks[False]) for j in range(3)],
                                  [statistics.median(b[j] for b in blocks[True]) for j in range(3)]]
                                 if blocks[True] else None)}), flush=True)
    return {}


# ------------------------------------------------------------------ orchestration

def worker_env(store_env: dict, client: str, experiment: str) -> dict:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("AZML_V1_BRIDGE_", "MLFLOW_", "AZUREML_")):
            del env[name]
    root = BASELINE_ROOT if client == "baseline" else BRIDGE_ROOT
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    env["MLFLOW_EXPERIMENT_NAME"] = experiment
    env["HOME"] = HOME  # azureml caches service discovery under ~/.azureml
    env.update(store_env)
    if client == "orm":  # the writer process without the lean sqlite path (see ORM_HOOK)
        env["PYTHONPATH"] = os.path.join(HOME, "orm-hook") + os.pathsep + env["PYTHONPATH"]
    client = script_client(client)
    if client in ("thread", "process"):
        env["AZML_V1_BRIDGE_MODE"] = "mlflow"
        env["AZML_V1_BRIDGE_WRITER"] = client
        env["AZML_V1_BRIDGE_REPORT"] = "0"
    elif client == "async":
        env["MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"] = "1"
    return env


def launch(client: str, variant: str, steps: int, k: int, env: dict, cwd: str,
           timeout: float = 600) -> dict:
    """Run one training script; whole-process time and exit time are seen from here."""
    out_path = os.path.join(cwd, "stdout.txt")
    err_path = os.path.join(cwd, "stderr.txt")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", client,
                                 "--variant", variant, "--steps", str(steps), "--k", str(k)],
                                env=env, cwd=cwd, stdout=out, stderr=err)
        deadline = start + timeout
        while True:  # wait4: the exit time and the CPU of the tree (reaped children included)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{client}/{variant} did not finish in {timeout}s")
            time.sleep(0.005)
        end = time.monotonic()
        proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = open(out_path).read()
    if proc.returncode != 0:
        raise RuntimeError(f"{client}/{variant} exited {proc.returncode}:\n"
                           f"{open(err_path).read()[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(whole_s=end - start, exit_s=end - result.pop("last_call"),
                  tree_cpu_s=usage.ru_utime + usage.ru_stime)
    return result


def count_landed(uri: str, experiment: str, keys: list) -> tuple[int, int]:
    """Distinct (key, step) pairs in the experiment's one run, read back with MlflowClient."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0, 0
    runs = client.search_runs([found.experiment_id])
    pairs = set()
    for run in runs:
        for key in keys:
            pairs.update((key, m.step) for m in client.get_metric_history(run.info.run_id, key))
    return len(pairs), len(runs)


def expected_forms(steps: int) -> dict:
    """forms variant: form -> points its with-blocks logged (the handwritten ones stay in
    the list; `aa` logs nothing)."""
    counts: dict = {}
    for form, logs in form_schedule(steps // PAIR_BLOCK):
        if logs and form not in ("aa", "handwritten", "np.made"):
            counts[form] = counts.get(form, 0) + PAIR_BLOCK
    return counts


def count_forms(uri: str, experiment: str) -> dict:
    """forms variant: form -> distinct (key, step) pairs landed (`new`: distinct new/ keys)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    got: dict = {}
    for run in runs:
        for form in FORMS:
            if form == "new":
                got[form] = got.get(form, 0) + sum(k.startswith("new/") for k in run.data.metrics)
            elif form not in ("aa", "handwritten", "np.made"):
                got[form] = got.get(form, 0) + len({m.step for m in client.get_metric_history(
                    run.info.run_id, form_key(form))})
    return got


def expected(client: str, variant: str, steps: int) -> tuple[list, int]:
    if variant == "log":
        return ["loss"], steps
    if variant == "paired":  # half the blocks log (paired_logs)
        return ["loss"], sum(map(paired_logs, range(steps // PAIR_BLOCK))) * PAIR_BLOCK
    rows = len(range(0, steps, ROW_EVERY))
    return [f"metrics.col{j}" for j in range(COLUMNS)], rows * COLUMNS


def one(client: str, variant: str, store: str, steps: int, k: int, ctx: dict, tag: str) -> dict:
    experiment = f"bench-{variant}-{client}-{tag}"
    cwd = tempfile.mkdtemp(prefix=f"bench-{client}-", dir=ctx["scratch"])
    if store == "sqlite":
        if ctx["template"]:
            shutil.copyfile(ctx["template"], os.path.join(cwd, "mlflow.db"))
        store_env, uri = {}, f"sqlite:///{cwd}/mlflow.db"
    else:
        store_env, uri = {"MLFLOW_TRACKING_URI": ctx["server_url"]}, ctx["server_url"]
    n = min(steps, SYNC_STEPS) if client == "sync" else steps
    print(f"  {store:6} {variant:3} {client:11} {tag} ...", end="", file=sys.stderr, flush=True)
    result = launch(client, variant, n, k, worker_env(store_env, client, experiment), cwd)
    if variant == "forms":
        result.update(landed_forms=count_forms(uri, experiment), expected_forms=expected_forms(n))
    elif client != "none":
        keys, want = expected(client, variant, n)
        got, runs = count_landed(uri, experiment, keys)
        result.update(landed=got, expected=want, runs=runs)
    print(f" loop {result['loop_s']:.2f}s whole {result['whole_s']:.2f}s exit "
          f"{result['exit_s']:.2f}s" + (f" landed {result['landed']}/{result['expected']}"
                                        if "landed" in result else ""), file=sys.stderr)
    shutil.rmtree(cwd, ignore_errors=True)
    return result


def _others(sample: dict) -> tuple[float, float]:
    """CPU seconds during the loop of this process's other threads, and of its children."""
    threads = sum(cpu for name, (cpu, rq) in sample["during_loop"].items()
                  if name.startswith("threads:") and name != "threads:MainThread")
    children = sum(cpu for name, (cpu, rq) in sample["during_loop"].items()
                   if name.startswith("children:"))
    return threads, children


def summarize(samples: list, base: list, base_whole: float | None, steps: int) -> dict:
    med = lambda name, of=samples: statistics.median(s[name] for s in of)  # noqa: E731
    n = samples[0]["steps"]
    base_steps = base[0]["steps"]
    base_loop = med("loop_s", base) / base_steps
    # without the run queue: what an otherwise idle machine would show (see worker_train)
    own = lambda s: (s["main_cpu_s"] + s["main_sleep_s"]) / s["steps"]  # noqa: E731
    base_own = statistics.median(own(s) for s in base)
    loop_per_step = med("loop_s") / n
    others = [_others(s) for s in samples]
    row = {"rounds": len(samples), "steps": n, "step_us": med("step_us"),
           "loop_s": med("loop_s"), "loop_us_per_step": loop_per_step * 1e6,
           "loop_slowdown": loop_per_step / base_loop,
           "loop_slowdown_no_runqueue": statistics.median(own(s) for s in samples) / base_own,
           "main_cpu_us_per_step": med("main_cpu_s") / n * 1e6,
           "main_sleep_us_per_step": med("main_sleep_s") / n * 1e6,
           "main_runqueue_us_per_step": med("main_runqueue_s") / n * 1e6,
           "other_threads_cpu_us_per_step": statistics.median(o[0] for o in others) / n * 1e6,
           "children_cpu_us_per_step": statistics.median(o[1] for o in others) / n * 1e6,
           "gc_us_per_step": med("gc_s") / n * 1e6, "gc_full": med("gc_full"),
           "whole_s": med("whole_s"), "exit_s": med("exit_s"), "tree_cpu_s": med("tree_cpu_s"),
           "all_loop_s": [round(s["loop_s"], 3) for s in samples],
           "all_whole_s": [round(s["whole_s"], 3) for s in samples],
           "all_exit_s": [round(s["exit_s"], 3) for s in samples]}
    if samples[0].get("paired"):
        # per step, without and with logging: [wall, main thread on CPU, waiting for a CPU]
        row["paired_us_per_step"] = [[statistics.median(s["paired"][w][j] for s in samples)
                                      / PAIR_BLOCK * 1e6 for j in range(3)] for w in (0, 1)]
        row["paired_ratio"] = statistics.median(s["paired"][1][0] / s["paired"][0][0]
                                                for s in samples)
        row["all_paired_ratio"] = [round(s["paired"][1][0] / s["paired"][0][0], 4)
                                   for s in samples]
    if base_whole and n == steps:
        row["whole_ratio"] = row["whole_s"] / base_whole
    if "landed" in samples[0]:
        row["landed"] = [s["landed"] for s in samples]
        row["expected"] = samples[0]["expected"]
        row["all_landed"] = all(s["landed"] == s["expected"] and s["runs"] == 1 for s in samples)
    return row


def median_interval(values: list, draws: int = 2000) -> tuple[float, float]:
    """A bootstrap 95% interval of the median."""
    import random

    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def summarize_forms(samples: list) -> dict:
    rows = {}
    for form in FORMS:
        ratios = [s["forms"][form] for s in samples if form in s["forms"]]
        if not ratios:
            continue
        low, high = median_interval(ratios)
        cpu = [s["forms_cpu"][form] for s in samples if form in s.get("forms_cpu", {})]
        row = {"ratio": statistics.median(ratios), "interval": [low, high],
               "cpu_ratio": statistics.median(cpu) if cpu else None,
               "cpu_interval": list(median_interval(cpu)) if cpu else None,
               "above_1.03": sum(r > 1.03 for r in ratios), "rounds": len(ratios),
               "all": [round(r, 4) for r in ratios]}
        if form in samples[0]["expected_forms"]:
            row["landed"] = [s["landed_forms"].get(form, 0) for s in samples]
            row["expected"] = samples[0]["expected_forms"][form]
            row["all_landed"] = all(n == row["expected"] for n in row["landed"])
        rows[form] = row
    return {"forms": rows, "step_us": statistics.median(s["step_us"] for s in samples),
            "exit_s": statistics.median(s["exit_s"] for s in samples),
            "all_landed": all(r.get("all_landed", True) for r in rows.values())}


def machine() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh
                          if line.startswith("model name")), "?")
    except OSError:
        pass
    import importlib.metadata as md

    versions = {}
    for package in ("mlflow", "azureml-core", "sqlalchemy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "loadavg_start": os.getloadavg(), **versions}


HOME = ""

# Client `orm`: the default writer process with the lean sqlite path switched off in every
# interpreter of the script (the writer process inherits PYTHONPATH), to show what it saves.
ORM_HOOK = """
import wrapt

def _off(module):
    module.SqliteMetrics.of = classmethod(lambda cls, client: None)

wrapt.register_post_import_hook(_off, "azml_v1_bridge.delivery.store")
"""
BRIDGE_ROOT = ROOT  # --bridge-root: measure another checkout of azml_v1_bridge
BASELINE_ROOT = None  # --baseline-root: the `baseline` client's checkout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="log", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=f"loop steps (default {STEPS})")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --quick 1)")
    parser.add_argument("--row-rounds", type=int, default=1,
                        help="rounds of the log_row variant (default 1, at most --rounds)")
    parser.add_argument("--quick", action="store_true", help="one round, shorter loops")
    parser.add_argument("--stores", default="sqlite,server")
    parser.add_argument("--variants", default="log,row,paired",
                        help="log, row, paired, forms (every form of run.log, paired)")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--fresh-db", action="store_true",
                        help="each script creates its sqlite store (MLflow's migrations included)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval in every script (default Python's 0.005 s)")
    parser.add_argument("--bridge-root", default=ROOT,
                        help="the folder azml_v1_bridge is imported from (another checkout or "
                             "an experiment; default this one)")
    parser.add_argument("--baseline-root", default=None,
                        help="another checkout, for the `baseline` client (its writer process)")
    args = parser.parse_args(argv)
    if args.worker == "calibrate":
        print(json.dumps(calibrate()))
        return 0
    if args.worker:
        worker_train(args)
        return 0

    global HOME, BRIDGE_ROOT, BASELINE_ROOT
    BRIDGE_ROOT = os.path.abspath(args.bridge_root)
    if "baseline" in args.clients.split(",") and not args.baseline_root:
        parser.error("the baseline client needs --baseline-root (another checkout of the bridge)")
    BASELINE_ROOT = os.path.abspath(args.baseline_root) if args.baseline_root else None
    if args.switch_interval:
        os.environ["BENCH_SWITCH_INTERVAL"] = str(args.switch_interval)
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    rounds = args.rounds or (1 if args.quick else 3)
    forms_steps = (1 if args.quick else FORM_CYCLES) * len(FORMS) * 4 * PAIR_BLOCK
    stores = [s for s in args.stores.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    clients = [c for c in args.clients.split(",") if c]
    if "none" not in clients:
        clients.insert(0, "none")
    scratch = tempfile.mkdtemp(prefix="bench-training-")
    HOME = os.path.join(scratch, "home")
    os.makedirs(HOME)
    os.makedirs(os.path.join(HOME, "orm-hook"))
    with open(os.path.join(HOME, "orm-hook", "sitecustomize.py"), "w") as fh:
        fh.write(ORM_HOOK)
    out: dict = {"machine": machine(), "steps": steps, "rounds": rounds, "bridge_root": BRIDGE_ROOT,
                 "baseline_root": BASELINE_ROOT,
                 "switch_interval": args.switch_interval,
                 "row_rounds": min(rounds, args.row_rounds)}
    env = worker_env({}, "none", "calibrate")
    calib = json.loads(subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                                       "calibrate"], env=env, capture_output=True, text=True,
                                      check=True).stdout)
    out["calibration"] = calib
    print(f"step: k={calib['k']} ≈ {calib['step_us']:.1f} µs; {steps} steps, {rounds} rounds",
          file=sys.stderr)
    ctx = {"scratch": scratch, "template": None, "server_url": None}
    if "sqlite" in stores and not args.fresh_db:
        from mlflow.tracking import MlflowClient

        ctx["template"] = os.path.join(scratch, "template.db")
        MlflowClient(f"sqlite:///{ctx['template']}").search_experiments()
    server = None
    if "server" in stores:
        sys.path.insert(0, TESTS)
        from servers import MlflowServer

        server = MlflowServer(os.path.join(scratch, "server")).start()
        ctx["server_url"] = server.url
        print(f"mlflow server {server.url}", file=sys.stderr)
    samples: dict = {}
    try:
        for r in range(rounds):
            for variant in variants:
                for store in stores:
                    order = list(clients) if r % 2 == 0 else list(reversed(clients))
                    for client in order:
                        if variant == "row" and (client == "sync" or r >= args.row_rounds):
                            continue  # sync: the same per-call cost as `log`, 15 points a call
                        if variant == "paired" and client == "sync":
                            continue  # milliseconds a call: the log variant says enough
                        if client == "baseline" and variant == "row":
                            continue  # a comparison of the loop: the log variants say it
                        if client == "orm" and store != "sqlite":
                            continue  # the same writer as `process` on any other store
                        if variant == "forms" and client not in ("process", "thread", "baseline"):
                            continue  # the forms are blocks of one bridge process
                        samples.setdefault((variant, store, client), []).append(
                            one(client, variant, store,
                                forms_steps if variant == "forms" else steps,
                                calib["k"], ctx, f"r{r}"))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    out["machine"]["loadavg_end"] = os.getloadavg()
    results: dict = {}
    for variant in variants:
        for store in stores:
            if variant == "forms":
                results[f"{variant}/{store}"] = {
                    client: summarize_forms(samples[(variant, store, client)])
                    for client in clients if (variant, store, client) in samples}
                continue
            base = samples[(variant, store, "none")]
            hand = samples.get((variant, store, "handwritten"))
            base_whole = statistics.median(s["whole_s"] for s in hand) if hand else None
            results[f"{variant}/{store}"] = {
                client: summarize(samples[(variant, store, client)], base, base_whole, steps)
                for client in clients if (variant, store, client) in samples}
    out["results"] = results
    print(report(out))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    lost = [f"{name}/{client}" for name, rows in results.items() for client, row in rows.items()
            if row.get("all_landed") is False]
    if lost:
        print(f"POINTS LOST: {', '.join(lost)}", file=sys.stderr)
        return 1
    return 0


LABELS = {"none": "no logging", "thread": "bridge, writer thread",
          "process": "bridge, writer process (default)",
          "baseline": "bridge, writer process, --baseline-root's",
          "orm": "bridge, writer process, MLflow's own sqlite path", "async": "MLflow async logging",
          "sync": "mlflow.log_metric (synchronous)", "handwritten": "hand-written log_batch at the end"}


def report(out: dict) -> str:
    m = out["machine"]
    steps_us = [row["step_us"] for rows in out["results"].values() for row in rows.values()]
    forms = {name: rows for name, rows in out["results"].items() if name.startswith("forms/")}
    lines = [f"machine: {m['nproc']} CPUs, {m['cpu']}; Python {m['python']}; mlflow {m['mlflow']}, "
             f"azureml-core {m['azureml-core']}, SQLAlchemy {m['sqlalchemy']}; load average "
             f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end",
             f"step ≈ {out['calibration']['step_us']:.0f} µs of pure Python; {out['steps']} steps "
             f"(sync: {SYNC_STEPS}); median of {out['rounds']} round(s), "
             f"log_row variant {out['row_rounds']}; each script calibrated its own step "
             f"before its loop: medians {min(steps_us):.0f}–{max(steps_us):.0f} µs", ""]
    for name, rows in forms.items():
        for client, row in rows.items():
            lines += [f"every form of run.log, paired blocks in one process ({PAIR_BLOCK} steps a "
                      f"block, each form without, with, with, without), {LABELS[client]}, store "
                      f"{name.split('/')[1]}; exit {row['exit_s']:.2f} s:",
                      "| form | loop slowdown (median of rounds) | 95% interval of the median | "
                      "rounds above 1.03 | the process's CPU a block, with ÷ without (95% "
                      "interval) | every round | landed |", "|---|---|---|---|---|---|---|"]
            for form, f in row["forms"].items():
                landed = ("-" if "all_landed" not in f else "ok" if f["all_landed"] else
                          f"LOST {f['landed']}/{f['expected']}")
                lines.append(f"| {form} | {f['ratio']:.3f} | {f['interval'][0]:.3f}–"
                             f"{f['interval'][1]:.3f} | {f['above_1.03']} of {f['rounds']} | "
                             + (f"{f['cpu_ratio']:.3f} ({f['cpu_interval'][0]:.3f}–"
                                f"{f['cpu_interval'][1]:.3f})" if f.get("cpu_ratio") else "-")
                             + f" | {f['all']} | {landed} |")
            lines.append("")
    for name, rows in out["results"].items():
        variant, store = name.split("/")
        if variant == "forms":
            continue
        if variant == "paired":
            lines += [f"paired blocks in one process ({PAIR_BLOCK} steps a block, without, with, "
                      f"with, without run.log every step, ...), store {store}:",
                      "| client | µs/step without logging | µs/step with | loop slowdown "
                      "(with ÷ without, median of rounds) | every round | main thread on CPU, "
                      "µs/step without → with | waiting for a CPU, without → with | landed |",
                      "|---|---|---|---|---|---|---|---|"]
            for client, row in rows.items():
                if "paired_ratio" not in row:
                    continue
                landed = ("ok" if row.get("all_landed") else
                          (f"LOST {row['landed']}/{row['expected']}" if "landed" in row else "-"))
                without, with_ = row["paired_us_per_step"]
                lines.append(f"| {LABELS[client]} | {without[0]:.1f} | {with_[0]:.1f} | "
                             f"{row['paired_ratio']:.3f} | {row['all_paired_ratio']} | "
                             f"{without[1]:.1f} → {with_[1]:.1f} | {without[2]:.1f} → {with_[2]:.1f} "
                             f"| {landed} |")
            lines.append("")
            continue
        what = ("run.log every step" if variant == "log"
                else f"log_row of {COLUMNS} columns every {ROW_EVERY}th step")
        lines += [f"{what}, store {store}:",
                  "| client | loop s | µs/step | loop slowdown | same, without run-queue wait | "
                  "whole process s | ÷ hand-written | exit s | landed |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for client, row in rows.items():
            ratio = f"{row['whole_ratio']:.3f}" if "whole_ratio" in row else "-"
            landed = ("ok" if row.get("all_landed") else
                      (f"LOST {row['landed']}/{row['expected']}" if "landed" in row else "-"))
            lines.append(f"| {LABELS[client]} | {row['loop_s']:.2f} | {row['loop_us_per_step']:.1f} | "
                         f"{row['loop_slowdown']:.3f} | {row['loop_slowdown_no_runqueue']:.3f} | "
                         f"{row['whole_s']:.2f} | {ratio} | {row['exit_s']:.2f} | {landed} |")
        lines += ["", "where the loop's time goes, µs per step (medians): the main thread on CPU, "
                  "asleep (GIL), waiting for a CPU; CPU of the process's other threads and of "
                  "its children during the loop; CPU s of the whole process tree",
                  "| client | main CPU | main asleep | main run queue | other threads CPU | "
                  "children CPU | GC, any thread (full collections) | tree CPU s |",
                  "|---|---|---|---|---|---|---|---|"]
        for client, row in rows.items():
            lines.append(f"| {LABELS[client]} | {row['main_cpu_us_per_step']:.1f} | "
                         f"{row['main_sleep_us_per_step']:.1f} | {row['main_runqueue_us_per_step']:.1f} | "
                         f"{row['other_threads_cpu_us_per_step']:.1f} | "
                         f"{row['children_cpu_us_per_step']:.1f} | {row['gc_us_per_step']:.1f} "
                         f"({row['gc_full']:.0f}) | {row['tree_cpu_s']:.2f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
