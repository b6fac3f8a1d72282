"""Faults the reliability tests inject into a real run, through ``--trainer.callbacks``."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class KillAt(Callback):
    """SIGKILLs the process at the start of batch ``batch`` of epoch ``epoch``: nothing is flushed or
    saved, as when a machine dies. ``group``: its whole process group, every DDP rank at once (start
    the run in a session of its own)."""

    def __init__(self, epoch: int, batch: int, group: bool = False) -> None:
        self.epoch, self.batch, self.group = epoch, batch, group

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            if self.group:
                os.killpg(os.getpgid(0), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonValidationAt(Callback):
    """Turns one weight into NaN as the validation of epoch ``epoch`` starts (not the sanity check), so
    ``val/loss`` is NaN while every training loss was finite."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class PoisonAt(Callback):
    """Turns one weight into NaN at the start of batch ``batch`` of epoch ``epoch``, so that batch's
    loss is NaN, as after a numerical blow-up."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class GradientNorms(Callback):
    """Records the gradient norm before Lightning clips it and after the optimizer step (gradients are
    zeroed only as the next step starts), in the class's lists. ``scale_last_layer`` multiplies the
    weights of the model's last linear layer as fitting starts: huge logits, huge gradients."""

    before: list[float] = []
    after: list[float] = []

    def __init__(self, scale_last_layer: float = 1.0) -> None:
        self.scale = scale_last_layer
        GradientNorms.before, GradientNorms.after = [], []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        last = [m for m in pl_module.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(self.scale)

    @staticmethod
    def norm(module: LightningModule) -> float:
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None])).item()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        GradientNorms.before.append(self.norm(pl_module))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        GradientNorms.after.append(self.norm(pl_module))
