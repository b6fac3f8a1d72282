"""Fashion-MNIST (``--data.dataset=fashion_mnist``): where it is read from, its errors, its class names
and statistics in the checkpoint, its augmentation, and the finetune app's own default backbone."""

from __future__ import annotations

import contextlib
import gzip
import io
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import apps.finetune.__main__ as finetune_app
import apps.mnist.__main__ as mnist_app
from conftest import write_mnist
from datamodules import mnist
from datamodules.base import DataError
from datamodules.images import ImageDataModule
from datamodules.mnist import IDX_DATASETS, MNISTDataModule
from test_mnist_data import prepared

CLOTHES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]


@pytest.fixture(autouse=True)
def no_system_package(tmp_path: Path, monkeypatch) -> Path:
    """Debian's folder, moved where each test controls it (empty unless the test fills it)."""
    folder = tmp_path / "usr-share-datasets-fashion-mnist"
    fashion = IDX_DATASETS["fashion_mnist"]
    monkeypatch.setitem(IDX_DATASETS, "fashion_mnist", replace(fashion, system_dir=str(folder)))
    return folder


def test_fashion_mnist_from_data_dir_has_clothes_names_and_its_own_statistics(tmp_path: Path, capsys) -> None:
    write_mnist(tmp_path, n_train=60, n_test=20, folder="FashionMNIST", compress=True)
    dm = prepared(dataset="fashion_mnist", data_dir=str(tmp_path), val_fraction=0.25)
    assert dm.label_names == CLOTHES and dm.input_stats == (0.2860, 0.3530)
    assert len(dm.splits["train"]) == 45 and len(dm.splits["val"]) == 15 and len(dm.splits["test"]) == 20
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("[data]"))
    assert line.startswith(f"[data] using fashion_mnist: Fashion-MNIST files found in {tmp_path / 'FashionMNIST/raw'}")
    assert MNISTDataModule(dataset="fashion_mnist", classes=[9, 5]).label_names == ["Ankle boot", "Sandal"]


def test_debian_packages_folder_is_read_in_place_and_left_as_it_was(tmp_path: Path, no_system_package: Path, capsys) -> None:
    write_mnist(tmp_path / "pkg", folder="x", compress=True)
    (tmp_path / "pkg/x/raw").rename(no_system_package)
    before = sorted(p.name for p in no_system_package.iterdir())
    no_system_package.chmod(0o555)  # read-only, as /usr/share is to a user
    try:
        dm = prepared(dataset="fashion_mnist", data_dir=str(tmp_path / "data"))
    finally:
        no_system_package.chmod(0o755)
    assert len(dm.splits["test"]) == 20 and sorted(p.name for p in no_system_package.iterdir()) == before
    assert f"Fashion-MNIST files found in {no_system_package}" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # nothing written to data_dir either


