"""A legacy v1 script with child runs: named children, a with-block, loops, batches."""
import azml_v1_bridge  # noqa: F401  (the bridge: every v1 call below is recorded in MLflow)
from azureml.core import Run

run = Run.get_context()
run.log("parent_metric", 1.0)

child = run.child_run("preprocess")
child.log("rows", 100)
child.tag("stage", "prep")
child.complete()

with run.child_run("train") as trainer:
    for i in range(2):
        trainer.log("loss", 0.5 / (i + 1))
    trainer.log_row("batches", size=32, seconds=1.5)

for fold in range(2):
    fold_run = run.child_run(f"fold-{fold}")
    fold_run.log("score", 0.8 + fold / 10)
    fold_run.complete()

shards = run.create_children(tag_key="shard", tag_values=["a", "b"])
shards[0].log("rows", 5)
shards[0].fail(error_details="shard a failed", error_code="E1")
shards[1].cancel()

run.log("parent_metric", 2.0)  # after the children: step 1 of the parent
run.complete()
