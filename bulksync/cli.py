"""The `bulksync` command: parse options, call the library, turn errors into messages and exits.

Exit codes: 0 every row ok/unchanged/valid · 1 some rows failed or invalid · 2 usage or
configuration error, nothing sent · 3 aborted part-way, re-run to resume.

Start-up: building the commands and their --help imports only click, cloup and light modules
(`defaults`, `errors`, `operations`). The library (pandas, aiohttp, orjson, tqdm...) is
imported inside each command, so `bulksync --help` starts fast; tests/test_startup.py checks.
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import click
import cloup
from click.core import ParameterSource
from click.exceptions import NoArgsIsHelpError

from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, DEFAULT_MAX_WAIT, MISSING, PRESETS
from .errors import BulksyncError
from .operations import KINDS, PEOPLE, PLATFORMS, role_keys

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from .connection import SendOptions
    from .console import ProgressBar
    from .mapping import ColumnMapping
    from .normalize import EmptyPolicy
    from .results import Summary
    from .source import Format
    from .stop import StopHandle


def _pairs(option: str, values: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for value in values:
        old, sep, new = value.partition("=")
        if not sep or not old or not new:
            raise click.BadParameter(f"{value!r} is not of the form NAME=VALUE", param_hint=option)
        if "=" in new:
            # "A=a,B=b" would otherwise rename A to a column called "a,B=b".
            raise click.BadParameter(
                f"{value!r}: one NAME=VALUE per option; repeat {option} for each column",
                param_hint=option,
            )
        pairs[old] = new
    return pairs


def _complete_path(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion of a path taken as text (INPUT may also be - for stdin): file names."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="file")]


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    value = {"tab": "\t", "\\t": "\t"}.get(value.lower(), value)
    if len(value) != 1:
        raise click.BadParameter("must be a single character, or 'tab'", param_hint="--delimiter")
    return value


def _fail(exc: BulksyncError) -> NoReturn:
    click.echo(f"bulksync: error: {exc}", err=True)
    sys.exit(exc.exit_code)


F = TypeVar("F", bound=Callable[..., Any])


def connection_options(command: F) -> F:
    """--region, --base-url and --timeout, shared by every command that talks to the API."""
    for option in reversed(
        [
            click.option(
                "--region",
                type=click.Choice(["us", "eu"]),
                default="us",
                show_default=True,
                envvar="CUSTOMERIO_REGION",
                help="Your workspace's region (env CUSTOMERIO_REGION).",
            ),
            click.option(
                "--base-url",
                envvar="BULKSYNC_BASE_URL",
                help="Track API base URL instead of the region's, e.g. a local simulator"
                " (env BULKSYNC_BASE_URL). http:// only for loopback hosts.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0.1),
                default=10.0,
                show_default=True,
                help="Seconds to wait for each answer before retrying.",
            ),
        ]
    ):
        command = option(command)
    return command


def send_options(command: F) -> F:
    """How to send, after connection_options in the Sending group: shared by `sync` and `retry`."""
    for option in reversed(
        [
            click.option(
                "--rate",
                type=click.FloatRange(min=0),
                default=100.0,
                show_default=True,
                help="Most requests started in any one-second window: your workspace's Track"
                " API limit. A ceiling: on 429 answers bulksync slows down below it, and speeds"
                " up again when they stop. 0 removes the cap (only for a local simulator).",
            ),
            click.option(
                "--concurrency",
                type=click.IntRange(min=1),
                help="Requests in flight at once. Default: enough to reach --rate at 500 ms"
                " latency.",
            ),
            click.option(
                "--max-retries",
                type=click.IntRange(min=0),
                default=5,
                show_default=True,
                help="Retries of a transient failure (5xx, timeout, network) before the row"
                " fails. 429s (rate limited) are retried, slower, without counting.",
            ),
            click.option(
                "--max-wait",
                type=click.FloatRange(min=0),
                default=DEFAULT_MAX_WAIT,
                show_default=True,
                help="Longest wait honoured when the API asks for one (Retry-After, seconds);"
                " a longer one stops the run (exit 3), saying when to run it again.",
            ),
            click.option(
                "--batch",
                is_flag=True,
                help="Send through POST /api/v2/batch: many people per request, one request"
                " against the rate limit, each row's outcome still recorded.",
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=DEFAULT_BATCH_SIZE,
                show_default=True,
                help="With --batch: most people per request (requests also stay under 500 KB).",
            ),
            click.option(
                "--grace",
                type=click.FloatRange(min=0),
                default=10.0,
                show_default=True,
                help="On Ctrl-C or SIGTERM, seconds to let requests in flight finish (a second"
                " Ctrl-C stops at once).",
            ),
            click.option(
                "--yes",
                is_flag=True,
                help="Send the kinds that cannot be undone (deletions, suppressions, merges);"
                " without it they send nothing. Try --dry-run first.",
            ),
        ]
    ):
        command = option(command)
    return command


def output_options(command: F) -> F:
    """What a run prints (in the Results group): shared by `sync` and `retry`."""
    for option in reversed(
        [
            click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary."),
            click.option(
                "--json", "as_json", is_flag=True, help="Print the summary as one JSON object."
            ),
            click.option(
                "--log-file",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Also log to this file, every retry included.",
            ),
        ]
    ):
        command = option(command)
    return command


def state_options(command: F) -> F:
    """The diff state (the State group): shared by `sync` and `retry`."""
    for option in reversed(
        [
            click.option(
                "--state",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Diff state file (SQLite, created on first use): rows whose payload"
                " Customer.io already accepted are 'unchanged' and not sent again.",
            ),
        ]
    ):
        command = option(command)
    return command


def kind_options(command: F) -> F:
    """--kind and the options naming the columns each kind reads, made from the KINDS table."""
    seen: set[str] = set()
    decorators = [
        click.option(
            "--kind",
            type=click.Choice(list(KINDS)),
            default=PEOPLE,
            show_default=True,
            help="What each row becomes: a person's attributes, an event, a push device, an object"
            " (e.g. a company), a person-object relationship, a deletion, a suppression, an"
            " unsuppression, or a merge of two people. Columns per kind: see the README.",
        )
    ]
    for kind in KINDS.values():
        for role in kind.roles:
            if role.option in seen:
                continue
            seen.add(role.option)
            kinds = ", ".join(k.name for k in KINDS.values() if role in k.roles)
            decorators.append(
                click.option(role.option, metavar="COL", help=f"--kind {kinds}: {role.help}")
            )
            if role.constant:
                choices = (
                    click.Choice(PLATFORMS, case_sensitive=False)
                    if role.name == "platform"
                    else None
                )
                decorators.append(
                    click.option(
                        role.constant,
                        type=choices,
                        metavar=None if choices else "VALUE",
                        help=f"--kind {kinds}: {role.constant_help}",
                    )
                )
    for option in reversed(decorators):
        command = option(command)
    return command


class _UsageError(click.UsageError):
    """A click usage error (a bad option value, a missing argument, an unknown option or
    command) shown like every other error: `bulksync: error: ...`, then where to get help."""

    def show(self, file: Any = None) -> None:
        message = self.format_message()
        if message[:1].isupper() and message[1:2].islower():
            message = message[0].lower() + message[1:]  # "Invalid value..." as ours: "invalid"
        click.echo(f"bulksync: error: {message}", file=file, err=True)
        if self.ctx is not None and self.ctx.command.get_help_option(self.ctx) is not None:
            names = self.ctx.command.get_help_option_names(self.ctx)
            click.echo(f"Try '{self.ctx.command_path} {max(names, key=len)}'.", file=file, err=True)


@contextmanager
def _usage_errors() -> Iterator[None]:
    """Click's usage errors raised inside, re-raised as _UsageError (still exit 2)."""
    try:
        yield
    except (_UsageError, NoArgsIsHelpError):
        raise  # already restyled; or a group given no command, which prints its help
    except click.UsageError as exc:
        raise _UsageError(exc.format_message(), exc.ctx) from exc


