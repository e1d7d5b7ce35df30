"""v1's read API served from MLflow (mlflow mode), in v1's return shapes."""
from __future__ import annotations

from . import bridge


def _client_and_id(run):
    run_id = bridge.mlflow_run_id(run)
    bridge.flush(bridge.STATE.cfg.exit_timeout)
    record = run.__dict__.get("_azml_v1_bridge_record")
    return bridge.STATE.get_writer().client(record.tracking_uri), run_id, record


def get_metrics(run, name=None, recursive=False):
    """{name: value} for one point, {name: [values]} for several, {table: {col: [..]}} for log_row/log_table."""
    client, run_id, record = _client_and_id(run)
    metrics = _metrics_of(client, run_id, record)
    if recursive:
        result = {run.id: metrics}
        for child in bridge.STATE.registry.records:
            if child.parent is record and child.mlflow_run_id:
                result[child.v1_id] = _metrics_of(client, child.mlflow_run_id, child)
        return result if name is None else {k: {name: v[name]} for k, v in result.items() if name in v}
    if name is not None:
        return {name: metrics[name]} if name in metrics else {}
    return metrics


def _metrics_of(client, run_id, record) -> dict:
    data = client.get_run(run_id).data
    tables = set(record.state.rows) if record is not None else set()
    out: dict = {}
    for key in sorted(data.metrics):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        values = [m.value for m in history]
        table = next((t for t in tables if key.startswith(t + ".")), None)
        if table is not None:
            out.setdefault(table, {})[key[len(table) + 1:]] = values
        else:
            out[key] = values[0] if len(values) == 1 else values
    return out
