"""The GPU path: bf16-mixed training, DDP on 2 GPUs, and a killed GPU run resumed. Skipped without CUDA
(``pytest -m cuda`` selects these; they are not slow-marked, so a GPU machine runs them by default)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = ["--trainer.accelerator=gpu", "--trainer.enable_progress_bar=false"]
TINY = ["--data.dataset=digits", "--trainer.limit_train_batches=8", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2"]


def fit(folder: Path, app: str, *args: str) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", f"apps.{app}", "fit", *args], cwd=folder, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600, start_new_session=True)


def test_mixed_precision_bf16_fit_tests_and_saves_finite_weights(tmp_path: Path) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    done = fit(tmp_path, "mnist", *TINY, *GPU, "--trainer.devices=1", "--trainer.precision=bf16-mixed",
               "--trainer.max_epochs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test metrics: " in done.stdout and "bf16" in done.stdout + done.stderr
    (last,) = tmp_path.glob("runs/mnist/version_0/checkpoints/last.ckpt")
    weights = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_on_two_gpus_equals_one_gpu_on_the_same_checkpoint(tmp_path: Path) -> None:
    done = fit(tmp_path, "mnist", "--data.dataset=digits", "--trainer.limit_train_batches=8", *GPU,
               "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_epochs=1")
    assert done.returncode == 0, done.stderr[-3000:]
    both = next(line for line in done.stdout.splitlines() if line.startswith("test metrics: "))
    best = next(line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("checkpoint: "))
    alone = subprocess.run([sys.executable, "-m", "apps.mnist", "test", f"--ckpt_path={best}", *GPU, "--trainer.devices=1",
                            "--trainer.logger=false"], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                           timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert next(line for line in alone.stdout.splitlines() if line.startswith("test metrics: ")) == both


def test_a_killed_gpu_run_resumes_to_the_metrics_of_one_that_never_stopped(tmp_path: Path) -> None:
    """On a GPU, cuDNN may pick other kernels from run to run, so the resumed run is held to the same
    test metrics (printed to 4 decimals) rather than the same bits."""
    kill = '--trainer.callbacks+={"class_path": "faults.KillAt", "init_args": {"epoch": 1, "batch": 3, "group": true}}'
    args = [*TINY, *GPU, "--trainer.devices=1", "--trainer.max_epochs=3", "--trainer.deterministic=true"]
    first = fit(tmp_path / "first", "mnist", *args)
    crashed = fit(tmp_path / "crashed", "mnist", *args, kill)
    resumed = fit(tmp_path / "crashed", "mnist", *args, "--ckpt_path", "last")
    assert crashed.returncode == -signal.SIGKILL
    assert first.returncode == 0 and resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = [next(line for line in run.stdout.splitlines() if line.startswith("test metrics: ")) for run in (first, resumed)]
    assert metrics[0] == metrics[1]
