"""Scaling: training throughput and peak memory against batch size. Each batch size runs in a fresh
process, so its peak resident memory (above the process's own baseline) is its own."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.harness import Row

NETS = {}


def lenet_step_factory(batch_size: int):
    from models.lenet import LeNet5

    net = LeNet5()
    optimizer = torch.optim.AdamW(net.parameters())
    images, labels = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))

    def step() -> None:
        loss = F.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


NETS["LeNet-5"] = lenet_step_factory


def child(net: str, batch_size: int, steps: int) -> None:
    """Runs in the subprocess: prints samples/s and peak MiB above the baseline as JSON."""
    step = NETS[net](batch_size)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"per_second": batch_size * steps / seconds, "peak_mib": (peak - baseline) / 1024}))


def measure(net: str, batch_size: int, steps: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", net, str(batch_size), str(steps)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def scaling(quick: bool) -> list[Row]:
    sizes = (32, 256) if quick else (16, 64, 256, 1024)
    rows = []
    for net in NETS:
        figures = []
        for size in sizes:
            m = measure(net, size, steps=max(5, 2048 // size))
            figures.append(f"{size}: {m['per_second']:,.0f}/s, +{m['peak_mib']:.0f} MiB")
        rows.append(
            Row(
                name=f"Scaling, {net} training step: samples/s and peak memory by batch size",
                measured="; ".join(figures),
                goal="(recorded)",
                met=None,
                data="random MNIST-shaped tensors" if net == "LeNet-5" else "random token batches",
            )
        )
    return rows


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
