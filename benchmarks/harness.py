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
        """The row as one line of a markdown table: a ``|`` inside a cell is escaped, line breaks become spaces."""
        verdict = {True: "met", False: "**not met**", None: "-"}[self.met]
        cells = [self.name, self.measured, self.goal, verdict, self.data]
        return "| " + " | ".join(" ".join(cell.replace("|", "\\|").split()) for cell in cells) + " |"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's model name (from Linux's ``/proc/cpuinfo``), else its architecture."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def machine() -> str:
    """The machine the figures were measured on."""
    # The vector instructions torch's CPU kernels use (AVX2, AVX512, ...): two machines that report the
    # same model name ("AMD EPYC" on a virtual machine) can differ here, and the ratios with them.
    cpu = f"{cpu_model()}, torch kernels {torch.backends.cpu.get_cpu_capability()}"
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


def difference(minuend: list[float], subtrahend: list[float]) -> tuple[float, float, float]:
    """Median of the per-round differences, with their min and max (paired as in ``ratio``)."""
    differences = [a - b for a, b in zip(minuend, subtrahend)]
    return statistics.median(differences), min(differences), max(differences)


def fmt_ratio(median: float, low: float, high: float, digits: int = 2) -> str:
    """``1.03x (0.98-1.07)``; more ``digits`` for a median that lies close to its goal, so that the
    figure shown agrees with the verdict (1.052 is not <= 1.05, yet rounds to 1.05)."""
    return f"{median:.{digits}f}x ({low:.2f}-{high:.2f})"


def mean_std(values: list[float], digits: int = 3) -> str:
    """``0.961 ± 0.020``: mean and sample standard deviation over seeds."""
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def not_measured(name: str, goal: str, why: str) -> Row:
    """A row that states its goal but has no figure in this run, and says why."""
    return Row(name=name, measured="not measured", goal=goal, met=None, data=why)


def full_run_only(name: str, goal: str, what: str) -> Row:
    """The quick run's stand-in for a row too slow for it; ``what`` says what the full run does."""
    return Row(name=name, measured="full run only", goal=goal, met=None, data=what)
