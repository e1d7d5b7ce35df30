"""End-of-run report: what the bridge did with every v1 call, per MLflow run.

`publish` runs once per process at exit (and at `finish()`), after everything
logged so far was delivered and before the runs are ended. For each MLflow run
this process wrote to it stores `azml_v1_bridge/report.json` in the run and
prints a short table to stderr (AZML_V1_BRIDGE_REPORT=0 silences the table;
the artifact is always written).

When many processes share one run (`azml-v1-bridge run --one-run`), each
writes `azml_v1_bridge/reports/<rank or host-pid>.json` instead and the
launcher merges them into `azml_v1_bridge/report.json` (see `merge`).
"""
from __future__ import annotations

import json
import os
import socket
import sys
from urllib.parse import urlsplit, urlunsplit

from . import azure, config
from .ops import Artifact

ARTIFACT = "azml_v1_bridge/report.json"
PART_DIR = "azml_v1_bridge/reports"
SCHEMA = 1
MAX_NOTES = 500        # distinct (what, name) entries kept in the JSON
MAX_SHOWN = 3          # detail lines per kind in the printed table
DETAILED_RUNS = 3      # more runs than this: one line each, the details once for all

_published: set = set()  # local ids already reported by this process


def publish(writer, records, cfg, timeout: float | None = None) -> None:
    """Store the report of every run this process owns, and print the table. The counts
    live on each run's ledger, so runs that a replaced writer delivered are reported too."""
    stats = {r.local_id: r.ledger.stats for r in records if r.ledger.stats.calls}
    if not stats:
        return  # nothing was ever logged: stay cheap
    pid = os.getpid()
    groups: dict = {}
    for record in records:
        if (record.owner_pid != pid or record.muted or record.local_id in _published
                or record.local_id not in stats):
            continue
        _published.add(record.local_id)
        key = record.mlflow_run_id or record.local_id
        groups.setdefault(key, []).append(record)
    if not groups:
        return
    journal = getattr(writer, "journal", None)
    journal = " and ".join(getattr(journal, "paths", None) or [journal.path]) if journal else None
    reports = []
    for members in groups.values():
        report = build(members, [stats[r.local_id] for r in members], cfg, journal)
        reports.append((members[0], report))
        writer.submit(members[0], None, [Artifact(artifact_path(members[0], cfg),
                                                  _dump(report))])
    writer.flush(cfg.exit_timeout if timeout is None else timeout)
    if cfg.report:
        try:
            sys.stderr.write(render([r for _, r in reports]))
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed at exit
            pass


def artifact_path(record, cfg) -> str:
    """report.json, or this process's part when the launcher's run is shared by many."""
    shared = (cfg.launcher_run_id is not None and record.adopted
              and record.mlflow_run_id == cfg.launcher_run_id)
    if not shared:
        return ARTIFACT
    who = f"rank{cfg.rank}" if cfg.rank else f"{socket.gethostname()}-{os.getpid()}"
    return f"{PART_DIR}/{_safe(who)}.json"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def build(records, stats_list, cfg, journal: str | None) -> dict:
    """The report of one MLflow run (several records only when they share it)."""
    first = records[0]
    calls: dict = {}
    renamed: dict = {}
    notes: dict = {}
    points = artifacts = failures = journaled = 0
    for stats in stats_list:
        for method, n in stats.calls.items():
            if method is not None:  # None: the bridge's own work (run creation, this report)
                calls[method] = calls.get(method, 0) + n
        points += stats.metric_points
        artifacts += stats.artifacts
        failures += stats.delivery_failures
        journaled += stats.journaled
        renamed.update(stats.renamed)
        for note in stats.notes:
            _add_note(notes, note)
    parent = first.parent.mlflow_run_id if first.parent is not None else None
    experiment_id = first.experiment_id or (None if first.adopted or first.experiment_name else "0")
    uri = public_uri(first.tracking_uri)
    return {
        "schema": SCHEMA,
        "mlflow_run_id": first.mlflow_run_id,
        "v1_run_ids": [r.v1_id for r in records],
        "parent_mlflow_run_id": parent,
        # None and no name: the writer used MLflow's default experiment.
        "experiment_id": experiment_id,
        "experiment_name": first.experiment_name or job_experiment_name(experiment_id),
        "tracking_uri": uri,
        "run_url": run_url(uri, experiment_id, first.mlflow_run_id),
        "mode": _mode(),
        "process": {"host": socket.gethostname(), "pid": os.getpid(), "rank": cfg.rank,
                    "argv0": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else None},
        "calls": dict(sorted(calls.items(), key=lambda kv: (-kv[1], kv[0]))),
        "total_calls": sum(calls.values()),
        "metric_points": points,
        "artifacts": artifacts,
        "renamed": renamed,
        "notes": list(notes.values()),
        "notes_truncated": sum(n["count"] for n in notes.values()) < sum(len(s.notes) for s in stats_list),
        "delivery_failures": failures,
        "journaled": journaled,
        "journal": journal if journaled else None,
    }


