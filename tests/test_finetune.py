"""Finetuning: each backbone kind, the freeze/unfreeze schedule, image folders, bad input, and the
app from fit to predict on the finetuned checkpoint alone."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from PIL import Image

import apps.autoencoder.__main__ as autoencoder_app
import apps.finetune.__main__ as finetune_app
import apps.mnist.__main__ as mnist_app
from datamodules.base import DataError
from datamodules.images import ImageDataModule
from datamodules.mnist import load_digits_28
from models.backbones import Pixels, fetch_torchvision_weights
from models.finetune import FinetuneClassifier

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
TINY_FIT = ["--data.dataset=digits", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


def run(main, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(list(args))
    return out.getvalue()


def checkpoint_of(workdir: Path, output: str) -> Path:
    return workdir / next(l.split(": ", 1)[1] for l in output.splitlines() if l.startswith("checkpoint: "))


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """A LeNet of apps.mnist trained on digits 0-4 and an autoencoder of apps.autoencoder, briefly."""
    workdir = tmp_path_factory.mktemp("backbones")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        lenet = run(mnist_app.main, "fit", *TINY_FIT, "--data.classes=[0,1,2,3,4]", *QUIET)
        autoencoder = run(autoencoder_app.main, "fit", *TINY_FIT, "--model.channels=8", *QUIET)
    return {"lenet": checkpoint_of(workdir, lenet), "autoencoder": checkpoint_of(workdir, autoencoder)}


def write_folder(root: Path, classes: list[str], per_class: int = 5, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("kind, features", [("lenet", 32 * 5 * 5), ("autoencoder", 16)])  # LeNet: its convolutions' output
def test_project_backbones_load_their_weights_and_size_the_head(backbones, kind: str, features: int) -> None:
    module = FinetuneClassifier(label_names=["5", "6", "7"], backbone=str(backbones[kind]))
    module.configure_model()
    assert module.head[-1].in_features == features
    assert module(torch.randn(4, 1, 28, 28)).shape == (4, 3)
    first_conv = next(m for m in module.backbone.modules() if isinstance(m, torch.nn.Conv2d)).weight.detach().clone()
    module.load_pretrained()
    state = torch.load(backbones[kind], weights_only=True)["state_dict"]
    pretrained = state["net.features.0.weight" if kind == "lenet" else "net.encoder.features.0.weight"]
    assert torch.equal(next(m for m in module.backbone.modules() if isinstance(m, torch.nn.Conv2d)).weight, pretrained)
    assert not torch.equal(first_conv, pretrained)


def test_a_finetuned_checkpoint_from_before_the_convolution_backbone_still_loads(backbones) -> None:
    """Finetuned checkpoints made when a LeNet backbone kept its dense layers have no ``dense_layers`` in their
    backbone_config: they rebuild that backbone, (B, 84) features, and their weights load whole, backbone file gone."""
    new = FinetuneClassifier(label_names=["5", "6"], backbone=str(backbones["lenet"]))
    new.configure_model()
    assert new.hparams.backbone_config["dense_layers"] is False
    before = {k: v for k, v in new.hparams.backbone_config.items() if k != "dense_layers"}
    old = FinetuneClassifier(label_names=["5", "6"], backbone="gone.ckpt", backbone_config=before)
    old.configure_model()
    assert (old.head[-1].in_features, new.head[-1].in_features) == (84, 32 * 5 * 5)
    assert any(key.startswith("backbone.2.") for key in old.state_dict())  # fc120 sits in the backbone
    again = FinetuneClassifier(**old.hparams)
    again.configure_model()
    again.load_state_dict(old.state_dict())  # strict
    images = torch.randn(3, 1, 28, 28)
    assert torch.equal(again.eval()(images), old.eval()(images))


class FirstWeights(Callback):
    """The backbone's weights as training starts, after every setup hook."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.backbone.state_dict().items()}


