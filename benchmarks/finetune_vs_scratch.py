"""Finetuning a pretrained LeNet against the same LeNet trained from scratch, with 10 labels per class.

    python -m benchmarks.finetune_vs_scratch

Offline digits 5-9, 10 labelled training images per class, all of the seeded split's test images
of 5-9. Finetuned: `python -m apps.finetune fit` defaults (LeNet pretrained on digits 0-4, head
first, backbone unfrozen later). Scratch: the same network from random weights, all of it trained
from the first epoch at the full learning rate. Three seeds; each draws its own labelled images.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time

import apps.finetune.__main__ as finetune_app

SEEDS = (0, 1, 2)
SCRATCH = ["--model.pretrained=false", "--model.unfreeze_at_epoch=0", "--model.backbone_lr_factor=1.0", "--model.train_bn=true"]


def accuracy(seed: int, extra: list[str]) -> tuple[float, float]:
    """Test accuracy of one `fit`, and its wall time in seconds."""
    out = io.StringIO()
    args = ["fit", "--data.dataset=digits", f"--data.seed={seed}", f"--seed_everything={seed}", *extra]
    args += ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        finetune_app.main(args)
    line = next(l for l in out.getvalue().splitlines() if l.startswith("test metrics: "))
    return float(dict(pair.split("=") for pair in line.split()[2:])["test/acc"]), time.perf_counter() - started


def main() -> None:
    results: dict[str, list[float]] = {"finetuned": [], "scratch": []}
    seconds: dict[str, list[float]] = {"finetuned": [], "scratch": []}
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir):
        accuracy(SEEDS[0], ["--trainer.max_epochs=1"])  # makes the pretrained backbone once, untimed
        for seed in SEEDS:
            for name, extra in (("finetuned", []), ("scratch", SCRATCH)):
                acc, took = accuracy(seed, extra)
                results[name].append(acc)
                seconds[name].append(took)
    print(f"\noffline digits 5-9, 10 labels per class, seeds {list(SEEDS)}, {os.cpu_count()} CPU cores")
    print("| LeNet-5 | test accuracy, mean ± std | per seed | `fit` wall time, mean |")
    print("|---|---|---|---|")
    for name, accs in results.items():
        per_seed = ", ".join(f"{a:.4f}" for a in accs)
        print(f"| {name} | {statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f} | {per_seed} | {statistics.mean(seconds[name]):.0f} s |")


if __name__ == "__main__":
    main()
