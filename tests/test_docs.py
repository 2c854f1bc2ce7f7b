"""The README documents every command and option, and the package exports what it says."""

from __future__ import annotations

import types

import click
import pytest

import bulksync
from bulksync.cli import main

from .conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _options() -> list[tuple[str, str]]:
    found = []
    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                longest = max(param.opts, key=len)
                found.append((name, longest))
    return found


@pytest.mark.parametrize(("command", "option"), _options())
def test_every_option_is_in_the_readme(command: str, option: str) -> None:
    assert f"`{option}" in README, f"{command} {option} is not documented in README.md"


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_is_in_the_readme(command: str) -> None:
    assert f"bulksync {command}" in README


def test_public_names_are_exported() -> None:
    for name in bulksync.__all__:
        assert hasattr(bulksync, name), name
    public = {
        name
        for name, value in vars(bulksync).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(bulksync.__all__)