@pytest.mark.parametrize("pretrained", [True, False])
def test_fit_starts_from_the_backbone_checkpoint_weights(backbones, pretrained: bool, tmp_path) -> None:
    """Every weight of the LeNet's convolutions reaches the backbone that `fit` trains, or none with pretrained=false."""
    data = ImageDataModule(dataset="digits", backbone=str(backbones["lenet"]), classes=[5, 6, 7, 8, 9], labels_per_class=4)
    module = FinetuneClassifier(data.label_names, backbone=str(backbones["lenet"]), pretrained=pretrained)
    first = FirstWeights()
    trainer = Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[first], default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    state = torch.load(backbones["lenet"], weights_only=True)["state_dict"]
    # lenet_body is Sequential(features, Flatten): features.i -> 0.i; the dense layers are left behind
    renamed = {k.replace("net.features.", "0.", 1): v for k, v in state.items() if k.startswith("net.features.")}
    assert renamed.keys() == first.state.keys()
    same = [torch.equal(first.state[k], v) for k, v in renamed.items() if v.is_floating_point()]
    assert all(same) if pretrained else not any(same[:2])  # random conv weights and biases differ


def test_finetune_keeps_the_epoch_of_lowest_validation_loss(capsys) -> None:
    """~90 validation images of 5-9: val/acc moves in 1% steps and its first maximum is often a lucky epoch."""
    with pytest.raises(SystemExit) as exit_:
        finetune_app.main(["fit", "--print_config"])
    assert exit_.value.code == 0
    checkpoint = yaml.safe_load(capsys.readouterr().out)["checkpoint"]
    assert (checkpoint["monitor"], checkpoint["mode"]) == ("val/loss", "min")


def test_autoencoder_backbone_undoes_the_input_normalisation(backbones) -> None:
    """The encoder takes [0, 1] pixels: the backbone first undoes the DataModule's ``input_stats``."""
    module = FinetuneClassifier(label_names=["5", "6"], backbone=str(backbones["autoencoder"]), input_stats=(0.13, 0.31))
    module.configure_model()
    pixels = module.backbone[0]
    assert isinstance(pixels, Pixels)
    images = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(pixels((images - 0.13) / 0.31), images)


def test_a_missing_backbone_checkpoint_is_one_data_error(tmp_path) -> None:
    module = FinetuneClassifier(label_names=["a", "b"], backbone=str(tmp_path / "missing.ckpt"))
    with pytest.raises(DataError, match=r"missing.ckpt: no such checkpoint file \(and not a torchvision model name\)"):
        module.configure_model()


def test_torchvision_weights_on_a_closed_network_are_one_data_error(tmp_path, monkeypatch) -> None:
    """The download runs under a short socket timeout, and its failure says how to go on without it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    timeouts, before = [], socket.getdefaulttimeout()

    def closed(url: str, **kwargs) -> None:
        timeouts.append(socket.getdefaulttimeout())
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", closed)
    with pytest.raises(DataError, match="--model.backbone resnet18: .*Network is unreachable.*--model.pretrained=false"):
        fetch_torchvision_weights("resnet18")
    assert timeouts and 0 < timeouts[0] <= 10 and socket.getdefaulttimeout() == before


def test_torchvision_backbone_by_name_without_weights() -> None:
    module = FinetuneClassifier(label_names=["a", "b"], backbone="resnet18", pretrained=False)
    module.configure_model()
    assert isinstance(module.backbone.fc, torch.nn.Identity) and module.head[-1].in_features == 512
    assert module(torch.randn(2, 3, 64, 64)).shape == (2, 2)


class Record(Callback):
    """At each epoch's first batch: what requires grad, the optimizer's groups, the batch norm layers'
    mode, and copies of the held backbone's and of the batch norm layers' weights."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            norms = pl_module.batch_norms()
            self.epochs.append(
                {
                    "trainable": {n.split(".")[0] for n, p in pl_module.named_parameters() if p.requires_grad},
                    "bn_trainable": any(p.requires_grad for m in norms for p in m.parameters()),
                    "bn_training": any(m.training for m in norms),
                    "lrs": [g["lr"] for g in trainer.optimizers[0].param_groups],
                    "sizes": [len(g["params"]) for g in trainer.optimizers[0].param_groups],
                    "held": [p.detach().clone() for p in pl_module.held_parameters()],
                    "bn": [p.detach().clone() for m in norms for p in m.parameters()],
                }
            )


