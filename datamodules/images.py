"""Images for finetuning: the 28x28 images of the MNIST DataModule, or a folder with one sub-folder per class.

    python -m apps.finetune fit --data.dataset=digits --data.classes=[5,6,7,8,9] --data.labels_per_class=10
    python -m apps.finetune fit --data.dataset=fashion_mnist --data.data_dir=DIR
    python -m apps.finetune fit --model.backbone=resnet18 --data.dataset=folder --data.path=my_images/

Inputs follow the backbone (``--model.backbone``, linked to ``backbone`` here): images become [0, 1]
pixels first, then a torchvision backbone gets its weight enum's own transforms
(``weights.transforms()``: resize, crop, ImageNet normalisation) and this project's 28x28 backbones
get grey 28x28 digits normalised like MNIST. ``input_stats`` is the (mean, std) the
model's inputs are normalised with.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch.utils.data import Dataset

from datamodules.base import DataError, check_positive, seeded_split
from datamodules.mnist import IMAGE_SUFFIXES, MEAN, STD, DigitsDataModule, read_image


def torchvision_backbones() -> list[str]:
    """Names of torchvision's classification models, the ones ``--model.backbone`` accepts by name."""
    return torchvision.models.list_models(module=torchvision.models)


def backbone_transform(backbone: str) -> Callable[[Path], torch.Tensor]:
    """Image file -> the input tensor ``backbone`` expects: ``(3, 224, 224)`` for resnet18, ``(1, 28, 28)`` for ours."""
    if backbone in torchvision_backbones():
        transform = torchvision.models.get_model_weights(backbone).DEFAULT.transforms()

        def load(path: Path) -> torch.Tensor:
            from PIL import Image

            with Image.open(path) as image:
                return transform(image.convert("RGB"))

        return load

    def load_digit(path: Path) -> torch.Tensor:
        digit = torch.from_numpy(read_image(path)).float().div(255)  # (28, 28) in [0, 1], white on black like MNIST
        return ((digit - MEAN) / STD).unsqueeze(0)

    return load_digit


