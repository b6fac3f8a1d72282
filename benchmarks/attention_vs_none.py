"""Attention against the fixed-context baseline, BLEU by source-length quartile (Bahdanau et al. 2014, fig. 2).

    python -m benchmarks.attention_vs_none [--trainer.max_epochs=6 ...]

One run trains ``python -m apps.translate fit`` twice on the same data and split, with the app's
defaults plus any options given here: once as configured (additive attention) and once with
``--model.attention=none``, where every decoder step sees the same summary vector of the sentence.
Both best checkpoints then translate the test split with beam search; the test sentences are cut
into four equal groups by source length in words (as in the paper; BPE tokens would rank dates
first, since every digit is a token), and BLEU and exact match are reported per group.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time

import torch
from torchmetrics.functional.text import bleu_score

import apps.translate.__main__ as translate_app
from datamodules.translation import TranslationDataModule
from models.translator import Translator

QUARTILES = 4


def fit(options: list[str], workdir: str) -> tuple[str, float]:
    """The best checkpoint of a `fit` run with the given options, and its wall time in seconds."""
    out = io.StringIO()
    args = ["fit", "--trainer.logger=false", "--trainer.enable_progress_bar=false", *options]
    started = time.perf_counter()
    with contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        translate_app.main(args)
    checkpoint = next(line.split(": ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("checkpoint: "))
    return os.path.join(workdir, checkpoint), time.perf_counter() - started


@torch.no_grad()
def translate_test_split(checkpoint: str) -> tuple[list[str], list[str], list[str], list[int]]:
    """Sources, references, beam-search translations and source lengths in words of the test split."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hparams = {k: v for k, v in state["datamodule_hyper_parameters"].items() if not k.startswith("_")}  # no _instantiator
    data = TranslationDataModule(**hparams)
    data.setup("test")
    data.load_state_dict(state[TranslationDataModule.__name__])
    model = Translator.load_from_checkpoint(checkpoint, map_location="cpu").eval()
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


def main() -> None:
    options = sys.argv[1:]
    runs = {"additive attention": options, "attention=none": [*options, "--model.attention=none"]}
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, args in runs.items():
            folder = os.path.join(workdir, name.replace(" ", "_").replace("=", "_"))
            os.mkdir(folder)
            checkpoint, seconds[name] = fit(args, folder)
            results[name] = translate_test_split(checkpoint)
    sources, references, _, lengths = results["additive attention"]
    # Same data, split and tokenizers in both runs; align by source phrase all the same.
    for name, (other_sources, _, hypotheses, _) in results.items():
        by_source = dict(zip(other_sources, hypotheses))
        results[name] = (sources, references, [by_source[s] for s in sources], lengths)
    groups = quartile_rows(lengths)
    print(f"\n{len(sources)} test phrases; {os.cpu_count()} CPU cores; fit options: {' '.join(options) or 'app defaults'}")
    header = "| model | " + " | ".join(
        f"Q{q + 1}: {lengths[g[0]]}-{lengths[g[-1]]} words" for q, g in enumerate(groups)
    ) + " | all |"
    print("\nBLEU (exact match) by source-length quartile, beam search on the test split\n")
    print(header)
    print("|---" * (QUARTILES + 2) + "|")
    for name, (_, refs, hyps, _) in results.items():
        cells = [scores(refs, hyps, g) for g in groups] + [scores(refs, hyps, list(range(len(refs))))]
        label = f"{name} ({seconds[name] / 60:.1f} min fit)"
        print(f"| {label} | " + " | ".join(f"{bleu:.3f} ({exact:.3f})" for bleu, exact in cells) + " |")


if __name__ == "__main__":
    main()
