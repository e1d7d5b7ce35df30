"""`azml-v1-bridge replay JOURNAL`: deliver a journal the bridge wrote while the store was down."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from azml_v1_bridge import azure, config
from azml_v1_bridge.delivery.replay import replay_journal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="azml-v1-bridge replay",
        description="Deliver a journal the bridge wrote while the MLflow tracking store was "
                    "unreachable. Safe to run more than once: nothing is sent twice.")
    parser.add_argument("journal", metavar="JOURNAL", help="the .jsonl file named in the warning")
    parser.add_argument("--tracking-uri", default=None,
                        help="where to deliver (default: MLFLOW_TRACKING_URI, else the URI "
                             "recorded in the journal); give credentials here")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.journal):
        print(f"azml-v1-bridge replay: no such journal: {args.journal}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # fail fast on a store that is still down, as the writer does (the user's values win)
    for name, value in config.HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    azure.set_cloud_default(uri=args.tracking_uri)
    counts = replay_journal(args.journal, args.tracking_uri)
    summary = {k: v for k, v in counts.items() if k not in ("runs", "errors", "bad")}
    print("azml-v1-bridge replay: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    for lid, run_id in counts["runs"].items():
        print(f"  journal run {lid} -> MLflow run {run_id}")
    for error in counts["errors"]:
        print(f"  not delivered: {error}", file=sys.stderr)
    for why in counts["bad"]:
        print(f"  skipped (not a valid journal line): {config.redact(why)}", file=sys.stderr)
    return 1 if counts["errors"] or counts["bad_lines"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
