"""The outputs folder: what the v1 job runtime uploaded into every run, uploaded by the bridge.

A real `mlflow server` (served artifacts, over HTTP) for the big one; sqlite stores
with MlflowClient for the rest.
"""
import hashlib
import io
import os
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import run_script  # noqa: E402
import azml_v1_bridge  # noqa: E402

BIG = 50 * 1024 * 1024

SCRIPT = """
import os
import azml_v1_bridge
from azureml.core import Run

run = Run.get_context()
os.makedirs("outputs/model/weights", exist_ok=True)
os.makedirs("outputs/reports/2024/q1", exist_ok=True)
os.makedirs("outputs/empty", exist_ok=True)
with open("outputs/model/weights/big.bin", "wb") as fh:
    for _ in range(50):
        fh.write(os.urandom(1024 * 1024))
open("outputs/model/config.json", "w").write('{"layers": 3}')
open("outputs/reports/2024/q1/summary.txt", "w").write("fine")
open("outputs/top.txt", "w").write("top")
for i in range(100):
    run.log("loss", 1.0 / (i + 1))
print("MLFLOW_RUN", azml_v1_bridge.mlflow_run_id(run))
"""


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_hashes(folder):
    out = {}
    for here, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(here, name)
            out[os.path.relpath(full, folder).replace(os.sep, "/")] = sha256(full)
    return out


@pytest.mark.server
@pytest.mark.slow
def test_outputs_with_nested_folders_and_a_50mb_file_arrive_intact(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    result = run_script(SCRIPT, tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_server.url,
                                               "AZML_V1_BRIDGE_MODE": "mlflow",
                                               "MLFLOW_EXPERIMENT_NAME": "outputs-test"})
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split("MLFLOW_RUN")[1].split()[0]
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "loss")) == 100

    local = client.download_artifacts(run_id, "outputs", str(tmp_path / "downloaded"))
    expected = tree_hashes(tmp_path / "outputs")
    assert set(expected) == {"model/weights/big.bin", "model/config.json",
                             "reports/2024/q1/summary.txt", "top.txt"}
    assert tree_hashes(local) == expected
    assert os.path.getsize(os.path.join(local, "model", "weights", "big.bin")) == BIG

    # stderr is not a terminal here: one progress line per file, then a summary
    lines = [line for line in result.stderr.splitlines() if "azml_v1_bridge:" in line]
    assert any("uploading outputs: 4 files, 52.4 MB" in line for line in lines), result.stderr
    for name in expected:
        assert any(f"uploaded outputs/{name} (" in line for line in lines), name
    assert any("[4/4 files, 100%]" in line for line in lines)
    assert any("4 files, 52.4 MB uploaded in" in line for line in lines)


# ---------------------------------------------------------------- in-process

def offline_run():
    from azureml.core import Run

    return Run.get_context()


def artifacts(client, run_id, path=None):
    out = []
    for info in client.list_artifacts(run_id, path):
        out.extend(artifacts(client, run_id, info.path) if info.is_dir else [info.path])
    return sorted(out)


def make_outputs(folder, files):
    for rel, data in files.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


@pytest.fixture
def outputs_setting(bridge, monkeypatch):
    """enable(mode) with AZML_V1_BRIDGE_OUTPUTS as given (None: unset), reset afterwards."""
    def apply(mode, value):
        if value is None:
            monkeypatch.delenv("AZML_V1_BRIDGE_OUTPUTS", raising=False)
        else:
            monkeypatch.setenv("AZML_V1_BRIDGE_OUTPUTS", value)
        bridge.enable(mode)

    yield apply
    monkeypatch.delenv("AZML_V1_BRIDGE_OUTPUTS", raising=False)
    azml_v1_bridge.finish()
    bridge.enable("mirror")


@pytest.mark.parametrize("mode, setting, uploaded", [
    ("mlflow", None, True), ("mlflow", "0", False), ("mirror", None, False), ("mirror", "1", True),
])
def test_outputs_switch(outputs_setting, store, tmp_path, mode, setting, uploaded):
    import azml_v1_bridge

    outputs_setting(mode, setting)
    make_outputs(tmp_path / "outputs", {"model.pkl": b"weights", "sub/dir/notes.md": b"# hi"})
    run = offline_run()
    run.log("x", 1)
    run_id = azml_v1_bridge.mlflow_run_id(run)
    azml_v1_bridge.finish()  # the end of the process, for the run
    files = artifacts(store, run_id)
    assert [f for f in files if f.startswith("outputs/")] == (
        ["outputs/model.pkl", "outputs/sub/dir/notes.md"] if uploaded else [])
    assert store.get_run(run_id).info.status == "FINISHED"


