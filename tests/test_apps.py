"""Every app through its CLI, in-process: fit (fast_dev_run and a few real epochs with logging and
checkpointing on), test and predict from the checkpoint alone, bad input, and DDP on 2 CPU processes."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from registry import APPS, REPO, App
from wandb_run import config_keys, history_keys


def run(app: App, *args: str) -> str:
    """Run the app's CLI in-process; returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        app.main(list(args))
    return out.getvalue()


def printed_metrics(output: str) -> dict[str, float]:
    line = next(line for line in output.splitlines() if line.startswith("test metrics: "))
    return {k: float(v) for k, v in (pair.split("=") for pair in line.split()[2:])}


def inputs_in_order(args: list[str]) -> list[str]:
    """What the predict output's `input` column must list, in order, for the app test's inputs."""
    path = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--data.predict_path=")))
    if path.suffix == ".npy":
        return [f"{path.name}[{i}]" for i in range(len(np.load(path)))]
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[1:] if path.suffix == ".csv" else lines  # a CSV's header names no input


def best_checkpoint(workdir: Path, output: str) -> Path:
    """The checkpoint path `fit` printed, relative to its working directory."""
    return workdir / next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("checkpoint: "))


@pytest.fixture(scope="module", params=sorted(APPS))
def trained(request, tmp_path_factory) -> tuple[App, Path, str]:
    """One real fit per app with CSV and W&B logging and checkpointing on."""
    app = APPS[request.param]
    workdir = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        output = run(app, "fit", *app.data, *app.train, *app.test)
    return app, workdir, output


