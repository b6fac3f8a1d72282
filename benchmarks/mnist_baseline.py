"""LeNet-5 (the app's default config) against scikit-learn's SVC on the same test digits.

    python -m benchmarks.mnist_baseline     # prints the table; `python -m benchmarks` takes ``row``

Both use the DataModule's seeded split of scikit-learn's digits: the SVC fits the original 8x8
scans of the train + val images, LeNet trains with `python -m apps.mnist fit` defaults.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time

from sklearn.datasets import load_digits
from sklearn.svm import SVC

import apps.mnist.__main__ as mnist_app
from benchmarks.harness import Row, full_run_only
from datamodules.mnist import MNISTDataModule
from datamodules.sources import seeded_split


def svc_accuracy(seed: int, test_fraction: float, val_fraction: float) -> float:
    digits = load_digits()
    test_idx, val_idx, train_idx = seeded_split(len(digits.data), [test_fraction, val_fraction], seed)
    fit_idx = list(train_idx) + list(val_idx)
    svc = SVC(gamma="scale").fit(digits.data[fit_idx], digits.target[fit_idx])
    return svc.score(digits.data[test_idx], digits.target[test_idx])


def lenet_accuracy() -> tuple[float, float]:
    """Test accuracy of a default `fit` on the digits, and its wall time in seconds."""
    out = io.StringIO()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        mnist_app.main(["fit", "--data.dataset=digits", "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    line = next(l for l in out.getvalue().splitlines() if l.startswith("test metrics: "))
    metrics = dict(pair.split("=") for pair in line.split()[2:])
    return float(metrics["test/acc"]), time.perf_counter() - started


def compare() -> tuple[float, float, float, int]:
    """SVC and LeNet test accuracy on the same split, LeNet's `fit` wall time, and the test size."""
    h = MNISTDataModule().hparams
    svc = svc_accuracy(h.seed, h.test_fraction, h.val_fraction)
    lenet, seconds = lenet_accuracy()
    return svc, lenet, seconds, round(1797 * h.test_fraction)


def row(quick: bool) -> Row:
    """The BENCHMARKS.md row; a full run only (a default `fit`)."""
    name, goal = "Quality: LeNet-5 vs SVC (RBF) test accuracy on the digits", "LeNet >= SVC"
    if quick:
        return full_run_only(name, goal, "a default `python -m apps.mnist fit` and an SVC on the same split")
    svc, lenet, seconds, n_test = compare()
    return Row(
        name=name,
        measured=f"LeNet {lenet:.4f} vs SVC {svc:.4f}",
        goal=goal,
        met=lenet >= svc,
        data=f"{n_test} test images of scikit-learn's digits, seeded split; LeNet: `apps.mnist fit` defaults ({seconds:.0f} s)",
    )


def main() -> None:
    svc, lenet, seconds, n_test = compare()
    print(f"\nscikit-learn digits, seeded split (seed {MNISTDataModule().hparams.seed}), {n_test} test images, {os.cpu_count()} CPU cores")
    print("| model | test accuracy |")
    print("|---|---|")
    print(f"| SVC (RBF, gamma=scale) on the 8x8 scans | {svc:.4f} |")
    print(f"| LeNet-5, `python -m apps.mnist fit` defaults ({seconds:.0f} s) | {lenet:.4f} |")


if __name__ == "__main__":
    main()
