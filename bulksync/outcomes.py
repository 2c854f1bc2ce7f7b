"""Write each row's outcome, in one place for dry runs and sends: the results file, the progress
callback and (for accepted rows) the diff state."""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import cast

from .console import ProgressBar, printable
from .errors import OutputError
from .normalize import Rejection
from .operations import PEOPLE, Record, state_key
from .plan import Unchanged, UnchangedRows
from .results import (
    REMOVAL_ROW,
    ResultsLog,
    Status,
    ok_lines,
    outcome_line,
    unchanged_lines,
    unchanged_people_lines,
    valid_lines,
)
from .state import StateStore

Progress = Callable[[Status], None]
Item = Record | Unchanged | Rejection
log = logging.getLogger("bulksync")


def no_progress(status: Status) -> None:
    """The default progress callback: nothing to show."""


class Outcomes:
    """Each method writes one row's outcome; `flush()` makes the outcomes so far durable.

    Callers flush once per request answered (or per chunk read): the results file is the
    checkpoint, so an outcome is on disk as soon as its request is answered."""

    def __init__(
        self,
        log: ResultsLog,
        progress: Progress = no_progress,
        state: StateStore | None = None,
        op: str = PEOPLE,
    ) -> None:
        self.log = log
        self.progress = progress
        self.state = state
        self.op = op  # the run's kind, for rows rejected before they became a Record

    def invalid(self, rejection: Rejection) -> None:
        self._write(rejection.row, "invalid", self._invalid_line(rejection), rejection.identifier)

    def _invalid_line(self, rejection: Rejection) -> bytes:
        return outcome_line(
            rejection.row,
            rejection.identifier,
            "invalid",
            self.op,
            error=rejection.reason,
            line_number=rejection.line,
        )

    def unchanged(self, item: Unchanged) -> None:
        line = outcome_line(
            item.row, item.identifier, "unchanged", item.op, superseded_by=item.superseded_by
        )
        self._write(item.row, "unchanged", line, item.identifier)

    def valid(self, record: Record) -> None:
        """Dry run: the row would be sent, with this payload."""
        line = outcome_line(
            record.row, record.identifier, "valid", record.op, payload=record.payload
        )
        self._write(record.row, "valid", line, record.identifier)

    def many(self, items: Sequence[Item]) -> None:
        """Each item's outcome, in order, as `valid` (a dry run's records), `unchanged` and
        `invalid` write it, for a chunk at once: its lines in one write, made a run of one kind
        at a time (the common rows without the calls those make per row), and the progress
        bar told once per status."""
        if isinstance(items, UnchangedRows):  # KnownRows' chunk: its lines made at once
            block = unchanged_people_lines(items.rows, items.identifiers)
            return self._write_many(block, items.rows, items.identifiers, "unchanged")
        try:
            lines, statuses = self._many_lines(items)
        except TypeError:  # orjson cannot serialize a value: fail where one line at a time would
            for item in items:
                if type(item) is Record:
                    self.valid(item)
                elif type(item) is Unchanged:
                    self.unchanged(item)
                else:
                    self.invalid(cast(Rejection, item))
            return
        rows = [item.row for item in items]
        self._write_many(lines, rows, [item.identifier for item in items], statuses)

    def _write_many(
        self,
        lines: bytes | bytearray,
        rows: Sequence[int],
        identifiers: Sequence[str | None],
        statuses: Sequence[Status] | Status,
    ) -> None:
        """The lines of these rows (with their identifiers and statuses, or one status for
        all) in one write; the progress bar told once per status, any other callback once per
        row."""
        try:
            self.log.write_many(lines, rows, statuses, identifiers)
        except OSError as exc:  # a full disk: one message and exit 3, never a traceback
            raise OutputError.of(exc, self.log.path, "results file") from None
        if self.progress is no_progress:
            return
        each: Sequence[Status] = [statuses] * len(rows) if isinstance(statuses, str) else statuses
        if isinstance(self.progress, ProgressBar):
            for status, count in Counter(each).items():
                self.progress.add(status, count)
        else:
            for status in each:
                self.progress(status)

    def _many_lines(self, items: Sequence[Item]) -> tuple[bytearray, list[Status]]:
        lines = bytearray()
        statuses: list[Status] = []
        for kind, run in itertools.groupby(items, type):
            group = list(run)
            if kind is Record:
                lines += valid_lines(cast(list[Record], group))
                statuses += ["valid"] * len(group)
            elif kind is Unchanged:
                lines += unchanged_lines(cast(list[Unchanged], group))
                statuses += ["unchanged"] * len(group)
            else:
                for rejection in cast(list[Rejection], group):
                    lines += self._invalid_line(rejection)
                statuses += ["invalid"] * len(group)
        return lines, statuses

    def all_ok(
        self, records: Sequence[Record], mode: str, http_status: int | None, attempts: int
    ) -> None:
        """`ok` for each of `records` (a batch accepted whole), their lines in one write."""
        if not records:
            return
        lines = ok_lines(records, mode, http_status, attempts)
        rows, identifiers, _, _ = zip(*records, strict=True)
        self._write_many(lines, rows, identifiers, "ok")
        if self.state is not None:
            for record in records:
                self._accepted(record)

    def ok(self, record: Record, mode: str, http_status: int | None, attempts: int) -> None:
        line = outcome_line(
            record.row,
            record.identifier,
            "ok",
            record.op,
            http_status=http_status,
            attempts=attempts,
            mode=mode,
        )
        self._write(record.row, "ok", line, record.identifier)
        if self.state is not None:
            self._accepted(record)

    def _accepted(self, record: Record) -> None:
        assert self.state is not None
        if record.row == REMOVAL_ROW:
            self.state.record_removed(record.identifier)
        elif (key := state_key(record)) is not None:
            self.state.record_accepted(key, record.payload, record.op, record.row)

    def failed(
        self, record: Record, mode: str, http_status: int | None, attempts: int, error: str
    ) -> None:
        """The API refused the row, or its retries ran out: keep the payload to re-send it."""
        log.error(
            "%s (id %s) failed: %s",
            "removal" if record.row == REMOVAL_ROW else f"row {record.row}",
            printable(record.identifier),
            error,
            extra={"row_failure": True},  # stderr shows the first few (console.py)
        )
        line = outcome_line(
            record.row,
            record.identifier,
            "failed",
            record.op,
            http_status=http_status,
            attempts=attempts,
            error=error,
            payload=record.payload,
            mode=mode,
        )
        self._write(record.row, "failed", line, record.identifier)
        if self.state is not None and (key := state_key(record)) is not None:
            self.state.unsent(key, record.row)

    def flush(self) -> None:
        """The results file first, then the state's acceptances: a crash between the two can
        only make the next run resend a row, never skip one."""
        try:
            self.log.flush()
        except OSError as exc:
            raise OutputError.of(exc, self.log.path, "results file") from None
        if self.state is not None:
            self.state.flush()

    def _write(self, row: int, status: Status, line: bytes, identifier: str | None) -> None:
        try:
            self.log.write(row, status, line, identifier)
        except OSError as exc:  # a full disk: one message and exit 3, never a traceback
            raise OutputError.of(exc, self.log.path, "results file") from None
        self.progress(status)
