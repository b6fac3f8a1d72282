"""Train a convolutional autoencoder on handwritten digits (MNIST, or scikit-learn's digits offline).

    python -m apps.autoencoder fit
    python -m apps.autoencoder fit --data.dataset=fashion_mnist --data.data_dir=DIR   # clothes, 60,000 images
    python -m apps.autoencoder fit --model.noise_std=0.3      # denoising: noisy input, clean target
    python -m apps.autoencoder test --ckpt_path runs/autoencoder/version_0/checkpoints/last.ckpt
    python -m apps.autoencoder predict --ckpt_path CKPT --data.predict_path my_digits/ --output codes.jsonl
"""

from pathlib import Path

from apps.cli import run_app
from datamodules.mnist import MNISTDataModule
from models.autoencoder_module import AutoencoderModule


def main(args: list[str] | None = None) -> None:
    run_app(
        AutoencoderModule,
        MNISTDataModule,
        name="autoencoder",
        config=Path(__file__).with_name("config.yaml"),
        monitor="val/mse",
        mode="min",
        links=("image_shape", "input_stats"),
        args=args,
    )


if __name__ == "__main__":
    main()
