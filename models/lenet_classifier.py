"""LeNet-5 image classifier (digits, or clothes with Fashion-MNIST): ``python -m apps.mnist fit``."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchvision.utils import make_grid

from models.base import Classifier
from models.lenet import LeNet5


class LeNetClassifier(Classifier):
    """LeNet-5 trained with cross-entropy; tests report a confusion matrix and misclassified images.

    Args:
        label_names: Class names in label order; linked from the DataModule.
        image_shape: ``(channels, height, width)`` of the inputs; linked from the DataModule.
        batch_norm: Batch normalisation after every convolution and hidden dense layer.
        dropout: Dropout probability after the hidden dense layers.
        channels: Output channels of the two convolutions: wider than LeNet-5's 6 and 16, which fall
            short on clothes (docs/fashion_mnist.md).
        optimizer: Optimizer class and arguments.
        scheduler: Optional learning-rate scheduler.
        label_smoothing: Cross-entropy label smoothing.
        max_misclassified: How many misclassified test images the report grid shows.
    """

    def __init__(
        self,
        label_names: list[str],
        image_shape: tuple[int, int, int] = (1, 28, 28),
        batch_norm: bool = True,
        dropout: float = 0.1,
        channels: tuple[int, int] = (16, 32),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        max_misclassified: int = 64,
    ) -> None:
        super().__init__(label_names, optimizer, scheduler, label_smoothing)
        self.net = LeNet5(len(label_names), tuple(image_shape), batch_norm, dropout, tuple(channels))
        self.misclassified: list[torch.Tensor] = []

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.misclassified = []

    def on_test_predictions(self, batch: tuple, probs: torch.Tensor) -> None:
        images, target = batch
        wrong = probs.argmax(-1) != target
        self.misclassified.append(images[wrong][: self.hparams.max_misclassified].cpu())

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        wrong = torch.cat(self.misclassified)[: self.hparams.max_misclassified]
        if len(wrong):
            grid = make_grid(wrong, nrow=8, normalize=True, pad_value=1.0)  # (3, H, W) in [0, 1]
            self.log_image("test/misclassified", grid, f"{len(wrong)} misclassified test images")
