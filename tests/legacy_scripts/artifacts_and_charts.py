"""A legacy v1 script: tags, properties, uploads, images and rich metrics."""
import io
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from azureml.core.run import Run

run = Run.get_context()
run.display_name = "artifacts-demo"
run.description = "uploads, images and charts"

# tags and properties
run.tag("team", "vision")
run.tag("baseline")
run.set_tags({"dataset": "cifar10", "owner": "ml-platform"})
run.add_properties({"framework": "torch", "epochs": 3})

# files
run.upload_file("outputs/model.txt", "data/model.txt")
run.upload_file(name="renamed/weights.bin", path_or_stream="data/model.txt")
run.upload_file("inline.txt", io.BytesIO(b"made in memory\n"))
run.upload_files(names=["inputs/train.csv", "inputs/model.txt"], paths=["data/train.csv", "data/model.txt"])
run.upload_folder("config", "data/config")

# images: a file (twice: never overwritten) and the current figure (twice: an image series)
run.log_image("sample", path="data/sample.png")
run.log_image("sample", path="data/sample.png")
plt.figure(figsize=(3, 2))
plt.plot([1, 2, 3], [3, 1, 2])
run.log_image("curve", plot=plt)
plt.plot([1, 2, 3], [1, 2, 3])
run.log_image("curve", plot=plt)
fig, ax = plt.subplots(figsize=(2, 2))
ax.bar(["a", "b"], [1, 2])
run.log_image("bars", plot=fig)

# rich metrics: dicts, and JSON text that must not be encoded twice
confusion = {
    "schema_type": "confusion_matrix",
    "schema_version": "1.0.0",
    "data": {"class_labels": ["cat", "dog"], "matrix": [[5, 1], [2, 7]]},
}
run.log_confusion_matrix("confusion", confusion)
run.log_confusion_matrix("confusion", json.dumps(confusion))
run.log_accuracy_table("accuracy", json.dumps({
    "schema_type": "accuracy_table",
    "schema_version": "1.0.1",
    "data": {"probability_tables": [[[1, 0, 1, 0], [0, 1, 0, 1]]], "percentile_tables": [[[1, 0, 1, 0], [0, 1, 0, 1]]],
             "class_labels": ["a"], "probability_thresholds": [0.0, 1.0], "percentile_thresholds": [0.0, 100.0]},
}))
run.log_residuals("residuals", {
    "schema_type": "residuals",
    "schema_version": "1.0.0",
    "data": {"bin_edges": [-1.0, 0.0, 1.0], "bin_counts": [3, 4], "mean": 0.1, "stddev": 0.5, "res_count": 7},
})
run.log_predictions("predictions", {
    "schema_type": "predictions",
    "schema_version": "1.0.0",
    "data": {"bin_averages": [0.2, 0.8], "bin_errors": [0.1, 0.1], "bin_counts": [5, 5], "bin_edges": [0.0, 0.5, 1.0]},
})
run.flush()
run.complete()
