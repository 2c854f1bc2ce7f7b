"""What `--help` teaches: sync's options in named groups, its examples (which must parse), every
repeatable option said to be, click's usage errors in bulksync's style, shell completion."""

from __future__ import annotations

import re
import shlex

import click
import cloup
import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main

SYNC = main.commands["sync"]

SYNC_GROUPS = {
    "Input": ["--format", "--encoding", "--delimiter", "--limit", "--chunk-size"],
    "Mapping": [
        "--mapping",
        "--preset",
        "--id-column",
        "--email-column",
        "--date-column",
        "--timezone",
        "--rename",
        "--exclude",
        "--type",
        "--empty",
        "--set",
        "--snake-case",
        "--update-only",
        "--kind",
    ],
    "Sending": [
        "--region",
        "--base-url",
        "--timeout",
        "--rate",
        "--concurrency",
        "--max-retries",
        "--max-wait",
        "--batch",
        "--batch-size",
        "--grace",
        "--yes",
        "--dry-run",
    ],
    "Results": ["--results", "--fresh", "--quiet", "--json", "--log-file"],
    "State": ["--state", "--full", "--missing", "--max-missing"],
}


def bulksync(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="bulksync", env=env)


def _groups(command: click.Command) -> dict[str, list[str]]:
    assert isinstance(command, cloup.Command)
    return {
        group.title: [max(option.opts, key=len) for option in group.options]
        for group in command.option_groups
    }


def test_sync_options_are_in_groups_in_this_order() -> None:
    groups = _groups(SYNC)
    assert list(groups) == list(SYNC_GROUPS)
    mapping = groups.pop("Mapping")
    kind = mapping.index("--kind")
    assert mapping[: kind + 1] == SYNC_GROUPS["Mapping"]
    # After --kind: the columns each kind reads, made from the KINDS table.
    assert mapping[kind + 1 :] and all(
        option.endswith("-column") or option in ("--event-name", "--platform", "--object-type-id")
        for option in mapping[kind + 1 :]
    )
    assert groups == {title: opts for title, opts in SYNC_GROUPS.items() if title != "Mapping"}
    assert isinstance(SYNC, cloup.Command) and SYNC.ungrouped_options == []


def test_sync_help_shows_the_groups_then_the_examples() -> None:
    result = bulksync("sync", "--help")
    assert result.exit_code == 0, result.output
    headings = re.findall(r"^(\w[\w ]*):$", result.output, flags=re.MULTILINE)
    assert headings == [*SYNC_GROUPS, "Other options", "Examples"]


def test_retry_options_are_grouped_too() -> None:
    groups = _groups(main.commands["retry"])
    assert list(groups) == ["Sending", "Results", "State"]
    assert groups["Sending"][0] == "--all-failed"
    assert groups["Results"] == ["--quiet", "--json", "--log-file"]
    assert groups["State"] == ["--state"]


def _examples() -> list[list[str]]:
    """The `bulksync sync` command lines of sync's epilog, continuation lines joined, a shell's
    $(...) replaced by what it prints."""
    assert SYNC.epilog
    text = re.sub(r"\$\([^)]*\)", "2024-05-01", SYNC.epilog.replace("\\\n", " "))
    return [shlex.split(line.strip())[2:] for line in text.splitlines() if "bulksync sync" in line]


def test_sync_examples_cover_a_first_migration_a_preset_and_a_nightly_import() -> None:
    examples = _examples()
    assert any("--dry-run" in args for args in examples)
    assert any(
        args[args.index("--preset") + 1] == "mailchimp" for args in examples if "--preset" in args
    )
    assert any("--state" in args and "--batch" in args for args in examples)


@pytest.mark.parametrize("args", _examples(), ids=" ".join)
def test_each_sync_example_parses(args: list[str]) -> None:
    with SYNC.make_context("sync", list(args)) as ctx:
        assert ctx.params["input_path"] == args[0]


def _all_options() -> list[tuple[str, click.Option]]:
    found = []

    def walk(path: str, command: click.Command) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(f"{path} {name}", sub)
        found.extend(
            (f"{path} {max(param.opts, key=len)}", param)
            for param in command.params
            if isinstance(param, click.Option)
        )

    walk("bulksync", main)
    return found


@pytest.mark.parametrize(
    "option",
    [option for _, option in _all_options() if option.multiple],
    ids=lambda option: max(option.opts, key=len),
)
def test_every_repeatable_option_says_so(option: click.Option) -> None:
    assert "(repeatable)" in (option.help or "")


def test_the_repeatable_options_are_the_expected_ones() -> None:
    names = {name for name, option in _all_options() if option.multiple}
    assert {
        "bulksync sync --rename",
        "bulksync sync --exclude",
        "bulksync sync --type",
        "bulksync sync --set",
        "bulksync sync --date-column",
        "bulksync fake-server --reject",
    } <= names


# --- click's usage errors, in bulksync's style -----------------------------------------------


@pytest.mark.parametrize(
    ("args", "message", "command"),
    [
        (["sync"], "missing argument 'INPUT'.", "bulksync sync"),
        (["sync", "x.csv", "--rate", "abc"], "invalid value for '--rate':", "bulksync sync"),
        (["sync", "x.csv", "--kind", "people2"], "invalid value for '--kind':", "bulksync sync"),
        (["sync", "x.csv", "--nope"], "no such option '--nope'", "bulksync sync"),
        (
            ["sync", "x.csv", "--type", "zip"],
            "'zip' is not of the form NAME=VALUE",
            "bulksync sync",
        ),
        (["nope"], "no such command 'nope'.", "bulksync"),
        (["--nope"], "no such option '--nope'", "bulksync"),
        (["state", "stats"], "missing argument 'PATH'.", "bulksync state stats"),
        (["mapping"], "give an INPUT to map, or a --preset", "bulksync mapping"),
    ],
)
def test_usage_errors_are_one_error_line_and_where_to_get_help(
    args: list[str], message: str, command: str
) -> None:
    result = bulksync(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    error, hint = result.stderr.splitlines()
    assert error.startswith("bulksync: error: "), error
    assert message in error
    assert hint == f"Try '{command} --help'."


@pytest.mark.parametrize("args", [[], ["state"]])
def test_a_group_without_its_command_prints_its_help(args: list[str]) -> None:
    result = bulksync(*args)
    assert result.exit_code == 2
    assert result.output.startswith("Usage: bulksync")
    assert "Commands:" in result.output


# --- shell completion ---------------------------------------------------------------------


def _complete(words: str, shell: str = "bash") -> list[str]:
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    env = {"_BULKSYNC_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    result = bulksync(env=env)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_printed(shell: str) -> None:
    result = bulksync(env={"_BULKSYNC_COMPLETE": f"{shell}_source"})
    assert result.exit_code == 0
    assert "_BULKSYNC_COMPLETE" in result.stdout


def test_completion_of_commands_options_values_and_files() -> None:
    assert _complete("bulksync sy") == ["plain,sync"]
    assert _complete("bulksync sync --ra") == ["plain,--rate"]
    assert "plain,merges" in _complete("bulksync sync in.csv --kind ")
    assert _complete("bulksync sync sam") == ["file,sam"]  # INPUT: file names
