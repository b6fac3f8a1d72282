"""What lets a run survive a crash, and fail early and loudly on what would spoil it; shared by every app.

- ``RunRecord`` writes into every checkpoint which app wrote it, its seed and its W&B run id, so that
  ``fit --ckpt_path last`` continues the same W&B run and ``test``/``predict`` refuse another app's file;
- ``EpochSeeds`` reseeds the random generators from (seed, epoch) as each training epoch starts, so an
  epoch draws the same shuffle, augmentations and dropout masks whether or not the run was resumed
  before it: a resumed run ends with the same weights, bit for bit on CPU;
- ``FiniteLoss`` stops training at the first non-finite loss, before it reaches the weights or a
  checkpoint, naming the step and stage;
- ``find_last_checkpoint``, ``continue_csv`` and ``check_output_folder`` serve the CLI before training starts.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from datamodules.sources import DataError


class TrainingStopped(RuntimeError):
    """Training cannot go on (a non-finite loss); the message says where and what is left."""


class RunRecord(Callback):
    """Adds ``checkpoint["run"]``: the app's name, the seed and the W&B run id (plain data, no pickles).

    Args:
        app: The app's name (``mnist``, ``sentiment``, ...).
        seed: The run's seed (``seed_everything``).
    """

    def __init__(self, app: str, seed: int | None) -> None:
        self.app, self.seed = app, seed

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        wandb_ids = [logger.version for logger in trainer.loggers if type(logger).__name__ == "WandbLogger"]
        checkpoint["run"] = {"app": self.app, "seed": self.seed, "wandb_id": wandb_ids[0] if wandb_ids else None}


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 32-bit seed for ``epoch`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochSeeds(Callback):
    """Reseeds Python's, NumPy's and torch's generators from (seed, epoch) at the start of every
    training epoch.

    An uninterrupted run and one resumed from the checkpoint of the epoch before then start the epoch
    from the same state. Two more things have to line up for that, both because a resumed run starts
    its first pass over the training data before its first epoch starts, where an uninterrupted run
    starts each pass after: a DataLoader draws a seed from the global generator when it starts a pass,
    so training loaders get a generator of their own; and a sampler that fixes its order when the pass
    starts (``DistributedSampler``, the text apps' ``BucketBatchSampler``) would use the order of epoch
    0, so a resumed run starts its first pass again once the samplers know the epoch.

    Args:
        seed: The run's seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loaders = list(_dataloaders(trainer.train_dataloader))
        for loader in loaders:
            if loader.generator is None:
                loader.generator = torch.Generator()
        if trainer.current_epoch > 0:  # resumed: Lightning started the pass with the samplers at epoch 0
            for loader in loaders:
                _set_sampler_epoch(loader, trainer.current_epoch)
            iter(trainer.fit_loop._data_fetcher)  # start the pass again, in this epoch's order

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seed = epoch_seed(self.seed, trainer.current_epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # every device's generator too


def _dataloaders(loaders: Any) -> Iterable[DataLoader]:
    """The DataLoaders in what ``trainer.train_dataloader`` returns (one, or a list or dict of them)."""
    if isinstance(loaders, DataLoader):
        yield loaders
    elif isinstance(loaders, dict):
        yield from (l for l in loaders.values() if isinstance(l, DataLoader))
    elif isinstance(loaders, (list, tuple)):
        yield from (l for l in loaders if isinstance(l, DataLoader))


class FiniteLoss(Callback):
    """Raises ``TrainingStopped`` at the first non-finite training loss (before its backward pass, so
    the weights stay finite) or validation loss (before the epoch's checkpoint is written).

    Under DDP every rank takes the same decision, so none is left waiting for the others.
    """

    batch_idx = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            value = loss.detach().float().mean().item()
            where = f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self.batch_idx})"
            self._stop(trainer, f"train loss is {value} at {where}")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning runs checkpoint callbacks after all others, so this comes before the epoch's save.
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not torch.isfinite(loss).all():
            stage = "sanity check" if trainer.sanity_checking else f"epoch {trainer.current_epoch}"
            self._stop(trainer, f"val/loss is {loss.item()} after step {trainer.global_step} (validation, {stage})")

    @staticmethod
    def _stop(trainer: Trainer, what: str) -> None:
        saved = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        kept = f"the last good checkpoint is {saved}" if saved else "no checkpoint had been written yet"
        raise TrainingStopped(f"training stopped: {what}; {kept}")


def find_last_checkpoint(folders: Iterable[Path]) -> Path | None:
    """The newest ``last*.ckpt`` in ``folders``, or None."""
    found = [path for folder in folders for path in Path(folder).glob("last*.ckpt") if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def continue_csv(path: Path, epoch: int, step: int) -> list[str]:
    """Drop the rows of a CSV metrics file written after a checkpoint (of ``epoch`` and ``step``), so a
    resumed run appends to what the checkpoint had seen; returns the file's columns.

    Rows with an epoch are kept up to ``epoch``; rows without (the learning rate) up to ``step``.
    """
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = [
            row
            for row in reader
            if (float(row["epoch"]) <= epoch if row.get("epoch") else float(row.get("step") or 0) < step)
        ]
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)
    return columns


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About the size of one checkpoint of ``model``: its weights and an Adam-like optimizer's two
    moments per weight."""
    return 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())


def check_output_folder(folder: str | os.PathLike, needed: int) -> None:
    """Fail now, not after an epoch of training, if ``folder`` cannot take ``needed`` bytes of files.

    Raises DataError naming the folder: when it cannot be created or written to, or when its disk has
    less than ``needed`` bytes free. Folders it creates to find out are removed again (Lightning's CSV
    logger warns about a run folder that is not empty).
    """
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise DataError(f"cannot write to the output folder {folder}: {err.strerror or err}") from None
    finally:
        for created in missing:  # deepest first
            with contextlib.suppress(OSError):
                created.rmdir()
    if free < needed:
        raise DataError(
            f"not enough disk space for checkpoints in {folder}: {free / 2**20:.1f} MiB free, "
            f"about {needed / 2**20:.1f} MiB needed"
        )
