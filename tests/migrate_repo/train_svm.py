"""Shaped like the repository's train scripts: argparse values logged as they come."""
import argparse

from azureml.core.run import Run

parser = argparse.ArgumentParser()
parser.add_argument("--kernel", type=str, default="linear", help="kernel type")
parser.add_argument("--penalty", type=float, default=1.0, help="penalty")
parser.add_argument("--epochs", default=3)
args = parser.parse_args()

run = Run.get_context()
run.log("Kernel type", args.kernel)
run.log("Penalty", args.penalty)
run.log("Epochs", args.epochs)
run.log("Settings", [args.kernel, args.penalty])

accuracy = 0.5
for epoch in range(int(args.epochs)):
    accuracy = accuracy + 0.1
    run.log("accuracy", accuracy)
run.log("Accuracy", float(accuracy))
