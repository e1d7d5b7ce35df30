"""Many ranks, one run: `azml-v1-bridge run --one-run -- LAUNCHER` starting N Python processes.

The scheme is in azml_v1_bridge/ranks.py: rank 0 logs keys unchanged, rank N > 0
logs `key/rank_N`, each with its own steps; a rank never ends the shared run, it
tags how it ended, and the launcher ends the run once, after the last rank.

The launcher here starts plain subprocesses with RANK set, as torchrun does.
The scale test runs on MLflow's own server over PostgreSQL from Debian's packages
(marker `postgres`; skipped with the reason when PostgreSQL is not installed).
"""
import collections
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import ROOT  # noqa: E402
from servers import MlflowServer, Postgres, free_port, postgres_binaries, postgres_missing  # noqa: E402

from azml_v1_bridge import ranks  # noqa: E402
from azml_v1_bridge.ops import (AppendTable, AppendText, Artifact, ArtifactFile, Chart, End,  # noqa: E402
                                ExtendList, Image, Metric, Param, Tag)

LAUNCH = [sys.executable, "-m", "azml_v1_bridge_tools.cli", "run", "--one-run", "--mode", "mlflow"]

RANK_SCRIPT = """
import os, sys, time
from azureml.core import Run

rank, points = int(os.environ["RANK"]), int(os.environ["POINTS"])
run = Run.get_context()
for step in range(points):
    run.log("loss", rank + 1.0 / (step + 1))
run.log_row("per_rank", rank=rank, points=points)
os.makedirs(f"outputs/rank{rank}", exist_ok=True)  # ./outputs is shared by the ranks, as in v1 jobs
open(f"outputs/rank{rank}/done.txt", "w").write(str(rank))
if rank == 0 and os.environ.get("EARLY_COMPLETE"):
    run.complete()  # the shared run must not end here: the others are still logging
    open("rank0.completed", "w").close()
if rank == 1 and os.environ.get("EARLY_COMPLETE"):
    from mlflow.tracking import MlflowClient
    deadline = time.time() + 120
    while not os.path.exists("rank0.completed") and time.time() < deadline:
        time.sleep(0.05)
    status = MlflowClient().get_run(os.environ["AZML_V1_BRIDGE_LAUNCHER_RUN_ID"]).info.status
    print("STATUS AFTER RANK 0 COMPLETED", status, flush=True)
if str(rank) == os.environ.get("FAIL_RANK"):
    raise RuntimeError(f"rank {rank} failed")
"""

# Starts N ranks like torchrun (RANK, LOCAL_RANK, WORLD_SIZE) and waits for all; with
# LOSE_EXIT_CODES it exits 0 whatever they did, like a launcher that loses them.
LAUNCHER_SCRIPT = """
import os, subprocess, sys
n = int(sys.argv[1])
procs = [subprocess.Popen([sys.executable, "rank.py"],
                          env=dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n)))
         for r in range(n)]
codes = [p.wait() for p in procs]
print("EXIT CODES", codes, flush=True)
sys.exit(0 if os.environ.get("LOSE_EXIT_CODES") else max(codes))
"""


