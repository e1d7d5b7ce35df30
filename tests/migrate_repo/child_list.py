"""Child runs made as a list, logged to and completed one by one."""
from azureml.core import Run

run = Run.get_context()
children = [run.child_run(f"fold-{i}") for i in range(3)]
for i, c in enumerate(children):
    c.log("score", 0.7 + i / 10)
    c.complete()

extra = []
extra.append(run.child_run("extra"))
for c in extra:
    c.log("rows", 10)
    c.complete()
run.log("folds", len(children))
