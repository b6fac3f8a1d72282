"""The LightningCLI every app is: ``python -m apps.<name> fit|validate|test|predict|serve`` (``apps/serve.py``).

Once for all apps: the app's ``config.yaml`` as defaults; a ``ModelCheckpoint`` on the app's validation
metric plus ``last.ckpt`` after every validation (``apps.callbacks.Checkpoint``); CSV and W&B loggers
(W&B offline by itself without credentials), all under ``--trainer.default_root_dir`` (``runs/<name>``);
``fit`` ends by testing the best checkpoint; ``test``/``validate``/``predict`` need only ``--ckpt_path``;
``fit --ckpt_path last`` continues the newest run of the same settings (or ``--run NAME``); ``predict
--output FILE``; bad input ends in one ``error:`` line and exit code 2, a run that cannot go on in exit
code 1.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import json
import netrc
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, loggers
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from apps.callbacks import Checkpoint, CheckpointRoom, EpochSeeds, FiniteLoss, PredictionWriter, RunRecord, TrainingStopped, rows_until
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


class WandbLogger(loggers.WandbLogger):
    """Lightning's ``WandbLogger`` with the ``wandb.init`` settings a team uses as typed options, so
    ``--trainer.logger`` entries and YAML reach them (Lightning's takes them only as ``**kwargs``).

    Args:
        project: The W&B project.
        name: The run's display name.
        save_dir: Folder of the ``wandb/`` run folders; follows ``--trainer.default_root_dir``.
        offline: Keep the run on disk (``wandb sync`` uploads it later); also the case without credentials.
        log_model: Upload checkpoints as artifacts: ``true`` at the end, ``all`` as they are written
            (online only; offline runs keep them on disk and say so).
        id: The run id, to continue a run.
        resume: How W&B treats ``id``: ``allow``, ``must``, ``never`` or ``auto``.
        group: Groups runs, e.g. the processes of one job or the folds of a sweep.
        entity: The team or user the run belongs to.
        tags: Labels to filter runs by.
        job_type: The kind of run, e.g. ``train`` or ``eval``.
        notes: A longer description of the run.
    """

    def __init__(self, project: str | None = None, name: str | None = None, save_dir: str = ".", offline: bool = False,
                 log_model: bool | Literal["all"] = False, id: str | None = None, resume: str | None = None,
                 group: str | None = None, entity: str | None = None, tags: list[str] | None = None,
                 job_type: str | None = None, notes: str | None = None) -> None:
        settings = {"group": group, "entity": entity, "tags": tags, "job_type": job_type, "notes": notes, "resume": resume}
        super().__init__(project=project, name=name, save_dir=save_dir, offline=offline, log_model=log_model, id=id,
                         **{key: value for key, value in settings.items() if value is not None})


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


def recorded_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The model, data and seed settings a checkpoint's run was started with (``RunRecord``)."""
    config = (checkpoint.get("run") or {}).get("config")
    return json.loads(config) if config else None


def first_difference(a: Any, b: Any, key: str = "") -> tuple[str, Any, Any]:
    """The first dotted key where the nested dicts ``a`` and ``b`` differ, and its two values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                return first_difference(a.get(name), b.get(name), f"{key}.{name}" if key else name)
    return key or "settings", a, b


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
        self.root = root = f"runs/{name}"  # loggers left at this save_dir follow --trainer.default_root_dir
        self.run_config: dict[str, Any] = {}  # what makes a run this run: `fit --ckpt_path last` continues one alike
        csv_logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": root, "name": ""}}
        wandb_logger = {"class_path": "apps.cli.WandbLogger", "init_args": {"project": f"lightning-apps-{name}", "save_dir": root}}
        super().__init__(model_class, datamodule_class, trainer_class=ServingTrainer, parser_class=ArgumentParser,
                         save_config_callback=LoggedConfig,
                         save_config_kwargs={"overwrite": True}, seed_everything_default=42, auto_configure_optimizers=False,
                         trainer_defaults={"default_root_dir": root, "logger": [csv_logger, wandb_logger]}, args=args)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands and ``serve`` (``apps/serve.py``)."""
        return {**LightningCLI.subcommands(), "serve": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": self.monitor, "checkpoint.mode": self.mode, "checkpoint.save_last": True,
                             "checkpoint.filename": "best-epoch{epoch:02d}", "checkpoint.auto_insert_metric_name": False})
        for attribute in self.links:
            parser.link_arguments(f"data.{attribute}", f"model.{attribute}", apply_on="instantiate")
        parser.add_argument("--output", type=str | None, default=None, help="predict: the .csv or .jsonl file to write")
        parser.add_argument("--run", type=str | None, default=None,
                            help="the run's folder under the root dir (default version_N); `fit --ckpt_path last` continues it")

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        """Parse with the app's config.yaml as the first ``--config``, so a later one overrides it; then
        take the settings of ``--ckpt_path`` and decide whether W&B runs offline."""
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] in self.subcommands():
            args[1:1] = ["--config", self.app_config]
        self.config = parser.parse_args(args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            self.run_config = json.loads(json.dumps({key: config.get(key) for key in ("model", "data", "seed_everything")},
                                                    default=lambda value: value.as_dict() if hasattr(value, "as_dict") else str(value)))
            root_dir = config["trainer"]["default_root_dir"]
            for entry, kind in logger_entries(config):
                if getattr(entry, "init_args", None) is not None and entry.init_args.get("save_dir") == self.root:
                    entry.init_args.save_dir = root_dir  # everything a run writes goes under its root dir
                if issubclass(kind, loggers.CSVLogger) and config.get("run"):
                    entry.init_args.version = config["run"]
            self.apply_checkpoint(subcommand)
            for entry, kind in logger_entries(self.config[subcommand]):
                if issubclass(kind, loggers.WandbLogger):
                    entry.init_args.offline = wandb_offline(entry.init_args.offline)
                    if entry.init_args.offline and entry.init_args.get("log_model"):
                        rank_zero_info(f"W&B runs offline, so log_model={entry.init_args.log_model} uploads nothing: "
                                       "the checkpoints stay in the run folder; `wandb sync` uploads the run, not them")
                        entry.init_args.log_model = False
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
            return root, sorted(root.glob("*/checkpoints"))
        return None, [Path(config["trainer"]["default_root_dir"], "checkpoints")]

    def last_checkpoint(self, config: Any) -> str | None:
        """``--ckpt_path last``: the newest ``last.ckpt`` of the run named by ``--run``, else of this app's
        runs with the same model, data and seed settings; None to start afresh (so a job requeued after
        preemption can always pass ``--ckpt_path last``). Runs of other settings only: an error that
        names the newest and how it differs."""
        root, folders = self.run_folders(config)
        if config.get("run") and root is not None:
            folders = [root / config["run"] / "checkpoints"]
        found = sorted((p for folder in folders for p in folder.glob("last*.ckpt")), key=os.path.getmtime, reverse=True)
        same = found[:1] if config.get("run") else [p for p in found if recorded_config(self.read_checkpoint(str(p))) == self.run_config]
        if same:
            rank_zero_info(f"resuming from {same[0]}")
            return str(same[0])
        if found:
            theirs = recorded_config(self.read_checkpoint(str(found[0]))) or {}
            key, there, here = first_difference(theirs, self.run_config)
            raise DataError(f"--ckpt_path last: the newest run, {found[0]}, has other settings ({key}: {there} there, {here} here); "
                            f"continue it with --run {found[0].parent.parent.name}, or leave out --ckpt_path to start a new run")
        rank_zero_info(f"--ckpt_path last: no last.ckpt in {', '.join(map(str, folders)) or 'runs'}; starting a new run")
        return None

    def continue_run(self, config: Any, ckpt_path: Path, checkpoint: dict[str, Any]) -> None:
        """Resume into the checkpoint's own run: its version folder and its W&B run id."""
        self.resumed = {"epoch": checkpoint.get("epoch", 0), "step": checkpoint.get("global_step", 0)}
        self.run_config = recorded_config(checkpoint) or self.run_config  # the run keeps the settings it started with
        root, _ = self.run_folders(config)
        version = ckpt_path.resolve().parent.parent  # .../version_N/checkpoints/last.ckpt
        wandb_id = (checkpoint.get("run") or {}).get("wandb_id")
        for entry, kind in logger_entries(config):
            if issubclass(kind, loggers.CSVLogger) and root and version.parent == root.resolve():
                name = version.name.removeprefix("version_")
                entry.init_args.version = int(name) if name.isdigit() and version.name != name else version.name
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
        own = list(trainer.get("callbacks") or [])
        callbacks = [*own, RunRecord(self.name, seed, json.dumps(self.run_config)), FiniteLoss(), CheckpointRoom()]
        callbacks += [EpochSeeds(seed)] if seed is not None else []
        # Rich redraws in a terminal; in a log file (SLURM, CI) its redraws are noise, and TQDM writes
        # lines. A progress bar among the user's callbacks is theirs to keep.
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in own):
            callbacks.append(RichProgressBar() if sys.stdout.isatty() else TQDMProgressBar())
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
        for key, value in self.config.predict.data.as_dict().items():  # never overwrite what is being read
            if isinstance(value, str) and Path(value).is_file() and Path(output).exists() and Path(output).samefile(value):
                raise DataError(f"--output {output} is the input --data.{key}: name another file for the predictions")
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

    def after_validate(self) -> None:
        self.report(self.config.validate.ckpt_path, stage="val")

    def report(self, checkpoint: str, stage: str = "test") -> None:
        """Print the stage's metrics, the checkpoint, and where the W&B run is."""
        if not self.trainer.is_global_zero:
            return
        metrics = {k: v.item() for k, v in self.trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        if metrics:
            print(f"{stage} metrics: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        print(f"checkpoint: {checkpoint}")
        for logger in self.trainer.loggers:
            if isinstance(logger, loggers.WandbLogger) and logger.experiment.offline:
                # The run's folder, which `wandb sync` takes; a resumed run has one per start, all with
                # its id, and `wandb sync` uploads them into the one run, in order of their start.
                folder = Path(logger.experiment.dir).parent
                folders = " ".join(map(str, sorted(folder.parent.glob(f"offline-run-*-{logger.version}"))))
                print(f"W&B run saved offline in {folder}; upload it with: wandb sync {folders or folder}")


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
