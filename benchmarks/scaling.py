"""Scaling: training throughput and peak memory against batch size, for LeNet-5 and the sentiment LSTM.

Throughput is timed in this process. Peak memory is measured in a fresh process per net, with glibc
told to give every allocation of 64 KiB or more its own mapping (``MALLOC_MMAP_THRESHOLD_``), so freed
tensors leave the resident set at once and its high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``) is the peak of the steps measured, not of whatever ran before them. Linux only.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.harness import Row

LSTM_TOKENS = 32  # tokens per random text: a long tweet


def lenet_step(batch_size: int) -> Callable[[], None]:
    """One training step of the app's LeNet-5, with the AdamW settings of its config, on a random
    MNIST-shaped batch."""
    from benchmarks.overhead import LENET_OPTIMIZER
    from models.lenet import LeNet5

    net = LeNet5()
    optimizer = torch.optim.AdamW(net.parameters(), **LENET_OPTIMIZER)
    images, labels = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))

    def step() -> None:
        loss = F.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def lstm_step(batch_size: int) -> Callable[[], None]:
    """One training step of the sentiment app's default LSTM, with the AdamW settings of its config, on
    random texts of ``LSTM_TOKENS`` tokens."""
    from benchmarks.overhead import LSTM_OPTIMIZER
    from models.lstm import LSTMClassifier

    net = LSTMClassifier(vocab_size=20_000, num_classes=2)
    optimizer = torch.optim.AdamW(net.parameters(), **LSTM_OPTIMIZER)
    tokens = torch.randint(2, 20_000, (batch_size, LSTM_TOKENS))
    lengths = torch.full((batch_size,), LSTM_TOKENS)
    labels = torch.randint(0, 2, (batch_size,))

    def step() -> None:
        loss = F.cross_entropy(net(tokens, lengths), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


NETS = {
    "LeNet-5": (lenet_step, "random MNIST-shaped tensors"),
    "sentiment BiLSTM": (lstm_step, f"random texts of {LSTM_TOKENS} tokens, app defaults (2 layers, 64 units, vocabulary 20,000)"),
}


def per_second(net: str, batch_size: int, steps: int) -> float:
    """Training samples per second, after one untimed warm-up step."""
    step = NETS[net][0](batch_size)
    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - started)


def kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


def peak_mib_child(net: str, sizes: list[int]) -> None:
    """Runs in the subprocess: prints ``{batch size: MiB}``, the peak resident memory of the first two
    training steps (gradients and optimizer state included) above that of the net and its batch."""
    peaks = {}
    for size in sizes:
        step = NETS[net][0](size)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = kib("VmRSS")
        step()
        step()
        peaks[size] = (kib("VmHWM") - before) / 1024
        del step
    print(json.dumps(peaks))


def peak_mib(net: str, sizes: list[int]) -> dict[int, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", net, *map(str, sizes)],
        capture_output=True, text=True, check=True, env=env,
    )
    return {int(size): mib for size, mib in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def scaling(quick: bool) -> list[Row]:
    sizes = [32, 256] if quick else [16, 64, 256, 1024]
    samples = 512 if quick else 8192  # per batch size, so every size runs about as long
    rows = []
    for net, (_, data) in NETS.items():
        peaks = peak_mib(net, sizes)
        figures = [f"{size}: {per_second(net, size, max(3, samples // size)):,.0f}/s, +{peaks[size]:.0f} MiB" for size in sizes]
        rows.append(
            Row(
                name=f"Scaling, {net} training step: samples/s and peak memory by batch size",
                measured="; ".join(figures),
                goal="(recorded)",
                met=None,
                data=data,
            )
        )
    return rows


if __name__ == "__main__":
    peak_mib_child(sys.argv[1], [int(size) for size in sys.argv[2:]])
