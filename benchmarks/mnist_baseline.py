"""LeNet-5 (the app's default config) against scikit-learn's SVC on the same test digits, over three
seeded splits.

    python -m benchmarks.mnist_baseline     # prints the table; `python -m benchmarks` takes ``row``

Each seed draws its own split of scikit-learn's digits (``--data.seed``) and seeds LeNet's training
(``--seed_everything``): the SVC fits the original 8x8 scans of that split's train + val images,
LeNet trains with `python -m apps.mnist fit` defaults otherwise. One split's 359 test images tell the
two apart by a few images, less than a change of seed or of CPU moves LeNet; the mean over seeds
does better.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time

from sklearn.datasets import load_digits
from sklearn.svm import SVC

import apps.mnist.__main__ as mnist_app
from benchmarks.harness import Row, full_run_only, mean_std
from datamodules.mnist import MNISTDataModule
from datamodules.base import seeded_split

SEEDS = (0, 1, 2)


def svc_accuracy(seed: int, test_fraction: float, val_fraction: float) -> float:
    digits = load_digits()
    test_idx, val_idx, train_idx = seeded_split(len(digits.data), [test_fraction, val_fraction], seed)
    fit_idx = list(train_idx) + list(val_idx)
    svc = SVC(gamma="scale").fit(digits.data[fit_idx], digits.target[fit_idx])
    return svc.score(digits.data[test_idx], digits.target[test_idx])


def lenet_accuracy(seed: int) -> tuple[float, float]:
    """Test accuracy of a default `fit` on the digits split by ``seed``, and its wall time in seconds."""
    out = io.StringIO()
    started = time.perf_counter()
    args = ["fit", "--data.dataset=digits", f"--data.seed={seed}", f"--seed_everything={seed}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        mnist_app.main(args)
    line = next(l for l in out.getvalue().splitlines() if l.startswith("test metrics: "))
    metrics = dict(pair.split("=") for pair in line.split()[2:])
    return float(metrics["test/acc"]), time.perf_counter() - started


def compare(seeds: tuple[int, ...] = SEEDS) -> tuple[list[float], list[float], list[float], int]:
    """Per seed, SVC and LeNet test accuracy on that seed's split and LeNet's `fit` wall time; the test size."""
    h = MNISTDataModule().hparams
    svc = [svc_accuracy(seed, h.test_fraction, h.val_fraction) for seed in seeds]
    lenet, seconds = zip(*(lenet_accuracy(seed) for seed in seeds))
    return svc, list(lenet), list(seconds), round(1797 * h.test_fraction)


def row(quick: bool) -> Row:
    """The BENCHMARKS.md row; a full run only (a default `fit` a seed)."""
    name = f"Quality: LeNet-5 vs SVC (RBF) test accuracy on the digits ({len(SEEDS)} seeds)"
    goal = "LeNet >= SVC on the mean"
    if quick:
        return full_run_only(name, goal, "default `python -m apps.mnist fit`s and SVCs on the same splits")
    svc, lenet, seconds, n_test = compare()
    per_seed = "; ".join(f"seed {s}: {a:.4f} vs {b:.4f}" for s, a, b in zip(SEEDS, lenet, svc))
    return Row(
        name=name,
        measured=f"LeNet {mean_std(lenet, 4)} vs SVC {mean_std(svc, 4)}",
        goal=goal,
        met=statistics.mean(lenet) >= statistics.mean(svc),
        data=(
            f"{n_test} test images of scikit-learn's digits a seed ({per_seed}); LeNet: `apps.mnist fit` defaults "
            f"({statistics.mean(seconds):.0f} s a fit); mean ± std over seeds {list(SEEDS)}"
        ),
    )


def main() -> None:
    svc, lenet, seconds, n_test = compare()
    print(f"\nscikit-learn digits, seeded splits {list(SEEDS)}, {n_test} test images each, {os.cpu_count()} CPU cores")
    print("| model | test accuracy, mean ± std | per seed |")
    print("|---|---|---|")
    print(f"| SVC (RBF, gamma=scale) on the 8x8 scans | {mean_std(svc, 4)} | {', '.join(f'{a:.4f}' for a in svc)} |")
    print(
        f"| LeNet-5, `python -m apps.mnist fit` defaults ({statistics.mean(seconds):.0f} s a fit) | {mean_std(lenet, 4)} "
        f"| {', '.join(f'{a:.4f}' for a in lenet)} |"
    )


if __name__ == "__main__":
    main()