@pytest.mark.parametrize("name", sorted(APPS))
def test_fast_dev_run_wires_everything(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    output = run(APPS[name], "fit", *APPS[name].data, "--trainer.fast_dev_run=true")
    assert {k for k in APPS[name].metrics if k.startswith("test/")} <= printed_metrics(output).keys()


def test_fit_leaves_checkpoints_metrics_and_a_wandb_run(trained) -> None:
    app, workdir, output = trained
    versions = list(workdir.glob("runs/*/version_0"))
    assert len(versions) == 1
    run_dir = versions[0]
    best = best_checkpoint(workdir, output)
    assert best.is_file() and best.name.startswith("best-epoch")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()
    with open(run_dir / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    assert app.metrics <= columns
    for picture in app.pictures:
        assert (run_dir / picture).stat().st_size > 1000

    wandb_files = list(workdir.glob("runs/*/wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1, "exactly one offline W&B run"
    assert app.metrics <= history_keys(wandb_files[0])
    assert {"config", "data/dataset_used"} <= config_keys(wandb_files[0])
    assert f"wandb sync {wandb_files[0].parent}" in output


def test_test_and_predict_need_only_the_checkpoint(trained, tmp_path: Path, monkeypatch) -> None:
    app, workdir, fit_output = trained
    best = best_checkpoint(workdir, fit_output)
    monkeypatch.chdir(tmp_path)  # nothing from the fit run's folder but the checkpoint

    tested = printed_metrics(run(app, "test", f"--ckpt_path={best}", *app.test))
    assert tested == pytest.approx(printed_metrics(fit_output), abs=1e-4)

    args, truth = app.predict_inputs(tmp_path)
    output = tmp_path / "predictions.csv"
    run(app, "predict", f"--ckpt_path={best}", *args, f"--output={output}")
    with open(output) as f:
        rows = list(csv.DictReader(f))
    assert [row["input"] for row in rows] == inputs_in_order(args)
    if not truth:  # the autoencoder: a reconstruction error per input instead of a label
        images = np.load(tmp_path / "digits.npy").reshape(20, -1) / 255
        # no constant output scores below each image's pixel variance (its mean pixel as the constant);
        # a constant 0.5 scores more still
        constant = images.var(axis=1)
        mse = np.array([float(row["mse"]) for row in rows])
        assert len(rows) == 20 and (mse >= 0).all() and mse.mean() < 0.8 * constant.mean(), (mse.mean(), constant.mean())
        return
    assert len(rows) == len(truth)
    assert all(0 <= float(row["probability"]) <= 1 for row in rows)  # a long sequence's may underflow to 0
    outputs = [row[app.predicted] for row in rows]
    if app.predicted == "translation":  # few exact matches: closer to its own reference than to the others'
        from difflib import SequenceMatcher

        def similarity(pairs) -> float:
            return float(np.mean([SequenceMatcher(None, a, b).ratio() for a, b in pairs]))

        # A constant output, or one unrelated to its input, is as close to another phrase's reference.
        shifted = truth[1:] + truth[:1]
        own, others = similarity(zip(outputs, truth)), similarity(zip(outputs, shifted))
        assert own > others + 0.1, (own, others, outputs[:5])
    accuracy = np.mean([output == label for output, label in zip(outputs, truth)])
    assert accuracy >= app.min_predict_accuracy


@pytest.mark.parametrize("name", sorted(APPS))
def test_print_config_shows_the_app_defaults(name: str, capsys) -> None:
    """Every value of the app's config.yaml is in the resolved config (and so reaches the run)."""
    with pytest.raises(SystemExit) as exit_:
        APPS[name].main(["fit", "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    app_config = yaml.safe_load(APPS[name].config_path.read_text())

    def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(leaves(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    resolved = leaves(printed)
    expected = leaves(app_config)
    assert expected and {key: resolved.get(key) for key in expected} == expected
    assert printed["checkpoint"]["monitor"].startswith("val/")


@pytest.mark.parametrize("name", sorted(APPS))
def test_loggers_can_be_turned_off(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run(APPS[name], "fit", *APPS[name].data, "--trainer.fast_dev_run=true", "--trainer.logger=false")
    assert not list(tmp_path.glob("runs/**/wandb")) and not list(tmp_path.glob("runs/**/metrics.csv"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "--model.no_such_option=1"], "no_such_option"),
        (["fit", "--trainer.max_epoch=3"], "--trainer.max_epoch=3"),  # no silent abbreviation
        (["fit", "--data.batch_size=many"], "data.batch_size"),
        (["test"], "test needs --ckpt_path"),
        (["test", "--ckpt_path=missing.ckpt"], "--ckpt_path missing.ckpt: no such file"),
    ],
)
@pytest.mark.parametrize("name", sorted(APPS))
def test_bad_options_end_in_one_line(name: str, args: list[str], message: str, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        APPS[name].main(args)
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_predict_refuses_bad_input_and_leaves_the_output_as_it_was(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    app, workdir, fit_output = trained
    if app is not APPS["mnist"]:
        pytest.skip("image folders are the MNIST app's input")
    best = best_checkpoint(workdir, fit_output)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG truncated")
    output = tmp_path / "out.csv"
    output.write_text("stale result\n")
    for args, message in [
        ([f"--data.predict_path={tmp_path / 'images'}", f"--output={output}"], "broken.png: unreadable image"),
        ([f"--data.predict_path={tmp_path / 'images'}"], "predict needs --output"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            app.main(["predict", f"--ckpt_path={best}", *args])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert output.read_text() == "stale result\n" and not list(tmp_path.glob("*.partial"))


def test_predict_never_overwrites_its_input(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    """--output naming the input file, a wrong suffix, a missing folder, more than one device: one line,
    exit code 2, the input as it was."""
    app, workdir, fit_output = trained
    if app is not APPS["tabular"]:
        pytest.skip("the tabular app reads and writes .csv files, so its input can be named as its output")
    best = best_checkpoint(workdir, fit_output)
    monkeypatch.chdir(tmp_path)
    args, _ = app.predict_inputs(tmp_path)
    source = Path(args[0].split("=", 1)[1])
    before = source.read_bytes()
    for extra, message in [
        ([f"--output={source}"], f"--output {source} is the input --data.predict_path"),
        ([f"--output={tmp_path / 'out.txt'}"], "name a .csv or .jsonl file"),
        ([f"--output={tmp_path / 'missing' / 'out.csv'}"], f"folder {tmp_path / 'missing'} does not exist"),
        ([f"--output={tmp_path / 'out.csv'}", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"],
         "predict runs on one device"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            app.main(["predict", f"--ckpt_path={best}", *args, *extra])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert exit_.value.code == 2 and len(err) == 1 and message in err[0], err
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [source.name]  # no output, no temporary file


def test_the_app_clips_gradients_to_its_configured_value(tmp_path: Path, monkeypatch) -> None:
    """The sentiment app's config.yaml sets gradient_clip_val; a fit through the app clips to it."""
    from faults import GradientNorms

    app = APPS["sentiment"]
    clip = yaml.safe_load(app.config_path.read_text())["trainer"]["gradient_clip_val"]
    assert clip
    monkeypatch.chdir(tmp_path)
    run(app, "fit", *app.data, *[arg for arg in app.train if arg.startswith("--model.")], "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        '--trainer.callbacks+={"class_path": "faults.GradientNorms", "init_args": {"scale_last_layer": 1000}}')
    assert len(GradientNorms.after) == 3 and min(GradientNorms.before) > 10 * clip
    assert max(GradientNorms.after) <= clip * 1.001


def test_default_root_dir_holds_everything_a_run_writes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    output = run(APPS["mnist"], "fit", *APPS["mnist"].data, "--trainer.default_root_dir=out", "--trainer.max_epochs=1",
                 "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
                 "--trainer.enable_progress_bar=false")
    assert not (tmp_path / "runs").exists()
    assert best_checkpoint(tmp_path, output).resolve().is_relative_to(tmp_path / "out")
    assert (tmp_path / "out/version_0/checkpoints/last.ckpt").is_file() and (tmp_path / "out/version_0/metrics.csv").is_file()
    assert len(list(tmp_path.glob("out/wandb/offline-run-*"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    "problem, message",
    [("missing", "MNIST is not in data/MNIST/raw"), ("corrupt", "t10k-labels-idx1-ubyte: corrupt MNIST IDX file")],
)
def test_mnist_file_problems_stop_fit_with_one_line(problem, message, tmp_path: Path, monkeypatch, capsys) -> None:
    from conftest import write_mnist

    if problem == "corrupt":
        write_mnist(tmp_path / "data")
        (tmp_path / "data/MNIST/raw/t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        APPS["mnist"].main(["fit", "--data.dataset=mnist", "--trainer.fast_dev_run=true"])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and message in err[0]


def printed(output: str, stage: str) -> dict[str, float]:
    line = next(line for line in output.splitlines() if line.startswith(f"{stage} metrics: "))
    return {k: float(v) for k, v in (pair.split("=") for pair in line.split()[2:])}


@pytest.mark.parametrize(  # a few apps in the default suite; the others run with -m slow
    "name", [name if app.ddp_in_default_suite else pytest.param(name, marks=pytest.mark.slow) for name, app in sorted(APPS.items())]
)
def test_ddp_on_two_cpu_processes_counts_each_example_once(name: str, tmp_path: Path, monkeypatch) -> None:
    """2 DDP processes fit one epoch, validating and testing on the whole val and test sets; the same
    checkpoint in one process gives the same val and test metrics (the sets have odd sizes, so a
    sampler that pads a rank's share counts an example twice and the metrics differ)."""
    from conftest import subprocess_env

    app = APPS[name]
    args = [
        *app.data,
        *[arg for arg in app.train if arg.startswith("--model.")],
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
        "--trainer.enable_progress_bar=false",
    ]
    done = subprocess.run(
        [sys.executable, "-m", app.module.removesuffix(".__main__"), "fit", *args],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "All distributed processes registered. Starting with 2 processes" in done.stderr + done.stdout
    assert len(list(tmp_path.glob("runs/*/wandb/offline-run-*"))) == 1  # rank zero only
    (metrics_file,) = tmp_path.glob("runs/*/version_0/metrics.csv")
    with open(metrics_file) as f:
        (val_row,) = [row for row in csv.DictReader(f) if row.get("val/loss")]
    both_val = {key: float(value) for key, value in val_row.items() if key.startswith("val/") and value}
    both_test = printed(done.stdout, "test")
    best = best_checkpoint(tmp_path, done.stdout)

    (tmp_path / "alone").mkdir()
    monkeypatch.chdir(tmp_path / "alone")
    alone_test = printed(run(app, "test", f"--ckpt_path={best}", "--trainer.logger=false"), "test")
    alone_val = printed(run(app, "validate", f"--ckpt_path={best}", "--trainer.logger=false"), "val")
    # printed to 4 decimals: equal up to that rounding
    assert alone_test.keys() == both_test.keys() and alone_test == pytest.approx(both_test, abs=1.01e-4)
    assert alone_val.keys() == both_val.keys() and alone_val == pytest.approx(both_val, abs=0.51e-4)
