"""The training-module base every app shares, and the classifier most apps are.

``TrainingModule`` is what a LightningModule of this project has in common: the CLI-injected
optimizer and scheduler, stage-prefixed loss logging, per-stage metric collections logged once an
epoch, and the pictures and tables a test run leaves. ``Classifier`` adds cross-entropy over
``label_names``. Apps subclass one of them (``LeNetClassifier``: ``python -m apps.mnist fit``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import WandbLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

STAGES = ("train", "val", "test")


def stage_metrics(metrics: dict[str, Metric], stages: tuple[str, ...] = STAGES) -> nn.ModuleDict:
    """One copy of ``metrics`` per stage, keyed ``f"{stage}_metrics"`` and logged as ``f"{stage}/{name}"``,
    so stages never mix their counts. (Not keyed by the bare stage: ``train`` is an ``nn.Module`` method.)"""
    collection = MetricCollection(metrics, compute_groups=False)  # steps may update each metric apart
    return nn.ModuleDict({f"{stage}_metrics": collection.clone(prefix=f"{stage}/") for stage in stages})


class TrainLoss:
    """``train/loss`` as the mean over the batches since the last logger write, logged only on the
    steps Lightning writes to the loggers (every ``--trainer.log_every_n_steps``), restarted each epoch.

    Only every n-th step's value ever reaches a logger, while each ``self.log`` call adds Lightning
    bookkeeping to the step (BENCHMARKS.md, "Framework overhead"); and the mean of n batches is a
    steadier curve than one batch's loss.
    """

    def __init__(self) -> None:
        self.epoch, self.total, self.count = -1, 0.0, 0

    def __call__(self, module: LightningModule, loss: torch.Tensor) -> None:
        if self.epoch != module.current_epoch:  # a resumed run then logs what an uninterrupted one does
            self.epoch, self.total, self.count = module.current_epoch, 0.0, 0
        self.total, self.count = self.total + loss.detach(), self.count + 1
        trainer, every = module.trainer, module.trainer.log_every_n_steps
        # Lightning writes after a step when (steps so far + 1) % every == 0; during the step, the
        # steps so far are global_step (one optimizer, no accumulation).
        if trainer.fast_dev_run or (every and (module.global_step + 1) % every == 0):
            module.log("train/loss", self.total / self.count, prog_bar=True)
            self.total, self.count = 0.0, 0


class TrainingModule(LightningModule):
    """What every training module of this project shares.

    A subclass must:

    - call ``super().__init__(optimizer, scheduler)`` first; it saves the ``__init__`` arguments of the
      class being built as hyperparameters, so a checkpoint alone rebuilds the model (under the CLI
      they are plain data). A base's argument that the subclass does not take is not among them: the
      base keeps what it needs of those as attributes (``Classifier.label_smoothing``);
    - build its net as ``self.net`` (a plain ``nn.Module``), or, built lazily, in ``configure_model``;
    - implement ``training_step`` returning the loss, and validation and test steps that call
      ``self.log_loss(stage, loss)``: the apps stop on a non-finite ``val/loss``, and a
      ``ReduceLROnPlateau`` scheduler watches it.

    It may:

    - set ``self.metrics = stage_metrics({...})`` and update ``self.metrics[f"{stage}_metrics"]`` in
      its steps; the base logs each stage's collection at that stage's epoch end;
    - override any hook (``forward``, ``predict_step``, ``configure_model``, ``configure_optimizers``, ...);
      an epoch-end override calls ``super()`` first, which logs that stage's metrics;
    - draw test pictures with ``log_image`` and ``log_confusion_matrix`` and W&B tables with ``log_table``.

    Why one base class and not mixins: a mixin's hooks are the ones Lightning calls only if it comes
    before ``LightningModule`` in the bases, and it reads attributes its host must remember to set.
    Here the base sets its own attributes in ``__init__``, and a subclass overrides as it would any
    class, calling ``super()``; the order of bases never matters.

    Args:
        optimizer: Optimizer class and arguments, e.g. ``--model.optimizer=SGD --model.optimizer.lr=0.1``.
        scheduler: Optional learning-rate scheduler; ``ReduceLROnPlateau`` watches ``val/loss``.
    """

    def __init__(
        self, optimizer: OptimizerCallable = torch.optim.AdamW, scheduler: LRSchedulerCallable | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Only the arguments of the class being built, so that its hyperparameters rebuild it.
        for key in set(self.hparams) - set(inspect.signature(type(self)).parameters) - {"_instantiator"}:
            del self.hparams[key]
        # Under LightningCLI the hparams hold these as config (plain data); keep the callables.
        self.optimizer, self.scheduler = optimizer, scheduler
        self.metrics = nn.ModuleDict()
        self.train_loss = TrainLoss()
        # val/test loss: sums and counts synced once at the epoch's end, so under DDP it is the mean over
        # every example, as in one process (a mean of each rank's mean is not, with uneven shares).
        # NaNs are kept: the apps stop on a non-finite val/loss.
        self.eval_loss = nn.ModuleDict({stage: MeanMetric(nan_strategy="disable") for stage in ("val", "test")})

    def log_loss(self, stage: str, loss: torch.Tensor, batch_size: int | None = None) -> None:
        """``train/loss`` on logger-write steps only (``TrainLoss``); ``val/loss`` and ``test/loss`` as
        means over the epoch's batches, each weighted by ``batch_size`` (pass it: examples per batch)."""
        if stage == "train":
            self.train_loss(self, loss)
        else:
            # one value per example: torchmetrics ignores `weight` when it keeps NaNs (nan_strategy="disable")
            self.eval_loss[stage].update(loss.detach().expand(batch_size or 1))
            self.log(f"{stage}/loss", self.eval_loss[stage], prog_bar=True, on_step=False, on_epoch=True)

    def log_stage_metrics(self, stage: str) -> None:
        """Log the stage's collection once an epoch: Lightning moves a logged metric to the device on
        every ``self.log`` call, which would cost every step (BENCHMARKS.md, "Framework overhead")."""
        if f"{stage}_metrics" in self.metrics:
            self.log_dict(self.metrics[f"{stage}_metrics"], prog_bar=stage != "train")

    def on_train_epoch_end(self) -> None:
        self.log_stage_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self.log_stage_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_stage_metrics("test")

    def configure_optimizers(self) -> Any:
        """The optimizer of ``build_optimizer``, and its scheduler if one was given."""
        optimizer = self.build_optimizer()
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "monitor": "val/loss"}}

    def build_optimizer(self) -> Optimizer:
        """The injected optimizer over every parameter that requires grad. A subclass that trains parts
        at other learning rates overrides this and adds parameter groups."""
        return self.optimizer([p for p in self.parameters() if p.requires_grad])

    def run_dir(self) -> Path:
        """The folder of the current run: the first logger's version folder, else the root dir."""
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def log_image(self, key: str, image: torch.Tensor | Figure, caption: str) -> Path | None:
        """Save ``image`` ((3, H, W) floats in [0, 1], or a matplotlib Figure) as ``<key>.png`` in the
        run folder and log it to W&B. Runs on every rank (callers may have synced data first) but only
        rank zero writes."""
        path = self.run_dir() / f"{key.replace('/', '_')}.png"  # a collective under DDP: every rank asks
        if not self.trainer.is_global_zero:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(image, Figure):
            FigureCanvasAgg(image).print_png(str(path))
        else:
            from PIL import Image

            Image.fromarray(image.mul(255).round().byte().permute(1, 2, 0).numpy()).save(path)
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)], caption=[caption])
        return path

    def log_confusion_matrix(self, confusion: MulticlassConfusionMatrix, names: list[str]) -> Path | None:
        """Draw the (synced) confusion matrix with class names on both axes as ``test/confusion_matrix``."""
        matrix = confusion.compute().cpu().numpy()  # (true, predicted); compute() syncs across ranks
        figure = Figure(figsize=(1 + 0.5 * len(names), 1 + 0.45 * len(names)), layout="constrained")
        ax = figure.add_subplot()
        ax.imshow(matrix, cmap="Blues")
        ticks = np.arange(len(names))
        ax.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names)
        ax.set(xlabel="predicted", ylabel="true", title=f"test confusion matrix ({int(matrix.sum())} examples)")
        for (row, col), count in np.ndenumerate(matrix):
            if count:
                color = "white" if count > matrix.max() / 2 else "black"
                ax.text(col, row, int(count), ha="center", va="center", fontsize=7, color=color)
        return self.log_image("test/confusion_matrix", figure, "rows: true label, columns: predicted")

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A W&B table of test examples, from rank zero; nothing without a W&B logger or rows."""
        if not self.trainer.is_global_zero or not rows:
            return
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key=key, columns=columns, data=rows)


class Classifier(TrainingModule):
    """Cross-entropy training of ``self.net`` over ``label_names``: accuracy and macro F1 per stage, a
    test confusion matrix, and predictions as ``{"label", "probability"}`` records.

    A subclass builds ``self.net`` and, if its inputs are more than one tensor, overrides ``forward``.
    Batches are ``(inputs, target)``; predict batches are ``(inputs,)``. ``on_test_predictions`` sees
    each test batch's probabilities, for subclasses that collect examples to show.

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
        super().__init__(optimizer, scheduler)
        # An attribute: the hparams hold only the arguments of the class being built, which may not take it.
        self.label_smoothing = label_smoothing
        n = len(label_names)
        self.metrics = stage_metrics(
            {"acc": MulticlassAccuracy(n, average="micro"), "macro_f1": MulticlassF1Score(n, average="macro")}
        )
        self.confusion = MulticlassConfusionMatrix(n)

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.net(inputs)

    def _step(self, batch: tuple, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, target = batch[0], batch[1]  # a DataModule may add more, e.g. each example's domain
        logits = self(inputs)  # (B, num_classes)
        loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        self.log_loss(stage, loss, batch_size=len(target))
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
        super().on_test_epoch_end()
        self.log_confusion_matrix(self.confusion, self.hparams.label_names)

    def predict_step(self, batch: tuple, batch_idx: int) -> list[dict[str, Any]]:
        probs = self(batch[0]).softmax(-1)
        prob, label = probs.max(-1)
        names = self.hparams.label_names
        return [{"label": names[i], "probability": p} for i, p in zip(label.tolist(), prob.tolist())]
