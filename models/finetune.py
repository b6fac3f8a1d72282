"""Transfer learning: a pretrained backbone and a new classification head, ``python -m apps.finetune fit``.

The backbone is either a torchvision classification model by name (``resnet18``), with the weights
of its weight enum (``get_model_weights(name).DEFAULT``), or a checkpoint of this project: the LeNet
of ``apps.mnist`` (convolutions and hidden dense layers) or the encoder of ``apps.autoencoder``.
The head is one linear layer sized from the backbone's output. ``UnfreezeBackbone`` trains the head
alone first and unfreezes the backbone at a given epoch, with a lower learning rate.

Hooks, as a DataModule's: ``prepare_data`` fetches what ``fit`` needs (downloads torchvision weights,
or pretrains the default backbone checkpoint when it is missing); ``configure_model`` builds the
backbone and head and, for ``fit``, loads the pretrained weights. The backbone checkpoint's
architecture is copied into ``backbone_config``, so the finetuned checkpoint alone rebuilds the model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from datamodules.images import torchvision_backbones
from datamodules.mnist import MEAN, STD
from datamodules.sources import DataError, network_timeout, reachable
from models.autoencoder import ConvEncoder
from models.classifier import Classifier
from models.lenet import LeNet5
from models.optim import injected_optimizers

REPO = Path(__file__).resolve().parents[1]
# Backbone checkpoints that `fit` makes itself when they are missing: path -> the command that makes it.
# LeNet learns digits 0-4 with labels; the autoencoder learns all digits without labels.
# The LeNet keeps its best epoch by validation loss: by accuracy, the 0-4 validation split reaches
# 1.0 after two epochs and ties never replace it, which kept a backbone trained for 30 steps.
RECIPES = {
    "runs/pretrained/lenet-digits-0-4.ckpt": [
        "apps.mnist", "fit", "--data.classes=[0,1,2,3,4]", "--checkpoint.monitor=val/loss", "--checkpoint.mode=min"
    ],
    "runs/pretrained/autoencoder-digits.ckpt": ["apps.autoencoder", "fit"],
}


@rank_zero_only
def say(message: str) -> None:
    """The one line that says which backbone weights a run uses."""
    print(f"[backbone] {message}", file=sys.stderr, flush=True)


def pretrain(path: str) -> None:
    """Make a missing ``RECIPES`` checkpoint by running its app, exactly as a user would."""
    args = [*RECIPES[path], "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    target = Path(path)
    args += [f"--checkpoint.dirpath={target.parent}", f"--checkpoint.filename={target.stem}", "--checkpoint.save_last=false"]
    say(f"{path} is missing: pretraining it first with `python -m {' '.join(args)}`")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL)
    if done.returncode != 0 or not target.is_file():
        raise DataError(f"pretraining {path} failed (exit code {done.returncode}); run the command above to see why")


def read_backbone_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint of ``apps.mnist`` or ``apps.autoencoder``, checked; any other file is a ``DataError``."""
    if not Path(path).is_file():
        raise DataError(f"--model.backbone {path}: neither a torchvision model name nor a checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state, hparams = checkpoint["state_dict"], checkpoint["hyper_parameters"]
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise DataError(f"--model.backbone {path}: not a readable Lightning checkpoint ({type(err).__name__})") from None
    prefixes = {key.split(".")[1] for key in state if key.startswith("net.")}
    if {"features", "classifier"} <= prefixes:
        checkpoint["kind"] = "lenet"
    elif {"encoder", "decoder"} <= prefixes:
        checkpoint["kind"] = "autoencoder"
    else:
        raise DataError(
            f"--model.backbone {path}: a checkpoint of neither apps.mnist (LeNet) nor apps.autoencoder "
            f"(its weights are {', '.join(sorted({k.split('.')[0] for k in state})) or 'none'})"
        )
    return checkpoint


def backbone_config_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What it takes to rebuild a checkpoint's backbone without the checkpoint."""
    h = checkpoint["hyper_parameters"]
    if checkpoint["kind"] == "lenet":
        return {
            "kind": "lenet",
            "num_classes": len(h["label_names"]),
            "image_shape": list(h["image_shape"]),
            "batch_norm": h["batch_norm"],
            "dropout": h["dropout"],
        }
    return {"kind": "autoencoder", "image_shape": list(h["image_shape"]), "latent_size": h["latent_size"], "channels": h["channels"]}


class Pixels(nn.Module):
    """Undo the MNIST normalisation: the autoencoder's encoder takes [0, 1] pixels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * STD + MEAN


def lenet_body(lenet: LeNet5) -> nn.Sequential:
    """LeNet without its last layer: (B, 1, 28, 28) -> (B, 84) features."""
    return nn.Sequential(lenet.features, nn.Flatten(), *lenet.classifier[:-1])


def build_backbone(backbone: str, config: dict[str, Any] | None) -> tuple[nn.Module, int]:
    """The backbone with random weights and the size of its output features."""
    if backbone in torchvision_backbones():
        net = torchvision.models.get_model(backbone, weights=None)
        name, last = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
        parent = net.get_submodule(name.rpartition(".")[0])
        setattr(parent, name.rpartition(".")[2], nn.Identity())  # resnet18: fc -> Identity, 512 features
        return net, last.in_features
    if config["kind"] == "lenet":
        lenet = LeNet5(config["num_classes"], tuple(config["image_shape"]), config["batch_norm"], config["dropout"])
        return lenet_body(lenet), lenet.classifier[-1].in_features
    encoder = ConvEncoder(tuple(config["image_shape"]), config["latent_size"], config["channels"])
    return nn.Sequential(Pixels(), encoder), config["latent_size"]


def torchvision_weights_file(backbone: str) -> Path:
    """Where torch.hub caches the DEFAULT weights of a torchvision model."""
    weights = torchvision.models.get_model_weights(backbone).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


class FinetuneClassifier(Classifier):
    """A pretrained backbone with a new linear head, trained with cross-entropy.

    Args:
        label_names: Class names in label order; linked from the DataModule.
        backbone: A torchvision classification model by name (``resnet18``), or the path of a
            checkpoint of ``apps.mnist`` or ``apps.autoencoder``. The ``runs/pretrained/`` ones in
            ``models.finetune.RECIPES`` are made on first use.
        pretrained: Start from the backbone's pretrained weights; false starts the same network
            from random weights (and never looks for weights).
        unfreeze_at_epoch: Epoch at which the backbone starts training; until then only the head does.
        backbone_lr_factor: The backbone's learning rate once unfrozen, as a fraction of the head's.
        train_bn: Train the backbone's batch norm layers (and update their statistics) from the
            start; false keeps them as pretrained, even after unfreezing.
        dropout: Dropout before the head.
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
        unfreeze_at_epoch: int = 10,
        backbone_lr_factor: float = 0.1,
        train_bn: bool = False,
        dropout: float = 0.0,
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
        """On rank zero, before ``fit``: the weights ``configure_model`` will load, fetched or made."""
        if not self._fitting() or not self.hparams.pretrained:
            return
        if self.from_torchvision:
            self.fetch_torchvision_weights()
        elif self.hparams.backbone in RECIPES and not Path(self.hparams.backbone).is_file():
            pretrain(self.hparams.backbone)

    def fetch_torchvision_weights(self) -> None:
        """Download the DEFAULT weights into the torch hub cache unless they are there."""
        name = self.hparams.backbone
        weights = torchvision.models.get_model_weights(name).DEFAULT
        cached = torchvision_weights_file(name)
        if cached.is_file():
            return
        ok, why = reachable(weights.url)
        if ok:
            try:
                with network_timeout():
                    torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
                return
            except Exception as err:  # noqa: BLE001 - any failure means "not downloadable"
                why = f"the download failed ({err})"
        raise DataError(
            f"--model.backbone {name}: pretrained weights {weights} are not in {cached.parent} and {why}; "
            "pass --model.pretrained=false to train it from random weights"
        )

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
        self.backbone, n_features = build_backbone(self.hparams.backbone, config)
        self.head = nn.Sequential(nn.Dropout(self.hparams.dropout), nn.Linear(n_features, len(self.hparams.label_names)))
        if self._fitting():
            if self.hparams.pretrained:
                self.load_pretrained()
            else:
                say(f"{self.hparams.backbone}: random initial weights (--model.pretrained=false)")

    def load_pretrained(self) -> None:
        """Copy the pretrained weights into the built backbone."""
        name = self.hparams.backbone
        if self.from_torchvision:
            file = torchvision_weights_file(name)
            if not file.is_file():  # prepare_data ran on another node, or not at all
                self.fetch_torchvision_weights()
            state = torch.load(file, map_location="cpu", weights_only=True)
            missing, unexpected = self.backbone.load_state_dict(state, strict=False)
            if missing:
                raise DataError(f"{file}: no weights for {', '.join(missing[:5])} of {name}")
            say(f"{name}: pretrained weights {torchvision.models.get_model_weights(name).DEFAULT} from {file}")
            return
        checkpoint = read_backbone_checkpoint(name)
        if backbone_config_of(checkpoint) != self.hparams.backbone_config:
            raise DataError(f"--model.backbone {name}: its architecture differs from --model.backbone_config")
        state = {key[len("net.") :]: value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")}
        config = self.hparams.backbone_config
        if checkpoint["kind"] == "lenet":
            lenet = LeNet5(config["num_classes"], tuple(config["image_shape"]), config["batch_norm"], config["dropout"])
            lenet.load_state_dict(state)
            self.backbone.load_state_dict(lenet_body(lenet).state_dict())
            what = f"LeNet of apps.mnist trained on digits {', '.join(checkpoint['hyper_parameters']['label_names'])}"
        else:
            encoder = {key[len("encoder.") :]: value for key, value in state.items() if key.startswith("encoder.")}
            self.backbone[1].load_state_dict(encoder)
            what = "encoder of apps.autoencoder"
        say(f"{name}: {what}")

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

    def configure_optimizers(self) -> Any:
        # Only what trains from the start (the head); UnfreezeBackbone adds the backbone's group later.
        return injected_optimizers([p for p in self.parameters() if p.requires_grad], self.optimizer, self.scheduler)


class UnfreezeBackbone(BaseFinetuning):
    """Freezes ``pl_module.backbone`` before training and unfreezes it at ``unfreeze_at_epoch``,
    as a new optimizer parameter group with ``lr_factor`` times the head's learning rate.

    Args:
        unfreeze_at_epoch: Epoch whose start unfreezes the backbone (0: train it from the start).
        lr_factor: The backbone group's learning rate relative to the first group's at that moment.
        train_bn: Whether the backbone's batch norm layers train; if not they stay frozen and in
            eval mode, so they normalise with their pretrained statistics.
    """

    def __init__(self, unfreeze_at_epoch: int = 10, lr_factor: float = 0.1, train_bn: bool = False) -> None:
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
