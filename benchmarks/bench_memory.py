"""Memory benchmark (issue 15): RSS of a training process over 1M `run.log` calls against a
dead tracking store, for both writers, against the bridge-off baseline.

    python benchmarks/bench_memory.py             # 1M calls, ~3-4 minutes on 2 cores
    python benchmarks/bench_memory.py --quick     # 500k calls
    python benchmarks/bench_memory.py --store silent --json out.json

The store is dead: `refused` (default) is a 127.0.0.1 port nobody listens on; `silent` is a
listener that accepts connections and never answers. Nothing can be delivered, so the
bridge's queue fills to AZML_V1_BRIDGE_QUEUE_MAX (100,000 by default) and stays there while
the writer retries (AZML_V1_BRIDGE_RETRY_SECONDS, 30 s), then spills to the journal.

Every process (fresh interpreter) has the same shape: `import mlflow`, `import azureml.core`,
`Run.get_context()` (a real `_OfflineRun`), then a loop of `run.log("loss", v)`. The baseline
is the bridge off (`AZML_V1_BRIDGE_MODE=off`; the loop calls a no-op instead of v1's offline
`log`, which prints every value). RSS (VmRSS) and peak RSS (VmHWM) are read from
/proc/self/status at checkpoints (by default 250k and 1M calls); with the writer process, the
child's RSS is read from /proc too and reported apart. The figure is the training process's
peak RSS above the baseline's; memory is bounded when the peak at the last checkpoint is
within `--slack` MB of the peak at the first.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHECKPOINTS = (250_000, 1_000_000)
# The first checkpoint must be past the plateau: the queue's cap (100,000) plus what the
# writer holds in its cycle (up to 50,000) is reached after ~150,000 calls.
QUICK_CHECKPOINTS = (250_000, 500_000)


# ------------------------------------------------------------------ the training process

def status_mb(pid="self") -> dict:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return values


def children() -> list:
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
        except OSError:
            pass
    return pids


def worker(args) -> dict:
    import mlflow  # noqa: F401  (the baseline has MLflow imported too)
    if args.worker != "off":
        import azml_v1_bridge  # noqa: F401
    from azureml.core import Run

    run = Run.get_context()
    log = run.log if args.worker != "off" else (lambda name, value: None)
    points = []
    done = 0
    t0 = time.perf_counter()
    for target in args.checkpoints:
        for i in range(done, target):
            log("loss", i * 0.001)
        done = target
        mine = status_mb()
        point = {"calls": target, "seconds": time.perf_counter() - t0,
                 "rss_mb": mine.get("VmRSS"), "hwm_mb": mine.get("VmHWM")}
        kids = [status_mb(pid) for pid in children()]
        kids = [k for k in kids if k]
        if kids:
            point["child_rss_mb"] = sum(k["VmRSS"] for k in kids)
            point["child_hwm_mb"] = sum(k["VmHWM"] for k in kids)
        if args.worker != "off":
            writer = azml_v1_bridge.bridge.STATE.writer
            point["queued"] = len(writer._queue) if writer is not None else 0
        points.append(point)
    print(json.dumps({"checkpoints": points}), flush=True)
    return {}


# ------------------------------------------------------------------ orchestration

class SilentListener:
    """Accepts TCP connections on 127.0.0.1 and never answers (reads and drops requests)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)  # held open, never read from or written to


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nobody listens there


def run_worker(kind: str, url: str, checkpoints, scratch: str, timeout: float = 900) -> dict:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("AZML_V1_BRIDGE_", "MLFLOW_", "AZUREML_")):
            del env[name]
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["HOME"] = os.path.join(scratch, "home")
    env["MLFLOW_TRACKING_URI"] = url
    env["AZML_V1_BRIDGE_REPORT"] = "0"
    env["AZML_V1_BRIDGE_EXIT_TIMEOUT"] = "10"  # the exit is not measured here: keep it short
    cwd = tempfile.mkdtemp(prefix=f"mem-{kind}-", dir=scratch)
    env["AZML_V1_BRIDGE_JOURNAL"] = os.path.join(cwd, "journal.jsonl")
    if kind == "off":
        env["AZML_V1_BRIDGE_MODE"] = "off"
    else:
        env["AZML_V1_BRIDGE_MODE"] = "mlflow"
        env["AZML_V1_BRIDGE_WRITER"] = kind
    start = time.monotonic()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind,
                           "--checkpoints", ",".join(map(str, checkpoints))],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.monotonic() - start
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", help="comma list of call counts (default 250000,1000000)")
    parser.add_argument("--quick", action="store_true", help="250k and 500k calls")
    parser.add_argument("--store", choices=("refused", "silent"), default="refused")
    parser.add_argument("--writers", default="thread,process")
    parser.add_argument("--slack", type=float, default=10.0,
                        help="MB the peak may grow from the first checkpoint to the last")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.checkpoints:
        args.checkpoints = [int(c) for c in args.checkpoints.split(",")]
    else:
        args.checkpoints = list(QUICK_CHECKPOINTS if args.quick else CHECKPOINTS)
    if args.worker:
        worker(args)
        return 0

    scratch = tempfile.mkdtemp(prefix="bench-memory-")
    os.makedirs(os.path.join(scratch, "home"))
    listener = SilentListener() if args.store == "silent" else None
    url = f"http://127.0.0.1:{listener.port if listener else dead_port()}"
    out = {"store": args.store, "url": url, "loadavg_start": os.getloadavg(),
           "checkpoints": args.checkpoints, "results": {}}
    try:
        for kind in ["off"] + [w for w in args.writers.split(",") if w]:
            print(f"{kind}: {args.checkpoints[-1]:,} calls against {url} ({args.store}) ...",
                  file=sys.stderr, flush=True)
            out["results"][kind] = run_worker(kind, url, args.checkpoints, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the journals of a million points
    out["loadavg_end"] = os.getloadavg()
    base = out["results"]["off"]["checkpoints"]
    ok = True
    lines = [f"store: {args.store} ({url}); load average {out['loadavg_start'][0]:.2f} at start, "
             f"{out['loadavg_end'][0]:.2f} at end",
             f"baseline (bridge off, MLflow imported): peak RSS "
             + ", ".join(f"{b['hwm_mb']:.1f} MB at {b['calls']:,}" for b in base), "",
             "| writer | calls | seconds | RSS above baseline MB | peak above baseline MB | "
             "queued | writer process RSS MB (peak) |", "|---|---|---|---|---|---|---|"]
    for kind, result in out["results"].items():
        if kind == "off":
            continue
        points = result["checkpoints"]
        for point, b in zip(points, base):
            point["rss_above_mb"] = point["rss_mb"] - b["rss_mb"]
            point["hwm_above_mb"] = point["hwm_mb"] - b["hwm_mb"]
            child = (f"{point['child_rss_mb']:.1f} ({point['child_hwm_mb']:.1f})"
                     if "child_rss_mb" in point else "-")
            lines.append(f"| {kind} | {point['calls']:,} | {point['seconds']:.1f} | "
                         f"{point['rss_above_mb']:.1f} | {point['hwm_above_mb']:.1f} | "
                         f"{point.get('queued', '-')} | {child} |")
        growth = points[-1]["hwm_above_mb"] - points[0]["hwm_above_mb"]
        result["bounded"] = growth <= args.slack
        result["peak_growth_mb"] = growth
        ok = ok and result["bounded"]
        lines.append(f"| {kind}: peak grew {growth:+.1f} MB from {points[0]['calls']:,} to "
                     f"{points[-1]['calls']:,} calls: {'bounded' if result['bounded'] else 'NOT BOUNDED'} "
                     f"| | | | | | |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
