"""Issue 26: as an attacker and a careless user would. No credential printed, written or
tagged; journals private and never written through a symlink; a tampered journal replayed
without a read or write outside its place; one bad value, name or file costs that item
only; a full disk named as such with exact counts.

Real parts: the launcher and bridged scripts in fresh interpreters against the session's
`mlflow server`, real files, modes and symlinks, a second user (nobody) where root can make
one, a small tmpfs inside `unshare --mount` for the full disk. Results are read back with
MlflowClient, counting distinct (key, step) pairs.
"""
import base64
import json
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import ROOT
from faults_helpers import (WRITERS, artifact_paths, bridged_env, client_for,
                            download_json, experiment_runs, journal_lines, journal_pairs,
                            refused_url, run_bridged, run_pairs)

SECRET = "S3cretPW1"
PASSWORD = f"p@ss{SECRET}"  # a raw `@` in the password, as requests accepts it


def with_password(url: str) -> str:
    return url.replace("http://", f"http://alice:{PASSWORD}@")


def assert_no_secret(*texts) -> None:
    for text in texts:
        assert SECRET not in text and "p@ss" not in text, text[-3000:]


def cli_cmd() -> list:
    return [sys.executable, "-m", "azml_v1_bridge_tools.cli"]


def tool_env(**extra) -> dict:
    env = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "AZML_V1_BRIDGE_JOURNAL",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):  # conftest sets it for the suite
        env.pop(name, None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# ---------------------------------------------------------------- credentials


def test_redaction_hides_the_whole_password_of_any_uri_shape():
    from azml_v1_bridge.config import redact
    from azml_v1_bridge.delivery.errors import strip_credentials
    from azml_v1_bridge.report import public_uri

    shapes = [f"http://alice:{PASSWORD}@127.0.0.1:5000/api",
              f"HTTPS://alice:{PASSWORD}@host",
              f"http://alice:{PASSWORD} with space@host/",  # requests sends `%20`
              f"http://al@ce:{PASSWORD}@host?x=1",
              f"http://:{PASSWORD}@host#frag",
              f"postgresql+psycopg2://alice:{PASSWORD}@db:5432/mlflow",
              f"mlflow-artifacts://alice:{PASSWORD}@host/x"]
    for uri in shapes:
        for text in (redact(uri), redact(f"failed: {uri} (retrying)\nnext line"),
                     strip_credentials(uri), public_uri(uri)):
            assert_no_secret(text)
    assert redact(shapes[0]) == "http://***@127.0.0.1:5000/api"
    assert redact("see http://127.0.0.1:5000/x and mail bob@example.org") == \
        "see http://127.0.0.1:5000/x and mail bob@example.org"


@pytest.mark.server
def test_the_launcher_prints_no_password_even_mlflows_own_run_link(mlflow_server, tmp_path):
    """The launcher ends the command's run; MLflow's "View run ... at: <URI>" line would show
    the password (the suite's own MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT is unset here, and
    the user asked for links). All output of the launcher and of doctor is grepped; the run's
    tags, params and report hold no password either."""
    uri = with_password(mlflow_server.url)
    (tmp_path / "train.py").write_text(
        "from azureml.core import Run\nrun = Run.get_context()\n"
        "for i in range(5):\n    run.log('loss', 1.0 / (i + 1))\nrun.complete()\n")
    env = tool_env(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="false", AZML_V1_BRIDGE_REPORT="1",
                   MLFLOW_EXPERIMENT_NAME="security-launcher")
    launched = subprocess.run(cli_cmd() + ["run", "--tracking-uri", uri, "--", sys.executable,
                                           "train.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    doctor = subprocess.run(cli_cmd() + ["doctor", "--tracking-uri", uri], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert_no_secret(launched.stdout, launched.stderr, doctor.stdout, doctor.stderr)
    assert "***@127.0.0.1" in doctor.stdout
    client = client_for(mlflow_server.url)
    (run,) = experiment_runs(client, "security-launcher")
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id,
                                                                           "loss")) == 5
    assert_no_secret(json.dumps(run.data.tags), json.dumps(run.data.params),
                     json.dumps(download_json(client, run.info.run_id,
                                              "azml_v1_bridge/report.json", tmp_path)))


BRIDGED_SCRIPT = """
import sys
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
for i in range(50):
    run.log("loss", float(i))
run.complete()
azml_v1_bridge.flush()
print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
"""


@pytest.mark.server
@pytest.mark.parametrize("writer", WRITERS)
def test_no_password_from_the_writer_its_warnings_or_replay(writer, mlflow_server, tmp_path):
    """A bridged script whose user asked MLflow for run links ends its run against a live
    server (the writer ends it: no link with the password), then the same script against a
    dead store with an `@` password (warnings, journal, report), then `replay` of that
    journal to a dead store given with the password: no output, journal or report holds it."""
    live = run_bridged(BRIDGED_SCRIPT, tmp_path, tool_env(
        **bridged_env(writer, with_password(mlflow_server.url),
                      MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="false", AZML_V1_BRIDGE_STRICT=0)))
    assert live.proc.returncode == 0, live.stderr[-3000:]
    run_id = live.wait_line("parent ").split()[1]
    assert len(run_pairs(client_for(mlflow_server.url), run_id)["loss"]) == 50
    dead = with_password(refused_url())
    journal = tmp_path / "spill" / "journal.jsonl"
    down = run_bridged(BRIDGED_SCRIPT, tmp_path, tool_env(
        **bridged_env(writer, dead, AZML_V1_BRIDGE_STRICT=0, AZML_V1_BRIDGE_RETRY_SECONDS=1,
                      AZML_V1_BRIDGE_REPORT=1, AZML_V1_BRIDGE_JOURNAL=journal)))
    assert down.proc.returncode == 0, down.stderr[-3000:]
    assert "connection refused" in down.stderr and "***@127.0.0.1" in down.stderr
    replay = subprocess.run(cli_cmd() + ["replay", str(journal), "--tracking-uri", dead],
                            cwd=tmp_path, env=tool_env(), capture_output=True, text=True,
                            timeout=300)
    assert replay.returncode == 1 and "not delivered" in replay.stderr, replay.stderr[-3000:]
    assert_no_secret(live.stdout, live.stderr, down.stdout, down.stderr, replay.stdout,
                     replay.stderr, journal.read_text())


# ---------------------------------------------------------------- journals


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


SPILL_SCRIPT = """
import os
import azml_v1_bridge
from azureml.core import Run
os.umask(0o022)
run = Run.get_context()
for i in range(100):
    run.log("loss", float(i))
run.upload_file("weights.bin", "weights.bin")  # over 64 KB: copied into JOURNAL.files
run.complete()
"""


@pytest.mark.parametrize("writer", WRITERS)
def test_journals_are_private_and_planted_symlinks_are_not_followed(writer, tmp_path):
    """Under umask 022, with a dead store: the journal folder is 0700, its file 0600, the copy
    of a 0600 upload in `.files` 0600. A journal folder of another user holding a symlink to
    a victim's file, and a symlink planted at the file's path in the next folder, are both
    passed over (named in the warning); the victims are untouched; the journal is complete
    in the last fallback folder."""
    from faults_helpers import shared_folder

    (tmp_path / "weights.bin").write_bytes(os.urandom(100_000))
    os.chmod(tmp_path / "weights.bin", 0o600)
    world = shared_folder()
    try:
        victim = os.path.join(world, "victim.txt")
        with open(victim, "w") as fh:
            fh.write("victim's own\n")
        os.chmod(victim, 0o600)
        # the wanted folder: made by someone else (nobody where root can give it away)
        planted = os.path.join(world, "planted")
        os.makedirs(planted)
        os.symlink(victim, os.path.join(planted, "journal.jsonl"))
        if os.geteuid() == 0:
            os.chown(planted, 65534, 65534)
            os.lchown(os.path.join(planted, "journal.jsonl"), 65534, 65534)
        else:
            os.chmod(planted, 0o777)  # our own, but others can write it
        # the first fallback: ours, with a symlink where the journal file would go
        state = tmp_path / "state"
        first = state / "azml_v1_bridge" / "journal"
        first.mkdir(parents=True, mode=0o700)
        os.symlink(victim, first / "journal.jsonl")
        temp = tmp_path / "tmpdir"
        temp.mkdir()
        env = bridged_env(writer, refused_url(), AZML_V1_BRIDGE_STRICT=0,
                          AZML_V1_BRIDGE_RETRY_SECONDS=1,
                          AZML_V1_BRIDGE_JOURNAL=os.path.join(planted, "journal.jsonl"),
                          XDG_STATE_HOME=state, TMPDIR=temp)
        script = run_bridged(SPILL_SCRIPT, tmp_path, tool_env(**env))
        assert script.proc.returncode == 0, script.stderr[-3000:]
        with open(victim) as fh:
            assert fh.read() == "victim's own\n"
        assert mode(victim) == 0o600 and os.path.islink(first / "journal.jsonl")
        folder = temp / f"azml_v1_bridge-{os.getuid()}" / "journal"
        journal = folder / "journal.jsonl"
        assert journal.is_file(), script.stderr[-3000:]
        assert str(journal) in script.stderr, script.stderr[-3000:]
        assert ("belongs to another user" in script.stderr
                or "can be written by other users" in script.stderr), script.stderr[-3000:]
        assert mode(folder) == mode(folder.parent) == 0o700
        assert mode(journal) == 0o600
        files = folder / "journal.jsonl.files"
        assert mode(files) == 0o700
        copies = os.listdir(files)
        assert len(copies) == 1 and mode(files / copies[0]) == 0o600
        assert journal_pairs(str(journal)) == {("loss", s) for s in range(100)}
    finally:
        shutil.rmtree(world, ignore_errors=True)


def test_a_dangling_symlink_at_the_sqlite_lock_path_creates_nothing(tmp_path, empty_store_file):
    from azml_v1_bridge.delivery.store import Store

    shutil.copyfile(empty_store_file, tmp_path / "mlflow.db")
    target = tmp_path / "elsewhere" / "created-through-the-link"
    (tmp_path / "elsewhere").mkdir()
    os.symlink(target, tmp_path / "mlflow.db.azml_v1_bridge.lock")
    store = Store(f"sqlite:///{tmp_path}/mlflow.db")
    store.probe()
    assert not os.path.lexists(target)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copyfile(empty_store_file, fresh / "mlflow.db")
    umask = os.umask(0o022)
    try:
        Store(f"sqlite:///{fresh}/mlflow.db").probe()
    finally:
        os.umask(umask)
    assert mode(fresh / "mlflow.db.azml_v1_bridge.lock") == 0o600


# ---------------------------------------------------------------- replay


def test_a_tampered_journal_is_replayed_inside_its_place(store, tmp_path, monkeypatch):
    """Lines that would write outside replay's temp folder, read outside the journal's
    `.files` (a path, a planted symlink), or carry a step MLflow cannot store are skipped,
    counted and named; everything else is delivered."""
    from azml_v1_bridge.delivery.replay import replay_journal

    temp = tmp_path / "replay-tmp" / "a" / "b"
    temp.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(temp))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    journal = tmp_path / "j" / "journal.jsonl"
    files = tmp_path / "j" / "journal.jsonl.files"
    files.mkdir(parents=True)
    (files / "good.bin").write_bytes(b"good bytes")
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("not for upload")
    os.symlink(secret, files / "linked.bin")
    b64 = base64.b64encode(b"escaped").decode()
    lines = [
        {"t": "journal", "v": 1, "pid": 1, "host": "h", "cwd": str(tmp_path)},
        {"t": "run", "run": "r1", "tracking_uri": os.environ["MLFLOW_TRACKING_URI"],
         "v1_id": "v1", "parent": None, "experiment_id": "0", "experiment_name": None,
         "mlflow_run_id": None, "run_name": "tampered", "start_ms": 1, "adopted": False,
         "tags": {}},
        {"t": "create", "run": "r1"},
        {"t": "metrics", "run": "r1", "m": [["loss", float(s), 1000 + s, s] for s in range(200)]
         + [["loss", 9.0, 1000, 2 ** 63], ["bad", "x", 1, 1]]},
        {"t": "artifact", "run": "r1", "path": "../../escape.txt", "b64": b64},
        {"t": "artifact", "run": "r1", "path": "/abs/escape.txt", "b64": b64},
        {"t": "artifact", "run": "r1", "path": "hostname", "file": "../../../../etc/hostname"},
        {"t": "artifact", "run": "r1", "path": "linked.txt", "file": "linked.bin"},
        {"t": "artifact", "run": "r1", "path": "ok/good.bin", "file": "good.bin"},
        {"t": "end", "run": "r1", "status": "FINISHED", "timestamp": 5000},
    ]
    journal.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")
    counts = replay_journal(str(journal))
    assert counts["metrics_sent"] == 200 and counts["artifacts_sent"] == 1, counts
    bad = "\n".join(counts["bad"])
    for why in ("step 9223372036854775808", "'bad'", "../../escape.txt", "/abs/escape.txt",
                "../../../../etc/hostname", "line 11"):
        assert why in bad, bad
    assert counts["bad_lines"] == 6
    assert any("linked.txt" in e for e in counts["errors"]), counts["errors"]
    assert not list(tmp_path.rglob("escape.txt"))
    run_id = counts["runs"]["r1"]
    assert artifact_paths(store, run_id) == {"ok/good.bin"}
    assert {(k, s) for k, steps in run_pairs(store, run_id).items() for s in steps} == \
        {("loss", s) for s in range(200)}


