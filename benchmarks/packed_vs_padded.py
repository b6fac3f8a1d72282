"""LSTM training speed: length buckets + packed sequences versus padding every batch to the maximum length.

    python -m benchmarks.packed_vs_padded [--examples 256] [--repeats 3] [--max-length 512]

One run times both, interleaved (A B A B ...), so a machine that gets busier or quieter affects both
alike, and reports the median time of a pass over the same examples. The texts are synthetic, with
an IMDB-like long-tailed length distribution: log-normal tokens per text with median 175 and
mean ~230, about the word counts of IMDB's reviews, truncated at ``--max-length``.

- padded: batches in random order, every batch padded to ``--max-length``, ``nn.LSTM`` over all of it
  (the fixed-shape approach);
- bucketed + packed: ``BucketBatchSampler`` batches, padded per batch (``pad_collate``), packed,
  so the LSTM runs exactly each text's own number of steps.

Both are a full training step (forward, backward, AdamW step) of the app's ``LSTMClassifier``
(``pooling=last``). It always packs; with every length equal to the padded width, packing is only a
re-layout of the batch, so the padded side costs what an unpacked ``nn.LSTM`` would.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from datamodules.text import BucketBatchSampler, pad_collate
from models.lstm import LSTMClassifier

VOCAB = 20000


def imdb_like_lengths(n: int, max_length: int, seed: int = 0) -> list[int]:
    """Log-normal lengths (median 175 tokens, long right tail), clipped to [10, max_length]."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(n, generator=generator) * 0.75 + torch.log(torch.tensor(175.0)))
    return lengths.round().clamp(10, max_length).long().tolist()


def train_pass(net: LSTMClassifier, optimizer: torch.optim.Optimizer, batches: list) -> float:
    """Seconds for one training step per batch."""
    started = time.perf_counter()
    for (tokens, lengths), target in batches:
        loss = F.cross_entropy(net(tokens, lengths), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    lengths = imdb_like_lengths(args.examples, args.max_length)
    examples = [(torch.randint(2, VOCAB, (n,)).tolist(), n % 2) for n in lengths]

    # Padded: random batches, each padded to max_length; the LSTM runs max_length steps on every text.
    order = torch.randperm(len(examples)).split(args.batch_size)
    padded = []
    for index in order:
        (tokens, _), target = pad_collate([examples[i] for i in index.tolist()])
        full = F.pad(tokens, (0, args.max_length - tokens.shape[1]))  # (B, max_length)
        padded.append(((full, torch.full((len(index),), args.max_length)), target))
    # Bucketed: similar lengths together, padded per batch, packed in the net.
    sampler = BucketBatchSampler(lengths, args.batch_size, shuffle=True, pool_batches=50)
    bucketed = [pad_collate([examples[i] for i in batch]) for batch in sampler]

    net = LSTMClassifier(VOCAB, 2, embedding_dim=128, hidden_size=128, pooling="last")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    train_pass(net, optimizer, bucketed[:2])  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"padded": [], "bucketed": []}
    for _ in range(args.repeats):
        times["padded"].append(train_pass(net, optimizer, padded))
        times["bucketed"].append(train_pass(net, optimizer, bucketed))

    real = sum(lengths)
    steps = {
        "padded": args.max_length * len(examples),
        "bucketed": sum(int(tokens.shape[1]) * len(tokens) for (tokens, _), _ in bucketed),
    }
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"{len(examples)} texts, {real} tokens (median length {statistics.median(lengths):.0f}, max {max(lengths)}), "
        f"batch {args.batch_size}, {args.repeats} interleaved repeats, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPU cores"
    )
    print("| batching | padded positions | median seconds per pass |")
    print("|---|---|---|")
    print(f"| padded to {args.max_length} every batch | {1 - real / steps['padded']:.0%} | {median['padded']:.2f} |")
    print(f"| length buckets + packed sequences | {1 - real / steps['bucketed']:.1%} | {median['bucketed']:.2f} |")
    print(f"speed-up (padded / bucketed + packed): {median['padded'] / median['bucketed']:.2f}x")


if __name__ == "__main__":
    main()