class _Commands(cloup.Group):
    """The command group: a BulksyncError from any command (a bad option value found while
    building the options, say) is one line and an exit code, never a traceback; click's own
    usage errors are printed in the same style (exit 2), with where to get help."""

    group_class = cloup.Group  # `state`: its help in the same format

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _usage_errors():  # `bulksync --nope`
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_errors():  # an unknown command, a subcommand's options, its callback
            try:
                return super().invoke(ctx)
            except BulksyncError as exc:
                _fail(exc)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="bulksync")
def main() -> None:
    """Sync customer rows from CSV and JSONL files into Customer.io (Track API).

    Credentials come from the environment: CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY.
    """


_CREDENTIALS = "Credentials: CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY, from the environment."

_SYNC_EXAMPLES = """\
Examples:

\b
  A first migration: dry-run it, see why rows are invalid, fix them, then send:
    bulksync sync customers.csv --dry-run
    bulksync report customers.csv.dry-run.jsonl
    bulksync sync customers.csv

\b
  A Mailchimp audience export (each CSV of its zip), read with the preset:
    bulksync sync subscribed_members_export_ID.csv --preset mailchimp --dry-run
    bulksync sync subscribed_members_export_ID.csv --preset mailchimp

\b
  A nightly import: only the rows changed since last night, in batches:
    bulksync sync customers.csv --state customers.state.db --batch \\
      --results results/$(date +%F).jsonl
"""


