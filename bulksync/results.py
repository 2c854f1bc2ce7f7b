"""The results file: one JSON line per row outcome, appended and flushed as outcomes are known.

    {"row": 17, "id": "cust-17", "status": "ok", "http_status": 200, "attempts": 1, "error": null}

The latest line for a row is its outcome. The file holds personal data, so it is created with
mode 0600 (and an existing file is narrowed to 0600 before anything is written to it).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import orjson

from .errors import UsageError

Status = Literal["ok", "failed", "invalid", "unchanged", "valid"]
STATUSES: tuple[Status, ...] = ("ok", "failed", "invalid", "unchanged", "valid")


def default_results_path(input_path: str) -> Path:
    if input_path == "-":
        return Path("stdin.results.jsonl")
    return Path(f"{input_path}.results.jsonl")


def outcome_line(
    row: int,
    identifier: str | None,
    status: Status,
    *,
    http_status: int | None = None,
    attempts: int = 0,
    error: str | None = None,
    payload: dict[str, Any] | None = None,
) -> bytes:
    """One results line. A failed row keeps its `payload`, to be re-sent without the input."""
    line: dict[str, Any] = {
        "row": row,
        "id": identifier,
        "status": status,
        "http_status": http_status,
        "attempts": attempts,
        "error": error,
    }
    if payload is not None:
        line["payload"] = payload
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


class ResultsWriter:
    """Writes outcome lines to the results file, counting them by status."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot write the results file {path}: {exc.strerror}") from None
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
        self._file = os.fdopen(fd, "wb")

    def write(self, status: Status, line: bytes) -> None:
        self._file.write(line)
        self.counts[status] += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class Summary:
    """What a run did: counts per status, how long it took, where the results are."""

    results_path: Path
    counts: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    dry_run: bool = False
    requests: int = 0

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def exit_code(self) -> int:
        """0 when every row ended well, 1 when some are failed or invalid (see the results file)."""
        return 1 if self.counts.get("failed", 0) or self.counts.get("invalid", 0) else 0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            **{status: self.counts.get(status, 0) for status in STATUSES},
            "requests": self.requests,
            "elapsed_seconds": round(self.elapsed, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "dry_run": self.dry_run,
            "results": str(self.results_path),
            "exit_code": self.exit_code,
        }
