"""Measured comparisons, side by side in one run; writes BENCHMARKS.md and prints it.

    python -m benchmarks            # the full run (tens of minutes on 2 CPU cores)
    python -m benchmarks --quick    # a smoke run of a few minutes, small sizes; CI runs this one
    python -m benchmarks --only overhead --output /tmp/overhead.md   # the rows whose label has "overhead"

Every ratio is the median over interleaved rounds, with the lowest and highest round in brackets.
Each row is printed to stderr as soon as it is measured, and the output file is rewritten after every
row (``BENCHMARKS.md.partial`` until the run ends), so a long run that stops keeps what it measured.
A row whose code raises is written as failed and the run goes on; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import ae_vs_pca, attention_vs_none, fashion, gpu, mnist_baseline
from benchmarks.data_path import data_path
from benchmarks.decoding import decoding
from benchmarks.harness import Row, machine, not_measured
from benchmarks.optimizer import fused_adamw
from benchmarks.overhead import lenet_overhead, lstm_overhead
from benchmarks.scaling import scaling
from benchmarks.serving import serving
from benchmarks.tokenization import tokenization

Measure = Callable[[bool], Row | list[Row]]

def provided(module: str, function: str, name: str) -> Measure:
    """A row that ``benchmarks.<module>.<function>(quick)`` measures, or, while that function does not
    exist yet, a row that says so. Errors inside the module are not hidden: they fail the row."""

    def measure(quick: bool) -> Row:
        found = getattr(importlib.import_module(f"benchmarks.{module}"), function, None)
        if found is None:
            return not_measured(name, "-", f"`benchmarks.{module}.{function}(quick)` does not exist yet")
        return found(quick)

    return measure


# In the order of the table: speed first, then quality against the classic baselines, then the GPU.
MEASURES: list[tuple[str, Measure]] = [
    ("LeNet overhead", lenet_overhead),
    ("LSTM overhead", lstm_overhead),
    ("data path", data_path),
    ("tokenization", tokenization),
    ("sequences", provided("packed_vs_padded", "sequences", "Sequences: length buckets vs padding to the maximum")),
    ("decoding", decoding),
    ("fused AdamW", fused_adamw),
    ("scaling", scaling),
    ("serving", serving),
    ("MNIST baseline", mnist_baseline.row),
    ("sentiment baseline", provided("sentiment_baseline", "row", "Quality: LSTM vs TF-IDF + logistic regression")),
    ("AE vs PCA", ae_vs_pca.row),
    ("attention vs none", attention_vs_none.row),
    ("finetune vs scratch", provided("finetune_vs_scratch", "row", "Quality: finetuned vs trained from scratch")),
    ("Fashion-MNIST LeNet vs forest", fashion.lenet_row),
    ("Fashion-MNIST AE vs PCA", fashion.autoencoder_row),
    ("Fashion-MNIST finetune vs scratch", fashion.finetune_row),
    ("Fashion-MNIST finetune vs scratch, 5 labels", fashion.few_labels_row),
    # On a machine without CUDA, each GPU entry is one row marked not measured.
    ("GPU data path", gpu.lenet_data_path),
    ("GPU precision and compile", gpu.lenet_precision_and_compile),
    ("GPU LSTM", gpu.lstm_cells),
]


def failed(label: str, error: BaseException) -> Row:
    message = " ".join(f"{type(error).__name__}: {error}".split())  # one line, for the table
    return Row(name=label, measured="**failed**", goal="-", met=None, data=message[:300])


def document(rows: list[Row], quick: bool, finished: bool) -> str:
    mode = "quick" if quick else "full"
    status = "" if finished else " Incomplete: the run is still going, or stopped."
    return "\n".join(
        [
            "# Benchmarks",
            "",
            f"`python -m benchmarks{' --quick' if quick else ''}` ({mode} run), {datetime.date.today()}, on {machine()}.",
            f"Ratios are medians of interleaved rounds (lowest-highest round in brackets).{status}",
            "",
            "| comparison | measured | goal | verdict | data |",
            "|---|---|---|---|---|",
            *(row.markdown() for row in rows),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds; quality rows say 'full run only' (CI)")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"), help="markdown file to write")
    parser.add_argument("--only", metavar="TEXT", help="measure only the rows whose label contains TEXT, e.g. 'overhead'")
    args = parser.parse_args(argv)
    measures = [(label, measure) for label, measure in MEASURES if args.only is None or args.only.lower() in label.lower()]
    if not measures:
        parser.error(f"--only {args.only!r}: no row label contains it; labels: {', '.join(label for label, _ in MEASURES)}")
    partial = args.output.with_name(args.output.name + ".partial")

    rows: list[Row] = []
    errors = 0
    for label, measure in measures:
        started = time.perf_counter()
        try:
            measured = measure(args.quick)
        except Exception as error:  # noqa: BLE001 - one broken row must not cost the others
            traceback.print_exc()
            measured, errors = failed(label, error), errors + 1
        for row in measured if isinstance(measured, list) else [measured]:
            rows.append(row)
            print(row.markdown(), file=sys.stderr, flush=True)
        print(f"[benchmarks] {label}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        partial.write_text(document(rows, args.quick, finished=False))
    text = document(rows, args.quick, finished=True)
    partial.write_text(text)
    partial.replace(args.output)
    print(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