@pytest.mark.parametrize("train_bn", [False, True])
def test_backbone_is_held_then_trains_with_a_lower_learning_rate(backbones, train_bn: bool, tmp_path) -> None:
    """Held until epoch 2, the backbone does not move, yet it requires grad from the start (DDP all-reduces
    only what requires grad when it wraps the model), in its own group at 0.1 of the head's rate."""
    data = ImageDataModule(dataset="digits", backbone=str(backbones["lenet"]), classes=[5, 6, 7, 8, 9], labels_per_class=4)
    module = FinetuneClassifier(
        data.label_names, backbone=str(backbones["lenet"]), unfreeze_at_epoch=2, backbone_lr_factor=0.1, train_bn=train_bn
    )
    record = Record()
    trainer = Trainer(
        max_epochs=4, limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[record], default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    first, held, trained = record.epochs[0], record.epochs[2], record.epochs[3]
    for epoch in record.epochs:
        assert epoch["trainable"] == {"head", "backbone"}
        assert epoch["bn_trainable"] == train_bn == epoch["bn_training"]
        assert epoch["lrs"] == pytest.approx([first["lrs"][0], 0.1 * first["lrs"][0]])
    assert all(torch.equal(a, b) for a, b in zip(first["held"], held["held"]))  # two epochs held
    assert not any(torch.equal(a, b) for a, b in zip(held["held"], trained["held"]) if a.dim() > 1)  # then trained
    assert first["bn"] and all(torch.equal(a, b) for a, b in zip(first["bn"], held["bn"])) != train_bn
    norms = {id(p) for m in module.batch_norms() for p in m.parameters()}
    held_ids = {id(p) for p in module.held_parameters()}
    assert held_ids and not held_ids & norms and held_ids | norms == {id(p) for p in module.backbone.parameters()}
    assert first["sizes"][1] == len(held_ids)
    assert {id(p) for p in trainer.optimizers[0].param_groups[1]["params"]} == held_ids
    head_group = {id(p) for p in trainer.optimizers[0].param_groups[0]["params"]}
    assert head_group == {id(p) for p in module.head.parameters()} | (norms if train_bn else set())


def test_lenet_backbone_fit_then_test_and_predict_need_only_the_finetuned_checkpoint(backbones, tmp_path, monkeypatch) -> None:
    backbone = tmp_path / "backbone.ckpt"
    shutil.copy(backbones["lenet"], backbone)
    monkeypatch.chdir(tmp_path)
    fit = run(finetune_app.main, "fit", *TINY_FIT, f"--model.backbone={backbone}", "--model.unfreeze_at_epoch=0", *QUIET)
    best = checkpoint_of(tmp_path, fit)
    backbone.unlink()  # the finetuned checkpoint carries the backbone's architecture and weights

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert "test/acc=" in run(finetune_app.main, "test", f"--ckpt_path={best}", *QUIET)
    images, _ = load_digits_28()
    np.save(elsewhere / "digits.npy", images[:6].numpy())
    run(finetune_app.main, "predict", f"--ckpt_path={best}", "--data.predict_path=digits.npy", "--output=out.csv")
    rows = list(csv.DictReader(open(elsewhere / "out.csv")))
    assert len(rows) == 6 and {row["label"] for row in rows} <= {"5", "6", "7", "8", "9"}


def test_torchvision_backbone_on_an_image_folder(tmp_path, monkeypatch) -> None:
    """resnet18 with random weights on a tiny folder, its weights' transforms; predict from the checkpoint."""
    write_folder(tmp_path / "images", ["cat", "dog"])
    monkeypatch.chdir(tmp_path)
    args = ["--model.backbone=resnet18", "--model.pretrained=false", "--data.dataset=folder", "--data.path=images"]
    fit = run(finetune_app.main, "fit", *args, "--data.batch_size=4", "--trainer.max_epochs=1", *QUIET)
    best = checkpoint_of(tmp_path, fit)
    data = ImageDataModule(dataset="folder", path="images", backbone="resnet18")
    data.setup("fit")
    assert next(iter(data.train_dataloader()))[0].shape[1:] == (3, 224, 224)
    run(finetune_app.main, "predict", f"--ckpt_path={best}", "--data.predict_path=images/cat", "--output=out.csv")
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [row["input"] for row in rows] == [f"{i}.png" for i in range(5)] and {r["label"] for r in rows} <= {"cat", "dog"}


def fails_with(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        finetune_app.main(list(args))
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1
    return err[0]


def test_bad_input_ends_in_one_line(backbones, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights
    tiny = [*TINY_FIT, *QUIET]
    (tmp_path / "not.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {"net.weight": torch.zeros(1)}, "hyper_parameters": {}}, tmp_path / "other.ckpt")
    write_folder(tmp_path / "one", ["cats"])
    write_folder(tmp_path / "broken", ["cats", "dogs"], per_class=3)
    (tmp_path / "broken/dogs/2.png").write_bytes(b"\x89PNG truncated")
    cases = [
        (["--model.backbone=other.ckpt"], "a checkpoint of neither apps.mnist (LeNet) nor apps.autoencoder"),
        (["--model.backbone=not.ckpt"], "not a readable Lightning checkpoint"),
        (["--model.backbone=missing.ckpt"], "no such checkpoint file"),
        (["--model.backbone=resnet18"], "pass --model.pretrained=false"),
        ([f"--model.backbone={backbones['lenet']}", "--data.labels_per_class=1000"], "the training split has only"),
        ([f"--model.backbone={backbones['lenet']}", "--data.dataset=folder", "--data.path=one"], "found only 'cats'"),
        ([f"--model.backbone={backbones['lenet']}", "--data.dataset=folder", "--data.path=broken"], "2.png: unreadable image"),
    ]
    for args, message in cases:
        assert message in fails_with(capsys, "fit", *tiny, *args)


def test_a_folder_needs_two_classes(tmp_path) -> None:
    write_folder(tmp_path / "one", ["cats"])
    with pytest.raises(DataError, match="at least two sub-folders"):
        ImageDataModule(dataset="folder", path=str(tmp_path / "one")).label_names


def test_the_default_backbone_recipe_keeps_the_best_validation_loss() -> None:
    """By val/acc, the 0-4 split reaches 1.0 within two epochs and a tie never replaces that early epoch."""
    _, args = finetune_app.PRETRAIN["runs/pretrained/lenet-digits-0-4.ckpt"]
    assert {"--checkpoint.monitor=val/loss", "--checkpoint.mode=min", "--data.classes=[0,1,2,3,4]"} <= set(args)


def test_fit_makes_a_missing_default_backbone_in_process(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    default = "runs/pretrained/lenet-digits-0-4.ckpt"
    app, args = finetune_app.PRETRAIN[default]
    monkeypatch.setitem(finetune_app.PRETRAIN, default, (app, [*args, *TINY_FIT]))  # a short pretraining
    output = run(finetune_app.main, "fit", *TINY_FIT, *QUIET)
    assert (tmp_path / default).is_file()
    assert f"[backbone] {default} is missing: making it with `python -m apps.mnist fit" in capsys.readouterr().err
    reported = [line for line in output.splitlines() if line.startswith("checkpoint: ")]
    assert len(reported) == 1 and "runs/finetune/" in reported[0]  # the pretraining reports on stderr


def test_a_launcher_of_several_processes_gets_the_command_instead(tmp_path: Path, monkeypatch, capsys) -> None:
    """Under torchrun or srun every process would make the default backbone at once."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        finetune_app.main(["fit", *TINY_FIT, *QUIET])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --model.backbone runs/pretrained/lenet-digits-0-4.ckpt: no such file; make it first")
    assert "`python -m apps.mnist fit --data.classes=[0,1,2,3,4]" in error and not (tmp_path / "runs/pretrained").exists()


def test_linear_probe_reads_the_apps_labelled_images_and_scores_its_test_split(backbones, capsys) -> None:
    """The readout learns the 50 labelled images `apps.finetune fit --data.seed=S` trains on, labels aligned
    with their features (shuffled batches included): far above the 0.2 a constant or misaligned readout scores."""
    from benchmarks import linear_probe

    data = ImageDataModule(dataset="digits", seed=1)
    data.setup("test")
    accuracy, n_train, n_test = linear_probe.probe(str(backbones["lenet"]), True, 1, dataset="digits")
    assert (n_train, n_test) == (50, len(data.splits["test"]))
    assert accuracy > 0.6
    linear_probe.main(["--backbone", str(backbones["lenet"]), "--seeds", "0", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["seed 0", "seed 1"]
    assert lines[2].startswith("linear readout of the frozen features: pretrained 0.") and "paired standard error" in lines[2]
    with pytest.raises(SystemExit) as exit_:
        linear_probe.main(["--backbone", "missing.ckpt"])
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: --backbone missing.ckpt: no such checkpoint file\n"
