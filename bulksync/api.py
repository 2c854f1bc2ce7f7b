"""The library entry points: `sync()` reads, normalizes and sends (or, in a dry run, only checks)
every row of an input, writing each row's outcome to the results file."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .normalize import NormalizeOptions, Record, normalize, plan
from .results import ResultsWriter, Summary, default_results_path, outcome_line
from .source import SourceOptions, read_chunks


@dataclass(frozen=True)
class SyncOptions:
    """Everything a run needs besides the input and the credentials."""

    source: SourceOptions = field(default_factory=SourceOptions)
    normalize: NormalizeOptions = field(default_factory=NormalizeOptions)
    results: Path | None = None
    dry_run: bool = False


ProgressCallback = Callable[[int], None]


def sync(
    input_path: str,
    options: SyncOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> Summary:
    """Sync every row of `input_path` (a path, or "-" for stdin) and return the run's summary.

    Raises UsageError (or a subclass) before anything is written when the input or the options
    are unusable. `progress` is called with the number of rows finished after each chunk.
    """
    options = options or SyncOptions()
    if not options.dry_run:
        raise UsageError("sending is not available in this version yet: use --dry-run")
    started = time.monotonic()
    results_path = options.results or default_results_path(input_path)
    with contextlib.closing(read_chunks(input_path, options.source)) as chunks:
        first = next(chunks)
        # Plan against the first chunk's columns, so a wrong option fails before the results
        # file is touched.
        column_plan = plan(options.normalize, list(first.frame.columns))
        results = ResultsWriter(results_path)
        with results:
            for chunk in itertools.chain([first], chunks):
                for item in normalize(chunk, column_plan):
                    if isinstance(item, Record):
                        line = outcome_line(
                            item.row, item.identifier, "valid", payload=item.attributes
                        )
                        results.write("valid", line)
                    else:
                        line = outcome_line(item.row, item.identifier, "invalid", error=item.reason)
                        results.write("invalid", line)
                results.flush()
                if progress is not None:
                    progress(len(chunk))
    return Summary(
        results_path=results_path,
        counts=dict(results.counts),
        elapsed=time.monotonic() - started,
        dry_run=True,
    )
