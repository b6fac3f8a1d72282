import socket
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from conftest import write_mnist
from datamodules.images import ImageDataModule
from datamodules.mnist import MEAN, STD, MNISTDataModule, affine_grid, random_affine, read_predict_inputs
from datamodules.base import DataError, network_timeout, reachable


def prepared(**kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_mnist_files_load_as_uint8_splits(tmp_path: Path, capsys) -> None:
    write_mnist(tmp_path, n_train=60, n_test=20)
    dm = prepared(dataset="mnist", data_dir=str(tmp_path), val_fraction=0.25)
    train_x, train_y = dm.splits["train"].tensors
    assert train_x.dtype == torch.uint8 and train_x.shape == (45, 28, 28)
    assert len(dm.splits["val"]) == 15 and len(dm.splits["test"]) == 20
    assert set(train_y.tolist()) <= set(range(10))
    assert "[data] using mnist" in capsys.readouterr().err


def test_gzipped_mnist_files_are_extracted_without_network(tmp_path: Path) -> None:
    write_mnist(tmp_path, compress=True)
    dm = prepared(dataset="auto", data_dir=str(tmp_path))
    assert dm.hparams.dataset == "mnist"
    assert len(dm.splits["test"]) == 20


def test_gz_files_are_extracted_in_prepare_data_whole_and_in_place(tmp_path: Path, monkeypatch) -> None:
    """prepare_data (once per node) extracts every .gz under a temporary name and renames it, so the
    other ranks' setup finds each file whole; setup then writes nothing."""
    import os

    write_mnist(tmp_path, compress=True)
    raw = tmp_path / "MNIST" / "raw"
    dm = MNISTDataModule(dataset="mnist", data_dir=str(tmp_path))
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append((Path(src).parent, Path(dst))), real_replace(src, dst))[1])
    dm.prepare_data()
    assert sorted(dst.name for _, dst in renamed) == sorted(p.stem for p in raw.glob("*.gz"))
    assert all(parent == raw for parent, _ in renamed) and sorted(p.name for p in raw.iterdir() if p.name.startswith("."))  == []
    renamed.clear()
    dm.setup("fit")
    assert renamed == [] and len(dm.splits["test"]) == 20


def test_a_gz_that_fails_to_extract_is_reported_by_setup(tmp_path: Path) -> None:
    """prepare_data runs on one rank while the others wait: it leaves the error to setup, on every rank."""
    write_mnist(tmp_path, compress=True)
    bad = tmp_path / "MNIST/raw/train-images-idx3-ubyte.gz"
    bad.write_bytes(b"not gzip data " * 10)
    dm = MNISTDataModule(dataset="mnist", data_dir=str(tmp_path))
    dm.prepare_data()
    assert not bad.with_suffix("").exists() and not [p for p in bad.parent.iterdir() if p.name.startswith(".")]
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: corrupt MNIST IDX file"):
        dm.setup("fit")


def test_auto_falls_back_to_digits_and_says_why(tmp_path: Path, capsys) -> None:
    started = time.monotonic()
    dm = prepared(dataset="auto", data_dir=str(tmp_path))
    assert time.monotonic() - started < 30
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[data]")]
    assert len(lines) == 1
    assert "using digits" in lines[0] and "network disabled in tests" in lines[0]
    assert dm.hparams.dataset == "digits"  # what the checkpoint will record


def test_explicit_mnist_never_falls_back(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MNIST is not in .*MNIST/raw"):
        prepared(dataset="mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize("dataset", ["auto", "mnist"])
def test_corrupt_mnist_is_an_error_not_a_fallback(tmp_path: Path, dataset: str) -> None:
    write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match="train-images-idx3-ubyte: corrupt MNIST IDX file"):
        prepared(dataset=dataset, data_dir=str(tmp_path))


def test_digits_split_is_seeded_and_disjoint() -> None:
    def split(seed: int) -> dict[str, torch.Tensor]:
        dm = prepared(dataset="digits", seed=seed, test_fraction=0.2, val_fraction=0.1)
        return {name: ds.tensors[0] for name, ds in dm.splits.items()}

    a, b, c = split(0), split(0), split(1)
    assert {k: len(v) for k, v in a.items()} == {"train": 1258, "val": 180, "test": 359}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["test"], c["test"])
    rows = {name: {x.numpy().tobytes() for x in images} for name, images in a.items()}
    assert not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


