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


# A timing, a percentage or a speed-up in a comment or docstring goes stale on the next machine.
FIGURE = re.compile(r"\d+(\.\d+)? ?(ms|µs|%|x faster|x slower|times (faster|slower))\b|\b(faster|slower) by \d")


@pytest.mark.parametrize("package", ["apps", "datamodules", "models"])
def test_no_measured_figures_in_code_comments(package: str) -> None:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            text = line.split("#", 1)[1] if "#" in line else line if line.startswith((" ", '"')) else ""
            if FIGURE.search(text) and not re.search(r"f\"|f'|print\(|raise ", line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
