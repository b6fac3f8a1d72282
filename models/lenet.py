"""LeNet-5 (LeCun et al. 1998), the net of ``python -m apps.mnist``. Plain PyTorch, no Lightning."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """conv(6, 5x5) - pool - conv(16, 5x5) - pool - fc120 - fc84 - fc(num_classes).

    ReLU and max-pooling replace the paper's scaled tanh and subsampling layers, as in most modern
    re-implementations. The first convolution pads by 2 so a 28x28 MNIST digit gets the 32x32 input
    the paper used. ``channels`` widens the two convolutions (the paper's 6 and 16 by default).
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        batch_norm: bool = False,
        dropout: float = 0.0,
        channels: tuple[int, int] = (6, 16),
    ) -> None:
        super().__init__()
        c1, c2 = channels

        def conv(c_in: int, c_out: int, padding: int) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
            return [nn.Conv2d(c_in, c_out, 5, padding=padding), *norm, nn.ReLU(), nn.MaxPool2d(2)]

        def dense(n_in: int, n_out: int) -> list[nn.Module]:
            norm = [nn.BatchNorm1d(n_out)] if batch_norm else []
            return [nn.Linear(n_in, n_out), *norm, nn.ReLU(), nn.Dropout(dropout)]

        self.features = nn.Sequential(*conv(image_shape[0], c1, padding=2), *conv(c1, c2, padding=0))
        with torch.no_grad():  # c2 x 5 x 5 for 28x28 inputs
            n_features = self.features(torch.zeros(1, *image_shape)).numel()
        self.classifier = nn.Sequential(
            *dense(n_features, 120), *dense(120, 84), nn.Linear(84, num_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.features(images).flatten(1))
