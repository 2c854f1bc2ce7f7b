"""The results file: one JSON line per row outcome, appended and flushed as outcomes are known.

    {"bulksync_results": 1, "input": "customers.csv", "size": 5120, "sha256": "9f2c...", ...}
    {"row": 17, "id": "cust-17", "status": "ok", "http_status": 200, "attempts": 1, "error": null}

The first line says which input the file belongs to, so a re-run can resume it (and refuse to
resume it with another input). Every other line is one row's outcome; the latest line for a row
is its outcome. It is the checkpoint: a crash loses at most the rows in flight, and a torn last
line is dropped when the file is opened again.

The file holds personal data, so it is created with mode 0600 (and an existing file is narrowed
to 0600 before anything is written to it). A lock file beside it (`RESULTS.lock`, flock-ed, with
the holder's pid) keeps two runs from writing the same results file; the kernel releases the lock
when its process dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Self, TypeGuard

import orjson

from .errors import OutputError, UsageError
from .files import check_output, open_private, take_lock
from .operations import PEOPLE, Record

if TYPE_CHECKING:
    from .plan import Unchanged  # plan imports this module

Status = Literal["ok", "failed", "invalid", "unchanged", "valid"]
STATUSES: tuple[Status, ...] = ("ok", "failed", "invalid", "unchanged", "valid")
HEADER_KEY = "bulksync_results"
FORMAT_VERSION = 1
# A row's latest status, one byte per row number (0: no outcome yet): 3 MB for 3 million rows.
_CODES: dict[str, int] = {status: i for i, status in enumerate(STATUSES, start=1)}
# HTTP answers (None: no answer at all) worth sending again as they were: see `is_transient`.
_TRANSIENT_STATUSES = {None, 408, 429}
MAX_ROWS = 1_000_000_000  # rows of an input whose size is unknown (standard input)
# A removal (--missing: a known person absent from the input) names no input row: its Record's
# row is 0, and its results line says "row": null, "absent": true.
REMOVAL_ROW = 0
# The last line of a run that gave every row of its input an outcome: the file is finished, and
# with --state the next night's input may rotate it away (see rotate_finished).
END_KEY = "bulksync_end"


def default_results_path(input_path: str, *, dry_run: bool = False) -> Path:
    # A dry run keeps its own file: its `valid` lines must never pass for a real run's outcomes.
    suffix = ".dry-run.jsonl" if dry_run else ".results.jsonl"
    # Standard input, and `<(...)`'s /dev/fd/N, name no place for a file of ours.
    stdin = input_path == "-" or input_path.startswith(("/dev/", "/proc/"))
    return Path(("stdin" if stdin else input_path) + suffix)


def is_transient(line: dict[str, Any]) -> bool:
    """Did this failed row fail for a reason that may pass (429, 5xx, timeout, network)?"""
    status = line.get("http_status")
    return status in _TRANSIENT_STATUSES or (isinstance(status, int) and status >= 500)


def outcome_line(
    row: int,
    identifier: str | None,
    status: Status,
    op: str,
    *,
    http_status: int | None = None,
    attempts: int = 0,
    error: str | None = None,
    payload: dict[str, Any] | None = None,
    mode: str | None = None,
    line_number: int | None = None,
    superseded_by: int | None = None,
) -> bytes:
    """One results line. `op` is the row's kind (people, events...); an invalid row says on
    which input `line` it starts (when the reader knows); a failed row keeps its
    `payload`, to be re-sent without the input; a sent row says which `mode` sent it (single:
    one request per row, batch: POST /api/v2/batch); an unchanged row that a later row of the
    same identifier replaces (with --state) says which: `superseded_by`."""
    line: dict[str, Any] = {
        "row": None if row == REMOVAL_ROW else row,
        "id": identifier,
        "op": op,
        "status": status,
        "http_status": http_status,
        "attempts": attempts,
        "error": error,
    }
    if row == REMOVAL_ROW:
        line["absent"] = True
    if line_number is not None:
        line["line"] = line_number
    if superseded_by is not None:
        line["superseded_by"] = superseded_by
    if mode is not None:
        line["mode"] = mode
    if payload is not None:
        line["payload"] = payload
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def valid_lines(records: Iterable[Record]) -> bytearray:
    """The dry-run lines of `records`, one after the other: each one
    `outcome_line(row, identifier, "valid", op, payload=payload)`, made without that function's
    keywords and tests, as a dry run makes one per row. Each line is added as soon as it is
    made: orjson's output, kept alive line by line, would cost a fresh allocation each."""
    lines = bytearray()
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    for row, identifier, payload, op in records:
        if row == REMOVAL_ROW:  # a line with more keys: made as always
            lines += outcome_line(row, identifier, "valid", op, payload=payload)
            continue
        line = {
            "row": row,
            "id": identifier,
            "op": op,
            "status": "valid",
            "http_status": None,
            "attempts": 0,
            "error": None,
            "payload": payload,
        }
        lines += dumps(line, option=newline)
    return lines


