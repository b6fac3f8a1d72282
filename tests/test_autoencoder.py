"""Autoencoder: net shapes, the denoising input, and the app from fit to predict on a checkpoint alone."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import apps.autoencoder.__main__ as autoencoder_app
from datamodules.mnist import load_digits_28
from models.autoencoder import ConvAutoencoder
from models.autoencoder_module import AutoencoderModule


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32), (1, 27, 27)])
@pytest.mark.parametrize("latent_size", [2, 16])
def test_autoencoder_maps_images_to_codes_and_back(image_shape, latent_size: int) -> None:
    net = ConvAutoencoder(image_shape, latent_size, channels=8)
    latent, logits = net(torch.rand(4, *image_shape))
    assert latent.shape == (4, latent_size)
    assert logits.shape == (4, *image_shape)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_denoising_input_is_noisy_and_seeded_outside_training() -> None:
    module = AutoencoderModule(noise_std=0.3)
    clean = torch.rand(2, 1, 28, 28)
    assert not torch.equal(module.add_noise(clean, "train", 0), clean)
    assert torch.equal(module.add_noise(clean, "test", 3), module.add_noise(clean, "test", 3))
    assert torch.equal(AutoencoderModule(noise_std=0.0).add_noise(clean, "train", 0), clean)


def test_the_module_undoes_the_datamodule_normalisation() -> None:
    """Given the DataModule's ``input_stats``, normalised pixels come back as the [0, 1] pixels they were."""
    pixels = torch.rand(2, 1, 28, 28)
    module = AutoencoderModule(input_stats=(0.13, 0.31))
    torch.testing.assert_close(module.pixels((pixels - 0.13) / 0.31), pixels)
    torch.testing.assert_close(AutoencoderModule().pixels(pixels), pixels)  # (0, 1): already pixels


def test_predict_returns_codes_and_reconstruction_errors() -> None:
    module = AutoencoderModule(latent_size=4, input_stats=(0.13, 0.31)).eval()
    normalised = (torch.rand(3, 1, 28, 28) - 0.13) / 0.31  # as the DataModule hands them out
    records = module.predict_step((normalised,), 0)
    assert len(records) == 3 and len(records[0]["latent"]) == 4 and records[0]["mse"] > 0
    assert module.reconstructions[0].shape == (3, 28, 28) and module.reconstructions[0].dtype == torch.uint8


def run(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        autoencoder_app.main(list(args))
    return out.getvalue()


def test_denoising_fit_then_test_and_predict_from_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    output = run(
        "fit", "--data.dataset=digits", "--model.noise_std=0.3", "--model.channels=8", "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=4", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
    )
    metrics = dict(pair.split("=") for pair in next(l for l in output.splitlines() if l.startswith("test metrics")).split()[2:])
    assert {"test/mse", "test/bce", "test/loss"} <= set(metrics) and 0 < float(metrics["test/mse"]) < 0.3
    best = tmp_path / next(l.split(": ", 1)[1] for l in output.splitlines() if l.startswith("checkpoint: "))
    for picture in ("test_reconstructions.png", "test_latent_space.png"):
        assert (tmp_path / "runs/autoencoder" / picture).stat().st_size > 1000

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tested = run("test", f"--ckpt_path={best}", "--trainer.logger=false")
    assert f"test/mse={metrics['test/mse']}" in tested  # the seeded test noise gives the same figure

    images, _ = load_digits_28()
    np.save(elsewhere / "digits.npy", images[:10].numpy())
    run("predict", f"--ckpt_path={best}", "--data.predict_path=digits.npy", "--output=codes.jsonl")
    rows = [json.loads(line) for line in (elsewhere / "codes.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and rows[0]["input"] == "digits.npy[0]"
    assert len(rows[0]["latent"]) == 16 and 0 < rows[0]["mse"] < 0.3
    reconstructions = np.load(elsewhere / "codes.reconstructions.npy")
    assert reconstructions.shape == (10, 28, 28) and reconstructions.dtype == np.uint8
