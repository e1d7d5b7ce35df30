"""Scale benchmark (issue 27): many ranks into one team server, and a slow store.

    python benchmarks/bench_scale.py --quick        # N = 1, 4, 16; 500 points/s a rank for 5 s
    python benchmarks/bench_scale.py                # N = 1, 4, 16, 64; 1000 points/s for 10 s
    python benchmarks/bench_scale.py --parts slow   # only the slow store (part 2)
    python benchmarks/bench_scale.py --json out.json [--ns 1,4] [--shapes processes,launcher]
                                     [--clients bridge,handwritten] [--rate 1000] [--seconds 10]

Part 1, scale. One `mlflow server` (one worker, as tests/servers.py starts it) on a throwaway
PostgreSQL from Debian's packages (tests/servers.Postgres, the helper of the postgres-marked
test). For each N, N training processes each log `rate` points a second for `seconds`
(a paced loop: `run.log("loss", v, step=i)` of a v1 `Run.get_context()` run), in two shapes:

- `processes`: N plain processes, each its own run (for the bridge: `import azml_v1_bridge`
  in mlflow mode, the default writer process);
- `launcher`: `azml-v1-bridge run --one-run -- python launcher.py N`, which starts N ranks
  with RANK/LOCAL_RANK/WORLD_SIZE as torchrun does; one shared run, rank N > 0 logs
  `loss/rank_N` (ranks.py).

and two clients: `bridge` and `handwritten` (the same script, its loop appending
`mlflow.entities.Metric`s and calling `MlflowClient.log_batch` every 1000 points on the loop's
thread, the rest at the end; in the launcher shape the benchmark creates the one run and the
ranks log `loss`/`loss/rank_N` into it, as the bridge does). Every process imports
azureml.core and calls `Run.get_context()`; all ranks start their loops together (after
their imports, and for the bridge one warm-up point flushed: its writer process is up, as
the hand-written client has MLflow imported and its run made) at a signal from the
benchmark.

Per N, shape and client: the points a second that land (every point, from the start signal
to the moment the last one is in PostgreSQL: a poller counts rows of the `metrics` table),
the time from the last `run.log` of any rank (when it began) to everything landed, how long
the ranks' loops took (`seconds` when logging never held them up: a hand-written client's
synchronous log_batch does, the bridge's backpressure only past its queue bound),
the training processes' peak RSS (the rank's own VmHWM; the bridge's writer
process beside it, sampled from /proc every 0.2 s), the server's CPU, and the account: distinct (run, key,
step) read back with MlflowClient against the points logged.

Part 2, slow store. One training process (the bridge, default writer process) whose loop
does a ~100 us pure-Python step and `run.log("loss", v, step=i)` every step (10,000 points a
second), for `--slow-seconds`, against the same server behind tests/servers.LatencyProxy
(every request answered no sooner than `--slow-ms`, default 200 ms), and against the server
directly. Reported: the loop's slowdown (blocks without and with logging in one interpreter,
as bench_training's paired variant), the process's and its writer process's peak RSS, the
time from the last call to the process's exit, and every point accounted for.

The run time is bounded: each case has a deadline (`--case-timeout`); a case that misses it
is reported as such, its processes killed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")
sys.path.insert(0, TESTS)

BATCH = 1000  # the hand-written client's points a log_batch

RANK_SCRIPT = r'''
import json, os, sys, time


def hwm_kb():
    # this process's peak RSS (getrusage's ru_maxrss would keep the parent's from before exec)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


client = os.environ["BENCH_CLIENT"]
rank = int(os.environ.get("RANK") or os.environ.get("BENCH_INDEX") or 0)
rate, seconds = float(os.environ["BENCH_RATE"]), float(os.environ["BENCH_SECONDS"])
from azureml.core import Run

run = Run.get_context()
if client == "bridge":
    def log(i, v):
        run.log("loss", v, step=i)

    def finish():
        pass

    run.log("warmup", 0.0)  # the writer process up (MLflow imported) before the start,
    run.flush()             # as the hand-written client imported MLflow and made its run
else:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    mlflow_client = MlflowClient()
    run_id = os.environ.get("MLFLOW_RUN_ID")
    own_run = run_id is None
    if own_run:
        name = os.environ["MLFLOW_EXPERIMENT_NAME"]
        found = mlflow_client.get_experiment_by_name(name)
        try:
            experiment = found.experiment_id if found else mlflow_client.create_experiment(name)
        except Exception:  # another rank created it first
            experiment = mlflow_client.get_experiment_by_name(name).experiment_id
        run_id = mlflow_client.create_run(experiment).info.run_id
    key = "loss" if own_run or rank == 0 else f"loss/rank_{rank}"
    points = []

    def log(i, v):
        points.append(Metric(key, v, int(time.time() * 1000), i))
        if len(points) >= BATCH:
            mlflow_client.log_batch(run_id, metrics=points)
            points.clear()

    def finish():
        if points:
            mlflow_client.log_batch(run_id, metrics=points)
        if own_run:
            mlflow_client.set_terminated(run_id)

open(f"ready.{rank}", "w").close()
while not os.path.exists("go"):  # every rank starts its loop at once
    time.sleep(0.005)
total = int(rate * seconds)
t0 = time.time()
i = 0
last = t0
while i < total:
    due = min(total, int((time.time() - t0) * rate) + 1)
    while i < due:
        if i == total - 1:
            last = time.time()  # when the last call began (the hand-written one may block)
        log(i, rank + 1.0 / (i + 1))
        i += 1
    time.sleep(0.002)
loop_end = time.time()
finish()
with open(f"result.{rank}.json", "w") as fh:
    json.dump({"rank": rank, "first": t0, "last": last, "loop_end": loop_end, "calls": i,
                  "mlflow_loaded": "mlflow.tracking" in sys.modules,
               "maxrss_kb": hwm_kb()}, fh)
'''.replace("BATCH", str(BATCH))

LAUNCHER_SCRIPT = r'''
import os, subprocess, sys
n = int(sys.argv[1])
procs = [subprocess.Popen([sys.executable, "rank.py"],
                          env=dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n)))
         for r in range(n)]
sys.exit(max(p.wait() for p in procs))
'''

SLOW_SCRIPT = r'''
import json, os, statistics, sys, time
from azureml.core import Run
import azml_v1_bridge  # noqa: F401 (mlflow mode and the store come from the environment)

sys.path.insert(0, os.environ["BENCH_HERE"])
from bench_training import calibrate, step

k = calibrate(int(os.environ["BENCH_K"]))["k"]
run = Run.get_context()
blocks = int(os.environ["BENCH_BLOCKS"])
without, with_, rss = [], [], []
i = 0


def rss_kb(pid="self", field="VmRSS:"):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


t_start = time.perf_counter()
for b in range(blocks):
    logs = b % 4 in (1, 2)  # without, with, with, without
    t = time.perf_counter()
    if logs:
        for _ in range(1000):
            run.log("loss", step(k) * 1e-9 + i, step=i)
            i += 1
    else:
        for _ in range(1000):
            step(k)
    (with_ if logs else without).append(time.perf_counter() - t)
    rss.append(rss_kb())
loop = time.perf_counter() - t_start
last = time.monotonic()
print(json.dumps({"ratio": statistics.median(with_) / statistics.median(without),
                  "with_block_max_s": max(with_), "without_block_s": statistics.median(without),
                  "loop_s": loop, "points": i, "last": last, "rss_kb": rss,
                  "maxrss_kb": rss_kb(field="VmHWM:")}), flush=True)
'''


# ------------------------------------------------------------------ measuring

def descendants(root: int) -> list:
    """Pids of every process under `root` (from /proc's parent links)."""
    children: dict = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, ()):
            out.append(child)
            todo.append(child)
    return out