@main.command("sync", epilog=_SYNC_EXAMPLES)
@click.argument("input_path", metavar="INPUT", shell_complete=_complete_path)
@cloup.option_group(
    "Input",
    click.option(
        "--format",
        "fmt",
        type=click.Choice(["csv", "jsonl"]),
        help="Input format. Default: from the extension (.csv .tsv .jsonl .ndjson, each optionally"
        " .gz); for stdin, JSONL if the first character is '{', else CSV. Workbooks (.xlsx .xls"
        " .ods), zip archives and Parquet files are recognised by their content, and refused with"
        " what to do instead.",
    ),
    click.option(
        "--encoding",
        default="utf-8",
        show_default=True,
        help="Text encoding of the input, e.g. cp1252 or latin-1. A byte-order mark at the start"
        " (UTF-8, UTF-16, UTF-32) decides instead, with a warning.",
    ),
    click.option(
        "--delimiter",
        help="CSV field delimiter, e.g. ';' or 'tab'. Default: what an Excel 'sep=X' first line"
        " says, tab for .tsv, else ','; when ',' reads the header as one column holding ';', tab or"
        " '|', that one (with a warning).",
    ),
    click.option("--limit", type=click.IntRange(min=1), help="Process only the first N rows."),
    click.option(
        "--chunk-size",
        type=click.IntRange(min=1),
        default=DEFAULT_CHUNK_SIZE,
        show_default=True,
        help="Rows read and normalized at a time (bounds memory).",
    ),
)
@cloup.option_group(
    "Mapping",
    "How each row becomes a request: its identifier, the columns sent and as what. A"
    " --mapping file or --preset holds these; the options given here override it.",
    click.option(
        "--mapping",
        "mapping_path",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE.toml",
        help="Read the column options (identifier, renames, types, dates, exclusions, --kind...)"
        " from a mapping file; options given here override it. Start one with: bulksync mapping"
        " INPUT.",
    ),
    click.option(
        "--preset",
        type=click.Choice(PRESETS),
        help="The mapping shipped for an export of this platform (see docs/presets.md); dump it"
        " to edit with: bulksync mapping --preset NAME.",
    ),
    click.option(
        "--id-column",
        help="Column holding the identifier used in the URL. Default: 'id' if present, else"
        " 'email'.",
    ),
    click.option(
        "--email-column",
        help="Column whose values are checked as email addresses. Default: 'email'.",
    ),
    click.option(
        "--date-column",
        "date_columns",
        multiple=True,
        metavar="COL",
        help="Convert COL to Unix seconds (repeatable). 'created_at' is always a date column.",
    ),
    click.option(
        "--timezone",
        default="UTC",
        show_default=True,
        help="Time zone of dates written without an offset (an IANA name like Europe/Paris).",
    ),
    click.option(
        "--rename",
        multiple=True,
        metavar="OLD=NEW",
        help="Send column OLD as attribute NEW (repeatable).",
    ),
    click.option(
        "--exclude", multiple=True, metavar="COL", help="Do not send column COL (repeatable)."
    ),
    click.option(
        "--type",
        "types",
        multiple=True,
        metavar="COL=TYPE",
        help="Send COL as int, float, bool or str (repeatable). CSV cells are strings unless"
        " typed.",
    ),
    click.option(
        "--empty",
        type=click.Choice(["skip", "clear"]),
        default="skip",
        show_default=True,
        help='Empty cells: leave the attribute untouched (skip), or send "" to clear it (clear).',
    ),
    click.option(
        "--set",
        "set_values",
        multiple=True,
        metavar="KEY=VALUE",
        help="Send attribute KEY with VALUE in every row (repeatable), e.g. --set"
        " unsubscribed=true. VALUE is a string; true and false are booleans.",
    ),
    click.option(
        "--snake-case/--no-snake-case",
        default=None,
        help="Send attribute names not renamed in snake_case ('First Name' becomes first_name).",
    ),
    click.option(
        "--update-only", is_flag=True, help="Only update existing people (_update: true)."
    ),
    kind_options,
)
@cloup.option_group(
    "Sending",
    _CREDENTIALS,
    connection_options,
    send_options,
    click.option(
        "--dry-run", is_flag=True, help="Validate every row and write results; send nothing."
    ),
)
@cloup.option_group(
    "Results",
    "One line per row, with its outcome: run the same command again to resume.",
    click.option(
        "--results",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Results file (JSONL, one line per row). Default: INPUT.results.jsonl; for a"
        " dry run, INPUT.dry-run.jsonl.",
    ),
    click.option(
        "--fresh", is_flag=True, help="Start the results file over instead of resuming it."
    ),
    output_options,
)
@cloup.option_group(
    "State",
    "For nightly imports: send only the rows that changed since Customer.io accepted them.",
    state_options,
    click.option(
        "--full",
        is_flag=True,
        help="With --state: send every row, changed or not, and refresh the state.",
    ),
    click.option(
        "--missing",
        type=click.Choice(MISSING),
        default="keep",
        show_default=True,
        help="With --state, people: what the people Customer.io accepted before and absent from"
        " this complete input get: kept, deleted, or suppressed (those two need --yes), after"
        " the input's rows are sent. Never after an input read partly or with unreadable rows.",
    ),
    click.option(
        "--max-missing",
        metavar="N|N%",
        default="5%",
        show_default=True,
        help="With --missing delete or suppress: if more people than this (a number, or a"
        " percentage of those the state knows) are absent, remove none and exit 2.",
    ),
)
def sync_command(
    input_path: str,
    fmt: Format | None,
    encoding: str,
    delimiter: str | None,
    id_column: str | None,
    email_column: str | None,
    date_columns: tuple[str, ...],
    timezone: str,
    rename: tuple[str, ...],
    exclude: tuple[str, ...],
    types: tuple[str, ...],
    empty: EmptyPolicy,
    update_only: bool,
    results: Path | None,
    dry_run: bool,
    fresh: bool,
    full: bool,
    missing: str,
    max_missing: str,
    region: str,
    base_url: str | None,
    timeout: float,
    rate: float,
    concurrency: int | None,
    max_retries: int,
    max_wait: float,
    batch: bool,
    batch_size: int,
    state: Path | None,
    grace: float,
    quiet: bool,
    as_json: bool,
    log_file: Path | None,
    yes: bool,
    limit: int | None,
    chunk_size: int,
    kind: str,
    mapping_path: Path | None,
    preset: str | None,
    set_values: tuple[str, ...],
    snake_case: bool | None,
    **roles: str | None,
) -> None:
    """Send every row of INPUT (a CSV or JSONL file, or - for stdin) to Customer.io.

    Each row becomes one operation of --kind (default people: PUT /api/v1/customers/{id}), sent
    at up to --rate requests per second (slower while the API answers 429), with transient
    failures retried. Rows of one identifier are sent one at a time, in file order. Each row's
    outcome is written to the results file as it is known; running the same command again
    resumes: rows with an outcome are not sent again.

    With --dry-run nothing is sent: each row is checked and its results line says 'valid' (with
    the exact payload that would be sent) or 'invalid' (with the reason).
    """
    from .api import SyncOptions, sync
    from .console import estimate_rows
    from .mapping import normalize_options as normalize_options_of
    from .source import SourceOptions, input_name

    ctx = click.get_current_context()

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not ParameterSource.DEFAULT

    column_mapping = _column_mapping(mapping_path, preset)
    source = column_mapping.source if column_mapping else {}
    normalize_options = normalize_options_of(
        column_mapping,
        {
            name: value
            for name, value in (
                ("id_column", id_column),
                ("email_column", email_column),
                ("date_columns", date_columns),
                ("timezone", timezone),
                ("rename", _pairs("--rename", rename)),
                ("exclude", frozenset(exclude)),
                ("types", _pairs("--type", types)),
                ("empty", empty),
                ("update_only", update_only),
                ("kind", kind),
                ("role_columns", _given(roles, constants=False)),
                ("constants", _given(roles, constants=True)),
                ("attributes", _attributes(set_values)),
                ("snake_case", snake_case),
            )
            # Only what was given: a default must not override the mapping's value.
            if (given(name) if name in _DEFAULTED else value)
        },
    )
    kind = normalize_options.kind
    options = SyncOptions(
        source=SourceOptions(
            format=fmt if given("fmt") else cast("Format | None", source.get("format")),
            encoding=encoding if given("encoding") else source.get("encoding", encoding),
            delimiter=_delimiter(delimiter if given("delimiter") else source.get("delimiter")),
            chunk_size=chunk_size,
            limit=limit,
        ),
        normalize=normalize_options,
        send=_send_options(
            rate, concurrency, max_retries, timeout, region, base_url, batch, batch_size, max_wait
        ),
        results=results,
        dry_run=dry_run,
        fresh=fresh,
        grace=grace,
        state=state,
        full=full,
        yes=yes,
        missing=missing,
        max_missing=max_missing,
    )
    total = None
    if not (quiet or as_json) and sys.stderr.isatty():
        total = estimate_rows(input_path, fmt)
    _run(
        "dry run" if dry_run else "sync",
        input_name(input_path) + ("" if kind == PEOPLE else f" (--kind {kind})"),
        lambda progress, stop: sync(input_path, options, progress=progress, stop=stop),
        quiet=quiet,
        as_json=as_json,
        log_file=log_file,
        total=total,
    )


