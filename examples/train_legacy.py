"""A legacy Azure ML SDK v1 training script, unchanged except for one line.

Run it locally (the bridge records everything in MLflow; by default in
sqlite:///mlflow.db under the current folder):

    python train_legacy.py
    mlflow ui --backend-store-uri sqlite:///mlflow.db

Inside an Azure ML v1 job the same script keeps logging to Azure ML as well
(AZML_V1_BRIDGE_MODE=mirror, the default), or only to MLflow (=mlflow).
"""
import json
import os

import azml_v1_bridge  # noqa: F401  <- the only added line

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from azureml.core import Run  # noqa: E402

run = Run.get_context()
rng = np.random.default_rng(0)

# a toy binary classification problem
X = rng.normal(size=(600, 4))
true_w = np.array([1.5, -2.0, 0.5, 0.0])
y = (X @ true_w + rng.normal(scale=0.5, size=600) > 0).astype(int)
X_train, X_test, y_train, y_test = X[:500], X[500:], y[:500], y[500:]

learning_rate, epochs = 0.1, 30
run.add_properties({"learning_rate": learning_rate, "epochs": epochs})
run.tag("model", "logistic-regression")
run.tag("smoke-test")
run.display_name = "legacy logistic regression"
run.description = "A v1 script recorded in MLflow by azml_v1_bridge"


def predict(w, X):
    return 1 / (1 + np.exp(-(X @ w)))


w = np.zeros(4)
losses = []
for epoch in range(epochs):
    p = predict(w, X_train)
    loss = float(-np.mean(y_train * np.log(p + 1e-9) + (1 - y_train) * np.log(1 - p + 1e-9)))
    w -= learning_rate * X_train.T @ (p - y_train) / len(y_train)
    accuracy = float(np.mean((predict(w, X_test) > 0.5) == y_test))
    run.log("loss", loss)                                     # metric, steps 0..29
    run.log("accuracy", np.float64(accuracy))                 # numpy scalars are fine
    run.log_row("epochs", epoch=epoch, loss=loss, accuracy=accuracy, phase="train")
    losses.append(loss)

run.log("converged", losses[-1] < losses[0])                  # bool -> 1.0
run.log("optimizer", "plain gradient descent")                # string -> optimizer.txt
run.log_list("weights", w.tolist())                           # one point per element
run.log_table("weights_table", {"feature": ["f0", "f1", "f2", "f3"], "weight": w.tolist()})

pred = predict(w, X_test) > 0.5
matrix = [[int(np.sum((y_test == a) & (pred == b))) for b in (0, 1)] for a in (0, 1)]
run.log_confusion_matrix("confusion_matrix", json.dumps({
    "schema_type": "confusion_matrix", "schema_version": "1.0.0",
    "data": {"class_labels": ["0", "1"], "matrix": matrix}}))

residuals = predict(w, X_test) - y_test
counts, edges = np.histogram(residuals, bins=8)
run.log_residuals("residuals", {"schema_type": "residuals", "schema_version": "1.0.0",
                                "data": {"bin_edges": edges.tolist(), "bin_counts": counts.tolist()}})

plt.figure(figsize=(4, 3))
plt.plot(losses)
plt.xlabel("epoch")
plt.ylabel("loss")
run.log_image("loss_curve", plot=plt)                         # the figure you drew, as PNG

os.makedirs("outputs", exist_ok=True)
np.save("outputs/weights.npy", w)
run.upload_file("model/weights.npy", "outputs/weights.npy")

for fold in range(2):                                         # nested runs
    child = run.child_run(f"fold-{fold}")
    child.log("fold_accuracy", float(np.mean(pred[fold::2] == y_test[fold::2])))
    child.complete()

run.complete()
print("done; look at it with: mlflow ui --backend-store-uri sqlite:///mlflow.db")
