"""The background writer against real stores, with real faults.

Everything is read back with MlflowClient from a real `mlflow server` (or a sqlite
store); v1 runs are real azureml-core `Run.get_context()` offline runs. Process-level
behaviour (SIGTERM, fork) runs in fresh interpreters (`run_script`).
"""
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, run_script
from servers import restartable_mlflow_server, running  # noqa: F401  (fixture)
import azml_v1_bridge  # noqa: E402
from azml_v1_bridge import lifecycle  # noqa: E402

BRIDGE_ENV = ("AZML_V1_BRIDGE_RETRY_SECONDS", "AZML_V1_BRIDGE_QUEUE_MAX",
              "AZML_V1_BRIDGE_STRICT",
              "AZML_V1_BRIDGE_JOURNAL", "AZML_V1_BRIDGE_WRITER", "MLFLOW_RUN_ID")


def retire_writer():
    """The next call builds a writer from the configuration of now (the writer outlives
    `finish()`, and keeps the configuration it was built with)."""
    lifecycle.retire_writer()


@pytest.fixture
def mlflow_mode(bridge, monkeypatch):
    """Enable mlflow mode after the test set its variables; leave the bridge clean afterwards."""
    def enable(uri=None, **env):
        if uri is not None:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
        bridge.disable()
        bridge.enable("mlflow")
        retire_writer()
        return bridge

    yield enable
    azml_v1_bridge.finish()
    retire_writer()
    for name in BRIDGE_ENV:
        monkeypatch.delenv(name, raising=False)


def client_for(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def history(client, run_id, key):
    return sorted(((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)),
                  key=lambda p: (p[0], p[1]))


def same_value(a, b):
    return (a != a and b != b) or a == b and math.copysign(1, a) == math.copysign(1, b)


def writer():
    from azml_v1_bridge import bridge

    return bridge.STATE.writer


# ---------------------------------------------------------------- exactness


@pytest.mark.server
def test_n_points_in_n_points_out_exact(mlflow_server, mlflow_mode):
    """Values (awkward floats, NaN, infinities, -0.0), explicit and implicit steps, and the
    call-time timestamps all arrive as a direct MlflowClient.log_batch would store them."""
    from azureml.core import Run
    from mlflow.entities import Metric

    bridge = mlflow_mode(mlflow_server.url)
    rng = random.Random(7)
    specials = [0.0, -0.0, 1e-300, -1e300, 2.0 ** 53, 1 / 3, float("nan"), float("inf"),
                float("-inf"), 123456789.123456789, 5e-324]
    run = Run.get_context()
    sent = []  # (key, step, value, call start ms, call end ms)
    for i in range(2500):
        value = specials[i] if i < len(specials) else rng.uniform(-1e6, 1e6)
        before = int(time.time() * 1000)
        run.log("loss", value)                       # implicit step: 0, 1, 2...
        sent.append(("loss", i, value, before, int(time.time() * 1000)))
    for i, step in enumerate([0, 7, 7, 1000, 2 ** 40, 3]):
        before = int(time.time() * 1000)
        run.log("acc", i * 0.25, step=step)           # explicit steps, a repeated one
        sent.append(("acc", step, i * 0.25, before, int(time.time() * 1000)))
    for i in range(300):
        before = int(time.time() * 1000)
        run.log_row("table", x=float(i), y=i * 2)
        after = int(time.time() * 1000)
        sent.append(("table.x", i, float(i), before, after))
        sent.append(("table.y", i, float(i * 2), before, after))
    run.complete()

    client = client_for(mlflow_server.url)
    run_id = bridge.mlflow_run_id(run)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    # the reference: the same points, sent by hand with MlflowClient.log_batch
    reference = client.create_run("0").info.run_id
    points = [Metric(k, v, lo, s) for k, s, v, lo, hi in sent]
    for i in range(0, len(points), 1000):
        client.log_batch(reference, metrics=points[i:i + 1000], synchronous=True)
    for key in ("loss", "acc", "table.x", "table.y"):
        mine = [p for p in sent if p[0] == key]
        out = history(client, run_id, key)
        ref = history(client, reference, key)
        assert len(out) == len(mine) == len(ref), key
        expected = sorted(mine, key=lambda p: (p[1], p[3]))
        for (step, ts, value), (_, s, v, lo, hi), (_, _, rv) in zip(out, expected, ref):
            assert step == s
            assert lo <= ts <= hi
            assert same_value(value, rv), (key, step, value, rv)
    stats = writer().stats[run.__dict__["_azml_v1_bridge_record"].local_id]
    assert stats.metric_points == len(sent) and stats.journaled == 0


@pytest.mark.server
def test_growing_documents_are_whole_at_each_flush(mlflow_server, mlflow_mode, tmp_path):
    """Tables and text values are uploaded whole at every flush point (not once per call)."""
    import json

    import mlflow
    from azureml.core import Run

    bridge = mlflow_mode(mlflow_server.url)
    run = Run.get_context()
    for i in range(500):
        run.log_row("rows", epoch=i, phase="train")
        run.log("status", f"epoch {i}")
    run.flush()
    run_id = bridge.mlflow_run_id(run)

    def artifact(path):
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                    tracking_uri=mlflow_server.url,
                                                    dst_path=str(tmp_path / f"dl{time.time()}"))
        return open(local, encoding="utf-8").read()

    assert json.loads(artifact("rows.json")) == {"epoch": list(range(500)), "phase": ["train"] * 500}
    run.log_row("rows", epoch=500, phase="eval")
    run.complete()
    table = json.loads(artifact("rows.json"))
    assert table["epoch"] == list(range(501)) and table["phase"][-1] == "eval"
    assert artifact("status.txt").splitlines() == [f"epoch {i}" for i in range(500)]


