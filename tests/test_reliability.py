"""Reliability: a run killed mid-way resumes to the very same result and W&B run; the same seed gives
the same run; a non-finite loss stops training cleanly; an output folder that cannot take checkpoints is
reported before training; checkpoints load as plain data, and damaged or foreign ones are refused; a
run spans 2 nodes launched by torchrun."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import apps.mnist.__main__ as mnist_app
import apps.callbacks as callbacks
import apps.sentiment.__main__ as sentiment_app
from conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]

EPOCHS = ["--trainer.max_epochs=3", "--trainer.deterministic=true", "--trainer.enable_progress_bar=false"]
KILL = '--trainer.callbacks+={"class_path": "faults.KillAt", "init_args": {"epoch": 1, "batch": 3}}'


def sentiment_csv(folder: Path) -> Path:
    """300 short labelled reviews, enough for a few batches of each split."""
    good = ["great", "wonderful", "loved", "superb", "fun"]
    bad = ["dull", "awful", "hated", "boring", "mess"]
    rows = ["text,label"]
    for i in range(300):
        words = good if i % 3 else bad
        rows.append(f"{words[i % 5]} film {words[(i * 7) % 5]} plot number {i},{'pos' if i % 3 else 'neg'}")
    path = folder / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def app_args(app: str, data_folder: Path) -> list[str]:
    if app == "mnist":
        return ["--data.dataset=digits", "--trainer.limit_train_batches=8"]
    if app in ("translate", "autoencoder", "finetune"):  # the registry's small, offline settings
        from registry import APPS, finetune_backbone

        if app == "finetune":
            finetune_backbone()
        small = [arg for arg in APPS[app].train if arg.startswith("--model.")]
        return [*APPS[app].data, *small, "--trainer.limit_train_batches=8", "--trainer.limit_val_batches=4",
                "--trainer.limit_test_batches=4"]
    path = sentiment_csv(data_folder)
    return [
        "--data.dataset=csv", f"--data.path={path}", "--data.vectors=null", "--data.batch_size=16",
        "--model.embedding_dim=16", "--model.hidden_size=16",
    ]


def launch(app: str, folder: Path, *args: str) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", f"apps.{app}", "fit", *args],
        cwd=folder, env=subprocess_env(), capture_output=True, text=True, timeout=600, start_new_session=True,
    )


def printed_test_metrics(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return next(line for line in done.stdout.splitlines() if line.startswith("test metrics: "))


def last_checkpoint(folder: Path) -> dict:
    (path,) = folder.glob("runs/*/version_*/checkpoints/last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=True)


def csv_rows(folder: Path, metric: str) -> list[tuple[str, str]]:
    """(epoch, value) of every row of ``metric`` in the run's metrics.csv, in order."""
    (path,) = folder.glob("runs/*/version_*/metrics.csv")
    with open(path, newline="") as f:
        return [(row["epoch"], row[metric]) for row in csv.DictReader(f) if row.get(metric)]


Runs = namedtuple("Runs", "first second crashed resumed folders")


@pytest.fixture(scope="module", params=["mnist", *[pytest.param(app, marks=pytest.mark.slow)
                                                   for app in ("sentiment", "translate", "autoencoder", "finetune")]])
def runs(request, tmp_path_factory) -> Runs:
    """One config run without interruption (twice for mnist, for the determinism test), and once
    SIGKILLed in epoch 1 and resumed with ``--ckpt_path last``; each in a folder of its own."""
    app, root = request.param, tmp_path_factory.mktemp(request.param)
    args = [*app_args(app, root), *EPOCHS]
    folders = {name: root / name for name in ("first", "second", "crashed")}
    first = launch(app, folders["first"], *args)
    second = launch(app, folders["second"], *args) if app == "mnist" else None
    crashed = launch(app, folders["crashed"], *args, KILL)
    resumed = launch(app, folders["crashed"], *args, "--ckpt_path", "last")
    return Runs(first, second, crashed, resumed, folders)


