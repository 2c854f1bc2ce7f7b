"""What a person (or a cron mail) sees: the progress bar, log lines, and the summary.

On a terminal a tqdm bar shows rows done (of an estimated total for plain files), the rate, the
ETA and the failed/invalid counts. Off a terminal there is no bar, only the summary. Logs go to
stderr (warnings and errors) and, with --log-file, to a file (everything, retries included):
each attempt's failure is a debug line, and only a row's final failure is an error, because
people read per-attempt errors as lost data. Stderr shows the first ROW_FAILURES_SHOWN of those,
then one line saying where the rest are, and at the end of the run how many there were: the
results file and `bulksync report` hold them all, and so does --log-file.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self, TextIO

from tqdm import tqdm

from .errors import OutputError
from .files import open_private
from .operations import KINDS
from .report import shell_word
from .results import STATUSES, Summary
from .source import is_stream

if TYPE_CHECKING:
    from .job import JobSummary

log = logging.getLogger("bulksync")
ROW_FAILURES_SHOWN = 10  # rows' final failures shown on stderr; the rest are counted
# How a row's final failure is worded (outcomes.Outcomes.failed), for records not marked.
_ROW_FAILURE = re.compile(r"rows? \d+ \(id .*\) failed: ")


def estimate_rows(path: str, fmt: str | None) -> int | None:
    """Data rows in a plain file, by counting newlines (fast; quoted newlines overcount a
    little). None for stdin and compressed files, whose size says nothing about rows."""
    if is_stream(path) or path.lower().endswith(".gz"):
        return None  # a FIFO must not be read here: its rows would be gone
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
    """Counts outcomes as they are written; draws a bar when `enabled`. Closed at the end of
    the run, it also says how many row failures stderr did not show."""

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
        self.add(status)

    def add(self, status: str, rows: int = 1) -> None:
        """`rows` outcomes of `status` (a dry run tells a chunk's at once, not row by row: the
        bar is drawn at most 10 times a second whichever)."""
        self.counts[status] += rows
        if self._bar is not None:
            self._bar.update(rows)
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
        # The end of the run: one line counting the row failures stderr did not show.
        for handler in log.handlers:
            if isinstance(handler, _TqdmHandler) and handler.hidden_row_failures():
                print(
                    f"bulksync: {handler.row_failures:,} rows failed in all; the first"
                    f" {handler.shown} are shown above, all are in the results file"
                    " (bulksync report RESULTS)",
                    file=sys.stderr,
                )


def is_row_failure(record: logging.LogRecord) -> bool:
    """Is this log record one row's final failure? Marked `extra={"row_failure": True}` by
    whoever logs it; recognised by its wording too, for callers that do not mark it."""
    if getattr(record, "row_failure", False):
        return True
    return record.levelno >= logging.ERROR and _ROW_FAILURE.match(record.getMessage()) is not None


class _TqdmHandler(logging.Handler):
    """Writes log lines to stderr above the progress bar instead of through it.

    Row failures are shown only up to `shown`: a file with thousands of refused rows must not
    bury the warnings and the summary under one line per row. The next one is replaced by a
    line saying where they all are; `row_failures` counts them all, for the count at the end.
    The --log-file handler is another handler: it keeps every line."""

    def __init__(self, level: int, *, shown: int = ROW_FAILURES_SHOWN, log_file: Path | None):
        super().__init__(level)
        self.shown = shown
        self.row_failures = 0
        self._log_file = log_file

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle calls emit under the handler's lock: the count needs no other.
        if is_row_failure(record):
            self.row_failures += 1
            if self.row_failures > self.shown:
                if self.row_failures == self.shown + 1:
                    also = f", and {self._log_file} keeps every line" if self._log_file else ""
                    tqdm.write(
                        f"bulksync: {record.levelname}: ... more rows failed: see the results"
                        f" file (or bulksync report RESULTS){also}",
                        file=sys.stderr,
                    )
                return
        tqdm.write(self.format(record), file=sys.stderr)

    def hidden_row_failures(self) -> int:
        return max(0, self.row_failures - self.shown)


class _LogFile(logging.StreamHandler[TextIO]):
    """--log-file: a stream handler on a file opened by open_private, closed with it."""

    def __init__(self, stream: TextIO, path: Path) -> None:
        super().__init__(stream)
        self.path = path

    def handleError(self, record: logging.LogRecord) -> None:
        # logging's default prints a traceback and goes on; a log that cannot be written (a
        # full disk) stops the run like the results file would: one line, exit 3.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            raise OutputError.of(exc, self.path, "log file") from None
        super().handleError(record)

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()


def setup_logging(log_file: Path | None, quiet: bool) -> None:
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    stderr = _TqdmHandler(logging.ERROR if quiet else logging.WARNING, log_file=log_file)
    stderr.setFormatter(logging.Formatter("bulksync: %(levelname)s: %(message)s"))
    log.addHandler(stderr)
    if log_file is not None:
        # Ids and emails go in it: private, never through a planted link, appended to.
        fd = open_private(log_file, os.O_WRONLY | os.O_APPEND, "log file")
        handler = _LogFile(os.fdopen(fd, "a", encoding="utf-8"), log_file)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str | None) -> str:
    """`text` safe to print on a terminal: control characters (an escape sequence in an
    identifier could rewrite the screen) shown as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


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
    if summary.repeated_identifiers:
        shown = "; ".join(
            f"{printable(identifier)} (rows {', '.join(map(str, rows))})"
            for identifier, rows in summary.repeated_examples.items()
        )
        lines.append(
            f"repeated: {summary.repeated_identifiers:,} identifiers on more than one row"
            f" ({summary.repeated_rows:,} later rows), sent in file order, the last row"
            f" winning; e.g. {shown}"
        )
    lines += _mirror_lines(summary)
    path = summary.results_path
    lines.append(f"results: {path}")
    if summary.interrupted:
        lines.append("interrupted: run the same command again to send the rest")
    elif summary.counts.get("failed"):
        lines.append(f"next: re-send the failed rows with: bulksync retry {path}")
    if summary.counts.get("failed") or summary.counts.get("invalid"):
        word = shell_word(str(path))
        lines.append(f"reasons, grouped: bulksync report {word}")
        lines.append(f"to fix the rows in a spreadsheet and send them: bulksync rejects {word}")
    if summary.dry_run and summary.rows and summary.exit_code == 0:
        how = "without --dry-run"
        if KINDS[summary.op].irreversible or summary.removals.get("valid"):
            how += " and with --yes"
        lines.append(f"next: every row is valid; run again {how} to send")
    return lines


