"""Read CSV and JSONL input in bounded chunks of rows, each row with its 1-based data row number.

CSV is parsed with the standard library's C `csv` reader rather than `pandas.read_csv`: a ragged
row (more or fewer fields than the header) must become one `invalid` row with its exact row
number, and neither pandas' C engine (which aborts or pads silently) nor pyarrow's streaming reader
(which cannot say where a skipped row was) can report that. Cells stay strings: zip "01234" stays
"01234". Each chunk is then a pandas DataFrame, so normalizing is vectorised.

Memory is bounded by `chunk_size` rows, never by the size of the input.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import sys
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, get_args

import orjson
import pandas as pd

from .errors import InputError, UsageError
from .lines import QuietLines, is_pipe

Format = Literal["csv", "jsonl"]

DEFAULT_CHUNK_SIZE = 20_000
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = codecs.BOM_UTF8
_EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


@dataclass
class Chunk:
    """A block of consecutive data rows.

    `frame` holds the rows that could be parsed (CSV: every cell a string; JSONL: JSON types,
    None where a key is absent), `rows` their data row numbers, and `bad_rows` the rows that could
    not be parsed at all, as (row number, reason).
    """

    frame: pd.DataFrame
    rows: list[int]
    bad_rows: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows) + len(self.bad_rows)


@dataclass(frozen=True)
class SourceOptions:
    """How to read the input. `None` means: decide from the file."""

    format: Format | None = None
    encoding: str = "utf-8"
    delimiter: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in get_args(Format):
            raise UsageError(f"format {self.format!r}: must be csv or jsonl")
        if self.chunk_size < 1:
            raise UsageError(f"chunk size {self.chunk_size!r}: must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"limit {self.limit!r}: must be >= 1")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise UsageError(f"delimiter {self.delimiter!r}: must be a single character")


def input_name(path: str) -> str:
    return "standard input" if path == "-" else path


def detect_format(path: str, head: bytes) -> Format:
    """The format named by the extension (`.gz` aside); for stdin, guessed from the first byte."""
    if path == "-":
        return "jsonl" if head.lstrip(UTF8_BOM + b" \t\r\n").startswith(b"{") else "csv"
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    fmt = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of {path} from its extension:"
            " pass --format csv or --format jsonl"
        )
    return fmt


def read_chunks(path: str, options: SourceOptions | None = None) -> Generator[Chunk, None, None]:
    """Yield the input's rows in chunks of at most `options.chunk_size` rows."""
    options = options or SourceOptions()
    try:
        codec: codecs.CodecInfo | None = codecs.lookup(options.encoding)
    except LookupError:
        codec = None
    # "hex" or "base64" are codecs too, but bytes-to-bytes ones: not text encodings.
    if codec is None or not getattr(codec, "_is_text_encoding", True):
        raise UsageError(f"unknown text encoding {options.encoding!r}")
    raw = _open(path)
    try:
        binary = raw
        if raw.peek(2)[:2] == GZIP_MAGIC:  # gzip is recognised by content, whatever the name
            binary = io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"))
        fmt = options.format or detect_format(path, binary.peek(64))
        lines = None
        if binary is raw and path == "-" and is_pipe(raw):
            # A pipe may trickle: read it so that a quiet spell sends the rows held so far.
            pending = raw.read1(len(raw.peek(1)))  # what peeking already buffered
            encoding = _text_encoding(options.encoding)
            lines = QuietLines(raw.fileno(), encoding, pending, csv_quotes=fmt == "csv")
        if fmt == "csv":
            yield from _read_csv(path, binary, options, lines)
        else:
            yield from _read_jsonl(path, binary, options, lines)
    except (OSError, EOFError, zlib.error) as exc:
        # A truncated or corrupt .gz surfaces here, part-way through the file.
        raise InputError(f"{input_name(path)}: cannot read: {exc}") from None
    finally:
        if path != "-":
            raw.close()
        elif raw is not sys.stdin.buffer:
            raw.detach()  # our peekable wrapper around stdin: leave stdin itself open


def _open(path: str) -> io.BufferedReader:
    if path == "-":
        stdin = sys.stdin.buffer
        if isinstance(stdin, io.BufferedReader):
            return stdin
        # A replaced stdin (an embedding application, click's CliRunner) may not be able to
        # peek, which gzip and format detection need.
        return io.BufferedReader(stdin)  # type: ignore[arg-type]
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path} is a directory, not a CSV or JSONL file")
    try:
        return p.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None


def _text_encoding(encoding: str) -> str:
    # utf-8-sig reads plain UTF-8 too, and drops the BOM Excel writes at the start.
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _delimiter(path: str, options: SourceOptions) -> str:
    if options.delimiter is not None:
        return options.delimiter
    plain = path[:-3] if path.lower().endswith(".gz") else path
    return "\t" if plain.lower().endswith(".tsv") else ","


