"""Transfer learning: a pretrained backbone and a new classification head, ``python -m apps.finetune fit``.

The backbone is a torchvision classification model by name (``resnet18``), with the weights of its
weight enum, or a checkpoint of ``apps.mnist`` or ``apps.autoencoder`` (``models/backbones.py``).
The head is one linear layer sized from the backbone's output (a LeNet's: its convolutions). The
model can train the head alone first and the backbone from a given epoch on, at a lower learning
rate (``unfreeze_at_epoch``, ``backbone_lr_factor``).

Hooks, as a DataModule's: ``prepare_data`` downloads torchvision weights; ``configure_model`` builds
the backbone and head and, for ``fit``, loads the pretrained weights. The backbone checkpoint's
architecture is copied into ``backbone_config``, so the finetuned checkpoint alone rebuilds the model.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from models.backbones import (
    backbone_config_of, build_backbone, fetch_torchvision_weights, load_weights, read_backbone_checkpoint, say,
    torchvision_backbones,
)
from models.base import Classifier


class FinetuneClassifier(Classifier):
    """A pretrained backbone with a new linear head, trained with cross-entropy.

    Args:
        label_names: Class names in label order; linked from the DataModule.
        backbone: A torchvision classification model by name (``resnet18``), or the path of a
            checkpoint of ``apps.mnist`` or ``apps.autoencoder``.
        pretrained: Start from the backbone's pretrained weights; false starts the same network
            from random weights (and never looks for weights).
        unfreeze_at_epoch: Epoch at which the backbone starts training; until then only the head does.
        backbone_lr_factor: The backbone's learning rate once unfrozen, as a fraction of the head's.
        train_bn: Train the backbone's batch norm layers (and update their statistics) from the
            start, at the head's learning rate; false keeps them as pretrained, even after unfreezing.
        dropout: Dropout before the head.
        input_stats: ``(mean, std)`` the DataModule normalised pixels with; linked from the DataModule.
            Undone before an autoencoder's encoder, which takes [0, 1] pixels.
        backbone_config: Architecture of a checkpoint backbone. ``fit`` fills it in from the
            backbone checkpoint; leave it unset.
        optimizer: Optimizer class and arguments (the head's; the backbone's group takes its learning
            rate times ``backbone_lr_factor``).
        scheduler: Optional learning-rate scheduler.
        label_smoothing: Cross-entropy label smoothing.
    """

    def __init__(
        self,
        label_names: list[str],
        backbone: str = "runs/pretrained/lenet-digits-0-4.ckpt",
        pretrained: bool = True,
        unfreeze_at_epoch: int = 0,
        backbone_lr_factor: float = 1.0,
        train_bn: bool = True,
        dropout: float = 0.0,
        input_stats: tuple[float, float] = (0.0, 1.0),
        backbone_config: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(label_names, optimizer, scheduler, label_smoothing)
        # Built by `configure_model`: construction reads no files.
        self.backbone: nn.Module | None = None
        self.head: nn.Module | None = None

    @property
    def from_torchvision(self) -> bool:
        return self.hparams.backbone in torchvision_backbones()

    def prepare_data(self) -> None:
        """On rank zero, before ``fit``: download the torchvision weights ``configure_model`` will load."""
        if self._fitting() and self.hparams.pretrained and self.from_torchvision:
            fetch_torchvision_weights(self.hparams.backbone)

    def configure_model(self) -> None:
        """Build backbone and head (once); when fitting, load the pretrained weights into the backbone."""
        if self.head is not None:
            return
        config = None
        if not self.from_torchvision:
            config = self.hparams.backbone_config
            if config is None:  # read the architecture once; the finetuned checkpoint keeps it
                config = backbone_config_of(read_backbone_checkpoint(self.hparams.backbone))
                self.hparams.backbone_config = config
        self.backbone, n_features = build_backbone(self.hparams.backbone, config, tuple(self.hparams.input_stats))
        self.head = nn.Sequential(nn.Dropout(self.hparams.dropout), nn.Linear(n_features, len(self.hparams.label_names)))
        # What requires grad is settled here, before DDP wraps the model: everything that ever trains,
        # the held backbone too (``on_after_backward``); without train_bn, batch norm never trains.
        if not self.hparams.train_bn:
            for module in self.batch_norms():
                module.requires_grad_(False)
        if self._fitting():
            if self.hparams.pretrained:
                self.load_pretrained()
            else:
                say(f"{self.hparams.backbone}: random initial weights (--model.pretrained=false)")

    def load_pretrained(self) -> None:
        """Copy the pretrained weights into the built backbone."""
        config = None if self.from_torchvision else self.hparams.backbone_config
        say(f"{self.hparams.backbone}: {load_weights(self.backbone, self.hparams.backbone, config)}")

    def _fitting(self) -> bool:
        return self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.head(self.backbone(images))

    def batch_norms(self) -> list[_BatchNorm]:
        """The backbone's batch norm layers."""
        return [module for module in self.backbone.modules() if isinstance(module, _BatchNorm)]

    def held_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters that train from ``unfreeze_at_epoch`` on: all but its batch norm
        layers' (which train from the start with ``train_bn``, else never)."""
        norms = {id(p) for module in self.batch_norms() for p in module.parameters()}
        return [p for p in self.backbone.parameters() if id(p) not in norms]

    def build_optimizer(self) -> Optimizer:
        """Two groups from the start: what trains from the first step (the head, and the backbone's
        batch norm layers with ``train_bn``), and the held backbone at ``backbone_lr_factor`` times
        the first group's learning rate. A scheduler then sees both, and a resumed run restores both."""
        held = self.held_parameters()
        ids = {id(p) for p in held}
        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad and id(p) not in ids])
        optimizer.add_param_group({"params": held, "lr": optimizer.param_groups[0]["lr"] * self.hparams.backbone_lr_factor})
        return optimizer

    def on_after_backward(self) -> None:
        """Before ``unfreeze_at_epoch``, drop the held backbone's gradients (after DDP has averaged
        them): the optimizer skips a parameter without one, so it neither moves, decays nor gathers
        moments, as if it were frozen. Frozen by ``requires_grad`` instead, DDP, which picks the
        parameters it all-reduces when it wraps the model, would leave them out for good once they
        unfreeze, and each rank would train a backbone of its own."""
        if self.current_epoch < self.hparams.unfreeze_at_epoch:
            for p in self.held_parameters():
                p.grad = None

    def on_train_epoch_start(self) -> None:
        """Without ``train_bn``, the backbone's batch norm layers run in eval mode, so they normalise
        with their pretrained statistics (validation gives each module back the mode it had)."""
        if not self.hparams.train_bn:
            for module in self.batch_norms():
                module.eval()
