"""Decoding: the translate app's batched beam search against translating one sentence at a time.

Both run ``Seq2Seq.beam_search`` with the app's settings (beam 4, length penalty 0.6) on the same
test phrases of the offline CLDR pairs: batched, on the DataModule's test batches (64 phrases of
similar length, padded to the longest); one at a time, on each phrase alone, unpadded. Both are
timed with torch on all cores, as the app runs (a batch's matrix products use them; a single phrase's
are too small to), and on one thread. The same phrases are also decoded in batches four times as
large: when that is no faster, a batch's steps are bound by its matrix products rather than by
per-step overheads, and larger batches would not raise the ratio.

- full run: the app's model trained for 1 epoch (``python -m apps.translate fit
  --trainer.max_epochs=1``, defaults otherwise), decoding up to the app's ``max_length`` and stopping
  at ``[EOS]``: a sentence leaves its batch once its search has settled.
- quick run: an untrained model on 2,000 pairs, with ``[EOS]`` made impossible, so every phrase
  decodes exactly as many steps as the longest reference among them. Without training the steps
  taken do not depend on the weights; with ``[EOS]`` allowed they would be random.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable

import torch

from benchmarks.attention_vs_none import fit, load
from benchmarks.harness import Row, fmt_ratio, interleaved, ratio
from datamodules.text import EOS_ID
from datamodules.translation import TranslationDataModule
from models.translator import Translator

GOAL = 10.0


def on_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``n`` torch threads."""

    def run() -> object:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def untrained(size: int) -> tuple[TranslationDataModule, Translator]:
    """CLDR pairs with tokenizers trained on them, and a seeded untrained model that never emits [EOS]."""
    data = TranslationDataModule(dataset="cldr", size=size)
    data.setup("fit")
    torch.manual_seed(0)
    model = Translator(data.source_vocab_size, data.target_vocab_size).eval()
    with torch.no_grad():
        model.net.decoder.out.bias[EOS_ID] = float("-inf")
    return data, model


def trained(workdir: str) -> tuple[TranslationDataModule, Translator]:
    """The app's model after one epoch on the CLDR pairs (app defaults otherwise), and its DataModule."""
    checkpoint, _ = fit(["--data.dataset=cldr", "--trainer.max_epochs=1"], workdir)
    return load(checkpoint)


def sampled_test_batches(data: TranslationDataModule, n: int) -> list[dict]:
    """The DataModule's test batches (length buckets) of ``n`` test pairs drawn with a fixed seed."""
    data.splits["test"] = random.Random(0).sample(data.splits["test"], n)
    return list(data.test_dataloader())


def larger_batches(data: TranslationDataModule, factor: int) -> list[dict]:
    """The same test pairs in batches ``factor`` times as large."""
    size = data.hparams.batch_size
    data.hparams.batch_size = size * factor
    try:
        return list(data.test_dataloader())
    finally:
        data.hparams.batch_size = size


def compare(data: TranslationDataModule, model: Translator, batches: list[dict], repeats: int, max_length: int,
            model_used: str) -> Row:
    """Time both ways of decoding the phrases of ``batches`` with ``model``."""
    h, n = model.hparams, sum(len(batch["source"]) for batch in batches)

    def search(source: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        tokens, _ = model.net.beam_search(source, lengths, h.beam_size, max_length, h.length_penalty)
        return tokens.tolist()

    def batched(of: list[dict] = batches) -> list[list[int]]:
        return [ids for batch in of for ids in search(batch["source"], batch["source_lengths"])]

    def one_at_a_time() -> list[list[int]]:
        translations = []
        for batch in batches:
            for source, length in zip(batch["source"], batch["source_lengths"]):
                translations += search(source[None, :length], length[None])  # (1, S): no padding
        return translations

    translations: dict[str, list[str]] = {}

    def keep(name: str, decode) -> None:
        translations[name] = data.decode(decode())

    cores, factor = os.cpu_count() or 1, 4
    larger = larger_batches(data, factor)
    seconds = interleaved(
        {
            "batched": on_threads(cores, lambda: keep("batched", batched)),
            "single": on_threads(cores, lambda: keep("single", one_at_a_time)),
            "batched, 1 thread": on_threads(1, batched),
            "single, 1 thread": on_threads(1, one_at_a_time),
            "larger batches": on_threads(cores, lambda: batched(larger)),
        },
        repeats,
    )
    median, low, high = ratio(seconds["single"], seconds["batched"])
    one_thread, _, _ = ratio(seconds["single, 1 thread"], seconds["batched, 1 thread"])
    # Near 1 when a batch's steps are bound by its matrix products rather than by per-step overheads.
    larger_speedup, _, _ = ratio(seconds["batched"], seconds["larger batches"])
    same = sum(a == b for a, b in zip(translations["batched"], translations["single"]))
    return Row(
        name=(
            f"Decoding: batched beam search / one sentence at a time (beam {h.beam_size}, {repeats} rounds, "
            f"torch on all {cores} cores, {n / min(seconds['batched']):,.0f} phrases/s batched)"
        ),
        measured=(
            f"{fmt_ratio(median, low, high)}; on 1 thread {one_thread:.2f}x; batches {factor}x as large "
            f"decode {larger_speedup:.2f}x as fast as the app's"
        ),
        goal=f">= {GOAL:.0f}x",
        met=median >= GOAL,
        data=(
            f"{n:,} test phrases of the CLDR en->fr pairs, {len(batches)} test batch(es) of up to {data.hparams.batch_size}; "
            f"{model_used}; same translation both ways for {same}/{n}"
        ),
    )


def decoding(quick: bool) -> Row:
    if quick:
        data, model = untrained(size=2_000)
        batches = sampled_test_batches(data, 32)
        # As many steps as the longest reference among them: target (B, T) is [BOS] ... [EOS].
        steps = max(batch["target"].shape[1] for batch in batches) - 1
        return compare(data, model, batches, 3, steps, f"untrained model, [EOS] disabled: every phrase decodes {steps} steps")
    with tempfile.TemporaryDirectory() as workdir:
        data, model = trained(workdir)
    steps = model.hparams.max_length
    used = f"model trained 1 epoch (app defaults), up to {steps} steps, stopping at [EOS]"
    return compare(data, model, sampled_test_batches(data, 512), 3, steps, used)