def test_same_seed_and_config_give_the_same_run(runs: Runs) -> None:
    if runs.second is None:
        pytest.skip("run twice for mnist only (time); the resume test shows it for sentiment as well")
    assert printed_test_metrics(runs.first) == printed_test_metrics(runs.second)
    first, second = last_checkpoint(runs.folders["first"]), last_checkpoint(runs.folders["second"])
    assert all(torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in first["state_dict"])


def test_a_killed_run_resumes_to_the_same_weights_and_metrics(runs: Runs) -> None:
    assert runs.crashed.returncode == -signal.SIGKILL
    assert "test metrics" not in runs.crashed.stdout
    assert "resuming from runs/" in runs.resumed.stdout + runs.resumed.stderr
    assert printed_test_metrics(runs.resumed) == printed_test_metrics(runs.first)
    first, resumed = last_checkpoint(runs.folders["first"]), last_checkpoint(runs.folders["crashed"])
    assert resumed["epoch"] == first["epoch"] == 2 and resumed["global_step"] == first["global_step"]
    for key, value in first["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key  # bit for bit


def test_a_resumed_run_continues_its_wandb_run_and_metrics_file(runs: Runs) -> None:
    folder = runs.folders["crashed"]
    run_id = last_checkpoint(folder)["run"]["wandb_id"]
    wandb_runs = sorted(folder.glob("runs/*/wandb/offline-run-*"))
    assert len(wandb_runs) == 2 and {path.name.rsplit("-", 1)[1] for path in wandb_runs} == {run_id}
    assert len(list(folder.glob("runs/*/version_*"))) == 1  # the same run folder, not a new one
    # metrics.csv: the crashed run's rows up to its checkpoint, then the resumed run's, none twice
    for metric in ("train/loss", "val/acc"):
        assert csv_rows(folder, metric) == csv_rows(runs.folders["first"], metric), metric


def test_a_resumed_offline_run_prints_the_sync_of_all_its_folders_in_order(runs: Runs) -> None:
    """Each start of a run offline leaves a folder with the run's id; `wandb sync` given them all, in
    the order they started, uploads them into that one run."""
    from wandb_run import records

    folder = runs.folders["crashed"]
    run_id = last_checkpoint(folder)["run"]["wandb_id"]
    started = sorted(folder.glob(f"runs/*/wandb/offline-run-*-{run_id}"))  # named offline-run-<start time>-<id>
    assert len(started) == 2
    (command,) = [line.split("upload it with: ", 1)[1] for line in runs.resumed.stdout.splitlines() if "upload it with: " in line]
    assert command == "wandb sync " + " ".join(map(str, (path.resolve() for path in started)))
    for path in started:  # each holds a transaction log of this run id (the killed start's may be cut short)
        (log,) = path.glob("run-*.wandb")
        assert log.name == f"run-{run_id}.wandb"
    assert any(r.WhichOneof("record_type") == "history" for r in records(log))  # the resumed start logged


def test_last_with_nothing_to_resume_starts_a_new_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        mnist_app.main(["fit", "--data.dataset=digits", "--trainer.fast_dev_run=true", "--ckpt_path", "last"])
    assert "test metrics: " in out.getvalue()


def tiny_fit(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        mnist_app.main(["fit", "--data.dataset=digits", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false",
                        *args])
    return out.getvalue()


def test_last_continues_the_run_of_the_same_settings_or_the_one_named(tmp_path: Path, monkeypatch, capsys) -> None:
    """Two jobs of other settings share runs/mnist: `--ckpt_path last` never continues the other's run."""
    monkeypatch.chdir(tmp_path)
    tiny_fit()  # version_0
    tiny_fit("--model.dropout=0.3")  # version_1, the newest
    tiny_fit("--trainer.max_epochs=2", "--ckpt_path", "last")
    capsys.readouterr()
    assert last_of(tmp_path / "runs/mnist/version_0")["epoch"] == 1 and last_of(tmp_path / "runs/mnist/version_1")["epoch"] == 0

    with pytest.raises(SystemExit) as exit_:
        tiny_fit("--model.dropout=0.2", "--ckpt_path", "last")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: --ckpt_path last: the newest run, runs/mnist/version_")
    assert "model.dropout" in err[0] and "0.2 here" in err[0] and "--run version_" in err[0]

    tiny_fit("--model.dropout=0.2", "--trainer.max_epochs=2", "--run", "version_1", "--ckpt_path", "last")  # named: continued
    assert last_of(tmp_path / "runs/mnist/version_1")["epoch"] == 1
    assert not (tmp_path / "runs/mnist/version_2").exists()


def last_of(run: Path) -> dict:
    return torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)


def test_each_rank_draws_its_own_randomness_and_an_epoch_draws_the_same_again() -> None:
    """Dropout masks and augmentations come from the global generators that ``EpochSeeds`` seeds from
    (seed, epoch, rank): two ranks differ, the same rank and epoch repeat (as a resumed run needs)."""
    from types import SimpleNamespace

    from datamodules.mnist import random_affine

    def draws(rank: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        trainer = SimpleNamespace(current_epoch=epoch, global_rank=rank)
        callbacks.EpochSeeds(42).on_train_epoch_start(trainer, None)
        mask = torch.nn.functional.dropout(torch.ones(64), 0.5, training=True)
        return mask, random_affine(torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), 10, 0.08, 0.1)

    (mask0, moved0), (mask1, moved1) = draws(0, 3), draws(1, 3)
    assert not torch.equal(mask0, mask1) and not torch.equal(moved0, moved1)
    again = draws(0, 3)
    assert torch.equal(again[0], mask0) and torch.equal(again[1], moved0)
    assert not torch.equal(draws(0, 4)[0], mask0)


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """2 DDP processes, both SIGKILLed in epoch 1 and resumed with --ckpt_path last, end with the
    weights of a 2-process run that never stopped."""
    ddp = ["--data.dataset=digits", "--trainer.limit_train_batches=6", *EPOCHS, "--trainer.accelerator=cpu",
           "--trainer.devices=2", "--trainer.strategy=ddp"]
    kill_all = '--trainer.callbacks+={"class_path": "faults.KillAt", "init_args": {"epoch": 1, "batch": 3, "group": true}}'
    first = launch("mnist", tmp_path / "first", *ddp)
    crashed = launch("mnist", tmp_path / "crashed", *ddp, kill_all)
    resumed = launch("mnist", tmp_path / "crashed", *ddp, "--ckpt_path", "last")
    assert crashed.returncode == -signal.SIGKILL and "test metrics" not in crashed.stdout
    assert printed_test_metrics(resumed) == printed_test_metrics(first)
    one, other = last_checkpoint(tmp_path / "first"), last_checkpoint(tmp_path / "crashed")
    assert one["global_step"] == other["global_step"]
    for key, value in one["state_dict"].items():
        assert torch.equal(other["state_dict"][key], value), key


def test_a_nonfinite_val_loss_stops_training_before_its_checkpoint(tmp_path: Path) -> None:
    poison = '{"class_path": "faults.PoisonValidationAt", "init_args": {"epoch": 1}}'
    code, out, err = fit_mnist(tmp_path, "--trainer.max_epochs=3", "--trainer.limit_train_batches=3",
                               "--trainer.limit_val_batches=2", f"--trainer.callbacks+={poison}")
    last_line = err.strip().splitlines()[-1]
    assert code == 1 and "test metrics" not in out
    assert last_line.startswith("error: training stopped: val/loss is nan after step 6 (validation, epoch 1)")
    assert last_line.endswith("the last good checkpoint is runs/mnist/version_0/checkpoints/last.ckpt")
    kept = torch.load(tmp_path / "runs/mnist/version_0/checkpoints/last.ckpt", weights_only=True)
    assert kept["epoch"] == 0 and all(torch.isfinite(v).all() for v in kept["state_dict"].values())


# -- failing cleanly -----------------------------------------------------------------------------


def fit_mnist(folder: Path, *args: str) -> tuple[int, str, str]:
    """Run ``apps.mnist fit`` in-process in ``folder``; returns exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            mnist_app.main(["fit", "--data.dataset=digits", "--trainer.enable_progress_bar=false", *args])
    except SystemExit as exit_:
        code = exit_.code
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


def test_a_nonfinite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    poison = '{"class_path": "faults.PoisonAt", "init_args": {"epoch": 1, "batch": 2}}'
    code, out, err = fit_mnist(tmp_path, "--trainer.max_epochs=3", "--trainer.limit_train_batches=5", f"--trainer.callbacks+={poison}")
    last_line = err.strip().splitlines()[-1]
    assert code == 1 and "test metrics" not in out
    assert last_line.startswith("error: training stopped: train loss is nan at step 7 (epoch 1, batch 2)")
    assert last_line.endswith("the last good checkpoint is runs/mnist/version_0/checkpoints/last.ckpt")
    kept = torch.load(tmp_path / "runs/mnist/version_0/checkpoints/last.ckpt", weights_only=True)
    assert kept["epoch"] == 0 and all(torch.isfinite(v).all() for v in kept["state_dict"].values())


def test_an_unwritable_checkpoint_folder_is_reported_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should go")
    code, out, err = fit_mnist(tmp_path, f"--checkpoint.dirpath={blocker}/checkpoints", "--trainer.logger=false")
    assert code == 2 and "Epoch" not in out + err and "test metrics" not in out
    assert err.strip().splitlines()[-1] == f"error: cannot write to the output folder {blocker}/checkpoints: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_checkpoint_folder_is_reported_before_training(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = fit_mnist(tmp_path, f"--checkpoint.dirpath={locked}", "--trainer.logger=false")
    assert code == 2 and err.strip().splitlines()[-1] == f"error: cannot write to the output folder {locked}: Permission denied"


def test_a_nearly_full_disk_is_reported_before_training(tmp_path: Path, monkeypatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(callbacks.shutil, "disk_usage", lambda _: usage._replace(free=2**20))
    code, out, err = fit_mnist(tmp_path, "--trainer.logger=false")
    assert code == 2 and "test metrics" not in out and not list(tmp_path.rglob("*.ckpt"))
    assert err.strip().splitlines()[-1].startswith(
        f"error: not enough disk space for checkpoints in {Path('runs/mnist/checkpoints')}: 1.0 MiB free, about"
    )


def test_a_disk_that_fills_during_training_ends_in_one_line(tmp_path: Path, monkeypatch) -> None:
    import lightning.fabric.plugins.io.torch_io as torch_io

    def full(checkpoint, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(torch_io, "_atomic_save", full)
    code, out, err = fit_mnist(tmp_path, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.logger=false")
    assert code == 1 and "test metrics" not in out
    assert err.strip().splitlines()[-1].startswith("error: disk full while writing ") and "No space left on device" in err


# -- checkpoint safety ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mnist-ckpt")
    code, _, err = fit_mnist(folder, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.logger=false")
    assert code == 0, err
    return folder / "runs/mnist/checkpoints/last.ckpt"


def test_checkpoints_hold_plain_data_only(runs: Runs) -> None:
    """Loaded with weights_only=True (no pickled objects); the tokenizer and label names are data."""
    checkpoint = last_checkpoint(runs.folders["first"])
    assert all(isinstance(name, str) for name in checkpoint["hyper_parameters"].get("label_names", []))
    assert checkpoint["run"]["app"] in ("mnist", "sentiment", "translate", "autoencoder", "finetune")
    if checkpoint["run"]["app"] == "sentiment":  # the DataModule's state: the tokenizer as JSON text
        assert '"vocab"' in checkpoint["SentimentDataModule"]["tokenizer"]


class Tampered:
    """What a tampered checkpoint could smuggle in: an object whose unpickling runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def refusal(checkpoint: Path, main=mnist_app.main) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["test", f"--ckpt_path={checkpoint}", "--trainer.logger=false"])
    assert exit_.value.code == 2
    return err.getvalue().strip().splitlines()[-1]


