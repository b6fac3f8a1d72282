"""MNIST and Fashion-MNIST as uint8 tensors, with scikit-learn's handwritten digits as the offline fallback.

    python -m apps.mnist fit --data.dataset=auto|mnist|fashion_mnist|digits --data.data_dir=data

Both IDX datasets are read from torchvision's layout (``data_dir/MNIST/raw``, ``data_dir/FashionMNIST/raw``)
or downloaded there; Fashion-MNIST is also read from the folder Debian's ``dataset-fashion-mnist``
package installs. ``auto`` means digits: MNIST when it can be had, else scikit-learn's digits.

Images stay uint8 ``(N, 28, 28)`` tensors in memory; a batch is sliced out with one indexing
operation, and normalisation and augmentation run batched, on the batch's device, in
``on_after_batch_transfer``. Nothing on the training path goes through PIL (BENCHMARKS.md, row
"Data path").
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.datasets import MNIST, FashionMNIST

from datamodules.base import DataError, OfflineDataModule, check_positive, seeded_split

# The four IDX files of MNIST and of Fashion-MNIST, by split: (images, labels).
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Statistics of the MNIST training images, used for the digits of both sources so a checkpoint sees one
# scale. The models get a dataset's as the DataModule's ``input_stats``, linked by the CLI.
MEAN, STD = 0.1307, 0.3081
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class Augment:
    """Random moves of training images: rotation up to ``degrees``, shift up to ``shift`` image widths,
    zoom by up to ``scale``, and a horizontal flip of every other image on average when ``flip``."""

    degrees: float = 0.0
    shift: float = 0.0
    scale: float = 0.0
    flip: bool = False


@dataclass(frozen=True)
class IdxDataset:
    """A 28x28 dataset in MNIST's four IDX files, as torchvision keeps it under ``data_dir/<folder>/raw``."""

    title: str  # for the [data] line and errors
    folder: str  # torchvision's folder under data_dir
    download: type  # the torchvision class that downloads it
    label_names: tuple[str, ...]
    stats: tuple[float, float]  # (mean, std) of the training images' [0, 1] pixels
    augment: Augment
    system_dir: str = ""  # a folder a system package installs the .gz files in ("" for none)


DIGITS = tuple(str(digit) for digit in range(10))
# Digits are never flipped (a flipped 2 is no digit); clothes are, as a left and a right sleeve are
# alike, and they are photographed upright, so they are not rotated.
DIGIT_MOVES = Augment(degrees=10, shift=0.08, scale=0.1)
IDX_DATASETS = {
    "mnist": IdxDataset("MNIST", "MNIST", MNIST, DIGITS, (MEAN, STD), DIGIT_MOVES),
    "fashion_mnist": IdxDataset(
        "Fashion-MNIST", "FashionMNIST", FashionMNIST,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860, 0.3530), Augment(shift=0.08, flip=True),
        system_dir="/usr/share/datasets/fashion-mnist",  # Debian's dataset-fashion-mnist
    ),
}


class TensorBatches(Dataset):
    """Equal-length tensors indexed together; ``__getitems__`` slices a whole batch at once."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(t[index] for t in self.tensors)


def keep_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """collate_fn for ``TensorBatches``: the batch is already stacked."""
    return batch


def random_affine(images: torch.Tensor, degrees: float, shift: float, scale: float) -> torch.Tensor:
    """Rotate, shift and scale each image of a ``(B, C, H, W)`` batch by its own random amount."""
    b = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.empty(b, *shape, device=images.device).uniform_(low, high)

    angle = uniform(-math.radians(degrees), math.radians(degrees))
    zoom = uniform(1 - scale, 1 + scale)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid works in [-1, 1] coordinates, so a shift of `shift` image widths is 2 * shift.
    offset = uniform(-2 * shift, 2 * shift, 2)
    theta = torch.stack(
        [torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1
    )  # (B, 2, 3)
    return F.grid_sample(images, affine_grid(theta, *images.shape[2:]), align_corners=False)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, height, width), align_corners=False)``: where each output pixel
    of image b samples its input, ``theta[b] @ (x, y, 1)`` at every pixel centre, as a (B, H, W, 2) grid.

    ``F.affine_grid`` multiplies image by image (a batched product of inner size 3); here one matrix
    product takes all 2B rows of ``theta`` at once, and the grid keeps its x and y as two planes, a
    layout ``grid_sample`` reads without gathering interleaved pairs, so augmenting a batch stays cheap
    beside the training step. The grid is the same up to rounding.
    """

    def centres(n: int) -> torch.Tensor:  # pixel centres in [-1, 1] coordinates (align_corners=False)
        return (torch.arange(n, dtype=theta.dtype, device=theta.device) * 2 + 1) / n - 1

    x, y = torch.broadcast_tensors(centres(width), centres(height)[:, None])  # (H, W) each
    points = torch.stack([x, y, torch.ones_like(x)]).view(3, -1)  # (3, H*W)
    return (theta @ points).transpose(1, 2).view(-1, height, width, 2)  # (B, 2, H*W) seen as (B, H, W, 2)


