"""Measured comparisons, side by side in one run; writes BENCHMARKS.md and prints it.

    python -m benchmarks            # the full run (tens of minutes on 2 CPU cores)
    python -m benchmarks --quick    # a smoke run of a few minutes; CI runs this one

Every ratio is the median over interleaved rounds, with the lowest and highest round in brackets.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from benchmarks.data_path import data_path
from benchmarks.harness import Row, machine
from benchmarks.overhead import lenet_overhead
from benchmarks.scaling import scaling
from benchmarks.tokenization import tokenization

NOT_MEASURED_GPU = Row(
    name="GPU rows (LeNet images/s on GPU-resident tensors vs DataLoader, FLOP utilisation, bf16 vs fp32, torch.compile, cuDNN LSTM vs layer-norm cell)",
    measured="not measured",
    goal="-",
    met=None,
    data="no GPU was available to the session that wrote these benchmarks",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds (CI)")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"), help="markdown file to write")
    args = parser.parse_args(argv)

    rows: list[Row] = []
    for measure in (lenet_overhead, data_path, tokenization):
        rows.append(measure(args.quick))
        print(rows[-1].markdown(), file=sys.stderr, flush=True)
    rows.extend(scaling(args.quick))
    rows.append(NOT_MEASURED_GPU)

    mode = "quick" if args.quick else "full"
    lines = [
        "# Benchmarks",
        "",
        f"`python -m benchmarks{' --quick' if args.quick else ''}` ({mode} run), {datetime.date.today()}, on {machine()}.",
        "Ratios are medians of interleaved rounds (lowest-highest round in brackets).",
        "",
        "| comparison | measured | goal | verdict | data |",
        "|---|---|---|---|---|",
        *(row.markdown() for row in rows),
        "",
    ]
    text = "\n".join(lines)
    partial = args.output.with_name(args.output.name + ".partial")
    partial.write_text(text)
    partial.replace(args.output)
    print(text)


if __name__ == "__main__":
    main()
