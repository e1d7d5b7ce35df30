"""A legacy Azure ML SDK v1 training script: metrics, strings, lists, tables."""
import math

from azureml.core import Run  # v1 tracking

run = Run.get_context()

run.log("learning_rate", 0.01)  # logged once
for epoch in range(3):
    loss = 1.0 / (epoch + 1)
    run.log("loss", loss)  # implicit steps 0, 1, 2
    run.log("val_loss", loss * 1.5, step=epoch * 10)
    run.log_row("epochs", epoch=epoch, loss=loss, phase="train")

run.log("converged", True)
run.log("status", "warming up")
run.log("status", "done")
run.log("loss (final)", math.sqrt(0.25))
run.log("history", [0.5, 0.25, 0.125])

run.log_list("accuracies", [0.6, 0.7, 0.8])
run.log_list("labels", ["cat", "dog"])
run.log_table("summary", {"fold": [1, 2], "score": [0.9, 0.8], "note": ["a", "b"]})

stage = "eval"
run.log("stage", stage)
run.log("count", len([1, 2, 3]))
run.complete()
