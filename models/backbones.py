"""Backbones for ``FinetuneClassifier``: torchvision classification models by name, or checkpoints of
this project's apps (the LeNet of ``apps.mnist``, the encoder of ``apps.autoencoder``).

``build_backbone`` makes one with random weights from plain data (a name, or the ``backbone_config``
read from a checkpoint by ``read_backbone_checkpoint`` and ``backbone_config_of``); ``load_weights``
copies the pretrained weights in.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from datamodules.base import DataError
from models.autoencoder import ConvEncoder
from models.lenet import LeNet5

# Seconds a connection for torchvision weights may stall: a closed network fails fast.
NETWORK_TIMEOUT = 5.0


@rank_zero_only
def say(message: str) -> None:
    """The one line that says which backbone weights a run uses."""
    print(f"[backbone] {message}", file=sys.stderr, flush=True)


def torchvision_backbones() -> list[str]:
    """Names of torchvision's classification models, the ones ``--model.backbone`` accepts by name."""
    return torchvision.models.list_models(module=torchvision.models)


def read_backbone_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint of ``apps.mnist`` or ``apps.autoencoder``, checked; any other file is a ``DataError``."""
    if not Path(path).is_file():
        raise DataError(
            f"--model.backbone {path}: no such checkpoint file (and not a torchvision model name); make one with "
            "`python -m apps.mnist fit` (a LeNet) or `python -m apps.autoencoder fit` and pass its checkpoint"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state, _ = checkpoint["state_dict"], checkpoint["hyper_parameters"]  # a Lightning checkpoint has both
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
            "channels": list(h.get("channels", (6, 16))),  # checkpoints from before the option: the paper's
            "dense_layers": False,  # the backbone is the convolutions (``lenet_body``)
        }
    return {"kind": "autoencoder", "image_shape": list(h["image_shape"]), "latent_size": h["latent_size"], "channels": h["channels"]}


class Pixels(nn.Module):
    """Undo the DataModule's ``(pixel - mean) / std``: the autoencoder's encoder takes [0, 1] pixels."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.std + self.mean

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def lenet_body(lenet: LeNet5, dense_layers: bool = False) -> nn.Sequential:
    """LeNet's convolutions, flattened: (B, 1, 28, 28) -> (B, c2 * 5 * 5) features. The dense layers stay
    behind: trained to separate the pretraining classes, they transfer worse (docs/finetune.md).
    ``dense_layers`` keeps all but the last, (B, 84) features: the backbone of finetuned checkpoints
    made before that change, whose ``backbone_config`` has no ``dense_layers`` key."""
    return nn.Sequential(lenet.features, nn.Flatten(), *(lenet.classifier[:-1] if dense_layers else []))


def lenet_of(config: dict[str, Any]) -> LeNet5:
    channels = tuple(config.get("channels", (6, 16)))
    return LeNet5(config["num_classes"], tuple(config["image_shape"]), config["batch_norm"], config["dropout"], channels)


def build_backbone(
    backbone: str, config: dict[str, Any] | None, input_stats: tuple[float, float]
) -> tuple[nn.Module, int]:
    """The backbone with random weights and the size of its output features. ``input_stats`` is the
    ``(mean, std)`` the inputs were normalised with, undone before an autoencoder's encoder."""
    if backbone in torchvision_backbones():
        net = torchvision.models.get_model(backbone, weights=None)
        name, last = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
        parent = net.get_submodule(name.rpartition(".")[0])
        setattr(parent, name.rpartition(".")[2], nn.Identity())  # resnet18: fc -> Identity, 512 features
        return net, last.in_features
    if config["kind"] == "lenet":
        lenet, dense_layers = lenet_of(config), config.get("dense_layers", True)
        return lenet_body(lenet, dense_layers), lenet.classifier[-1 if dense_layers else 0].in_features
    encoder = ConvEncoder(tuple(config["image_shape"]), config["latent_size"], config["channels"])
    return nn.Sequential(Pixels(*input_stats), encoder), config["latent_size"]


def torchvision_weights_file(backbone: str) -> Path:
    """Where torch.hub caches the DEFAULT weights of a torchvision model."""
    weights = torchvision.models.get_model_weights(backbone).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def fetch_torchvision_weights(backbone: str) -> Path:
    """The DEFAULT weights' file in the torch hub cache, downloaded unless it is there. Every socket
    of the download gets a short timeout, so a closed network fails in seconds with one ``DataError``."""
    weights = torchvision.models.get_model_weights(backbone).DEFAULT
    cached = torchvision_weights_file(backbone)
    if cached.is_file():
        return cached
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(NETWORK_TIMEOUT)
    try:
        torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not downloadable"
        raise DataError(
            f"--model.backbone {backbone}: pretrained weights {weights} are not in {cached.parent} and the download "
            f"failed ({type(err).__name__}: {err}); pass --model.pretrained=false to train it from random weights"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return cached


def load_weights(backbone: nn.Module, name: str, config: dict[str, Any] | None) -> str:
    """Copy the pretrained weights of backbone ``name`` into ``backbone`` (built by ``build_backbone``);
    returns what they are, for the log."""
    if config is None:  # a torchvision model
        file = fetch_torchvision_weights(name)
        state = torch.load(file, map_location="cpu", weights_only=True)
        missing, _ = backbone.load_state_dict(state, strict=False)
        if missing:
            raise DataError(f"{file}: no weights for {', '.join(missing[:5])} of {name}")
        return f"pretrained weights {torchvision.models.get_model_weights(name).DEFAULT} from {file}"
    checkpoint = read_backbone_checkpoint(name)
    if backbone_config_of(checkpoint) != config:
        raise DataError(f"--model.backbone {name}: its architecture differs from --model.backbone_config")
    state = {key[len("net.") :]: value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")}
    if checkpoint["kind"] == "lenet":
        lenet = lenet_of(config)
        lenet.load_state_dict(state)
        backbone.load_state_dict(lenet_body(lenet, config["dense_layers"]).state_dict())
        return f"LeNet of apps.mnist trained on classes {', '.join(checkpoint['hyper_parameters']['label_names'])}"
    encoder = {key[len("encoder.") :]: value for key, value in state.items() if key.startswith("encoder.")}
    backbone[1].load_state_dict(encoder)
    return "encoder of apps.autoencoder"
