"""`bulksync report RESULTS`: what a results file says, for a person (text) or a monitor (JSON).

The latest line for a row is its outcome, so a row that failed and was then re-sent by
`bulksync retry` counts once, as what it ended as. Memory is bounded by the highest row number
(8 bytes a row, for the position of each row's latest line), never by the lines' contents: the
file is read twice, once to find each row's latest line, once to count those lines.

Only what the file supports is reported. Lines carry no timestamps: the achieved rate is the
rows over the time from the header's `started` to the file's last change, which spans any pause
between a run and its resumes or retries, and says so.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import UsageError
from .operations import KINDS, PEOPLE
from .results import STATUSES, is_transient, read_header, read_lines

EXAMPLES = 3  # example rows kept per error reason
MAX_REASONS = 1000  # distinct reasons tracked; later new ones are counted as "other reasons"
OTHER_REASONS = "(other reasons)"
SHOWN_REASONS = 20  # reasons listed in the text report (--json lists every one tracked)
SHOWN_MISSING = 5  # rows without an outcome named in the report
MIN_RATE_SECONDS = 1.0  # `started` has whole seconds: a shorter window gives no honest rate


# The parts of a reason that name one row's value, not the problem. bulksync quotes values
# with repr(), cut to 57 characters and "..." when long; messages end up differing only there.
_TRUNCATED = re.compile(r"""(['"])[^\n]{56}\.\.\.""")
_QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
_POSITION = re.compile(r"\bline \d+ column \d+ \(char \d+\)")  # orjson's error position
_ATTEMPTS = re.compile(r"\bafter \d+ attempts\b")
_LINE = re.compile(r"^line \d+: ")  # the reader's reasons start with the row's line
_PLACEHOLDER = "…"


def reason_key(error: str, identifier: str | None = None) -> str:
    """The reason with the row-specific values taken out, so rows with the same problem group
    together: "email: invalid email 'x@@y': ..." and "... 'a@@b': ..." are one reason."""
    key = error
    if identifier and len(identifier) > 1:
        # An API message may echo the row's identifier unquoted.
        word = rf"(?<![\w@.+-]){re.escape(identifier)}(?![\w@.+-])"
        key = re.sub(word, _PLACEHOLDER, key)
    key = _LINE.sub(f"line {_PLACEHOLDER}: ", key)
    key = _TRUNCATED.sub(_PLACEHOLDER, key)
    key = _QUOTED.sub(_PLACEHOLDER, key)
    key = _POSITION.sub(f"line {_PLACEHOLDER}", key)
    return _ATTEMPTS.sub(f"after {_PLACEHOLDER} attempts", key)


@dataclass
class ReasonGroup:
    """Rows whose latest outcome is `status` (invalid or failed) for the same reason."""

    status: str
    op: str
    reason: str
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)  # row, line?, id, error

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "op": self.op,
            "reason": self.reason,
            "count": self.count,
            "examples": self.examples,
        }


@dataclass
class Report:
    """What a results file says. Counts are of each row's latest outcome."""

    path: Path
    header: dict[str, Any]
    counts: Counter[str] = field(default_factory=Counter)
    by_op: dict[str, Counter[str]] = field(default_factory=dict)
    reasons: dict[tuple[str, str, str], ReasonGroup] = field(default_factory=dict)
    lines: int = 0  # outcome lines read (a row re-sent by retry or resume has several)
    attempts: int = 0  # requests made for rows, over every line (a batch counts for each row)
    single_attempts: int = 0  # the same, for rows sent one per request: those are requests
    modes: Counter[str] = field(default_factory=Counter)  # rows by how their last send went
    retried_rows: int = 0  # rows whose latest outcome took more than one attempt
    transient_failed: Counter[str] = field(default_factory=Counter)  # op -> rows retry re-sends
    refused_failed: int = 0  # failed rows the API refused (400...): retry needs --all-failed
    last_row: int = 0
    missing: int = 0  # rows 1..last_row without an outcome
    first_missing: list[int] = field(default_factory=list)
    removals: Counter[str] = field(default_factory=Counter)  # --missing: status -> people
    last_change: datetime | None = None  # the file's mtime

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def dry_run(self) -> bool:
        return bool(self.header.get("dry_run"))

    @property
    def seconds(self) -> float | None:
        """From the header's start to the file's last change, when both are known."""
        started = _parse_time(self.header.get("started"))
        if started is None or self.last_change is None:
            return None
        return (self.last_change - started).total_seconds()

    @property
    def rows_per_second(self) -> float | None:
        seconds = self.seconds
        if self.dry_run or seconds is None or seconds < MIN_RATE_SECONDS or not self.rows:
            return None
        return self.rows / seconds

    def sorted_reasons(self) -> list[ReasonGroup]:
        return sorted(self.reasons.values(), key=lambda g: (-g.count, g.status, g.op, g.reason))


