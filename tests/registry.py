"""The apps under test, one entry each: how to keep each small and offline, what a few real epochs are,
what to predict, and how to spoil its data. The parametrized tests (test_apps.py, test_bad_input.py,
test_readme.py, test_config_defaults.py) read this, so a new app is one entry here plus its own files."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import write_mnist

REPO = Path(__file__).resolve().parents[1]
CLASSIFIER_METRICS = {"train/loss", "val/loss", "val/acc", "test/acc", "test/macro_f1"}
KINDS = ("corrupt", "truncated", "empty", "mis-encoded")  # how `spoil` spoils a data file


@dataclass
class App:
    module: str  # the app's module, with `main(args)`: `python -m <module>`
    data: list[str]  # data options that keep the test offline and small
    train: list[str]  # a few real epochs
    predict_inputs: Callable[[Path], tuple[list[str], list[str]]]  # folder -> (args, true labels)
    spoil: Callable[[Path, str], tuple[list[str], str]]  # (folder, kind) -> (args, name of the spoiled file)
    conflict: tuple[list[str], str]  # options that contradict each other, and what the error names
    pictures: list[str] = field(default_factory=list)
    metrics: set[str] = field(default_factory=lambda: set(CLASSIFIER_METRICS))  # logged by `fit`
    test: list[str] = field(default_factory=list)  # limits that `fit`'s test and `test` share
    min_predict_accuracy: float = 0.8
    predicted: str = "label"  # the column of the predict output compared with the truth
    ddp_in_default_suite: bool = False
    config: Path | None = None  # the app's config.yaml, when not beside its module

    @property
    def main(self) -> Callable[[list[str]], None]:
        return importlib.import_module(self.module).main

    @property
    def config_path(self) -> Path:
        return self.config or REPO / self.module.replace(".", "/").removesuffix("/__main__") / "config.yaml"


# -- what each app predicts in the tests ----------------------------------------------------------


def digits_inputs(folder: Path, keep: Callable = lambda labels: slice(0, 20)) -> tuple[list[str], list[str]]:
    """Twenty digits as a .npy array; returns args and true labels."""
    from datamodules.mnist import load_digits_28

    images, labels = load_digits_28()
    rows = keep(labels)
    np.save(folder / "digits.npy", images[rows].numpy())
    return [f"--data.predict_path={folder / 'digits.npy'}"], [str(y) for y in labels[rows].tolist()]


def tweets_inputs(folder: Path) -> tuple[list[str], list[str]]:
    """Twenty positive and twenty negative tweets, in a text file, one per line."""
    from datamodules.sentiment import read_tweets

    texts, labels = read_tweets()
    picked = [i for i, label in enumerate(labels) if label == "positive"][:20]
    picked += [i for i, label in enumerate(labels) if label == "negative"][:20]
    (folder / "texts.txt").write_text("".join(" ".join(texts[i].split()) + "\n" for i in picked), encoding="utf-8")
    return [f"--data.predict_path={folder / 'texts.txt'}"], [labels[i] for i in picked]


def phrases_inputs(folder: Path) -> tuple[list[str], list[str]]:
    """Twenty training phrases of the test's CLDR data, one a line; returns args and references."""
    from datamodules.translation import TranslationDataModule

    data = TranslationDataModule(dataset="cldr", size=1500)
    train = data.split(data.load_pairs("cldr"))["train"][:20]
    (folder / "phrases.txt").write_text("".join(f"{source}\n" for source, _ in train), encoding="utf-8")
    return [f"--data.predict_path={folder / 'phrases.txt'}"], [target for _, target in train]


# -- each app's data file, spoiled four ways ------------------------------------------------------


def spoil_mnist(folder: Path, kind: str) -> tuple[list[str], str]:
    write_mnist(folder / "data")
    images = folder / "data/MNIST/raw/train-images-idx3-ubyte"
    data = images.read_bytes()
    args = [f"--data.data_dir={folder / 'data'}", "--data.dataset=mnist"]
    if kind == "mis-encoded":  # a .gz that is not gzip data, in place of the raw file
        images.unlink()
        images.with_name(images.name + ".gz").write_bytes(b"plain bytes, not gzip " * 20)
        return args, images.name + ".gz"
    images.write_bytes({"corrupt": b"\x12\x34" + data[2:], "truncated": data[: len(data) // 2], "empty": b""}[kind])
    return args, images.name


def spoil_text(folder: Path, kind: str, header: str, row: str, separator: str) -> Path:
    path = folder / f"pairs.{'tsv' if separator == chr(9) else 'csv'}"
    good = header + "".join(row.format(i=i) for i in range(40))
    if kind == "corrupt":
        path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)))
    elif kind == "truncated":  # cut inside a row: a quoted field left open, or a row with no separator
        path.write_text(good + ('"this review never ends' if separator == "," else "this line has no tab"))
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # Latin-1 bytes where UTF-8 is expected
        path.write_bytes((good + row.format(i="café crème")).encode("latin-1"))
    return path


