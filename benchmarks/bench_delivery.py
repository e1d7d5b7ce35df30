"""Delivery benchmarks, side by side in one run, against a local `mlflow server`.

    python benchmarks/bench_delivery.py            # all three, ~3-4 minutes on 2 cores
    python benchmarks/bench_delivery.py --quick    # fewer rounds
    python benchmarks/bench_delivery.py --json out.json

1. Calling-thread cost of one `run.log` (median per call over rounds of N calls):
   the bridge in mlflow mode (writer process and writer thread) vs a direct
   `mlflow.log_metric` against the same server vs v1's own client (bridge not
   imported, a real `_SubmittedRun` talking to the loopback run-history emulator
   in tests/emulator.py). Wall time per call is what the training loop feels
   (the writer and the server run meanwhile); CPU is the calling thread's own.
2. A notebook-shaped workload: 3000 `log_row` calls of 15 numeric columns plus
   1000 `log` calls, end to end including the final flush, vs a hand-written
   `MlflowClient.log_batch` upload of the same 46,000 points (1000 per request,
   run creation included in both).
3. `import azml_v1_bridge` on its own (and whether it loaded mlflow), vs `import mlflow`.

Every measurement runs in a fresh interpreter (`--worker ...`); the server (fresh
sqlite database, served artifacts, one worker) and the emulator run in this process's
children/threads, so they never share a GIL with the code being measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")

N_CALLS = 20_000        # per round; below the queue cap, so no backpressure is measured
DIRECT_CALLS = 200
ROWS, COLUMNS, LOGS = 3000, 15, 1000


# ------------------------------------------------------------------ workers (fresh interpreters)

def _rounds(run, rounds: int, n: int, flush) -> dict:
    walls, cpus, procs = [], [], []
    for r in range(rounds):
        wall0, cpu0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
        for i in range(n):
            run.log("loss", i * 0.001)
        walls.append((time.perf_counter() - wall0) / n)
        cpus.append((time.thread_time() - cpu0) / n)
        procs.append((time.process_time() - proc0) / n)
        flush()  # not timed: the next round starts with an empty queue
    return {"wall_us": statistics.median(walls) * 1e6, "best_wall_us": min(walls) * 1e6,
            "cpu_us": statistics.median(cpus) * 1e6,
            "process_cpu_us": statistics.median(procs) * 1e6,
            "rounds_wall_us": [round(w * 1e6, 2) for w in walls]}


def worker_bridge_log(args) -> dict:
    import azml_v1_bridge
    from azureml.core import Run

    run = Run.get_context()
    for i in range(100):
        run.log("warm", float(i))
    run.flush()
    result = _rounds(run, args.rounds, args.n, run.flush)
    run.complete()
    result["mlflow_run_id"] = azml_v1_bridge.mlflow_run_id(run)
    return result


def worker_v1_log(args) -> dict:
    from azureml.core import Run
    from azureml.core.run import _SubmittedRun

    run = Run.get_context()
    assert isinstance(run, _SubmittedRun), type(run)
    for i in range(100):
        run.log("warm", float(i))
    run.flush()
    result = _rounds(run, args.rounds, args.n, run.flush)
    assert "azml_v1_bridge" not in sys.modules
    return result


def worker_direct(args) -> dict:
    import mlflow

    mlflow.start_run()
    for i in range(5):
        mlflow.log_metric("warm", float(i), step=i)
    walls = []
    for r in range(args.rounds):
        wall0 = time.perf_counter()
        for i in range(args.n):
            mlflow.log_metric("loss", i * 0.001, step=i)
        walls.append((time.perf_counter() - wall0) / args.n)
    mlflow.end_run()
    return {"wall_us": statistics.median(walls) * 1e6, "best_wall_us": min(walls) * 1e6}


def worker_notebook_bridge(args) -> dict:
    import azml_v1_bridge
    from azureml.core import Run

    if args.what == "warm":  # an earlier cell logged already: MLflow is loaded, the writer runs
        earlier = Run.get_context()
        earlier.log("earlier", 1.0)
        earlier.complete()
    run = Run.get_context()
    names = [f"col{j}" for j in range(COLUMNS)]
    wall0 = time.perf_counter()
    for i in range(ROWS):
        run.log_row("metrics", **{name: i * 0.5 + j for j, name in enumerate(names)})
        if i % (ROWS // LOGS) == 0:
            run.log("loss", 1.0 / (i + 1))
    calls = time.perf_counter() - wall0
    run.flush()
    total = time.perf_counter() - wall0
    run_id = azml_v1_bridge.mlflow_run_id(run)
    run.complete()
    return {"seconds": total, "calls_seconds": calls, "mlflow_run_id": run_id}


def worker_notebook_handwritten(args) -> dict:
    if args.what == "warm":
        from mlflow.tracking import MlflowClient

        MlflowClient().search_experiments(max_results=1)
    wall0 = time.perf_counter()
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    points = []
    for i in range(ROWS):
        now = int(time.time() * 1000)
        for j in range(COLUMNS):
            points.append(Metric(f"metrics.col{j}", i * 0.5 + j, now, i))
        if i % (ROWS // LOGS) == 0:
            points.append(Metric("loss", 1.0 / (i + 1), now, i // (ROWS // LOGS)))
    for k in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[k:k + 1000], synchronous=True)
    total = time.perf_counter() - wall0
    client.set_terminated(run_id)
    return {"seconds": total, "points": len(points), "mlflow_run_id": run_id}


def worker_import(args) -> dict:
    wall0 = time.perf_counter()
    if args.what == "bridge":
        import azml_v1_bridge  # noqa: F401
    elif args.what == "mlflow":
        import mlflow  # noqa: F401
    elif args.what == "azureml":
        import azureml.core  # noqa: F401
    return {"seconds": time.perf_counter() - wall0, "mlflow_loaded": "mlflow" in sys.modules}


WORKERS = {"bridge-log": worker_bridge_log, "v1-log": worker_v1_log, "direct": worker_direct,
           "notebook-bridge": worker_notebook_bridge,
           "notebook-handwritten": worker_notebook_handwritten, "import": worker_import}


# ------------------------------------------------------------------ orchestration

def run_worker(kind: str, env: dict, *extra: str, timeout: float = 900) -> dict:
    full = dict(os.environ)
    for name in list(full):
        if name.startswith(("AZML_V1_BRIDGE_", "MLFLOW_", "AZUREML_")):
            del full[name]
    full["PYTHONPATH"] = ROOT + os.pathsep + full.get("PYTHONPATH", "")
    full["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    full["AZML_V1_BRIDGE_REPORT"] = "0"
    full.update(env)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind, *extra],
                          env=full, capture_output=True, text=True, timeout=timeout,
                          cwd=tempfile.mkdtemp(prefix="bench-"))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import importlib.metadata as md

    versions = {}
    for package in ("mlflow", "azureml-core", "wrapt"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_start": os.getloadavg(), **versions}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--what", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=N_CALLS)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: 1,2,3")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    sys.path.insert(0, TESTS)
    from servers import MlflowServer

    rounds = 3 if args.quick else args.rounds
    repeats = 1 if args.quick else 3
    skip = set(filter(None, args.skip.split(",")))
    out: dict = {"machine": machine()}
    folder = tempfile.mkdtemp(prefix="bench-mlflow-")
    server = MlflowServer(folder).start()
    print(f"mlflow server {server.url} (sqlite {folder}/server.db)", file=sys.stderr)
    mlflow_env = {"MLFLOW_TRACKING_URI": server.url}
    try:
        if "1" not in skip:
            out["calls"] = part_calls(server, mlflow_env, rounds, args.n)
        if "2" not in skip:
            out["notebook"] = part_notebook(mlflow_env, repeats)
        if "3" not in skip:
            out["import"] = part_import(5 if not args.quick else 3)
    finally:
        server.stop()
    out["machine"]["loadavg_end"] = os.getloadavg()
    print(report(out))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


def part_calls(server, mlflow_env, rounds, n) -> dict:
    result = {}
    for writer in ("process", "thread"):
        print(f"1. bridge run.log, writer {writer} ...", file=sys.stderr)
        result[f"bridge_{writer}"] = run_worker(
            "bridge-log", {**mlflow_env, "AZML_V1_BRIDGE_MODE": "mlflow",
                           "AZML_V1_BRIDGE_WRITER": writer},
            "--rounds", str(rounds), "--n", str(n))
    print("1. direct mlflow.log_metric ...", file=sys.stderr)
    result["direct"] = run_worker("direct", mlflow_env, "--rounds", "1", "--n", str(DIRECT_CALLS))
    try:
        sys.path.insert(0, TESTS)
        from emulator import RunHistoryEmulator, unique_run_id
    except ImportError as exc:
        result["v1"] = {"pending": f"tests/emulator.py unavailable: {exc}"}
        return result
    print("1. v1's own client on the run-history emulator ...", file=sys.stderr)
    with RunHistoryEmulator() as emu:
        env = emu.env(unique_run_id("bench"), experiment="bench")
        env["AZML_V1_BRIDGE_MODE"] = "off"
        result["v1"] = run_worker("v1-log", env, "--rounds", str(rounds), "--n", str(n))
        result["v1"]["points_received"] = len(emu.metrics(env["AZUREML_RUN_ID"], "loss"))
    return result


def part_notebook(mlflow_env, repeats) -> dict:
    """warm: MLflow already loaded on both sides (an earlier cell logged); cold: a fresh
    interpreter, the window includes loading MLflow on both sides."""
    out = {}
    for state in ("warm", "cold"):
        runs: dict = {"bridge_process": [], "bridge_thread": [], "handwritten": []}
        for r in range(repeats):
            order = ["handwritten", "bridge_process", "bridge_thread"]
            if r % 2:
                order.reverse()  # alternate, so a growing database favours nobody
            for kind in order:
                print(f"2. notebook workload, {state}: {kind} (repeat {r + 1}/{repeats}) ...",
                      file=sys.stderr)
                if kind == "handwritten":
                    runs[kind].append(run_worker("notebook-handwritten", mlflow_env, "--what", state))
                else:
                    runs[kind].append(run_worker("notebook-bridge", {
                        **mlflow_env, "AZML_V1_BRIDGE_MODE": "mlflow",
                        "AZML_V1_BRIDGE_WRITER": kind.split("_")[1]}, "--what", state))
        out[state] = {kind: {"seconds": statistics.median(r["seconds"] for r in results),
                             "all_seconds": [round(r["seconds"], 3) for r in results],
                             **({"calls_seconds": statistics.median(r["calls_seconds"] for r in results)}
                                if "calls_seconds" in results[0] else {})}
                      for kind, results in runs.items()}
    return out


def part_import(repeats) -> dict:
    result = {}
    for what in ("bridge", "mlflow", "azureml"):
        print(f"3. import {what} ...", file=sys.stderr)
        samples = [run_worker("import", {}, "--what", what) for _ in range(repeats)]
        result[what] = {"seconds": statistics.median(s["seconds"] for s in samples),
                        "mlflow_loaded": samples[0]["mlflow_loaded"]}
    return result


def report(out: dict) -> str:
    m = out["machine"]
    lines = [f"machine: {m['nproc']} CPUs, {m['cpu']}; Python {m['python']}; mlflow {m['mlflow']}, "
             f"azureml-core {m['azureml-core']}; load average {m['loadavg_start'][0]:.2f} at start, "
             f"{m['loadavg_end'][0]:.2f} at end", ""]
    calls = out.get("calls")
    if calls:
        direct = calls["direct"]["wall_us"]
        v1 = calls["v1"].get("wall_us")
        lines += ["1. calling-thread cost of one run.log (per call: median over rounds, best round)",
                  "| client | wall µs/call | best round | thread CPU µs/call | process CPU µs/call | "
                  "direct ÷ this | this ÷ v1 |", "|---|---|---|---|---|---|---|"]
        for name, label in (("bridge_process", "bridge, mlflow mode, writer process (default)"),
                            ("bridge_thread", "bridge, mlflow mode, writer thread"),
                            ("v1", "v1's own client (bridge off, emulator)"),
                            ("direct", "mlflow.log_metric, same server")):
            row = calls.get(name, {})
            if "pending" in row:
                lines.append(f"| {label} | pending ({row['pending']}) | | | | | |")
                continue
            wall = row["wall_us"]
            cpu = f"{row['cpu_us']:.2f}" if "cpu_us" in row else "-"
            proc = f"{row['process_cpu_us']:.2f}" if "process_cpu_us" in row else "-"
            ratio_v1 = f"{wall / v1:.2f}" if v1 else "-"
            best = f"{row['best_wall_us']:.2f}" if "best_wall_us" in row else "-"
            lines.append(f"| {label} | {wall:.2f} | {best} | {cpu} | {proc} | {direct / wall:,.0f}× "
                         f"| {ratio_v1} |")
        lines.append("")
    notebook = out.get("notebook")
    if notebook:
        lines += [f"2. notebook workload ({ROWS} log_row × {COLUMNS} columns + {LOGS} log = "
                  f"{ROWS * COLUMNS + LOGS} points, end to end incl. the final flush; median)",
                  "| MLflow | client | seconds | ÷ hand-written log_batch | all repeats |",
                  "|---|---|---|---|---|"]
        for state in ("warm", "cold"):
            hand = notebook[state]["handwritten"]["seconds"]
            for name, label in (("bridge_process", "bridge, writer process (default)"),
                                ("bridge_thread", "bridge, writer thread"),
                                ("handwritten", "hand-written MlflowClient.log_batch")):
                row = notebook[state][name]
                lines.append(f"| {state} | {label} | {row['seconds']:.2f} | "
                             f"{row['seconds'] / hand:.3f} | {row['all_seconds']} |")
        lines.append("")
    imports = out.get("import")
    if imports:
        lines += ["3. import time (fresh interpreter, median)", "| import | seconds | mlflow loaded |",
                  "|---|---|---|"]
        for name in ("bridge", "mlflow", "azureml"):
            row = imports[name]
            label = {"bridge": "import azml_v1_bridge", "mlflow": "import mlflow",
                     "azureml": "import azureml.core"}[name]
            lines.append(f"| {label} | {row['seconds']:.3f} | {row['mlflow_loaded']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
