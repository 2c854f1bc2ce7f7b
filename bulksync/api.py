"""The library entry points: `sync()` reads, normalizes and sends (or, in a dry run, only checks)
every row of an input, writing each row's outcome to the results file; `retry()` re-sends the
failed rows of a results file; `check()` verifies the credentials."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .answers import Credentials, resolve_base_url
from .connection import RegionCheck, SendOptions
from .connection import check as check  # the library's check(): in the API's import list
from .defaults import MISSING
from .errors import UsageError
from .normalize import ColumnPlan, NormalizeOptions, normalize, plan_columns
from .operations import DELETIONS, KINDS, PEOPLE, SUPPRESSIONS, Kind, Record
from .outcomes import Outcomes, Progress, no_progress
from .plan import (
    Items,
    KnownRows,
    Repeats,
    UnchangedRows,
    changed,
    last_rows,
    pending,
    superseded,
)
from .results import (
    REMOVAL_ROW,
    InputIdentity,
    ResultsLog,
    Summary,
    default_results_path,
    failed_lines,
    is_transient,
    latest_accepted_rows,
    read_lines,
    rotate_finished,
)
from .source import Chunk, SourceOptions, is_stream, read_chunks
from .state import StateStore
from .stop import StopHandle

logger = logging.getLogger("bulksync")


@dataclass(frozen=True)
class SyncOptions:
    """Everything a run needs besides the input and the credentials."""

    source: SourceOptions = field(default_factory=SourceOptions)
    normalize: NormalizeOptions = field(default_factory=NormalizeOptions)
    send: SendOptions = field(default_factory=SendOptions)
    results: Path | None = None
    dry_run: bool = False
    fresh: bool = False  # start the results file over instead of resuming it
    grace: float = 10.0  # seconds in-flight requests may finish after a stop (StopHandle)
    state: Path | None = None  # diff state store: skip rows whose payload was accepted as is
    full: bool = False  # with `state`: send every row anyway, and refresh the state
    yes: bool = False  # send the irreversible kinds (deletions, suppressions, merges)
    # Mirror mode, with `state`: what known people absent from a complete input get (keep,
    # delete, suppress), and the most that may be removed in one run (N, or N% of the known).
    missing: str = "keep"
    max_missing: str = "5%"

    def __post_init__(self) -> None:
        if not 0 <= self.grace < math.inf:
            raise UsageError(f"grace {self.grace!r}: must be >= 0 seconds")
        if self.missing not in MISSING:
            raise UsageError(f"--missing {self.missing!r}: must be one of {', '.join(MISSING)}")
        max_missing(self.max_missing, known=0)  # checked now, used once the absent are known
        if self.missing == "keep":
            return
        if self.state is None:
            raise UsageError(
                f"--missing {self.missing} needs --state: the state file is what knows who was"
                " sent before, and so who is absent now"
            )
        if self.normalize.kind != PEOPLE:
            raise UsageError(f"--missing applies to --kind people, not {self.normalize.kind}")
        if not (self.yes or self.dry_run):
            raise UsageError(
                f"--missing {self.missing} removes the people absent from the input, which"
                " cannot be undone. Nothing was sent. See who with --dry-run, then pass --yes"
            )


_REMOVAL_OPS = {"delete": DELETIONS, "suppress": SUPPRESSIONS}


def max_missing(text: str, *, known: int) -> int:
    """How many absent people one run may remove: `text` is a count, or a percentage of the
    `known` people. Raises UsageError for anything else."""
    value = text.strip()
    percent = value.endswith("%")
    try:
        number = float(value.removesuffix("%"))
    except ValueError:
        number = math.nan
    if not (0 <= number <= (100 if percent else math.inf)) or (
        not percent and not number.is_integer()
    ):
        raise UsageError(
            f"--max-missing {text!r}: a number of people (e.g. 50) or a percentage of those the"
            " state knows (e.g. 5%, at most 100%)"
        )
    return math.floor(known * number / 100) if percent else int(number)


def sync(
    input_path: str,
    options: SyncOptions | None = None,
    *,
    credentials: Credentials | None = None,
    progress: Progress | None = None,
    stop: StopHandle | None = None,
) -> Summary:
    """Sync every row of `input_path` (a path, or "-" for stdin) and return the run's summary.

    An existing results file for the same input is resumed: rows that already have an outcome
    are not sent again. Credentials default to CUSTOMERIO_SITE_ID / CUSTOMERIO_API_KEY from the
    environment (not needed for a dry run). Raises UsageError (or a subclass) before anything is
    sent when the input, the options or the credentials are unusable, and AbortError when the
    run stops part-way. `progress` is called with each row's status as it is written;
    `stop.stop()`, from any thread, ends the run early (see StopHandle). Installs no signal
    handler: it can run in any thread.
    """
    options = options or SyncOptions()
    started = time.monotonic()
    base_url = ""
    if not options.dry_run:
        credentials = credentials or Credentials.from_env()
        base_url = resolve_base_url(options.send.region, options.send.base_url)
    results_path = options.results or default_results_path(input_path, dry_run=options.dry_run)
    # A dry run always starts over, so it need not fingerprint the input.
    identity = InputIdentity(input_path) if options.dry_run else InputIdentity.of(input_path)
    fresh = options.fresh or options.dry_run
    if options.state is not None and not fresh and results_path.is_file():
        rotated = rotate_finished(results_path, identity)
        if rotated is not None:
            logger.info("moved the finished results of an earlier input to %s", rotated)
    with contextlib.ExitStack() as stack:
        chunks = stack.enter_context(contextlib.closing(read_chunks(input_path, options.source)))
        first = next(chunks)
        # Resolve the options against the first chunk's columns, so a wrong option fails
        # before anything is sent or written.
        column_plan = plan_columns(options.normalize, list(first.frame.columns))
        kind = column_plan.kind
        if kind.irreversible and not (options.yes or options.dry_run):
            if is_stream(input_path):  # it cannot be read twice: once to count, once to send
                raise UsageError(
                    f"--kind {kind.name} cannot be undone, and rows read from a pipe cannot be"
                    " counted before they are sent. Nothing was sent. Check them with"
                    " --dry-run, then pass --yes to send them"
                )
            done = set() if fresh else _rows_done(results_path)
            _require_yes(itertools.chain([first], chunks), column_plan, done)
            # Every row already has an outcome (a finished run, resumed): read it again to
            # resume, which sends nothing.
            chunks = stack.enter_context(
                contextlib.closing(read_chunks(input_path, options.source, warn=False))
            )
            first = next(chunks)
        with (
            ResultsLog(
                results_path, identity, fresh=fresh, dry_run=options.dry_run, op=kind.name
            ) as log,
            _state(options, input_path) as store,
        ):
            last = None  # row -> the later row of its identifier that replaces it
            # Only a person's last row counts: find who repeats, reading ahead once. (Standard
            # input cannot be read twice: there, each repeat is compared with the row before
            # it, which ends right but sends every version.)
            reads_ahead = kind.last_wins and not is_stream(input_path)
            # A nightly run of people with the input's repeats known: the rows the state knows
            # as accepted are found unchanged before they are normalized (plan.KnownRows).
            known = None
            if store is not None and not options.full and reads_ahead:
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    # SQLite reads the rowhashes (letting go of the GIL) while the file is
                    # read ahead.
                    rowhashes = pool.submit(store.rowhashes) if kind.name == PEOPLE else None
                    last = _last_rows(input_path, options, column_plan)
                if rowhashes is not None:
                    known = KnownRows(store, column_plan, last, rowhashes.result())
            repeats = Repeats()
            reading = _Reading(store if kind.name == PEOPLE else None, options, log)
            reading.known_rows = known
            items: Iterator[Items] = (
                reading.see(known.normalize(chunk) if known else normalize(chunk, column_plan))
                for chunk in reading.watch(itertools.chain([first], chunks))
            )
            if last != {}:  # {}: read ahead, nobody repeats
                items = (repeats.observe(batch) for batch in items)
            if log.resumed:
                items = (pending(batch, log) for batch in items)
            if store is not None and not options.full:
                if last:
                    items = (superseded(batch, last) for batch in items)
                items = (known.changed(b) if known else changed(b, store) for b in items)
            outcomes = Outcomes(log, progress or no_progress, store, kind.name)
            sent = _Sent()
            if options.dry_run:
                _dry_run(items, outcomes)
                _dry_run(iter([reading.removals()]), outcomes)
                if reading.refused:
                    log.finish()
                    raise UsageError(reading.refused)
            else:
                assert credentials is not None
                sent = asyncio.run(
                    _send(items, outcomes, base_url, credentials, options, stop, reading.removals)
                )
            if reading.complete and not sent.interrupted:
                log.finish()
    return Summary(
        results_path=results_path,
        counts={status: n for status, n in log.counts.items() if n},
        elapsed=time.monotonic() - started,
        dry_run=options.dry_run,
        requests=sent.requests,
        rate_limited=sent.rate_limited,
        resumed=log.resumed,
        interrupted=sent.interrupted,
        op=kind.name,
        repeated_rows=repeats.rows,
        repeated_identifiers=repeats.identifiers,
        repeated_examples=repeats.examples,
        absent=reading.absent,
        removals=dict(log.removal_counts),
    )


class _Reading:
    """Watches the input as it is read, for mirror mode: whether it was read to the end, with
    every row readable, and (with a state) who it holds; then who is absent, and their
    removals. `store` is None when absence does not apply (no state, or not people)."""

    def __init__(self, store: StateStore | None, options: SyncOptions, log: ResultsLog) -> None:
        self.store = store
        self.options = options
        self.log = log
        self.complete = False  # the input was read to its end (not stopped, not --limit)
        self.unreadable = 0  # rows the reader could not parse (a broken quote, not JSON)
        self.absent: int | None = None  # known people absent from the complete input
        self.known = 0  # people the state knew before this run: what --max-missing N% is of
        self.known_rows: KnownRows | None = None  # the rows found unchanged by their rowhash
        self.refused: str | None = None  # a dry run over --max-missing: why a run would refuse

    def watch(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        if self.store is not None:
            self.known = self.store.known(PEOPLE)  # before tonight's new people are added
        for chunk in chunks:
            self.unreadable += len(chunk.bad_rows)
            yield chunk
        # Reached only when the reader found the input's end: an input error or a stop leaves
        # the generator before it. --limit ends early on purpose: the rest is unknown.
        self.complete = self.options.source.limit is None

    def see(self, items: Items) -> Items:
        if self.store is not None:
            # Every row of a person counts, invalid ones too: a bad email is no reason to delete.
            self.store.see(
                items.identifiers
                if isinstance(items, UnchangedRows)  # its identifiers, without a tuple a row
                else (item.identifier for item in items if item.identifier is not None)
            )
        return items

    def removals(self) -> list[Record]:
        """The removals to send once every row is sent: none unless the input was read whole
        and cleanly; raises UsageError when more than --max-missing would be removed."""
        store, options = self.store, self.options
        if store is None or not self.complete:
            return []
        if self.unreadable:
            if options.missing != "keep":
                logger.warning(
                    "nobody removed: %d row(s) of the input could not be read (see the results"
                    " file), so who is absent cannot be known",
                    self.unreadable,
                )
            return []
        if self.known_rows is not None and self.known_rows.found == self.known:
            # Each of them found unchanged by the rowhash of its accepted row (a person's own
            # cells, on one row of theirs: plan.KnownRows): all present, nobody to look up.
            self.absent = 0
        else:
            self.absent = store.absent_count(PEOPLE)
        store.finish_seen(self.absent)
        if options.missing == "keep" or not self.absent:
            return []
        allowed = max_missing(options.max_missing, known=self.known)
        if self.absent > allowed:
            too_many = (
                f"{self.absent:,} of the {self.known:,} people the state knew are absent from"
                f" this input, more than --max-missing {options.max_missing} ({allowed:,})"
            )
            if not options.dry_run:
                # Every row has its outcome: the file is finished, for tomorrow's to rotate.
                self.log.finish()
                raise UsageError(
                    f"{too_many}: nobody was removed. The input's rows were sent (see the"
                    " results file). If the input is complete and they did leave, run again"
                    " with a higher --max-missing"
                )
            # A dry run lists them all the same: who would go is what its user wants to see.
            self.refused = (
                f"{too_many}: a run would remove nobody and exit 2. Nothing was sent; the"
                ' results file lists them ("absent": true)'
            )
        names = store.absent(PEOPLE)
        op = _REMOVAL_OPS[options.missing]
        # A removal the results file already has accepted (a resumed run, killed after writing
        # it but before the state forgot the person) is not sent again.
        done = self.log.removals
        return [Record(REMOVAL_ROW, name, {}, op) for name in names if done.get(name) != "ok"]


def check_input(input_path: str, options: SyncOptions) -> ColumnPlan:
    """Check an input's header against the options, as sync() does before sending anything;
    return the columns' plan. Reads the first chunk only. Raises UsageError."""
    with contextlib.closing(read_chunks(input_path, options.source)) as chunks:
        first = next(chunks)
    return plan_columns(options.normalize, list(first.frame.columns))


