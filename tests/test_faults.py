"""The fault matrix of issue 15: nothing lost in any process topology or failure, and the exit
keeps its deadline. Both writers (thread, process) for every case.

Real parts only: bridged scripts in fresh interpreters (mlflow mode), real multiprocessing
start methods, real signals, a real `mlflow server` on 127.0.0.1 (the session's), sqlite
stores, a listener that accepts and never answers, an unprivileged user for read-only folders
and unreadable files. Every case counts distinct (key, step) pairs read back with MlflowClient
(or from the journal files) and bounds the exit by wall clock, generously.
"""
import json
import os
import shutil
import signal
import time

import pytest

from faults_helpers import (WRITERS, Hole, Script, artifact_paths, base_key, bridged_env,
                            client_for, distinct_pairs, download_json, experiment_runs,
                            journal_files, journal_pairs, journals_named, read_only_folder,
                            refused_url, run_bridged, run_pairs, shared_folder,
                            unprivileged_launcher, writable_folder)

pytestmark = pytest.mark.parametrize("writer", WRITERS)


@pytest.fixture
def sqlite_uri(tmp_path, empty_store_file):
    """A fresh sqlite store whose schema already exists (the first-use race is its own test)."""
    folder = tmp_path / "store"
    folder.mkdir()
    shutil.copyfile(empty_store_file, folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


def store_uri(kind, request):
    if kind == "server":
        return request.getfixturevalue("mlflow_server").url
    return request.getfixturevalue("sqlite_uri")


def one_run(client, experiment):
    runs = experiment_runs(client, experiment)
    assert len(runs) == 1, [(r.info.run_id, r.data.tags.get("mlflow.source.name"),
                             sorted(r.data.metrics)) for r in runs]
    return runs[0]


# ---------------------------------------------------------------- process topologies

WORKERS_SCRIPT = """
import multiprocessing as mp, os, sys
import azml_v1_bridge
from azureml.core import Run

# Module level: inherited by fork workers (they log into the parent's run object), made
# afresh by spawn/forkserver workers (each its own offline run, its own MLflow run).
run = Run.get_context()
TASKS, POINTS = 6, 50


def work(i):
    for s in range(POINTS):
        run.log(f"task{i}", float(s))
    return os.getpid()


def share(k):
    return [work(i) for i in range(k, TASKS, 2)]


if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    for s in range(POINTS):
        run.log("main", float(s))
    if sys.argv[2] == "pool":
        with ctx.Pool(2) as pool:          # __exit__ terminates the workers
            pids = pool.map(work, range(TASKS))
    else:
        procs = [ctx.Process(target=share, args=(k,)) for k in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(150)
        print("exitcodes", [p.exitcode for p in procs], flush=True)
    run.log("after", 1.0)
    print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
"""

# sqlite where processes share one file (fork), the server for the rest (suite time)
TOPOLOGIES = [("pool", "fork", "sqlite"), ("pool", "fork", "server"), ("pool", "spawn", "server"),
              ("pool", "forkserver", "server"), ("process", "fork", "sqlite"),
              ("process", "spawn", "server")]


@pytest.mark.slow
@pytest.mark.parametrize("shape,method,store", TOPOLOGIES,
                         ids=["-".join(t) for t in TOPOLOGIES])
def test_multiprocessing_workers_lose_nothing(writer, shape, method, store, request, tmp_path):
    """6 tasks x 50 points on 2 workers: all 300 (task, step) pairs land. fork workers write
    into the parent's one MLflow run as `task<i>/fork_<pid>`; spawn/forkserver workers each get
    their own run; the parent's run is never duplicated and ends FINISHED."""
    uri = store_uri(store, request)
    env = bridged_env(writer, uri)
    script = run_bridged(WORKERS_SCRIPT, tmp_path, env, args=(method, shape), timeout=150)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    if shape == "process":
        assert script.wait_line("exitcodes") == "exitcodes [0, 0]"
    parent_id = script.wait_line("parent ").split()[1]
    client = client_for(uri)
    runs = experiment_runs(client, env["MLFLOW_EXPERIMENT_NAME"])
    landed = {}
    for run in runs:
        landed[run.info.run_id] = run_pairs(client, run.info.run_id)
    tasks = {(base_key(k), s) for steps in landed.values() for k, s in distinct_pairs(steps, "task")}
    expected = {(f"task{i}", s) for i in range(6) for s in range(50)}
    print(f"{shape}/{method}/{store}/{writer}: {len(tasks & expected)} of 300 worker points "
          f"landed in {len(runs)} run(s), exit {script.wall:.1f}s")
    assert tasks == expected, f"{len(tasks & expected)} of 300 worker (task, step) pairs landed"
    parent = landed[parent_id]
    assert parent["main"] == list(range(50)) and parent["after"] == [0]
    assert client.get_run(parent_id).info.status == "FINISHED"
    mains = [rid for rid, steps in landed.items() if "main" in steps]
    assert mains == [parent_id], "the parent's run was duplicated"
    if method == "fork":
        assert list(landed) == [parent_id], "fork workers made runs of their own"
        for key, steps in landed[parent_id].items():
            if key.startswith("task"):
                assert "/fork_" in key and steps == sorted(set(steps)), key
    else:
        assert len(runs) >= 2  # the parent and at least one worker run


FORK_SCRIPT = """
import os, sys, time
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
N, M = 300, 200
run.log("loss", 0.0)
first = 1
if sys.argv[1] == "late":          # the parent's run exists in MLflow before the fork, and
    for s in (1, 2, 3):            # run.log is bound on the object (the lean path's binding),
        run.log("loss", float(s))  # holding the parent's queue and the step counter of "loss"
    first = 4
    print("bound", "log" in vars(run), flush=True)
    print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
# "early": the fork comes right after the first call, while the writer imports MLflow and
# before the parent's run exists in MLflow
started = time.monotonic()
pid = os.fork()
if pid == 0:
    for s in range(M):
        run.log("loss", 1000.0 + s)
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print("child", pid, os.waitstatus_to_exitcode(status), round(time.monotonic() - started, 1),
      flush=True)
for s in range(first, N):
    run.log("loss", float(s))
print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("when", ["late", "early"])
def test_os_fork_child_writes_the_parents_run_under_its_own_key(writer, when, mlflow_server,
                                                                 tmp_path):
    """A fork'd child logging to the inherited run object writes `loss/fork_<pid>` (its own
    step sequence) into the parent's MLflow run; the parent's `loss` keeps steps 0..299
    unshared; one MLflow run only, ended FINISHED once, even when the fork comes before the
    run exists (and while the writer is importing MLflow: the child ends in < 60 s)."""
    env = bridged_env(writer, mlflow_server.url)
    script = run_bridged(FORK_SCRIPT, tmp_path, env, args=(when,), timeout=150)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    _, pid, code, seconds = script.wait_line("child ").split()
    parent_id = script.lines[-1].split()[1]
    assert code == "0"
    if when == "late":
        assert script.wait_line("bound ") == "bound True"
    client = client_for(mlflow_server.url)
    runs = experiment_runs(client, env["MLFLOW_EXPERIMENT_NAME"])
    landed = {r.info.run_id: run_pairs(client, r.info.run_id) for r in runs}
    print(f"fork {when}/{writer}: {len(runs)} run(s), keys "
          f"{ {rid[:8]: {k: len(v) for k, v in steps.items()} for rid, steps in landed.items()} }, "
          f"child {seconds}s")
    assert float(seconds) < 60
    assert len(runs) == 1, f"{len(runs)} MLflow runs for one v1 run"
    steps = landed[parent_id]
    assert steps.get("loss") == list(range(300)), "the parent's steps are shared or lost"
    assert steps.get(f"loss/fork_{pid}") == list(range(200))
    assert client.get_run(parent_id).info.status == "FINISHED"


DATALOADER_SCRIPT = """
import collections, json, multiprocessing as mp, os
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
ITEMS, POINTS = 8, 25


