"""The run feeds other Azure ML code (its workspace): it stays a v1 run there."""
from azureml.core import Run

run = Run.get_context()
ws = run.experiment.workspace
print("workspace:", ws.name)
run.log("rows", 100)
run.log("source", "local")
