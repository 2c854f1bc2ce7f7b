"""What a person (or a cron mail) sees: the progress bar, log lines, and the summary.

On a terminal a tqdm bar shows rows done (of an estimated total for plain files), the rate, the
ETA and the failed/invalid counts. Off a terminal there is no bar, only the summary. Logs go to
stderr (warnings and errors) and, with --log-file, to a file (everything, retries included):
each attempt's failure is a debug line, and only a row's final failure is an error, because
people read per-attempt errors as lost data.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Self

from tqdm import tqdm

from .operations import KINDS
from .results import STATUSES, Summary

log = logging.getLogger("bulksync")


def estimate_rows(path: str, fmt: str | None) -> int | None:
    """Data rows in a plain file, by counting newlines (fast; quoted newlines overcount a
    little). None for stdin and compressed files, whose size says nothing about rows."""
    if path == "-" or path.lower().endswith(".gz"):
        return None
    try:
        lines = 0
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                lines += block.count(b"\n")
    except OSError:
        return None
    jsonl = fmt == "jsonl" or (fmt is None and path.lower().endswith((".jsonl", ".ndjson")))
    return lines if jsonl else max(0, lines - 1)  # a CSV header is not a row


class ProgressBar:
    """Counts outcomes as they are written; draws a bar when `enabled`."""

    def __init__(self, total: int | None, enabled: bool, description: str) -> None:
        self.counts: Counter[str] = Counter()
        # A compact format when the total is known, so a long migration's bar still shows the
        # rate and the failed/invalid counts in 80 columns.
        compact = (
            "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {rate_fmt}"
            " ETA {remaining}{postfix}"
        )
        self._bar = (
            tqdm(
                total=total,
                unit=" rows",
                desc=description,
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format=compact if total else None,
            )
            if enabled
            else None
        )

    def __call__(self, status: str) -> None:
        self.counts[status] += 1
        if self._bar is not None:
            self._bar.update(1)
            if status in ("failed", "invalid"):
                self._bar.set_postfix_str(
                    f"failed={self.counts['failed']} invalid={self.counts['invalid']}",
                    refresh=False,
                )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()


class _TqdmHandler(logging.Handler):
    """Writes log lines to stderr above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(log_file: Path | None, quiet: bool) -> None:
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    stderr = _TqdmHandler(logging.ERROR if quiet else logging.WARNING)
    stderr.setFormatter(logging.Formatter("bulksync: %(levelname)s: %(message)s"))
    log.addHandler(stderr)
    if log_file is not None:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)


def summary_lines(what: str, summary: Summary) -> list[str]:
    """The summary for a person: counts, speed, where the results are, what to do next."""
    plural = "" if summary.requests == 1 else "s"
    sent = "" if summary.dry_run else f", {summary.requests:,} request{plural}"
    if summary.rate_limited:
        sent += f", {summary.rate_limited:,} answered 429 and sent again slower"
    resumed = f", {summary.resumed:,} done by an earlier run" if summary.resumed else ""
    lines = [
        f"bulksync: {what}: {summary.rows:,} rows in {summary.elapsed:.1f}s"
        f" ({summary.rows_per_second:,.0f} rows/s{sent}{resumed})"
    ]
    lines += [
        f"  {status:<10}{summary.counts[status]:>10,}"
        for status in STATUSES
        if summary.counts.get(status)
    ]
    path = summary.results_path
    lines.append(f"results: {path}")
    if summary.interrupted:
        lines.append("interrupted: run the same command again to send the rest")
    elif summary.counts.get("failed"):
        lines.append(f"next: re-send the failed rows with: bulksync retry {path}")
    if summary.counts.get("invalid"):
        lines.append(f"invalid rows and their reasons: grep '\"invalid\"' {path}")
    if summary.dry_run and summary.rows and summary.exit_code == 0:
        how = "without --dry-run"
        if KINDS[summary.op].irreversible:
            how += " and with --yes"
        lines.append(f"next: every row is valid; run again {how} to send")
    return lines