def loader(tasks, done):                 # a DataLoader worker: loops until it is killed
    while True:
        i = tasks.get()
        for s in range(POINTS):
            run.log("batch_loss", float(i * POINTS + s))
        done.put((os.getpid(), i))


if __name__ == "__main__":
    ctx = mp.get_context("fork")
    run.log("epoch", 0.0)
    tasks, done = ctx.Queue(), ctx.Queue()
    workers = [ctx.Process(target=loader, args=(tasks, done), daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    for i in range(ITEMS):
        tasks.put(i)
    got = [done.get(timeout=120) for _ in range(ITEMS)]
    for w in workers:
        w.terminate()                    # as DataLoader shuts its workers down
    for w in workers:
        w.join(60)
    per_worker = collections.Counter(pid for pid, _ in got)
    print("workers", json.dumps({str(p): n * POINTS for p, n in per_worker.items()}), flush=True)
    print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
"""


@pytest.mark.slow
def test_dataloader_style_workers_terminated_at_the_end(writer, mlflow_server, tmp_path):
    """fork'd workers looping over a queue, terminated by the parent once the items are done:
    every point each worker logged is in the parent's run under `batch_loss/fork_<pid>`."""
    env = bridged_env(writer, mlflow_server.url)
    script = run_bridged(DATALOADER_SCRIPT, tmp_path, env, timeout=150)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    per_worker = json.loads(script.wait_line("workers ").split(" ", 1)[1])
    parent_id = script.wait_line("parent ").split()[1]
    client = client_for(mlflow_server.url)
    runs = experiment_runs(client, env["MLFLOW_EXPERIMENT_NAME"])
    landed = {r.info.run_id: run_pairs(client, r.info.run_id) for r in runs}
    got = sum(len(set(steps.get(f"batch_loss/fork_{pid}", []))) for steps in landed.values()
              for pid in per_worker)
    print(f"dataloader/{writer}: {got} of 200 worker points landed in {len(runs)} run(s)")
    assert len(runs) == 1
    for pid, n in per_worker.items():
        assert landed[parent_id].get(f"batch_loss/fork_{pid}") == list(range(n)), pid
    assert landed[parent_id]["epoch"] == [0]


SUBPROCESS_SCRIPT = """
import subprocess, sys
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
for s in range(100):
    run.log("outer", float(s))
child = ("import azml_v1_bridge\\nfrom azureml.core import Run\\nr = Run.get_context()\\n"
         "for s in range(150):\\n    r.log('inner', float(s))\\n")
print("inner", subprocess.run([sys.executable, "-c", child]).returncode, flush=True)
"""


def test_bridged_subprocess_gets_its_own_run(writer, mlflow_server, tmp_path):
    env = bridged_env(writer, mlflow_server.url)
    script = run_bridged(SUBPROCESS_SCRIPT, tmp_path, env, timeout=150)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    assert script.wait_line("inner") == "inner 0"
    client = client_for(mlflow_server.url)
    runs = experiment_runs(client, env["MLFLOW_EXPERIMENT_NAME"])
    by_key = {k: steps for r in runs for k, steps in run_pairs(client, r.info.run_id).items()}
    assert len(runs) == 2
    assert by_key["outer"] == list(range(100)) and by_key["inner"] == list(range(150))
    assert {r.info.status for r in runs} == {"FINISHED"}


FORK_BUSY_SCRIPT = """
import os, sys, time
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
for s in range(100):
    run.log("loss", float(s))
print("flushed", azml_v1_bridge.flush(timeout=3), flush=True)   # False: mid-request now
started = time.monotonic()
pid = os.fork()
if pid == 0:
    for s in range(50):
        run.log("loss", float(s))
    print("forked writer", type(azml_v1_bridge.bridge.STATE.writer).__name__, flush=True)
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print("child", pid, os.waitstatus_to_exitcode(status), round(time.monotonic() - started, 1),
      flush=True)
"""


@pytest.mark.slow
def test_fork_while_the_writer_is_mid_request(writer, tmp_path):
    """The writer is inside a request to a store that never answers when the process forks:
    the child is not deadlocked (it ends in < 60 s, by its exit deadline) and both processes'
    points are in the journal (the child's under `loss/fork_<pid>`)."""
    journal = tmp_path / "journal"
    journal.mkdir()
    with Hole() as hole:
        env = bridged_env(writer, hole.url, AZML_V1_BRIDGE_EXIT_TIMEOUT=5,
                          AZML_V1_BRIDGE_STRICT=0, AZML_V1_BRIDGE_JOURNAL=str(journal) + "/")
        script = run_bridged(FORK_BUSY_SCRIPT, tmp_path, env, timeout=150)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    _, pid, code, seconds = script.wait_line("child ").split()
    pairs = journal_pairs(*journal_files(journal))
    print(f"fork mid-request/{writer}: child {seconds}s, exit {script.wall:.1f}s, journaled "
          f"{len({p for p in pairs if p[0] == 'loss'})} 'loss' steps (100 logged by the parent) and "
          f"{len({p for p in pairs if p[0] == f'loss/fork_{pid}'})} of 50 child pairs")
    assert code == "0" and float(seconds) < 60
    # a forked child writes from a thread: its exit journals before the child is gone
    assert script.wait_line("forked writer").split()[-1] == "Writer"
    assert {s for k, s in pairs if k == "loss"} == set(range(100))
    assert {s for k, s in pairs if k == f"loss/fork_{pid}"} == set(range(50))


EARLY_TERM_SCRIPT = """
import os, select, signal, sys
os.sched_setaffinity(0, {0})   # one CPU: after a fork the parent runs on, the child waits
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
run.log("loss", 1.0)
azml_v1_bridge.flush()
statuses = []
for i in range(10):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        select.select([r], [], [], 30)   # the SIGTERM should end this wait at once
        os._exit(7)
    os.kill(pid, signal.SIGTERM)       # before the child has run a line of Python
    statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    os.close(r); os.close(w)
    if statuses[-1] != -signal.SIGTERM:
        break
print("statuses", statuses, flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_a_sigterm_sent_right_after_a_fork_is_not_lost(writer, tmp_path, sqlite_uri):
    """CPython drops the signals a child caught before its after-fork code ran: with the
    bridge's SIGTERM handler installed, `Pool.terminate()` lost the SIGTERM of a worker the
    scheduler had not run yet and waited for it for ever (the pool-fork hang under load).
    Pinned to one CPU, every child here gets its SIGTERM before it runs: each must die of it
    (a lost one waits 30 s, then exits 7)."""
    script = run_bridged(EARLY_TERM_SCRIPT, tmp_path, bridged_env(writer, sqlite_uri), timeout=150)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    assert script.wait_line("statuses") == "statuses " + str([-signal.SIGTERM] * 10)


BLOCKED_IN_C_SCRIPT = """
import ctypes, multiprocessing as mp, os, sys, time
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()


def child(ready):
    for s in range(50):
        run.log("blocked", float(s))
    mutex = ctypes.create_string_buffer(64)   # a zeroed pthread_mutex_t: a normal mutex
    libc = ctypes.CDLL(None)
    libc.pthread_mutex_lock(mutex)
    ready.send((os.getpid(), ctypes.addressof(mutex)))
    libc.pthread_mutex_lock(mutex)  # this thread holds it: waits for ever, in C, deaf to signals
    os._exit(7)


if __name__ == "__main__":
    run.log("main", 1.0)
    r, w = mp.Pipe(duplex=False)
    p = mp.get_context("fork").Process(target=child, args=(w,))
    p.start()
    pid, mutex = r.recv()
    # asleep in that mutex: a futex wait on its address (a wchan of "futex" alone is also
    # the GIL's wait, where the handler still runs: under load the test then saw exit -15)
    while open(f"/proc/{pid}/syscall").read().split()[1:2] != [hex(mutex)]:
        time.sleep(0.01)
    p.terminate()
    p.join(60)
    print("child", p.exitcode, flush=True)
    if p.exitcode is None:
        p.kill()
        p.join()
    print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/syscall"), reason="needs /proc/PID/syscall")
def test_a_sigterm_the_main_thread_never_handles_still_ends_a_worker(writer, tmp_path, sqlite_uri):
    """A multiprocessing worker whose main thread is blocked in C for good when SIGTERM comes
    (as a Pool worker that took the signal just before entering the task queue's lock, which
    Pool.terminate() holds) never runs the Python handler: the bridge's watchdog ends it within
    its grace and delivers its 50 points (before, it outlived the signal: exit code None)."""
    script = run_bridged(BLOCKED_IN_C_SCRIPT, tmp_path, bridged_env(writer, sqlite_uri), timeout=150)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    assert script.wait_line("child") == f"child {128 + signal.SIGTERM}", script.stderr[-4000:]
    landed = run_pairs(client_for(sqlite_uri), script.wait_line("parent ").split()[1])
    (key,) = [k for k in landed if k.startswith("blocked")]
    assert key.startswith("blocked/fork_") and landed[key] == list(range(50))


# ---------------------------------------------------------------- signals

SIGTERM_SCRIPT = """
import os, signal, sys, time
handler = sys.argv[1]
saved = []
if handler == "keeps-running":      # checkpoint and carry on: the job is not over
    def on_term(signum, frame):
        open("checkpoint", "w").write("saved")
        saved.append(1)
    signal.signal(signal.SIGTERM, on_term)
elif handler == "exits":
    def on_term(signum, frame):
        open("checkpoint", "w").write("saved")
        sys.exit(3)
    signal.signal(signal.SIGTERM, on_term)
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
for s in range(100):
    run.log("loss", float(s))
print("half", flush=True)
deadline = time.monotonic() + 120
while not saved and time.monotonic() < deadline:   # the signal arrives here
    time.sleep(0.01)
for s in range(100, 200):
    run.log("loss", float(s))
run.log("final", 1.0)
print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
"""


def sigterm_script(tmp_path, env, handler):
    with Script(SIGTERM_SCRIPT, tmp_path, env, args=(handler,)) as script:
        script.wait_line("half")
        signalled = script.signal(signal.SIGTERM)
        script.finish(150)
    return script, script.ended_at - signalled


def test_sigterm_with_a_handler_that_keeps_running(writer, mlflow_server, tmp_path):
    """The user's handler runs first and the script goes on: the bridge does not end the run;
    the remaining 100 points and the final metric land; FINISHED at the normal end; exit 0."""
    env = bridged_env(writer, mlflow_server.url)
    script, _ = sigterm_script(tmp_path, env, "keeps-running")
    assert (tmp_path / "checkpoint").read_text() == "saved"
    client = client_for(mlflow_server.url)
    run = one_run(client, env["MLFLOW_EXPERIMENT_NAME"])
    steps = run_pairs(client, run.info.run_id)
    print(f"sigterm keeps-running/{writer}: rc {script.proc.returncode}, "
          f"{len(set(steps.get('loss', [])))} of 200 points, final "
          f"{'final' in steps}, status {run.info.status}")
    assert script.proc.returncode == 0, script.stderr[-4000:]
    assert steps.get("loss") == list(range(200)) and steps.get("final") == [0]
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("handler", ["none", "exits"])
def test_sigterm_ends_runs_killed_with_everything_logged(writer, handler, mlflow_server,
                                                         tmp_path):
    env = bridged_env(writer, mlflow_server.url)
    script, seconds = sigterm_script(tmp_path, env, handler)
    expected_rc = -signal.SIGTERM if handler == "none" else 3
    assert script.proc.returncode == expected_rc, script.stderr[-4000:]
    client = client_for(mlflow_server.url)
    run = one_run(client, env["MLFLOW_EXPERIMENT_NAME"])
    steps = run_pairs(client, run.info.run_id)
    print(f"sigterm {handler}/{writer}: {len(set(steps.get('loss', [])))} of 100 points, "
          f"status {run.info.status}, exit {seconds:.1f}s after the signal")
    assert steps.get("loss") == list(range(100))
    assert run.info.status == "KILLED"
    assert seconds < 45


@pytest.mark.slow
def test_sigterm_against_a_store_that_never_answers(writer, tmp_path):
    """No handler, a store that never answers: the process exits by the signal within the
    SIGTERM bound (25 s by default, asserted < 45 s) with all 100 points in the journal."""
    journal = tmp_path / "journal"
    journal.mkdir()
    with Hole() as hole:
        env = bridged_env(writer, hole.url, AZML_V1_BRIDGE_STRICT=0,
                          AZML_V1_BRIDGE_JOURNAL=str(journal) + "/")
        script, seconds = sigterm_script(tmp_path, env, "none")
    pairs = journal_pairs(*journal_files(journal))
    print(f"sigterm hung store/{writer}: rc {script.proc.returncode}, exit {seconds:.1f}s after "
          f"the signal, {len(pairs)} of 100 points journaled")
    assert script.proc.returncode == -signal.SIGTERM, script.stderr[-4000:]
    assert seconds < 45
    assert pairs == {("loss", s) for s in range(100)}


SIGTERM_INSIDE_SCRIPT = """
import os, signal, sys
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
for s in range(500):
    run.log("loss", float(s))
fired, lines = [], []

def inside_set(frame, event, arg):  # a SIGTERM while the training thread wakes the writer
    if event == "line" and not fired:
        lines.append(frame.f_lineno)
        if len(lines) == 2:  # past the first statement (`with self._cond:` in Event.set)
            fired.append(frame.f_lineno)
            os.kill(os.getpid(), signal.SIGTERM)
    return inside_set

def tracer(frame, event, arg):
    caller = frame.f_back
    if (frame.f_code.co_name == "set" and caller is not None and not fired
            and "azml_v1_bridge" in caller.f_code.co_filename):
        return inside_set
    return None

print("half", flush=True)
sys.settrace(tracer)
run.flush()
sys.settrace(None)
print("survived", fired, flush=True)
"""


def test_sigterm_inside_the_bridges_own_code(writer, sqlite_uri, tmp_path):
    """The signal lands while the training thread is inside the bridge (waking the writer for a
    flush): the exit then runs on that thread and must not wait on anything the interrupted frame
    holds. Before the writer was woken through a pipe, `threading.Event.set` held a lock here and
    the exit waited on it for ever (a CI run hung past 120 s)."""
    env = bridged_env(writer, sqlite_uri)
    with Script(SIGTERM_INSIDE_SCRIPT, tmp_path, env) as script:
        script.wait_line("half")
        script.finish(90)
    client = client_for(sqlite_uri)
    run = one_run(client, env["MLFLOW_EXPERIMENT_NAME"])
    steps = run_pairs(client, run.info.run_id)
    print(f"sigterm inside/{writer}: rc {script.proc.returncode}, exit {script.wall:.1f}s, "
          f"{len(set(steps.get('loss', [])))} of 500 points, status {run.info.status}")
    assert script.proc.returncode == -signal.SIGTERM, script.stdout + script.stderr[-4000:]
    assert steps.get("loss") == list(range(500))
    assert run.info.status == "KILLED"


# ---------------------------------------------------------------- one exit deadline

HUNG_SCRIPT = """
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
run.tag("phase", "hung")
for i in range(300):
    run.log("loss", float(i))
print("logged", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("timeout,bound", [(10, 25), (20, 35)])
def test_exit_timeout_bounds_the_whole_exit(writer, timeout, bound, tmp_path):
    """AZML_V1_BRIDGE_EXIT_TIMEOUT against a store that never answers (MLflow's own HTTP
    settings left at the bridge's defaults): the exit, from the script's last line to the
    process's end, stays within the timeout plus a margin; all 300 points are journaled."""
    journal = tmp_path / "journal"
    journal.mkdir()
    with Hole() as hole:
        env = bridged_env(writer, hole.url, AZML_V1_BRIDGE_STRICT=0,
                          AZML_V1_BRIDGE_EXIT_TIMEOUT=timeout,
                          AZML_V1_BRIDGE_JOURNAL=str(journal) + "/")
        with Script(HUNG_SCRIPT, tmp_path, env) as script:
            script.wait_line("logged")
            last_line = time.monotonic()
            rc = script.finish(bound + 150)
    seconds = script.ended_at - last_line
    pairs = journal_pairs(*journal_files(journal))
    print(f"exit timeout {timeout}/{writer}: exit took {seconds:.1f}s, {len(pairs)} of 300 "
          f"points journaled")
    assert rc == 0, script.stderr[-4000:]
    assert seconds < bound
    assert pairs == {("loss", s) for s in range(300)}


# ---------------------------------------------------------------- the store's first use

FIRST_USE_SCRIPT = """
import sys
import azml_v1_bridge
import mlflow                      # loaded before the barrier: the store's first use is what races
from azureml.core import Run
run = Run.get_context()
print("ready", flush=True)
sys.stdin.readline()               # the barrier: every process is released at once
for s in range(200):
    run.log(f"p{sys.argv[1]}", float(s))
print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
"""


@pytest.mark.slow
def test_processes_creating_one_sqlite_store_at_once(writer, tmp_path):
    """3 processes, one sqlite store that does not exist yet, released together: the file opens
    afterwards, 3 runs, each process's 200 points."""
    folder = tmp_path / "store"
    folder.mkdir()
    uri = f"sqlite:///{folder}/mlflow.db"
    env = bridged_env(writer, uri)
    scripts = []
    try:
        for k in range(3):
            (tmp_path / f"p{k}").mkdir()
            scripts.append(Script(FIRST_USE_SCRIPT, tmp_path / f"p{k}", env, args=(k,), stdin=True))
        for script in scripts:
            script.wait_line("ready")
        for script in scripts:
            script.send("go\n")
        codes = [script.finish(150) for script in scripts]
    finally:
        for script in scripts:
            script.__exit__()
    client = client_for(uri)
    runs = experiment_runs(client, env["MLFLOW_EXPERIMENT_NAME"])
    landed = {p for r in runs for p in distinct_pairs(run_pairs(client, r.info.run_id))}
    print(f"first use/{writer}: exit codes {codes}, {len(runs)} run(s), {len(landed)} of 600 "
          f"points")
    assert codes == [0, 0, 0], [s.stderr[-2000:] for s in scripts]
    assert len(runs) == 3
    assert landed == {(f"p{k}", s) for k in range(3) for s in range(200)}
    assert os.listdir(folder) == ["mlflow.db"]  # clean exits: no lock file left beside the store


# ---------------------------------------------------------------- nowhere to write

def nobody_or_skip():
    launcher, why = unprivileged_launcher()
    if launcher is None:
        pytest.skip(why)
    return launcher


@pytest.fixture
def world():
    folder = shared_folder()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


READ_ONLY_SCRIPT = """
import time
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
for s in range(2000):                # about 2 s of training
    run.log("loss", float(s))
    if s % 100 == 99:
        time.sleep(0.1)
print("logged", flush=True)
"""


@pytest.mark.slow
def test_read_only_working_folder(writer, world):
    """As an unprivileged user in a folder it cannot write (the default store sqlite:///mlflow.db
    and the default journal folder are there): the 2000 points are journaled in the per-user
    state folder or the temp folder, named by one warning, and the exit is quick."""
    launcher = nobody_or_skip()
    work = os.path.join(world, "work")
    os.makedirs(work)
    home = writable_folder(os.path.join(world, "home"))
    tmp = writable_folder(os.path.join(world, "tmp"))
    read_only_folder(work)              # the script is written there by root, run by the other user
    env = bridged_env(writer, None, AZML_V1_BRIDGE_STRICT=0, HOME=home, TMPDIR=tmp)
    with Script(READ_ONLY_SCRIPT, work, env, launcher=launcher,
                drop=("XDG_STATE_HOME",)) as script:
        script.wait_line("logged", timeout=150)
        last_line = time.monotonic()
        rc = script.finish(200)
    seconds = script.ended_at - last_line
    named = journals_named(script.stderr)
    found = journal_files(home, tmp)
    pairs = journal_pairs(*found)
    print(f"read-only cwd/{writer}: exit {seconds:.1f}s after the last line, named {named}, "
          f"{len(pairs)} of 2000 points in {found}")
    assert rc == 0, script.stderr[-4000:]
    assert seconds < 30
    assert named and all(os.path.isfile(p) for p in named), script.stderr[-4000:]
    assert all(p.startswith((os.path.join(home, ".local", "state", "azml_v1_bridge"), tmp))
               for p in named), named
    assert journal_pairs(*named) == {("loss", s) for s in range(2000)}


UNWRITABLE_JOURNAL_SCRIPT = """
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
for s in range(500):
    run.log("loss", float(s))
run.tag("phase", "dead store")
"""


@pytest.mark.slow
def test_unwritable_journal_folder_falls_back(writer, world):
    """AZML_V1_BRIDGE_JOURNAL in a folder nobody cannot write, and a dead store: the journal is
    written to the fallback location instead, the warning names it, all 500 points are in it."""
    launcher = nobody_or_skip()
    work = writable_folder(os.path.join(world, "work"))
    locked = read_only_folder(os.path.join(world, "locked"))
    home = writable_folder(os.path.join(world, "home"))
    tmp = writable_folder(os.path.join(world, "tmp"))
    env = bridged_env(writer, refused_url(), AZML_V1_BRIDGE_STRICT=0,
                      AZML_V1_BRIDGE_RETRY_SECONDS=1, HOME=home, TMPDIR=tmp,
                      AZML_V1_BRIDGE_JOURNAL=os.path.join(locked, "journal.jsonl"))
    script = run_bridged(UNWRITABLE_JOURNAL_SCRIPT, work, env, launcher=launcher,
                         drop=("XDG_STATE_HOME",), timeout=150)
    named = [p for p in journals_named(script.stderr) if not p.startswith(locked)]
    pairs = journal_pairs(*[p for p in named if os.path.isfile(p)])
    print(f"unwritable journal/{writer}: exit {script.wall:.1f}s, named {named}, "
          f"{len(pairs)} of 500 points there")
    assert script.proc.returncode == 0, script.stderr[-4000:]
    assert not os.listdir(locked)
    assert named, f"no fallback journal named:\n{script.stderr[-4000:]}"
    assert pairs == {("loss", s) for s in range(500)}


# ---------------------------------------------------------------- uploads

UPLOAD_SCRIPT = """
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
run.upload_folder("data", "data")
run.log("after", 1.0)
run.complete()
print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
"""


@pytest.mark.slow
def test_upload_folder_with_an_unreadable_file_and_a_symlink_loop(writer, world, mlflow_server,
                                                                  tmp_path):
    """Every readable file is uploaded; the report notes the unreadable file and the loop."""
    launcher = nobody_or_skip()
    work = writable_folder(os.path.join(world, "work"))
    home = writable_folder(os.path.join(world, "home"))
    data = os.path.join(work, "data")
    os.makedirs(os.path.join(data, "sub"))
    for name, text in (("a.txt", "alpha"), ("sub/b.txt", "beta"), ("secret.txt", "hidden")):
        with open(os.path.join(data, name), "w") as fh:
            fh.write(text)
    os.symlink("self_loop", os.path.join(data, "self_loop"))   # open() fails with ELOOP
    os.symlink("..", os.path.join(data, "sub", "up"))          # a folder loop
    os.chmod(os.path.join(data, "secret.txt"), 0o000)
    env = bridged_env(writer, mlflow_server.url, AZML_V1_BRIDGE_STRICT=0, HOME=home)
    script = run_bridged(UPLOAD_SCRIPT, work, env, launcher=launcher, timeout=150)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    run_id = script.wait_line("parent ").split()[1]
    client = client_for(mlflow_server.url)
    paths = artifact_paths(client, run_id)
    report = download_json(client, run_id, "azml_v1_bridge/report.json", tmp_path)
    notes = json.dumps(report.get("notes", []))
    print(f"upload_folder/{writer}: artifacts {sorted(p for p in paths if p.startswith('data'))}, "
          f"report notes {notes[:300]}, failures {report.get('delivery_failures')}")
    assert {"data/a.txt", "data/sub/b.txt"} <= paths
    assert "data/secret.txt" not in paths
    assert "secret.txt" in notes and "self_loop" in notes
    assert run_pairs(client, run_id).get("after") == [0]


# ---------------------------------------------------------------- accounting

ACCOUNTING_SCRIPT = """
import azml_v1_bridge
from azureml.core import Run


class BadFloat:
    def __float__(self):
        raise ValueError("no float here")

    def __repr__(self):
        return "BadFloat()"


class BadRepr:
    def __float__(self):
        raise ValueError("no float here")

    def __repr__(self):
        raise RuntimeError("no repr here")


run = Run.get_context()
run.log("ok", 1.0)
run.log("bad_float", BadFloat())
run.log("bad_repr", BadRepr())
run.log("ok", 2.0)
run.complete()
print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
"""


def test_values_whose_float_or_repr_raise_are_accounted(writer, mlflow_server, tmp_path):
    """Not silently dropped: kept as text where possible, and counted in the report with the
    reason; the report's failure count is non-zero for what could not be kept at all."""
    env = bridged_env(writer, mlflow_server.url, AZML_V1_BRIDGE_STRICT=0)
    script = run_bridged(ACCOUNTING_SCRIPT, tmp_path, env, timeout=150)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    run_id = script.wait_line("parent ").split()[1]
    client = client_for(mlflow_server.url)
    paths = artifact_paths(client, run_id)
    report = download_json(client, run_id, "azml_v1_bridge/report.json", tmp_path)
    noted = {n.get("name") for n in report.get("notes", [])}
    print(f"accounting/{writer}: artifacts {sorted(paths)}, noted {sorted(map(str, noted))}, "
          f"failures {report.get('delivery_failures')}, calls {report.get('calls')}")
    assert run_pairs(client, run_id).get("ok") == [0, 1]
    assert "bad_float.txt" in paths
    local = client.download_artifacts(run_id, "bad_float.txt", str(tmp_path))
    assert open(local).read().strip() == "BadFloat()"
    assert {"bad_float", "bad_repr"} <= noted
    assert all(n.get("detail") for n in report["notes"] if n.get("name") in ("bad_float", "bad_repr"))
    if "bad_repr.txt" not in paths:
        assert report.get("delivery_failures", 0) >= 1
    assert report["calls"].get("log") == 4


# ---------------------------------------------------------------- threads' first calls

THREADS_FIRST_CALL_SCRIPT = """
import sys, threading
sys.setswitchinterval(1e-6)        # interleave the threads as a loaded machine does
import azml_v1_bridge
from azureml.core import Run
RUNS, THREADS = 30, 8
for r in range(RUNS):
    run = Run.get_context()        # a fresh offline run, not yet seen by the bridge
    start = threading.Barrier(THREADS)

    def first_calls(t):
        start.wait()               # every thread's first call at the same instant
        for s in range(3):
            run.log(f"run{r}.thread{t}", float(s))

    threads = [threading.Thread(target=first_calls, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print("done", flush=True)
"""


def test_first_calls_from_many_threads_share_one_run(writer, mlflow_server, tmp_path):
    """The cause of the 8-thread test's lost point, reproduced: 30 fresh offline runs, 8 threads
    making their first call on each at once. One MLflow run per v1 run, and each thread's key
    has steps 0, 1, 2 in it (today a thread that loses the race in Registry.record_for logs its
    step 0 into an MLflow run of its own, and its key lacks a step in the real one)."""
    env = bridged_env(writer, mlflow_server.url)
    script = run_bridged(THREADS_FIRST_CALL_SCRIPT, tmp_path, env, timeout=150)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    client = client_for(mlflow_server.url)
    runs = experiment_runs(client, env["MLFLOW_EXPERIMENT_NAME"])
    complete = short = 0
    for run in runs:
        for key, steps in run_pairs(client, run.info.run_id).items():
            if steps == [0, 1, 2]:
                complete += 1
            else:
                short += 1
    print(f"threads' first calls/{writer}: {len(runs)} MLflow runs for 30 v1 runs; "
          f"{complete} of 240 keys complete in one run, {short} key parts split off")
    assert len(runs) == 30
    assert complete == 240 and short == 0


# ---------------------------------------------------------------- a slow store

SLOW_STORE_SCRIPT = """
import json, os, time
import azml_v1_bridge
from azureml.core import Run

def rss_kb(pid="self"):
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0

def children():
    out = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as fh:
            out += fh.read().split()
    return out

run = Run.get_context()
run.log("loss", 0.0, step=0)
run.flush()                      # the store answered once: the writer is up
i, marks, start = 1, {}, time.monotonic()
while "late" not in marks:       # as fast as the loop can, for 3 seconds
    for _ in range(1000):
        run.log("loss", float(i), step=i)
        i += 1
    elapsed = time.monotonic() - start
    mark = "early" if "early" not in marks and elapsed > 1.0 else "late" if elapsed > 3.0 else None
    if mark:
        marks[mark] = [rss_kb(), sum(rss_kb(pid) for pid in children())]
print("MARKS " + json.dumps({"points": i, **marks}), flush=True)
"""


def test_memory_stays_bounded_while_the_store_is_slow(writer, mlflow_server, tmp_path):
    """A store that answers every request in 200 ms (a loopback proxy in front of the real
    server) and a loop logging as fast as it can: the queue's bound (AZML_V1_BRIDGE_QUEUE_MAX,
    small here to keep the exit short) holds the training process, and its writer process,
    where they were after the first second (an unbounded queue grows by ~100 MB a second
    here), and every point still lands."""
    from servers import LatencyProxy

    with LatencyProxy(mlflow_server.port, 0.2) as proxy:
        env = bridged_env(writer, proxy.url, AZML_V1_BRIDGE_QUEUE_MAX=2000)
        script = run_bridged(SLOW_STORE_SCRIPT, tmp_path, env, timeout=240)
    assert script.proc.returncode == 0, script.stderr[-4000:]
    marks = json.loads(next(line for line in script.stdout.splitlines()
                            if line.startswith("MARKS "))[6:])
    own, tree = (marks["late"][j] - marks["early"][j] for j in (0, 1))
    print(f"slow store/{writer}: {marks['points']} points; RSS growth from 1 s to 3 s: training "
          f"process {own / 1024:.1f} MB, writer process {tree / 1024:.1f} MB")
    assert own < 30 * 1024 and tree < 60 * 1024, marks
    client = client_for(mlflow_server.url)
    run = one_run(client, env["MLFLOW_EXPERIMENT_NAME"])
    assert run_pairs(client, run.info.run_id)["loss"] == list(range(marks["points"]))


# ---------------------------------------------------------------- under load


@pytest.mark.slow
def test_under_cpu_load_nothing_is_lost_and_the_sigterm_deadline_holds(writer, sqlite_uri,
                                                                       mlflow_server, tmp_path):
    """The promises above on a loaded machine (busy loops, 4 a core, made here and stopped
    at the end): fork Pool workers sharing one sqlite store land all 300 points with nothing
    journaled, and SIGTERM without a handler ends the run KILLED with its 100 points within
    the same generous bound as unloaded (45 s; the deadline is 25 s)."""
    from cpu_load import CpuLoad

    env = bridged_env(writer, sqlite_uri)
    with CpuLoad(per_core=4, seconds=300) as load:
        script = run_bridged(WORKERS_SCRIPT, tmp_path, env, args=("fork", "pool"), timeout=200)
        folder = tmp_path / "sigterm"
        folder.mkdir()
        sig_env = bridged_env(writer, mlflow_server.url)
        sig, seconds = sigterm_script(folder, sig_env, "none")
        average = load.load_average()
    client = client_for(sqlite_uri)
    (run,) = experiment_runs(client, env["MLFLOW_EXPERIMENT_NAME"])
    tasks = {(base_key(k), s) for k, s in distinct_pairs(run_pairs(client, run.info.run_id),
                                                         "task")}
    journaled = journal_files(tmp_path / "azml_v1_bridge_journal")
    sig_run = one_run(client_for(mlflow_server.url), sig_env["MLFLOW_EXPERIMENT_NAME"])
    sig_steps = run_pairs(client_for(mlflow_server.url), sig_run.info.run_id)
    print(f"under load ({average:.1f})/{writer}: {len(tasks)} of 300 worker points, exit "
          f"{script.wall:.1f}s, journals {journaled}; SIGTERM exit {seconds:.1f}s after the "
          f"signal, {len(set(sig_steps.get('loss', [])))} of 100 points")
    assert script.proc.returncode == 0, script.stderr[-4000:]
    assert tasks == {(f"task{i}", s) for i in range(6) for s in range(50)}
    assert journaled == [], script.stderr[-4000:]
    assert sig.proc.returncode == -signal.SIGTERM, sig.stderr[-4000:]
    assert sig_steps.get("loss") == list(range(100)) and sig_run.info.status == "KILLED"
    assert seconds < 45
