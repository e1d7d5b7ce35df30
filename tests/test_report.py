"""The end-of-run report: azml_v1_bridge/report.json in each run, and the table on stderr.

In-process tests drive the real bridge (real azureml-core, real sqlite store);
one test runs a script under the launcher to check the counts of a whole process.
"""
import json
import sys

import pytest

from azml_v1_bridge.translate import name_digest
from conftest import run_script
import azml_v1_bridge  # noqa: E402

REPORT = "azml_v1_bridge/report.json"


def read_report(client, run_id, path=REPORT):
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                tracking_uri=client._tracking_client.tracking_uri)
    with open(local, encoding="utf-8") as fh:
        return json.load(fh)


def all_runs(client):
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def reenable(bridge, monkeypatch, **env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bridge.disable()
    bridge.enable("mirror")


def test_report_counts_equal_the_calls(bridge, store, capfd):
    from azureml.core import Run

    run = Run.get_context()
    for i in range(5):
        run.log("loss", 1.0 / (i + 1))
    run.log("bad name (%)", 1)                   # renamed
    run.log("odd", {"a": 1})                     # kept as text: a note
    run.log_list("accs", [0.1, 0.2, 0.3])
    run.log_row("table", x=1, y=2)
    run.tag("stage", "test")
    run.set_tags({"a": "1", "b": "2"})
    azml_v1_bridge.finish()

    runs = all_runs(store)
    assert len(runs) == 1
    report = read_report(store, runs[0].info.run_id)
    assert report["calls"] == {"log": 7, "log_list": 1, "log_row": 1, "tag": 1, "set_tags": 1}
    assert report["total_calls"] == 11
    assert report["mlflow_run_id"] == runs[0].info.run_id
    # 5 loss + 1 renamed + 3 accs + 2 table columns
    assert report["metric_points"] == 11
    assert report["renamed"] == {"bad name (%)": "bad name ___" + "_" + name_digest("bad name (%)")}
    assert [(n["what"], n["name"], n["count"]) for n in report["notes"]] == [("kept_as_text", "odd", 1)]
    assert report["delivery_failures"] == 0 and report["journaled"] == 0 and report["journal"] is None
    assert report["mode"] == "mirror"
    assert report["experiment_id"] == "0"
    # AZML_V1_BRIDGE_REPORT=0 (conftest): the artifact is written, nothing printed
    assert "azml_v1_bridge report" not in capfd.readouterr().err


def test_table_printed_once_and_children_get_their_own(bridge, store, monkeypatch, capfd):
    reenable(bridge, monkeypatch, AZML_V1_BRIDGE_REPORT="1")
    from azureml.core import Run

    run = Run.get_context()
    run.log("parent_metric", 1)
    child = run.child_run(name="child")
    child.log("child_metric", 2)
    child.log("child_metric", 3)
    child.complete()
    azml_v1_bridge.finish()
    azml_v1_bridge.finish()  # a second finish has nothing new: no second table

    err = capfd.readouterr().err
    assert err.count("azml_v1_bridge report") == 1
    runs = {r.info.run_name or r.info.run_id: r for r in all_runs(store)}
    child_run = runs["child"]
    parent_run = next(r for r in runs.values() if r is not child_run)
    child_report = read_report(store, child_run.info.run_id)
    parent_report = read_report(store, parent_run.info.run_id)
    assert child_report["calls"] == {"log": 2, "complete": 1}
    assert child_report["metric_points"] == 2
    assert child_report["parent_mlflow_run_id"] == parent_run.info.run_id
    assert parent_report["calls"] == {"log": 1, "child_run": 1}
    assert parent_run.info.run_id in err and child_run.info.run_id in err
    assert "calls: log 1, child_run 1" in err or "calls: child_run 1, log 1" in err


def test_journal_path_is_reported_when_the_store_is_down(bridge, store, tmp_path, monkeypatch, capfd):
    journal = tmp_path / "spill.jsonl"
    from servers import free_port

    reenable(bridge, monkeypatch, AZML_V1_BRIDGE_REPORT="1", AZML_V1_BRIDGE_RETRY_SECONDS="0.2",
             AZML_V1_BRIDGE_STRICT="0", AZML_V1_BRIDGE_JOURNAL=str(journal),
             MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
             MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    from azureml.core import Run

    run = Run.get_context()
    run.log("m", 1)
    azml_v1_bridge.finish()
    err = capfd.readouterr().err
    assert f"azml-v1-bridge replay {journal}" in err
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    reports = [line for line in lines if line.get("t") == "artifact" and line.get("path") == REPORT]
    assert len(reports) == 1  # the report itself waits in the journal with the data
    import base64

    report = json.loads(base64.b64decode(reports[0]["b64"]))
    assert report["calls"] == {"log": 1}
    assert report["journal"] == str(journal) and report["journaled"] >= 1


def test_render_and_merge_are_short_and_add_up():
    from azml_v1_bridge import report

    part = {"mlflow_run_id": "r1", "v1_run_ids": ["a"], "calls": {"log": 3, "tag": 1},
            "total_calls": 4, "metric_points": 3, "artifacts": 1, "renamed": {f"n{i}!": f"n{i}_" for i in range(5)},
            "notes": [{"what": "kept_as_text", "name": "s", "detail": "dict is not a number", "count": 2}],
            "delivery_failures": 1, "journaled": 0, "journal": None, "process": {"pid": 1}}
    text = report.render([part])
    lines = text.splitlines()
    assert len(lines) <= 8
    assert "(+2 more)" in text and "kept_as_text x2" in text
    merged = report.merge([part, dict(part, calls={"log": 2, "log_row": 1}, process={"pid": 2})])
    assert merged["calls"] == {"log": 5, "log_row": 1, "tag": 1}
    assert merged["total_calls"] == 7
    assert merged["metric_points"] == 6 and merged["delivery_failures"] == 2
    assert merged["notes"][0]["count"] == 4
    assert [p["pid"] for p in merged["processes"]] == [1, 2]


def test_the_table_of_a_21_run_notebook_is_one_line_a_run():
    from azml_v1_bridge import report

    def part(i, experiment):
        return {"mlflow_run_id": f"{i:032x}", "v1_run_ids": [f"nb_{i}"], "calls": {"log": 2, "complete": 1},
                "total_calls": 3, "metric_points": 2, "artifacts": 1, "renamed": {f"bad {i}!": f"bad_{i}_"},
                "notes": [{"what": "kept_as_text", "name": f"s{i}", "detail": "not a number", "count": 1}],
                "delivery_failures": 0, "journaled": 0, "journal": None,
                "tracking_uri": "http://127.0.0.1:5000", "experiment_name": experiment,
                "experiment_id": "7" if experiment == "nb" else "0",
                "run_url": f"http://127.0.0.1:5000/#/experiments/7/runs/{i:032x}"}

    parts = [part(i, "nb") for i in range(20)] + [part(20, None)]
    lines = report.render(parts).splitlines()
    assert len(lines) <= 21 + 12  # was 144 for such a notebook: five lines a run
    ids = {p["mlflow_run_id"] for p in parts}
    assert sum(1 for line in lines if line.split() and line.split()[0] in ids) == 21
    text = "\n".join(lines)
    assert "    view: http://127.0.0.1:5000/#/experiments/7" in text  # once, for the experiment
    assert "calls in these 21 runs: log 42, complete 21" in text
    assert "kept_as_text x21" in text and "(+18 more)" in text  # said once, for all runs


def test_report_of_a_launched_script_counts_its_calls(store, tmp_path):
    code = """
        from azureml.core import Run
        run = Run.get_context()
        for i in range(5):
            run.log("loss", i)
        run.log_row("rows", a=1, b="x")
        run.tag("t", "v")
        run.log_table("tbl", {"c": [1, 2, 3]})
        run.add_properties({"p": "1"})
        run.log("text", "hello")
    """
    env = {"AZML_V1_BRIDGE_REPORT": "1"}
    launcher = [sys.executable, "-m", "azml_v1_bridge_tools.cli", "run", "--"]
    result = run_script(code, tmp_path, env=env, launcher=launcher)
    assert result.returncode == 0, result.stderr
    runs = all_runs(store)
    assert len(runs) == 1
    report = read_report(store, runs[0].info.run_id)
    assert report["calls"] == {"log": 6, "log_row": 1, "tag": 1, "log_table": 1, "add_properties": 1}
    # one job, one run: the launcher merged the one process's part
    assert [p["argv0"] for p in report["processes"]] == ["script.py"]
    assert result.stderr.count("azml_v1_bridge report") == 1
    assert "calls: log 6" in result.stderr


# ---------------------------------------------------------------- where the data went

def test_report_says_where_the_data_went(bridge, store, monkeypatch, capfd):
    reenable(bridge, monkeypatch, AZML_V1_BRIDGE_REPORT="1", MLFLOW_EXPERIMENT_NAME="where-exp")
    from azureml.core import Run

    run = Run.get_context()
    run.log("m", 1)
    bridge.finish()
    (mlflow_run,) = all_runs(store)
    experiment_id = mlflow_run.info.experiment_id
    uri = store._tracking_client.tracking_uri
    report = read_report(store, mlflow_run.info.run_id)
    assert (report["tracking_uri"], report["experiment_name"], report["experiment_id"], report["run_url"]) == \
        (uri, "where-exp", experiment_id, None)
    err = capfd.readouterr().err
    assert f"    tracking URI: {uri}; experiment: 'where-exp' (id {experiment_id})\n" in err
    assert f"    view: mlflow ui --backend-store-uri {uri}\n" in err


@pytest.mark.server
def test_report_links_the_run_on_a_server_without_the_password(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    password = "Rep0rt-pw-42"
    uri = mlflow_server.url.replace("http://", f"http://alice:{password}@")
    result = run_script("""
        import azml_v1_bridge
        from azureml.core import Run
        run = Run.get_context()
        run.log("m", 1.0)
    """, tmp_path, env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "linked",
                        "AZML_V1_BRIDGE_REPORT": "1"})
    assert result.returncode == 0, result.stderr
    client = MlflowClient(mlflow_server.url)
    experiment_id = client.get_experiment_by_name("linked").experiment_id
    (run,) = client.search_runs([experiment_id])
    link = f"{mlflow_server.url}/#/experiments/{experiment_id}/runs/{run.info.run_id}"
    assert f"    tracking URI: {mlflow_server.url}; experiment: 'linked' (id {experiment_id})\n" in result.stderr
    assert f"    view: {link}\n" in result.stderr
    report = read_report(client, run.info.run_id)
    assert (report["tracking_uri"], report["run_url"]) == (mlflow_server.url, link)
    assert password not in result.stderr + json.dumps(report)


def test_run_url_only_for_servers():
    from azml_v1_bridge import report

    assert report.run_url("https://mlflow.example/", "3", "abc") == "https://mlflow.example/#/experiments/3/runs/abc"
    assert report.run_url("http://h:5000", None, "abc") == "http://h:5000/#/runs/abc"
    assert report.run_url("sqlite:///mlflow.db", "0", "abc") is None
    assert report.public_uri("http://bob:pw@h:5000/x") == "http://h:5000/x"