def launch(tmp_path, n, tracking_uri, extra_env=None, timeout=600, command=LAUNCH):
    (tmp_path / "rank.py").write_text(textwrap.dedent(RANK_SCRIPT))
    (tmp_path / "launcher.py").write_text(textwrap.dedent(LAUNCHER_SCRIPT))
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("MLFLOW_RUN_ID", "RANK", "AZML_V1_BRIDGE_RANK", "AZML_V1_BRIDGE_LAUNCHER_RUN_ID"):
        env.pop(name, None)
    env.update({"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": "ranks",
                "AZML_V1_BRIDGE_STRICT": "1"})
    env.update(extra_env or {})
    return subprocess.run(command + ["--", sys.executable, "launcher.py", str(n)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=timeout)


def the_run(client):
    (run,) = client.search_runs([client.get_experiment_by_name("ranks").experiment_id])
    return run


def points_by_rank(client, run, base="loss"):
    """{rank: [steps]} from every series of `base`: `base` is rank 0's, `base/rank_N` rank N's."""
    pattern = re.compile(rf"^{re.escape(base)}(?:/rank_(\d+))?$")
    out = collections.defaultdict(list)
    for key in run.data.metrics:
        match = pattern.match(key)
        if match:
            rank = int(match.group(1) or 0)
            out[rank].extend(m.step for m in client.get_metric_history(run.info.run_id, key))
    return out


# ---------------------------------------------------------------- the scheme, pure

def test_rank_keys_and_paths_round_trip():
    assert ranks.rank_key("loss", 3) == "loss/rank_3"
    assert ranks.split_key("loss/rank_3") == ("loss", "3")
    assert ranks.split_key("table.col/rank_12") == ("table.col", "12")
    assert ranks.split_key("loss") == ("loss", None)
    assert ranks.split_key("a/rank_x y") == ("a/rank_x y", None)
    long_key = "k" * 250
    assert len(ranks.rank_key(long_key, 7)) == 250 and ranks.rank_key(long_key, 7).endswith("/rank_7")
    assert ranks.rank_path("note.txt", 2) == "note/rank_2.txt"
    assert ranks.rank_path("dir/table.json", 2) == "dir/table/rank_2.json"
    assert ranks.rank_path("noext", 2) == "noext/rank_2"
    for path in ("note.txt", "dir/table.json", "noext", "a.b/c.d.json"):
        assert ranks.split_path(ranks.rank_path(path, 5)) == (path, "5")
    assert ranks.split_path("plain/file.txt") == ("plain/file.txt", None)


def test_which_processes_write_their_own_series():
    assert [ranks.is_secondary(r) for r in (None, "", "0", "00", 0, "1", 7, "worker-2")] == [
        False, False, False, False, False, True, True, True]
    env = {"PMI_RANK": "5", "OMPI_COMM_WORLD_RANK": "4"}
    assert ranks.rank_from(env) == "4"  # Open MPI's before MPICH's
    assert ranks.rank_from({"RANK": "2", **env}) == "2"  # torchrun's first
    assert ranks.rank_from({"SLURM_PROCID": "9"}) == "9"
    assert ranks.rank_from({}) is None
    assert ranks.process_label("3", "host", 42) == "rank3"
    assert ranks.process_label(None, "host", 42) == "host-42"


def test_for_rank_renames_the_bridges_series_and_files_not_the_users():
    ops = [Metric("loss", 0.5, 1, 0), Image("plot", b"png", 0, 1), AppendText("note.txt", "x"),
           AppendTable("row.json", {"a": [1]}), ExtendList("lst.json", ["a"]),
           Chart("cm.png", {}, "cm"), Artifact("cm.json", b"{}"),
           Artifact("azml_v1_bridge/long_values/tag.t.txt", b"long"),
           ArtifactFile("outputs/model.pkl", "/tmp/model.pkl"), Tag("t", "v"), Param("p", "v"),
           End("FINISHED", 1)]
    assert ranks.for_rank(ops, "0") is ops and ranks.for_rank(ops, None) is ops
    renamed = ranks.for_rank(ops, "2")
    assert renamed == [
        Metric("loss/rank_2", 0.5, 1, 0), Image("plot/rank_2", b"png", 0, 1),
        AppendText("note/rank_2.txt", "x"), AppendTable("row/rank_2.json", {"a": [1]}),
        ExtendList("lst/rank_2.json", ["a"]), Chart("cm/rank_2.png", {}, "cm"),
        Artifact("cm/rank_2.json", b"{}"),
        Artifact("azml_v1_bridge/long_values/tag.t.txt", b"long"),
        ArtifactFile("outputs/model.pkl", "/tmp/model.pkl"), Tag("t", "v"), Param("p", "v"),
        End("FINISHED", 1)]
    assert ranks.end_as_status([Metric("m", 1.0, 1, 0), End("FAILED", 5)], "rank2") == [
        Metric("m", 1.0, 1, 0), Tag("azml_v1_bridge.process_status.rank2", "FAILED")]


# ---------------------------------------------------------------- real ranks

@pytest.mark.server
@pytest.mark.slow
def test_four_ranks_one_failing_make_one_failed_run_with_every_ranks_points(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    points = 300
    result = launch(tmp_path, 4, mlflow_server.url,
                    {"POINTS": str(points), "FAIL_RANK": "2", "EARLY_COMPLETE": "1",
                     "LOSE_EXIT_CODES": "1"})
    assert "EXIT CODES [0, 0, 1, 0]" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0  # the launcher lost rank 2's exit code...
    client = MlflowClient(mlflow_server.url)
    run = the_run(client)
    assert run.info.status == "FAILED"  # ...but rank 2 said how it ended
    # rank 0's complete() did not end the run the others were still logging into
    assert "STATUS AFTER RANK 0 COMPLETED RUNNING" in result.stdout, result.stdout + result.stderr
    steps = points_by_rank(client, run)
    assert sorted(steps) == [0, 1, 2, 3]
    for rank, rank_steps in steps.items():
        assert sorted(rank_steps) == list(range(points)), rank  # each its own, none clobbered
    assert len({(rank, step) for rank, s in steps.items() for step in s}) == 4 * points
    history = client.get_metric_history(run.info.run_id, "loss/rank_3")
    assert sorted(m.value for m in history) == sorted(3 + 1.0 / (i + 1) for i in range(points))
    tags = run.data.tags
    assert {k: v for k, v in tags.items() if k.startswith(ranks.PROCESS_STATUS_TAG)} == {
        ranks.PROCESS_STATUS_TAG + "rank0": "FINISHED", ranks.PROCESS_STATUS_TAG + "rank1": "FINISHED",
        ranks.PROCESS_STATUS_TAG + "rank2": "FAILED", ranks.PROCESS_STATUS_TAG + "rank3": "FINISHED"}
    # every rank's log_row table is kept, each in its own file
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert "per_rank.json" in files and "per_rank" in files
    per_rank = {f.path for f in client.list_artifacts(run.info.run_id, "per_rank")}
    assert per_rank == {"per_rank/rank_1.json", "per_rank/rank_2.json", "per_rank/rank_3.json"}
    assert len(client.search_runs([run.info.experiment_id])) == 1  # one run, nothing else
    # ./outputs went up once, by the launcher, after the last rank
    outputs = {f.path for f in client.list_artifacts(run.info.run_id, "outputs")}
    assert outputs == {f"outputs/rank{r}" for r in range(4)}


def test_by_default_the_launcher_makes_one_run_of_the_whole_job(mlflow_server, tmp_path):
    """`azml-v1-bridge run -- COMMAND` without options: four ranks, one failing, one FAILED run
    holding every rank's points (the exit codes decide)."""
    from mlflow.tracking import MlflowClient

    points = 50
    default = [sys.executable, "-m", "azml_v1_bridge_tools.cli", "run", "--mode", "mlflow"]
    experiment = "default-one-run"
    result = launch(tmp_path, 4, mlflow_server.url, {"POINTS": str(points), "FAIL_RANK": "3",
                                                      "MLFLOW_EXPERIMENT_NAME": experiment},
                    command=default)
    assert "EXIT CODES [0, 0, 0, 1]" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 1
    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED"
    pairs = {(key, m.step) for key in run.data.metrics
             for m in client.get_metric_history(run.info.run_id, key)}
    # loss: 4 ranks x points; per_rank.rank and per_rank.points: one row per rank
    assert len(pairs) == 4 * points + 2 * 4
    assert sorted(points_by_rank(client, run)) == [0, 1, 2, 3]


@pytest.mark.slow
def test_run_per_process_keeps_one_run_per_process(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    per_process = [sys.executable, "-m", "azml_v1_bridge_tools.cli", "run", "--run-per-process",
                   "--mode", "mlflow"]
    experiment = "run-per-process"
    result = launch(tmp_path, 2, mlflow_server.url, {"POINTS": "5", "MLFLOW_EXPERIMENT_NAME": experiment},
                    command=per_process)
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(mlflow_server.url)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all(set(r.data.metrics) >= {"loss"} for r in runs)  # each its own run: no rank suffix


# ---------------------------------------------------------------- PostgreSQL + mlflow server

@pytest.fixture(scope="module")
def postgres_mlflow_server(tmp_path_factory):
    missing = postgres_missing()
    if missing:
        pytest.skip(missing)
    database = Postgres(postgres_binaries()).start()
    try:
        server = MlflowServer(str(tmp_path_factory.mktemp("mlflow-pg")), backend_uri=database.uri)
        server.start(timeout=180)
        try:
            yield server
        finally:
            server.stop()
    finally:
        database.stop()


@pytest.mark.postgres
@pytest.mark.slow
def test_sixteen_ranks_land_every_point_in_one_run_on_postgres(postgres_mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    ranks_, points = 16, 5_000
    result = launch(tmp_path, ranks_, postgres_mlflow_server.url, {"POINTS": str(points)},
                    timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(postgres_mlflow_server.url)
    run = the_run(client)
    assert run.info.status == "FINISHED"
    steps = points_by_rank(client, run)
    pairs = {(rank, step) for rank, s in steps.items() for step in s}
    assert len(pairs) == ranks_ * points  # nothing lost, nothing clobbered
    assert sum(len(s) for s in steps.values()) == ranks_ * points  # and nothing doubled
    assert sorted(steps) == list(range(ranks_))
