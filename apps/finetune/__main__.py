"""Finetune a pretrained backbone with a new head on few labels.

    python -m apps.finetune fit        # offline: LeNet pretrained on digits 0-4, finetuned on 5-9 with 10 labels each
    python -m apps.finetune fit --model.backbone=runs/pretrained/autoencoder-digits.ckpt
    python -m apps.finetune fit --model.backbone=resnet18 --data.dataset=folder --data.path=my_images/
    python -m apps.finetune test --ckpt_path runs/finetune/version_0/checkpoints/last.ckpt
    python -m apps.finetune predict --ckpt_path CKPT --data.predict_path my_images/ --output predictions.csv

The default backbone, runs/pretrained/lenet-digits-0-4.ckpt, is made by `python -m apps.mnist fit`
on digits 0-4 the first time it is missing (about half a minute on 2 CPU cores).
"""

from pathlib import Path

from apps.cli import AppCLI, run_app
from datamodules.images import ImageDataModule
from models.finetune import FinetuneClassifier


class FinetuneCLI(AppCLI):
    """AppCLI with the DataModule's transforms following ``--model.backbone``."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("model.backbone", "data.backbone")


def main(args: list[str] | None = None) -> None:
    run_app(
        FinetuneClassifier,
        ImageDataModule,
        cli_class=FinetuneCLI,
        name="finetune",
        config=Path(__file__).with_name("config.yaml"),
        monitor="val/loss",  # ~90 val images of 5-9: val/acc moves in 1% steps; see config.yaml
        mode="min",
        links=("label_names",),
        args=args,
    )


if __name__ == "__main__":
    main()
