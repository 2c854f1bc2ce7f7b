"""`bulksync rejects RESULTS`: the rows whose outcome is `invalid` or `failed`, with their
original cells read back from the input, in a file a person fixes and then syncs.

    bulksync_row,bulksync_line,bulksync_error,id,email,...
    15,16,"email: invalid email 'maria.rossi@@example.com': ...",cust-1015,maria.rossi@@example.com

The three `bulksync_*` columns come first, where a spreadsheet shows them without scrolling, and
are always all present (`bulksync_line` empty when the line is not known). `bulksync sync` never
sends them (normalize.BULKSYNC_COLUMNS), so the fixed file is synced as it is: `bulksync sync
FIX` (plus the first run's column options).

- The input is the one the results header names (as written there: relative to the directory
  bulksync ran in), or `input`. It must still be what the run read: its size and SHA-256 are
  checked against the header's. A dry run or standard input has no fingerprint: rows are then
  matched by number, unchecked, and a warning says so.
- A CSV input gives a CSV (UTF-8 with a BOM, which Excel needs to show accents; a comma, or a tab
  for a .tsv name); a JSONL input gives JSONL (the original objects, JSON types kept, with the
  three keys first): a CSV could not hold a JSON object or array.
- An input that is itself a rejects file, synced (a second round of fixes), gets this round's
  three columns in place of its own.
- A row that could not be parsed at all has empty cells: its line in the input shows what it
  held. A failed or invalid row whose person has a later row accepted since is left out (sent
  now, it would put the older row over the newer one, as `bulksync retry` also refuses to do).
- The file holds personal data: it is created with mode 0600, and never over an existing file
  (a person's fixes) unless `force`.
- Memory: the input is streamed; only the rejected rows' reasons are held.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from .errors import UsageError
from .files import open_private
from .normalize import BULKSYNC_COLUMNS
from .operations import KINDS, PEOPLE
from .report import shell_word
from .results import InputIdentity, is_transient, latest_accepted_rows, read_header, read_lines
from .source import Chunk, Format, SourceOptions, detect_format, read_chunks

ROW, LINE, ERROR = "bulksync_row", "bulksync_line", "bulksync_error"
ADDED = (ROW, LINE, ERROR)
assert set(ADDED) == BULKSYNC_COLUMNS  # what sync leaves out


@dataclass(frozen=True)
class _Rejected:
    """What the results file says about one rejected row."""

    status: str
    error: str
    line: int | None
    identifier: str | None
    op: str
    transient: bool


@dataclass
class RejectsFile:
    """What `write_rejects` wrote, for the command's message."""

    output: Path | None  # None: no row to write, no file created
    input_path: str
    format: Format | None  # None when no row was written
    op: str
    verified: bool  # the input's fingerprint matched the header's
    written: Counter[str] = field(default_factory=Counter)  # status -> rows written
    transient: int = 0  # failed rows written that `bulksync retry` could re-send as they are
    not_found: list[int] = field(default_factory=list)  # rows the input does not have
    superseded: list[tuple[int, int]] = field(default_factory=list)  # (row, later row) left out

    @property
    def rows(self) -> int:
        return sum(self.written.values())

    def sync_command(self) -> str:
        """The command that sends the fixed file (the first run's column options to add)."""
        assert self.output is not None
        kind = "" if self.op == PEOPLE else f" --kind {self.op}"
        return f"bulksync sync {shell_word(str(self.output))}{kind}"


def default_output(results_path: Path, fmt: Format) -> Path:
    """RESULTS beside itself, `.jsonl` replaced: customers.csv.results.rejects.csv."""
    name = results_path.name.removesuffix(".jsonl")
    return results_path.with_name(f"{name}.rejects.{'jsonl' if fmt == 'jsonl' else 'csv'}")