def spoil_reviews(folder: Path, kind: str) -> tuple[list[str], str]:
    path = spoil_text(folder, kind, "text,label\n", "a fine film number {i},pos\nan awful film {i},neg\n", ",")
    return ["--data.dataset=csv", f"--data.path={path}"], path.name


def spoil_pairs(folder: Path, kind: str) -> tuple[list[str], str]:
    path = spoil_text(folder, kind, "", "the cat {i}\tle chat {i}\n", "\t")
    return ["--data.dataset=tsv", f"--data.path={path}"], path.name


def spoil_image_folder(folder: Path, kind: str) -> tuple[list[str], str]:
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (folder / "images" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "images" / label / f"{i}.png")
    bad = folder / "images/dogs/3.png"
    if kind == "mis-encoded":  # text saved under an image's name
        bad.write_text("not an image at all", encoding="utf-16")
    else:
        spoilt = {"corrupt": bytes(rng.integers(0, 256, 500, dtype=np.uint8)), "truncated": bad.read_bytes()[:200], "empty": b""}
        bad.write_bytes(spoilt[kind])
    return ["--data.dataset=folder", f"--data.path={folder / 'images'}", *TORCHVISION_BACKBONE], bad.name


def wine_rows(labelled: bool = True) -> tuple[str, list[str]]:
    """scikit-learn's wine data as CSV text (a header line, then rows; the label last when ``labelled``)."""
    from sklearn.datasets import load_wine

    features, labels = load_wine(return_X_y=True)
    columns = [f"x{i}" for i in range(features.shape[1])] + ["label"] * labelled
    rows = [",".join(f"{v:g}" for v in (*x, *[y] * labelled)) for x, y in zip(features, labels)]
    return ",".join(columns) + "\n" + "".join(f"{row}\n" for row in rows), [str(y) for y in labels]


def rows_inputs(folder: Path) -> tuple[list[str], list[str]]:
    """Every eighth row of the wine data, without its label."""
    text, labels = wine_rows(labelled=False)
    header, *rows = text.splitlines()
    (folder / "rows.csv").write_text("\n".join([header, *rows[::8]]) + "\n", encoding="utf-8")
    return [f"--data.predict_path={folder / 'rows.csv'}"], labels[::8]


