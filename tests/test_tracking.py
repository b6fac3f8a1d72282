import contextlib
import io
from pathlib import Path

import pytest
from lightning.pytorch import Callback

from apps.cli import wandb_offline


def test_no_credentials_means_offline() -> None:
    assert wandb_offline(False)


def test_an_api_key_means_online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not wandb_offline(False)


def test_a_netrc_login_means_online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert not wandb_offline(False)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a login for another host
    assert wandb_offline(False)


@pytest.mark.parametrize("mode, offline", [("disabled", False), ("online", False), ("offline", True), ("dryrun", True)])
def test_wandb_mode_in_the_environment_decides(mode: str, offline: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", mode)
    assert wandb_offline(False) is offline


def test_explicit_offline_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_offline(True)


def test_train_loss_is_the_mean_since_the_last_logger_write(tmp_path: Path) -> None:
    """``train/loss`` reaches the logger every ``log_every_n_steps`` steps as the mean of those steps'
    losses, restarting each epoch (the last steps of an epoch, short of a write, are dropped)."""
    import csv

    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from models.lenet_classifier import LeNetClassifier

    class KeepLosses(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))

    seed_everything(0)
    data = TensorDataset(torch.randn(7 * 8, 1, 28, 28), torch.randint(0, 3, (7 * 8,)))
    kept = KeepLosses()
    trainer = Trainer(max_epochs=2, log_every_n_steps=3, logger=CSVLogger(tmp_path), callbacks=[kept],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, accelerator="cpu")
    trainer.fit(LeNetClassifier(["a", "b", "c"]), DataLoader(data, batch_size=8))  # 7 steps an epoch
    with open(Path(trainer.log_dir) / "metrics.csv") as f:
        logged = {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row["train/loss"]}
    # Writes after steps 2, 5 (epoch 0: steps 0-6), 8, 11 (epoch 1: steps 7-13); 6 and 12-13 fall short.
    windows = {2: range(0, 3), 5: range(3, 6), 8: range(7, 9), 11: range(9, 12)}
    assert logged.keys() == windows.keys()
    for step, window in windows.items():
        assert logged[step] == pytest.approx(sum(kept.losses[i] for i in window) / len(window), rel=1e-5)


def test_one_logger_instead_of_the_list(tmp_path: Path, monkeypatch) -> None:
    """``--trainer.logger`` may name a single logger; W&B still goes offline by itself."""
    import apps.mnist.__main__ as mnist_app

    monkeypatch.chdir(tmp_path)
    mnist_app.main(["fit", "--data.dataset=digits", "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
                    "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                    "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false"])
    assert len(list(tmp_path.glob("wandb/offline-run-*"))) == 1


def test_a_resumed_run_continues_its_wandb_run(tmp_path: Path, monkeypatch) -> None:
    """The resumed run asks W&B for the checkpoint's run id with resume "allow" (online: that run,
    continued; not a new one)."""
    import apps.mnist.__main__ as mnist_app
    from lightning.pytorch import loggers

    started = []
    real_init = loggers.WandbLogger.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        started.append(dict(self._wandb_init))

    monkeypatch.setattr(loggers.WandbLogger, "__init__", init)
    monkeypatch.chdir(tmp_path)
    tiny = ["--data.dataset=digits", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false"]
    mnist_app.main(["fit", *tiny, "--trainer.max_epochs=1"])
    mnist_app.main(["fit", *tiny, "--trainer.max_epochs=2", "--ckpt_path", "last"])
    first, resumed = started
    assert first["id"] is None and resumed["id"] and resumed["resume"] == "allow"
    (offline,) = {path.name.rsplit("-", 1)[1] for path in tmp_path.glob("runs/mnist/wandb/offline-run-*")}
    assert offline == resumed["id"]


def test_every_wandb_init_setting_is_an_option_and_reaches_the_run(tmp_path: Path, monkeypatch) -> None:
    """group, entity, tags, job_type, notes and name from the command line (or YAML) are in the offline
    run's own record; log_model offline is one notice, not Lightning's error."""
    import apps.mnist.__main__ as mnist_app
    from wandb_run import records

    import apps.cli

    said: list[str] = []
    monkeypatch.setattr(apps.cli, "rank_zero_info", said.append)
    monkeypatch.chdir(tmp_path)
    mnist_app.main(["fit", "--data.dataset=digits", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                    "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false",
                    "--trainer.logger=apps.cli.WandbLogger", "--trainer.logger.group=sweep-3", "--trainer.logger.entity=team",
                    "--trainer.logger.tags=[baseline,digits]", "--trainer.logger.job_type=train",
                    "--trainer.logger.notes=a first try", "--trainer.logger.name=lenet-a", "--trainer.logger.log_model=all"])
    notices = [line for line in said if "log_model" in line]
    assert len(notices) == 1 and notices[0].startswith("W&B runs offline, so log_model=all uploads nothing")
    (log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    (run,) = [r.run for r in records(log) if r.WhichOneof("record_type") == "run"]
    assert (run.run_group, run.entity, list(run.tags), run.job_type, run.notes, run.display_name) == (
        "sweep-3", "team", ["baseline", "digits"], "train", "a first try", "lenet-a")


class ProgressBarSeen(Callback):
    """Records the progress bar the Trainer runs with."""

    seen: list = []

    def on_fit_start(self, trainer, pl_module) -> None:
        ProgressBarSeen.seen.append(trainer.progress_bar_callback)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("case", ["log file", "terminal", "turned off", "the user's own"])
def test_the_progress_bar_suits_where_output_goes(case: str, tmp_path: Path, monkeypatch) -> None:
    import apps.mnist.__main__ as mnist_app
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    monkeypatch.chdir(tmp_path)
    ProgressBarSeen.seen = []
    args = {"turned off": ["--trainer.enable_progress_bar=false"],
            "the user's own": ['--trainer.callbacks+={"class_path": "lightning.pytorch.callbacks.TQDMProgressBar", '
                               '"init_args": {"refresh_rate": 7}}']}.get(case, [])
    with contextlib.redirect_stdout(Terminal() if case == "terminal" else io.StringIO()):
        mnist_app.main(["fit", "--data.dataset=digits", "--trainer.fast_dev_run=true", "--trainer.logger=false",
                        '--trainer.callbacks+=test_tracking.ProgressBarSeen', *args])
    (bar,) = ProgressBarSeen.seen
    if case == "turned off":
        assert bar is None
    elif case == "terminal":
        assert isinstance(bar, RichProgressBar)
    else:
        assert type(bar) is TQDMProgressBar and bar.refresh_rate == (7 if case == "the user's own" else 1)