# ---------------------------------------------------------------- bad values, names, files


BAD_INPUT_SCRIPT = """
import os
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
for s in range(200):
    run.log("loss", float(s), step=s)
    if s == 100:
        run.log("loss", 1.0, step=2 ** 63)       # MLflow: INTERNAL_ERROR, not an outage
        run.log("edge", 1.0, step=2 ** 63 - 1)   # the largest step MLflow stores
        run.log("acc:top1", 0.5)                 # MLflow 2.12 refuses `:`
os.makedirs("data/real", exist_ok=True)
open("data/real/inside.txt", "w").write("inside")
open("linked_target.txt", "w").write("target")
os.makedirs("elsewhere", exist_ok=True)
open("elsewhere/far.txt", "w").write("far")
os.symlink(os.path.abspath("elsewhere"), "data/folder_link")
os.symlink(os.path.abspath("linked_target.txt"), "data/file_link.txt")
os.symlink("..", "data/real/up")
open("one.txt", "w").write("one")
open("two.txt", "w").write("two")
run.upload_file("../../etc/x", "one.txt")
run.upload_file("etc/x", "two.txt")
run.upload_folder("data", "data")
run.complete()
azml_v1_bridge.flush()
print("parent", azml_v1_bridge.mlflow_run_id(run), flush=True)
"""


