"""The library entry points: `sync()` reads, normalizes and sends (or, in a dry run, only checks)
every row of an input, writing each row's outcome to the results file; `check()` verifies the
credentials."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .normalize import NormalizeOptions, Record, normalize, plan
from .pipeline import Items, Pipeline, SendOptions, preflight
from .ratelimit import RateLimiter
from .results import ResultsWriter, Summary, default_results_path, outcome_line
from .source import SourceOptions, read_chunks
from .track import Credentials, TrackClient, resolve_base_url


@dataclass(frozen=True)
class SyncOptions:
    """Everything a run needs besides the input and the credentials."""

    source: SourceOptions = field(default_factory=SourceOptions)
    normalize: NormalizeOptions = field(default_factory=NormalizeOptions)
    send: SendOptions = field(default_factory=SendOptions)
    results: Path | None = None
    dry_run: bool = False


ProgressCallback = Callable[[int], None]


def sync(
    input_path: str,
    options: SyncOptions | None = None,
    *,
    credentials: Credentials | None = None,
    progress: ProgressCallback | None = None,
) -> Summary:
    """Sync every row of `input_path` (a path, or "-" for stdin) and return the run's summary.

    Credentials default to CUSTOMERIO_SITE_ID / CUSTOMERIO_API_KEY from the environment (not
    needed for a dry run). Raises UsageError (or a subclass) before anything is sent when the
    input, the options or the credentials are unusable, and AbortError when the run stops
    part-way. `progress` is called with the number of rows finished, as they finish.
    """
    options = options or SyncOptions()
    started = time.monotonic()
    base_url = ""
    if not options.dry_run:
        credentials = credentials or Credentials.from_env()
        base_url = resolve_base_url(options.send.region, options.send.base_url)
    results_path = options.results or default_results_path(input_path)
    with contextlib.closing(read_chunks(input_path, options.source)) as chunks:
        first = next(chunks)
        # Plan against the first chunk's columns, so a wrong option fails before anything is
        # sent or written.
        column_plan = plan(options.normalize, list(first.frame.columns))
        items = (normalize(chunk, column_plan) for chunk in itertools.chain([first], chunks))
        if options.dry_run:
            counts = _dry_run(items, results_path, progress)
            requests = 0
        else:
            assert credentials is not None
            counts, requests = asyncio.run(
                _send(items, results_path, base_url, credentials, options.send, progress)
            )
    return Summary(
        results_path=results_path,
        counts=counts,
        elapsed=time.monotonic() - started,
        dry_run=options.dry_run,
        requests=requests,
    )


def _dry_run(
    items: Iterator[Items], results_path: Path, progress: ProgressCallback | None
) -> dict[str, int]:
    with ResultsWriter(results_path) as results:
        while (chunk := next(items, None)) is not None:
            for item in chunk:
                if isinstance(item, Record):
                    line = outcome_line(item.row, item.identifier, "valid", payload=item.attributes)
                    results.write("valid", line)
                else:
                    line = outcome_line(item.row, item.identifier, "invalid", error=item.reason)
                    results.write("invalid", line)
            results.flush()
            if progress is not None:
                progress(len(chunk))
            del chunk  # free this chunk's rows before the next one is read
    return dict(results.counts)


async def _send(
    items: Iterator[Items],
    results_path: Path,
    base_url: str,
    credentials: Credentials,
    options: SendOptions,
    progress: ProgressCallback | None,
) -> tuple[dict[str, int], int]:
    limiter = RateLimiter(options.rate) if options.rate else None
    async with TrackClient(
        base_url, credentials, timeout=options.timeout, connections=options.workers
    ) as client:
        account = await preflight(client, limiter)
        _check_region(account.body, options)
        with ResultsWriter(results_path) as results:
            pipeline = Pipeline(client, results, options, limiter=limiter, progress=progress)
            await pipeline.run(items)
    return dict(results.counts), pipeline.requests + 1


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


def check(options: SendOptions | None = None, credentials: Credentials | None = None) -> Any:
    """Verify the credentials; return the account's region answer
    (`{"url": ..., "region": ..., "environment_id": ...}`)."""
    options = options or SendOptions()
    credentials = credentials or Credentials.from_env()
    base_url = resolve_base_url(options.region, options.base_url)

    async def run() -> Any:
        async with TrackClient(base_url, credentials, timeout=options.timeout) as client:
            return (await preflight(client, None)).body

    return asyncio.run(run())
