"""Data path: the MNIST DataModule's tensor-backed batches (one index operation per batch, batched
normalisation and augmentation) against torchvision's per-sample PIL path."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from benchmarks.harness import Row, fmt_ratio, interleaved, ratio
from benchmarks.overhead import epoch_images
from datamodules.mnist import MEAN, STD, MNISTDataModule, TensorBatches, keep_batch


class PILDigits(Dataset):
    """How torchvision's MNIST serves a sample: uint8 array -> PIL image -> per-sample transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index].numpy(), mode="L")
        return self.transform(image), int(self.labels[index])


def data_path(quick: bool) -> Row:
    images, labels, what = epoch_images(quick, 2_000, 20_000)
    n, repeats, batch_size = len(images), 3 if quick else 5, 64
    dm = MNISTDataModule(dataset="digits", batch_size=batch_size)
    dm.trainer = SimpleNamespace(training=True)  # so on_after_batch_transfer augments, as in fit
    tensor_loader = DataLoader(TensorBatches(images, labels), batch_size=batch_size, shuffle=True, collate_fn=keep_batch)
    pil_transform = transforms.Compose(
        [
            # Bilinear, as the DataModule's grid_sample (RandomAffine's default is nearest-neighbour).
            transforms.RandomAffine(
                degrees=10, translate=(0.08, 0.08), scale=(0.9, 1.1), interpolation=transforms.InterpolationMode.BILINEAR
            ),
            transforms.ToTensor(),
            transforms.Normalize((MEAN,), (STD,)),
        ]
    )
    pil_loader = DataLoader(PILDigits(images, labels, pil_transform), batch_size=batch_size, shuffle=True)

    def tensor_epoch() -> None:
        for batch in tensor_loader:
            dm.on_after_batch_transfer(batch, 0)

    def pil_epoch() -> None:
        for _ in pil_loader:
            pass

    seconds = interleaved({"tensor": tensor_epoch, "pil": pil_epoch}, repeats)
    median, low, high = ratio(seconds["pil"], seconds["tensor"])
    per_second = n / min(seconds["tensor"])
    return Row(
        name=f"Data path: tensor-backed batches / torchvision per-sample PIL, same augmentation ({per_second:,.0f} images/s)",
        measured=fmt_ratio(median, low, high),
        goal=">= 10x",
        met=median >= 10,
        data=(
            f"{what}, batch {batch_size}, main-process loading; both rotate, shift and scale "
            "each image by its own random amount, interpolating bilinearly"
        ),
    )