def unchanged_lines(items: Iterable[Unchanged]) -> bytearray:
    """The lines of unchanged rows, each `outcome_line(row, identifier, "unchanged", op,
    superseded_by=superseded_by)`, made as `ok_lines` makes its own: a nightly re-run writes
    one per row."""
    lines = bytearray()
    dumps = orjson.dumps
    ends: dict[str, bytes] = {}  # op -> what follows the id
    for row, identifier, op, superseded_by in items:
        if row == REMOVAL_ROW or superseded_by is not None:  # lines with more keys
            lines += outcome_line(row, identifier, "unchanged", op, superseded_by=superseded_by)
            continue
        end = ends.get(op)
        if end is None:
            end = ends[op] = _line_end(op, "unchanged", None, 0)
        lines += b'{"row":%d,"id":%b%b' % (row, dumps(identifier), end)
    return lines


def unchanged_people_lines(rows: Sequence[int], identifiers: Sequence[str]) -> bytes:
    """unchanged_lines() of people's rows (none superseded) given as columns: no tuple per row,
    and every line's end the same."""
    return _lines(rows, identifiers, _line_end(PEOPLE, "unchanged", None, 0))


def ok_lines(
    records: Sequence[Record], mode: str, http_status: int | None, attempts: int
) -> bytes | bytearray:
    """The lines of accepted rows, each `outcome_line(row, identifier, "ok", op,
    http_status=http_status, attempts=attempts, mode=mode)`: a batch's thousand at once.

    Past the row and the id, every line of a kind is the same: that end is made once, and a
    batch of one kind (the common one) is made by `_lines`, without a call per row."""
    rows, identifiers, _, ops = zip(*records, strict=True) if records else ((), (), (), ())
    kinds = set(ops)
    if len(kinds) == 1 and REMOVAL_ROW not in rows:
        return _lines(
            rows, identifiers, _line_end(kinds.pop(), "ok", http_status, attempts, mode=mode)
        )
    lines = bytearray()
    dumps = orjson.dumps
    ends: dict[str, bytes] = {}  # op -> what follows the id
    for row, identifier, op in zip(rows, identifiers, ops, strict=True):
        if row == REMOVAL_ROW:  # a line with more keys
            lines += outcome_line(
                row, identifier, "ok", op, http_status=http_status, attempts=attempts, mode=mode
            )
            continue
        end = ends.get(op)
        if end is None:
            end = ends[op] = _line_end(op, "ok", http_status, attempts, mode=mode)
        # The id as orjson writes a string in any line; the row, an int, as orjson writes it.
        lines += b'{"row":%d,"id":%b%b' % (row, dumps(identifier), end)
    return lines


