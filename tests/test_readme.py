"""The README's commands and options parse: every ``python -m apps.<name> ...`` line of its bash
blocks and inline code, and every inline ``--key=value`` option outside "Troubleshooting" (which shows
bad ones on purpose), through the app's CLI with ``--print_config``, in-process (nothing trains)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from registry import APPS, PROJECT_APPS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
BLOCKS = re.compile(r"```.*?```", re.DOTALL)


def commands() -> list[str]:
    lines = [line for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL) for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`(python -m apps\.[^`]+)`", BLOCKS.sub("", README))
    found = [line.split(" #")[0].strip() for line in lines]
    # A command runs a subcommand; the apps table names bare modules.
    return [command for command in found if re.match(r"python -m apps\.\w+ (fit|validate|test|predict|serve)\b", command)]


def options() -> list[str]:
    """Inline ``--key=value`` options outside code blocks and outside Troubleshooting; ``a|b`` values
    as one option each."""
    prose = BLOCKS.sub("", README)
    prose = re.sub(r"## Troubleshooting\n.*?(?=\n## )", "", prose, flags=re.DOTALL)
    found = []
    for span in re.findall(r"`(--[a-z_]+\.[^`]*=[^`]*)`", prose):
        key, _, values = span.partition("=")
        found += [f"{key}={value}" for value in values.split("|")] if " " not in span else [span]
    return sorted(set(found))


def parse(app: str, args: list[str]) -> tuple[int | str | None, str]:
    """The exit code of ``python -m apps.<app> ARGS --print_config``, and what it printed."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output), pytest.raises(SystemExit) as exit_:
        APPS[app].main([*args, "--print_config"])
    return exit_.value.code, output.getvalue()


def test_the_readme_has_commands_and_options() -> None:
    assert len(commands()) >= 20 and len(options()) >= 10


@pytest.mark.parametrize("command", commands())
def test_readme_command_parses(command: str) -> None:
    _, _, app, *args = shlex.split(command)
    if "--config" in args:
        pytest.skip("reads a config file the reader writes first")
    code, printed = parse(app.removeprefix("apps."), args)
    assert code == 0, printed[-500:]


@pytest.mark.parametrize("option", options())
def test_readme_option_parses_for_an_app(option: str) -> None:
    errors = []
    for app in PROJECT_APPS:
        code, printed = parse(app, ["fit", *shlex.split(option)])
        if code == 0:
            return
        errors.append(f"{app}: {printed.strip().splitlines()[-1]}")
    pytest.fail(f"{option} parses for no app:\n" + "\n".join(errors))