def write_rejects(
    results_path: Path,
    output: Path | None = None,
    *,
    input_path: str | None = None,
    source: SourceOptions | None = None,
    force: bool = False,
) -> RejectsFile:
    """Write the rejected rows of `results_path` to `output` (default: `default_output`).
    Raises UsageError before creating anything when the input is missing or changed, or
    `output` exists (without `force`) or does not suit the input's format; an error while
    reading the input (an InputError) removes the half-written file."""
    source = source or SourceOptions()
    header = read_header(results_path)
    op = str(header.get("op") or PEOPLE)
    rejected = _rejected_rows(results_path)
    superseded = _superseded(results_path, rejected)
    for row, _ in superseded:
        del rejected[row]
    if not rejected:  # nothing to write: the input is not needed
        return RejectsFile(None, str(header.get("input")), None, op, False, superseded=superseded)
    path = _input_path(results_path, header, input_path)
    verified = _verify(results_path, header, path)
    fmt = source.format or detect_format(path, b"")
    result = RejectsFile(None, path, fmt, op, verified, superseded=superseded)
    output = output or default_output(results_path, fmt)
    _check_output(output, fmt, force, (path, str(results_path)))
    file = _create(output, force)
    try:
        with file:
            _write(file, output, fmt, path, source, rejected, result)
    except BaseException:
        output.unlink(missing_ok=True)  # half a rejects file would pass for all of them
        raise
    result.output = output
    return result


def _write(
    file: IO[bytes],
    output: Path,
    fmt: Format,
    path: str,
    source: SourceOptions,
    rejected: dict[int, _Rejected],
    result: RejectsFile,
) -> None:
    """Stream the input; write each rejected row, in input order, as it goes by."""
    writer: _CsvWriter | _JsonlWriter | None = None
    found: set[int] = set()
    for chunk in read_chunks(path, source):
        if writer is None:  # a CSV's columns are the same in every chunk: the header's
            # An input that is itself a rejects file (a second round of fixes) has our columns:
            # they are replaced by this round's, not repeated.
            columns = [str(c) for c in chunk.frame.columns if str(c) not in ADDED]
            writer = _CsvWriter(file, output, columns) if fmt == "csv" else _JsonlWriter(file)
        for row, cells in _rejected_in(chunk, rejected):
            reject = rejected[row]
            if row in chunk.lines:
                # The reader knows every row's line; results lines have it for invalid rows.
                reject = dataclasses.replace(reject, line=chunk.lines[row])
            writer.write(row, reject, cells)
            found.add(row)
            result.written[reject.status] += 1
            result.transient += reject.transient
    assert writer is not None  # the reader yields a chunk, or raises
    result.not_found = sorted(rejected.keys() - found)
    for row in result.not_found:
        reject = rejected[row]
        writer.write(row, reject, None)
        result.written[reject.status] += 1
        result.transient += reject.transient


def _rejected_in(
    chunk: Chunk, rejected: dict[int, _Rejected]
) -> list[tuple[int, dict[str, Any] | None]]:
    """(row, its cells) for the chunk's rejected rows, in row order; cells None for a row that
    could not be parsed."""
    wanted = [(i, row) for i, row in enumerate(chunk.rows) if row in rejected]
    cells: dict[int, dict[str, Any] | None] = {}
    if wanted:
        frame = chunk.frame.iloc[[i for i, _ in wanted]]
        records = frame.to_dict("records")
        for (_, row), record in zip(wanted, records, strict=True):
            cells[row] = {str(key): value for key, value in record.items()}
    for row, _ in chunk.bad_rows:
        if row in rejected:
            cells[row] = None
    return sorted(cells.items())


def _rejected_rows(results_path: Path) -> dict[int, _Rejected]:
    """row -> its latest line, for the rows whose latest outcome is invalid or failed."""
    rejected: dict[int, _Rejected] = {}
    for line in read_lines(results_path):
        row = line["row"]
        if line["status"] not in ("invalid", "failed"):
            rejected.pop(row, None)
            continue
        number = line.get("line")
        identifier = line.get("id")
        rejected[row] = _Rejected(
            status=line["status"],
            error=str(line.get("error") or "(no reason recorded)"),
            line=number if isinstance(number, int) else None,
            identifier=identifier if isinstance(identifier, str) else None,
            op=str(line["op"]),
            transient=line["status"] == "failed" and is_transient(line),
        )
    return rejected


def _superseded(results_path: Path, rejected: dict[int, _Rejected]) -> list[tuple[int, int]]:
    """(row, later accepted row) for the rejected rows a later row of the same person (or
    object) replaced: sent after it, the older row would overwrite the newer data."""
    replacing = {
        row: r.identifier
        for row, r in rejected.items()
        if r.identifier is not None and r.op in KINDS and KINDS[r.op].last_wins
    }
    accepted = latest_accepted_rows(results_path, set(replacing.values()))
    return [
        (row, accepted[identifier])
        for row, identifier in sorted(replacing.items())
        if accepted.get(identifier, 0) > row
    ]


