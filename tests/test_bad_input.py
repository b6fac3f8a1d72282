"""Every app fed bad input: corrupt, truncated, empty and mis-encoded data files, option values of the
wrong type, unknown options and conflicting ones. Each must end in one ``error:`` line that names the
file or option, a non-zero exit, no traceback, and nothing that could pass for a result (no
checkpoint, no metrics file, no test metrics printed).

(Bad predict inputs, from a trained checkpoint, are in test_apps.py; damaged checkpoints in
test_reliability.py.)
"""

from __future__ import annotations

import contextlib
import gzip
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import apps.autoencoder.__main__ as autoencoder_app
import apps.finetune.__main__ as finetune_app
import apps.mnist.__main__ as mnist_app
import apps.sentiment.__main__ as sentiment_app
import apps.translate.__main__ as translate_app
from conftest import write_mnist

MAINS = {
    "mnist": mnist_app.main,
    "autoencoder": autoencoder_app.main,
    "sentiment": sentiment_app.main,
    "translate": translate_app.main,
    "finetune": finetune_app.main,
}
# What keeps each app small and offline when the bad part is an option.
GOOD_DATA = {
    "mnist": ["--data.dataset=digits"],
    "autoencoder": ["--data.dataset=digits"],
    "sentiment": ["--data.dataset=tweets"],
    "translate": ["--data.dataset=cldr", "--data.size=500"],
    "finetune": ["--data.dataset=digits", "--model.backbone=resnet18", "--model.pretrained=false"],
}
KINDS = ("corrupt", "truncated", "empty", "mis-encoded")


# -- each app's data file, spoiled four ways; returns the options that point at it and the file's name


def mnist_files(folder: Path, kind: str) -> tuple[list[str], str]:
    write_mnist(folder / "data")
    images = folder / "data/MNIST/raw/train-images-idx3-ubyte"
    data = images.read_bytes()
    if kind == "corrupt":
        images.write_bytes(b"\x12\x34" + data[2:])  # not the IDX magic number
    elif kind == "truncated":
        images.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        images.write_bytes(b"")
    else:  # a .gz that is not gzip data, in place of the raw file
        images.unlink()
        images.with_name(images.name + ".gz").write_bytes(b"plain bytes, not gzip " * 20)
        return [f"--data.data_dir={folder / 'data'}", "--data.dataset=mnist"], images.name + ".gz"
    return [f"--data.data_dir={folder / 'data'}", "--data.dataset=mnist"], images.name


def text_file(folder: Path, kind: str, header: str, row: str, separator: str) -> Path:
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


def sentiment_file(folder: Path, kind: str) -> tuple[list[str], str]:
    path = text_file(folder, kind, "text,label\n", "a fine film number {i},pos\nan awful film {i},neg\n", ",")
    return ["--data.dataset=csv", f"--data.path={path}"], path.name


def translate_file(folder: Path, kind: str) -> tuple[list[str], str]:
    path = text_file(folder, kind, "", "the cat {i}\tle chat {i}\n", "\t")
    return ["--data.dataset=tsv", f"--data.path={path}"], path.name


def finetune_folder(folder: Path, kind: str) -> tuple[list[str], str]:
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (folder / "images" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "images" / label / f"{i}.png")
    bad = folder / "images/dogs/3.png"
    if kind == "corrupt":
        bad.write_bytes(bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    elif kind == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
    elif kind == "empty":
        bad.write_bytes(b"")
    else:  # text saved under an image's name
        bad.write_text("not an image at all", encoding="utf-16")
    return ["--data.dataset=folder", f"--data.path={folder / 'images'}", "--model.backbone=resnet18",
            "--model.pretrained=false"], bad.name


SPOIL: dict[str, Callable[[Path, str], tuple[list[str], str]]] = {
    "mnist": mnist_files,
    "autoencoder": mnist_files,
    "sentiment": sentiment_file,
    "translate": translate_file,
    "finetune": finetune_folder,
}


def fails_cleanly(app: str, args: list[str], folder: Path, monkeypatch) -> str:
    """Run ``app`` in ``folder``; assert a clean failure and return its error line."""
    monkeypatch.chdir(folder)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        MAINS[app](args)
    errors = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert exit_.value.code not in (0, None), err.getvalue()[-2000:]
    assert "Traceback" not in err.getvalue() and len(errors) == 1, err.getvalue()[-2000:]
    assert "test metrics" not in out.getvalue()
    leftovers = [p for p in folder.rglob("*") if p.suffix == ".ckpt" or p.name in ("metrics.csv", "predictions.csv")]
    assert not leftovers
    return errors[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("app", sorted(MAINS))
def test_a_spoiled_data_file_is_named_in_one_line(app: str, kind: str, tmp_path: Path, monkeypatch) -> None:
    args, name = SPOIL[app](tmp_path, kind)
    line = fails_cleanly(app, ["fit", *args, "--trainer.max_epochs=1"], tmp_path, monkeypatch)
    assert name in line


OPTIONS = {
    "wrong type": (["--trainer.max_epochs=many"], "max_epochs"),
    "wrong type of a data option": (["--data.batch_size=ten"], "batch_size"),
    "impossible value": (["--data.batch_size=0"], "batch_size"),
    "unknown option": (["--model.no_such_option=1"], "no_such_option"),
    "misspelt option": (["--trainer.max_epoch=3"], "max_epoch"),
    "conflicting: an accelerator this machine lacks": (["--trainer.accelerator=mps"], "MPSAccelerator"),
}


@pytest.mark.parametrize("case", sorted(OPTIONS))
@pytest.mark.parametrize("app", sorted(MAINS))
def test_a_bad_option_is_named_in_one_line(app: str, case: str, tmp_path: Path, monkeypatch) -> None:
    args, named = OPTIONS[case]
    line = fails_cleanly(app, ["fit", *GOOD_DATA[app], *args, "--trainer.logger=false"], tmp_path, monkeypatch)
    assert named in line


CONFLICTS = {
    "mnist": (["fit", "--data.dataset=digits", "--data.labels_per_class=5000"], "labels_per_class"),
    "autoencoder": (["test", "--data.dataset=digits"], "--ckpt_path"),
    "sentiment": (["fit", "--data.dataset=csv"], "--data.path"),
    "translate": (["fit", "--data.dataset=tsv"], "--data.path"),
    "finetune": (["fit", "--data.dataset=folder", "--model.backbone=resnet18", "--model.pretrained=false"], "--data.path"),
}


@pytest.mark.parametrize("app", sorted(MAINS))
def test_conflicting_options_are_named_in_one_line(app: str, tmp_path: Path, monkeypatch) -> None:
    args, named = CONFLICTS[app]
    assert named in fails_cleanly(app, [*args, "--trainer.logger=false"], tmp_path, monkeypatch)
