"""Finetuning a pretrained LeNet against the same LeNet trained from scratch, with 10 labels per class.

    python -m benchmarks.finetune_vs_scratch                  # prints the table; `python -m benchmarks` takes ``row``
    python -m benchmarks.finetune_vs_scratch --seeds 3 4 5    # other seeds, e.g. to check a setting chosen on 0-2

Offline digits 5-9, 10 labelled training images per class, all of the seeded split's test images
of 5-9. Finetuned: `python -m apps.finetune fit` defaults (LeNet pretrained on digits 0-4 by the
recipe in ``apps.finetune.PRETRAIN``, a new head, all of it trained at the head's learning rate
from the first epoch). Scratch: the same network, the same labelled images, batches, epochs,
learning rates and checkpoint rule (lowest val/loss), from random weights; its options say so
explicitly, so they hold whatever the finetuning defaults become. Thirteen seeds; each draws its
own split and labelled images: with three, the verdict flipped between runs on rounding alone (the
two arms differ by less than one seed's spread; docs/finetune.md).
Goal: finetuned above scratch on the mean.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time

import apps.finetune.__main__ as finetune_app
from benchmarks.harness import Row, full_run_only, mean_std
from datamodules.images import ImageDataModule

SEEDS = tuple(range(13))
ARMS = {
    "finetuned": [],
    "scratch": ["--model.pretrained=false", "--model.unfreeze_at_epoch=0", "--model.backbone_lr_factor=1.0", "--model.train_bn=true"],
}
NAME = f"Finetune vs scratch (digits 5-9, 10 labels/class, {len(SEEDS)} seeds), test accuracy"
GOAL = "finetune > scratch on the mean"


def accuracy(seed: int, extra: list[str]) -> tuple[float, float]:
    """Test accuracy of one `fit`, and its wall time in seconds."""
    out = io.StringIO()
    args = ["fit", "--data.dataset=digits", f"--data.seed={seed}", f"--seed_everything={seed}", *extra]
    args += ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        finetune_app.main(args)
    took = time.perf_counter() - started
    line = next(l for l in out.getvalue().splitlines() if l.startswith("test metrics: "))
    return float(dict(pair.split("=") for pair in line.split()[2:])["test/acc"]), took


def test_size(seed: int) -> int:
    """How many test images of 5-9 the seed's split holds."""
    data = ImageDataModule(dataset="digits", classes=[5, 6, 7, 8, 9], labels_per_class=10, seed=seed)
    with contextlib.redirect_stderr(io.StringIO()):  # the "[data] using digits" line, said once by fit
        data.setup("test")
    return len(data.splits["test"])


def compare(seeds: tuple[int, ...] = SEEDS) -> tuple[dict[str, list[float]], dict[str, list[float]], list[int]]:
    """Per arm, the test accuracy and `fit` wall time of each seed; and each seed's test size."""
    accs: dict[str, list[float]] = {name: [] for name in ARMS}
    seconds: dict[str, list[float]] = {name: [] for name in ARMS}
    sizes = []
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir):
        accuracy(seeds[0], ["--trainer.max_epochs=1"])  # makes the pretrained backbone once, untimed
        for seed in seeds:
            for name, extra in ARMS.items():
                acc, took = accuracy(seed, extra)
                accs[name].append(acc)
                seconds[name].append(took)
            sizes.append(test_size(seed))
    return accs, seconds, sizes


def row(quick: bool) -> Row:
    """The BENCHMARKS.md row; a full run only (27 `fit`s, 1.5 to 4 minutes on 2 CPU cores)."""
    if quick:
        return full_run_only(NAME, GOAL, "finetuned (`apps.finetune fit` defaults) and scratch `fit`s on the same seeds")
    accs, seconds, sizes = compare()
    finetuned, scratch = accs["finetuned"], accs["scratch"]
    gains = [f - c for f, c in zip(finetuned, scratch)]
    per_seed = "; ".join(f"seed {s}: {f:.3f} vs {c:.3f}" for s, f, c in zip(SEEDS, finetuned, scratch))
    return Row(
        name=NAME,
        measured=(
            f"{mean_std(finetuned)} vs {mean_std(scratch)}; finetuned ahead on {sum(g > 0 for g in gains)} of {len(gains)} "
            f"seeds, by {statistics.mean(gains):+.3f} on the mean (standard error "
            f"{statistics.stdev(gains) / len(gains) ** 0.5:.3f})"
        ),
        goal=GOAL,
        met=statistics.mean(finetuned) > statistics.mean(scratch),
        data=(
            f"scikit-learn's digits 5-9 at 28x28, 50 labelled training images, {min(sizes)}-{max(sizes)} test images "
            f"a seed ({per_seed}); LeNet pretrained on digits 0-4; mean ± std over seeds {SEEDS[0]}-{SEEDS[-1]}"
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finetune_vs_scratch", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="split and training seeds (at least two)")
    seeds = tuple(parser.parse_args().seeds)
    if len(seeds) < 2:
        parser.error("--seeds: give at least two, for a standard deviation")
    accs, seconds, sizes = compare(seeds)
    print(f"\noffline digits 5-9, 10 labels per class, seeds {list(seeds)} ({', '.join(map(str, sizes))} test images), {os.cpu_count()} CPU cores")
    print("| LeNet-5 | test accuracy, mean ± std | per seed | `fit` wall time, mean |")
    print("|---|---|---|---|")
    for name, values in accs.items():
        per_seed = ", ".join(f"{a:.4f}" for a in values)
        print(f"| {name} | {mean_std(values, 4)} | {per_seed} | {statistics.mean(seconds[name]):.0f} s |")
    gains = [f - s for f, s in zip(accs["finetuned"], accs["scratch"])]
    print(f"finetuned - scratch, per seed: {', '.join(f'{g:+.4f}' for g in gains)}; mean {statistics.mean(gains):+.4f}")


if __name__ == "__main__":
    main()