def test_data_dir_comes_before_the_system_package(tmp_path: Path, no_system_package: Path) -> None:
    write_mnist(tmp_path, n_test=20, folder="FashionMNIST")
    write_mnist(tmp_path / "pkg", n_test=30, folder="x", compress=True)
    (tmp_path / "pkg/x/raw").rename(no_system_package)
    assert len(prepared(dataset="fashion_mnist", data_dir=str(tmp_path)).splits["test"]) == 20


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_get_it_offline(tmp_path: Path, no_system_package: Path) -> None:
    with pytest.raises(DataError) as error:
        prepared(dataset="fashion_mnist", data_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert f"Fashion-MNIST is not in {tmp_path / 'FashionMNIST/raw'} nor in {no_system_package}" in message
    assert "network disabled in tests" in message and "apt-get download dataset-fashion-mnist" in message


def test_auto_never_picks_clothes_for_a_digit_app(tmp_path: Path) -> None:
    write_mnist(tmp_path, folder="FashionMNIST")
    dm = prepared(dataset="auto", data_dir=str(tmp_path))
    assert dm.hparams.dataset == "digits" and dm.label_names == [str(d) for d in range(10)]


@pytest.mark.parametrize("gzipped", [True, False])
def test_a_truncated_file_is_named_in_one_line(tmp_path: Path, gzipped: bool) -> None:
    write_mnist(tmp_path, folder="FashionMNIST", compress=gzipped)
    raw = tmp_path / "FashionMNIST/raw"
    if gzipped:  # a download cut short: the gzip stream ends early
        bad = raw / "t10k-images-idx3-ubyte.gz"
        bad.write_bytes(bad.read_bytes()[:-200])
    else:  # whole gzip, but the IDX inside is short of its header's promise
        bad = raw / "t10k-images-idx3-ubyte"
        bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(DataError, match=rf"^{bad}: corrupt Fashion-MNIST IDX file \(.+\)$") as error:
        MNISTDataModule(dataset="fashion_mnist", data_dir=str(tmp_path)).setup("fit")
    assert "\n" not in str(error.value)
    if not gzipped:
        assert "its header promises 15,696" in str(error.value)  # 16 header bytes + 20 x 28 x 28


def halves(flip: bool | None, dataset: str, tmp_path: Path) -> torch.Tensor:
    """Training batches of images bright on the left half only, after augmentation: for each image,
    whether its left half is still the brighter one."""
    write_mnist(tmp_path, folder="FashionMNIST")
    dm = MNISTDataModule(dataset=dataset, data_dir=str(tmp_path), flip=flip)
    dm.hparams.dataset = dataset if dataset != "auto" else "digits"
    dm.trainer = SimpleNamespace(training=True)
    images = torch.zeros(256, 28, 28, dtype=torch.uint8)
    images[:, :, :12] = 255
    torch.manual_seed(0)
    moved = dm.pixels(images)[:, 0]
    return moved[:, :, :14].mean((1, 2)) > moved[:, :, 14:].mean((1, 2))


def test_clothes_are_flipped_left_right_and_digits_never(tmp_path: Path) -> None:
    clothes, digits = halves(None, "fashion_mnist", tmp_path), halves(None, "digits", tmp_path)
    assert 0.35 < clothes.float().mean() < 0.65  # about every other image flipped
    assert digits.all()  # rotated, shifted and zoomed, never mirrored


def test_the_flip_is_overridable_either_way(tmp_path: Path) -> None:
    assert halves(False, "fashion_mnist", tmp_path).all()
    assert 0.35 < halves(True, "digits", tmp_path).float().mean() < 0.65


def test_the_apps_train_on_clothes_and_the_checkpoint_keeps_their_names(tmp_path: Path, monkeypatch) -> None:
    write_mnist(tmp_path / "data", n_train=200, n_test=40, folder="FashionMNIST", compress=True)
    monkeypatch.chdir(tmp_path)
    err, out = io.StringIO(), io.StringIO()
    args = ["fit", "--data.dataset=fashion_mnist", "--trainer.max_epochs=1", *QUIET]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        mnist_app.main(args)
    assert "[data] using fashion_mnist: Fashion-MNIST files found in data/FashionMNIST/raw" in err.getvalue()
    path = next(line.split(": ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("checkpoint: "))
    checkpoint = torch.load(tmp_path / path, map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["label_names"] == CLOTHES
    assert checkpoint["datamodule_hyper_parameters"]["dataset"] == "fashion_mnist"


def test_finetune_on_clothes_pretrains_its_backbone_on_clothes_0_to_4(tmp_path: Path, monkeypatch) -> None:
    write_mnist(tmp_path / "clothes", n_train=200, n_test=40, folder="FashionMNIST", compress=True)
    monkeypatch.chdir(tmp_path)
    backbone = finetune_app.DATASET_BACKBONES["fashion_mnist"]
    app, args = finetune_app.PRETRAIN[backbone]
    monkeypatch.setitem(finetune_app.PRETRAIN, backbone, (app, [*args, "--trainer.max_epochs=1"]))  # a short pretraining
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        finetune_app.main(["fit", "--data.dataset=fashion_mnist", "--data.data_dir=clothes", "--data.labels_per_class=3",
                           "--trainer.max_epochs=1", *QUIET])
    assert f"[backbone] --data.dataset=fashion_mnist: the default backbone is {backbone}" in err.getvalue()
    assert "--data.dataset=fashion_mnist --data.classes=[0,1,2,3,4]" in err.getvalue()
    pretrained = torch.load(tmp_path / backbone, map_location="cpu", weights_only=False)
    assert pretrained["hyper_parameters"]["label_names"] == CLOTHES[:5]
    assert pretrained["datamodule_hyper_parameters"]["data_dir"] == "clothes"
    path = next(line.split(": ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("checkpoint: "))
    finetuned = torch.load(tmp_path / path, map_location="cpu", weights_only=False)
    assert finetuned["hyper_parameters"]["label_names"] == CLOTHES[5:]
    assert finetuned["hyper_parameters"]["backbone"] == backbone


def test_finetune_data_takes_fashion_mnist_with_its_statistics(tmp_path: Path) -> None:
    write_mnist(tmp_path, folder="FashionMNIST")
    dm = ImageDataModule(dataset="fashion_mnist", data_dir=str(tmp_path))
    assert dm.label_names == CLOTHES[5:] and dm.input_stats == (0.2860, 0.3530)
    assert ImageDataModule(dataset="digits").input_stats == (mnist.MEAN, mnist.STD)


@pytest.mark.parametrize("problem", ["missing", "truncated"])
def test_fit_stops_on_a_file_problem_with_one_line_and_exit_code_2(problem: str, tmp_path: Path, monkeypatch, capsys) -> None:
    if problem == "truncated":
        write_mnist(tmp_path / "data", folder="FashionMNIST", compress=True)
        bad = tmp_path / "data/FashionMNIST/raw/train-labels-idx1-ubyte.gz"
        bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:20]))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        mnist_app.main(["fit", "--data.dataset=fashion_mnist", "--trainer.fast_dev_run=true"])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    expected = {"missing": "Fashion-MNIST is not in data/FashionMNIST/raw nor in ",
                "truncated": "FashionMNIST/raw/train-labels-idx1-ubyte: corrupt Fashion-MNIST IDX file (truncated or padded: 20 bytes"}
    assert len(errors) == 1 and expected[problem] in errors[0], errors
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))
