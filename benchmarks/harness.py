"""Side-by-side measurement: interleaved repeats, median and spread, one markdown row per comparison."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Row:
    """One line of BENCHMARKS.md: what was compared, the measured figure, and the goal."""

    name: str
    measured: str  # e.g. "1.03x (0.98-1.07)"
    goal: str  # e.g. "<= 1.05x"
    met: bool | None  # None: no goal, or not measured
    data: str  # which data the row used

    def markdown(self) -> str:
        verdict = {True: "met", False: "**not met**", None: "-"}[self.met]
        return f"| {self.name} | {self.measured} | {self.goal} | {verdict} | {self.data} |"


def machine() -> str:
    """The machine the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, torch threads {torch.get_num_threads()}"


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each candidate over ``repeats`` rounds, alternating them so drift hits all alike.

    One untimed warm-up call of each comes first (imports, allocator, thread pools).
    """
    for fn in candidates.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(repeats):
        names = list(candidates) if round_ % 2 == 0 else list(reversed(candidates))
        for name in names:
            seconds[name].append(timed(candidates[name]))
    return seconds


def ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Median of the per-round ratios, with their min and max: rounds pair up measurements taken
    moments apart, so the ratio is steadier than the ratio of medians."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return statistics.median(ratios), min(ratios), max(ratios)


def fmt_ratio(median: float, low: float, high: float) -> str:
    return f"{median:.2f}x ({low:.2f}-{high:.2f})"