def _lines(rows: Sequence[int], identifiers: Sequence[str], end: bytes) -> bytes:
    """For each row and its identifier, the line `{"row":ROW,"id":IDENTIFIER` + `end`, the id as
    orjson writes a string and the row as it writes an int: made by one format call for them
    all, rather than a call per row. The identifiers are serialized together and cut apart
    where `","` stands: never inside a JSON string, whose own quotes are escaped."""
    if not rows:
        return b""
    quoted = orjson.dumps(identifiers)[2:-2].split(b'","')  # ["a","b"] -> a, b
    template = (b'{"row":%d,"id":"%b"' + end.replace(b"%", b"%%")) * len(rows)
    return template % tuple(itertools.chain.from_iterable(zip(rows, quoted, strict=True)))


def _line_end(
    op: str, status: Status, http_status: int | None, attempts: int, **more: Any
) -> bytes:
    """A line's end after its id: the rest of outcome_line's keys, in its order."""
    rest = {
        "op": op,
        "status": status,
        "http_status": http_status,
        "attempts": attempts,
        "error": None,
        **more,
    }
    return b"," + orjson.dumps(rest, option=orjson.OPT_APPEND_NEWLINE)[1:]  # without its "{"


# --- reading a results file: pure functions (no lock, no truncation), for retry and tests ------


def read_header(path: Path) -> dict[str, Any]:
    """The first line of a results file, checked; a UsageError (one line, exit 2) when the
    file is missing, unreadable or not a results file."""
    try:
        with path.open("rb") as f:
            first = f.readline()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such results file") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a results file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        header = orjson.loads(first)
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or HEADER_KEY not in header:
        raise UsageError(f"{path} is not a bulksync results file (its first line is no header)")
    return header


def read_lines(path: Path, *, removals: bool = False) -> Iterator[dict[str, Any]]:
    """Every row's outcome line of the results file at `path`, in file order (the header is
    checked, not returned; the end line skipped; removal lines, which name no row, only with
    `removals`). A torn last line, left by a crash mid-write, is skipped. Lines written before
    kinds existed get `"op": "people"`."""
    header = read_header(path)
    with path.open("rb") as f:
        f.readline()  # the header, checked above
        for number, raw in enumerate(f, start=2):
            if not raw.endswith(b"\n"):
                return
            line = _parse(raw, path, number)
            if END_KEY in line:
                continue
            if _is_removal(line):
                if removals:
                    yield line
                continue
            if not _is_row(line.get("row"), header.get("size")) or line.get("status") not in _CODES:
                raise UsageError(f"{path}: line {number} is not a results line")
            line.setdefault("op", PEOPLE)
            yield line


def _is_removal(line: dict[str, Any]) -> bool:
    return (
        line.get("absent") is True
        and line.get("row") is None
        and isinstance(line.get("id"), str)
        and line.get("status") in _CODES
    )


def rotate_finished(path: Path, identity: InputIdentity) -> Path | None:
    """With --state, a nightly run finds last night's results file at its default path: when
    that file is finished (every row of its input has an outcome) and was written for another
    input, move it aside, named with its date (INPUT.results.2026-11-28.jsonl), and return
    where; else None (an unfinished file for another input is refused when it is opened, as
    its rows without an outcome must not be forgotten)."""
    try:
        header = read_header(path)
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            last = f.read().rstrip(b"\n").rpartition(b"\n")[2]
        end = orjson.loads(last)
    except (UsageError, OSError, orjson.JSONDecodeError):
        return None
    previous = InputIdentity(header.get("input") or "?", header.get("size"), header.get("sha256"))
    if (
        not isinstance(end, dict)
        or END_KEY not in end
        or header.get("dry_run")
        # Standard input cannot be fingerprinted: a finished file has nothing left to resume,
        # and tonight's stream is taken for another input.
        or (identity.sha256 is not None and identity.same_content(previous))
    ):
        return None
    day = str(header.get("started", ""))[:10] or "earlier"
    stem = path.name.removesuffix(".jsonl")
    for n in range(1, 1000):
        rotated = path.with_name(f"{stem}.{day}{'' if n == 1 else f'-{n}'}.jsonl")
        if not rotated.exists():
            break
    lock = take_lock(path, f"{path} is in use by another bulksync run")
    try:
        os.rename(path, rotated)
    except OSError as exc:
        raise UsageError(f"cannot move the finished {path} aside: {exc.strerror}") from None
    finally:
        os.close(lock)
    return rotated