@main.command("retry")
@click.argument("results_path", metavar="RESULTS", type=click.Path(path_type=Path))
@cloup.option_group(
    "Sending",
    _CREDENTIALS,
    click.option(
        "--all-failed",
        is_flag=True,
        help="Also re-send rows the API refused (400), e.g. after fixing the workspace's settings.",
    ),
    connection_options,
    send_options,
)
@cloup.option_group("Results", "New outcomes are appended to RESULTS.", output_options)
@cloup.option_group("State", state_options)
def retry_command(
    results_path: Path,
    all_failed: bool,
    region: str,
    base_url: str | None,
    timeout: float,
    rate: float,
    concurrency: int | None,
    max_retries: int,
    max_wait: float,
    batch: bool,
    batch_size: int,
    state: Path | None,
    grace: float,
    quiet: bool,
    as_json: bool,
    log_file: Path | None,
    yes: bool,
) -> None:
    """Re-send the rows whose latest outcome in RESULTS is "failed", each as the same operation
    (people, events...) from the payload kept there (the input file is not needed), and append
    their new outcomes.

    Only transient failures (429, 5xx, timeouts, network) are re-sent, unless --all-failed.
    Deletions, suppressions and merges need --yes, as in sync.
    """
    from .api import SyncOptions, retry

    options = SyncOptions(
        send=_send_options(
            rate, concurrency, max_retries, timeout, region, base_url, batch, batch_size, max_wait
        ),
        grace=grace,
        state=state,
        yes=yes,
    )
    _run(
        "retry",
        str(results_path),
        lambda progress, stop: retry(
            results_path, options, all_failed=all_failed, progress=progress, stop=stop
        ),
        quiet=quiet,
        as_json=as_json,
        log_file=log_file,
        total=None,
    )