def retry(
    results_path: Path,
    options: SyncOptions | None = None,
    *,
    all_failed: bool = False,
    credentials: Credentials | None = None,
    progress: Progress | None = None,
    stop: StopHandle | None = None,
) -> Summary:
    """Re-send the rows whose latest outcome in `results_path` is `failed`, each as the same
    operation (its `op`) from the payload kept there (the input file is not needed), appending
    their new outcomes. Only transient failures (429, 5xx, timeouts, network) are re-sent,
    unless `all_failed`. Irreversible operations need `options.yes`."""
    options = options or SyncOptions()
    started = time.monotonic()
    credentials = credentials or Credentials.from_env()
    base_url = resolve_base_url(options.send.region, options.send.base_url)
    if not results_path.is_file():
        raise UsageError(f"{results_path}: no such results file")
    with ResultsLog(results_path, None) as log, _state(options, str(results_path)) as store:
        records = _to_retry(results_path, all_failed)
        irreversible = [r for r in records if KINDS[r.op].irreversible]
        if irreversible and not options.yes:
            raise UsageError(_irreversible(KINDS[irreversible[0].op], len(irreversible), "retry"))
        resumed = log.resumed
        outcomes = Outcomes(log, progress or no_progress, store)
        sent = asyncio.run(_send(iter([records]), outcomes, base_url, credentials, options, stop))
    return Summary(
        results_path=results_path,
        counts={status: n for status, n in log.counts.items() if n},
        elapsed=time.monotonic() - started,
        requests=sent.requests,
        rate_limited=sent.rate_limited,
        resumed=resumed - len(records),
        interrupted=sent.interrupted,
    )