def load_digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 bundled 8x8 digit scans, resized to 20x20 inside a 28x28 frame like MNIST."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    images = F.pad(images, (4, 4, 4, 4))  # (N, 1, 28, 28)
    images = images.squeeze(1).clamp(0, 1).mul(255).round().to(torch.uint8)
    return images, torch.from_numpy(digits.target).long()


def read_image(path: Path) -> np.ndarray:
    """One image file as a 28x28 uint8 array, white digit on black like MNIST."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            gray = np.array(image.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"{path}: unreadable image ({err})") from None
    # A light border means a dark digit on a light page: invert it to MNIST's polarity.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return 255 - gray if border.mean() > 127 else gray


def read_predict_inputs(path: Path) -> tuple[torch.Tensor, list[str]]:
    """Images to predict from a folder of PNG/JPEG files (sorted by name) or a ``.npy`` array."""
    if not path.exists():
        raise DataError(f"--data.predict_path {path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"--data.predict_path {path}: no .png, .jpg or .jpeg images in the folder")
        return torch.from_numpy(np.stack([read_image(f) for f in files])), [f.name for f in files]
    if path.suffix != ".npy":
        raise DataError(f"--data.predict_path {path}: expected a folder of images or a .npy array")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable .npy array ({err})") from None
    if array.ndim < 2 or array.shape[-2:] != (28, 28):
        raise DataError(f"{path}: expected images of shape (N, 28, 28), got {array.shape}")
    array = array.reshape(-1, 28, 28)
    if array.dtype != np.uint8:  # floats in [0, 1]
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return torch.from_numpy(array), [f"{path.name}[{i}]" for i in range(len(array))]


def extract(gz: Path) -> None:
    """Decompress ``gz`` beside itself under a temporary name, then rename it into place: a process that
    reads the file meanwhile finds it whole or not at all, never half written."""
    handle, partial = tempfile.mkstemp(dir=gz.parent, prefix=f".{gz.stem}.")
    try:
        with open(handle, "wb") as f:
            f.write(gzip.decompress(gz.read_bytes()))
        os.replace(partial, gz.with_suffix(""))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def parse_idx(data: bytes) -> torch.Tensor:
    """The bytes of an IDX file of unsigned bytes (magic ``0 0 8 ndim``, ``ndim`` big-endian sizes, the
    values) as a uint8 tensor of those sizes; ValueError saying what is wrong otherwise."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError("not an IDX file of unsigned bytes: wrong magic number")
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise ValueError(f"truncated: {len(data)} bytes, the header alone takes {header}")
    shape = struct.unpack(f">{data[3]}I", data[4:header])
    if len(data) != header + math.prod(shape):
        raise ValueError(f"truncated or padded: {len(data):,} bytes, its header promises {header + math.prod(shape):,}")
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy())


def read_idx_split(raw_dir: Path, split: str, title: str = "MNIST") -> tuple[torch.Tensor, torch.Tensor]:
    """One split's images ``(N, 28, 28)`` and labels ``(N,)`` from ``raw_dir``, each file as extracted or
    still gzipped (read in memory: the folder may be read-only); a corrupt file is an error, never a fallback."""
    tensors = []
    for name in MNIST_FILES[split]:
        path = raw_dir / name
        source = path if path.exists() else path.with_name(f"{name}.gz")  # only the .gz is here
        try:
            data = source.read_bytes()
            tensors.append(parse_idx(gzip.decompress(data) if source != path else data))
        except (OSError, EOFError, ValueError) as err:  # gzip raises OSError and EOFError, parse_idx ValueError
            raise DataError(f"{source}: corrupt {title} IDX file ({err or type(err).__name__})") from None
    images, labels = tensors
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{raw_dir}: {split} images {tuple(images.shape)} do not match labels {tuple(labels.shape)}")
    return images, labels.long()


def download_idx(idx: IdxDataset, data_dir: str) -> None:
    """Download both splits of ``idx`` into ``data_dir/<folder>/raw`` with torchvision."""
    for train in (True, False):
        idx.download(data_dir, train=train, download=True)


def idx_files_in(folder: Path) -> bool:
    """``folder`` holds the four IDX files, each extracted or gzipped."""
    names = [name for pair in MNIST_FILES.values() for name in pair]
    return all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in names)


