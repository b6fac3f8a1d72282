"""Finetuning a pretrained encoder against the same encoder trained from scratch, with 10 labels per class.

    python -m benchmarks.finetune_vs_scratch     # prints the table; `python -m benchmarks` takes ``row``

Offline digits 5-9, 10 labelled training images per class, all of the seeded split's validation and
test images of 5-9. The network: the encoder of ``apps.autoencoder`` (latent size 64) with a new
linear head, as ``python -m apps.finetune fit`` builds it by default.

Finetuned: the encoder of an autoencoder pretrained by the default recipe (``models.finetune.RECIPES``)
on the training images of all ten digits, without their labels. Each seed pretrains its own, on its
own split (``--data.seed``), so the pretraining never sees that seed's validation or test images.
Scratch: the same network, labelled images, batches and epochs, from random weights, all of it
trained at the head's learning rate from the first epoch. Three seeds; each draws its own split
and labelled images. The schedule was chosen by validation accuracy; the table shows both.
Goal: finetuned above scratch on the mean.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time

import torch

import apps.autoencoder.__main__ as autoencoder_app
import apps.finetune.__main__ as finetune_app
from benchmarks.harness import Row, full_run_only
from datamodules.images import ImageDataModule
from models.finetune import DEFAULT_BACKBONE, RECIPES

SEEDS = (0, 1, 2)
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
ARMS = {
    "finetuned": [],
    "scratch": ["--model.pretrained=false", "--model.unfreeze_at_epoch=0", "--model.backbone_lr_factor=1.0", "--model.train_bn=true"],
}
NAME = "Finetune vs scratch (autoencoder encoder, digits 5-9, 10 labels/class, 3 seeds), test accuracy"
GOAL = "finetune > scratch on the mean"


def pretrain(seed: int) -> str:
    """The default backbone's recipe on ``seed``'s split (training images of all digits, no labels); its path."""
    app, _, *recipe = RECIPES[DEFAULT_BACKBONE]
    assert app == "apps.autoencoder"
    path = f"pretrained/autoencoder-seed{seed}.ckpt"
    args = ["fit", *recipe, "--data.dataset=digits", f"--data.seed={seed}", f"--seed_everything={seed}", *QUIET]
    args += ["--checkpoint.dirpath=pretrained", f"--checkpoint.filename=autoencoder-seed{seed}", "--checkpoint.save_last=false"]
    with contextlib.redirect_stdout(io.StringIO()):
        autoencoder_app.main(args)
    return path


def accuracy(seed: int, backbone: str, arm: str) -> tuple[float, float, float]:
    """Best validation accuracy and test accuracy of one arm's `fit` (the best checkpoint), and its wall time in seconds."""
    out = io.StringIO()
    args = ["fit", "--data.dataset=digits", f"--data.seed={seed}", f"--seed_everything={seed}", f"--model.backbone={backbone}"]
    args += [*ARMS[arm], *QUIET, f"--checkpoint.dirpath=finetune-seed{seed}-{arm}", "--checkpoint.save_last=false"]
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        finetune_app.main(args)
    took = time.perf_counter() - started
    lines = out.getvalue().splitlines()
    test_line = next(l for l in lines if l.startswith("test metrics: "))
    test = float(dict(pair.split("=") for pair in test_line.split()[2:])["test/acc"])
    best = next(l.split(": ", 1)[1] for l in lines if l.startswith("checkpoint: "))
    callbacks = torch.load(best, map_location="cpu", weights_only=True)["callbacks"]
    val = next(float(state["best_model_score"]) for key, state in callbacks.items() if key.startswith("ModelCheckpoint"))
    return val, test, took


def split_sizes(seed: int) -> tuple[int, int]:
    """How many validation and test images of 5-9 the seed's split holds."""
    data = ImageDataModule(dataset="digits", classes=[5, 6, 7, 8, 9], labels_per_class=10, seed=seed)
    with contextlib.redirect_stderr(io.StringIO()):  # the "[data] using digits" line, said once by fit
        data.setup("fit")
    return len(data.splits["val"]), len(data.splits["test"])


def compare() -> tuple[dict[str, dict[str, list[float]]], list[float], list[tuple[int, int]]]:
    """Per arm, the validation and test accuracy and `fit` seconds of each seed; each seed's pretraining
    seconds and its validation and test sizes."""
    results = {name: {"val": [], "test": [], "seconds": []} for name in ARMS}
    pretraining, sizes = [], []
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir):
        for seed in SEEDS:
            started = time.perf_counter()
            backbone = pretrain(seed)
            pretraining.append(time.perf_counter() - started)
            for name in ARMS:
                for key, value in zip(("val", "test", "seconds"), accuracy(seed, backbone, name)):
                    results[name][key].append(value)
            sizes.append(split_sizes(seed))
    return results, pretraining, sizes


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def row(quick: bool) -> Row:
    """The BENCHMARKS.md row; a full run only (3 autoencoders and 6 `fit`s, about 4 minutes on 2 CPU cores)."""
    if quick:
        return full_run_only(
            NAME, GOAL, "per seed, an autoencoder pretrained on the split's training images, then finetuned and scratch `fit`s"
        )
    results, _, sizes = compare()
    finetuned, scratch = results["finetuned"]["test"], results["scratch"]["test"]
    per_seed = "; ".join(f"seed {s}: {f:.3f} vs {c:.3f}" for s, f, c in zip(SEEDS, finetuned, scratch))
    tests = [t for _, t in sizes]
    return Row(
        name=NAME,
        measured=f"{spread(finetuned)} vs {spread(scratch)}",
        goal=GOAL,
        met=statistics.mean(finetuned) > statistics.mean(scratch),
        data=(
            f"scikit-learn's digits 5-9 at 28x28, 50 labelled training images, {min(tests)}-{max(tests)} test images "
            f"a seed ({per_seed}); encoder pretrained as an autoencoder on the seed's training images of all digits, "
            f"without labels; validation accuracy {spread(results['finetuned']['val'])} vs {spread(results['scratch']['val'])}; "
            f"mean ± std over seeds {list(SEEDS)}"
        ),
    )


def main() -> None:
    results, pretraining, sizes = compare()
    print(
        f"\noffline digits 5-9, 10 labels per class, seeds {list(SEEDS)} "
        f"(validation/test images: {', '.join(f'{v}/{t}' for v, t in sizes)}), {os.cpu_count()} CPU cores; "
        f"autoencoder pretraining {statistics.mean(pretraining):.0f} s a seed"
    )
    print("| encoder + head | val accuracy, mean ± std | test accuracy, mean ± std | test per seed | `fit` wall time, mean |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        val, test = r["val"], r["test"]
        per_seed = ", ".join(f"{a:.4f}" for a in test)
        print(
            f"| {name} | {statistics.mean(val):.4f} ± {statistics.stdev(val):.4f} | {statistics.mean(test):.4f} ± "
            f"{statistics.stdev(test):.4f} | {per_seed} | {statistics.mean(r['seconds']):.0f} s |"
        )
    gains = [f - s for f, s in zip(results["finetuned"]["test"], results["scratch"]["test"])]
    print(f"finetuned - scratch (test), per seed: {', '.join(f'{g:+.4f}' for g in gains)}; mean {statistics.mean(gains):+.4f}")


if __name__ == "__main__":
    main()