def test_start_logging_outputs_folder_and_only_top_level_runs(outputs_setting, store, tmp_path):
    from azureml.core import Experiment

    outputs_setting("mlflow", None)
    make_outputs(tmp_path / "results", {"a.txt": b"A", "deep/b.txt": b"B"})
    make_outputs(tmp_path / "outputs", {"not-this.txt": b"no"})
    experiment = object.__new__(Experiment)  # no workspace needed: v1 does not run in mlflow mode
    experiment._name = "interactive"
    run = experiment.start_logging(outputs="results")
    child = run.child_run(name="step")
    child.log("m", 1)
    child.complete()  # a child run never uploads the folder
    run.complete()
    import azml_v1_bridge

    parent_id, child_id = azml_v1_bridge.mlflow_run_id(run), azml_v1_bridge.mlflow_run_id(child)
    assert artifacts(store, child_id) == []
    assert artifacts(store, parent_id, "outputs") == ["outputs/a.txt", "outputs/deep/b.txt"]
    assert store.get_run(parent_id).info.status == "FINISHED"


def test_start_logging_outputs_false_uploads_no_folder(outputs_setting, store, tmp_path):
    """v1's start_logging(outputs=False) is "no outputs": ./outputs stays on the disk only;
    outputs=True is ./outputs, as v1 reads them."""
    from azureml.core import Experiment
    import azml_v1_bridge

    outputs_setting("mlflow", None)
    make_outputs(tmp_path / "outputs", {"model.pkl": b"weights"})
    experiment = object.__new__(Experiment)
    experiment._name = "interactive"
    runs = {}
    for given in (False, True):
        run = experiment.start_logging(outputs=given)
        run.log("m", 1)
        run.complete()
        runs[given] = azml_v1_bridge.mlflow_run_id(run)
    assert artifacts(store, runs[False]) == []
    assert artifacts(store, runs[True], "outputs") == ["outputs/model.pkl"]
    assert store.get_run(runs[False]).info.status == "FINISHED"


@pytest.mark.parametrize("rank, uploaded", [(None, True), ("1", False)], ids=["alone", "rank-1"])
def test_a_run_adopted_through_mlflow_run_id_gets_outputs_from_the_bridge(outputs_setting, store, tmp_path,
                                                                          monkeypatch, rank, uploaded):
    """MLFLOW_RUN_ID outside an Azure ML job: nothing else uploads ./outputs into that run, so the
    bridge does, once (rank 0's process only, when ranks share it), and leaves the run to its
    owner (in a job the job uploads it: see tests/test_azure_job.py)."""
    import azml_v1_bridge

    owner = store.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", owner)
    if rank is not None:
        monkeypatch.setenv("AZML_V1_BRIDGE_RANK", rank)
    try:
        outputs_setting("mlflow", None)
        make_outputs(tmp_path / "outputs", {"model.pkl": b"weights"})
        run = offline_run()
        run.log("x", 1)
        run.complete()  # the adopted run is not ended; its outputs go up now, not again at the end
        azml_v1_bridge.finish()
    finally:  # before the fixture's enable("mirror"): later tests must not inherit the rank
        monkeypatch.delenv("AZML_V1_BRIDGE_RANK", raising=False)
    assert artifacts(store, owner, "outputs") == (["outputs/model.pkl"] if uploaded else [])
    assert store.get_run(owner).info.status == "RUNNING"


