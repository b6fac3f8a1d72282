"""Convolutional autoencoder, the net of ``python -m apps.autoencoder``. Plain PyTorch, no Lightning."""

from __future__ import annotations

import torch
from torch import nn


def halved(size: int, times: int) -> list[int]:
    """Spatial sizes after each of ``times`` stride-2 convolutions (kernel 3, padding 1): 28 -> 14 -> 7."""
    sizes = [size]
    for _ in range(times):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class ConvEncoder(nn.Module):
    """conv(c, stride 2) - conv(2c, stride 2) - linear(latent_size): images to latent codes.

    The stride-2 convolutions replace pooling, so the decoder can mirror them with transposed
    convolutions.
    """

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), latent_size: int = 16, channels: int = 32) -> None:
        super().__init__()
        c, h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2, padding=1),  # (B, c, 14, 14) for 28x28 inputs
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),  # (B, 2c, 7, 7)
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
        )
        n_features = 2 * channels * halved(h, 2)[-1] * halved(w, 2)[-1]
        self.to_latent = nn.Linear(n_features, latent_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, latent_size) codes."""
        return self.to_latent(self.features(images).flatten(1))


class ConvDecoder(nn.Module):
    """The encoder mirrored: linear - transposed conv(c, stride 2) - transposed conv(C, stride 2).

    Returns logits; ``sigmoid`` of them are pixels in [0, 1].
    """

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), latent_size: int = 16, channels: int = 32) -> None:
        super().__init__()
        c, h, w = image_shape
        hs, ws = halved(h, 2), halved(w, 2)  # [28, 14, 7]
        self.feature_shape = (2 * channels, hs[-1], ws[-1])
        self.from_latent = nn.Sequential(nn.Linear(latent_size, 2 * channels * hs[-1] * ws[-1]), nn.ReLU())

        def up(c_in: int, c_out: int, step: int) -> nn.ConvTranspose2d:
            # output_padding restores the size a stride-2 convolution rounded down (7 -> 14, not 13).
            pad = (hs[step - 1] - 2 * hs[step] + 1, ws[step - 1] - 2 * ws[step] + 1)
            return nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad)

        self.features = nn.Sequential(
            up(2 * channels, channels, 2),  # (B, c, 14, 14)
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            up(channels, c, 1),  # (B, C, 28, 28)
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, latent_size) codes -> (B, C, H, W) pixel logits."""
        return self.features(self.from_latent(latent).unflatten(1, self.feature_shape))


class ConvAutoencoder(nn.Module):
    """``ConvEncoder`` to a ``latent_size`` vector and ``ConvDecoder`` back to the image."""

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), latent_size: int = 16, channels: int = 32) -> None:
        super().__init__()
        self.encoder = ConvEncoder(image_shape, latent_size, channels)
        self.decoder = ConvDecoder(image_shape, latent_size, channels)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) images -> (B, latent_size) codes and (B, C, H, W) reconstruction logits."""
        latent = self.encoder(images)
        return latent, self.decoder(latent)