def keep_classes(images: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of ``classes``, labelled by their position in ``classes``."""
    if not set(classes) <= set(range(10)) or len(set(classes)) < 2:
        raise DataError(f"--data.classes {classes}: name at least two different classes 0-9")
    match = labels.unsqueeze(1) == torch.tensor(classes)  # (N, k)
    keep = match.any(1)
    return images[keep], match[keep].long().argmax(1)


def label_budget(images: torch.Tensor, labels: torch.Tensor, n: int, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of each class (``names`` in label order); the split is already shuffled by the seed."""
    picked = []
    for label, name in enumerate(names):
        rows = (labels == label).nonzero().squeeze(1)
        if len(rows) < n:
            raise DataError(f"--data.labels_per_class {n}: the training split has only {len(rows)} images of class {name}")
        picked.append(rows[:n])
    keep = torch.cat(picked).sort().values
    return images[keep], labels[keep]


class DigitsDataModule(OfflineDataModule):
    """The 28x28 images that ``MNISTDataModule`` and ``ImageDataModule`` share: MNIST when it can be had,
    else scikit-learn's digits, or Fashion-MNIST when asked for; a class subset and a label budget; uint8
    batches made into normalised ``(B, 1, 28, 28)`` floats on the batch's device, moved at random when
    training (``IdxDataset.augment``, the flip overridable). A subclass's ``__init__`` takes ``dataset``,
    ``data_dir``, ``val_fraction``, ``test_fraction``, ``batch_size``, ``augment``, ``flip``,
    ``num_workers``, ``seed``, ``classes``, ``labels_per_class`` and ``predict_path`` (see ``MNISTDataModule``).
    """

    download_name, download_url, fallback_name = "mnist", MNIST.mirrors[0], "digits"
    collate_fn = staticmethod(keep_batch)
    image_shape = (1, 28, 28)

    @property
    def idx(self) -> IdxDataset:
        """The IDX dataset asked for, or MNIST's settings for the digits (``auto`` and ``digits``)."""
        return IDX_DATASETS.get(self.hparams.dataset, IDX_DATASETS["mnist"])

    @property
    def label_names(self) -> list[str]:
        names = self.idx.label_names
        return [names[c] for c in self.hparams.classes] if self.hparams.classes is not None else list(names)

    @property
    def input_stats(self) -> tuple[float, float]:
        """``(mean, std)`` of the normalisation: the model sees ``(pixel / 255 - mean) / std``."""
        return self.idx.stats

    @property
    def raw_dir(self) -> Path:
        """Where the IDX files of the dataset asked for are kept and downloaded to (torchvision's layout)."""
        return Path(self.hparams.data_dir) / self.idx.folder / "raw"

    def idx_dir(self) -> Path | None:
        """The folder to read the IDX dataset from: ``raw_dir``, else the system package's folder; None if neither has it."""
        folders = [self.raw_dir, *([Path(self.idx.system_dir)] if self.idx.system_dir else [])]
        return next((folder for folder in folders if idx_files_in(folder)), None)

    def present(self) -> bool:
        """Every MNIST file is in ``raw_dir``, extracted or still gzipped."""
        return idx_files_in(Path(self.hparams.data_dir) / IDX_DATASETS[self.download_name].folder / "raw")

    def prepare_data(self) -> None:
        """Download MNIST, or Fashion-MNIST, if it may be used and is not here, and decompress the ``.gz``
        files in ``data_dir``, once per node (Lightning calls this on each node's first process while the
        others wait); a file that fails to decompress is left for ``setup`` to report on every rank."""
        super().prepare_data()
        dataset = self.hparams.dataset
        if dataset == "fashion_mnist" and self.idx_dir() is None:
            self.fetch_idx()
        if dataset not in ("auto", *IDX_DATASETS):
            return
        for name in (name for pair in MNIST_FILES.values() for name in pair):
            path = self.raw_dir / name
            if not path.exists() and path.with_name(f"{name}.gz").exists():
                with contextlib.suppress(Exception):
                    extract(path.with_name(f"{name}.gz"))

    def fetch_idx(self) -> None:
        """Download the IDX dataset asked for by name (not MNIST: the base does) into ``data_dir``, failing fast."""
        idx = self.idx
        self.try_download(idx.download.mirrors[0], lambda: download_idx(idx, self.hparams.data_dir))
        if self.idx_dir() is None:
            raise DataError(self.unavailable())

    def download(self) -> None:
        download_idx(IDX_DATASETS["mnist"], self.hparams.data_dir)

    def missing(self) -> str:
        where = f"{self.raw_dir} nor in {self.idx.system_dir}" if self.idx.system_dir else str(self.raw_dir)
        return f"{self.idx.title} is not in {where}"

    def unavailable(self) -> str:
        why = super().unavailable()
        if self.hparams.dataset != "fashion_mnist":
            return why
        return (f"{why}. Offline, Debian's package has it: `sudo apt-get install dataset-fashion-mnist`, or without root "
                f"`apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb pkg && mkdir -p {self.raw_dir} "
                f"&& cp pkg{self.idx.system_dir}/*.gz {self.raw_dir}/`")

    def describe(self, name: str) -> str:
        if name in IDX_DATASETS:
            return f"{IDX_DATASETS[name].title} files found in {self.idx_dir()}"
        return "scikit-learn's 8x8 digits scaled into a 28x28 frame like MNIST's"

    def load(self, name: str) -> None:
        h = self.hparams
        if name in IDX_DATASETS:
            folder = self.idx_dir()
            if folder is None:  # asked for by name, and gone since prepare_data
                raise DataError(self.unavailable())
            title = IDX_DATASETS[name].title
            (train_x, train_y), test = read_idx_split(folder, "train", title), read_idx_split(folder, "test", title)
            val_idx, train_idx = seeded_split(len(train_x), [h.val_fraction], h.seed)
        else:
            train_x, train_y = load_digits_28()
            test_idx, val_idx, train_idx = seeded_split(len(train_x), [h.test_fraction, h.val_fraction], h.seed)
            test = (train_x[test_idx], train_y[test_idx])
        splits = {
            "train": (train_x[train_idx], train_y[train_idx]),
            "val": (train_x[val_idx], train_y[val_idx]),
            "test": test,
        }
        if h.classes is not None:
            splits = {split: keep_classes(*pair, h.classes) for split, pair in splits.items()}
        if h.labels_per_class is not None:
            splits["train"] = label_budget(*splits["train"], h.labels_per_class, self.label_names)
        self.splits = {split: TensorBatches(*pair) for split, pair in splits.items()}

    def load_predict(self) -> list[str]:
        if self.hparams.predict_path is None:
            raise DataError("predict needs --data.predict_path: a folder of PNG/JPEG images or a .npy array")
        images, names = read_predict_inputs(Path(self.hparams.predict_path))
        self.splits["predict"] = TensorBatches(images)
        return names

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 28, 28)`` -> float ``(B, 1, 28, 28)`` in [0, 1], randomly moved when training with ``augment``."""
        images = images.unsqueeze(1).float().div_(255)
        if self.hparams.augment and self.trainer is not None and self.trainer.training:
            moves = self.idx.augment
            if moves.degrees or moves.shift or moves.scale:
                images = random_affine(images, moves.degrees, moves.shift, moves.scale)
            if moves.flip if self.hparams.flip is None else self.hparams.flip:
                flipped = torch.rand(len(images), 1, 1, 1, device=images.device) < 0.5
                images = torch.where(flipped, images.flip(-1), images)
        return images

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, ...], dataloader_idx: int) -> tuple[torch.Tensor, ...]:
        images, *rest = batch
        mean, std = self.input_stats
        return ((self.pixels(images) - mean) / std, *rest)


class MNISTDataModule(DigitsDataModule):
    """28x28 grey images for classification: handwritten digits, real MNIST when it can be had, or clothes.

    Args:
        dataset: ``mnist`` (torchvision's MNIST files in ``data_dir``, downloaded if missing),
            ``digits`` (scikit-learn's bundled scans), ``auto`` (MNIST if present or downloadable,
            else digits) or ``fashion_mnist`` (Zalando's clothes photos: ``data_dir/FashionMNIST/raw``,
            else Debian's ``dataset-fashion-mnist`` folder, else downloaded).
        data_dir: Folder holding ``MNIST/raw`` and ``FashionMNIST/raw``; downloads go there.
        val_fraction: Share of the training images held out for validation.
        test_fraction: Share of the digits held out for testing (MNIST and Fashion-MNIST have their own test set).
        batch_size: Images per batch.
        augment: Random moves of training batches, chosen per dataset: digits are rotated, shifted
            and zoomed; clothes shifted and flipped left-right.
        flip: Flip training images left-right at random; null: per dataset (clothes yes, digits never).
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: Seed of the train/val/test split and of the labelled subset.
        classes: Keep only these classes, relabelled 0..k-1 in this order (``label_names`` are their names).
        labels_per_class: Keep only this many training images of each class (a label budget);
            validation and test sets stay whole.
        predict_path: Folder of PNG/JPEG images or a ``.npy`` array of 28x28 images, for ``predict``.
    """

    def __init__(
        self,
        dataset: Literal["auto", "mnist", "digits", "fashion_mnist"] = "auto",
        data_dir: str = "data",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        augment: bool = True,
        flip: bool | None = None,
        num_workers: int = 0,
        seed: int = 0,
        classes: list[int] | None = None,
        labels_per_class: int | None = None,
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_positive(self, "batch_size")
