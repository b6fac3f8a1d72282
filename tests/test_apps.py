"""Every app through its CLI, in-process: fit (fast_dev_run and a few real epochs with logging and
checkpointing on), test and predict from the checkpoint alone, bad input, and DDP on 2 CPU processes."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

import apps.autoencoder.__main__ as autoencoder_app
import apps.finetune.__main__ as finetune_app
import apps.mnist.__main__ as mnist_app
import apps.sentiment.__main__ as sentiment_app
import apps.translate.__main__ as translate_app
from wandb_run import config_keys, history_keys

REPO = Path(__file__).resolve().parents[1]


def mnist_predict_inputs(folder: Path) -> tuple[list[str], list[str]]:
    """Twenty digits the model has seen labels for, as a .npy array; returns args and true labels."""
    from datamodules.mnist import load_digits_28

    images, labels = load_digits_28()
    np.save(folder / "digits.npy", images[:20].numpy())
    return [f"--data.predict_path={folder / 'digits.npy'}"], [str(y) for y in labels[:20].tolist()]


def sentiment_predict_inputs(folder: Path) -> tuple[list[str], list[str]]:
    """Twenty positive and twenty negative tweets, in a text file, one per line."""
    from datamodules.sentiment import read_tweets

    texts, labels = read_tweets()
    picked = [i for i, label in enumerate(labels) if label == "positive"][:20]
    picked += [i for i, label in enumerate(labels) if label == "negative"][:20]
    lines = [" ".join(texts[i].split()) for i in picked]
    (folder / "texts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [f"--data.predict_path={folder / 'texts.txt'}"], [labels[i] for i in picked]


def autoencoder_predict_inputs(folder: Path) -> tuple[list[str], list[str]]:
    """Twenty digits to reconstruct; no labels to compare with."""
    args, _ = mnist_predict_inputs(folder)
    return args, []


def finetune_predict_inputs(folder: Path) -> tuple[list[str], list[str]]:
    """Twenty digits of the finetuning classes 5-9."""
    from datamodules.mnist import load_digits_28

    images, labels = load_digits_28()
    keep = (labels >= 5).nonzero().squeeze(1)[:20]
    np.save(folder / "digits.npy", images[keep].numpy())
    return [f"--data.predict_path={folder / 'digits.npy'}"], [str(y) for y in labels[keep].tolist()]


def translate_predict_inputs(folder: Path) -> tuple[list[str], list[str]]:
    """Twenty training phrases of the test's CLDR data, one a line; returns args and references."""
    from datamodules.translation import TranslationDataModule

    data = TranslationDataModule(dataset="cldr", size=1500)
    train = data.split(data.load_pairs("cldr"))["train"][:20]
    (folder / "phrases.txt").write_text("".join(f"{source}\n" for source, _ in train), encoding="utf-8")
    return [f"--data.predict_path={folder / 'phrases.txt'}"], [target for _, target in train]


# A LeNet pretrained on digits 0-4, made once per session, so the finetune tests do not make the
# app pretrain its default backbone.
FINETUNE_BACKBONE = Path(tempfile.mkdtemp(prefix="backbone-")) / "lenet-digits-0-4.ckpt"


@pytest.fixture(scope="session")
def finetune_backbone() -> Path:
    if not FINETUNE_BACKBONE.exists():
        with contextlib.redirect_stdout(io.StringIO()):
            mnist_app.main(
                [
                    "fit",
                    "--data.dataset=digits",
                    "--data.classes=[0,1,2,3,4]",
                    "--trainer.max_epochs=3",
                    "--trainer.logger=false",
                    f"--checkpoint.dirpath={FINETUNE_BACKBONE.parent}",
                    f"--checkpoint.filename={FINETUNE_BACKBONE.stem}",
                    "--checkpoint.save_last=false",
                ]
            )
    return FINETUNE_BACKBONE


CLASSIFIER_METRICS = {"train/loss", "val/loss", "val/acc", "test/acc", "test/macro_f1"}


@dataclass
class App:
    main: Callable[[list[str]], None]
    data: list[str]  # data options that keep the test offline and small
    train: list[str]  # a few real epochs
    predict_inputs: Callable[[Path], tuple[list[str], list[str]]]
    pictures: list[str] = field(default_factory=list)
    min_predict_accuracy: float = 0.8
    test: list[str] = field(default_factory=list)  # limits that `fit`'s test and `test` share
    metrics: set[str] = field(default_factory=lambda: set(CLASSIFIER_METRICS))  # logged by `fit`
    predicted: str = "label"  # the column of the predict output compared with the truth


