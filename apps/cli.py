"""The LightningCLI every app is: ``python -m apps.<name> fit|validate|test|predict|serve`` (``apps/serve.py``).

Once for all apps: the app's ``config.yaml`` as defaults; a ``ModelCheckpoint`` on the app's validation
metric plus ``last.ckpt``; CSV and W&B loggers (W&B offline by itself without credentials); ``fit`` ends
by testing the best checkpoint; ``test``/``validate``/``predict`` need only ``--ckpt_path``; ``fit
--ckpt_path last`` continues the newest run; ``predict --output FILE``; bad input ends in one ``error:``
line and exit code 2, a run that cannot go on in exit code 1.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import netrc
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, loggers
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from apps.callbacks import CheckpointRoom, EpochSeeds, FiniteLoss, PredictionWriter, RunRecord, TrainingStopped, rows_until
from apps.serve import ServingTrainer
from datamodules.base import DataError

# Lightning 2.6 calls a pytree API that torch 2.14 deprecates; nothing for a user to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# `test --ckpt_path` starts a new run folder on purpose; the checkpoint's own folder is not reused.
warnings.filterwarnings("ignore", message=r"The dirpath has changed from")

def wandb_offline(offline: bool) -> bool:
    """Whether a W&B run goes offline: when asked, when ``WANDB_MODE`` says so (Lightning itself sets it
    to ``dryrun`` for an offline run's process), or when W&B has no credentials (an API key in the
    environment or a netrc entry for its host) and would prompt for them."""
    if offline or os.environ.get("WANDB_MODE"):
        return offline or os.environ["WANDB_MODE"] in ("offline", "dryrun")
    if os.environ.get("WANDB_API_KEY"):
        return False
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is None
    except (OSError, netrc.NetrcParseError):
        return True


def continue_csv(logger: loggers.CSVLogger, epoch: int, step: int) -> None:
    """Keep the rows of the logger's ``metrics.csv`` logged up to the checkpoint a run resumes from (of
    ``epoch`` and global ``step``) and append to them. Lightning's writer starts the file afresh, so the
    kept rows are written again at once."""
    columns, rows = rows_until(Path(logger.log_dir, "metrics.csv"), epoch, step)
    with warnings.catch_warnings():  # Lightning's warning that it starts metrics.csv afresh: it is rewritten
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        logger.experiment.metrics, logger.experiment.metrics_keys = rows, columns
    logger.experiment.save()


class LoggedConfig(SaveConfigCallback):
    """Writes ``config.yaml`` into the run folder and records the full resolved config in every logger."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


def logger_entries(config: Any) -> list[tuple[Any, type]]:
    """The ``--trainer.logger`` entries of a config (a list, one logger, or none), each with its class."""
    entries = config["trainer"].get("logger")
    entries = entries if isinstance(entries, list) else [entries] if hasattr(entries, "class_path") else []
    paths = [str(getattr(entry, "class_path", "")).rpartition(".") for entry in entries]  # parsed: importable
    return [(entry, getattr(importlib.import_module(module), name) if module else object)
            for entry, (module, _, name) in zip(entries, paths)]