def rss_and_kind(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/status") as fh:
            rss = next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)
    except OSError:
        return None
    kind = ("writer" if "delivery.sidecar" in cmd else "rank" if "rank.py" in cmd
            else "slow" if "slow.py" in cmd else "other")
    return rss, kind


class Sampler(threading.Thread):
    """Peak RSS per process under `root`, by kind (rank / writer), every `every` seconds."""

    def __init__(self, root: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.peaks: dict = {}  # pid -> (kind, peak kB)
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for pid in descendants(self.root):
                found = rss_and_kind(pid)
                if found is not None:
                    rss, kind = found
                    old = self.peaks.get(pid, (kind, 0))
                    self.peaks[pid] = (kind, max(old[1], rss))
            self.stop.wait(self.every)

    def by_kind(self, kind: str) -> list:
        return sorted(peak for k, peak in self.peaks.values() if k == kind)


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and its reaped children so far."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[j]) for j in (11, 12, 13, 14)) / ticks


def tree_cpu(pid: int) -> float:
    return cpu_seconds(pid) + sum(cpu_seconds(p) for p in descendants(pid))


class RowCounter:
    """Rows of PostgreSQL's `metrics` table (what has landed), through one connection."""

    def __init__(self, port: int):
        import psycopg2

        self.conn = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="mlflow")
        self.conn.autocommit = True

    def count(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM metrics")
            return cur.fetchone()[0]


def account(uri: str, experiment: str, timeout: float = 180.0) -> tuple[int, int]:
    """Distinct (run, key, step) of every `loss` series in the experiment, and its runs,
    read back with MlflowClient; again while the server is too busy to answer (at N = 64
    its database pool runs out: BAD_REQUEST "QueuePool limit")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _account(uri, experiment)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _account(uri: str, experiment: str) -> tuple[int, int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0, 0
    runs = client.search_runs([found.experiment_id], max_results=1000)
    pairs = set()
    for run in runs:
        for key in run.data.metrics:
            if key == "loss" or key.startswith("loss/rank_"):
                pairs.update((run.info.run_id, key, m.step)
                             for m in client.get_metric_history(run.info.run_id, key))
    return len(pairs), len(runs)


# ------------------------------------------------------------------ part 1: scale

def base_env(uri: str, experiment: str) -> dict:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("AZML_V1_BRIDGE_", "MLFLOW_", "AZUREML_")) or name in (
                "RANK", "LOCAL_RANK", "WORLD_SIZE"):
            del env[name]
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": experiment,
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "AZML_V1_BRIDGE_REPORT": "0",
                "HOME": os.environ.get("BENCH_HOME", os.environ.get("HOME", "/tmp"))})
    return env


def scale_case(n: int, shape: str, client: str, ctx: dict, args, tag: str) -> dict:
    from mlflow.tracking import MlflowClient

    experiment = f"scale-{shape}-{client}-{n}-{tag}"
    cwd = tempfile.mkdtemp(prefix=f"scale-{n}-", dir=ctx["scratch"])
    with open(os.path.join(cwd, "rank.py"), "w") as fh:
        fh.write(RANK_SCRIPT)
    with open(os.path.join(cwd, "launcher.py"), "w") as fh:
        fh.write(LAUNCHER_SCRIPT)
    env = base_env(ctx["url"], experiment)
    env.update({"BENCH_CLIENT": client, "BENCH_RATE": str(args.rate),
                "BENCH_SECONDS": str(args.seconds)})
    if client == "bridge":
        env["AZML_V1_BRIDGE_MODE"] = "mlflow"
    expected = n * int(args.rate * args.seconds)
    counter = ctx["counter"]
    out_path = os.path.join(cwd, "out.txt")
    out = open(out_path, "wb")
    err = open(os.path.join(cwd, "err.txt"), "wb")
    procs = []
    if shape == "processes":
        if client == "bridge":
            command = [sys.executable, "-c",
                       "import azml_v1_bridge, runpy; runpy.run_path('rank.py', run_name='__main__')"]
        else:
            command = [sys.executable, "rank.py"]
        for r in range(n):
            procs.append(subprocess.Popen(command, cwd=cwd, env=dict(env, BENCH_INDEX=str(r)),
                                          stdout=out, stderr=err, start_new_session=True))
    else:
        if client == "bridge":
            command = [sys.executable, "-m", "azml_v1_bridge_tools.cli", "run", "--one-run",
                       "--mode", "mlflow", "--", sys.executable, "launcher.py", str(n)]
        else:
            mc = MlflowClient(ctx["url"])
            exp_id = mc.create_experiment(experiment)
            env["MLFLOW_RUN_ID"] = mc.create_run(exp_id).info.run_id
            command = [sys.executable, "launcher.py", str(n)]
        procs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err,
                                      start_new_session=True))
    sampler = Sampler(os.getpid())
    sampler.start()
    deadline = time.monotonic() + args.case_timeout
    result = {"n": n, "shape": shape, "client": client, "expected": expected}
    try:
        while sum(name.startswith("ready.") for name in os.listdir(cwd)) < n:
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("ranks did not all start")
            time.sleep(0.05)
        before = counter.count()  # the bridge's warm-up points are in
        server_cpu0 = tree_cpu(ctx["server_pid"])
        t_go = time.time()
        open(os.path.join(cwd, "go"), "w").close()
        landed_at, count = None, 0
        while time.monotonic() < deadline:
            count = counter.count() - before
            if count >= expected and landed_at is None:
                landed_at = time.time()
            if landed_at is not None and all(p.poll() is not None for p in procs):
                break
            if all(p.poll() is not None for p in procs) and landed_at is None:
                # everyone left: what is in the store now is all there will be
                count = counter.count() - before
                if count < expected:
                    break
            time.sleep(0.1)
        result["server_cpu_s"] = tree_cpu(ctx["server_pid"]) - server_cpu0
        exited = [p.poll() for p in procs]
        if any(code is None for code in exited):
            result["timed_out"] = True
        result["exit_codes"] = sorted(set(c for c in exited if c is not None))
    finally:
        sampler.stop.set()
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        out.close()
        err.close()
    lines = []
    for name in os.listdir(cwd):
        if name.startswith("result."):
            with open(os.path.join(cwd, name)) as fh:
                lines.append(json.load(fh))
    last = max((line["last"] for line in lines), default=None)
    calls = sum(line["calls"] for line in lines)
    ranks_rss = [line["maxrss_kb"] for line in lines]  # each rank's own peak (getrusage)
    writers_rss = sampler.by_kind("writer")
    distinct, runs = account(ctx["url"], experiment)
    result.update({
        "landed_rows": count, "distinct_read_back": distinct, "runs": runs, "calls": calls,
        "all_landed": distinct == expected and count >= expected,
        "points_per_s_landed": (expected / (landed_at - t_go)) if landed_at else None,
        "last_call_to_landed_s": (landed_at - last) if landed_at and last else None,
        "call_rate": (calls / (max(line["loop_end"] for line in lines) - t_go)) if lines else None,
        "loop_s": [round(min(line["loop_end"] - line["first"] for line in lines), 2),
                   round(max(line["loop_end"] - line["first"] for line in lines), 2)]
        if lines else None,
        "rank_rss_mb": [round(statistics.median(ranks_rss) / 1024, 1),
                        round(max(ranks_rss) / 1024, 1)] if ranks_rss else None,
        "writer_rss_mb": [round(statistics.median(writers_rss) / 1024, 1),
                          round(max(writers_rss) / 1024, 1)] if writers_rss else None,
        "mlflow_in_ranks": sum(line.get("mlflow_loaded", False) for line in lines),
        "stderr_tail": open(os.path.join(cwd, "err.txt"), errors="replace").read()[-1500:],
    })
    shutil.rmtree(cwd, ignore_errors=True)
    return result


# ------------------------------------------------------------------ part 2: slow store

def slow_case(label: str, url: str, ctx: dict, args, k: int) -> dict:
    experiment = f"slow-{label}-{time.time_ns()}"
    cwd = tempfile.mkdtemp(prefix="slow-", dir=ctx["scratch"])
    with open(os.path.join(cwd, "slow.py"), "w") as fh:
        fh.write(SLOW_SCRIPT)
    env = base_env(url, experiment)
    blocks = max(4, int(args.slow_seconds * 10) // 4 * 4)  # 1000 steps of ~100 us a block
    env.update({"AZML_V1_BRIDGE_MODE": "mlflow", "BENCH_HERE": HERE, "BENCH_K": str(k),
                "BENCH_BLOCKS": str(blocks)})
    out_path = os.path.join(cwd, "out.txt")
    with open(out_path, "wb") as out, open(os.path.join(cwd, "err.txt"), "wb") as err:
        proc = subprocess.Popen([sys.executable, "slow.py"], cwd=cwd, env=env, stdout=out,
                                stderr=err, start_new_session=True)
        sampler = Sampler(os.getpid())
        sampler.start()
        try:
            proc.wait(timeout=args.case_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        end = time.monotonic()
        sampler.stop.set()
    lines = [json.loads(line) for line in open(out_path) if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"slow case {label}: {open(os.path.join(cwd, 'err.txt')).read()[-3000:]}")
    r = lines[-1]
    distinct, runs = account(ctx["url"], experiment)
    writers = sampler.by_kind("writer")
    shutil.rmtree(cwd, ignore_errors=True)
    rss = r.pop("rss_kb")
    return {"label": label, "ratio": r["ratio"], "loop_s": r["loop_s"], "points": r["points"],
            "exit_s": end - r["last"], "rss_mb_first_last_max": [round(rss[0] / 1024, 1),
                                                               round(rss[-1] / 1024, 1),
                                                               round(max(rss) / 1024, 1)],
            "maxrss_mb": round(r["maxrss_kb"] / 1024, 1),
            "writer_rss_mb": round(max(writers) / 1024, 1) if writers else None,
            "landed": distinct, "all_landed": distinct == r["points"], "exit_code": proc.returncode}


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1,4,16; 500 points/s; 5 s")
    parser.add_argument("--parts", default="scale,slow")
    parser.add_argument("--ns", default=None, help="rank counts (default 1,4,16,64)")
    parser.add_argument("--shapes", default="processes,launcher")
    parser.add_argument("--clients", default="bridge,handwritten")
    parser.add_argument("--rate", type=float, default=None, help="points a second a rank")
    parser.add_argument("--seconds", type=float, default=None, help="seconds each rank logs")
    parser.add_argument("--slow-ms", type=float, default=200.0)
    parser.add_argument("--slow-seconds", type=float, default=None,
                        help="seconds of the slow-store loop (default 20, --quick 8)")
    parser.add_argument("--case-timeout", type=float, default=600.0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    ns = [int(x) for x in (args.ns or ("1,4,16" if args.quick else "1,4,16,64")).split(",")]
    args.rate = args.rate or (500.0 if args.quick else 1000.0)
    args.seconds = args.seconds or (5.0 if args.quick else 10.0)
    args.slow_seconds = args.slow_seconds or (8.0 if args.quick else 20.0)
    parts = args.parts.split(",")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and PostgreSQL

    from servers import LatencyProxy, MlflowServer, Postgres, postgres_binaries, postgres_missing

    missing = postgres_missing()
    if missing:
        print(f"bench_scale: {missing}", file=sys.stderr)
        return 2
    scratch = tempfile.mkdtemp(prefix="bench-scale-")
    os.environ["BENCH_HOME"] = os.path.join(scratch, "home")
    os.makedirs(os.environ["BENCH_HOME"])
    out: dict = {"machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                             "loadavg_start": os.getloadavg()},
                 "rate": args.rate, "seconds": args.seconds, "ns": ns, "scale": [], "slow": []}
    database = Postgres(postgres_binaries()).start()
    server = None
    try:
        server = MlflowServer(os.path.join(scratch, "server"), backend_uri=database.uri)
        server.start(timeout=180)
        ctx = {"scratch": scratch, "url": server.url, "server_pid": server.proc.pid,
               "counter": RowCounter(database.port)}
        print(f"mlflow server {server.url} on PostgreSQL :{database.port}", file=sys.stderr)
        if "scale" in parts:
            for n in ns:
                for shape in args.shapes.split(","):
                    for client in args.clients.split(","):
                        print(f"  N={n:3} {shape:9} {client:11} ...", end="", file=sys.stderr,
                              flush=True)
                        try:
                            row = scale_case(n, shape, client, ctx, args, "r0")
                        except Exception as exc:
                            row = {"n": n, "shape": shape, "client": client, "error": str(exc)}
                        out["scale"].append(row)
                        print(" " + summary(row), file=sys.stderr)
        if "slow" in parts:
            sys.path.insert(0, HERE)
            from bench_training import calibrate

            k = calibrate()["k"]
            proxy = LatencyProxy(server.port, args.slow_ms / 1000)
            try:
                for label, url in (("direct", server.url), (f"{args.slow_ms:.0f} ms", proxy.url)):
                    print(f"  slow store: {label} ...", end="", file=sys.stderr, flush=True)
                    row = slow_case(label, url, ctx, args, k)
                    out["slow"].append(row)
                    print(f" ratio {row['ratio']:.3f} exit {row['exit_s']:.1f}s rss "
                          f"{row['rss_mb_first_last_max']} landed {row['landed']}/{row['points']}",
                          file=sys.stderr)
            finally:
                proxy.close()
    finally:
        if server is not None:
            server.stop()
        database.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    out["machine"]["loadavg_end"] = os.getloadavg()
    print(report(out))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    lost = [r for r in out["scale"] + out["slow"] if r.get("all_landed") is False]
    return 1 if lost else 0


def summary(row: dict) -> str:
    if "error" in row:
        return "ERROR " + row["error"]
    pps = row["points_per_s_landed"]
    tail = row["last_call_to_landed_s"]
    return (f"landed {row['distinct_read_back']}/{row['expected']} "
            f"{pps:,.0f} points/s" if pps else "NOT ALL LANDED") + (
        f", last call -> landed {tail:.1f}s" if tail is not None else "") + (
        f", rank RSS {row['rank_rss_mb']} MB, writer {row['writer_rss_mb']} MB, "
        f"server CPU {row['server_cpu_s']:.1f}s")


LABELS = {"bridge": "bridge (writer process)", "handwritten": "hand-written log_batch"}


def report(out: dict) -> str:
    lines = [f"{out['machine']['nproc']} CPUs, Python {out['machine']['python']}; load average "
             f"{out['machine']['loadavg_start'][0]:.1f} at start, "
             f"{out['machine']['loadavg_end'][0]:.1f} at end; {out['rate']:.0f} points/s a rank "
             f"for {out['seconds']:.0f} s", ""]
    if out["scale"]:
        lines += ["| N | shape | client | offered points/s | ranks' loops s (min, max; "
                  f"{out['seconds']:.0f} s if never held up) | landed points/s | last call → all "
                  "landed s | rank peak RSS MB (median, max) | writer process RSS MB (median, "
                  "max) | server CPU s | every point |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in out["scale"]:
            if "error" in r:
                lines.append(f"| {r['n']} | {r['shape']} | {LABELS[r['client']]} | | | ERROR: "
                             f"{r['error']} | | | | | |")
                continue
            pps = f"{r['points_per_s_landed']:,.0f}" if r["points_per_s_landed"] else "-"
            tail = (f"{r['last_call_to_landed_s']:.1f}" if r["last_call_to_landed_s"] is not None
                    else "-")
            lines.append(
                f"| {r['n']} | {r['shape']} | {LABELS[r['client']]} | "
                f"{r['n'] * out['rate']:,.0f} | {r['loop_s']} | {pps} | {tail} | {r['rank_rss_mb']} | "
                f"{r['writer_rss_mb'] or '-'} | {r['server_cpu_s']:.1f} | "
                f"{'yes' if r['all_landed'] else 'NO'} ({r['distinct_read_back']}/{r['expected']}) |")
        lines.append("")
    if out["slow"]:
        lines += ["| store | loop slowdown (paired blocks) | loop s | exit s | RSS MB first, last, "
                  "max block | writer process RSS MB | every point |", "|---|---|---|---|---|---|---|"]
        for r in out["slow"]:
            lines.append(f"| {r['label']} | {r['ratio']:.3f} | {r['loop_s']:.1f} | {r['exit_s']:.1f} "
                         f"| {r['rss_mb_first_last_max']} | {r['writer_rss_mb']} | "
                         f"{'yes' if r['all_landed'] else 'NO'} ({r['landed']}/{r['points']}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
