"""One home for each default: an app's config.yaml holds the Trainer's settings and only those model and
data settings that differ from the classes' ``__init__`` defaults, so Python and the CLI build the same
model; configs are settings, not results; code comments carry no measured figures."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import LightningDataModule, LightningModule

from registry import APPS, REPO


def app_classes(name: str) -> dict[str, type]:
    """The LightningModule and LightningDataModule an app's ``__main__`` runs."""
    found = {"model": set(), "data": set()}
    for value in vars(importlib.import_module(APPS[name].module)).values():
        if isinstance(value, type) and issubclass(value, LightningModule):
            found["model"].add(value)
        if isinstance(value, type) and issubclass(value, LightningDataModule):
            found["data"].add(value)
    # the classes the app runs, not the bases they come from
    found = {section: {c for c in classes if not any(o is not c and issubclass(o, c) for o in classes)} for section, classes in found.items()}
    assert all(len(classes) == 1 for classes in found.values()), found
    return {section: classes.pop() for section, classes in found.items()}


@pytest.mark.parametrize("name", sorted(APPS))
def test_the_config_repeats_no_default(name: str) -> None:
    config = yaml.safe_load(APPS[name].config_path.read_text())
    repeated, unknown = [], []
    for section, cls in app_classes(name).items():
        parameters = inspect.signature(cls).parameters
        for key, value in (config.get(section) or {}).items():
            if key not in parameters:
                unknown.append(f"{section}.{key}")
                continue
            default = parameters[key].default
            default = list(default) if isinstance(default, tuple) else default
            if not isinstance(value, dict) and value == default:  # a dict: a class_path with init_args
                repeated.append(f"{section}.{key}={value!r}")
    assert not unknown, f"{name}: not arguments of the classes: {unknown}"
    assert not repeated, f"{name}: the config repeats the __init__ default of {repeated}"


@pytest.mark.parametrize("name", sorted(APPS))
def test_config_comments_are_at_most_two_lines(name: str) -> None:
    block = longest = 0
    for line in APPS[name].config_path.read_text().splitlines():
        block = block + 1 if line.lstrip().startswith("#") else 0
        longest = max(longest, block)
    assert longest <= 2


# A timing, a percentage or a speed-up in a comment, docstring or config goes stale on the next machine.
FIGURE = re.compile(r"\b\d+(\.\d+)? ?(ms|µs|s|sec|min|seconds|minutes|%)(\W|$)|\d(x| times) (faster|slower)\b|(faster|slower) by \d")


def figures(path: Path, comments_only: bool = False) -> list[str]:
    """Lines of ``path`` (only their comments, for YAML) that carry a measured figure; messages the
    code prints (f-strings, ``print``, ``raise``) may hold figures measured at run time."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.partition("#")[2] if comments_only else line
        if FIGURE.search(text) and not re.search(r"\bf\"|\bf'|print\(|raise |DataError\(", line):
            found.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{number}: {line.strip()}")
    return found


def test_the_figure_check_finds_figures(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text('''"""Packed sequences run about 7 times slower.
Each call costs 1.5 ms, 25% of a step; the fit takes 161 s.
"""
x = 2**20  # bytes in a MiB, over (B, T) tokens for 3 epochs
raise ValueError(f"took {x} s")
''')
    assert [line.split(":")[1] for line in figures(source)] == ["1", "2"]


@pytest.mark.parametrize("package", ["apps", "datamodules", "models"])
def test_no_measured_figures_in_code_comments(package: str) -> None:
    found = [line for path in sorted((REPO / package).rglob("*.py")) for line in figures(path)]
    assert not found, "\n".join(found)


def test_no_measured_figures_in_configs() -> None:
    found = [line for app in APPS.values() for line in figures(app.config_path, comments_only=True)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_argument_documented_as_linked_is_linked(name: str, capsys) -> None:
    """A model argument whose docstring says "linked from the DataModule" is a link target of the app's
    CLI, so ``--print_config`` leaves it out: the value comes from the DataModule, never from a default."""
    model = app_classes(name)["model"]
    entries = re.split(r"\n    (?=\w+: )", (inspect.getdoc(model) or "").partition("Args:")[2])  # one per argument
    documented = {entry.split(":")[0].strip() for entry in entries if "linked from the DataModule" in " ".join(entry.split())}
    with pytest.raises(SystemExit):
        APPS[name].main(["fit", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["model"]
    assert documented and not documented & printed.keys(), f"documented as linked: {documented}; printed: {printed.keys()}"
