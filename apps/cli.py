"""The LightningCLI that every app is: ``python -m apps.<name> fit|validate|test|predict``.

What it adds to Lightning's CLI, once for all apps:

- the app's ``config.yaml`` as defaults (``--print_config`` shows the result);
- a ``ModelCheckpoint`` on the app's validation metric plus ``last.ckpt``, configurable as ``--checkpoint.*``;
- CSV and W&B loggers (W&B offline without credentials), ``--trainer.logger=false`` turns them off;
- ``fit`` ends by testing the best checkpoint and printing the test metrics and its path;
- ``test``/``validate``/``predict`` need only ``--ckpt_path``: model and data settings come from it;
- ``predict --output FILE`` writes one record per input;
- bad input ends with a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

from apps.predictions import PredictionWriter
from apps.tracking import LoggedConfig, WandbLogger
from datamodules.sources import DataError

# Lightning 2.6 calls a pytree API that torch 2.14 deprecates; nothing for a user to act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# `test --ckpt_path` starts a new run folder on purpose; the checkpoint's own folder is not reused.
warnings.filterwarnings("ignore", message=r"The dirpath has changed from")

SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Values `--ckpt_path` takes that name no file.
SPECIAL_CKPT_PATHS = ("best", "last", "hpc", "registry")


class ArgumentParser(LightningArgumentParser):
    """Reports a bad option in one line instead of the usage text of every option, and takes no
    abbreviations: a mistyped ``--trainer.max_epoch`` is an error, not ``max_epochs``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> None:
        message = " ".join(message.split())
        if len(message) > 400:
            message = message[:400] + " ..."
        sys.stderr.write(f"error: {message} (see --help)\n")
        self.exit(2)


class AppCLI(LightningCLI):
    """LightningCLI with the project's shared defaults; see the module docstring.

    Args:
        model_class: The app's LightningModule.
        datamodule_class: The app's LightningDataModule.
        name: App name: runs go to ``runs/<name>``.
        config: The app's ``config.yaml``.
        monitor: Validation metric that picks the best checkpoint.
        mode: ``max`` or ``min`` for ``monitor``.
        links: DataModule attributes passed to the model argument of the same name.
        args: Command-line arguments (``sys.argv`` when None); tests pass a list.
    """

    def __init__(
        self,
        model_class: type[LightningModule],
        datamodule_class: type[LightningDataModule],
        *,
        name: str,
        config: Path,
        monitor: str,
        mode: str = "max",
        links: tuple[str, ...] = (),
        args: list[str] | None = None,
    ) -> None:
        self.monitor, self.mode, self.links, self.app_config = monitor, mode, links, str(config)
        root = f"runs/{name}"
        super().__init__(
            model_class,
            datamodule_class,
            parser_class=ArgumentParser,
            save_config_callback=LoggedConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "default_root_dir": root,
                "logger": [
                    {"class_path": f"{CSVLogger.__module__}.CSVLogger", "init_args": {"save_dir": "runs", "name": name}},
                    {
                        "class_path": f"{WandbLogger.__module__}.WandbLogger",
                        "init_args": {"project": f"lightning-apps-{name}", "save_dir": root},
                    },
                ],
            },
            seed_everything_default=42,
            auto_configure_optimizers=False,
            args=args,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        """Parse with the app's config.yaml as the first ``--config``, so any later one overrides it.

        (jsonargparse 4.53's ``default_config_files`` drops the ``class_path`` of an optimizer that
        also has ``init_args``; an explicit ``--config`` does not.)
        """
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] in SUBCOMMANDS:
            args[1:1] = ["--config", self.app_config]
        self.config = parser.parse_args(args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": self.monitor,
                "checkpoint.mode": self.mode,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:02d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        for attribute in self.links:
            parser.link_arguments(f"data.{attribute}", f"model.{attribute}", apply_on="instantiate")
        parser.add_argument("--output", type=str | None, default=None, help="predict: the .csv or .jsonl file to write")

    def _parse_ckpt_path(self) -> None:
        """Take model and data settings from ``--ckpt_path`` so the checkpoint alone is enough.

        Lightning applies the checkpoint's model hyperparameters; this also applies the DataModule's
        (dataset, split seed, tokenizer settings) wherever the command line left the app's default.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if subcommand != "fit" and not ckpt_path:
            raise DataError(f"{subcommand} needs --ckpt_path: a checkpoint written by `fit`")
        if not ckpt_path or ckpt_path in SPECIAL_CKPT_PATHS:
            return
        if not Path(ckpt_path).is_file():
            raise DataError(f"--ckpt_path {ckpt_path}: no such file")
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
            raise DataError(f"--ckpt_path {ckpt_path}: not a readable checkpoint ({type(err).__name__})") from None
        defaults = self._subcommand_parsers[subcommand].parse_args(["--config", self.app_config])
        for key, value in checkpoint.get("datamodule_hyper_parameters", {}).items():
            key = f"data.{key}"
            if key in config and config[key] == defaults.get(key):
                config[key] = value
        # What Lightning's own _parse_ckpt_path does for the model, without loading the file again:
        # the checkpoint's model hyperparameters override the config (the weights must fit them).
        model = dict(checkpoint.get("hyper_parameters", {}))
        model.pop("_instantiator", None)
        if model:
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def instantiate_trainer(self, **kwargs: Any):
        trainer_config = self.config_init[self.subcommand]["trainer"] if self.subcommand else {}
        callbacks = list(trainer_config.get("callbacks") or [])
        if trainer_config.get("enable_progress_bar") is not False:
            callbacks.append(RichProgressBar())
        if trainer_config.get("logger") not in (False, None, []):
            callbacks.append(LearningRateMonitor())
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

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
            if isinstance(logger, WandbLogger):
                where = logger.run_dir
                if logger.offline:
                    print(f"W&B run saved offline in {where}; upload it with: wandb sync {where}")


def run_app(*args: Any, cli_class: type[AppCLI] = AppCLI, **kwargs: Any) -> None:
    """Build and run an ``AppCLI`` (or the app's subclass); a ``DataError`` ends the program with a
    one-line message."""
    failed = True
    try:
        cli_class(*args, **kwargs)
        failed = False
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if "wandb" in sys.modules:  # close the run so its files are complete when we return
            sys.modules["wandb"].finish(exit_code=1 if failed else 0)