def public_uri(uri: str | None) -> str | None:
    """The tracking URI without user:password (the report is shared; the journal does the same)."""
    if not uri:
        return uri
    try:
        parts = urlsplit(uri)
        if parts.netloc and "@" in parts.netloc:
            return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    except ValueError:
        pass
    return config.redact(uri)


def run_url(uri: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    """The run's page in the MLflow UI of a tracking server (http/https), or in Azure ML studio
    for an azureml:// store; None for other stores."""
    if azure.is_azureml(uri):
        return azure.studio_url(uri, run_id)
    if not uri or not run_id or urlsplit(uri).scheme.lower() not in ("http", "https"):
        return None
    base = uri.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/runs/{run_id}"  # the UI finds the experiment itself
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def job_experiment_name(experiment_id: str | None) -> str | None:
    """The experiment's name where the job named it (MLFLOW_EXPERIMENT_NAME beside the same
    MLFLOW_EXPERIMENT_ID, as an Azure ML job sets them) and the run was found there."""
    name = config.mlflow_setting(config.MLFLOW_EXPERIMENT_NAME)
    wanted = config.mlflow_setting(config.MLFLOW_EXPERIMENT_ID)
    if name and experiment_id and (wanted is None or wanted == str(experiment_id)):
        return name
    return None


def _where(r: dict) -> list:
    """Where the run's data went: the store, the experiment, and a link or how to look."""
    uri = r.get("tracking_uri")
    if not uri:
        return []
    if r.get("experiment_name") and r.get("experiment_id"):
        experiment = f"{r['experiment_name']!r} (id {r['experiment_id']})"
    elif r.get("experiment_name"):
        experiment = repr(r["experiment_name"])
    elif r.get("experiment_id"):
        experiment = f"id {r['experiment_id']}"
    else:
        experiment = "the run's own"
    lines = [f"    tracking URI: {uri}; experiment: {experiment}"]
    if r.get("run_url"):
        lines.append(f"    view: {r['run_url']}")
    elif urlsplit(uri).scheme.lower() in ("sqlite", "file", ""):
        lines.append(f"    view: mlflow ui --backend-store-uri {uri}")
    return lines


def _add_note(notes: dict, note: dict) -> None:
    key = (note.get("what"), note.get("name"))
    entry = notes.get(key)
    if entry is not None:
        entry["count"] += 1
    elif len(notes) < MAX_NOTES:
        notes[key] = {"what": note.get("what"), "name": note.get("name"),
                      "detail": config.redact(str(note.get("detail"))), "count": 1}


def _mode() -> str | None:
    bridge = sys.modules.get("azml_v1_bridge.bridge")
    return getattr(getattr(bridge, "STATE", None), "mode", None)


def _dump(report: dict) -> bytes:
    return json.dumps(report, indent=1, ensure_ascii=False, default=str).encode("utf-8")


# ---------------------------------------------------------------- the table

def render(reports: list) -> str:
    """A short table for stderr: one line per run, detail lines only for what needs a look.
    Up to DETAILED_RUNS runs, each run's details follow its line; with more (a notebook of
    many runs) the details are said once for all runs, so the table stays one line a run."""
    if len(reports) > DETAILED_RUNS:
        return _render_many(reports)
    header = ("run", "calls", "points", "artifacts", "renamed", "changed", "failed")
    rows = [_row(r) for r in reports]
    lines = _lines([header] + rows)
    out = [_title(), lines[0]]
    for r, line in zip(reports, lines[1:]):
        out.append(line)
        out.extend(_where(r))
        if r["calls"]:
            out.append("    calls: " + _calls(r["calls"]))
        out.extend(_details([r]))
    return config.redact("\n".join(out)) + "\n"


def _title() -> str:
    return f"azml_v1_bridge report ({_mode() or '?'} mode; details in each run's {ARTIFACT}):"


def _row(r: dict) -> tuple:
    return (r["mlflow_run_id"] or "(not created)", str(r["total_calls"]), str(r["metric_points"]),
            str(r["artifacts"]), str(len(r["renamed"])), str(sum(n["count"] for n in r["notes"])),
            str(r["delivery_failures"]))


def _lines(rows: list, left: int = 1) -> list:
    """Rows as aligned lines: the first `left` columns left-aligned, the numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) if i < left else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def _calls(calls: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in calls.items())


def _details(reports: list) -> list:
    """Renamed names, changed items by kind, journals and failures of `reports`, together."""
    out = []
    renamed = [pair for r in reports for pair in r["renamed"].items()]
    if renamed:
        shown = ", ".join(f"{_short(a)!r} -> {_short(b)!r}" for a, b in renamed[:MAX_SHOWN])
        more = f" (+{len(renamed) - MAX_SHOWN} more)" if len(renamed) > MAX_SHOWN else ""
        out.append(f"    renamed: {shown}{more}")
    by_kind: dict = {}
    for r in reports:
        for note in r["notes"]:
            by_kind.setdefault(note["what"], []).append(note)
    for what, notes in by_kind.items():
        names = ", ".join(repr(_short(str(n["name"]))) for n in notes[:MAX_SHOWN])
        more = f" (+{len(notes) - MAX_SHOWN} more)" if len(notes) > MAX_SHOWN else ""
        count = sum(n["count"] for n in notes)
        out.append(f"    {what} x{count}: {names}{more}: {_short(notes[0]['detail'], 80)}")
    journals: dict = {}
    failures = 0
    for r in reports:
        if r["journaled"]:
            journals[r["journal"] or "?"] = journals.get(r["journal"] or "?", 0) + r["journaled"]
        elif r["delivery_failures"]:
            failures += r["delivery_failures"]
    for journal, n in journals.items():
        paths = journal.split(" and ")  # a spill that moved on (a full disk) names each journal
        out.append(f"    journaled {n} item(s) to {journal}; deliver them "
                   f"with " + " and ".join(f"`azml-v1-bridge replay {p}`" for p in paths))
    if failures:
        out.append(f"    {failures} item(s) were not delivered (see the warnings above)")
    return out


def _render_many(reports: list) -> str:
    header = ("run", "experiment", "calls", "points", "artifacts", "renamed", "changed", "failed")
    rows = []
    places: dict = {}  # (uri, experiment): its where lines, said once for all its runs
    calls: dict = {}
    for r in reports:
        row = _row(r)
        experiment = r.get("experiment_name") or (f"id {r['experiment_id']}" if r.get("experiment_id")
                                                  else "-")
        rows.append((row[0], _short(experiment, 24)) + row[1:])
        places.setdefault((r.get("tracking_uri"), experiment), _where_experiment(r))
        for method, n in r["calls"].items():
            calls[method] = calls.get(method, 0) + n
    out = [_title(), *_lines([header] + rows, left=2)]
    for where in places.values():
        out.extend(where)
    if calls:
        ordered = dict(sorted(calls.items(), key=lambda kv: (-kv[1], kv[0])))
        out.append(f"    calls in these {len(reports)} runs: " + _calls(ordered))
    out.extend(_details(reports))
    return config.redact("\n".join(out)) + "\n"


def _where_experiment(r: dict) -> list:
    """Where the runs of one experiment went: the store, the experiment, how to look at them."""
    uri = r.get("tracking_uri")
    if not uri:
        return []
    lines = _where(dict(r, run_url=None))
    if r.get("experiment_id") and urlsplit(uri).scheme.lower() in ("http", "https"):
        lines.append(f"    view: {uri.rstrip('/')}/#/experiments/{r['experiment_id']}")
    return lines


def _short(text: str, limit: int = 40) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------- --one-run

def merge(parts: list) -> dict:
    """One report.json from the per-process parts of a shared run (launcher side)."""
    calls: dict = {}
    renamed: dict = {}
    notes: dict = {}
    total = {"metric_points": 0, "artifacts": 0, "delivery_failures": 0, "journaled": 0}
    journals = []
    for part in parts:
        for method, n in part.get("calls", {}).items():
            calls[method] = calls.get(method, 0) + n
        for name in total:
            total[name] += int(part.get(name) or 0)
        renamed.update(part.get("renamed") or {})
        for note in part.get("notes") or []:
            key = (note.get("what"), note.get("name"))
            if key in notes:
                notes[key]["count"] += note.get("count", 1)
            elif len(notes) < MAX_NOTES:
                notes[key] = dict(note)
        if part.get("journal"):
            journals.append(part["journal"])
    first = parts[0] if parts else {}
    return {
        "schema": SCHEMA,
        "mlflow_run_id": first.get("mlflow_run_id"),
        "v1_run_ids": [v for p in parts for v in p.get("v1_run_ids", [])],
        "parent_mlflow_run_id": None,
        "experiment_id": first.get("experiment_id"),
        "experiment_name": first.get("experiment_name"),
        "tracking_uri": first.get("tracking_uri"),
        "run_url": first.get("run_url"),
        "mode": first.get("mode"),
        "processes": [p.get("process") for p in parts],
        "calls": dict(sorted(calls.items(), key=lambda kv: (-kv[1], kv[0]))),
        "total_calls": sum(calls.values()),
        **total,
        "renamed": renamed,
        "notes": list(notes.values()),
        "notes_truncated": any(p.get("notes_truncated") for p in parts),
        "journal": journals[0] if len(journals) == 1 else (journals or None),
    }