def image_folder(path: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of a folder with one sub-folder of PNG/JPEG images per class."""
    if not path.is_dir():
        raise DataError(f"--data.path {path}: no such folder")
    names, files, labels = [], [], []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            files += images
            labels += [len(names)] * len(images)
            names.append(folder.name)
    if len(names) < 2:
        found = f"only {names[0]!r}" if names else "none"
        raise DataError(f"--data.path {path}: needs at least two sub-folders of .png/.jpg images, one per class; found {found}")
    return files, labels, names


def check_readable(files: list[Path]) -> None:
    """Decode every image once, so a broken file stops the run at the start, by name."""
    from PIL import Image

    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
        except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
            raise DataError(f"{file}: unreadable image ({err})") from None


class ImageFiles(Dataset):
    """Image files, each read and transformed on its own (they may differ in size), with their labels.
    ``__getitems__`` stacks a batch, so it takes the same collate as the digits' ``TensorBatches``."""

    def __init__(self, files: list[Path], labels: list[int] | None, load: Callable[[Path], torch.Tensor]) -> None:
        self.files, self.labels, self.load = files, labels, load

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        images = torch.stack([self.load(self.files[i]) for i in indices])  # (B, C, H, W)
        return (images,) if self.labels is None else (images, torch.tensor([self.labels[i] for i in indices]))


class ImageDataModule(DigitsDataModule):
    """The images of ``MNISTDataModule`` (class subset, label budget) or an image folder, shaped for the backbone.

    Args:
        dataset: ``folder`` (the images under ``path``), or as in the MNIST DataModule: ``mnist``,
            ``digits``, ``auto`` or ``fashion_mnist``.
        path: For ``folder``: a folder with one sub-folder of PNG/JPEG images per class (at least two).
        backbone: The model's backbone, linked from ``--model.backbone``; picks the transforms.
        data_dir: Folder holding ``MNIST/raw`` and ``FashionMNIST/raw``; downloads go there.
        val_fraction: Share of the training images (all images for a folder) held out for validation.
        test_fraction: Share of the digits (all images for a folder) held out for testing.
        batch_size: Images per batch.
        augment: Random moves of training images, per dataset as in the MNIST DataModule (folder images
            are not augmented).
        flip: Flip training images left-right at random; null: per dataset (clothes yes, digits never).
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: Seed of the train/val/test split and of the labelled subset.
        classes: Not for folders (their classes are the sub-folders): keep these classes, relabelled 0..k-1.
        labels_per_class: Not for folders: keep this many training images of each class (a label budget).
        predict_path: For ``predict``: a folder of images (or, for digits, a ``.npy`` array of 28x28 images).
    """

    def __init__(
        self,
        dataset: Literal["auto", "mnist", "digits", "fashion_mnist", "folder"] = "auto",
        path: str | None = None,
        backbone: str = "",
        data_dir: str = "data",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 10,
        augment: bool = True,
        flip: bool | None = None,
        num_workers: int = 0,
        seed: int = 0,
        classes: list[int] | None = [5, 6, 7, 8, 9],  # noqa: B006 - read, never mutated
        labels_per_class: int | None = 10,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_positive(self, "batch_size")

    @property
    def folder(self) -> bool:
        return self.hparams.dataset == "folder"

    @property
    def torchvision(self) -> bool:
        return self.hparams.backbone in torchvision_backbones()

    def transforms(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The torchvision backbone's weights' own transforms: resize, crop, ImageNet normalisation."""
        return torchvision.models.get_model_weights(self.hparams.backbone).DEFAULT.transforms()

    @cached_property
    def scanned(self) -> tuple[list[Path], list[int], list[str]]:
        if self.hparams.path is None:
            raise DataError("--data.dataset=folder needs --data.path: a folder with one sub-folder of images per class")
        return image_folder(Path(self.hparams.path))

    @property
    def label_names(self) -> list[str]:
        return self.scanned[2] if self.folder else super().label_names

    @property
    def image_shape(self) -> tuple[int, int, int]:  # type: ignore[override] - the parent's is a constant
        if self.torchvision:
            crop = self.transforms().crop_size
            return (3, crop[0], crop[0])
        return DigitsDataModule.image_shape

    @property
    def input_stats(self) -> tuple[float, float]:
        """``(mean, std)`` the model's inputs are normalised with: the dataset's for this project's 28x28
        backbones (MNIST's for a folder); ``(0, 1)`` for a torchvision backbone, whose weights' transforms normalise."""
        return (0.0, 1.0) if self.torchvision else (MEAN, STD) if self.folder else super().input_stats

    def choose_source(self) -> tuple[str, str]:
        if not self.folder:
            return super().choose_source()
        files, _, names = self.scanned
        check_readable(files)
        return "folder", f"{len(files)} images of {len(names)} classes in {self.hparams.path}"

    def load(self, name: str) -> None:
        if name != "folder":
            super().load(name)
            return
        files, labels, _ = self.scanned
        h, load = self.hparams, backbone_transform(self.hparams.backbone)
        splits = dict(zip(("test", "val", "train"), seeded_split(len(files), [h.test_fraction, h.val_fraction], h.seed)))
        for split, rows in splits.items():
            if len(rows) == 0:
                raise DataError(f"--data.path {h.path}: {len(files)} images leave the {split} split empty")
        self.splits = {
            split: ImageFiles([files[i] for i in rows.tolist()], [labels[i] for i in rows.tolist()], load)
            for split, rows in splits.items()
        }

    def load_predict(self) -> list[str]:
        if not (self.folder or self.torchvision):
            return super().load_predict()
        path = Path(self.hparams.predict_path or "")
        if self.hparams.predict_path is None or not path.is_dir():
            raise DataError(f"--data.predict_path {self.hparams.predict_path}: for this backbone, name a folder of images")
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"--data.predict_path {path}: no .png, .jpg or .jpeg images in the folder")
        check_readable(files)
        self.splits["predict"] = ImageFiles(files, None, backbone_transform(self.hparams.backbone))
        return [f.name for f in files]

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, ...], dataloader_idx: int) -> tuple[torch.Tensor, ...]:
        """Image files arrive transformed for the backbone; uint8 digits become [0, 1] pixels and then
        take MNIST's normalisation, or for a torchvision backbone its weights' transforms."""
        images, *rest = batch
        if images.dtype != torch.uint8:  # from ImageFiles
            return batch
        if self.torchvision:
            return (self.transforms()(self.pixels(images).expand(-1, 3, -1, -1)), *rest)  # (B, 3, 224, 224) for resnet18
        return super().on_after_batch_transfer(batch, dataloader_idx)
