"""Migrated code against the same script under the bridge: a logging-api-shaped workload, end to end.

    python benchmarks/bench_migrate.py [--rounds 5] [--points 500] [--json out.json] [--before-root DIR] [--stores sqlite,server]

The workload is the shape of Azure ML's `logging-api` notebook (scalars, a list, a loop of
`run.log` of numpy values and `log_row` of a cosine wave, a table, a file upload). Each round
runs, in fresh interpreters, each into a fresh copy of one sqlite store (`sqlite`) or a fresh
experiment of one `mlflow server` on 127.0.0.1 (sqlite behind it, served artifacts: `server`):
- the original script under the bridge (mlflow mode, as `migrate --check` runs it);
- the script `azml-v1-bridge migrate` makes of it, with plain MLflow.
With --before-root, a third client: the script as another checkout's `migrate` rewrote it (e.g.
the commit before a change, unpacked with `git archive`), not compared for equal records.
The orders alternate between rounds; the figures are medians of rounds and the ratio migrated
÷ bridge (goal: ≤ 1.5). Before timing, both records are read back and compared: the two
sides must record the same thing.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

WORKLOAD = '''"""Shaped like MachineLearningNotebooks' logging-api notebook."""
import os
import sys

import numpy as np
from azureml.core import Run

points = int(sys.argv[1]) if len(sys.argv) > 1 else 500
run = Run.get_context()
run.log(name="Sample Float", value=3.14)
run.log(name="Sample String", value="this is a string")
run.log_list(name="Fibonacci", value=[0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89])
for i in range(points):
    run.log(name="Sigmoid", value=1 / (1 + np.exp(-i / 50)))
    angle = i / 20.0
    run.log_row(name="Cosine Wave", angle=angle, cos=np.cos(angle))
sines = {"angle": [i / 10.0 for i in range(30)], "sine": [float(np.sin(i / 10.0)) for i in range(30)]}
run.log_table(name="Sine Wave", value=sines)
with open("notes.txt", "w") as fh:
    fh.write("uploaded\\n")
run.upload_file(name="notes.txt", path_or_stream="notes.txt")
run.complete()
'''
BOOT = ("import runpy, sys; sys.argv = sys.argv[1:]; import azml_v1_bridge; "
        "runpy.run_path(sys.argv[0], run_name='__main__')")


def timed(cmd, env, cwd) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[-2]} failed: {proc.stderr[-2000:]}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--points", type=int, default=500, help="iterations of the logging loop")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--before-root", help="also time the script as this checkout's migrate rewrote it")
    parser.add_argument("--stores", default="sqlite,server")
    args = parser.parse_args()
    from azml_v1_bridge_tools import migrate

    with tempfile.TemporaryDirectory(prefix="azml-bench-migrate-") as tmp:
        original = os.path.join(tmp, "original.py")
        with open(original, "w") as fh:
            fh.write(WORKLOAD)
        result = migrate.migrate_file(original)
        migrated = os.path.join(tmp, "migrated.py")
        with open(migrated, "w") as fh:
            fh.write(result.new)
        clients = ["bridge", "migrated"]
        if args.before_root:
            before = os.path.join(tmp, "before.py")
            code = ("import sys; from azml_v1_bridge_tools import migrate; "
                    "sys.stdout.write(migrate.migrate_file(sys.argv[1]).new)")
            text = subprocess.run([sys.executable, "-c", code, original], capture_output=True, text=True, check=True,
                                  env=dict(os.environ, PYTHONPATH=os.path.abspath(args.before_root)),
                                  cwd=tmp).stdout  # not this checkout: `-c` puts the folder first on sys.path
            if text == result.new:
                raise SystemExit(f"--before-root {args.before_root} rewrites the workload as this checkout does")
            with open(before, "w") as fh:
                fh.write(text)
            clients.append("before")
        template = os.path.join(tmp, "template.db")
        from mlflow.tracking import MlflowClient

        MlflowClient(f"sqlite:///{template}").search_experiments()  # the schema, made once
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AZML_V1_BRIDGE_"))}
        base.update(PYTHONPATH=ROOT, MPLBACKEND="Agg", MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")

        server = None
        if "server" in args.stores.split(","):
            sys.path.insert(0, os.path.join(ROOT, "tests"))
            from servers import MlflowServer

            server = MlflowServer(os.path.join(tmp, "server")).start()

        def side(name, n, store="sqlite"):
            work = os.path.join(tmp, f"{name}-{n}-{store}")
            os.makedirs(work)
            if store == "server":
                env = dict(base, MLFLOW_TRACKING_URI=server.url, MLFLOW_EXPERIMENT_NAME=f"{name}-{n}")
            else:
                shutil.copyfile(template, os.path.join(work, "mlflow.db"))
                env = dict(base, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db")
            if name == "bridge":
                env.update(AZML_V1_BRIDGE_MODE="mlflow", AZML_V1_BRIDGE_CHARTS="0", AZML_V1_BRIDGE_OUTPUTS="0",
                           AZML_V1_BRIDGE_REPORT="0", AZML_V1_BRIDGE_JOURNAL=os.path.join(work, "j.jsonl"))
                cmd = [sys.executable, "-c", BOOT, original, str(args.points)]
            else:
                cmd = [sys.executable, migrated if name == "migrated" else before, str(args.points)]
            return cmd, env, work

        # the same record on both sides, or the timing means nothing
        records = {}
        for name in ("bridge", "migrated"):
            cmd, env, work = side(name, "proof")
            timed(cmd, env, work)
            records[name] = migrate.read_record(env["MLFLOW_TRACKING_URI"], os.path.join(work, "dl"))
        diffs = migrate.compare_records(records["bridge"], records["migrated"])
        if diffs:
            raise SystemExit("the two records differ:\n" + "\n".join(diffs[:20]))
        counts = migrate._count(records["bridge"])
        stores = args.stores.split(",")
        times = {store: {name: [] for name in clients} for store in stores}
        try:
            for n in range(args.rounds):
                order = clients[n % len(clients):] + clients[:n % len(clients)]
                for store in stores:
                    for name in order:
                        times[store][name].append(timed(*side(name, n, store)))
        finally:
            if server is not None:
                server.stop()
    labels = {"bridge": "original under the bridge (mlflow mode)", "migrated": "migrated, plain MLflow",
              "before": "migrated by --before-root, plain MLflow"}
    print(f"logging-api workload, {args.points} loop iterations ({counts['metric points']} metric points, "
          f"{counts['artifacts']} artifacts, records equal), {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f}")
    worst, out = 0.0, {}
    for store in stores:
        med = {k: statistics.median(v) for k, v in times[store].items()}
        print(f"  store: {store}")
        print(f"    {'client':<44} {'median s':>9} {'best s':>8} {'÷ bridge':>9}")
        for name in clients:
            print(f"    {labels[name]:<44} {med[name]:>9.2f} {min(times[store][name]):>8.2f} "
                  f"{med[name] / med['bridge']:>9.2f}")
        worst = max(worst, med["migrated"] / med["bridge"])
        out[store] = {"times": times[store], "medians": med}
    print(f"  migrated ÷ bridge, worst store: {worst:.2f} (goal ≤ 1.5: {'met' if worst <= 1.5 else 'NOT met'})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"points": args.points, "rounds": args.rounds, "stores": out, "worst_ratio": worst,
                       "counts": counts}, fh, indent=1)
    return 0 if worst <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