def test_damaged_and_foreign_checkpoints_are_refused(mnist_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    real = torch.load(mnist_checkpoint, weights_only=True)

    marker = tmp_path / "code-ran"
    torch.save({**real, "extra": Tampered(marker)}, tmp_path / "tampered.ckpt")
    message = refusal(tmp_path / "tampered.ckpt")
    assert message.startswith(f"error: --ckpt_path {tmp_path / 'tampered.ckpt'}: refused: it holds pickled Python objects")
    assert not marker.exists()

    (tmp_path / "truncated.ckpt").write_bytes(mnist_checkpoint.read_bytes()[:5000])
    assert "not a readable checkpoint, truncated or corrupt" in refusal(tmp_path / "truncated.ckpt")

    torch.save(real["state_dict"], tmp_path / "weights.pt")
    assert refusal(tmp_path / "weights.pt").endswith("not a Lightning checkpoint (it has no state_dict)")

    assert refusal(mnist_checkpoint, main=sentiment_app.main).endswith(
        "a checkpoint of apps.mnist, not of apps.sentiment"
    )

    foreign = {**real, "hyper_parameters": {"hidden_units": 128}}
    foreign.pop("run")
    torch.save(foreign, tmp_path / "foreign.ckpt")
    assert refusal(tmp_path / "foreign.ckpt").endswith("written for another model (unknown settings: hidden_units)")


# -- multi-node ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_launched_by_torchrun(tmp_path: Path) -> None:
    """2 nodes x 1 process on localhost (gloo): both ranks train, metrics are reduced over both, and
    only rank zero writes the run's files."""
    port = free_port()
    args = [
        "-m", "apps.mnist", "fit", "--data.dataset=digits", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.num_nodes=2", "--trainer.strategy=ddp", "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=6", "--trainer.enable_progress_bar=false",
    ]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
             "--master_addr=127.0.0.1", f"--master_port={port}", *args],
            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for rank, (node, output) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, output[-3000:]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in output
    assert "test metrics: " in outputs[0] and "test metrics: " not in outputs[1]
    # one W&B run, one run folder, its checkpoints: rank zero's alone
    assert len(list(tmp_path.glob("runs/mnist/wandb/offline-run-*"))) == 1
    assert [p.name for p in tmp_path.glob("runs/mnist/version_*")] == ["version_0"]
    best = next(line.split(": ", 1)[1] for line in outputs[0].splitlines() if line.startswith("checkpoint: "))
    # The test metrics are reduced over both ranks, one with 180 of the 359 test images, the other with
    # 179 (none repeated): one process on the same checkpoint prints the same accuracy.
    alone = subprocess.run(
        [sys.executable, "-m", "apps.mnist", "test", f"--ckpt_path={best}", "--trainer.logger=false",
         "--trainer.enable_progress_bar=false"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert alone.returncode == 0, alone.stderr[-2000:]
    both, one = printed_accuracy(outputs[0]), printed_accuracy(alone.stdout)
    assert both == one


def printed_accuracy(output: str) -> float:
    line = next(line for line in output.splitlines() if line.startswith("test metrics: "))
    return float(next(pair for pair in line.split() if pair.startswith("test/acc=")).split("=")[1])


def test_a_bad_setting_in_a_checkpoint_is_one_line(mnist_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    real = torch.load(mnist_checkpoint, weights_only=True)
    torch.save({**real, "hyper_parameters": {**real["hyper_parameters"], "dropout": "much"}}, tmp_path / "bad.ckpt")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        mnist_app.main(["test", f"--ckpt_path={tmp_path / 'bad.ckpt'}", "--trainer.logger=false"])
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "dropout" in lines[0], lines
