"""The autoencoder (the app's default config) against PCA with as many components, on the same test images.

    python -m benchmarks.ae_vs_pca     # prints the table; `python -m benchmarks` takes ``row``

Both see the DataModule's seeded split of the digits: PCA fits the training images, the
autoencoder trains with `python -m apps.autoencoder fit` defaults; both reconstruct the test images
from a code of the same size. MSE is per pixel on [0, 1] images. Goal: AE <= 0.8 x PCA at size 16.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time

from sklearn.decomposition import PCA

import apps.autoencoder.__main__ as autoencoder_app
from benchmarks.harness import Row, full_run_only
from datamodules.mnist import MNISTDataModule

LATENT_SIZES = (16,)
GOAL = 0.8  # autoencoder MSE / PCA MSE at the first latent size


def pca_mse(latent_size: int) -> tuple[float, int]:
    """Test MSE of PCA with ``latent_size`` components fitted on the training images, and the test size."""
    data = MNISTDataModule(dataset="digits")
    data.setup("fit")
    train, test = (data.splits[s].tensors[0].flatten(1).float().div(255).numpy() for s in ("train", "test"))
    pca = PCA(latent_size, random_state=0).fit(train)
    reconstructed = pca.inverse_transform(pca.transform(test))
    return float(((reconstructed - test) ** 2).mean()), len(test)


def autoencoder_mse(latent_size: int) -> tuple[float, float]:
    """Test MSE of a default `fit` on the digits, and its wall time in seconds."""
    out = io.StringIO()
    started = time.perf_counter()
    args = ["fit", "--data.dataset=digits", f"--model.latent_size={latent_size}", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        autoencoder_app.main(args)
    line = next(l for l in out.getvalue().splitlines() if l.startswith("test metrics: "))
    metrics = dict(pair.split("=") for pair in line.split()[2:])
    return float(metrics["test/mse"]), time.perf_counter() - started


def compare(size: int) -> tuple[float, float, float, int]:
    """PCA and autoencoder test MSE at latent size ``size``, the autoencoder's `fit` wall time, and the test size."""
    pca, n_test = pca_mse(size)
    ae, seconds = autoencoder_mse(size)
    return pca, ae, seconds, n_test


def row(quick: bool) -> Row:
    """The BENCHMARKS.md row at latent size 16; a full run only (a default `fit`)."""
    size = LATENT_SIZES[0]
    name, goal = f"Quality: autoencoder vs PCA, test MSE at latent size {size}", f"AE / PCA <= {GOAL}"
    if quick:
        return full_run_only(name, goal, "a default `python -m apps.autoencoder fit` and PCA on the same split")
    pca, ae, seconds, n_test = compare(size)
    return Row(
        name=name,
        measured=f"{ae / pca:.2f} (AE {ae:.5f}, PCA {pca:.5f})",
        goal=goal,
        met=ae / pca <= GOAL,
        data=f"{n_test} test images of scikit-learn's digits at 28x28, seeded split; AE: `apps.autoencoder fit` defaults ({seconds:.0f} s)",
    )


def main() -> None:
    rows = []
    for size in LATENT_SIZES:
        pca, ae, seconds, n_test = compare(size)
        rows.append(f"| {size} | {pca:.5f} | {ae:.5f} | {ae / pca:.2f} | {seconds:.0f} s |")
    print(f"\nscikit-learn digits resized to 28x28, seeded split, {n_test} test images, {os.cpu_count()} CPU cores")
    print("| latent size | PCA test MSE | autoencoder test MSE | AE / PCA | autoencoder `fit` wall time |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