class ArgumentParser(LightningArgumentParser):
    """Reports a bad option in one line instead of the usage text of every option, and takes no
    abbreviations: a mistyped ``--trainer.max_epoch`` is an error, not ``max_epochs``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> None:
        message = " ".join(message.split())
        sys.stderr.write(f"error: {message[:400] + ' ...' if len(message) > 400 else message} (see --help)\n")
        self.exit(2)


class AppCLI(LightningCLI):
    """LightningCLI with the project's shared behaviour (the module docstring): ``model_class`` and
    ``datamodule_class`` are the app's, runs go to ``runs/<name>``, ``config`` is its config.yaml,
    ``monitor`` (``mode`` max or min) picks the best checkpoint, ``links`` are DataModule attributes
    passed to the model argument of the same name, and ``args`` replace ``sys.argv`` (tests pass a list).
    """

    def __init__(self, model_class: type[LightningModule], datamodule_class: type[LightningDataModule], *, name: str,
                 config: Path, monitor: str, mode: str = "max", links: tuple[str, ...] = (),
                 args: list[str] | None = None) -> None:
        self.name, self.monitor, self.mode, self.links, self.app_config = name, monitor, mode, links, str(config)
        self.resumed: dict[str, Any] | None = None  # epoch and step of the checkpoint `fit` resumes from
        root = f"runs/{name}"
        csv_logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": name}}
        wandb_logger = {"class_path": "lightning.pytorch.loggers.WandbLogger",
                        "init_args": {"project": f"lightning-apps-{name}", "save_dir": root}}
        super().__init__(model_class, datamodule_class, trainer_class=ServingTrainer, parser_class=ArgumentParser, save_config_callback=LoggedConfig,
                         save_config_kwargs={"overwrite": True}, seed_everything_default=42, auto_configure_optimizers=False,
                         trainer_defaults={"default_root_dir": root, "logger": [csv_logger, wandb_logger]}, args=args)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands and ``serve`` (``apps/serve.py``)."""
        return {**LightningCLI.subcommands(), "serve": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": self.monitor, "checkpoint.mode": self.mode, "checkpoint.save_last": True,
                             "checkpoint.filename": "best-epoch{epoch:02d}", "checkpoint.auto_insert_metric_name": False})
        for attribute in self.links:
            parser.link_arguments(f"data.{attribute}", f"model.{attribute}", apply_on="instantiate")
        parser.add_argument("--output", type=str | None, default=None, help="predict: the .csv or .jsonl file to write")

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        """Parse with the app's config.yaml as the first ``--config``, so a later one overrides it; then
        take the settings of ``--ckpt_path`` and decide whether W&B runs offline."""
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] in self.subcommands():
            args[1:1] = ["--config", self.app_config]
        self.config = parser.parse_args(args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self.apply_checkpoint(subcommand)
            for entry, kind in logger_entries(self.config[subcommand]):
                if issubclass(kind, loggers.WandbLogger):
                    entry.init_args.offline = wandb_offline(entry.init_args.offline)
                    # absolute: wandb keeps a process's first working directory for later runs
                    entry.init_args.save_dir = os.path.abspath(entry.init_args.save_dir)

    def apply_checkpoint(self, subcommand: str) -> None:
        """Check ``--ckpt_path`` and take the model's settings from it, and the DataModule's (dataset,
        split seed, tokenizer) wherever the command line left the app's default; for ``fit``, continue
        its run. (Lightning's own parsing then loads the file once more and applies the same settings.)"""
        config = self.config[subcommand]
        if config.get("weights_only") is None:
            config["weights_only"] = True  # never unpickle arbitrary objects from a file
        ckpt_path = config.get("ckpt_path")
        if subcommand != "fit" and not ckpt_path:
            raise DataError(f"{subcommand} needs --ckpt_path: a checkpoint written by `fit`")
        if subcommand == "fit" and ckpt_path == "last":
            ckpt_path = config["ckpt_path"] = self.last_checkpoint(config)
        if not ckpt_path or ckpt_path in ("best", "last", "hpc", "registry"):
            return
        checkpoint = self.read_checkpoint(ckpt_path)
        defaults = self.parser.parse_args([subcommand, "--config", self.app_config])[subcommand]
        for key, value in checkpoint.get("datamodule_hyper_parameters", {}).items():
            if f"data.{key}" in config and config[f"data.{key}"] == defaults.get(f"data.{key}"):
                config[f"data.{key}"] = value
        # The model's settings too, as Lightning does right after, but a bad one is our one-line error.
        model = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "_instantiator"}
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config) if model else self.config
        if subcommand == "fit":
            self.continue_run(self.config[subcommand], Path(ckpt_path), checkpoint)

    def read_checkpoint(self, ckpt_path: str) -> dict[str, Any]:
        """Load ``ckpt_path`` as tensors and plain data only, and check that this app wrote it."""
        where = f"--ckpt_path {ckpt_path}"
        if not Path(ckpt_path).is_file():
            raise DataError(f"{where}: no such file")
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise DataError(f"{where}: refused: it holds pickled Python objects, which are never loaded "
                            "(this project's checkpoints hold tensors and plain data only)") from None
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
            raise DataError(f"{where}: not a readable checkpoint, truncated or corrupt ({type(err).__name__})") from None
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise DataError(f"{where}: not a Lightning checkpoint (it has no state_dict)")
        app = (checkpoint.get("run") or {}).get("app")
        if app is not None and app != self.name:
            raise DataError(f"{where}: a checkpoint of apps.{app}, not of apps.{self.name}")
        unknown = set(checkpoint.get("hyper_parameters", {})) - set(inspect.signature(self.model_class).parameters)
        if unknown - {"_instantiator"}:
            raise DataError(f"{where}: written for another model (unknown settings: {', '.join(sorted(unknown))})")
        return checkpoint

    def run_folders(self, config: Any) -> tuple[Path | None, list[Path]]:
        """Where the CSV logger keeps this app's version folders (None without one), and the folders
        its checkpoints can be in, as ModelCheckpoint picks them."""
        if config["checkpoint"].get("dirpath"):
            return None, [Path(config["checkpoint"]["dirpath"])]
        first, kind = (logger_entries(config) or [(None, object)])[0]
        if issubclass(kind, loggers.CSVLogger):
            root = Path(first.init_args.save_dir, first.init_args.name)
            return root, sorted(root.glob("version_*/checkpoints"))
        return None, [Path(config["trainer"]["default_root_dir"], "checkpoints")]

    def last_checkpoint(self, config: Any) -> str | None:
        """``--ckpt_path last``: the newest ``last.ckpt`` of this app's runs, or None to start afresh
        (so a job requeued after preemption can always pass ``--ckpt_path last``)."""
        _, folders = self.run_folders(config)
        found = max((p for folder in folders for p in folder.glob("last*.ckpt")), key=os.path.getmtime, default=None)
        if found is None:
            rank_zero_info(f"--ckpt_path last: no last.ckpt in {', '.join(map(str, folders)) or 'runs'}; starting a new run")
            return None
        rank_zero_info(f"resuming from {found}")
        return str(found)

    def continue_run(self, config: Any, ckpt_path: Path, checkpoint: dict[str, Any]) -> None:
        """Resume into the checkpoint's own run: its version folder and its W&B run id."""
        self.resumed = {"epoch": checkpoint.get("epoch", 0), "step": checkpoint.get("global_step", 0)}
        root, _ = self.run_folders(config)
        version = ckpt_path.resolve().parent.parent  # .../version_N/checkpoints/last.ckpt
        wandb_id = (checkpoint.get("run") or {}).get("wandb_id")
        for entry, kind in logger_entries(config):
            if issubclass(kind, loggers.CSVLogger) and root and version.parent == root.resolve():
                entry.init_args.version = int(version.name.removeprefix("version_"))
            if issubclass(kind, loggers.WandbLogger) and wandb_id:
                entry.init_args.id, entry.init_args.resume = wandb_id, "allow"  # continue this run, or start it so

    def after_instantiate_classes(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, loggers.WandbLogger):
                # Lightning always passes `anonymous`, which wandb 0.31 ignores with a warning on every
                # run. (Private; tests/test_lightning_api.py fails when Lightning changes it.)
                logger._wandb_init.pop("anonymous", None)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand]
        trainer = config["trainer"]
        seed = config.get("seed_everything")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None  # False: not seeded
        callbacks = [*(trainer.get("callbacks") or []), RunRecord(self.name, seed), FiniteLoss(), CheckpointRoom()]
        callbacks += [EpochSeeds(seed)] if seed is not None else []
        callbacks += [RichProgressBar()] if trainer.get("enable_progress_bar") is not False else []
        callbacks += [LearningRateMonitor()] if trainer.get("logger") not in (False, None, []) else []
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

    def before_fit(self) -> None:
        """Let a resumed run's CSV metrics continue where its checkpoint was written."""
        for logger in self.trainer.loggers if self.resumed and self.trainer.is_global_zero else []:
            if isinstance(logger, loggers.CSVLogger):
                continue_csv(logger, **self.resumed)

    def before_predict(self) -> None:
        output = self.config.predict.output
        if not output:
            raise DataError("predict needs --output FILE: a .csv or .jsonl file for the predictions")
        if self.trainer.world_size > 1:
            raise DataError("predict runs on one device: pass --trainer.devices=1")
        self.trainer.callbacks.append(PredictionWriter(output))

    def after_fit(self) -> None:
        """Test the best checkpoint (the final weights if none was saved) and report."""
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        if not best:
            rank_zero_info("No checkpoint was saved (fast_dev_run?): testing the final weights.")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        self.report(best or "none saved")

    def after_test(self) -> None:
        self.report(self.config.test.ckpt_path)

    def report(self, checkpoint: str) -> None:
        """Print the test metrics, the checkpoint, and where the W&B run is."""
        if not self.trainer.is_global_zero:
            return
        metrics = {k: v.item() for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        if metrics:
            print("test metrics: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        print(f"checkpoint: {checkpoint}")
        for logger in self.trainer.loggers:
            if isinstance(logger, loggers.WandbLogger) and logger.experiment.offline:
                folder = os.path.dirname(logger.experiment.dir)  # the run's folder, which `wandb sync` takes
                print(f"W&B run saved offline in {folder}; upload it with: wandb sync {folder}")


def run_app(*args: Any, cli_class: type[AppCLI] = AppCLI, **kwargs: Any) -> None:
    """Build and run an ``AppCLI`` (or the app's subclass). Bad input (``DataError``, conflicting Trainer
    options) ends the program with one line and exit code 2; a run that cannot go on (non-finite loss,
    full disk) with one line and exit code 1."""
    failed = True
    try:
        cli_class(*args, **kwargs)
        failed = False
    except (DataError, MisconfigurationException) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: disk full while writing {err.filename or 'the run'}: {err.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if "wandb" in sys.modules:  # close the run so its files are complete when we return
            sys.modules["wandb"].finish(exit_code=1 if failed else 0)