def test_the_upload_comes_after_the_runs_data_before_its_end_and_blocks_no_logging(
        outputs_setting, store, tmp_path, monkeypatch):
    """complete() uploads on its own thread: another thread logging meanwhile never waits."""
    from mlflow.tracking import MlflowClient

    import azml_v1_bridge

    outputs_setting("mlflow", None)
    make_outputs(tmp_path / "outputs", {f"part{i}.bin": os.urandom(1024) for i in range(4)})
    seen, uploads = [], []
    original = MlflowClient.log_artifact

    def slow_log_artifact(self, run_id, local_path, artifact_path=None):
        run = store.get_run(run_id)  # what the run holds when its outputs go up
        seen.append((run.info.status, len(store.get_metric_history(run_id, "before"))))
        start = time.perf_counter()
        time.sleep(0.5)
        uploads.append((start, time.perf_counter()))
        return original(self, run_id, local_path, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifact", slow_log_artifact)
    run = offline_run()
    for i in range(300):
        run.log("before", i)
    other = run.child_run(name="busy")  # another run, logged to from another thread
    other.log("warmup", 0)
    other.flush()
    calls = []
    stop = threading.Event()

    def keep_logging():
        while not stop.is_set():
            start = time.perf_counter()
            other.log("during", 1.0)
            calls.append((start, time.perf_counter()))
            time.sleep(0.001)

    logger = threading.Thread(target=keep_logging)
    logger.start()
    try:
        started = time.monotonic()
        run.complete()
        took = time.monotonic() - started
    finally:
        stop.set()
        logger.join()
    run_id = azml_v1_bridge.mlflow_run_id(run)
    assert took >= 2.0  # four files at 0.5 s: complete() returned after the upload
    assert seen == [("RUNNING", 300)] * 4  # after the run's earlier data, before its end
    assert store.get_run(run_id).info.status == "FINISHED"
    # No logging call waited for an upload: none spans one (on a loaded machine a call may be
    # descheduled for a while, which is not waiting; a call that waits spans a whole 0.5 s upload).
    assert len(uploads) == 4 and len(calls) > 100
    waited = [(c0, c1) for c0, c1 in calls for u0, u1 in uploads if c0 <= u0 and u1 <= c1]
    assert not waited, waited
    other.flush()
    assert len(store.get_metric_history(azml_v1_bridge.mlflow_run_id(other), "during")) == len(calls)


def test_files_the_store_refused_go_to_the_writer(outputs_setting, store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    import azml_v1_bridge

    outputs_setting("mlflow", None)
    files = {"1.txt": b"one", "2.txt": b"two", "3/4.txt": b"four"}
    make_outputs(tmp_path / "outputs", files)
    original, calls = MlflowClient.log_artifact, []

    def flaky(self, run_id, local_path, artifact_path=None):
        calls.append(local_path)
        if len(calls) == 2:
            raise ConnectionError("store hiccup")
        return original(self, run_id, local_path, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifact", flaky)
    run = offline_run()
    run.log("x", 1)
    run_id = azml_v1_bridge.mlflow_run_id(run)
    azml_v1_bridge.finish()
    assert artifacts(store, run_id, "outputs") == ["outputs/1.txt", "outputs/2.txt", "outputs/3/4.txt"]
    for rel, data in files.items():
        local = store.download_artifacts(run_id, f"outputs/{rel}", str(tmp_path / "check"))
        assert open(local, "rb").read() == data


# ---------------------------------------------------------------- progress display

class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    from azml_v1_bridge.outputs import Progress

    terminal = Terminal()
    progress = Progress(3, 30_000_000, terminal)
    progress.start()
    for i in range(3):
        progress.file_done(f"part{i}.bin", 10_000_000)
    progress.finish()
    text = terminal.getvalue()
    assert text.count("\r") == 4  # the bar is redrawn in place: at the start, after each file
    assert "[" + "#" * 28 + "] 100% 3/3 files 30.0 MB/30.0 MB" in text
    assert "[" + "." * 28 + "]   0%" in text
    assert text.endswith("3 files, 30.0 MB uploaded in 0.0s\n")

    log = io.StringIO()
    progress = Progress(2, 20_000_000, log)
    progress.start()
    progress.file_done("a/big.bin", 15_000_000)
    progress.file_done("small.txt", 5_000_000)
    progress.finish()
    assert log.getvalue().splitlines()[:3] == [
        "azml_v1_bridge: uploading outputs: 2 files, 20.0 MB",
        "azml_v1_bridge: uploaded outputs/a/big.bin (15.0 MB) [1/2 files, 75%]",
        "azml_v1_bridge: uploaded outputs/small.txt (5.0 MB) [2/2 files, 100%]",
    ]
    assert "\r" not in log.getvalue()

    quiet = io.StringIO()
    small = Progress(5, 1000, quiet)  # a small upload says nothing
    small.start()
    small.file_done("x", 1000)
    small.finish()
    assert quiet.getvalue() == ""