def _read_csv(
    path: str, binary: BinaryIO, options: SourceOptions, lines: QuietLines | None = None
) -> Iterator[Chunk]:
    name = input_name(path)
    text = io.TextIOWrapper(binary, encoding=_text_encoding(options.encoding), newline="")
    reader = csv.reader(text if lines is None else lines, delimiter=_delimiter(path, options))
    row_no = 0
    try:
        header = _csv_header(name, reader)
        width = len(header)
        fields_rows: list[list[str]] = []
        rows: list[int] = []
        bad: list[tuple[int, str]] = []
        for fields in reader:
            if lines is not None:
                lines.record_done()
            if not fields:
                if lines is not None and lines.quiet and (rows or bad):
                    yield Chunk(pd.DataFrame(fields_rows, columns=header, dtype="str"), rows, bad)
                    fields_rows, rows, bad = [], [], []
                continue  # a blank line is not a data row
            row_no += 1
            if len(fields) != width:
                # Trailing empty fields (a row ending in a delimiter) carry no data: drop them.
                while len(fields) > width and fields[-1] == "":
                    fields.pop()
            if len(fields) == width:
                fields_rows.append(fields)
                rows.append(row_no)
            else:
                bad.append((row_no, f"row has {len(fields)} fields but the header has {width}"))
            if len(rows) + len(bad) >= options.chunk_size:
                yield Chunk(pd.DataFrame(fields_rows, columns=header, dtype="str"), rows, bad)
                fields_rows, rows, bad = [], [], []
            if options.limit is not None and row_no >= options.limit:
                break
        if rows or bad or row_no == 0:  # a header-only file still shows its columns
            yield Chunk(pd.DataFrame(fields_rows, columns=header, dtype="str"), rows, bad)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{name}: not valid {options.encoding} text near data row {row_no + 1} ({exc.reason});"
            " pass --encoding with the file's encoding, e.g. --encoding cp1252"
        ) from None
    except csv.Error as exc:
        raise InputError(f"{name}: data row {row_no + 1}: {exc}") from None
    finally:
        text.detach()  # the caller owns (and closes) the binary stream, stdin included


def _csv_header(name: str, reader: Iterator[list[str]]) -> list[str]:
    header = next((fields for fields in reader if fields), None)
    if header is None:
        raise InputError(f"{name} is empty: expected a header row naming the columns")
    header = [h.strip() for h in header]
    if any("\x00" in h for h in header):
        raise InputError(
            f"{name}: the header contains NUL bytes; is the file UTF-16? try --encoding utf-16"
        )
    if "" in header:
        raise InputError(f"{name}: header column {header.index('') + 1} has no name")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{name}: duplicate column names in the header: {', '.join(dupes)}")
    return header


def _read_jsonl(
    path: str, binary: BinaryIO, options: SourceOptions, lines: QuietLines | None = None
) -> Iterator[Chunk]:
    name = input_name(path)
    utf8 = codecs.lookup(options.encoding).name == "utf-8"
    objects: list[dict[str, object]] = []
    rows: list[int] = []
    bad: list[tuple[int, str]] = []
    row_no = 0
    first = True
    for raw in binary if lines is None else lines:
        line = raw.strip()
        if first and isinstance(line, bytes):
            line, first = line.removeprefix(UTF8_BOM), False
        if not line:
            if lines is not None and lines.quiet and (rows or bad):
                yield Chunk(_frame(objects), rows, bad)
                objects, rows, bad = [], [], []
            continue  # blank lines are not counted as rows
        row_no += 1
        try:
            obj = orjson.loads(
                line if utf8 or isinstance(line, str) else line.decode(options.encoding)
            )
        except ValueError as exc:  # orjson.JSONDecodeError or UnicodeDecodeError
            bad.append((row_no, f"malformed JSON: {exc}"))
        else:
            if isinstance(obj, dict):
                objects.append(obj)
                rows.append(row_no)
            else:
                bad.append((row_no, f"line is JSON {type(obj).__name__}, not an object"))
        if len(rows) + len(bad) >= options.chunk_size:
            yield Chunk(_frame(objects), rows, bad)
            objects, rows, bad = [], [], []
        if options.limit is not None and row_no >= options.limit:
            break
    if row_no == 0:
        raise InputError(f"{name} is empty: expected one JSON object per line")
    if rows or bad:
        yield Chunk(_frame(objects), rows, bad)


def _frame(objects: list[dict[str, object]]) -> pd.DataFrame:
    # dtype=object keeps JSON types as they are: 42 stays int 42 (never 42.0 because a
    # neighbouring row lacks the key; the missing cell is NaN, which normalize treats as empty),
    # "01234" stays a string.
    return pd.DataFrame(objects, dtype=object)