def spoil_rows(folder: Path, kind: str) -> tuple[list[str], str]:
    text, _ = wine_rows()
    path = folder / "rows.csv"
    spoilt = {"corrupt": bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
              "truncated": text.encode()[: len(text) // 2 - 3], "empty": b"", "mis-encoded": (text + "1,2,café\n").encode("latin-1")}
    path.write_bytes(spoilt[kind])
    return ["--data.dataset=csv", f"--data.path={path}"], path.name


TORCHVISION_BACKBONE = ["--model.backbone=resnet18", "--model.pretrained=false"]
# A LeNet pretrained on digits 0-4, made once per session (`finetune_backbone`), so the finetune tests
# do not make the app pretrain its default backbone.
FINETUNE_BACKBONE = Path(tempfile.mkdtemp(prefix="backbone-")) / "lenet-digits-0-4.ckpt"
atexit.register(shutil.rmtree, FINETUNE_BACKBONE.parent, True)


def finetune_backbone() -> Path:
    if not FINETUNE_BACKBONE.exists():
        with contextlib.redirect_stdout(io.StringIO()):
            APPS["mnist"].main([
                "fit", "--data.dataset=digits", "--data.classes=[0,1,2,3,4]", "--trainer.max_epochs=3",
                "--trainer.logger=false", f"--checkpoint.dirpath={FINETUNE_BACKBONE.parent}",
                f"--checkpoint.filename={FINETUNE_BACKBONE.stem}", "--checkpoint.save_last=false",
            ])
    return FINETUNE_BACKBONE


APPS = {
    "mnist": App(
        module="apps.mnist.__main__",
        data=["--data.dataset=digits"],
        train=["--trainer.max_epochs=3"],
        predict_inputs=digits_inputs,
        spoil=spoil_mnist,
        conflict=(["fit", "--data.dataset=digits", "--data.labels_per_class=5000"], "labels_per_class"),
        pictures=["test_confusion_matrix.png", "test_misclassified.png"],
        ddp_in_default_suite=False,  # its DDP metrics: the torchrun test (test_reliability) in the default suite
    ),
    "sentiment": App(
        module="apps.sentiment.__main__",
        data=["--data.dataset=tweets", "--data.vectors=null", "--data.max_vocab_size=5000"],
        train=["--trainer.max_epochs=2", "--trainer.limit_train_batches=60", "--trainer.limit_val_batches=10",
               "--model.embedding_dim=32", "--model.hidden_size=32"],
        test=["--trainer.limit_test_batches=10"],
        predict_inputs=tweets_inputs,
        spoil=spoil_reviews,
        conflict=(["fit", "--data.dataset=csv"], "--data.path"),
        pictures=["test_confusion_matrix.png"],
        min_predict_accuracy=0.6,
        ddp_in_default_suite=False,  # -m slow: the default suite's 10 minutes
    ),
    "autoencoder": App(
        module="apps.autoencoder.__main__",
        data=["--data.dataset=digits", "--model.channels=8"],
        train=["--trainer.max_epochs=3"],
        predict_inputs=lambda folder: (digits_inputs(folder)[0], []),  # no labels: a reconstruction error each
        spoil=spoil_mnist,
        conflict=(["test", "--data.dataset=digits"], "--ckpt_path"),
        pictures=["test_reconstructions.png", "test_latent_space.png"],
        metrics={"train/loss", "val/loss", "val/mse", "test/mse", "test/bce"},
    ),
    "finetune": App(
        module="apps.finetune.__main__",
        data=["--data.dataset=digits", f"--model.backbone={FINETUNE_BACKBONE}"],
        train=["--trainer.max_epochs=10"],
        predict_inputs=lambda folder: digits_inputs(folder, keep=lambda labels: (labels >= 5).nonzero().squeeze(1)[:20]),
        spoil=spoil_image_folder,
        conflict=(["fit", "--data.dataset=folder", *TORCHVISION_BACKBONE], "--data.path"),
        pictures=["test_confusion_matrix.png"],
        min_predict_accuracy=0.5,
    ),
    "translate": App(
        module="apps.translate.__main__",
        data=["--data.dataset=cldr", "--data.size=1500"],
        # Small batches at a high rate: in 3 epochs the model spells numbers and names it was taught. It
        # still gets no 4-gram of a val phrase right, so val/bleu, the app's monitor, stays 0 and would keep
        # epoch 0 as the best; the character-level val/chrf picks the epoch instead.
        train=["--trainer.max_epochs=3", "--data.batch_size=16", "--model.optimizer.lr=0.01", "--checkpoint.monitor=val/chrf",
               "--model.embedding_dim=32", "--model.hidden_size=64", "--model.beam_size=2"],
        predict_inputs=phrases_inputs,
        spoil=spoil_pairs,
        conflict=(["fit", "--data.dataset=tsv"], "--data.path"),
        pictures=["test_attention.png"],
        metrics={"train/loss", "val/loss", "val/exact_match", "test/exact_match", "test/bleu", "test/chrf"},
        predicted="translation",
        min_predict_accuracy=0.0,  # few phrases exactly right: test_apps checks each is closer to its own reference
    ),
    "tabular": App(  # the minimal app of tests/tabular_app, built from the bases
        module="tabular_app.__main__",
        config=REPO / "tests" / "tabular_app" / "config.yaml",
        data=[],
        train=["--trainer.max_epochs=20"],
        predict_inputs=rows_inputs,
        spoil=spoil_rows,
        conflict=(["fit", "--data.dataset=csv"], "--data.path"),
        pictures=["test_confusion_matrix.png"],
    ),
}
# The project's own apps (the README documents these); the others are test apps built from the bases.
PROJECT_APPS = [name for name, app in APPS.items() if app.module.startswith("apps.")]