# ---------------------------------------------------------------- faults


@pytest.mark.server
def test_server_killed_and_restarted_loses_nothing(restartable_mlflow_server, mlflow_mode,
                                                   tmp_path):
    """SIGKILL the server while the writer is sending, log on while it is down, restart it on
    the same port and database: every point arrives once, nothing is journaled."""
    from azureml.core import Run

    server = running(restartable_mlflow_server)
    bridge = mlflow_mode(server.url, AZML_V1_BRIDGE_RETRY_SECONDS=90)
    client = client_for(server.url)
    run = Run.get_context()
    for i in range(3000):
        run.log("loss", i * 0.5, step=i)
    run_id = bridge.mlflow_run_id(run)  # waits for the run to exist, not for the points
    deadline = time.monotonic() + 30
    while not client.get_metric_history(run_id, "loss") and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()                       # mid-flight: some batches landed, some did not
    for i in range(3000, 6000):
        run.log("loss", i * 0.5, step=i)
    run.tag("phase", "while down")
    time.sleep(1.5)                     # the writer is failing and retrying now
    server.start()
    for i in range(6000, 7000):
        run.log("loss", i * 0.5, step=i)
    run.complete()

    out = history(client, run_id, "loss")
    assert [s for s, _, _ in out] == list(range(7000))
    assert all(v == s * 0.5 for s, _, v in out)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.tags["phase"] == "while down"
    assert writer().journal is None
    assert not (tmp_path / "journal.jsonl").exists()


@pytest.mark.server
def test_store_back_after_the_retry_window_gets_the_journal_first(restartable_mlflow_server,
                                                                 mlflow_mode, tmp_path):
    """Down longer than the retry window: the run is journaled; once the server answers
    again the writer delivers that journal itself, then goes on live, in call order."""
    import json

    from azureml.core import Run

    server = running(restartable_mlflow_server)
    bridge = mlflow_mode(server.url, AZML_V1_BRIDGE_RETRY_SECONDS=1, AZML_V1_BRIDGE_STRICT=0)
    client = client_for(server.url)
    run = Run.get_context()
    for i in range(1000):
        run.log("loss", i * 0.5, step=i)
    run.tag("phase", "before")
    run.flush()
    run_id = bridge.mlflow_run_id(run)
    server.stop()
    for i in range(1000, 2000):
        run.log("loss", i * 0.5, step=i)
    run.tag("phase", "during")
    run.log_row("table", epoch=1)
    run.flush()                       # retried for a second, then journaled
    journal = tmp_path / "journal.jsonl"
    journaled = {p[3] for line in journal.read_text().splitlines()
                 for p in json.loads(line).get("m", [])}
    assert set(range(1000, 2000)) <= journaled
    server.start()
    for i in range(2000, 3000):
        run.log("loss", i * 0.5, step=i)
    run.tag("phase", "after")
    run.complete()

    assert [s for s, _, _ in history(client, run_id, "loss")] == list(range(3000))
    got = client.get_run(run_id)
    assert got.data.tags["phase"] == "after" and got.info.status == "FINISHED"
    assert got.data.metrics["table.epoch"] == 1.0
    stats = writer().stats[run.__dict__["_azml_v1_bridge_record"].local_id]
    assert stats.journaled == 0  # delivered: nothing left for `azml-v1-bridge replay`