def build_report(path: Path) -> Report:
    """Read the results file at `path` (twice; see the module docstring)."""
    header = read_header(path)
    report = Report(path, header)
    try:
        latest = _latest_lines(path, report)
        _count(path, report, latest)
        removals = {
            line["id"]: line["status"]
            for line in read_lines(path, removals=True)
            if line.get("absent") is True
        }
        report.removals.update(removals.values())
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    report.last_change = datetime.fromtimestamp(mtime, UTC)
    return report


def _latest_lines(path: Path, report: Report) -> array[int]:
    """row -> ordinal (1-based) of its latest outcome line; 0: no outcome."""
    latest: array[int] = array("q")
    for ordinal, line in enumerate(read_lines(path), start=1):
        row: int = line["row"]
        if row < 1:
            raise UsageError(f"{path}: an outcome line names row {row}; rows start at 1")
        if row >= len(latest):
            latest.frombytes(bytes(8 * max(row + 1 - len(latest), len(latest))))
        latest[row] = ordinal
        attempts = line.get("attempts")
        if isinstance(attempts, int):
            report.attempts += attempts
            if line.get("mode") != "batch":
                report.single_attempts += attempts
        report.lines = ordinal
    return latest


def _count(path: Path, report: Report, latest: array[int]) -> None:
    for ordinal, line in enumerate(read_lines(path), start=1):
        if ordinal > report.lines:
            break  # appended since the first pass (a run still going): not in this report
        row = line["row"]
        if latest[row] != ordinal:
            continue  # a later line holds this row's outcome
        status, op = line["status"], str(line["op"])
        report.counts[status] += 1
        report.by_op.setdefault(op, Counter())[status] += 1
        report.last_row = max(report.last_row, row)
        if isinstance(line.get("mode"), str):
            report.modes[line["mode"]] += 1
        if isinstance(line.get("attempts"), int) and line["attempts"] > 1:
            report.retried_rows += 1
        if status == "failed":
            if is_transient(line):
                report.transient_failed[op] += 1
            else:
                report.refused_failed += 1
        if status in ("failed", "invalid"):
            _group(report, line, status, op)
    for row in range(1, report.last_row + 1):
        if not latest[row]:
            report.missing += 1
            if len(report.first_missing) < SHOWN_MISSING:
                report.first_missing.append(row)


def _group(report: Report, line: dict[str, Any], status: str, op: str) -> None:
    error = str(line.get("error") or "(no reason recorded)")
    identifier = line.get("id") if isinstance(line.get("id"), str) else None
    key = (status, op, reason_key(error, identifier))
    group = report.reasons.get(key)
    if group is None:
        if len(report.reasons) >= MAX_REASONS:
            key = (status, op, OTHER_REASONS)
            group = report.reasons.get(key)
        if group is None:
            group = report.reasons[key] = ReasonGroup(status, op, key[2])
    group.count += 1
    if len(group.examples) < EXAMPLES:
        example: dict[str, Any] = {"row": line["row"]}
        if isinstance(line.get("line"), int):
            example["line"] = line["line"]
        example["id"] = line.get("id")
        example["error"] = error
        group.examples.append(example)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --- what to do next ------------------------------------------------------------------------