def test_digits_look_like_mnist() -> None:
    images, _ = prepared(dataset="digits").splits["test"].tensors
    assert images.shape[1:] == (28, 28) and images.dtype == torch.uint8
    assert images[:, :4].max() == 0 and images[:, :, -4:].max() == 0  # MNIST-style empty frame
    assert images.max() >= 250  # ink reaches full white


def test_batches_are_sliced_normalised_and_augmented_only_in_training() -> None:
    dm = prepared(dataset="digits", batch_size=32)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 28, 28) and images.dtype == torch.uint8 and labels.shape == (32,)
    dm.trainer = SimpleNamespace(training=False)
    plain, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert plain.shape == (32, 1, 28, 28) and plain.dtype == torch.float32
    assert abs(plain.min().item() - (0 - 0.1307) / 0.3081) < 1e-4
    again, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(plain, again)
    dm.trainer = SimpleNamespace(training=True)
    augmented, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert not torch.allclose(augmented, plain)


@pytest.mark.parametrize("batch, height, width", [(6, 28, 28), (3, 5, 7)])
def test_affine_grid_is_torchs(batch: int, height: int, width: int) -> None:
    theta = torch.randn(batch, 2, 3, generator=torch.Generator().manual_seed(0))
    expected = F.affine_grid(theta, [batch, 1, height, width], align_corners=False)
    assert torch.allclose(affine_grid(theta, height, width), expected, atol=1e-6)


def test_random_affine_without_range_is_identity() -> None:
    images = torch.rand(5, 1, 28, 28)
    assert torch.allclose(random_affine(images, degrees=0, shift=0, scale=0), images, atol=1e-5)


def test_predict_folder_is_read_in_name_order_and_light_pages_inverted(tmp_path: Path) -> None:
    dark_on_light = np.full((40, 40), 255, np.uint8)
    dark_on_light[10:30, 18:22] = 0
    Image.fromarray(dark_on_light).save(tmp_path / "b.png")
    Image.fromarray(255 - dark_on_light).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    images, names = read_predict_inputs(tmp_path)
    assert names == ["a.jpg", "b.png"]
    assert images.shape == (2, 28, 28)
    assert images[1, 0, 0] < 10 and images[1, 14, 14] > 200  # inverted: white stroke on black


def test_predict_array_accepts_floats_and_rejects_wrong_shapes(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((3, 1, 28, 28), np.float32))
    images, names = read_predict_inputs(tmp_path / "x.npy")
    assert images.shape == (3, 28, 28) and images.dtype == torch.uint8 and int(images.max()) == 255
    assert names == ["x.npy[0]", "x.npy[1]", "x.npy[2]"]
    np.save(tmp_path / "bad.npy", np.ones((3, 32, 32)))
    with pytest.raises(DataError, match=r"bad.npy: expected images of shape \(N, 28, 28\)"):
        read_predict_inputs(tmp_path / "bad.npy")


def test_unreadable_predict_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: unreadable image"):
        read_predict_inputs(tmp_path)


def test_closed_network_fails_fast() -> None:
    ok, why = reachable("https://example.invalid/mnist.gz")
    assert not ok and "unreachable" in why


def test_stalled_download_times_out_within_seconds() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    started = time.monotonic()
    with network_timeout(1.0), pytest.raises(OSError):  # the server accepts, then never answers
        urllib.request.urlopen(f"http://127.0.0.1:{port}/train-images-idx3-ubyte.gz")
    assert time.monotonic() - started < 5
    server.close()


def test_class_subset_is_relabelled_in_the_given_order() -> None:
    full = prepared(dataset="digits")
    dm = prepared(dataset="digits", classes=[7, 5])
    assert dm.label_names == ["7", "5"]
    for split in ("train", "val", "test"):
        images, labels = dm.splits[split].tensors
        full_images, full_labels = full.splits[split].tensors
        assert set(labels.tolist()) == {0, 1}
        assert torch.equal(images[labels == 0], full_images[full_labels == 7])