APPS = {
    "mnist": App(
        main=mnist_app.main,
        data=["--data.dataset=digits"],
        train=["--trainer.max_epochs=3"],
        predict_inputs=mnist_predict_inputs,
        pictures=["test_confusion_matrix.png", "test_misclassified.png"],
    ),
    "sentiment": App(
        main=sentiment_app.main,
        data=["--data.dataset=tweets", "--data.vocab_size=5000"],
        train=[
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=60",
            "--trainer.limit_val_batches=10",
            "--model.embedding_dim=32",
            "--model.hidden_size=32",
        ],
        test=["--trainer.limit_test_batches=10"],
        predict_inputs=sentiment_predict_inputs,
        pictures=["test_confusion_matrix.png"],
        min_predict_accuracy=0.6,
    ),
    "autoencoder": App(
        main=autoencoder_app.main,
        data=["--data.dataset=digits", "--model.channels=8"],
        train=["--trainer.max_epochs=3"],
        predict_inputs=autoencoder_predict_inputs,
        pictures=["test_reconstructions.png", "test_latent_space.png"],
        metrics={"train/loss", "val/loss", "val/mse", "test/mse", "test/bce"},
    ),
    "finetune": App(
        main=finetune_app.main,
        data=["--data.dataset=digits", f"--model.backbone={FINETUNE_BACKBONE}"],
        train=["--trainer.max_epochs=10"],
        predict_inputs=finetune_predict_inputs,
        pictures=["test_confusion_matrix.png"],
        min_predict_accuracy=0.5,
    ),
    "translate": App(
        main=translate_app.main,
        data=["--data.dataset=cldr", "--data.size=1500"],
        train=["--trainer.max_epochs=2", "--model.embedding_dim=32", "--model.hidden_size=64", "--model.beam_size=2"],
        predict_inputs=translate_predict_inputs,
        pictures=["test_attention.png"],
        metrics={"train/loss", "val/loss", "val/exact_match", "test/exact_match", "test/bleu", "test/chrf"},
        predicted="translation",
        min_predict_accuracy=0.0,  # a 2-epoch tiny model gets few phrases exactly right; rows and order are checked
    ),
}


@pytest.fixture(autouse=True)
def backbone_for_finetune(request) -> None:
    """Tests of the finetune app get the pretrained backbone their data options name."""
    if "finetune" in request.node.name:
        request.getfixturevalue("finetune_backbone")


