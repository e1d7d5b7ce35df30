"""Experiment: Python cost per metric point of the ways to write a batch into MLflow's sqlite store.

    python benchmarks/experiments/sqlite_paths.py [--points 20000]

1. `SqlAlchemyStore.log_batch` with MLflow `Metric` entities (what deliver.Writer does today
   on sqlite, in the writer thread or in the writer process);
2. the same under `PRAGMA journal_mode=WAL; synchronous=NORMAL`;
3. plain `sqlite3` `executemany` into MLflow's own `metrics` table plus an upsert of
   `latest_metrics` (the rows SqlAlchemyStore writes), one transaction per 1000 points.

Reported: thread CPU µs per point (GIL-holding Python work, what a writer thread takes from
the training loop) and wall µs per point. Each path writes into its own run of a fresh copy
of an empty, migrated store; the rows are read back with MlflowClient and compared.
"""
import argparse
import os
import shutil
import sqlite3
import tempfile
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=20_000)
    args = parser.parse_args()
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    folder = tempfile.mkdtemp(prefix="sqlite-paths-")
    path = os.path.join(folder, "mlflow.db")
    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    client.search_experiments()
    store = client._tracking_client.store
    now = int(time.time() * 1000)
    points = [("loss", i * 0.001, now + i, i) for i in range(args.points)]
    results = {}

    def timed(name, fn):
        run_id = client.create_run("0").info.run_id
        c0, w0 = time.thread_time(), time.perf_counter()
        fn(run_id)
        c1, w1 = time.thread_time(), time.perf_counter()
        history = client.get_metric_history(run_id, "loss")
        assert len({m.step for m in history}) == args.points, (name, len(history))
        latest = client.get_run(run_id).data.metrics["loss"]
        assert latest == points[-1][1], (name, latest)
        results[name] = ((c1 - c0) / args.points * 1e6, (w1 - w0) / args.points * 1e6)

    def sqlalchemy(run_id):
        for b in range(0, len(points), 1000):
            store.log_batch(run_id, metrics=[Metric(*p) for p in points[b:b + 1000]],
                            params=[], tags=[])

    timed("SqlAlchemyStore.log_batch (today)", sqlalchemy)

    def pragmas(conn, record):
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    from sqlalchemy import event

    event.listen(store.engine, "connect", pragmas)
    store.engine.dispose()  # new connections get the pragmas
    timed("SqlAlchemyStore.log_batch, WAL + synchronous=NORMAL", sqlalchemy)

    def raw(run_id):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=20000")
        for b in range(0, len(points), 1000):
            chunk = points[b:b + 1000]
            rows = [(k, v, ts, s, 0, run_id) for k, v, ts, s in chunk]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR IGNORE INTO metrics (key, value, timestamp, step, is_nan, "
                             "run_uuid) VALUES (?, ?, ?, ?, ?, ?)", rows)
            # latest_metrics: the max (step, timestamp, value) per key, as MLflow keeps it
            latest = {}
            for row in rows:
                cur = latest.get(row[0])
                if cur is None or (row[3], row[2], row[1]) > (cur[3], cur[2], cur[1]):
                    latest[row[0]] = row
            conn.executemany(
                "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key, run_uuid) DO UPDATE SET "
                "value=excluded.value, timestamp=excluded.timestamp, step=excluded.step, "
                "is_nan=excluded.is_nan WHERE (excluded.step, excluded.timestamp, excluded.value) "
                "> (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)",
                list(latest.values()))
            conn.execute("COMMIT")
        conn.close()

    timed("sqlite3 executemany (metrics + latest_metrics upsert)", raw)

    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    metrics_table, latest_table = SqlMetric.__table__, SqlLatestMetric.__table__

    def core(run_id):
        # SQLAlchemy Core on the store's own engine: no ORM unit of work per row
        for b in range(0, len(points), 1000):
            chunk = points[b:b + 1000]
            rows = [{"key": k, "value": v, "timestamp": ts, "step": s, "is_nan": False,
                     "run_uuid": run_id} for k, v, ts, s in chunk]
            latest = {}
            for row in rows:
                cur = latest.get(row["key"])
                if cur is None or (row["step"], row["timestamp"], row["value"]) > (
                        cur["step"], cur["timestamp"], cur["value"]):
                    latest[row["key"]] = row
            with store.engine.begin() as conn:
                conn.execute(metrics_table.insert(), rows)
                upsert = sqlite_insert(latest_table)
                conn.execute(upsert.on_conflict_do_update(
                    index_elements=["key", "run_uuid"],
                    set_={c: upsert.excluded[c] for c in ("value", "timestamp", "step", "is_nan")}),
                    list(latest.values()))

    timed("SQLAlchemy Core executemany on the store's engine", core)
    print(f"{args.points} points, 1000 a batch; µs per point")
    print("| path | thread CPU µs/point | wall µs/point |\n|---|---|---|")
    for name, (cpu, wall) in results.items():
        print(f"| {name} | {cpu:.1f} | {wall:.1f} |")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
