"""A helper submits a job and logs to the submitted run: that run is Azure ML's, not this script's."""
from azureml.core import Experiment, ScriptRunConfig, Workspace


def submit_and_tag(exp, config):
    run = exp.submit(config)
    run.log("submitted", 1)
    run.tag("by", "helper")
    run.wait_for_completion(show_output=True)
    return run


if __name__ == "__main__":
    ws = Workspace.from_config()
    experiment = Experiment(ws, "remote")
    submit_and_tag(experiment, ScriptRunConfig(source_directory=".", script="train_svm.py"))
