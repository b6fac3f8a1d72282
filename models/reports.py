"""What a LightningModule adds to its run beyond per-epoch metrics: the training-loss curve, and
pictures saved as PNG in the run folder and logged to W&B."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import WandbLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix


class TrainLoss:
    """``train/loss`` as the mean over the batches since the last logger write, logged only on the
    steps Lightning writes to the loggers (every ``--trainer.log_every_n_steps``), restarted each epoch.

    Only every n-th step's value ever reaches a logger, while each ``self.log`` call costs about a
    millisecond of Lightning bookkeeping on a CPU, 8% of a LeNet step; and the mean of n batches is a
    steadier curve than one batch's loss. Call it from ``training_step`` with the step's loss.
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


class StageLogging:
    """Loss and metric logging for a LightningModule whose ``self.metrics[f"{stage}_metrics"]``
    collections its steps update, and which holds a ``TrainLoss`` as ``self.train_loss``.

    Metrics are logged once an epoch, not every step: Lightning moves a logged torchmetrics object to
    the device on each ``self.log`` call (~1.5 ms on a CPU, ~25% of a LeNet step). Put it before
    ``LightningModule`` in the bases so its epoch-end hooks are the ones Lightning calls.
    """

    def log_loss(self, stage: str, loss: torch.Tensor) -> None:
        if stage == "train":
            self.train_loss(self, loss)
        else:
            self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True)

    def log_stage_metrics(self, stage: str) -> None:
        self.log_dict(self.metrics[f"{stage}_metrics"], prog_bar=stage != "train")

    def on_train_epoch_end(self) -> None:
        self.log_stage_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self.log_stage_metrics("val")


def run_dir(module: LightningModule) -> Path:
    """The folder of the current run: the first logger's version folder, else the root dir."""
    return Path(module.trainer.log_dir or module.trainer.default_root_dir)


def log_image(module: LightningModule, key: str, image: torch.Tensor | Figure, caption: str) -> Path | None:
    """Save ``image`` ((3, H, W) floats in [0, 1], or a matplotlib Figure) as ``<key>.png`` and log it.

    Runs on every rank (callers may have synced data first) but only rank zero writes.
    """
    path = run_dir(module) / f"{key.replace('/', '_')}.png"  # a collective under DDP: every rank asks
    if not module.trainer.is_global_zero:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, Figure):
        FigureCanvasAgg(image).print_png(str(path))
    else:
        from PIL import Image

        pixels = image.mul(255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(path)
    for logger in module.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], caption=[caption])
    return path


def log_confusion_matrix(module: LightningModule, confusion: MulticlassConfusionMatrix) -> Path | None:
    """Draw the (synced) confusion matrix with class names on both axes."""
    matrix = confusion.compute().cpu().numpy()  # (true, predicted); compute() syncs across ranks
    names = module.hparams.label_names
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
    return log_image(module, "test/confusion_matrix", figure, "rows: true label, columns: predicted")
