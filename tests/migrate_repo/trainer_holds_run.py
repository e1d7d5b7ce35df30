"""A trainer class holds the run; its methods log to it."""
from azureml.core import Run


class Trainer:
    def __init__(self, lr):
        self.lr = lr
        self.run = Run.get_context()

    def fit(self, epochs):
        self.run.log("lr", self.lr)
        loss = 1.0
        for epoch in range(epochs):
            loss = loss * 0.5
            self.run.log("loss", loss)
            self.run.log_row("history", epoch=epoch, loss=loss, phase="train")
        return loss


trainer = Trainer(lr="0.01")
trainer.fit(3)
