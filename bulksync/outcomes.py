"""Write each row's outcome, in one place for dry runs and sends: the results file, the progress
callback and (for accepted rows) the diff state."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .console import printable
from .errors import OutputError
from .normalize import Rejection
from .operations import PEOPLE, Record, state_key
from .plan import Unchanged
from .results import REMOVAL_ROW, ResultsLog, Status, outcome_line
from .state import StateStore

Progress = Callable[[Status], None]
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
        line = outcome_line(
            rejection.row,
            rejection.identifier,
            "invalid",
            self.op,
            error=rejection.reason,
            line_number=rejection.line,
        )
        self._write(rejection.row, "invalid", line, rejection.identifier)

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
        if self.state is None:
            return
        if record.row == REMOVAL_ROW:
            self.state.record_removed(record.identifier)
        elif (key := state_key(record)) is not None:
            self.state.record_accepted(key, record.payload, record.op)

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
