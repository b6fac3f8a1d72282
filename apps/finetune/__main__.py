"""Finetune a pretrained backbone with a new head on few labels.

    python -m apps.finetune fit        # offline: LeNet pretrained on digits 0-4, finetuned on 5-9 with 10 labels each
    python -m apps.finetune fit --data.dataset=fashion_mnist --data.data_dir=DIR   # the same with clothes
    python -m apps.finetune fit --model.backbone=runs/pretrained/autoencoder-digits.ckpt
    python -m apps.finetune fit --model.backbone=resnet18 --data.dataset=folder --data.path=my_images/
    python -m apps.finetune test --ckpt_path runs/finetune/version_0/checkpoints/last.ckpt
    python -m apps.finetune predict --ckpt_path CKPT --data.predict_path my_images/ --output predictions.csv

The default backbones under runs/pretrained/ are made the first time `fit` needs them, by the command
in ``PRETRAIN`` run in this process; run it yourself to make one ahead. With Fashion-MNIST the default
backbone is the LeNet pretrained on its own classes 0-4 (``DATASET_BACKBONES``).
"""

import contextlib
import importlib
import inspect
import os
import sys
from pathlib import Path

from lightning.pytorch import seed_everything

from apps.cli import AppCLI, run_app
from datamodules.base import DataError
from datamodules.images import ImageDataModule
from models.finetune import FinetuneClassifier

# Backbone checkpoints `fit` makes when they are missing: path -> (app, arguments). The LeNet learns
# classes 0-4 with labels and keeps its epoch of lowest val/loss (by val/acc, the digits' 0-4 split reaches 1.0
# within two epochs and a tie never replaces that early epoch); the autoencoder learns every digit.
LENET_0_4 = ["--data.classes=[0,1,2,3,4]", "--checkpoint.monitor=val/loss", "--checkpoint.mode=min"]
PRETRAIN = {
    "runs/pretrained/lenet-digits-0-4.ckpt": ("apps.mnist", LENET_0_4),
    "runs/pretrained/lenet-fashion-0-4.ckpt": ("apps.mnist", ["--data.dataset=fashion_mnist", *LENET_0_4]),
    "runs/pretrained/autoencoder-digits.ckpt": ("apps.autoencoder", []),
}
# The default backbone of a dataset other than the digits: a LeNet pretrained on its classes 0-4.
DATASET_BACKBONES = {"fashion_mnist": "runs/pretrained/lenet-fashion-0-4.ckpt"}
DEFAULT_BACKBONE = inspect.signature(FinetuneClassifier).parameters["backbone"].default


def pretrain(path: str, data_dir: str) -> None:
    """Make the ``PRETRAIN`` backbone checkpoint ``path`` from the data in ``data_dir`` by running its app
    in this process (never in one of several processes that a launcher started: they would all make it at once)."""
    app, args = PRETRAIN[path]
    target = Path(path)
    args = ["fit", *args, f"--data.data_dir={data_dir}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            f"--checkpoint.dirpath={target.parent}", f"--checkpoint.filename={target.stem}", "--checkpoint.save_last=false"]
    command = f"python -m {app} {' '.join(args)}"
    if int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) > 1:
        raise DataError(f"--model.backbone {path}: no such file; make it first, in one process, with `{command}`")
    print(f"[backbone] {path} is missing: making it with `{command}`", file=sys.stderr, flush=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout keeps this run's own report
            importlib.import_module(f"{app}.__main__").main(args)
    except SystemExit as err:
        raise DataError(f"making the backbone {path} failed (exit code {err.code}); run `{command}` to see why") from None


class FinetuneCLI(AppCLI):
    """AppCLI whose DataModule transforms follow ``--model.backbone``, and which makes a missing default
    backbone before ``fit``."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("model.backbone", "data.backbone")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand or "", {})
        backbone = config.get("model.backbone") if self.subcommand == "fit" else None
        dataset = config.get("data.dataset")
        if backbone == DEFAULT_BACKBONE and dataset in DATASET_BACKBONES:
            backbone = config["model.backbone"] = DATASET_BACKBONES[dataset]
            print(f"[backbone] --data.dataset={dataset}: the default backbone is {backbone}", file=sys.stderr, flush=True)
        if backbone in PRETRAIN and not Path(backbone).is_file():  # its architecture is needed even untrained
            pretrain(backbone, config["data.data_dir"])
            seed = config["seed_everything"]
            if seed is not False:
                seed_everything(seed, workers=True)  # this run draws as if the backbone had been there


def main(args: list[str] | None = None) -> None:
    run_app(
        FinetuneClassifier,
        ImageDataModule,
        cli_class=FinetuneCLI,
        name="finetune",
        config=Path(__file__).with_name("config.yaml"),
        monitor="val/loss",  # val/acc over a small val split moves in coarse steps; val/loss is steadier
        mode="min",
        links=("label_names", "input_stats"),
        args=args,
    )


if __name__ == "__main__":
    main()
