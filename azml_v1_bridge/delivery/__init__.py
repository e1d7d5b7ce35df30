"""Delivery: everything between a translated v1 call and the MLflow store.

- queue.py     the caller's side: a deque, flush markers, backpressure
- batching.py  pure: one cycle's work per run, growing documents, request bodies within limits
- store.py     the one module that talks to MLflow (one Store per tracking URI)
- errors.py    what a failure means (item, run, transient or permanent store failure)
- journal.py   the JSON-lines journal: written by the writer, read by replay
- writer.py    the writer thread: cycles, retries, spills, recovery, the exit deadline
- sidecar.py   the writer in a process of its own
- replay.py    delivering a journal later (and the writer's own recovery)

Nothing is imported here: `runs` needs only `batching`, and the tools import what they use.
"""