def _to_retry(results_path: Path, all_failed: bool) -> list[Record]:
    """The failed rows of a results file to send again, as the operations that failed."""
    lines = [
        line
        for line in failed_lines(results_path)
        if isinstance(line.get("payload"), dict) and (all_failed or is_transient(line))
    ]
    for line in lines:
        if line["op"] not in KINDS:
            raise UsageError(
                f"{results_path}: row {line['row']} has an unknown op {line['op']!r}; was it"
                " written by a newer bulksync?"
            )
    # A failed row whose person (or object) has a later row accepted since must not be re-sent
    # when the later row replaced it: re-sent, the older row would overwrite the newer data.
    # Events, devices and the like add to a person rather than replace: never superseded.
    replacing = {line["id"] for line in lines if KINDS[line["op"]].last_wins}
    accepted = latest_accepted_rows(results_path, replacing)
    superseded = [
        line
        for line in lines
        if KINDS[line["op"]].last_wins and accepted.get(line["id"], 0) > line["row"]
    ]
    if superseded:
        first = superseded[0]
        logger.warning(
            "%d failed row(s) not re-sent: a later row of the same %s was accepted since, and"
            " re-sending the older one would overwrite it (e.g. row %d, superseded by row %d)",
            len(superseded),
            "person" if first["op"] == PEOPLE else "object",
            first["row"],
            accepted[first["id"]],
        )
    skip = {line["row"] for line in superseded}
    return [
        Record(line["row"], line["id"], line["payload"], line["op"])
        for line in lines
        if line["row"] not in skip
    ]