def failed_lines(path: Path) -> list[dict[str, Any]]:
    """The latest line of every row whose outcome is `failed`, in row order."""
    failed: dict[int, dict[str, Any]] = {}
    for line in read_lines(path):
        if line["status"] == "failed":
            failed[line["row"]] = line
        else:
            failed.pop(line["row"], None)
    return [failed[row] for row in sorted(failed)]


def latest_accepted_rows(path: Path, identifiers: set[str]) -> dict[str, int]:
    """For each of `identifiers`, the highest row of it whose latest outcome is ok or
    unchanged."""
    if not identifiers:
        return {}
    latest: dict[int, tuple[str, str]] = {}  # row -> (identifier, status), rows of interest
    for line in read_lines(path):
        if line.get("id") in identifiers:
            latest[line["row"]] = (line["id"], line["status"])
    rows: dict[str, int] = {}
    for row, (identifier, status) in latest.items():
        if status in ("ok", "unchanged") and row > rows.get(identifier, 0):
            rows[identifier] = row
    return rows


@dataclass(frozen=True)
class InputIdentity:
    """Which input a results file belongs to: path, size and SHA-256 of the content."""

    path: str
    size: int | None = None
    sha256: str | None = None

    @classmethod
    def of(cls, path: str) -> InputIdentity:
        """Fingerprint a file (about 1 s per GB). Standard input cannot be fingerprinted, nor a
        FIFO or another stream (`<(...)`, /dev/fd/N): reading it here would consume it."""
        try:
            if path == "-" or not os.path.isfile(path):  # not opened: a FIFO would be emptied
                return cls(path)
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            return cls(path, os.stat(path).st_size, digest)
        except OSError:  # stdin, or unreadable: the reader reports the latter
            return cls(path)

    def same_content(self, other: InputIdentity) -> bool:
        if self.sha256 is None or other.sha256 is None:
            return True  # standard input: nothing to compare, rows are matched by number
        return (self.size, self.sha256) == (other.size, other.sha256)


