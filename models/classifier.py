"""The training logic every classification app shares: loss, per-stage metrics, optimizer and
scheduler injected from the CLI, predictions as ``(label, probability)`` records.

A subclass builds ``self.net`` and, if its batches are more than one tensor, overrides ``forward``.
Batches are ``(inputs, target)``; predict batches are ``(inputs,)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from models.optim import injected_optimizers
from models.reports import StageLogging, TrainLoss, log_confusion_matrix

STAGES = ("train", "val", "test")


class Classifier(StageLogging, LightningModule):
    """Cross-entropy training of ``self.net`` over ``label_names``.

    Args:
        label_names: One name per class, in label order; linked from the DataModule.
        optimizer: Optimizer class and arguments, e.g. ``--model.optimizer=SGD --model.optimizer.lr=0.1``.
        scheduler: Optional learning-rate scheduler; ``ReduceLROnPlateau`` watches ``val/loss``.
        label_smoothing: Cross-entropy label smoothing.
    """

    def __init__(
        self,
        label_names: list[str],
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Under LightningCLI the hparams hold these as config (plain data); keep the callables.
        self.optimizer, self.scheduler = optimizer, scheduler
        n = len(label_names)
        # One metric collection per stage, so stages never mix their counts.
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": MetricCollection(
                    {
                        "acc": MulticlassAccuracy(n, average="micro"),
                        "macro_f1": MulticlassF1Score(n, average="macro"),
                    },
                    prefix=f"{stage}/",
                )
                for stage in STAGES
            }
        )
        self.confusion = MulticlassConfusionMatrix(n)
        self.train_loss = TrainLoss()

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.net(inputs)

    def _step(self, batch: tuple, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, target = batch
        logits = self(inputs)  # (B, num_classes)
        loss = F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)
        self.log_loss(stage, loss)
        self.metrics[f"{stage}_metrics"].update(logits, target)  # accumulated; logged at the epoch's end
        return loss, logits

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        _, logits = self._step(batch, "test")
        self.confusion.update(logits, batch[1])
        self.on_test_predictions(batch, logits.softmax(-1))

    def on_test_predictions(self, batch: tuple, probs: torch.Tensor) -> None:
        """Hook for subclasses that collect test examples to show; ``probs`` is (B, num_classes)."""

    def on_test_epoch_start(self) -> None:
        self.confusion.reset()

    def on_test_epoch_end(self) -> None:
        """Test metrics and the confusion matrix; subclasses that report more call this first."""
        self.log_stage_metrics("test")
        log_confusion_matrix(self, self.confusion)

    def predict_step(self, batch: tuple, batch_idx: int) -> list[dict[str, Any]]:
        probs = self(batch[0]).softmax(-1)
        prob, label = probs.max(-1)
        names = self.hparams.label_names
        return [{"label": names[i], "probability": p} for i, p in zip(label.tolist(), prob.tolist())]

    def configure_optimizers(self) -> Any:
        return injected_optimizers(self.parameters(), self.optimizer, self.scheduler)
