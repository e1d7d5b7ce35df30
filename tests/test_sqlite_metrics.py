"""The lean sqlite path (delivery.store.SqliteMetrics) writes what MLflow's own
SqlAlchemyStore.log_batch writes, or leaves the batch to it.

Each case writes the same batches into two runs of one real sqlite store: through the
bridge's Store (lean path) and through MLflow's SqlAlchemyStore.log_batch, then reads both
back with MlflowClient."""
import math
import shutil
import sqlite3
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from azml_v1_bridge.delivery.store import SqliteMetrics, Store


@pytest.fixture
def stores(tmp_path, empty_store_file):
    from mlflow.tracking import MlflowClient

    shutil.copyfile(empty_store_file, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return Store(uri), MlflowClient(uri), tmp_path / "mlflow.db"


def mlflow_log_batch(client, run_id, metrics):
    from mlflow.entities import Metric

    client._tracking_client.store.log_batch(
        run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in metrics], params=[], tags=[])


def comparable(value):
    return "nan" if math.isnan(value) else value  # nan != nan


def contents(client, run_id, keys):
    history = {(m.key, comparable(m.value), m.timestamp, m.step)
               for key in keys for m in client.get_metric_history(run_id, key)}
    latest = {key: comparable(value) for key, value in client.get_run(run_id).data.metrics.items()}
    return history, latest


def latest_rows(db_path, run_id):
    with sqlite3.connect(db_path) as conn:
        return sorted(conn.execute("SELECT key, value, timestamp, step, is_nan FROM latest_metrics "
                                   "WHERE run_uuid = ?", (run_id,)).fetchall())


points = st.tuples(
    st.sampled_from(["loss", "acc", "a/b", "x.y-z w"]),
    st.one_of(st.sampled_from([0.0, 1.0, -1.5, 2.5]), st.floats(allow_nan=True)),
    st.sampled_from([0, 1, 1_700_000_000_000, 1_700_000_000_001]),
    st.sampled_from([0, 1, 2, -3, 1 << 40]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(points, min_size=1, max_size=30), min_size=1, max_size=4))
def test_same_rows_as_mlflows_log_batch(stores, batches):
    """Duplicates within and across batches, ties, out-of-order steps, NaN and infinities:
    the same metric history and the same latest_metrics rows as MLflow's path."""
    store, client, db_path = stores
    lean_run, mlflow_run = (client.create_run("0").info.run_id for _ in range(2))
    before = store._sqlite.points if store._sqlite else 0
    for batch in batches:
        store.log_batch(lean_run, list(batch), [], [])
        mlflow_log_batch(client, mlflow_run, batch)
    keys = {k for batch in batches for k, *_ in batch}
    assert contents(client, lean_run, keys) == contents(client, mlflow_run, keys)
    assert latest_rows(db_path, lean_run) == latest_rows(db_path, mlflow_run)
    finite = [b for b in batches if all(math.isfinite(v) for _, v, _, _ in b)]
    # the batches it can vouch for did take the lean path
    assert store._sqlite.points - before == sum(len(b) for b in finite)


def test_the_common_batch_takes_the_lean_path(stores):
    store, client, _ = stores
    run_id = client.create_run("0").info.run_id
    store.log_batch(run_id, [("loss", float(i), 1_700_000_000_000 + i, i) for i in range(1000)],
                    [], [])
    assert isinstance(store._sqlite, SqliteMetrics)
    assert store._sqlite.points == 1000
    assert len({m.step for m in client.get_metric_history(run_id, "loss")}) == 1000
    assert client.get_run(run_id).data.metrics["loss"] == 999.0
    store.log_batch(run_id, [("loss", 5.0, 1, 5000)], [], [("stage", "dev")])  # with a tag
    assert store._sqlite.points == 1000  # MLflow's path
    assert client.get_run(run_id).data.tags["stage"] == "dev"
    assert client.get_run(run_id).data.metrics["loss"] == 5.0


