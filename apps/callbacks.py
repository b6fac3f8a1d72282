"""The callbacks every app's Trainer gets from ``apps/cli.py``: a resumed run ends with the same weights as
one that never stopped, a run fails early and in one line on what would spoil it, ``predict`` writes."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

from datamodules.base import DataError


class TrainingStopped(RuntimeError):
    """Training cannot go on (a non-finite loss); the message says where and what is left."""


class RunRecord(Callback):
    """Adds ``checkpoint["run"]``: the app's name, the seed, the W&B run id and the run's model, data and
    seed settings as JSON text (plain data, no pickles), so ``fit --ckpt_path last`` continues the run
    of the same settings and its W&B run, and ``test`` refuses another app's checkpoint."""

    def __init__(self, app: str, seed: int | None, config: str = "") -> None:
        self.app, self.seed, self.config = app, seed, config

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        wandb_ids = [logger.version for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        checkpoint["run"] = {"app": self.app, "seed": self.seed, "wandb_id": wandb_ids[0] if wandb_ids else None,
                             "config": self.config}


class Checkpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (``--checkpoint.*``), whose ``last.ckpt`` is written every time
    a checkpoint is due (each epoch's end, or each validation's when validation runs within an epoch),
    as ``fit --ckpt_path last`` needs.

    Lightning 2.6 writes ``last.ckpt`` only when a best checkpoint is written at the same step: in a run
    whose monitored metric stops improving it stays at the last improvement, so a killed run resumed
    from there, trained those epochs again with other random draws and ended elsewhere. Four private
    methods; ``tests/test_lightning_api.py`` fails when they change.
    """

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: Trainer) -> None:
        # Skipped during the sanity check and outside fit, or when a checkpoint of this step is saved
        # already (Lightning then saved last.ckpt with it).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 32-bit seed for ``epoch`` of process ``rank`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class EpochSeeds(Callback):
    """Reseeds Python's, NumPy's and torch's generators from (seed, epoch, global rank) as each training
    epoch starts: each DDP rank draws its own dropout masks and augmentations, and a resumed run draws
    what an uninterrupted one does. (Samplers that shard the data over ranks keep their own seed, the
    same on every rank.)

    A resumed run starts its first pass over the training data before its first epoch starts, where an
    uninterrupted run starts each pass after; two things make up for that. Training loaders get a
    generator of their own, so starting a pass draws nothing from the reseeded global one. And a sampler
    that fixes its order when a pass starts (``DistributedSampler``, ``BucketBatchSampler``) would use
    epoch 0's order, so a resumed run starts its first pass again once the samplers know the epoch.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        found = trainer.train_dataloader  # one DataLoader, or a list or dict of them
        found = found.values() if isinstance(found, dict) else found if isinstance(found, (list, tuple)) else [found]
        loaders = [loader for loader in found if isinstance(loader, DataLoader)]
        for loader in loaders:
            loader.generator = loader.generator or torch.Generator()
        if trainer.current_epoch > 0:
            for loader in loaders:
                for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
                    if hasattr(sampler, "set_epoch"):
                        sampler.set_epoch(trainer.current_epoch)
            restart_training_pass(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seed = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # every device's generator too


def restart_training_pass(trainer: Trainer) -> None:
    """Start the fit loop's pass over the training data again. The one private Lightning attribute the
    apps use (no public hook restarts a pass); ``tests/test_lightning_api.py`` fails when it changes."""
    iter(trainer.fit_loop._data_fetcher)


class FiniteLoss(Callback):
    """Raises ``TrainingStopped`` at the first non-finite training loss (before its backward pass, so the
    weights stay finite) or ``val/loss`` (before the epoch's checkpoint). Every DDP rank decides alike."""

    batch_idx = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if not trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach()).all()), all=True):
            where = f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self.batch_idx})"
            self._stop(trainer, f"train loss is {loss.detach().float().mean().item()} at {where}")

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


class PredictionWriter(BasePredictionWriter):
    """Writes each record of ``predict_step`` beside its input (the DataModule's ``predict_inputs``, in
    order) to a .csv or .jsonl file. The file is written whole under a temporary name beside it and then
    replaces it, so a failed run leaves any earlier file as it was."""

    FORMATS = (".csv", ".jsonl")

    def __init__(self, path: str) -> None:
        super().__init__(write_interval="epoch")
        self.path = Path(path)
        if self.path.suffix not in self.FORMATS:
            raise DataError(f"--output {path}: name a {' or '.join(self.FORMATS)} file")
        if not self.path.parent.is_dir():
            raise DataError(f"--output {path}: folder {self.path.parent} does not exist")

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: list, indices: list) -> None:
        records = [record for batch in predictions for record in batch]
        inputs = trainer.datamodule.predict_inputs
        if len(records) != len(inputs):
            raise RuntimeError(f"{len(inputs)} inputs but {len(records)} predictions")
        rows = [{"input": text, **record} for text, record in zip(inputs, records)]
        handle, partial = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        try:
            with open(handle, "w", newline="", encoding="utf-8") as f:
                if self.path.suffix == ".csv":
                    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
                else:
                    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            os.chmod(partial, self.path.stat().st_mode if self.path.exists() else 0o666 & ~current_umask())
            os.replace(partial, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
        print(f"wrote {len(rows)} predictions to {self.path}")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class CheckpointRoom(Callback):
    """Fails before training starts, in one line, when the checkpoint folder cannot take the files.
    Rank zero checks; every rank stops, so none is left waiting for the others."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None
        problem = ""
        if folder and trainer.is_global_zero and not trainer.fast_dev_run:
            try:  # room for last.ckpt, the best one and one being written, with a margin
                check_output_folder(folder, needed=3 * checkpoint_bytes(pl_module) + 2**24)
            except DataError as err:
                problem = str(err)
        if not trainer.strategy.reduce_boolean_decision(not problem, all=True):
            raise DataError(problem or f"rank 0 cannot write checkpoints to {folder} (its log says why)")


def rows_until(path: Path, epoch: int, step: int) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV metrics file's columns and rows up to a checkpoint of ``epoch`` and global ``step``."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        # rows with an epoch up to the checkpoint's; those without (the learning rate) before its step
        rows = [row for row in reader if (float(row["epoch"]) <= epoch if row.get("epoch") else float(row["step"] or 0) < step)]
        return list(reader.fieldnames or []), rows


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About one checkpoint of ``model``: its weights and an Adam-like optimizer's two moments."""
    return 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())


def check_output_folder(folder: str | os.PathLike, needed: int) -> None:
    """Fail now, not after an epoch of training, if ``folder`` cannot take ``needed`` bytes of files.
    Folders it creates to find out are removed again (the CSV logger warns about a non-empty one)."""
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
        raise DataError(f"not enough disk space for checkpoints in {folder}: {free / 2**20:.1f} MiB free, "
                        f"about {needed / 2**20:.1f} MiB needed")