def next_steps(report: Report) -> list[dict[str, str]]:
    """What the file says to do next: each step a `why` and, when one command does it, the
    `command`."""
    path = shell_word(str(report.path))
    steps: list[dict[str, str]] = []
    what = "dry run" if report.dry_run else "sync"
    if report.missing:
        steps.append(
            {
                "why": f"{report.missing:,} row(s) up to row {report.last_row:,} have no outcome:"
                f" the {what} was interrupted (or is still running). Run the same command again"
                " to resume; rows with an outcome are not done again",
            }
        )
    transient = sum(report.transient_failed.values())
    if transient:
        yes = any(KINDS[op].irreversible for op in report.transient_failed if op in KINDS)
        steps.append(
            {
                "why": f"{transient:,} row(s) failed for a passing reason (429, 5xx, timeout,"
                " network): re-send them as they were",
                "command": f"bulksync retry {path}" + (" --yes" if yes else ""),
            }
        )
    invalid = report.counts.get("invalid", 0)
    if invalid or report.refused_failed:
        parts = []
        if invalid:
            parts.append(f"{invalid:,} invalid row(s)")
        if report.refused_failed:
            parts.append(f"{report.refused_failed:,} row(s) the API refused")
        steps.append(
            {
                "why": f"{' and '.join(parts)}: write them with their cells to a file, fix them"
                " in a spreadsheet, and sync that file (the command prints how)",
                "command": f"bulksync rejects {path}",
            }
        )
    if report.removals.get("failed"):
        steps.append(
            {
                "why": f"{report.removals['failed']:,} removal(s) of absent people failed: the"
                " state still knows them, so the next sync with --missing (the same command)"
                " sends them again",
            }
        )
    if report.refused_failed:
        steps.append(
            {
                "why": "or, if the workspace was the problem (not the rows) and it is fixed now,"
                " re-send the refused rows as they were",
                "command": f"bulksync retry {path} --all-failed",
            }
        )
    if report.dry_run and not report.missing and report.rows:
        if invalid:
            why = (
                "or fix the invalid rows in the input and dry-run it again; the valid rows are"
                " sent by the same command without --dry-run"
            )
        else:
            why = "every row is valid: run the same command without --dry-run to send"
            if any(KINDS[op].irreversible for op in report.by_op if op in KINDS):
                why += " (and with --yes)"
        steps.append({"why": why})
    if not steps and report.rows:
        steps.append({"why": "nothing to do: every row has ended ok or unchanged"})
    return steps


def shell_word(text: str) -> str:
    """A path as one shell word, for commands a person copies."""
    return text if re.fullmatch(r"[\w@%+=:,./-]+", text) else "'" + text.replace("'", "'\\''") + "'"


# --- output ---------------------------------------------------------------------------------


def report_dict(report: Report) -> dict[str, Any]:
    """The report as one JSON object (`bulksync report --json`)."""
    header = report.header
    out: dict[str, Any] = {
        "results": str(report.path),
        "input": header.get("input"),
        "op": header.get("op", PEOPLE),
        "dry_run": report.dry_run,
        "started": header.get("started"),
        "last_change": report.last_change.isoformat(timespec="seconds")
        if report.last_change
        else None,
        "rows": report.rows,
        **{status: report.counts.get(status, 0) for status in STATUSES},
        "by_op": {op: dict(counts) for op, counts in sorted(report.by_op.items())},
        "removals": dict(report.removals),
        "missing_rows": report.missing,
        "first_missing_rows": report.first_missing,
        "last_row": report.last_row,
        "lines": report.lines,
        "attempts": report.attempts,
        "single_requests": report.single_attempts,
        "modes": dict(report.modes),
        "retried_rows": report.retried_rows,
        "failed_transient": sum(report.transient_failed.values()),
        "failed_refused": report.refused_failed,
        "reasons": [group.as_dict() for group in report.sorted_reasons()],
        "next": next_steps(report),
    }
    rate = report.rows_per_second
    if rate is not None:
        out["seconds"] = round(report.seconds or 0.0, 1)
        out["rows_per_second"] = round(rate, 1)
    return out


