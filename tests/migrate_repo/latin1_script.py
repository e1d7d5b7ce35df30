"""Un script écrit en Latin-1: café."""
from azureml.core import Run
run = Run.get_context()
run.log("acc", 1)
