"""Convolutional autoencoder on digits: ``python -m apps.autoencoder fit``.

The DataModule hands out pixels normalised as ``(pixel - mean) / std`` (its ``input_stats``, linked
to this module's); an autoencoder reconstructs pixels, so this module maps them back to [0, 1] first
and every loss and metric is on [0, 1] pixels.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from matplotlib.figure import Figure
from torchmetrics import MeanMetric, MeanSquaredError
from torchvision.utils import make_grid

from models.autoencoder import ConvAutoencoder
from models.base import TrainingModule, stage_metrics


class AutoencoderModule(TrainingModule):
    """Trains ``ConvAutoencoder`` to reconstruct images, or denoise them with ``noise_std > 0``.

    Args:
        image_shape: ``(channels, height, width)`` of the inputs; linked from the DataModule.
        input_stats: ``(mean, std)`` the DataModule normalised pixels with; linked from the DataModule.
        latent_size: Length of the latent vector each image is encoded to.
        channels: Channels of the first convolution (the second has twice as many).
        loss: ``mse`` (mean squared error of the pixels) or ``bce`` (binary cross-entropy per pixel).
        noise_std: Standard deviation of Gaussian noise added to the input (on [0, 1] pixels); the
            target stays the clean image. 0 trains a plain autoencoder.
        optimizer: Optimizer class and arguments.
        scheduler: Optional learning-rate scheduler; ``ReduceLROnPlateau`` watches ``val/loss``.
        grid_images: How many test images the reconstruction grid shows.
        latent_points: How many test images the latent-space picture shows at most.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        input_stats: tuple[float, float] = (0.0, 1.0),
        latent_size: int = 16,
        channels: int = 32,
        loss: Literal["mse", "bce"] = "mse",
        noise_std: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        grid_images: int = 16,
        latent_points: int = 2000,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.net = ConvAutoencoder(tuple(image_shape), latent_size, channels)
        # Per-pixel metrics, summed over all pixels of the epoch.
        self.metrics = stage_metrics({"mse": MeanSquaredError(), "bce": MeanMetric()})
        self.shown: dict[str, torch.Tensor] = {}
        self.latents: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.reconstructions: list[torch.Tensor] = []

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the DataModule's normalisation: ``(B, C, H, W)`` -> the same pixels in [0, 1]."""
        mean, std = self.hparams.input_stats
        return images * std + mean

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) pixels in [0, 1] -> (B, latent_size) codes and (B, C, H, W) reconstructed pixels."""
        latent, logits = self.net(images)
        return latent, logits.sigmoid()

    def add_noise(self, images: torch.Tensor, stage: str, batch_idx: int) -> torch.Tensor:
        """The denoising input. Validation and test noise is seeded by each image's own pixels, so a
        checkpoint scores the same in ``fit`` and in ``test``, whatever the batches and however many DDP
        ranks share the images."""
        if not self.hparams.noise_std:
            return images
        if stage == "train":
            noise = torch.randn(images.shape, device=images.device, dtype=images.dtype)
        else:
            pixels = images.mul(255).round().to(torch.uint8).cpu().numpy()
            noise = torch.stack([
                torch.randn(image.shape, generator=torch.Generator().manual_seed(zlib.crc32(image.tobytes())))
                for image in pixels
            ]).to(images.device, images.dtype)
        return images + self.hparams.noise_std * noise

    def _step(self, batch: tuple, batch_idx: int, stage: str) -> dict[str, torch.Tensor]:
        clean = self.pixels(batch[0])  # (B, C, H, W) in [0, 1]
        noisy = self.add_noise(clean, stage, batch_idx)
        latent, logits = self.net(noisy)
        recon = logits.sigmoid()
        bce = F.binary_cross_entropy_with_logits(logits, clean)
        loss = bce if self.hparams.loss == "bce" else F.mse_loss(recon, clean)
        self.log_loss(stage, loss, batch_size=len(clean))
        metrics = self.metrics[f"{stage}_metrics"]
        metrics["mse"].update(recon, clean)
        metrics["bce"].update(bce, weight=clean.numel())  # weighted by pixels: an exact per-pixel mean
        return {"loss": loss, "latent": latent, "noisy": noisy, "recon": recon, "clean": clean}

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        return self._step(batch, batch_idx, "train")["loss"]

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self._step(batch, batch_idx, "val")

    def on_test_epoch_start(self) -> None:
        self.shown, self.latents = {}, []

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        out = self._step(batch, batch_idx, "test")
        if not self.shown:  # the first test images, for the reconstruction grid
            n = self.hparams.grid_images
            self.shown = {key: out[key][:n].detach().cpu() for key in ("clean", "noisy", "recon")}
        if sum(len(z) for z, _ in self.latents) < self.hparams.latent_points:
            self.latents.append((out["latent"].detach().cpu(), batch[1].cpu()))

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        rows = ["clean", "noisy", "recon"] if self.hparams.noise_std else ["clean", "recon"]
        images = torch.cat([self.shown[row].clamp(0, 1) for row in rows])  # (rows * n, C, H, W)
        grid = make_grid(images, nrow=len(self.shown["clean"]), pad_value=1.0)  # (3, H, W) in [0, 1]
        caption = "rows: " + ", ".join({"clean": "test images", "noisy": "noisy inputs", "recon": "reconstructions"}[r] for r in rows)
        self.log_image("test/reconstructions", grid, caption)
        latent = torch.cat([z for z, _ in self.latents])[: self.hparams.latent_points]
        labels = torch.cat([y for _, y in self.latents])[: self.hparams.latent_points]
        self.log_image("test/latent_space", self.latent_figure(latent, labels), "test codes, first two principal components")

    def latent_figure(self, latent: torch.Tensor, labels: torch.Tensor) -> Figure:
        """Scatter of the ``(N, latent_size)`` codes on their first two principal components, coloured by label."""
        centred = latent - latent.mean(0)
        _, _, v = torch.pca_lowrank(centred, q=2, center=False)  # v: (latent_size, 2)
        xy = (centred @ v).numpy()  # (N, 2)
        names = getattr(self.trainer.datamodule, "label_names", None) or [str(i) for i in range(int(labels.max()) + 1)]
        figure = Figure(figsize=(6, 5), layout="constrained")
        ax = figure.add_subplot()
        for label in labels.unique().tolist():
            rows = (labels == label).numpy()
            ax.scatter(xy[rows, 0], xy[rows, 1], s=6, alpha=0.7, label=names[label], color=f"C{label % 10}")
        ax.legend(markerscale=3, fontsize=8, loc="best")
        ax.set(title=f"latent space ({len(xy)} test images, {latent.shape[1]}-d codes)", xlabel="PC 1", ylabel="PC 2")
        return figure

    def on_predict_epoch_start(self) -> None:
        self.reconstructions = []

    def predict_step(self, batch: tuple, batch_idx: int) -> list[dict[str, Any]]:
        """One record per image: its latent code and reconstruction error (no noise is added)."""
        clean = self.pixels(batch[0])
        latent, recon = self(clean)
        self.reconstructions.append(recon.squeeze(1).mul(255).round().byte().cpu())  # (B, H, W) uint8
        mse = (recon - clean).pow(2).flatten(1).mean(1)
        return [{"latent": [round(v, 5) for v in z], "mse": e} for z, e in zip(latent.tolist(), mse.tolist())]

    def on_predict_epoch_end(self) -> None:
        """Save the reconstructions as ``<output>.reconstructions.npy``, ``(N, H, W)`` uint8 in input order:
        the format ``--data.predict_path`` reads, so they can be fed back in. Runs after the writer
        has written the records, so a failed run leaves neither file."""
        for callback in self.trainer.callbacks:
            output = getattr(callback, "path", None)
            if isinstance(callback, BasePredictionWriter) and isinstance(output, Path):
                path = output.with_suffix(".reconstructions.npy")
                np.save(path, torch.cat(self.reconstructions).numpy())
                print(f"wrote {sum(len(r) for r in self.reconstructions)} reconstructions to {path}")
