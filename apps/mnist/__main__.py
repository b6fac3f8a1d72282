"""Train LeNet-5 (widened) on handwritten digits (MNIST, or scikit-learn's digits offline) or on Fashion-MNIST.

    python -m apps.mnist fit
    python -m apps.mnist fit --data.dataset=fashion_mnist --data.data_dir=DIR     # clothes: README, "Fashion-MNIST offline"
    python -m apps.mnist test --ckpt_path runs/mnist/version_0/checkpoints/last.ckpt
    python -m apps.mnist predict --ckpt_path CKPT --data.predict_path my_digits/ --output predictions.csv
"""

from pathlib import Path

from apps.cli import run_app
from datamodules.mnist import MNISTDataModule
from models.lenet_classifier import LeNetClassifier


def main(args: list[str] | None = None) -> None:
    run_app(
        LeNetClassifier,
        MNISTDataModule,
        name="mnist",
        config=Path(__file__).with_name("config.yaml"),
        monitor="val/acc",
        links=("label_names", "image_shape"),
        args=args,
    )


if __name__ == "__main__":
    main()
