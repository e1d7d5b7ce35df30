"""Helper functions take the run they log to: the main run, and a child run."""
from azureml.core import Run


def log_scores(run, prefix, scores):
    for name, value in scores.items():
        run.log(prefix + name, value)


def finish(child, note):
    child.tag("note", note)
    child.complete()


run = Run.get_context()
log_scores(run, "main_", {"auc": 0.91, "kind": "binary"})
child = run.child_run("eval")
log_scores(child, "eval_", {"auc": 0.87})
finish(child, "evaluated")
run.log("done", 1)