def _mirror_lines(summary: Summary) -> list[str]:
    """With --state: who the state knows and this input lacks, and what became of them."""
    if summary.absent is None:
        return []
    lines = [f"absent: {summary.absent:,} known people are not in this input"]
    removals = summary.removals
    if summary.dry_run and removals.get("valid"):
        lines.append(f"  {'removed':<10}{removals['valid']:>10,} would be (--missing)")
    elif removals:
        if removals.get("ok"):
            lines.append(f"  {'removed':<10}{removals['ok']:>10,}")
        if removals.get("failed"):
            lines.append(
                f"  {'failed':<10}{removals['failed']:>10,} removals (the state still knows"
                " them: the next run tries again)"
            )
    elif summary.absent:
        lines[0] += " (kept: --missing delete or suppress removes them)"
    return lines


def job_lines(summary: JobSummary) -> list[str]:
    """A job's summary: one line per step (rows, ok, failed, invalid, unchanged), then what to
    do next."""
    what = "dry run" if summary.dry_run else "run"
    ok = "valid" if summary.dry_run else "ok"
    header = ("step", "kind", "status", "rows", ok, "failed", "invalid", "unchanged")
    rows = [
        (
            r.step.name,
            r.step.options.normalize.kind,
            r.status,
            *(f"{r.summary.get(k, 0):,}" if r.summary else "-" for k in header[3:]),
        )
        for r in summary.steps
    ]
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        f"bulksync: {what} of {summary.job}: {len(summary.steps)} steps in {summary.elapsed:.1f}s"
    ]
    for row in (header, *rows):
        cells = [
            str(c).ljust(w) if i < 3 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    stopped = next((r for r in summary.steps if r.status == "stopped"), None)
    if stopped is not None:
        then = "fix what the error says, then run" if stopped.exit_code == 2 else "run"
        lines.append(
            f"  stopped at step {stopped.step.name} (exit {stopped.exit_code}): {then} the same"
            " command to resume the job there"
        )
    for r in summary.steps:
        results = shell_word(str(r.summary.get("results")))
        if r.summary.get("failed"):
            lines.append(f"  step {r.step.name}: bulksync retry {results} re-sends its failed rows")
        if r.summary.get("invalid"):
            lines.append(f"  step {r.step.name}: bulksync rejects {results} writes rows to fix")
    return lines
