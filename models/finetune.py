"""Transfer learning: a pretrained backbone and a new classification head, ``python -m apps.finetune fit``.

The backbone is a torchvision classification model by name (``resnet18``), with the weights of its
weight enum, or a checkpoint of ``apps.mnist`` or ``apps.autoencoder`` (``models/backbones.py``).
The head is one linear layer sized from the backbone's output. ``UnfreezeBackbone`` can train the
head alone first and unfreeze the backbone at a given epoch, with a lower learning rate.

Hooks, as a DataModule's: ``prepare_data`` downloads torchvision weights; ``configure_model`` builds
the backbone and head and, for ``fit``, loads the pretrained weights. The backbone checkpoint's
architecture is copied into ``backbone_config``, so the finetuned checkpoint alone rebuilds the model.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
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
            start; false keeps them as pretrained, even after unfreezing.
        dropout: Dropout before the head.
        input_stats: ``(mean, std)`` the DataModule normalised pixels with; linked from the DataModule.
            Undone before an autoencoder's encoder, which takes [0, 1] pixels.
        backbone_config: Architecture of a checkpoint backbone. ``fit`` fills it in from the
            backbone checkpoint; leave it unset.
        optimizer: Optimizer class and arguments (of the head; the backbone's group is added at unfreezing).
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

    def configure_callbacks(self) -> list[BaseFinetuning]:
        if any(isinstance(c, UnfreezeBackbone) for c in self.trainer.callbacks):  # testing after fit
            return []
        h = self.hparams
        return [UnfreezeBackbone(h.unfreeze_at_epoch, h.backbone_lr_factor, h.train_bn)]


class UnfreezeBackbone(BaseFinetuning):
    """Freezes ``pl_module.backbone`` before training and unfreezes it at ``unfreeze_at_epoch``,
    as a new optimizer parameter group with ``lr_factor`` times the head's learning rate.

    Args:
        unfreeze_at_epoch: Epoch whose start unfreezes the backbone (0: train it from the start).
        lr_factor: The backbone group's learning rate relative to the first group's at that moment.
        train_bn: Whether the backbone's batch norm layers train; if not they stay frozen and in
            eval mode, so they normalise with their pretrained statistics.
    """

    def __init__(self, unfreeze_at_epoch: int = 0, lr_factor: float = 1.0, train_bn: bool = True) -> None:
        super().__init__()
        self.unfreeze_at_epoch, self.lr_factor, self.train_bn = unfreeze_at_epoch, lr_factor, train_bn

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pl_module.configure_model()  # the backbone must exist to be frozen; building it twice is a no-op
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self.freeze(pl_module.backbone, train_bn=self.train_bn)

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch == self.unfreeze_at_epoch:
            lr = optimizer.param_groups[0]["lr"] * self.lr_factor
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=lr, train_bn=self.train_bn)
            if not self.train_bn:  # unfreeze_and_add_param_group made them trainable; they are not in the group
                for module in pl_module.backbone.modules():
                    if isinstance(module, _BatchNorm):
                        self.freeze_module(module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if not self.train_bn:  # Lightning puts the whole model in train mode each epoch
            for module in pl_module.backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