def _input_path(results_path: Path, header: dict[str, Any], given: str | None) -> str:
    if given is not None:
        return given
    named = header.get("input")
    if not isinstance(named, str) or named == "-":
        raise UsageError(
            f"{results_path} was written for standard input, which cannot be read again:"
            " pass --input PATH with the same data"
        )
    if not Path(named).is_file():
        raise UsageError(
            f"{named}: no such file (the input {results_path} names, relative to the directory"
            " bulksync ran in): run this there, or pass --input PATH"
        )
    return named


def _verify(results_path: Path, header: dict[str, Any], path: str) -> bool:
    """Is `path` still the input the results belong to? Raise a UsageError naming the
    difference if not; False when the header has no fingerprint to compare (a dry run,
    standard input)."""
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    size, digest = header.get("size"), header.get("sha256")
    if not isinstance(size, int) or not isinstance(digest, str):
        return False
    now = InputIdentity.of(path)
    if now.sha256 is None:
        raise UsageError(f"{path}: cannot read it")
    if now.size != size:
        difference = f"it is {now.size:,} bytes now, {size:,} bytes when {results_path} was written"
    elif now.sha256 != digest:
        difference = (
            f"it has the same size ({size:,} bytes) as when {results_path} was written, but"
            " different content"
        )
    else:
        return True
    raise UsageError(
        f"{path} has changed since the run: {difference}, so its rows may not be the ones the"
        " results name; pass --input with the file as the run read it"
    )


def _check_output(output: Path, fmt: Format, force: bool, inputs: tuple[str, ...]) -> None:
    suffixes = [s.lower() for s in output.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        raise UsageError(f"{output}: the rejects file is written uncompressed; drop the .gz")
    extension = suffixes[-1] if suffixes else ""
    wanted = (".jsonl", ".ndjson") if fmt == "jsonl" else (".csv", ".tsv")
    if extension not in wanted:
        # The fixed file is synced next: its name must tell bulksync its format.
        what = (
            "JSONL: the rejects keep its objects as they are (a CSV cannot hold a JSON object)"
            if fmt == "jsonl"
            else "CSV"
        )
        raise UsageError(f"{output}: the input is {what}; name the output *{wanted[0]}")
    if output.is_dir():
        raise UsageError(f"{output} is a directory")
    if not output.exists():
        return
    if not force:
        raise UsageError(f"{output} exists (your fixes?): choose another --output, or --force")
    for other in inputs:
        if Path(other).exists() and output.samefile(other):
            raise UsageError(f"{output} is the file the rejects are read from: choose another")


def _create(output: Path, force: bool) -> IO[bytes]:
    if not force and os.path.lexists(output):
        raise UsageError(f"{output} exists: choose another --output, or --force")
    # Private (personal data), and never through a link, as every output of bulksync.
    flags = os.O_WRONLY | (os.O_TRUNC if force else os.O_EXCL)
    return os.fdopen(open_private(output, flags, "rejects file"), "wb")


def _missing(value: Any) -> bool:
    # JSONL: a key absent from this row is NaN in the chunk's frame; JSON itself has no NaN.
    return isinstance(value, float) and math.isnan(value)


class _CsvWriter:
    """UTF-8 with a BOM (Excel shows accents right only with one), the added columns first."""

    def __init__(self, file: IO[bytes], output: Path, columns: list[str]) -> None:
        file.write(codecs.BOM_UTF8)
        self._columns = columns
        delimiter = "\t" if output.suffix.lower() == ".tsv" else ","
        self._writer = csv.writer(_TextSink(file), delimiter=delimiter)
        self._writer.writerow([*ADDED, *columns])

    def write(self, row: int, reject: _Rejected, cells: dict[str, Any] | None) -> None:
        values = [_cell(None if cells is None else cells.get(c)) for c in self._columns]
        self._writer.writerow([row, reject.line or "", reject.error, *values])


def _cell(value: Any) -> str:
    if value is None or _missing(value):
        return ""
    return str(value)


class _TextSink:
    """A file-like object for csv.writer that encodes to the binary file as it goes."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def write(self, text: str) -> int:
        return self._file.write(text.encode("utf-8"))


class _JsonlWriter:
    """The original object, with the three keys first."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def write(self, row: int, reject: _Rejected, cells: dict[str, Any] | None) -> None:
        obj: dict[str, Any] = {ROW: row, LINE: reject.line, ERROR: reject.error}
        for key, value in (cells or {}).items():
            if key not in ADDED and not _missing(value):
                obj[str(key)] = value
        self._file.write(
            orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)
        )