class ResultsLog:
    """The results file of one run: what it already holds, and where new outcomes go.

    `fresh=False` resumes an existing file (rows with an outcome are not sent again); a file
    written for another input is refused with a UsageError. `identity=None` skips that check
    (`bulksync retry` needs only the file).
    """

    def __init__(
        self,
        path: Path,
        identity: InputIdentity | None,
        *,
        fresh: bool = False,
        dry_run: bool = False,
        op: str = PEOPLE,
    ) -> None:
        self.path = path
        self.op = op  # the run's --kind: a file of another kind's outcomes is not resumed
        self.counts: Counter[str] = Counter()  # latest status of every row in the file
        self.resumed = 0  # rows that already had an outcome when the file was opened
        self._status = bytearray()
        self.removals: dict[str, str] = {}  # absent identifier -> latest status of its removal
        check_output(path, "results file")  # before reading it, too: a link is not ours
        self._lock = take_lock(path, f"{path} is in use by another bulksync run")
        try:
            if not fresh and path.exists() and path.stat().st_size > 0:
                self._file = self._resume(identity)
            else:
                self._file = self._create(identity, dry_run)
        except BaseException:
            os.close(self._lock)
            raise

    # --- opening ------------------------------------------------------------------------------

    def _create(self, identity: InputIdentity | None, dry_run: bool) -> BinaryIO:
        file = _open_private(self.path, os.O_TRUNC)
        header = {
            HEADER_KEY: FORMAT_VERSION,
            "input": identity.path if identity else None,
            "size": identity.size if identity else None,
            "sha256": identity.sha256 if identity else None,
            "dry_run": dry_run,
            "op": self.op,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        file.write(orjson.dumps(header, option=orjson.OPT_APPEND_NEWLINE))
        file.flush()
        return file

    def _resume(self, identity: InputIdentity | None) -> BinaryIO:
        good_end = 0
        with self.path.open("rb") as f:
            header = _parse(f.readline(), self.path, 1)
            if HEADER_KEY not in header:
                raise UsageError(
                    f"{self.path} is not a bulksync results file (or predates resume);"
                    " pass --fresh to overwrite it, or choose another --results path"
                )
            if identity is not None and header.get("dry_run"):
                raise UsageError(
                    f"{self.path} holds a dry run; pass --fresh to start a real run over it"
                )
            previous = InputIdentity(
                header.get("input") or "?", header.get("size"), header.get("sha256")
            )
            if identity is not None and not identity.same_content(previous):
                raise UsageError(
                    f"{self.path} belongs to another input ({previous.path}, {previous.size} bytes,"
                    f" different content); pass --fresh to start over, or choose another --results"
                    " path"
                )
            kind = header.get("op", PEOPLE)  # files from before --kind hold people
            if identity is not None and kind != self.op:
                raise UsageError(
                    f"{self.path} holds the outcomes of a --kind {kind} run, not {self.op};"
                    " choose another --results path (or pass --fresh to start it over)"
                )
            good_end = f.tell()
            for number, raw in enumerate(f, start=2):
                if not raw.endswith(b"\n"):
                    break  # torn by a crash mid-write: that outcome is re-made on resume
                line = _parse(raw, self.path, number)
                row, status = line.get("row"), line.get("status")
                if END_KEY in line:
                    pass
                elif _is_removal(line):
                    self.removals[line["id"]] = str(status)
                elif not _is_row(row, previous.size) or status not in _CODES:
                    raise UsageError(
                        f"{self.path}: line {number} is not a results line of this input"
                        " (edited?); pass --fresh to start over, or choose another --results"
                    )
                else:
                    self._set(row, str(status))
                good_end += len(raw)
        self.resumed = sum(self.counts.values())
        file = _open_private(self.path, 0)
        file.truncate(good_end)
        file.seek(good_end)
        return file

    # --- reading and writing ------------------------------------------------------------------

    def status(self, row: int) -> str | None:
        """The latest status of `row`, or None if it has no outcome yet."""
        code = self._status[row] if row < len(self._status) else 0
        return STATUSES[code - 1] if code else None

    def write(self, row: int, status: Status, line: bytes, identifier: str | None = None) -> None:
        self._file.write(line)
        if row == REMOVAL_ROW:
            self.removals[str(identifier)] = status
        else:
            self._set(row, status)

    def write_many(
        self,
        lines: bytes | bytearray,
        rows: Sequence[int],
        statuses: Sequence[Status] | Status,
        identifiers: Sequence[str | None],
    ) -> None:
        """`write()` of many outcomes, in order: `lines` holds their lines one after the other,
        written at once; `statuses` is each row's, or one status for every row."""
        self._file.write(lines)
        if self._set_run(rows, statuses):
            return
        if isinstance(statuses, str):
            statuses = [statuses] * len(rows)
        for row, status, identifier in zip(rows, statuses, identifiers, strict=True):
            if row == REMOVAL_ROW:
                self.removals[str(identifier)] = status
            else:
                self._set(row, status)

    def finish(self) -> None:
        """Every row of the input has an outcome: say so in the file's last line."""
        end = {END_KEY: datetime.now(UTC).isoformat(timespec="seconds")}
        self._file.write(orjson.dumps(end, option=orjson.OPT_APPEND_NEWLINE))
        self._file.flush()

    @property
    def removal_counts(self) -> Counter[str]:
        return Counter(self.removals.values())

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:  # the last buffered lines could not be written: a full disk
            raise OutputError.of(exc, self.path, "results file") from None
        finally:
            os.close(self._lock)

    def _set(self, row: int, status: str) -> None:
        if row >= len(self._status):
            self._status.extend(bytes(max(row + 1 - len(self._status), len(self._status))))
        previous = self._status[row]
        if previous:
            self.counts[STATUSES[previous - 1]] -= 1
        self._status[row] = _CODES[status]
        self.counts[status] += 1

    def _set_run(self, rows: Sequence[int], statuses: Sequence[Status] | Status) -> bool:
        """`_set()` of each row at once, when `rows` are consecutive data rows without an
        outcome yet (a chunk's, in a dry run, which always starts its file over); else False,
        and nothing is set."""
        first, n = (rows[0], len(rows)) if rows else (0, 0)
        every = statuses if isinstance(statuses, str) else None
        if every is None and len(statuses) != n:
            return False
        if first < 1 or list(rows) != list(range(first, first + n)):
            return False
        end = first + n
        if end > len(self._status):
            self._status.extend(bytes(max(end - len(self._status), len(self._status))))
        if self._status.count(0, first, end) != n:
            return False
        if every is not None:
            self._status[first:end] = bytes((_CODES[every],)) * n
            self.counts[every] += n
            return True
        codes = bytes(map(_CODES.__getitem__, statuses))
        self._status[first:end] = codes
        for status in dict.fromkeys(statuses):  # in order of first use, as `_set` adds them
            self.counts[status] += codes.count(_CODES[status])
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _is_row(row: object, input_size: object) -> TypeGuard[int]:
    """Could `row` be a data row of an input of `input_size` bytes? A tampered line must not
    make the status table (one byte per row) allocate gigabytes, or index from the end."""
    if type(row) is not int or row < 1:
        return False
    # A data row takes at least two bytes (a character and a line end) after the header.
    if isinstance(input_size, int) and input_size > 0:
        return row <= input_size // 2 + 1
    return row <= MAX_ROWS


def _parse(raw: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UsageError(f"{path}: line {number} is not JSON; is this a results file?") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path}: line {number} is not a JSON object; is this a results file?")
    return value


def _open_private(path: Path, flags: int) -> BinaryIO:
    return os.fdopen(open_private(path, os.O_WRONLY | flags, "results file"), "wb")


@dataclass
class Summary:
    """What a run did: counts per status (every row of the results file), how long it took."""

    results_path: Path
    counts: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    dry_run: bool = False
    requests: int = 0
    rate_limited: int = 0  # requests answered 429 (and sent again, slower)
    resumed: int = 0  # rows that already had an outcome from an earlier run
    interrupted: bool = False
    op: str = PEOPLE  # the run's --kind (a retry may hold several: people then)
    repeated_rows: int = 0  # rows whose identifier came on an earlier row (people, objects)
    repeated_identifiers: int = 0
    repeated_examples: dict[str, list[int]] = field(default_factory=dict)  # id -> some rows
    absent: int | None = None  # with --state: known people absent from a complete input
    removals: dict[str, int] = field(default_factory=dict)  # status -> removals (--missing)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def exit_code(self) -> int:
        """0 when every row ended well, 1 when some are failed or invalid, 3 if interrupted."""
        if self.interrupted:
            return 3
        failed = self.counts.get("failed", 0) + self.removals.get("failed", 0)
        return 1 if failed or self.counts.get("invalid", 0) else 0

    @property
    def rows_per_second(self) -> float:
        done = self.rows - self.resumed
        return done / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "rows": self.rows,
            **{status: self.counts.get(status, 0) for status in STATUSES},
            "resumed": self.resumed,
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "repeated": {
                "identifiers": self.repeated_identifiers,
                "rows": self.repeated_rows,
                "examples": [{"id": i, "rows": r} for i, r in self.repeated_examples.items()],
            },
            "absent": self.absent,
            "removed": self.removals.get("ok", 0),
            "removals_failed": self.removals.get("failed", 0),
            "would_remove": self.removals.get("valid", 0),
            "elapsed_seconds": round(self.elapsed, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "results": str(self.results_path),
            "exit_code": self.exit_code,
        }