def test_label_budget_keeps_n_per_class_in_train_only() -> None:
    dm = prepared(dataset="digits", classes=[5, 6, 7, 8, 9], labels_per_class=10, seed=3)
    _, labels = dm.splits["train"].tensors
    assert torch.bincount(labels).tolist() == [10] * 5
    assert len(dm.splits["test"]) > 100  # evaluation sets stay whole
    again = prepared(dataset="digits", classes=[5, 6, 7, 8, 9], labels_per_class=10, seed=3)
    assert torch.equal(dm.splits["train"].tensors[0], again.splits["train"].tensors[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels_per_class": 1000}, "--data.labels_per_class 1000: the training split has only"),
        ({"classes": [3]}, "--data.classes \\[3\\]: name at least two different classes"),
        ({"classes": [3, 12]}, "--data.classes"),
    ],
)
def test_impossible_subsets_are_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        prepared(dataset="digits", **kwargs)


class Logger:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def log_hyperparams(self, params: dict) -> None:
        self.records.append(params)


def test_the_dataset_used_is_announced_and_logged_once_across_fit_then_test(capsys) -> None:
    dm = MNISTDataModule(dataset="auto", data_dir="no-such-dir")
    logger = Logger()
    dm.trainer = SimpleNamespace(loggers=[logger], training=False)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.splits["train"]
    dm.setup("test")  # after fit: nothing is read again
    assert dm.splits["train"] is train
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[data]")]
    assert len(lines) == 1 and lines[0].startswith("[data] using digits: ")
    assert logger.records == [{"data/dataset_used": "digits", "data/dataset_reason": lines[0].split(": ", 1)[1]}]
    assert dm.hparams.dataset == "digits"


def test_mnist_batches_are_normalised_with_the_input_stats_the_model_gets() -> None:
    dm = prepared(dataset="digits", augment=False)
    mean, std = dm.input_stats
    assert (mean, std) == (MEAN, STD)
    images, labels = next(iter(dm.val_dataloader()))
    normalised, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.allclose(normalised * std + mean, images.unsqueeze(1).float() / 255, atol=1e-6)


def test_image_input_stats_follow_the_backbone() -> None:
    assert ImageDataModule(dataset="digits").input_stats == (MEAN, STD)
    assert ImageDataModule(dataset="digits", backbone="runs/lenet.ckpt").input_stats == (MEAN, STD)
    assert ImageDataModule(dataset="digits", backbone="resnet18").input_stats == (0.0, 1.0)


def test_image_defaults_are_the_finetune_apps() -> None:
    dm = prepared_images(dataset="digits")
    assert dm.label_names == ["5", "6", "7", "8", "9"] and dm.hparams.batch_size == 10
    assert torch.bincount(dm.splits["train"].tensors[1]).tolist() == [10] * 5


def prepared_images(**kwargs) -> ImageDataModule:
    dm = ImageDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    dm.trainer = SimpleNamespace(training=False, predicting=False)
    return dm


def test_digits_for_a_torchvision_backbone_are_pixels_through_its_transforms_alone() -> None:
    dm = prepared_images(dataset="digits", backbone="resnet18", augment=False)
    images, labels = next(iter(dm.val_dataloader()))
    batch, _ = dm.on_after_batch_transfer((images, labels), 0)
    transforms = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    expected = transforms(images.unsqueeze(1).float().div(255).expand(-1, 3, -1, -1))
    assert batch.shape == (len(images), 3, 224, 224) and torch.allclose(batch, expected)


def test_folder_images_for_a_project_backbone_are_normalised_like_mnist(tmp_path: Path) -> None:
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.fromarray(np.full((40, 40), 60 * i, np.uint8)).save(tmp_path / name / f"{i}.png")
    dm = prepared_images(dataset="folder", path=str(tmp_path), val_fraction=0.2, test_fraction=0.2)
    assert dm.label_names == ["cats", "dogs"] and dm.input_stats == (MEAN, STD)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (6, 1, 28, 28) and labels.dtype == torch.long
    assert dm.on_after_batch_transfer((images, labels), 0)[0] is images  # ready as read
    pixels = images * STD + MEAN
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