def _given(roles: dict[str, str | None], *, constants: bool) -> dict[str, str]:
    """The role options given on the command line: role -> column, or role -> value."""
    by_parameter = role_keys()
    return {
        by_parameter[name][0]: value
        for name, value in roles.items()
        if value is not None and by_parameter[name][1] is constants
    }


# Column options with a default value (or --no-X): given only when the command line says so.
_DEFAULTED = ("timezone", "empty", "kind", "snake_case")


def _column_mapping(path: Path | None, preset: str | None) -> ColumnMapping | None:
    if path is not None and preset is not None:
        raise click.UsageError("--mapping and --preset: give one or the other")
    from .mapping import load as load_mapping
    from .mapping import preset as load_preset

    if path is not None:
        return load_mapping(path)
    return load_preset(preset) if preset else None


def _attributes(values: tuple[str, ...]) -> dict[str, str | bool]:
    """--set KEY=VALUE: VALUE as a string, but true and false as booleans (a mapping file's
    [set] table keeps TOML's types, for numbers)."""
    attributes: dict[str, str | bool] = {}
    for value in values:
        key, sep, text = value.partition("=")
        key, text = key.strip(), text.strip()  # "plan = gold" means plan and gold, as in TOML
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not of the form KEY=VALUE", param_hint="--set")
        attributes[key] = {"true": True, "false": False}.get(text, text)
    return attributes


def _send_options(
    rate: float,
    concurrency: int | None,
    max_retries: int,
    timeout: float,
    region: str,
    base_url: str | None,
    batch: bool,
    batch_size: int,
    max_wait: float,
) -> SendOptions:
    from .connection import SendOptions

    return SendOptions(
        rate=rate or None,
        concurrency=concurrency,
        max_retries=max_retries,
        timeout=timeout,
        region=region,
        base_url=base_url,
        batch=batch,
        batch_size=batch_size,
        max_wait=max_wait,
    )


def _stop_on_signals(stop: StopHandle) -> None:
    def on_signal(signum: int, frame: object) -> None:
        # While rows are being sent, SIGINT/SIGTERM stop gracefully (a second one at once);
        # before or after that, they end the run like Ctrl-C, with exit 3.
        if not stop.stop():
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def _start_run(log_file: Path | None, quiet: bool) -> StopHandle:
    """Logging, and the stop handle the signals use, for a run whose modules are imported."""
    from .console import setup_logging
    from .stop import StopHandle

    setup_logging(log_file, quiet)
    stop = StopHandle()
    _stop_on_signals(stop)
    # pandas alone makes hundreds of thousands of objects: leave them out of the garbage
    # collector's full passes, which a run of millions of rows would otherwise repeat over them,
    # for nearly a tenth of its time.
    gc.freeze()
    # And collect young objects every 50,000 allocations, not 700: a chunk makes tens of
    # thousands of rows' dicts at once, all alive until written, which each young collection
    # walks again only to keep (a 300,000-row batch run spent 0.25 s in the collector, 0.03 s
    # so). Garbage is freed by reference counting as before; only cycles wait a little longer.
    gc.set_threshold(50_000, 20, 10)
    return stop


def _run(
    verb: str,
    subject: str,
    run: Callable[[ProgressBar, StopHandle], Summary],
    *,
    quiet: bool,
    as_json: bool,
    log_file: Path | None,
    total: int | None,
) -> NoReturn:
    """Run a sync or retry with a progress bar on a terminal; print the summary; exit."""
    import orjson

    from .console import ProgressBar, summary_lines

    stop = _start_run(log_file, quiet)
    bar = not (quiet or as_json) and sys.stderr.isatty()
    try:
        # The bar is labelled with the verb alone: an 80-column terminal must still show the
        # rate and the failed/invalid counts after it.
        with ProgressBar(total, bar, verb) as progress:
            summary = run(progress, stop)
    except BulksyncError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        click.echo("bulksync: interrupted; every outcome so far is in the results file", err=True)
        sys.exit(3)
    if as_json:
        click.echo(orjson.dumps(summary.as_dict()).decode())
    elif not quiet:
        click.echo("\n".join(summary_lines(f"{verb} of {subject}", summary)))
    if summary.rows == 0 and not summary.interrupted:
        click.echo("bulksync: warning: no rows", err=True)
    sys.exit(summary.exit_code)


