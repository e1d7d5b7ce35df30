"""Activation, modes, safety: how the bridge lives inside a training script."""
import math
import threading

import pytest
from conftest import run_script
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

READ_BACK = """
import json, sys
from mlflow.tracking import MlflowClient
c = MlflowClient(sys.argv[1])
runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
print(json.dumps([{"status": r.info.status, "metrics": r.data.metrics,
                   "tags": r.data.tags} for r in runs]))
"""


def read_runs(tmp_path):
    import json
    import subprocess
    import sys

    db = tmp_path / "mlflow.db"
    if not db.exists():
        return []
    out = subprocess.run([sys.executable, "-c", READ_BACK, f"sqlite:///{db}"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


LEGACY = """
{first}
{second}
run = Run.get_context()
run.log("accuracy", 0.9)
run.log("accuracy", 0.95)
"""


@pytest.mark.parametrize("order", ["bridge_first", "azureml_first"])
def test_both_import_orders_bridge(tmp_path, order):
    lines = ["import azml_v1_bridge", "from azureml.core import Run"]
    if order == "azureml_first":
        lines.reverse()
    proc = run_script(LEGACY.format(first=lines[0], second=lines[1]), tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = read_runs(tmp_path)
    assert run["metrics"] == {"accuracy": 0.95}
    assert run["status"] == "FINISHED"  # never called complete(): finished at exit


def test_uncaught_exception_ends_failed(tmp_path):
    code = LEGACY.format(first="import azml_v1_bridge", second="from azureml.core import Run")
    proc = run_script(code + "raise SystemError('training died')\n", tmp_path)
    assert proc.returncode == 1
    (run,) = read_runs(tmp_path)
    assert run["status"] == "FAILED" and run["metrics"] == {"accuracy": 0.95}


def test_off_patches_nothing(tmp_path):
    code = LEGACY.format(first="import azml_v1_bridge", second="from azureml.core import Run")
    code += "import azureml.core.run as r\nfrom azml_v1_bridge.patch import is_bridged\n"
    code += "assert not is_bridged(r.Run.__dict__['log']) and not is_bridged(r._OfflineRun.__dict__['log'])\n"
    code += "assert r.Run.__dict__['log'].__qualname__ == 'Run.log'\n"
    proc = run_script(code, tmp_path, env={"AZML_V1_BRIDGE_MODE": "off"})
    assert proc.returncode == 0, proc.stderr
    assert read_runs(tmp_path) == []
    assert "Attempted to log scalar metric accuracy" in proc.stdout  # plain v1, untouched


def test_unknown_mode_fails_at_import_naming_valid_values(tmp_path):
    code = "import azml_v1_bridge\nprint('training started')\n"
    proc = run_script(code, tmp_path, env={"AZML_V1_BRIDGE_MODE": "mirorr"})
    assert proc.returncode != 0
    assert "training started" not in proc.stdout
    assert "mirorr" in proc.stderr
    for valid in ("mirror", "mlflow", "off"):
        assert valid in proc.stderr


def test_mlflow_mode_runs_no_v1_code(tmp_path):
    code = LEGACY.format(first="import azml_v1_bridge", second="from azureml.core import Run")
    code += "run.tag('t', 'v')\nrun.flush()\nrun.complete()\n"
    proc = run_script(code, tmp_path, env={"AZML_V1_BRIDGE_MODE": "mlflow"})
    assert proc.returncode == 0, proc.stderr
    assert "Attempted" not in proc.stdout  # v1's offline prints never ran
    (run,) = read_runs(tmp_path)
    assert run["metrics"] == {"accuracy": 0.95} and run["tags"]["t"] == "v"


def test_mirror_mode_runs_v1_once_with_same_arguments(store, bridge, capsys):
    from azureml.core import Run

    bridge.enable("mirror")
    run = Run.get_context()
    run.log_list("gen", (i for i in range(3)))
    out = capsys.readouterr().out
    assert out.count("Attempted to log list metric gen") == 1
    assert "[0, 1, 2]" in out  # v1 got the materialized values, not an exhausted generator
    run.flush()
    import azml_v1_bridge

    assert len(store.get_metric_history(azml_v1_bridge.mlflow_run_id(run), "gen")) == 3


def test_mirror_v1_exception_passes_through_and_nothing_is_sent(store, bridge):
    from azureml.core.run import _OfflineRun

    bridge.enable("mirror")
    run = _OfflineRun()
    with pytest.raises(TypeError):
        run.log_row("t", "description", "extra positional")  # v1's own TypeError
    run.log("ok", 1)
    run.flush()
    import azml_v1_bridge

    r = store.get_run(azml_v1_bridge.mlflow_run_id(run))
    assert r.data.metrics == {"ok": 1.0}


def test_enable_is_idempotent_and_disable_restores_originals(bridge):
    from azml_v1_bridge.patch import is_bridged
    from azureml.core import run as v1

    bridge.enable("mirror")
    proxy = v1.Run.__dict__["log"]
    assert is_bridged(proxy)
    original_log = proxy.__wrapped__
    original_offline_log = v1._OfflineRun.__dict__["log"].__wrapped__
    bridge.enable("mirror")
    assert v1.Run.__dict__["log"] is proxy  # no wrapper on a wrapper
    bridge.enable("mlflow")
    assert v1.Run.__dict__["log"] is proxy and hasattr(v1._OfflineRun, "create_children")
    bridge.disable()
    try:
        assert v1.Run.__dict__["log"] is original_log
        assert v1._OfflineRun.__dict__["log"] is original_offline_log
        assert not is_bridged(v1.Run.__dict__["log"])
        assert "create_children" not in v1._OfflineRun.__dict__
        assert not bridge.is_enabled()
    finally:
        bridge.enable("mirror")


def test_disable_restores_exact_property_objects(bridge):
    from azureml.core import run as v1

    bridge.disable()
    plain = v1.Run.__dict__["display_name"]
    bridge.enable("mirror")
    assert v1.Run.__dict__["display_name"] is not plain
    bridge.disable()
    assert v1.Run.__dict__["display_name"] is plain
    assert "display_name" not in v1._OfflineRun.__dict__
    bridge.enable("mirror")


def test_eight_threads_lose_nothing(store, bridge):
    from azureml.core import Run

    bridge.enable("mlflow")
    run = Run.get_context()
    per_thread = 2000

    def work(t):
        for i in range(per_thread):
            run.log(f"own_{t}", i)
            run.log("shared", t * per_thread + i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    run.flush()
    import azml_v1_bridge

    rid = azml_v1_bridge.mlflow_run_id(run)
    for t in range(8):
        points = store.get_metric_history(rid, f"own_{t}")
        assert sorted((p.step, p.value) for p in points) == [(i, float(i)) for i in range(per_thread)]
    shared = store.get_metric_history(rid, "shared")
    assert sorted(p.step for p in shared) == list(range(8 * per_thread))  # no step handed out twice
    assert sorted(p.value for p in shared) == [float(v) for v in range(8 * per_thread)]


def test_strict_mode_raises_bridge_failures(tmp_path):
    code = """
import azml_v1_bridge
from azureml.core import Run
run = Run.get_context()
run.log("x", 1)
try:
    run.flush()
except azml_v1_bridge.BridgeError as exc:
    print("RAISED", exc)
"""
    env = {"MLFLOW_TRACKING_URI": "nosuchscheme://user:hunter2@host/path"}
    strict = run_script(code, tmp_path, env={**env, "AZML_V1_BRIDGE_STRICT": "1"})
    assert "RAISED" in strict.stdout
    lenient = run_script(code + "print('script went on')\n", tmp_path,
                         env={**env, "AZML_V1_BRIDGE_STRICT": "0"})
    assert lenient.returncode == 0
    assert "RAISED" not in lenient.stdout and "script went on" in lenient.stdout
    assert "azml_v1_bridge" in lenient.stderr  # warned
    for out in (strict.stdout, strict.stderr, lenient.stdout, lenient.stderr):
        assert "hunter2" not in out  # credentials are redacted from every message


names = st.one_of(st.text(max_size=300), st.sampled_from(["../up", "/abs", "a/../b", "x" * 400, "", "ok.name"]))
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
    st.booleans(), st.none(), st.text(max_size=50), st.binary(max_size=20),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), st.builds(object),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.tuples(names, values), min_size=1, max_size=8))
def test_bad_input_never_breaks_the_script(store, bridge, calls):
    import azml_v1_bridge
    from azml_v1_bridge.translate import mlflow_key, to_number
    from azureml.core.run import _OfflineRun

    bridge.enable("mlflow")
    run = _OfflineRun()
    expected: dict = {}
    for name, value in calls:
        run.log(name, value)
        points = [value] if not isinstance(value, list) else value  # a list in log() is a log_list
        if points and all(to_number(v) is not None for v in points):
            expected.setdefault(mlflow_key(name), []).extend(to_number(v) for v in points)
        run.log_row(f"row_{len(expected)}", col=value, other=name)
        run.tag(name, value)
    run.flush()  # strict mode: any bridge failure would raise here
    rid = azml_v1_bridge.mlflow_run_id(run)
    for key, vals in expected.items():
        got = [m.value for m in sorted(store.get_metric_history(rid, key), key=lambda m: m.step)]
        assert len(got) == len(vals)
        for g, v in zip(got, vals):
            assert (math.isnan(g) and math.isnan(v)) or g == pytest.approx(v) or abs(v) > 1e300
