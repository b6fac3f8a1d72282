"""LSTM training speed: length buckets (each batch padded to its own longest text) versus padding every
batch to the maximum length.

    python -m benchmarks.packed_vs_padded [--examples 256] [--repeats 3] [--max-length 512] [--packed]

One run times both, interleaved (A B B A ...), so a machine that gets busier or quieter affects both
alike; the speed-up is the median of the per-round ratios (``benchmarks.harness``). The texts are
synthetic, with an IMDB-like long-tailed length distribution: log-normal tokens per text with median
175 and mean ~230, about the word counts of IMDB's reviews, truncated at ``--max-length``.

- padded: batches in random order, every batch padded to ``--max-length`` (the fixed-shape approach);
- bucketed: ``BucketBatchSampler`` batches padded per batch (``pad_collate``), as the app trains.

Both are a full training step (forward, backward, AdamW step) of the app's ``LSTMClassifier``
(``pooling=last``), on the device's own path: unpacked on CPU (oneDNN), packed on CUDA (cuDNN).
``--packed`` also times the bucketed batches forced through packed sequences, the path this net took
on every device before, to show what packing costs on a CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
import torch.nn.functional as F

from benchmarks.harness import Row, fmt_ratio, interleaved, ratio
from datamodules.text import BucketBatchSampler, pad_collate
from models.lstm import LSTMClassifier

VOCAB = 20000
Batch = tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]


def imdb_like_lengths(n: int, max_length: int, seed: int = 0) -> list[int]:
    """Log-normal lengths (median 175 tokens, long right tail), clipped to [10, max_length]."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(n, generator=generator) * 0.75 + torch.log(torch.tensor(175.0)))
    return lengths.round().clamp(10, max_length).long().tolist()


def batches(examples: int, batch_size: int, max_length: int, corpus: int) -> tuple[list[int], list[Batch], list[Batch]]:
    """Lengths, padded-to-max batches and bucketed batches of the same ``examples`` synthetic texts.

    The bucketed batches are drawn from those ``BucketBatchSampler`` makes over a whole epoch of
    ``corpus`` texts (IMDB's training set has 25,000): bucketing a few hundred texts alone would leave
    more padding per batch than a real epoch has. They are the epoch's batches at evenly spaced
    quantiles of their width, so that even a few of them span short to long texts as the epoch does.
    The padded side gets the same texts, shuffled into batches.
    """
    generator = torch.Generator().manual_seed(0)
    all_lengths = imdb_like_lengths(corpus, max_length)
    epoch = sorted(BucketBatchSampler(all_lengths, batch_size, shuffle=True, pool_batches=50),
                   key=lambda batch: max(all_lengths[i] for i in batch))
    n = max(1, examples // batch_size)
    chosen = [epoch[int((k + 0.5) * len(epoch) / n)] for k in range(n)]
    lengths = [all_lengths[i] for batch in chosen for i in batch]
    texts = [(torch.randint(2, VOCAB, (n,), generator=generator).tolist(), n % 2) for n in lengths]
    bucketed, start = [], 0
    for batch in chosen:
        bucketed.append(pad_collate(texts[start : start + len(batch)]))
        start += len(batch)
    padded = []
    for index in torch.randperm(len(texts), generator=generator).split(batch_size):
        (tokens, lengths_), target = pad_collate([texts[i] for i in index.tolist()])
        full = F.pad(tokens, (0, max_length - tokens.shape[1]))  # (B, max_length)
        # Every text counts as max_length long: the LSTM runs, and pools over, all of it.
        padded.append(((full, torch.full_like(lengths_, max_length)), target))
    return lengths, padded, bucketed


def train_pass(net: LSTMClassifier, optimizer: torch.optim.Optimizer, data: list[Batch]) -> None:
    """One training step per batch."""
    for (tokens, lengths), target in data:
        loss = F.cross_entropy(net(tokens, lengths), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def measure(examples: int, batch_size: int, max_length: int, corpus: int, repeats: int, hidden: int,
            packed: bool = False) -> tuple[dict[str, list[float]], list[int], list[Batch]]:
    """Seconds per pass of each candidate over ``repeats`` interleaved rounds, the lengths and the
    bucketed batches."""
    lengths, padded, bucketed = batches(examples, batch_size, max_length, corpus)
    net = LSTMClassifier(VOCAB, 2, embedding_dim=hidden, hidden_size=hidden, pooling="last")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def packed_pass() -> None:
        net.rnn.pack = True
        try:
            train_pass(net, optimizer, bucketed)
        finally:
            net.rnn.pack = None

    candidates = {"padded": lambda: train_pass(net, optimizer, padded),
                  "bucketed": lambda: train_pass(net, optimizer, bucketed)}
    if packed:
        candidates["bucketed + packed"] = packed_pass
    return interleaved(candidates, repeats), lengths, bucketed


def padding_share(data: list[Batch], real_tokens: int) -> float:
    return 1 - real_tokens / sum(tokens.numel() for (tokens, _), _ in data)


def sequences(quick: bool) -> Row:
    """The benchmarks row: bucketed against padded-to-max training steps, on IMDB-like lengths."""
    examples, batch_size, repeats, hidden = (64, 16, 3, 64) if quick else (256, 32, 5, 128)
    seconds, lengths, bucketed = measure(examples, batch_size, 512, 25_000, repeats, hidden)
    median, low, high = ratio(seconds["padded"], seconds["bucketed"])
    return Row(
        name=f"Sequences: LSTM train step, length buckets vs padding to max ({repeats} rounds)",
        measured=fmt_ratio(median, low, high),
        goal=">= 2x",
        met=median >= 2,
        data=(f"{examples} synthetic texts (bucketed as in an epoch of 25,000), IMDB-like log-normal lengths (median {statistics.median(lengths):.0f}, "
              f"max 512 tokens), batch {batch_size}, 2-layer BiLSTM {hidden}/{hidden}, "
              f"{padding_share(bucketed, sum(lengths)):.0%} of bucketed positions padding"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--corpus", type=int, default=25_000, help="texts in the epoch the buckets are drawn from")
    parser.add_argument("--hidden", type=int, default=128, help="embedding and LSTM state size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--packed", action="store_true", help="also time bucketed batches as packed sequences")
    args = parser.parse_args()

    seconds, lengths, bucketed = measure(args.examples, args.batch_size, args.max_length, args.corpus, args.repeats,
                                         args.hidden, args.packed)
    real = sum(lengths)
    print(
        f"{len(lengths)} texts in {len(bucketed)} batches drawn from an epoch of {args.corpus:,}, {real} tokens (median length {statistics.median(lengths):.0f}, max {max(lengths)}), "
        f"batch {args.batch_size}, {args.repeats} interleaved rounds, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPU cores"
    )
    print("| batching | padded positions | median seconds per pass | speed-up over padded to max |")
    print("|---|---|---|---|")
    shares = {"padded": 1 - real / (args.max_length * len(lengths)), "bucketed": padding_share(bucketed, real)}
    shares["bucketed + packed"] = shares["bucketed"]
    labels = {"padded": f"padded to {args.max_length} every batch", "bucketed": "length buckets, padded per batch",
              "bucketed + packed": "length buckets, packed sequences"}
    for name, times in seconds.items():
        speedup = fmt_ratio(*ratio(seconds["padded"], times))
        print(f"| {labels[name]} | {shares[name]:.1%} | {statistics.median(times):.2f} | {speedup} |")


if __name__ == "__main__":
    main()