@pytest.mark.server
@pytest.mark.parametrize("writer", WRITERS)
def test_one_bad_value_name_or_file_costs_that_item_only(writer, mlflow_server, tmp_path):
    """Beside 200 good points: a step of 2**63 is refused alone and named in the report (the
    run is not taken for down, nothing is journaled); `acc:top1` lands under a key every
    MLflow takes; two uploads that fold to one name are both kept, the rename reported;
    symlinks in upload_folder are followed, to folders as to files, and a loop is noted."""
    env = bridged_env(writer, mlflow_server.url, AZML_V1_BRIDGE_STRICT=0,
                      AZML_V1_BRIDGE_JOURNAL=tmp_path / "journal.jsonl")
    script = run_bridged(BAD_INPUT_SCRIPT, tmp_path, tool_env(**env))
    assert script.proc.returncode == 0, script.stderr[-3000:]
    run_id = script.wait_line("parent ").split()[1]
    client = client_for(mlflow_server.url)
    pairs = {(k, s) for k, steps in run_pairs(client, run_id).items() for s in steps}
    renamed_acc = [k for k, _ in pairs if k.startswith("acc_top1_")]
    assert len(renamed_acc) == 1
    assert pairs == ({("loss", s) for s in range(200)} | {("edge", 2 ** 63 - 1)}
                     | {(renamed_acc[0], 0)}), sorted(pairs)[-5:]
    assert not (tmp_path / "journal.jsonl").exists(), "the run was taken for down"
    report = download_json(client, run_id, "azml_v1_bridge/report.json", tmp_path)
    notes = json.dumps(report["notes"])
    assert "out_of_range" in notes and "9223372036854775808" in notes
    assert report["renamed"].get("acc:top1") == renamed_acc[0]
    paths = artifact_paths(client, run_id)
    renamed_x = report["renamed"].get("etc/x") or report["renamed"].get("../../etc/x")
    assert renamed_x and {"etc/x", renamed_x} <= paths, (report["renamed"], paths)
    assert {"data/real/inside.txt", "data/folder_link/far.txt", "data/file_link.txt"} <= paths
    assert "symlink_loop" in notes and "data/real/up" in notes
    texts = {}
    for name in ("etc/x", renamed_x):
        local = client.download_artifacts(run_id, name, str(tmp_path / "dl"))
        texts[name] = open(local).read()
    assert sorted(texts.values()) == ["one", "two"]