def test_a_deleted_run_gets_mlflows_error_and_no_rows(stores):
    """The run check comes after the writes in the same transaction: they are rolled back,
    and MLflow's path raises its own error for the run."""
    from mlflow.exceptions import MlflowException

    store, client, db_path = stores
    run_id = client.create_run("0").info.run_id
    client.delete_run(run_id)
    with pytest.raises(MlflowException) as raised:
        store.log_batch(run_id, [("loss", 1.0, 1, 1)], [], [])
    with pytest.raises(MlflowException) as expected:
        mlflow_log_batch(client, run_id, [("loss", 1.0, 1, 1)])
    assert str(raised.value) == str(expected.value)
    client.restore_run(run_id)
    assert client.get_metric_history(run_id, "loss") == []
    assert latest_rows(db_path, run_id) == []
    assert store._sqlite.usable and store._sqlite.points == 0


def test_a_run_that_is_not_there_gets_mlflows_error(stores):
    from mlflow.exceptions import MlflowException

    store, client, _ = stores
    client.create_run("0")
    with pytest.raises(MlflowException) as raised:
        store.log_batch("0" * 32, [("loss", 1.0, 1, 1)], [], [])
    with pytest.raises(MlflowException) as expected:
        mlflow_log_batch(client, "0" * 32, [("loss", 1.0, 1, 1)])
    assert str(raised.value) == str(expected.value)
    assert store._sqlite.usable


def test_a_name_mlflow_refuses_gets_mlflows_error(stores):
    from mlflow.exceptions import MlflowException

    store, client, _ = stores
    run_id = client.create_run("0").info.run_id
    bad = [("loss", 1.0, 1, 1), ("../escape", 2.0, 1, 1)]
    with pytest.raises(MlflowException) as raised:
        store.log_batch(run_id, bad, [], [])
    with pytest.raises(MlflowException) as expected:
        mlflow_log_batch(client, run_id, bad)
    assert str(raised.value) == str(expected.value)
    assert client.get_metric_history(run_id, "loss") == []


def test_a_locked_database_is_waited_for_once_and_the_lean_path_stays(stores):
    """Another process holds the write lock: the lean path waits its busy timeout once and
    raises sqlite's "database is locked" (the writer retries that as a busy store) instead
    of handing the batch to MLflow's path to wait as long again (20 s + 20 s); it stays on,
    and writes again once the lock is gone."""
    from azml_v1_bridge.causes import classify

    store, client, db_path = stores
    run_id = client.create_run("0").info.run_id
    store.log_batch(run_id, [("loss", 0.0, 1, 0)], [], [])  # the lean path exists
    lean = store._sqlite
    lean.busy_ms = 200  # MLflow's own 20 s wait is what a second wait would add
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = []

        def attempt():
            started = time.monotonic()
            try:
                store.log_batch(run_id, [("loss", 1.0, 2, 1)], [], [])
                result.append(("written", time.monotonic() - started))
            except Exception as exc:
                result.append((exc, time.monotonic() - started))

        worker = threading.Thread(target=attempt)
        worker.start()
        worker.join(120)
        (outcome, seconds), = result
        assert isinstance(outcome, Exception) and "database is locked" in str(outcome)
        assert classify(outcome).transient  # the writer's retry, not the journal at once
        assert seconds < 15, seconds  # MLflow's path would have waited 20 s more
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert lean.usable
    store.log_batch(run_id, [("loss", 1.0, 2, 1)], [], [])
    assert lean.points == 2
    assert {m.step for m in client.get_metric_history(run_id, "loss")} == {0, 1}


def test_the_lean_path_checks_mlflows_limits_itself_and_stays_on(stores):
    """What MLflow's log_batch refuses (a key over 250 characters, over 1000 metrics a batch, a
    timestamp past a signed 64-bit integer) is left to MLflow's path, which names the error;
    none of them switches the lean path off for the rest of the process."""
    store, client, _ = stores
    run_id = client.create_run("0").info.run_id
    store.log_batch(run_id, [("loss", 0.0, 1, 0)], [], [])
    lean = store._sqlite
    cases = {"long key": [("k" * 251, 1.0, 1, 0)],
             "1001 points": [("many", float(i), 1, i) for i in range(1001)],
             "timestamp 2**63": [("loss", 1.0, 1 << 63, 5)]}
    for what, batch in cases.items():
        assert lean.write(run_id, batch) is False, what
        assert lean.usable, what
    assert client.get_run(run_id).data.metrics.keys() == {"loss"}
    store.log_batch(run_id, [("loss", 2.0, 3, 1)], [], [])
    assert lean.points == 2