def _irreversible(kind: Kind, count: int, command: str) -> str:
    check = " Check them with --dry-run, then pass" if command == "sync" else " Pass"
    return (
        f"--kind {kind.name} cannot be undone: {count:,} row(s) would be sent"
        f" ({kind.summary.partition(' (')[0]}). Nothing was sent.{check} --yes to send them"
    )


def _last_rows(input_path: str, options: SyncOptions, column_plan: ColumnPlan) -> dict[int, int]:
    """row -> the later row of its identifier that replaces it (plan.last_rows). Most inputs
    name each person once: that is found from the identifier's columns alone, normalized
    without the others; only when an identifier repeats are the rows read again in full, since
    an invalid row (for any column) is not the last row of its person."""
    if _ids_unique(input_path, options, column_plan):
        return {}
    keys = [c for c in (column_plan.id_column, *column_plan.roles) if c is not None]
    repeats = Repeats()
    # The input was read once already (its first chunk): what the reader had to say, it said.
    with contextlib.closing(read_chunks(input_path, options.source, warn=False)) as chunks:
        for chunk in chunks:
            narrow = chunk.frame[[c for c in keys if c in chunk.frame.columns]]
            # Its valid rows are a superset of the whole rows' valid ones: no repeat among
            # them, none among those.
            repeats.observe(normalize(replace(chunk, frame=narrow), column_plan))
    if not repeats.rows:
        return {}
    with contextlib.closing(read_chunks(input_path, options.source, warn=False)) as chunks:
        return last_rows(normalize(chunk, column_plan) for chunk in chunks)