def test_series_and_rewritten_keys_are_valid_on_the_lowest_mlflow():
    """Rank and fork series of a long key, and names with `:`, map to keys MLflow 2.12's rule
    (`^[/\\w.\\- ]*$`, at most 250 characters) and today's MLflow both accept."""
    from mlflow.utils.validation import _validate_metric_name

    from azml_v1_bridge import ranks
    from azml_v1_bridge.translate import mlflow_key

    rule_2_12 = re.compile(r"^[/\w.\- ]*$")
    keys = [mlflow_key("acc:top1"), mlflow_key("a b:c")]
    for length in (230, 244, 245, 250):
        base = mlflow_key("k" * length)
        keys += [ranks.rank_key(base, 12), ranks.series_key(base, f"/fork_{2 ** 22}"),
                 ranks.series_key(ranks.rank_key(base, 3), "/fork_123456")]
    for key in keys:
        assert rule_2_12.fullmatch(key) and len(key) <= 250, key
        _validate_metric_name(key)
    assert len(set(keys)) == len(keys)


# ---------------------------------------------------------------- disk full


def unshare_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI is root)")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt && echo mounted"],
                           capture_output=True, text=True, timeout=60)
    if "mounted" not in probe.stdout:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {probe.stderr.strip()}")


FULL_SCRIPT = """
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
for s in range(500):
    run.log("loss", float(s))
azml_v1_bridge.flush()                    # spill 1: fits in the small disk
run.upload_file("big.bin", "big.bin")     # spill 2: does not fit
for s in range(500, 1000):
    run.log("loss", float(s))
run.complete()
"""


