"""Framework overhead: the app's LightningModule under a Trainer against the plain PyTorch loop
of the PyTorch tutorials, same net, same batches, same epochs, same optimizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader

from benchmarks.harness import Row, fmt_ratio, interleaved, ratio
from datamodules.mnist import MEAN, STD, MNISTDataModule, TensorBatches, keep_batch, load_digits_28
from models.lenet_classifier import LeNetClassifier


def mnist_shaped_digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits at 28x28, tiled to ``n`` images so an epoch is MNIST-like in steps."""
    images, labels = load_digits_28()
    reps = -(-n // len(images))
    return images.repeat(reps, 1, 1)[:n], labels.repeat(reps)[:n]


def lightning_fit(data: TensorBatches, epochs: int, batch_size: int) -> None:
    seed_everything(0, verbose=False)
    dm = MNISTDataModule(dataset="digits", batch_size=batch_size, augment=False)
    dm.setup("fit")
    dm.splits["train"] = data
    model = LeNetClassifier(dm.label_names)
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
    )
    trainer.fit(model, dm)


def plain_loop(data: TensorBatches, epochs: int, batch_size: int) -> None:
    """The training loop of the PyTorch tutorials, over the same DataLoader and normalisation, and
    updating the same train metrics as the app, so the ratio measures the framework alone."""
    seed_everything(0, verbose=False)
    module = LeNetClassifier([str(d) for d in range(10)])
    model, metrics = module.net, module.metrics["train_metrics"]
    optimizer = torch.optim.AdamW(model.parameters())
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=keep_batch)
    for _ in range(epochs):
        model.train()
        metrics.reset()
        for images, labels in loader:
            images = (images.unsqueeze(1).float() / 255 - MEAN) / STD
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            metrics.update(logits, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()


def lenet_overhead(quick: bool) -> Row:
    n, epochs, repeats, batch_size = (10_000, 1, 3, 64) if quick else (20_000, 2, 5, 64)
    data = TensorBatches(*mnist_shaped_digits(n))
    seconds = interleaved(
        {
            "lightning": lambda: lightning_fit(data, epochs, batch_size),
            "plain": lambda: plain_loop(data, epochs, batch_size),
        },
        repeats,
    )
    median, low, high = ratio(seconds["lightning"], seconds["plain"])
    return Row(
        name=f"Framework overhead, LeNet-5: Lightning app / plain PyTorch loop ({epochs} epoch(s), {repeats} rounds)",
        measured=fmt_ratio(median, low, high),
        goal="<= 1.05x",
        met=median <= 1.05,
        data=f"{n:,} MNIST-shaped digits (scikit-learn's, tiled), batch {batch_size}",
    )
