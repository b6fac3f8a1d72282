"""The optimizer set-up every LightningModule shares: the CLI-injected optimizer and scheduler."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable


def injected_optimizers(
    parameters: Iterable[torch.nn.Parameter],
    optimizer: OptimizerCallable,
    scheduler: LRSchedulerCallable | None,
    monitor: str = "val/loss",
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer and, if one was given, its scheduler
    (``ReduceLROnPlateau`` watches ``monitor``)."""
    built = optimizer(parameters)
    if scheduler is None:
        return built
    return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler(built), "monitor": monitor}}
