"""How far a backbone's frozen features go on a few labels: a linear readout of them, against the same
net's random features.

    python -m benchmarks.linear_probe --backbone runs/pretrained/lenet-digits-0-4.ckpt
    python -m benchmarks.linear_probe --backbone runs/pretrained/lenet-fashion-0-4.ckpt --dataset fashion_mnist --data_dir DIR

The images are the finetune app's, split and drawn per seed as ``python -m apps.finetune fit
--data.seed=S`` draws them (its classes, 10 labels a class by default). For each seed, scikit-learn's
logistic regression (``C=1``) learns the backbone's output features of the labelled training images,
without augmentation, and is scored on the test images: once with the pretrained weights, once with
the random weights ``--model.pretrained=false`` starts from. The pretrained arm is about what a new
head reaches without moving the backbone; when it is short of a goal, no head or schedule in
``apps.finetune`` will close the gap, and the backbone must learn more (docs/fashion_mnist.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from benchmarks.fashion import paired
from benchmarks.harness import mean_std
from datamodules.base import DataError
from datamodules.images import ImageDataModule
from models.backbones import backbone_config_of, build_backbone, load_weights, read_backbone_checkpoint, torchvision_backbones


def features(backbone: nn.Module, data: ImageDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, F)`` features of the split's images, as the model gets them outside training, and ``(N,)`` labels."""
    loader = data.train_dataloader() if split == "train" else data.test_dataloader()
    outputs, labels = [], []
    with torch.no_grad():
        for batch in loader:
            images, y = data.on_after_batch_transfer(batch, 0)
            outputs.append(backbone(images))
            labels.append(y)
    return torch.cat(outputs), torch.cat(labels)


def probe(backbone: str, pretrained: bool, seed: int, **data_options) -> tuple[float, int, int]:
    """Test accuracy of the linear readout, and how many labelled training and test images it saw."""
    data = ImageDataModule(backbone=backbone, seed=seed, batch_size=500, **data_options)
    data.prepare_data()  # as fit does: finds the files, or downloads them when it can
    data.setup("fit")
    data.setup("test")
    config = None if backbone in torchvision_backbones() else backbone_config_of(read_backbone_checkpoint(backbone))
    torch.manual_seed(seed)
    net, _ = build_backbone(backbone, config, data.input_stats)
    if pretrained:
        load_weights(net, backbone, config)
    net.eval()
    (train_x, train_y), (test_x, test_y) = features(net, data, "train"), features(net, data, "test")
    readout = LogisticRegression(C=1.0, max_iter=5000).fit(train_x.numpy(), train_y.numpy())
    return float((readout.predict(test_x.numpy()) == test_y.numpy()).mean()), len(train_y), len(test_y)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="a checkpoint of apps.mnist or apps.autoencoder")
    parser.add_argument("--dataset", default="digits", help="as --data.dataset of apps.finetune")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--classes", type=int, nargs="+", default=[5, 6, 7, 8, 9])
    parser.add_argument("--labels_per_class", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)
    if args.backbone not in torchvision_backbones() and not Path(args.backbone).is_file():
        parser.exit(2, f"error: --backbone {args.backbone}: no such checkpoint file\n")
    options = {"dataset": args.dataset, "data_dir": args.data_dir, "classes": args.classes, "labels_per_class": args.labels_per_class}
    arms: dict[str, list[float]] = {"pretrained": [], "random": []}
    for i, seed in enumerate(args.seeds):
        for arm, scores in arms.items():
            try:
                with contextlib.redirect_stderr(io.StringIO()) if i or arm == "random" else contextlib.nullcontext():  # [data] once
                    acc, n_train, n_test = probe(args.backbone, arm == "pretrained", seed, **options)
            except DataError as err:  # a bad checkpoint or missing data: one line, the apps' exit code
                parser.exit(2, f"error: {err}\n")
            scores.append(acc)
        print(f"seed {seed}: pretrained {arms['pretrained'][-1]:.4f}  random {arms['random'][-1]:.4f}  "
              f"({n_train} labelled images, {n_test} test images)", flush=True)
    if len(args.seeds) > 1:
        gain, se = paired(arms["pretrained"], arms["random"])
        print(f"linear readout of the frozen features: pretrained {mean_std(arms['pretrained'])} vs random "
              f"{mean_std(arms['random'])}, {gain:+.3f} on the mean (paired standard error {se:.3f})")


if __name__ == "__main__":
    main()