@main.command("run")
@click.argument("job_path", metavar="JOB.toml", type=click.Path(path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Check every step's rows and write results; send nothing."
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Start the job over instead of resuming an unfinished run of it.",
)
@click.option(
    "--yes",
    is_flag=True,
    help="Let every step send the kinds that cannot be undone (or set yes = true per step).",
)
@click.option(
    "--base-url",
    envvar="BULKSYNC_BASE_URL",
    help="Track API base URL instead of the region's, e.g. a local simulator"
    " (env BULKSYNC_BASE_URL).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also log to this file, every retry included.",
)
def run_command(
    job_path: Path,
    dry_run: bool,
    fresh: bool,
    yes: bool,
    base_url: str | None,
    quiet: bool,
    as_json: bool,
    log_file: Path | None,
) -> None:
    """Run the steps of a job file in order: one sync each (an input, its kind and mapping).

    The whole file is checked before anything is sent (every key, each step's mapping against
    its input's header). A step that stops (exit 2 or 3) stops the job; the same command then
    resumes it at that step (finished steps are not run again). Once every step has run, the
    next run starts the job over: the next night's files. Exit code: the stopped step's, else
    1 if a row failed or was invalid in any step, else 0.

    Credentials come from the environment, never from the file. See the README, "Nightly
    cron, several files", and samples/nightly.toml.
    """
    import orjson

    from .console import ProgressBar, job_lines
    from .job import Step, StepResult, load_job, run_job

    stop = _start_run(log_file, quiet)
    bar = not (quiet or as_json) and sys.stderr.isatty()

    def progress(step: Step) -> ProgressBar:
        return ProgressBar(None, bar, step.name)

    def on_step(result: StepResult) -> None:
        if result.error and not as_json:
            click.echo(f"bulksync: error: step {result.step.name}: {result.error}", err=True)

    try:
        job = load_job(job_path, base_url=base_url, dry_run=dry_run, yes=yes)
        summary = run_job(job, fresh=fresh, yes=yes, progress=progress, stop=stop, on_step=on_step)
    except BulksyncError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        click.echo("bulksync: interrupted; run the same command to resume the job", err=True)
        sys.exit(3)
    if as_json:
        click.echo(orjson.dumps(summary.as_dict()).decode())
    elif not quiet:
        click.echo("\n".join(job_lines(summary)))
    sys.exit(summary.exit_code)


@main.command("check")
@connection_options
def check_command(region: str, base_url: str | None, timeout: float) -> None:
    """Verify the credentials in CUSTOMERIO_SITE_ID / CUSTOMERIO_API_KEY; print the region and
    workspace id. Exit 0 when accepted, 3 when refused, 2 when missing."""
    from .connection import SendOptions, check  # http.client: neither pandas nor aiohttp

    options = SendOptions(region=region, base_url=base_url, timeout=timeout)
    try:
        account = check(options)
    except BulksyncError as exc:
        _fail(exc)
    account = account if isinstance(account, dict) else {}
    click.echo(
        f"credentials accepted: region {account.get('region', '?')},"
        f" workspace (environment) id {account.get('environment_id', '?')},"
        f" track URL {account.get('url', '?')}"
    )


@main.group("state")
def state_group() -> None:
    """Inspect or fix a diff state file (see sync --state)."""


@state_group.command("stats")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def state_stats_command(path: Path) -> None:
    """How many identifiers PATH knows, and its latest runs: rows accepted, identifiers the
    input held, known ones absent from it, and those removed (--missing)."""
    from .state import StateStore

    try:
        with StateStore(path) as store:
            stats = store.stats()
    except BulksyncError as exc:
        _fail(exc)
    click.echo(f"identifiers: {stats['identifiers']:,}")
    if not stats["runs"]:
        click.echo("runs: none")
        return
    click.echo("runs, newest first:")
    for run in stats["runs"]:
        started = datetime.fromtimestamp(run["started_at"], UTC).isoformat(timespec="seconds")
        finished = (
            datetime.fromtimestamp(run["finished_at"], UTC).isoformat(timespec="seconds")
            if run["finished_at"]
            else "(not finished)"
        )
        seen = (
            f", saw {run['seen']:,}, {run['absent']:,} known absent"
            if run["seen"] is not None
            else ""  # a retry, or an input not read whole
        )
        removed = f", {run['removed']:,} removed" if run["removed"] else ""
        click.echo(
            f"  {started} to {finished}, {run['input']}: {run['accepted']:,} rows accepted"
            f"{seen}{removed}"
        )


@state_group.command("forget")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("identifiers", nargs=-1, required=True)
def state_forget_command(path: Path, identifiers: tuple[str, ...]) -> None:
    """Forget IDENTIFIERS in PATH, so their next row is sent even if unchanged."""
    from .state import StateStore

    try:
        with StateStore(path) as store:
            known = store.forget(identifiers)
    except BulksyncError as exc:
        _fail(exc)
    click.echo(f"forgot {known} of {len(identifiers)} identifiers")


@main.command("mapping")
@click.argument("input_path", metavar="[INPUT]", required=False, shell_complete=_complete_path)
@click.option("--preset", type=click.Choice(PRESETS), help="Write this preset instead.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write. Default: standard output.",
)
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), help="As given to sync.")
@click.option("--encoding", default="utf-8", show_default=True, help="As given to sync.")
@click.option("--delimiter", help="As given to sync.")
def mapping_command(
    input_path: str | None,
    preset: str | None,
    output: Path | None,
    force: bool,
    fmt: Format | None,
    encoding: str,
    delimiter: str | None,
) -> None:
    """Write a mapping file to edit, for sync --mapping: from INPUT's header, or a --preset.

    From INPUT: every column listed under the name it would be sent as (snake_case), date and
    email columns guessed from the header and the first rows, the identifier column named.
    Review it, then: bulksync sync INPUT --mapping FILE.toml --dry-run.
    """
    from .mapping import preset_text, starter_for
    from .report import shell_word
    from .source import SourceOptions

    if (input_path is None) == (preset is None):
        raise click.UsageError("give an INPUT to map, or a --preset to write (one of them)")
    if preset is not None:
        text = preset_text(preset)
    else:
        assert input_path is not None
        source = SourceOptions(format=fmt, encoding=encoding, delimiter=_delimiter(delimiter))
        text = starter_for(input_path, source)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with output.open("w" if force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise click.UsageError(f"{output} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise click.UsageError(f"cannot write {output}: {exc.strerror}") from None
    then = f"bulksync sync {shell_word(input_path or 'INPUT')} --mapping {shell_word(str(output))}"
    click.echo(f"wrote {output}; edit it, then: {then} --dry-run")


@main.command("report")
@click.argument("results_path", metavar="RESULTS", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def report_command(results_path: Path, as_json: bool) -> None:
    """Summarize a results file: counts, grouped reasons, what to do next.

    Prints the rows per status (and per --kind when RESULTS holds several), the reasons rows
    are invalid or failed, grouped (the row's own value taken out) with example rows, the
    requests made, the rate when it can be told, and what to do next (retry, rejects, resume).

    Each row counts once, as its latest outcome. Exit 0 when the report is printed, whatever
    the rows' outcomes; 2 when RESULTS is missing or not a results file.
    """
    import orjson

    from .report import build_report, report_dict, report_lines

    try:
        report = build_report(results_path)
    except BulksyncError as exc:
        _fail(exc)
    if as_json:
        click.echo(orjson.dumps(report_dict(report)).decode())
    else:
        click.echo("\n".join(report_lines(report)))


@main.command("rejects")
@click.argument("results_path", metavar="RESULTS", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (.csv or .tsv for a CSV input, .jsonl for a JSONL one). Default: RESULTS"
    " with .jsonl replaced by .rejects.csv (.rejects.jsonl).",
)
@click.option(
    "--input",
    "input_path",
    metavar="PATH",
    shell_complete=_complete_path,
    help="The input the results are of. Default: the path the results file names (relative to"
    " where bulksync ran). Needed when the run read standard input.",
)
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    help="Input format, as given to sync. Default: from the input's extension.",
)
@click.option(
    "--encoding", default="utf-8", show_default=True, help="Input encoding, as given to sync."
)
@click.option("--delimiter", help="Input CSV delimiter, as given to sync.")
def rejects_command(
    results_path: Path,
    output: Path | None,
    input_path: str | None,
    force: bool,
    fmt: Format | None,
    encoding: str,
    delimiter: str | None,
) -> None:
    """Write the invalid and failed rows to a file to fix, then sync.

    The rows whose latest outcome in RESULTS is invalid or failed, with their original cells
    read back from the input, after three columns: bulksync_row, bulksync_line (where the row
    starts in the input) and bulksync_error (why), which sync never sends. Fix the cells in a
    spreadsheet, then send the file with the command printed: bulksync sync FIX.csv (and the
    first run's column options: --id-column, --rename, --type...).

    The input must be unchanged since the run (its size and SHA-256 are checked against the
    results header); a dry run's results have no fingerprint, and rows are then matched by
    number. A JSONL input gives a JSONL file. The file holds personal data: it is created with
    mode 0600.
    """
    from .rejects import write_rejects
    from .source import SourceOptions

    source = SourceOptions(format=fmt, encoding=encoding, delimiter=_delimiter(delimiter))
    try:
        written = write_rejects(
            results_path, output, input_path=input_path, source=source, force=force
        )
    except BulksyncError as exc:
        _fail(exc)
    if written.superseded:
        examples = ", ".join(f"row {row} (by row {later})" for row, later in written.superseded[:5])
        click.echo(
            f"bulksync: warning: {len(written.superseded):,} rejected row(s) left out: a later row"
            f" of the same person was accepted since, and sending the older one now would"
            f" overwrite it: {examples}",
            err=True,
        )
    if written.output is None:
        click.echo(f"no invalid or failed rows to write in {results_path}")
        return
    if not written.verified:
        click.echo(
            f"bulksync: warning: {results_path} holds no fingerprint of {written.input_path}"
            " (a dry run, or standard input): rows were matched by number, unchecked; if the"
            " input changed since, they may be other rows",
            err=True,
        )
    if written.not_found:
        rows = ", ".join(str(row) for row in written.not_found[:5])
        click.echo(
            f"bulksync: warning: {len(written.not_found):,} row(s) are not in"
            f" {written.input_path} (rows {rows}...): written with empty cells",
            err=True,
        )
    counts = ", ".join(f"{n:,} {status}" for status, n in sorted(written.written.items()))
    click.echo(
        f"wrote {written.rows:,} row{'' if written.rows == 1 else 's'} ({counts}) of"
        f" {written.input_path} to {written.output}"
        " (mode 0600: it holds personal data)"
    )
    if written.transient:
        click.echo(
            f"  {written.transient:,} of them failed for a passing reason (429, 5xx, network):"
            f" bulksync retry {results_path} re-sends those as they are, no fix needed"
        )
    click.echo(
        "next: fix the cells (a row with every cell empty could not be read: its line in the"
        " input shows it), delete the rows not to send, then send the file with the first run's"
        " column options (--id-column, --rename, --type...); its bulksync_* columns are never"
        " sent:"
    )
    click.echo(f"  {written.sync_command()}")


def _limit_schedule(text: str | None) -> tuple[tuple[float, float | None], ...]:
    """'10:30,25:100' -> ((10.0, 30.0), (25.0, 100.0)); 'none' lifts the limit."""
    schedule = []
    for step in (text or "").split(","):
        if not step.strip():
            continue
        at, _, limit = step.partition(":")
        try:
            value = None if limit.strip().lower() == "none" else float(limit)
            schedule.append((float(at), value))
        except ValueError:
            raise click.BadParameter(
                f"{step!r} is not T:LIMIT", param_hint="--limit-schedule"
            ) from None
    return tuple(sorted(schedule, key=lambda pair: pair[0]))


@main.command("fake-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=0, help="Port to listen on (default: any free port).")
@click.option("--site-id", default="site", show_default=True, help="Site ID the server accepts.")
@click.option("--api-key", default="key", show_default=True, help="API key the server accepts.")
@click.option("--rate-limit", type=float, help="Answer 429 past this many requests per second.")
@click.option(
    "--limit-schedule",
    metavar="T:LIMIT,...",
    help="Change --rate-limit during the run: at T seconds after the first request, LIMIT"
    " (a number, or 'none'). E.g. '10:30,25:100' drops to 30/s after 10 s and recovers at 25 s.",
)
@click.option("--retry-after", type=float, help="Send Retry-After (seconds) with each 429.")
@click.option("--latency", type=float, default=0.0, help="Seconds to wait before each answer.")
@click.option("--jitter", type=float, default=0.0, help="Extra random latency, 0..N seconds.")
@click.option("--fail-500", type=float, default=0.0, help="Fraction of requests answered 500.")
@click.option("--fail-503", type=float, default=0.0, help="Fraction of requests answered 503.")
@click.option("--fail-429", type=float, default=0.0, help="Fraction of requests answered 429.")
@click.option("--drop", type=float, default=0.0, help="Fraction of connections dropped.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the faults.")
@click.option(
    "--reject",
    "reject_ids",
    metavar="ID",
    multiple=True,
    help="Answer 400 to every request/operation naming this identifier (repeatable), to"
    " rehearse failed rows.",
)
def fake_server_command(**settings: Any) -> None:
    """Run the local Track API simulator, for rehearsals and demos (Ctrl-C stops it).

    Point bulksync at it with BULKSYNC_BASE_URL=http://127.0.0.1:PORT and the site id and key
    given here as CUSTOMERIO_SITE_ID / CUSTOMERIO_API_KEY.
    """
    from .fake import FakeConfig, run_fake_server

    host, port = settings.pop("host"), settings.pop("port")
    settings["limit_schedule"] = _limit_schedule(settings.pop("limit_schedule"))
    settings["reject_ids"] = frozenset(settings["reject_ids"])
    try:
        run_fake_server(FakeConfig(**settings), host=host, port=port)
    except OSError as exc:
        click.echo(f"bulksync: error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(2)
