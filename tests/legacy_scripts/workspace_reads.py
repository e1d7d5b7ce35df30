"""A legacy v1 script that does more than tracking: workspace, datasets, read-backs."""
from azureml.core import Dataset, Experiment, Workspace

ws = Workspace.from_config()
experiment = Experiment(workspace=ws, name="legacy-exp")
run = experiment.start_logging(display_name="interactive")

dataset = Dataset.get_by_name(ws, "training-data")
frame = dataset.to_pandas_dataframe()
run.log("rows", len(frame), step=1)

metrics = run.get_metrics()  # read-back: v1 asks Azure ML
print("run id:", run.id)
run.log("previous_best", metrics.get("best", 0))
run.register_model("model", "outputs/model.pkl")
run.parent.log("child_done", 1)
args = ["extra", 1]
run.log(*args)
run.complete()