def _ids_unique(input_path: str, options: SyncOptions, column_plan: ColumnPlan) -> bool:
    """Does no identifier cell repeat? People named by a column other than an email are named
    by the cell as written when it is a string (normalize._identifiers), so distinct cells are
    distinct people: one column hashed, nothing normalized. False when that cannot be told so
    (a JSON number among the identifiers, an email or a typed column as identifier: "01" and
    "1" are one person with --type id=int; another kind)."""
    column = column_plan.id_column
    if column is None or column_plan.kind.name != PEOPLE or column_plan.is_email(column):
        return False
    if column in column_plan.options.types or column in column_plan.date_columns:
        return False
    hashes = []
    # That column alone: the same rows, read faster.
    with contextlib.closing(
        read_chunks(input_path, options.source, column=column, warn=False)
    ) as chunks:
        for chunk in chunks:
            cells = chunk.frame.get(column)
            if cells is None or not isinstance(cells.dtype, pd.StringDtype):
                return False  # JSON's 1 and "1" name one person
            cells = cells[cells.notna() & (cells != "")]  # no identifier: rejected, not a repeat
            # Each cell's 64-bit hash, computed by pandas in C from the cells' UTF-8 bytes: half
            # the time of Python's hash of a str made for each.
            blobs = pa.array(cells.array).cast(pa.large_binary()).to_numpy(zero_copy_only=False)
            hashes.append(pd.util.hash_array(blobs, categorize=False))
    hashed = np.concatenate([np.empty(0, dtype=np.uint64), *hashes])
    del hashes
    hashed.sort()  # in place: no second copy of a hash per row
    # Sorted, not np.unique: numpy 2's hashes the values, many times slower. A collision only
    # costs the full check.
    return not (hashed[1:] == hashed[:-1]).any()


