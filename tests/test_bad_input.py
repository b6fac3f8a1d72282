"""Every app fed bad input: corrupt, truncated, empty and mis-encoded data files, option values of the
wrong type, unknown options and conflicting ones. Each must end in one ``error:`` line that names the
file or option, exit code 2, no traceback, and nothing that could pass for a result (no
checkpoint, no metrics file, no test metrics printed).

(Bad predict inputs, from a trained checkpoint, are in test_apps.py; damaged checkpoints in
test_reliability.py.)
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from registry import APPS, KINDS


def fails_cleanly(app: str, args: list[str], folder: Path, monkeypatch) -> str:
    """Run ``app`` in ``folder``; assert a clean failure and return its error line."""
    monkeypatch.chdir(folder)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        APPS[app].main(args)
    errors = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2, err.getvalue()[-2000:]
    assert "Traceback" not in err.getvalue() and len(errors) == 1, err.getvalue()[-2000:]
    assert "test metrics" not in out.getvalue()
    leftovers = [p for p in folder.rglob("*") if p.suffix == ".ckpt" or p.name in ("metrics.csv", "predictions.csv")]
    assert not leftovers
    return errors[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("app", sorted(APPS))
def test_a_spoiled_data_file_is_named_in_one_line(app: str, kind: str, tmp_path: Path, monkeypatch) -> None:
    args, name = APPS[app].spoil(tmp_path, kind)
    line = fails_cleanly(app, ["fit", *args, "--trainer.max_epochs=1"], tmp_path, monkeypatch)
    assert name in line


OPTIONS = {
    "wrong type": (["--trainer.max_epochs=many"], "max_epochs"),
    "wrong type of a data option": (["--data.batch_size=ten"], "batch_size"),
    "impossible value": (["--data.batch_size=0"], "batch_size"),
    "unknown option": (["--model.no_such_option=1"], "no_such_option"),
    "misspelt option": (["--trainer.max_epoch=3"], "max_epoch"),
    "conflicting: an accelerator this machine lacks": (["--trainer.accelerator=mps"], "MPSAccelerator"),
}


@pytest.mark.parametrize("case", sorted(OPTIONS))
@pytest.mark.parametrize("app", sorted(APPS))
def test_a_bad_option_is_named_in_one_line(app: str, case: str, tmp_path: Path, monkeypatch) -> None:
    args, named = OPTIONS[case]
    line = fails_cleanly(app, ["fit", *APPS[app].data, *args, "--trainer.logger=false"], tmp_path, monkeypatch)
    assert named in line


@pytest.mark.parametrize("app", sorted(APPS))
def test_conflicting_options_are_named_in_one_line(app: str, tmp_path: Path, monkeypatch) -> None:
    args, named = APPS[app].conflict
    assert named in fails_cleanly(app, [*args, "--trainer.logger=false"], tmp_path, monkeypatch)
