"""The private Lightning attributes the apps use, each in one place (apps/callbacks.py and apps/cli.py):
these tests fail when a Lightning release changes them, instead of the apps breaking silently."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader, Sampler

from apps.callbacks import Checkpoint, EpochSeeds


class EpochOrder(Sampler[list[int]]):
    """Batches in an order fixed when a pass starts, from the epoch, like the text apps'
    ``BucketBatchSampler``; records the epoch of every pass."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch, self.passes = n, 0, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // 2

    def __iter__(self):
        self.passes.append(self.epoch)
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).view(-1, 2).tolist())


class Model(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.sampler = EpochOrder(16)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 16), sampler=self.sampler, batch_size=None)  # yields whole batches


def fit(tmp_path: Path, epochs: int, ckpt_path: str | None = None) -> Model:
    model = Model()
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=epochs, callbacks=[EpochSeeds(0)], logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, ckpt_path=ckpt_path)
    return model


def test_a_resumed_run_restarts_its_first_pass_in_the_epochs_order(tmp_path: Path) -> None:
    """``restart_training_pass`` (``fit_loop._data_fetcher``): without it, the resumed epoch 1 would
    iterate in epoch 0's order."""
    assert fit(tmp_path, 2).sampler.passes == [0, 1]
    (checkpoint,) = tmp_path.glob("**/*.ckpt")
    resumed = fit(tmp_path / "resumed", 3, ckpt_path=str(checkpoint))
    assert resumed.sampler.passes == [0, 2]  # the pass Lightning started before the epoch was known, then epoch 2's


def test_lightning_still_passes_anonymous_to_wandb(tmp_path: Path) -> None:
    """``AppCLI.after_instantiate_classes`` drops it from ``WandbLogger._wandb_init``; when Lightning
    stops passing it, drop that line too."""
    assert "anonymous" in WandbLogger(save_dir=str(tmp_path), offline=True)._wandb_init


class NeverImproves(BoringModel):
    """Logs the same ``val/score`` every epoch: after epoch 0, no checkpoint is ever the best."""

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0)


def test_last_ckpt_follows_every_validation_when_the_monitored_metric_stops_improving(tmp_path: Path) -> None:
    """``Checkpoint`` (``ModelCheckpoint._should_save_on_train_epoch_end``, ``_should_skip_saving_checkpoint``,
    ``_save_last_checkpoint``, ``_monitor_candidates``): Lightning alone leaves last.ckpt at epoch 0
    here. Checked with validation once an epoch (saved at the epoch's end) and twice (saved after it)."""
    for val_check_interval, steps in ((1.0, 4), (0.5, 4)):
        folder = tmp_path / str(val_check_interval)
        checkpoint = Checkpoint(dirpath=folder, monitor="val/score", mode="max", save_last=True)
        trainer = Trainer(default_root_dir=folder, max_epochs=3, limit_train_batches=steps, limit_val_batches=1,
                          val_check_interval=val_check_interval, logger=False, callbacks=[checkpoint],
                          enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(NeverImproves())
        last = torch.load(folder / "last.ckpt", weights_only=True)
        assert (last["epoch"], last["global_step"]) == (2, 3 * steps)
        first = "epoch=0-step=2.ckpt" if val_check_interval < 1 else "epoch=0-step=4.ckpt"
        assert sorted(p.name for p in folder.glob("*.ckpt")) == [first, "last.ckpt"]  # the best: the first