def _require_yes(chunks: Iterator[Chunk], column_plan: ColumnPlan, done: set[int]) -> None:
    """Refuse an irreversible kind without --yes, saying how many rows it would send (rows
    that already have an outcome in the results file are not sent again)."""
    count = sum(
        isinstance(item, Record) and item.row not in done
        for chunk in chunks
        for item in normalize(chunk, column_plan)
    )
    if count:
        raise UsageError(_irreversible(column_plan.kind, count, "sync"))


def _rows_done(results_path: Path) -> set[int]:
    """Rows that already have an outcome in an existing results file (read, not opened for
    writing); whether the file can be resumed is decided when it is opened."""
    try:
        return {line["row"] for line in read_lines(results_path)}
    except (OSError, UsageError):
        return set()


def _state(options: SyncOptions, input_path: str) -> contextlib.AbstractContextManager[Any]:
    if options.state is None or (options.dry_run and not options.state.exists()):
        return contextlib.nullcontext()  # a dry run creates no state: nothing is unchanged
    # A dry run only reads the state: it records no run.
    return StateStore(
        options.state,
        input_name=None if options.dry_run else input_path,
        read_only=options.dry_run,
    )


def _dry_run(items: Iterator[Items], outcomes: Outcomes) -> None:
    while (chunk := next(items, None)) is not None:
        outcomes.many(chunk)
        outcomes.flush()
        del chunk  # free this chunk's rows before the next one is read


@dataclass(frozen=True)
class _Sent:
    """What sending did, for the summary."""

    requests: int = 0
    rate_limited: int = 0
    interrupted: bool = False


async def _send(
    items: Iterator[Items],
    outcomes: Outcomes,
    base_url: str,
    credentials: Credentials,
    options: SyncOptions,
    stop: StopHandle | None,
    then: Callable[[], list[Record]] | None = None,
) -> _Sent:
    """Check the credentials, then send every record; then, unless stopped, the records
    `then()` gives (mirror mode's removals, known once every row was read)."""
    # Here, not at the top: a dry run imports neither the sender nor aiohttp.
    from .policy import check_credentials
    from .ratelimit import BATCH_MARGIN, DEFAULT_MARGIN, RateLimiter
    from .send import Sender
    from .track import TrackClient

    send = options.send
    limiter = None
    if send.rate:
        # In batch mode the reader thread normalizes tens of thousands of rows a second and
        # delays the event loop's writes by a few ms at a time, so requests can reach the API
        # closer together than they started: a wider margin keeps every second under the rate
        # (a batch carries a thousand rows, so 5% fewer requests costs little).
        limiter = RateLimiter(send.rate, margin=BATCH_MARGIN if send.batch else DEFAULT_MARGIN)
    async with TrackClient(
        base_url, credentials, timeout=send.timeout, connections=send.workers
    ) as client:
        region = RegionCheck(base_url, credentials, send.timeout)
        account, checks = await check_credentials(
            region, limiter, send.max_retries, send.backoff, send.max_wait
        )
        _check_region(account.body, send)
        sender = Sender(client, outcomes, send, limiter=limiter, stop=stop, grace=options.grace)
        await sender.run(items)
        requests, rate_limited = sender.requests + checks, sender.rate_limited
        if then is not None and not sender.stopping and (records := then()):
            sender = Sender(client, outcomes, send, limiter=limiter, stop=stop, grace=options.grace)
            await sender.run(iter([records]))
            requests, rate_limited = requests + sender.requests, rate_limited + sender.rate_limited
    return _Sent(requests, rate_limited, sender.stopping)


def _check_region(account: Any, options: SendOptions) -> None:
    """The region endpoint answers on either host; a mismatch means the wrong --region."""
    if options.base_url is not None or not isinstance(account, dict):
        return
    region = account.get("region")
    if isinstance(region, str) and region != options.region:
        raise UsageError(
            f"these credentials belong to a workspace in the {region.upper()} region:"
            f" pass --region {region}"
        )