def report_lines(report: Report) -> list[str]:
    """The report for a person."""
    header = report.header
    op = header.get("op", PEOPLE)
    kind = "" if op == PEOPLE else f" --kind {op}"
    run = "dry run" if report.dry_run else "sync"
    started = header.get("started") or "?"
    lines = [
        f"{report.path}: {run}{kind} of {header.get('input') or '?'}, started {started}:"
        f" {report.rows:,} rows"
    ]
    lines += [
        f"  {status:<10}{report.counts[status]:>10,}"
        for status in STATUSES
        if report.counts.get(status)
    ]
    if len(report.by_op) > 1:
        lines.append("by operation:")
        for name, counts in sorted(report.by_op.items()):
            each = ", ".join(f"{counts[s]:,} {s}" for s in STATUSES if counts.get(s))
            lines.append(f"  {name:<15}{each}")
    if report.missing:
        rows = ", ".join(f"{row:,}" for row in report.first_missing)
        more = ", ..." if report.missing > len(report.first_missing) else ""
        lines.append(
            f"  no outcome{report.missing:>10,}  (rows {rows}{more}; up to row {report.last_row:,})"
        )
    if report.removals:
        each = ", ".join(f"{n:,} {status}" for status, n in sorted(report.removals.items()))
        lines.append(f"removals of people absent from the input (--missing): {each}")
    lines += _reason_lines(report)
    lines += _sending_lines(report)
    steps = next_steps(report)
    if steps:
        lines.append("next:")
        for step in steps:
            lines.append(f"  {step['why']}")
            if "command" in step:
                lines.append(f"    {step['command']}")
    return lines


def _reason_lines(report: Report) -> list[str]:
    groups = report.sorted_reasons()
    if not groups:
        return []
    several_ops = len(report.by_op) > 1
    lines = ["reasons (rows whose outcome is invalid or failed, by reason; … stands for a value):"]
    for group in groups[:SHOWN_REASONS]:
        op = f" {group.op}" if several_ops else ""
        lines.append(f"  {group.count:>8,}  {group.status}{op}: {group.reason}")
        examples = ", ".join(
            f"row {e['row']:,}" + (f" (line {e['line']:,})" if "line" in e else "")
            for e in group.examples
        )
        more = ", ..." if group.count > len(group.examples) else ""
        lines.append(f"            e.g. {examples}{more}")
    if len(groups) > SHOWN_REASONS:
        rest = sum(group.count for group in groups[SHOWN_REASONS:])
        lines.append(
            f"  {rest:>8,}  rows for {len(groups) - SHOWN_REASONS:,} other reasons (see --json)"
        )
    return lines


def _sending_lines(report: Report) -> list[str]:
    if report.dry_run or not report.attempts:
        return []
    sent = sum(report.modes.values())
    lines = []
    single = report.modes.get("single", 0)
    if report.single_attempts:
        lines.append(
            f"requests: {report.single_attempts:,} for the rows sent one per request"
            f" ({single:,} {'row' if single == 1 else 'rows'}; the credentials checks not"
            " counted)"
        )
    if report.modes.get("batch"):
        lines.append(
            f"batches: {report.modes['batch']:,} rows sent in batches (the file does not say in"
            " how many requests)"
        )
    if report.retried_rows:
        lines.append(
            f"retried: {report.retried_rows:,} of {sent:,} rows took more than one attempt"
        )
    rate = report.rows_per_second
    if rate is not None:
        lines.append(
            f"rate: {rate:,.1f} rows/s on average over {_duration(report.seconds or 0)}, from"
            " the start to"
            " the results file's last change (any pause between runs, resumes or retries"
            " included)"
        )
    return lines


def _duration(seconds: float) -> str:
    """20s, 4m05s, 72h00m20s: a span a person reads at a glance."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
