"""Experiment tracking shared by every app: W&B that goes offline by itself, and the full config."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch import loggers
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from apps.reliability import continue_csv


def wandb_credentials() -> bool:
    """Whether W&B could log in: an API key in the environment or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(loggers.WandbLogger):
    """Lightning's W&B logger, offline unless credentials are found, so it never prompts or waits.

    Args:
        project: W&B project name.
        save_dir: Folder under which W&B writes ``wandb/<run>``.
        name: Display name of the run (W&B picks one if unset).
        offline: ``None`` decides from credentials; ``WANDB_MODE`` in the environment wins over both.
        log_model: Upload checkpoints as W&B artifacts (online runs).
        tags: Tags of the run.
        id: Continue the W&B run with this id (``fit --ckpt_path`` sets it from the checkpoint).
    """

    def __init__(
        self,
        project: str = "lightning-apps",
        save_dir: str = "runs",
        name: str | None = None,
        offline: bool | None = None,
        log_model: bool = False,
        tags: list[str] | None = None,
        id: str | None = None,
    ) -> None:
        if offline is None:
            # WANDB_MODE wins (Lightning itself sets it to "dryrun" for an offline run, for the process).
            mode = os.environ.get("WANDB_MODE")
            offline = mode in ("offline", "dryrun") if mode else not wandb_credentials()
        self.offline = offline
        super().__init__(
            project=project,
            # Absolute: wandb caches the working directory of its first run in a process, and would
            # put a later run's relative folder under that one.
            save_dir=os.path.abspath(save_dir),
            name=name,
            offline=offline,
            log_model=log_model,
            tags=tags,
            # "allow": continue the run with this id if W&B has it, else start it under this id.
            **({"id": id, "resume": "allow"} if id else {}),
        )
        # Lightning always passes `anonymous`, which wandb 0.31 ignores with a warning on every run.
        self._wandb_init.pop("anonymous", None)

    @property
    def run_dir(self) -> str:
        """The run's folder, the one ``wandb sync`` takes."""
        return os.path.dirname(self.experiment.dir)


class CSVLogger(loggers.CSVLogger):
    """Lightning's CSV logger (``metrics.csv`` and ``hparams.yaml`` in ``save_dir/name/version_N``)
    that can continue a version folder: Lightning's own would delete its ``metrics.csv``."""

    @rank_zero_only
    def continue_run(self, epoch: int, step: int) -> None:
        """Append to this version's ``metrics.csv``, first dropping the rows logged after the
        checkpoint the run resumes from (of ``epoch`` and global ``step``)."""
        columns = continue_csv(Path(self.log_dir, ExperimentWriter.NAME_METRICS_FILE), epoch, step)
        self._experiment = _AppendingWriter(self.log_dir, columns)


class _AppendingWriter(ExperimentWriter):
    """An experiment writer that keeps the existing ``metrics.csv`` and its columns."""

    def __init__(self, log_dir: str, columns: list[str]) -> None:
        super().__init__(log_dir)
        self.metrics_keys = sorted(columns)

    def _check_log_dir_exists(self) -> None:
        """Keep the folder's files (the base class deletes ``metrics.csv``)."""


class LoggedConfig(SaveConfigCallback):
    """Writes ``config.yaml`` into the run folder and records the full resolved config in every logger."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})
