"""Faults the reliability tests inject into a real run, through ``--trainer.callbacks``."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class KillAt(Callback):
    """SIGKILLs the process at the start of batch ``batch`` of epoch ``epoch``: nothing is flushed or
    saved, as when a machine dies."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAt(Callback):
    """Turns one weight into NaN at the start of batch ``batch`` of epoch ``epoch``, so that batch's
    loss is NaN, as after a numerical blow-up."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")