def test_one_bad_item_never_sinks_a_batch(store, mlflow_mode, monkeypatch):
    """A param MLflow refuses (already set to another value) is isolated and reported; the
    metrics, params and tags sent in the same batch all land."""
    from azureml.core import Run

    existing = store.create_run("0")
    store.log_param(existing.info.run_id, "lr", "0.1")
    mlflow_mode(MLFLOW_RUN_ID=existing.info.run_id)
    run = Run.get_context()
    run.add_properties({"lr": "0.2", "batch": "32"})
    run.tag("stage", "dev")
    for i in range(1500):
        run.log("loss", float(i))
    run.flush()

    data = store.get_run(existing.info.run_id).data
    assert data.params == {"lr": "0.1", "batch": "32"}
    assert data.tags["stage"] == "dev"
    assert len(store.get_metric_history(existing.info.run_id, "loss")) == 1500
    stats = writer().stats[run.__dict__["_azml_v1_bridge_record"].local_id]
    assert stats.delivery_failures == 1
    assert [n["what"] for n in stats.notes] == ["rejected_by_mlflow"]
    assert stats.journaled == 0


def test_a_run_deleted_meanwhile_is_journaled(store, mlflow_mode, tmp_path):
    """The store answers but refuses the run (deleted): its data goes to the journal, nothing
    is retried for the whole window, the script goes on."""
    from azureml.core import Run

    existing = store.create_run("0")
    store.delete_run(existing.info.run_id)
    mlflow_mode(MLFLOW_RUN_ID=existing.info.run_id, AZML_V1_BRIDGE_RETRY_SECONDS=60,
                AZML_V1_BRIDGE_STRICT=0)
    run = Run.get_context()
    started = time.monotonic()
    for i in range(10):
        run.log("loss", float(i))
    run.flush()
    assert time.monotonic() - started < 20
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert sum(len(eval_line(line).get("m", [])) for line in lines) == 10


def eval_line(line):
    import json

    return json.loads(line)


def test_queue_is_bounded(store, mlflow_mode):
    """Past AZML_V1_BRIDGE_QUEUE_MAX queued calls the caller waits for the writer (and no
    point is lost)."""
    from azureml.core import Run

    from azml_v1_bridge.delivery.queue import WAKE_EVERY

    cap = 1000
    mlflow_mode(AZML_V1_BRIDGE_QUEUE_MAX=cap)
    run = Run.get_context()
    longest = 0
    for i in range(20_000):
        run.log("loss", float(i))
        if i % 97 == 0:
            longest = max(longest, len(writer()._queue))
    run.flush()
    # the cap is checked every WAKE_EVERY calls: the queue never passes the first check above it
    assert longest <= math.ceil((cap + 1) / WAKE_EVERY) * WAKE_EVERY
    record = run.__dict__["_azml_v1_bridge_record"]
    assert len(store.get_metric_history(record.mlflow_run_id, "loss")) == 20_000