@pytest.mark.parametrize("writer", WRITERS)
def test_a_full_disk_is_named_moves_on_and_counts_exactly(writer, tmp_path):
    """The journal's folder is a 96 KB tmpfs and the store is down: the spill that does not
    fit is taken back whole (no partial line, no partial copy), written to the next folder,
    and the warning says "no space left on device"; the report's journaled count is exactly
    what the two journals hold, and every one of the 1000 points is in one of them."""
    unshare_or_skip()
    small = tmp_path / "small"
    small.mkdir()
    after = tmp_path / "after"
    (tmp_path / "big.bin").write_bytes(os.urandom(150_000))
    state = tmp_path / "state"
    env = tool_env(**bridged_env(writer, refused_url(), AZML_V1_BRIDGE_STRICT=0,
                                 AZML_V1_BRIDGE_RETRY_SECONDS=1, AZML_V1_BRIDGE_REPORT=1,
                                 AZML_V1_BRIDGE_JOURNAL=small / "journal.jsonl",
                                 XDG_STATE_HOME=state))
    (tmp_path / "script.py").write_text(FULL_SCRIPT)
    shell = (f"mount -t tmpfs -o size=96k,mode=0700 tmpfs {small} && "
             f"{sys.executable} script.py; code=$?; cp -a {small} {after}; exit $code")
    result = subprocess.run(["unshare", "--mount", "sh", "-c", shell], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no space left on device" in result.stderr, result.stderr[-3000:]
    first = after / "journal.jsonl"
    second = state / "azml_v1_bridge" / "journal" / "journal.jsonl"
    assert first.is_file() and second.is_file(), result.stderr[-3000:]
    raw = first.read_bytes()
    assert raw.endswith(b"\n")
    lines = journal_lines(str(first), str(second))  # every line parses
    left = after / "journal.jsonl.files"
    assert not left.exists() or os.listdir(left) == []  # the partial copy was removed
    assert journal_pairs(str(first)) == {("loss", s) for s in range(500)}
    assert journal_pairs(str(first), str(second)) == {("loss", s) for s in range(1000)}
    # the report counts what was journaled before it; the report itself is journaled after
    lines = [line for line in lines if line.get("path") != "azml_v1_bridge/report.json"]
    items = sum(len(line["m"]) if line["t"] == "metrics" else
                len(line.get("p", line.get("tags", []))) if line["t"] in ("params", "tags") else
                1 if line["t"] in ("artifact", "image", "end") else 0 for line in lines)
    reported = [int(n) for n in re.findall(r"journaled (\d+) item", result.stderr)]
    assert reported == [items], (reported, items, result.stderr[-2000:])
    (report_line,) = [line for line in result.stderr.splitlines() if "journaled" in line]
    assert str(small / "journal.jsonl") in report_line and str(second) in report_line


def test_a_full_disk_is_named_as_such():
    import errno
    import sqlite3

    from azml_v1_bridge import causes

    for exc in (sqlite3.OperationalError("database or disk is full"),
                OSError(errno.ENOSPC, "No space left on device", "/data/j.jsonl")):
        cause = causes.classify(exc, "sqlite:////data/mlflow.db")
        assert cause.kind == causes.DISK_FULL and not cause.transient
        assert "no space left on device (the folder of /data/mlflow.db)" in cause.message


# ---------------------------------------------------------------- under load: fork and the store lock

FORK_LOCK_SCRIPT = """
import os, signal, sys, time
from azml_v1_bridge.delivery.store import _FirstUseLock
db = os.path.join(os.getcwd(), "mlflow.db")
lock = _FirstUseLock(db)
lock.__enter__()                  # the parent's writer thread, opening the store
pid = os.fork()                   # a Pool worker forked meanwhile (more likely under load)
if pid == 0:
    signal.alarm(30)              # otherwise: blocked for ever
    with _FirstUseLock(db):       # the worker's own writer opens the store
        pass
    os._exit(0)
time.sleep(0.5)                   # the worker waits while the parent still holds it
lock.__exit__(None, None, None)
_, status = os.waitpid(pid, 0)
print("worker", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_a_worker_forked_while_the_store_lock_is_held_does_not_deadlock(tmp_path):
    """Why fork Pool workers on one sqlite store lost a task's points under load (thread
    writer): a worker forked while the parent's writer held the store's first-use flock kept
    a copy of that lock (flock belongs to the open file) and its own writer then waited for it
    for ever; at the SIGTERM deadline its points went to the journal. The child now drops its
    copies at the fork and waits only for the parent."""
    from conftest import run_script

    result = run_script(FORK_LOCK_SCRIPT, tmp_path, timeout=120)
    assert result.stdout.strip() == "worker 0", (result.stdout, result.stderr[-2000:])


def test_replay_never_makes_a_local_store_a_journal_names(tmp_path, monkeypatch):
    """A journal whose run line names a local store that is not there (a tampered path, or a
    folder elsewhere) is not delivered: replay names it and creates nothing; --tracking-uri
    (or MLFLOW_TRACKING_URI) is the way to give a store."""
    from azml_v1_bridge.delivery.replay import replay_journal

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    target = tmp_path / "elsewhere" / "planted.db"
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(json.dumps(line) for line in [
        {"t": "journal", "v": 1, "pid": 1, "host": "h", "cwd": str(tmp_path)},
        {"t": "run", "run": "r1", "tracking_uri": f"sqlite:///{target}", "v1_id": "v1",
         "parent": None, "experiment_id": "0", "run_name": "x", "start_ms": 1, "tags": {}},
        {"t": "metrics", "run": "r1", "m": [["loss", 1.0, 1, 0]]}]) + "\n")
    counts = replay_journal(str(journal))
    assert counts["failed"] == ["r1"] and "does not exist" in counts["errors"][0]
    assert not (tmp_path / "elsewhere").exists()


def test_replay_sends_no_credentials_to_a_host_only_the_journal_names(mlflow_server, tmp_path,
                                                                      monkeypatch):
    """A journal is untrusted: with credentials in the environment, replay does not deliver to
    a remote store that only the journal names (no connection is made to it) and says how to
    name one; named with --tracking-uri, the same journal is delivered there."""
    from azml_v1_bridge.delivery.replay import replay_journal
    from faults_helpers import Hole

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    for name, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", "2"), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")):
        monkeypatch.setenv(name, value)  # were it contacted, it would be seen in seconds
    with Hole() as planted:
        journal = tmp_path / "journal.jsonl"
        journal.write_text("\n".join(json.dumps(line) for line in [
            {"t": "journal", "v": 1, "pid": 1, "host": "h", "cwd": str(tmp_path)},
            {"t": "run", "run": "r1", "tracking_uri": planted.url, "v1_id": "v1",
             "parent": None, "experiment_id": "0", "run_name": "x", "start_ms": 1, "tags": {}},
            {"t": "metrics", "run": "r1", "m": [["loss", float(s), 1, s] for s in range(5)]}])
            + "\n")
        counts = replay_journal(str(journal))
        assert counts["failed"] == ["r1"], counts
        assert "MLFLOW_TRACKING_TOKEN" in counts["errors"][0]
        assert "--tracking-uri" in counts["errors"][0] and SECRET not in counts["errors"][0]
        assert planted.held == []  # not even a connection

        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")  # the session's server takes none
        named = replay_journal(str(journal), tracking_uri=mlflow_server.url)
        assert named["errors"] == [] and planted.held == []
    client = client_for(mlflow_server.url)
    assert run_pairs(client, named["runs"]["r1"]) == {"loss": list(range(5))}
