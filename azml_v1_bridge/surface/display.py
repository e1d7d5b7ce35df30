"""What a notebook shows for an mlflow-mode Workspace, Experiment or Run (`_repr_html_`):
where the data is. v1's own HTML links to the Azure ML studio, which such objects do not
have (v1's Experiment._repr_html_ fails on the missing portal URL): here the rows are the
MLflow tracking URI (credentials redacted), the experiment, the run, and a link to the MLflow
UI for a tracking server, or the `mlflow ui` command that shows a local store.
"""
from __future__ import annotations

import html
from urllib.parse import urlsplit

from .. import config, report

STYLE = 'style="width:100%"'


def _cell(value) -> str:
    if isinstance(value, tuple):  # (url, text): a link
        url, text = value
        return f'<a href="{html.escape(url)}" target="_blank" rel="noopener">{html.escape(text)}</a>'
    return html.escape("" if value is None else str(value))


def table(rows: dict) -> str:
    """One header row, one data row: the shape of v1's own `_repr_html_` tables."""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows)
    data = "".join(f"<td>{_cell(v)}</td>" for v in rows.values())
    return f"<table {STYLE}><tr>{head}</tr><tr>{data}</tr></table>"


def _server(uri: str) -> bool:
    return urlsplit(uri).scheme.lower() in ("http", "https")


def where(uri: str | None, experiment_id: str | None = None, run_id: str | None = None) -> dict:
    """The rows that say where the data is: the store, and how to look at it."""
    public = report.public_uri(uri) or ""
    rows = {"Tracking URI": config.redact(public)}
    if public and _server(public):
        base = public.rstrip("/")
        if run_id is not None:
            rows["Details Page"] = (report.run_url(public, experiment_id, run_id), "Link to MLflow UI")
        elif experiment_id is not None:
            rows["Report Page"] = (f"{base}/#/experiments/{experiment_id}", "Link to MLflow UI")
        else:
            rows["MLflow UI"] = (base, "Link to MLflow UI")
    elif public:
        rows["View"] = f"mlflow ui --backend-store-uri {public}"
    return rows
