"""The LightningCLI that every app is: ``python -m apps.<name> fit|validate|test|predict``.

What it adds to Lightning's CLI, once for all apps:

- the app's ``config.yaml`` as defaults (``--print_config`` shows the result);
- a ``ModelCheckpoint`` on the app's validation metric plus ``last.ckpt``, configurable as ``--checkpoint.*``;
- CSV and W&B loggers (W&B offline without credentials), ``--trainer.logger=false`` turns them off;
- ``fit`` ends by testing the best checkpoint and printing the test metrics and its path;
- ``test``/``validate``/``predict`` need only ``--ckpt_path``: model and data settings come from it;
  checkpoints load with ``weights_only``, and another app's or a tampered file is refused;
- ``fit --ckpt_path last`` resumes the newest run where it stopped: same run folder, same W&B run,
  same final weights as a run that never stopped (``apps/reliability.py``);
- an output folder that cannot be written to or is nearly full is reported before training starts,
  and a non-finite loss stops training with the step and stage;
- ``predict --output FILE`` writes one record per input;
- bad input ends with a one-line ``error: ...`` and exit code 2; a run that fails ends with exit code 1.
"""

from __future__ import annotations

import errno
import inspect
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from apps.predictions import PredictionWriter
from apps.reliability import (
    EpochSeeds,
    FiniteLoss,
    RunRecord,
    TrainingStopped,
    check_output_folder,
    checkpoint_bytes,
    find_last_checkpoint,
)
from apps.tracking import CSVLogger, LoggedConfig, WandbLogger
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
        self.name, self.monitor, self.mode, self.links, self.app_config = name, monitor, mode, links, str(config)
        self.resumed: dict[str, Any] | None = None  # epoch and step of the checkpoint `fit` resumes from
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
        """Take model and data settings from ``--ckpt_path`` so the checkpoint alone is enough, and
        for ``fit``, continue the run the checkpoint belongs to.

        Lightning applies the checkpoint's model hyperparameters; this also applies the DataModule's
        (dataset, split seed, tokenizer settings) wherever the command line left the app's default.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("weights_only") is None:
            # Checkpoints hold tensors and plain data only: never unpickle arbitrary objects from a file.
            config["weights_only"] = True
        ckpt_path = config.get("ckpt_path")
        if subcommand != "fit" and not ckpt_path:
            raise DataError(f"{subcommand} needs --ckpt_path: a checkpoint written by `fit`")
        if subcommand == "fit" and ckpt_path == "last":
            ckpt_path = config["ckpt_path"] = self._last_checkpoint(config)
        if not ckpt_path or ckpt_path in SPECIAL_CKPT_PATHS:
            return
        checkpoint = self._read_checkpoint(ckpt_path)
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
        if subcommand == "fit":
            self._continue_run(self.config[subcommand], Path(ckpt_path), checkpoint)

    def _read_checkpoint(self, ckpt_path: str) -> dict[str, Any]:
        """Load ``ckpt_path`` as tensors and plain data only, and check that this app wrote it."""
        where = f"--ckpt_path {ckpt_path}"
        if not Path(ckpt_path).is_file():
            raise DataError(f"{where}: no such file")
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise DataError(
                f"{where}: refused: it holds pickled Python objects, which are never loaded "
                "(this project's checkpoints hold tensors and plain data only)"
            ) from None
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
            raise DataError(f"{where}: not a readable checkpoint, truncated or corrupt ({type(err).__name__})") from None
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise DataError(f"{where}: not a Lightning checkpoint (it has no state_dict)")
        app = (checkpoint.get("run") or {}).get("app")
        if app is not None and app != self.name:
            raise DataError(f"{where}: a checkpoint of apps.{app}, not of apps.{self.name}")
        accepted = inspect.signature(self.model_class).parameters
        unknown = set(checkpoint.get("hyper_parameters", {})) - set(accepted) - {"_instantiator"}
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            raise DataError(f"{where}: written for another model (unknown settings: {', '.join(sorted(unknown))})")
        return checkpoint

    def _run_folders(self, config) -> tuple[Path | None, list[Path]]:
        """Where this app's CSV logger keeps its version folders (None without one), and the folders
        its checkpoints can be in, as Lightning's ModelCheckpoint picks them."""
        loggers = config["trainer"].get("logger")
        first = loggers[0] if isinstance(loggers, list) and loggers else None
        if config["checkpoint"].get("dirpath"):
            return None, [Path(config["checkpoint"]["dirpath"])]
        if first is not None and first.class_path.endswith("CSVLogger"):
            root = Path(first.init_args.save_dir, first.init_args.name)
            return root, sorted(root.glob("version_*/checkpoints"))
        return None, [Path(config["trainer"]["default_root_dir"], "checkpoints")]

    def _last_checkpoint(self, config) -> str | None:
        """``--ckpt_path last``: the newest ``last.ckpt`` of this app's runs, or None to start afresh
        (so a job that is requeued after preemption can always pass ``--ckpt_path last``)."""
        _, folders = self._run_folders(config)
        found = find_last_checkpoint(folders)
        if found is None:
            rank_zero_info(f"--ckpt_path last: no last.ckpt in {', '.join(map(str, folders)) or 'runs'}; starting a new run")
            return None
        rank_zero_info(f"resuming from {found}")
        return str(found)

    def _continue_run(self, config, ckpt_path: Path, checkpoint: dict[str, Any]) -> None:
        """Resume into the checkpoint's own run: its version folder (CSV metrics and checkpoints) and
        its W&B run id."""
        self.resumed = {"epoch": checkpoint.get("epoch", 0), "step": checkpoint.get("global_step", 0)}
        root, _ = self._run_folders(config)
        version = ckpt_path.resolve().parent.parent  # .../version_N/checkpoints/last.ckpt
        wandb_id = (checkpoint.get("run") or {}).get("wandb_id")
        for logger in config["trainer"].get("logger") or []:
            if not hasattr(logger, "class_path"):
                continue
            if logger.class_path.endswith("CSVLogger") and root and version.parent == root.resolve():
                logger.init_args.version = int(version.name.removeprefix("version_"))
            if logger.class_path.endswith("WandbLogger") and wandb_id:
                logger.init_args.id = wandb_id

    def instantiate_trainer(self, **kwargs: Any):
        trainer_config = self.config_init[self.subcommand]["trainer"] if self.subcommand else {}
        callbacks = list(trainer_config.get("callbacks") or [])
        seed = self._get(self.config, "seed_everything")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None  # False: not seeded
        callbacks += [RunRecord(self.name, seed), FiniteLoss()]
        if seed is not None:
            callbacks.append(EpochSeeds(seed))
        if trainer_config.get("enable_progress_bar") is not False:
            callbacks.append(RichProgressBar())
        if trainer_config.get("logger") not in (False, None, []):
            callbacks.append(LearningRateMonitor())
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

    def before_fit(self) -> None:
        """Before any training: check the checkpoint folder takes files, and let a resumed run's CSV
        metrics continue where its checkpoint was written."""
        folder = self._checkpoint_folder()
        if folder is not None and self.trainer.is_global_zero:
            # room for last.ckpt, the best one and one being written, with a margin
            check_output_folder(folder, needed=3 * checkpoint_bytes(self.model) + 2**24)
        if self.resumed:
            for logger in self.trainer.loggers:
                if isinstance(logger, CSVLogger):
                    logger.continue_run(**self.resumed)

    def _checkpoint_folder(self) -> Path | None:
        """The folder ModelCheckpoint will write to, found the way Lightning finds it."""
        callback = self.trainer.checkpoint_callback
        if callback is None or self.trainer.fast_dev_run:
            return None
        if callback.dirpath:
            return Path(callback.dirpath)
        if self.trainer.loggers:
            logger = self.trainer.loggers[0]
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            return Path(logger.save_dir or self.trainer.default_root_dir, str(logger.name), version, "checkpoints")
        return Path(self.trainer.default_root_dir, "checkpoints")

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
    """Build and run an ``AppCLI`` (or the app's subclass). Bad input (``DataError``, conflicting
    Trainer options) ends the program with a one-line message and exit code 2; a run that cannot go on
    (non-finite loss, full disk) with one line and exit code 1."""
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
