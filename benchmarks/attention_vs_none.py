"""Attention against the fixed-context baseline, BLEU by source-length quartile (Bahdanau et al. 2014, fig. 2).

    python -m benchmarks.attention_vs_none [--trainer.max_epochs=6 ...]

One run trains ``python -m apps.translate fit`` twice on the same data and split, with the app's
defaults plus any options given here: once as configured (additive attention) and once with
``--model.attention=none``, where every decoder step sees the same summary vector of the sentence.
Both best checkpoints then translate the test split with beam search; the test sentences are cut
into four equal groups by source length in words (as in the paper; BPE tokens would rank dates
first, since every digit is a token), and BLEU and exact match are reported per group.
The full ``python -m benchmarks`` run takes ``row``: both models trained 2 epochs.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
from torchmetrics.functional.text import bleu_score

import apps.translate.__main__ as translate_app
from benchmarks.harness import Row, full_run_only
from datamodules.translation import TranslationDataModule
from models.translator import Translator

QUARTILES = 4
ATTENTION, NONE = "additive attention", "attention=none"
# The full benchmark run's training: 2 epochs each, as the README's table (the app's default is 5).
FULL_RUN_OPTIONS = ["--trainer.max_epochs=2"]


def fit(options: list[str], workdir: str) -> tuple[str, float]:
    """The best checkpoint of a `fit` run with the given options, and its wall time in seconds."""
    out = io.StringIO()
    args = ["fit", "--trainer.logger=false", "--trainer.enable_progress_bar=false", *options]
    started = time.perf_counter()
    with contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        translate_app.main(args)
    checkpoint = next(line.split(": ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("checkpoint: "))
    return os.path.join(workdir, checkpoint), time.perf_counter() - started


def load(checkpoint: str) -> tuple[TranslationDataModule, Translator]:
    """The DataModule (set up for ``test``, with the checkpoint's tokenizers) and the model of a checkpoint."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hparams = {k: v for k, v in state["datamodule_hyper_parameters"].items() if not k.startswith("_")}  # no _instantiator
    data = TranslationDataModule(**hparams)
    data.setup("test")
    data.load_state_dict(state[TranslationDataModule.__name__])
    return data, Translator.load_from_checkpoint(checkpoint, map_location="cpu").eval()


@torch.no_grad()
def translate_test_split(checkpoint: str) -> tuple[list[str], list[str], list[str], list[int]]:
    """Sources, references, beam-search translations and source lengths in words of the test split."""
    data, model = load(checkpoint)
    h = model.hparams
    sources, references, hypotheses, lengths = [], [], [], []
    for batch in data.test_dataloader():
        tokens, _ = model.net.beam_search(batch["source"], batch["source_lengths"], h.beam_size, h.max_length, h.length_penalty)
        sources += batch["source_text"]
        references += batch["target_text"]
        hypotheses += data.decode(tokens.tolist())
        lengths += [len(text.split()) for text in batch["source_text"]]
    return sources, references, hypotheses, lengths


def quartile_rows(lengths: list[int]) -> list[list[int]]:
    """Indices of the test sentences in four equal groups, shortest source first."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[q * len(order) // QUARTILES : (q + 1) * len(order) // QUARTILES] for q in range(QUARTILES)]


def scores(references: list[str], hypotheses: list[str], rows: list[int]) -> tuple[float, float]:
    """BLEU and exact match of the given rows."""
    hyp, ref = [hypotheses[i] for i in rows], [[references[i]] for i in rows]
    exact = sum(h == r[0] for h, r in zip(hyp, ref)) / len(rows)
    return float(bleu_score(hyp, ref)), exact


@dataclass
class Comparison:
    """BLEU and exact match of both models, per source-length quartile and over all test phrases."""

    groups: list[str]  # "Q1: 1-3 words", ..., "all"
    cells: dict[str, list[tuple[float, float]]]  # model -> (BLEU, exact match) per group
    seconds: dict[str, float]  # model -> fit wall time
    n_test: int


def compare(options: list[str]) -> Comparison:
    """Train both models with ``options``, translate the test split with each, score by quartile."""
    runs = {ATTENTION: options, NONE: [*options, "--model.attention=none"]}
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, args in runs.items():
            folder = os.path.join(workdir, name.replace(" ", "_").replace("=", "_"))
            os.mkdir(folder)
            checkpoint, seconds[name] = fit(args, folder)
            results[name] = translate_test_split(checkpoint)
    sources, references, _, lengths = results[ATTENTION]
    groups = quartile_rows(lengths)
    everything = list(range(len(sources)))
    cells = {}
    for name, (other_sources, _, hypotheses, _) in results.items():
        # Same data, split and tokenizers in both runs; align by source phrase all the same.
        by_source = dict(zip(other_sources, hypotheses))
        aligned = [by_source[s] for s in sources]
        cells[name] = [scores(references, aligned, rows) for rows in [*groups, everything]]
    names = [f"Q{q + 1}: {lengths[g[0]]}-{lengths[g[-1]]} words" for q, g in enumerate(groups)] + ["all"]
    return Comparison(names, cells, seconds, len(sources))


def row(quick: bool) -> Row:
    """The BENCHMARKS.md row: BLEU of both models by quartile, from a full run only (two `fit` runs)."""
    name = f"Quality: attention vs attention=none, test BLEU by source-length quartile ({' '.join(FULL_RUN_OPTIONS)})"
    goal = "attention > none in every quartile"
    if quick:
        return full_run_only(name, goal, "two `python -m apps.translate fit` runs, with and without attention (about 10 min on 2 cores)")
    result = compare(FULL_RUN_OPTIONS)
    attention, none = result.cells[ATTENTION], result.cells[NONE]
    measured = "; ".join(f"{group} {a[0]:.3f} vs {n[0]:.3f}" for group, a, n in zip(result.groups, attention, none))
    fits = ", ".join(f"{model} {seconds / 60:.1f} min" for model, seconds in result.seconds.items())
    return Row(
        name=name,
        measured=measured,
        goal=goal,
        met=all(a[0] > n[0] for a, n in zip(attention[:QUARTILES], none[:QUARTILES])),
        data=f"{result.n_test:,} test phrases of the app's default data (CLDR pairs offline); fit {fits}",
    )


def main() -> None:
    options = sys.argv[1:]
    result = compare(options)
    print(f"\n{result.n_test} test phrases; {os.cpu_count()} CPU cores; fit options: {' '.join(options) or 'app defaults'}")
    print("\nBLEU (exact match) by source-length quartile, beam search on the test split\n")
    print("| model | " + " | ".join(result.groups) + " |")
    print("|---" * (QUARTILES + 2) + "|")
    for name, cells in result.cells.items():
        label = f"{name} ({result.seconds[name] / 60:.1f} min fit)"
        print(f"| {label} | " + " | ".join(f"{bleu:.3f} ({exact:.3f})" for bleu, exact in cells) + " |")


if __name__ == "__main__":
    main()