def run(app: App, *args: str) -> str:
    """Run the app's CLI in-process; returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        app.main(list(args))
    return out.getvalue()


def printed_metrics(output: str) -> dict[str, float]:
    line = next(line for line in output.splitlines() if line.startswith("test metrics: "))
    return {k: float(v) for k, v in (pair.split("=") for pair in line.split()[2:])}


def inputs_in_order(args: list[str]) -> list[str]:
    """What the predict output's `input` column must list, in order, for the app test's inputs."""
    path = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--data.predict_path=")))
    if path.suffix == ".npy":
        return [f"{path.name}[{i}]" for i in range(len(np.load(path)))]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def best_checkpoint(workdir: Path, output: str) -> Path:
    """The checkpoint path `fit` printed, relative to its working directory."""
    return workdir / next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("checkpoint: "))


@pytest.fixture(scope="module", params=sorted(APPS))
def trained(request, tmp_path_factory) -> tuple[App, Path, str]:
    """One real fit per app with CSV and W&B logging and checkpointing on."""
    app = APPS[request.param]
    if request.param == "finetune":
        request.getfixturevalue("finetune_backbone")
    workdir = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        output = run(app, "fit", *app.data, *app.train, *app.test)
    return app, workdir, output


@pytest.mark.parametrize("name", sorted(APPS))
def test_fast_dev_run_wires_everything(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    output = run(APPS[name], "fit", *APPS[name].data, "--trainer.fast_dev_run=true")
    assert {k for k in APPS[name].metrics if k.startswith("test/")} <= printed_metrics(output).keys()


def test_fit_leaves_checkpoints_metrics_and_a_wandb_run(trained) -> None:
    app, workdir, output = trained
    versions = list(workdir.glob("runs/*/version_0"))
    assert len(versions) == 1
    run_dir = versions[0]
    best = best_checkpoint(workdir, output)
    assert best.is_file() and best.name.startswith("best-epoch")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()
    with open(run_dir / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    assert app.metrics <= columns
    for picture in app.pictures:
        assert (run_dir / picture).stat().st_size > 1000

    wandb_files = list(workdir.glob("runs/*/wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1, "exactly one offline W&B run"
    assert app.metrics <= history_keys(wandb_files[0])
    assert {"config", "data/dataset_used"} <= config_keys(wandb_files[0])
    assert f"wandb sync {wandb_files[0].parent}" in output


def test_test_and_predict_need_only_the_checkpoint(trained, tmp_path: Path, monkeypatch) -> None:
    app, workdir, fit_output = trained
    best = best_checkpoint(workdir, fit_output)
    monkeypatch.chdir(tmp_path)  # nothing from the fit run's folder but the checkpoint

    tested = printed_metrics(run(app, "test", f"--ckpt_path={best}", *app.test))
    assert tested == pytest.approx(printed_metrics(fit_output), abs=1e-4)

    args, truth = app.predict_inputs(tmp_path)
    output = tmp_path / "predictions.csv"
    run(app, "predict", f"--ckpt_path={best}", *args, f"--output={output}")
    with open(output) as f:
        rows = list(csv.DictReader(f))
    if not truth:  # the autoencoder: a reconstruction error per input instead of a label
        assert len(rows) == 20 and all(0 <= float(row["mse"]) < 0.3 for row in rows)
        return
    assert len(rows) == len(truth)
    assert all(0 <= float(row["probability"]) <= 1 for row in rows)  # a long sequence's may underflow to 0
    assert [row["input"] for row in rows] == inputs_in_order(args)
    accuracy = np.mean([row[app.predicted] == label for row, label in zip(rows, truth)])
    assert accuracy >= app.min_predict_accuracy


@pytest.mark.parametrize("name", sorted(APPS))
def test_print_config_shows_the_app_defaults(name: str, capsys) -> None:
    """Every value of the app's config.yaml is in the resolved config (and so reaches the run)."""
    with pytest.raises(SystemExit) as exit_:
        APPS[name].main(["fit", "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    app_config = yaml.safe_load((REPO / "apps" / name / "config.yaml").read_text())

    def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(leaves(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    resolved = leaves(printed)
    expected = leaves(app_config)
    assert expected and {key: resolved.get(key) for key in expected} == expected
    assert printed["checkpoint"]["monitor"].startswith("val/")


@pytest.mark.parametrize("name", sorted(APPS))
def test_loggers_can_be_turned_off(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run(APPS[name], "fit", *APPS[name].data, "--trainer.fast_dev_run=true", "--trainer.logger=false")
    assert not list(tmp_path.glob("runs/**/wandb")) and not list(tmp_path.glob("runs/**/metrics.csv"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "--model.no_such_option=1"], "no_such_option"),
        (["fit", "--trainer.max_epoch=3"], "--trainer.max_epoch=3"),  # no silent abbreviation
        (["fit", "--data.batch_size=many"], "data.batch_size"),
        (["test"], "test needs --ckpt_path"),
        (["test", "--ckpt_path=missing.ckpt"], "--ckpt_path missing.ckpt: no such file"),
    ],
)
@pytest.mark.parametrize("name", sorted(APPS))
def test_bad_options_end_in_one_line(name: str, args: list[str], message: str, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        APPS[name].main(args)
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_predict_refuses_bad_input_and_writes_nothing(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    app, workdir, fit_output = trained
    if app is not APPS["mnist"]:
        pytest.skip("image folders are the MNIST app's input")
    best = best_checkpoint(workdir, fit_output)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG truncated")
    output = tmp_path / "out.csv"
    output.write_text("stale result\n")
    for args, message in [
        ([f"--data.predict_path={tmp_path / 'images'}", f"--output={output}"], "broken.png: unreadable image"),
        ([f"--data.predict_path={tmp_path / 'images'}"], "predict needs --output"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            app.main(["predict", f"--ckpt_path={best}", *args])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize(
    "problem, message",
    [("missing", "MNIST is not in data/MNIST/raw"), ("corrupt", "t10k-labels-idx1-ubyte: corrupt MNIST IDX file")],
)
def test_mnist_file_problems_stop_fit_with_one_line(problem, message, tmp_path: Path, monkeypatch, capsys) -> None:
    from conftest import write_mnist

    if problem == "corrupt":
        write_mnist(tmp_path / "data")
        (tmp_path / "data/MNIST/raw/t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        mnist_app.main(["fit", "--data.dataset=mnist", "--trainer.fast_dev_run=true"])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and message in err[0]


# The issues of mnist and sentiment ask for a DDP test in the default suite; the others run with -m slow.
DDP_DEFAULT = {"mnist", "sentiment"}


@pytest.mark.parametrize(
    "name", [name if name in DDP_DEFAULT else pytest.param(name, marks=pytest.mark.slow) for name in sorted(APPS)]
)
def test_ddp_on_two_cpu_processes(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [
        *APPS[name].data,
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        "--trainer.enable_progress_bar=false",
    ]
    done = subprocess.run(
        [sys.executable, "-m", f"apps.{name}", "fit", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed_backend=gloo" in done.stderr + done.stdout
    assert "All distributed processes registered. Starting with 2 processes" in done.stderr + done.stdout
    assert len(list(tmp_path.glob("runs/*/wandb/offline-run-*"))) == 1  # rank zero only
    assert len(list(tmp_path.glob("runs/*/version_*/checkpoints/best-epoch*.ckpt"))) == 1