def test_http_retry_defaults_never_override_the_user(store, mlflow_mode, monkeypatch):
    from azureml.core import Run

    from azml_v1_bridge import config

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    mlflow_mode(AZML_V1_BRIDGE_WRITER="thread")  # the in-process writer sets them here
    Run.get_context().log("x", 1.0)
    writer().flush()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == config.HTTP_DEFAULTS[
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


# ---------------------------------------------------------------- threads, signals, fork


@pytest.mark.server
def test_eight_threads_ten_thousand_points_each(mlflow_server, mlflow_mode):
    """8 threads make their first call on one fresh offline run at the same instant (a barrier)
    and log 10,000 points each: one MLflow run, every point at steps 0..9999 of its key.

    This test lost one point in 2 of 3 runs on a loaded machine (the last step of one key).
    One cause found: the threads' first calls race in `runs.Registry.record_for`, which checks
    `run.__dict__` for a record outside its lock and, for an `_OfflineRun` (never shared by id),
    makes a record for every thread that got past that check: each becomes an MLflow run and
    the v1 run's points are spread over them (test_faults.py::
    test_first_calls_from_many_threads_share_one_run reproduces it: 49-69 MLflow runs for 30 v1
    runs). Hence the count of runs, asserted first. A loss with one run only was also seen (see
    the issue 15 report); the message of each assertion carries the writer's accounting for
    that run (points sent, failures, journaled, notes) so the next occurrence says where the
    point went. Waits are on the data (complete() returns once everything is in MLflow)."""
    from azureml.core import Run

    bridge = mlflow_mode(mlflow_server.url, MLFLOW_EXPERIMENT_NAME=f"eight-threads-{time.time_ns()}")
    run = Run.get_context()
    start = threading.Barrier(8)

    def train(t):
        start.wait()
        for i in range(10_000):
            run.log(f"thread{t}", t * 100_000 + i)       # implicit steps, per key

    threads = [threading.Thread(target=train, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.complete()

    client = client_for(mlflow_server.url)
    run_id = bridge.mlflow_run_id(run)
    experiment = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id], (
        "the threads' first calls made more than one MLflow run: "
        + str({r.info.run_id: {k: len(client.get_metric_history(r.info.run_id, k))
                               for k in r.data.metrics} for r in runs}))
    stats = writer().stats[run.__dict__["_azml_v1_bridge_record"].local_id]
    accounting = (f"writer: {stats.metric_points} points sent, {stats.delivery_failures} "
                  f"failures, {stats.journaled} journaled, notes {stats.notes[:5]}")
    for t in range(8):
        out = history(client, run_id, f"thread{t}")
        steps = [s for s, _, _ in out]
        missing = sorted(set(range(10_000)) - set(steps))
        assert steps == list(range(10_000)), (t, len(steps), missing[:10], accounting)
        assert [v for _, _, v in out] == [float(t * 100_000 + i) for i in range(10_000)]
    assert stats.metric_points == 80_000, accounting


SIGTERM_SCRIPT = """
import os, signal, sys
marker = sys.argv[1]
if len(sys.argv) > 2:  # the user's own handler, installed before the bridge
    def mine(signum, frame):
        open(marker, "w").write("user handler ran")
        sys.exit(3)
    signal.signal(signal.SIGTERM, mine)
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
run.log("ready", 1.0)
run.flush()
print(azml_v1_bridge.mlflow_run_id(run), flush=True)
i = 0
while True:
    run.log("loss", float(i), step=i)
    if i % 2000 == 0:
        print(i, flush=True)
    i += 1
"""


def _sigterm_mid_run(server_url, tmp_path, user_handler):
    script = tmp_path / "train.py"
    script.write_text(SIGTERM_SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, MLFLOW_TRACKING_URI=server_url,
               AZML_V1_BRIDGE_MODE="mlflow")
    args = [sys.executable, str(script), str(tmp_path / "marker")] + (["x"] if user_handler else [])
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        run_id = proc.stdout.readline().strip()
        printed = 0
        for line in proc.stdout:
            printed = int(line)
            if printed >= 6000:
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, run_id, printed


@pytest.mark.server
def test_sigterm_mid_run_delivers_everything_logged_before(mlflow_server, tmp_path):
    proc, run_id, printed = _sigterm_mid_run(mlflow_server.url, tmp_path, user_handler=False)
    assert proc.returncode == -signal.SIGTERM, proc.stderr.read()
    client = client_for(mlflow_server.url)
    steps = [s for s, _, _ in history(client, run_id, "loss")]
    # every point logged before the signal, without a gap, and nothing twice
    assert steps == list(range(len(steps))) and steps[-1] >= printed
    assert client.get_run(run_id).info.status == "KILLED"


@pytest.mark.server
def test_sigterm_chains_the_users_handler(mlflow_server, tmp_path):
    proc, run_id, printed = _sigterm_mid_run(mlflow_server.url, tmp_path, user_handler=True)
    assert proc.returncode == 3, proc.stderr.read()
    assert (tmp_path / "marker").read_text() == "user handler ran"
    client = client_for(mlflow_server.url)
    steps = [s for s, _, _ in history(client, run_id, "loss")]
    assert steps == list(range(len(steps))) and steps[-1] >= printed
    assert client.get_run(run_id).info.status == "KILLED"


FORK_SCRIPT = """
import os, sys
import azml_v1_bridge
from azml_v1_bridge import bridge
from azureml.core import Run
run = Run.get_context()
run.log("parent", 0.0)
parent_id = azml_v1_bridge.mlflow_run_id(run)
for i in range(1, 3000):         # still queued when the process forks
    run.log("parent", float(i))
pid = os.fork()
if pid == 0:
    mine = Run.get_context()
    for i in range(500):
        mine.log("child", float(i))
    child_id = azml_v1_bridge.mlflow_run_id(mine)
    azml_v1_bridge.flush()
    handled = {lid: s.metric_points for lid, s in bridge.STATE.writer.stats.items()}
    print("child", child_id, sum(handled.values()), len(handled), flush=True)
    sys.exit(0)                  # a normal exit: the child's own atexit delivers and ends
_, status = os.waitpid(pid, 0)
for i in range(3000, 4000):
    run.log("parent", float(i))
print("parent", parent_id, os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.server
def test_forked_child_logs_to_its_own_run(mlflow_server, tmp_path):
    result = run_script(FORK_SCRIPT, tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_server.url,
                                                    "AZML_V1_BRIDGE_MODE": "mlflow"})
    assert result.returncode == 0, result.stderr
    lines = dict((line.split()[0], line.split()[1:]) for line in result.stdout.splitlines())
    child_id, child_points, child_runs = lines["child"]
    parent_id, child_exit = lines["parent"]
    assert child_exit == "0"
    # the child's writer handled only the child's run: the parent's queue was not copied
    assert child_runs == "1" and child_points == "500"
    client = client_for(mlflow_server.url)
    assert child_id != parent_id
    assert [v for _, _, v in history(client, child_id, "child")] == [float(i) for i in range(500)]
    assert [v for _, _, v in history(client, parent_id, "parent")] == [float(i) for i in range(4000)]
    assert client.get_metric_history(child_id, "parent") == []
    assert client.get_metric_history(parent_id, "child") == []
    assert client.get_run(child_id).info.status == "FINISHED"
    assert client.get_run(parent_id).info.status == "FINISHED"


HUNG_STORE_SCRIPT = """
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
run.tag("phase", "hung")
for i in range(300):
    run.log("loss", float(i), step=i)
run.complete()   # waits AZML_V1_BRIDGE_EXIT_TIMEOUT, then the script goes on
"""


def test_a_store_that_never_answers_cannot_hold_the_exit(tmp_path):
    """A server that accepts connections and never replies: the script ends within the exit
    timeout and what the stuck writer held is in the journal."""
    import json
    import socket

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # never accepted, never answered
    journal = tmp_path / "hung.jsonl"
    try:
        started = time.monotonic()
        result = run_script(HUNG_STORE_SCRIPT, tmp_path, env={
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{hole.getsockname()[1]}",
            "AZML_V1_BRIDGE_MODE": "mlflow", "AZML_V1_BRIDGE_STRICT": "0",
            "AZML_V1_BRIDGE_EXIT_TIMEOUT": "2", "AZML_V1_BRIDGE_JOURNAL": str(journal),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
        wall = time.monotonic() - started
    finally:
        hole.close()
    assert result.returncode == 0, result.stderr
    assert wall < 45, wall
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    steps = {p[3] for line in lines if line["t"] == "metrics" for p in line["m"]}
    assert steps == set(range(300))
    assert any(line["t"] == "tags" and ["phase", "hung"] in line["tags"] for line in lines)


def test_a_server_out_of_database_connections_is_retried_not_split():
    """Many ranks into one `mlflow server`: past its database pool (5 + 10 connections on
    PostgreSQL) a request waits 30 s and MLflow answers BAD_REQUEST with SQLAlchemy's pool
    timeout (measured with benchmarks/bench_scale.py). That is the store being busy, not a bad
    item: the writer retries it (and journals it past the retry window) instead of splitting
    the batch down to single points and dropping each as rejected."""
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from azml_v1_bridge import config
    from azml_v1_bridge.delivery.errors import is_item_error
    from azml_v1_bridge.delivery.writer import Writer

    busy = RestException({"error_code": "BAD_REQUEST", "message": (
        "QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00 "
        "(Background on this error at: https://sqlalche.me/e/21/3o7r)")})
    bad_item = MlflowException("Invalid value 'x' for parameter 'value'",
                               error_code=INVALID_PARAMETER_VALUE)
    assert not is_item_error(busy) and is_item_error(bad_item)
    answers = [busy, busy, "sent"]

    def log_batch():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    writer = Writer(config.Config())
    assert writer._retrying("log_batch", log_batch) == "sent" and not answers
    with pytest.raises(MlflowException):
        writer._retrying("log_batch", lambda: (_ for _ in ()).throw(bad_item))
