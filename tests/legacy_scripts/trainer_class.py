"""A legacy v1 trainer: the run lives on `self.run`, helpers get it as a parameter."""
import random

from azureml.core import Run


def log_summary(run, scores):
    run.log_list("fold_scores", scores)
    run.log("best", max(scores))


class Trainer:
    def __init__(self, epochs):
        self.epochs = epochs
        self.run = Run.get_context()
        self.run.tag("trainer", "v2")

    def fit(self):
        random.seed(0)
        for epoch in range(self.epochs):
            accuracy = 0.5 + epoch * 0.1
            self.run.log("accuracy", accuracy)
            self.run.log_row("progress", epoch=epoch, accuracy=accuracy, noise=random.random())
        log_summary(self.run, [0.7, 0.9, 0.8])

    def evaluate(self):
        workers = self.run.create_children(count=2)
        for index, worker in enumerate(workers):
            worker.log("shard_accuracy", 0.9 - index / 10)
            worker.complete()


if __name__ == "__main__":
    trainer = Trainer(epochs=3)
    with trainer.run:
        trainer.fit()
        trainer.evaluate()
