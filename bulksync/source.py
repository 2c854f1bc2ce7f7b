"""Read CSV and JSONL input in bounded chunks of rows, each row with its 1-based data row number
and the input line where it starts.

CSV is parsed with the standard library's C `csv` reader rather than `pandas.read_csv`: a ragged
row (more or fewer fields than the header) must become one `invalid` row with its exact row
number, and neither pandas' C engine (which aborts or pads silently) nor pyarrow's streaming reader
(which cannot say where a skipped row was) can report that. Cells stay strings: zip "01234" stays
"01234". Each chunk is then a pandas DataFrame, so normalizing is vectorised.

Memory is bounded by the chunk, never by the size of the input, and a chunk is bounded three
ways: at most `chunk_size` rows, `chunk_cells` cells (rows x columns: a 300-column file gets
chunks of fewer rows than a 10-column one, so both take about the same memory for the same
bytes) and `chunk_chars` characters of input text. A chunk's strings are freed once its
DataFrame is built, before it is normalized. Lines are bounded while they are read (lines.py):
a line or CSV record longer than 4 MiB characters stops the run (a gzip of zeros is refused
after 4 MiB, not after filling memory), and so does a header of more than 10,000 columns.

Standard input, a FIFO (`<(zcat file.gz)`, `/dev/fd/N`) or a character device is read as a
stream: once, as it comes (a quiet pipe sends the rows read so far), its format guessed from its
first byte when its name has no known extension. Such an input cannot be fingerprinted or sized:
`is_stream` says which inputs are streams, for callers that would read a file twice.

JSON integers stay exact (Python ints, in object columns, never float64): a 2^53 + 1 identifier
is sent as written. An integer beyond 64 bits, which orjson would read as a rounded float (and
cannot write), makes its row invalid, naming the key: it must be written as a string.

The reader never guesses silently. What it decides on its own it says on stderr (a warning on the
`bulksync` logger); what it cannot decide stops the run (InputError, exit 2), naming the line:

- **Content before names.** A zip archive (an Excel .xlsx or OpenDocument .ods workbook is one),
  a legacy Excel .xls (OLE2), a Parquet, bzip2, xz or zstd file is recognised by its first bytes,
  whatever its extension or --format, and refused with what to do instead. gzip is read.
- **Encoding.** A byte-order mark decides: UTF-8, UTF-16 or UTF-32 (LE or BE), whatever
  --encoding says (a warning when it said otherwise). Undecodable bytes stop the run with the line
  and the byte, and a suggestion for --encoding.
- **Delimiter.** --delimiter; else a first line `sep=X` (Excel's: the line is skipped, and
  counted); else tab for .tsv; else ','. When ',' reads the header as one column holding ';', tab
  or '|', the one of those that splits the header into the most columns, agreeing with the next
  few lines, is used instead (a warning says which).
- **Header.** Spaces around names are removed (a warning names them). Duplicate names, and an
  unnamed column before a named one, stop the run. Unnamed columns at the end (every line ends with
  a delimiter: `a,b,`) are dropped; a row with a value there is invalid.
- **Line numbers.** Each row carries the physical line where it starts (`Chunk.lines`): the
  header's line counts, as do blank lines, a `sep=` line and every line of a multi-line cell. A
  line ends at LF, CRLF or a lone CR (a pipe read as it trickles: at LF only).
- **Quotes.** Fields are parsed strictly: text after a closing quote (`"He said "hi" there"`), a
  quote still open at the end of the input, or a field longer than csv's limit (131,072
  characters) is a broken quote, never data. A cell that runs over several lines is a legitimate
  multi-line cell unless two or more of the lines it swallowed whole would each be a row of the
  header's width on their own (no quote, as many delimiters as the header, and the header has
  two columns or more): then its opening quote is taken as never closed.
  A broken quote makes the row starting on that line invalid ("line 7: a quoted field is not
  closed; the row is left out"), and reading starts again on the next line, so the rows the quote
  swallowed are read as rows. That re-read is the reader's guess, so it must prove itself: every
  row starting on a line the broken record had swallowed (or on the next line, when the broken
  line's quotes are unbalanced) must have the header's width and balanced quotes. If one does not,
  the damage cannot be bounded and the run stops, naming the line of the broken quote.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import itertools
import json
import logging
import os
import re
import stat
import sys
import zipfile
import zlib
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, get_args

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from .defaults import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE
from .errors import InputError, UsageError
from .lines import MAX_LINE, BoundedLines, ByteLines, LineTooLong, QuietLines, TextLines, is_pipe

Format = Literal["csv", "jsonl"]

# Cells (rows x columns) in a chunk: a chunk's memory goes with its cells (a string object per
# cell, then an object per converted cell, then each row's payload dict), not with its rows.
# 20,000 rows of 25 columns; 1,666 rows of 300. Measured in `make bench` (section memory).
DEFAULT_CHUNK_CELLS = 500_000
# Characters of input text in a chunk: long cells (notes, JSON) bound it before cells do.
DEFAULT_CHUNK_CHARS = 16 * 1024 * 1024
MAX_COLUMNS = 10_000  # Customer.io takes 300 attributes per person: more is not an export
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = codecs.BOM_UTF8
_EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}

logger = logging.getLogger("bulksync")


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
    # The input line (1-based, the header's line counted) where each row starts, good or bad;
    # empty when the reader cannot tell. A row's line differs from its number after blank
    # lines, multi-line cells, and the header.
    lines: dict[int, int] = field(default_factory=dict)

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
    chunk_cells: int = DEFAULT_CHUNK_CELLS
    chunk_chars: int = DEFAULT_CHUNK_CHARS

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in get_args(Format):
            raise UsageError(f"format {self.format!r}: must be csv or jsonl")
        if self.chunk_size < 1:
            raise UsageError(f"chunk size {self.chunk_size!r}: must be >= 1")
        if self.chunk_cells < 1:
            raise UsageError(f"chunk cells {self.chunk_cells!r}: must be >= 1")
        if self.chunk_chars < 1:
            raise UsageError(f"chunk characters {self.chunk_chars!r}: must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"limit {self.limit!r}: must be >= 1")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise UsageError(f"delimiter {self.delimiter!r}: must be a single character")


def input_name(path: str) -> str:
    return "standard input" if path == "-" else path


def is_stream(path: str) -> bool:
    """Standard input, or a path that is not a regular file (a FIFO, `<(...)`'s /dev/fd/N, a
    character device): it can be read only once, as it comes, and has no size or fingerprint."""
    if path == "-":
        return True
    try:
        mode = os.stat(path).st_mode  # follows /dev/fd/N to the pipe; never opens (or blocks)
    except (OSError, ValueError):
        return False  # missing or unreadable: the reader says so
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def detect_format(path: str, head: bytes, *, stream: bool = False) -> Format:
    """The format named by the extension (`.gz` aside); for stdin, or a stream (`stream`) whose
    name has no known extension, guessed from the first byte."""
    suffixes = [s.lower() for s in Path(path).suffixes] if path != "-" else []
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    fmt = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if fmt is None and (path == "-" or stream):
        return "jsonl" if head.lstrip(UTF8_BOM + b" \t\r\n").startswith(b"{") else "csv"
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of {path} from its extension:"
            " pass --format csv or --format jsonl"
        )
    return fmt


def read_chunks(
    path: str,
    options: SourceOptions | None = None,
    *,
    column: str | None = None,
    warn: bool = True,
) -> Generator[Chunk, None, None]:
    """Yield the input's rows in chunks of at most `options.chunk_size` rows, `chunk_cells`
    cells and about `chunk_chars` characters of input (see the module docstring).

    `column`: a CSV's chunks hold that column alone (when the header has it), for a caller
    that reads the file once more for one column: the same rows, as valid or invalid and
    numbered as when every column is read, without making the others' values. `warn=False`:
    what the reader decides on its own is not said again (a file read once more, after a read
    that said it)."""
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
        head = binary.peek(64)
        _refuse_other_files(path, head, gzipped=binary is not raw)
        say = logger.warning if warn else _unsaid
        encoding = _encoding(input_name(path), head, options.encoding, say)
        if encoding.startswith("utf-16") or encoding.startswith("utf-32"):
            # Format detection looks for '{': in the decoded text, not in the bytes.
            head = head.decode(encoding, errors="ignore").encode()
        stream = is_pipe(raw)  # stdin, a FIFO, /dev/fd/N, a terminal: not a regular file
        fmt = options.format or detect_format(path, head, stream=stream)
        lines = None
        if binary is raw and stream:
            # A pipe may trickle: read it so that a quiet spell sends the rows held so far.
            pending = raw.read1(len(raw.peek(1)))  # what peeking already buffered
            lines = QuietLines(raw.fileno(), encoding, pending, csv_quotes=fmt == "csv")
        if fmt == "csv":
            yield from _CsvReader(path, binary, options, encoding, lines, column, say).chunks()
        else:
            yield from _read_jsonl(path, binary, options, encoding, lines)
    except LineTooLong as exc:  # the readers say which line; this is the last resort
        raise InputError(_too_long(input_name(path), exc)) from None
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


# --- what the file is: recognised by its first bytes ------------------------------------------

_SAVE_AS_CSV = "File > Save As > 'CSV UTF-8 (Comma delimited) (*.csv)', one file per sheet"
# (magic, what it is, what to do); {path} is the input's path.
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an Excel 97-2003 workbook (.xls) or another Microsoft Office file",
        f"open it in Excel and use {_SAVE_AS_CSV}, then sync that file",
    ),
    (b"BZh", "compressed with bzip2", "decompress it first: bunzip2 -k {path}"),
    (b"\xfd7zXZ\x00", "compressed with xz", "decompress it first: unxz -k {path}"),
    (b"\x28\xb5\x2f\xfd", "compressed with zstd", "decompress it first: unzstd {path}"),
)


def _refuse_other_files(path: str, head: bytes, *, gzipped: bool) -> None:
    """Raise InputError, saying what to do, when the input is a workbook, an archive or another
    binary format: read as text it would give mojibake and encoding hints, never the rows."""
    name = input_name(path)
    shown = "-" if path == "-" else path
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise InputError(_zip_advice(name, path, shown, can_open=path != "-" and not gzipped))
    if head.startswith(b"PAR1") and len(head) > 4 and not 0x20 <= head[4] < 0x7F:
        raise InputError(
            f"{name} is a Parquet file, not CSV or JSONL: export it as JSONL first, e.g. with"
            f' pandas: pd.read_parquet("{shown}").to_json("out.jsonl", orient="records",'
            " lines=True), then sync out.jsonl"
        )
    for magic, what, todo in _MAGIC:
        # bzip2's "BZh" is text: the block size digit after it must be there too.
        if head.startswith(magic) and (magic != b"BZh" or head[3:4].isdigit()):
            raise InputError(f"{name} is {what}, not CSV or JSONL: {todo.format(path=shown)}")


def _zip_advice(name: str, path: str, shown: str, *, can_open: bool) -> str:
    members: list[str] = []
    if can_open:
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.namelist()
                mimetype = archive.read("mimetype") if "mimetype" in members else b""
        except (OSError, zipfile.BadZipFile, KeyError):
            members, mimetype = [], b""
        if any(m.startswith("xl/") for m in members):
            return (
                f"{name} is an Excel workbook (.xlsx), not a CSV file: open it in Excel and use"
                f" {_SAVE_AS_CSV}, then sync that file"
            )
        if mimetype.startswith(b"application/vnd.oasis.opendocument.spreadsheet"):
            return (
                f"{name} is an OpenDocument spreadsheet (.ods), not a CSV file: in LibreOffice"
                " Calc use File > Save As > 'Text CSV (.csv)' with the UTF-8 character set,"
                " then sync that file"
            )
    data = [m for m in members if m.lower().endswith((".csv", ".tsv", ".jsonl", ".ndjson"))]
    if data:
        listed = ", ".join(data[:3]) + (f" and {len(data) - 3} more" if len(data) > 3 else "")
        return (
            f"{name} is a zip archive holding {listed}: extract it (unzip {shown}) and sync each"
            f" file, or stream one: unzip -p {shown} {data[0]} | bulksync sync -"
        )
    return (
        f"{name} is a zip archive (an Excel .xlsx workbook is one), not CSV or JSONL: for a"
        f" workbook, open it in Excel and use {_SAVE_AS_CSV}; for an archive, extract it first"
    )


# --- encoding ----------------------------------------------------------------------------------

# Longest first: UTF-32 LE's byte-order mark starts with UTF-16 LE's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32 (little-endian)"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32 (big-endian)"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16 (little-endian)"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16 (big-endian)"),
)


def _unsaid(*_: object) -> None:
    """A warning not said (read_chunks(warn=False))."""


def _encoding(name: str, head: bytes, given: str, say: Callable[..., None] = logger.warning) -> str:
    """The codec to decode with: the one a byte-order mark names (the codec drops the mark),
    else `given`. A mark that overrides `given` is said with `say`."""
    given_name = codecs.lookup(given).name
    for bom, codec, label in _BOMS:
        if head.startswith(bom):
            if not given_name.startswith(codec.removesuffix("-sig")):
                say(
                    "%s starts with a %s byte-order mark: reading it as %s, not %s",
                    name,
                    label,
                    label,
                    given,
                )
            return codec
    # utf-8-sig reads plain UTF-8 too.
    return "utf-8-sig" if given_name == "utf-8" else given


def _line_ends(text: str) -> int:
    """Line ends in `text`: LF, CRLF or a lone CR, as the readers count lines."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _too_long(name: str, exc: LineTooLong) -> str:
    if exc.record:
        return (
            f"{name}: line {exc.line}: a row running over several lines is longer than"
            f" {exc.limit:,} characters; is a quote not closed? (inside quotes, a quote is"
            ' written twice: "")'
        )
    where = f"line {exc.line}" if exc.line is not None else "a line"
    return (
        f"{name}: {where} is longer than {exc.limit:,} characters, more than any row"
        " Customer.io takes: is the file damaged, or not CSV or JSONL text?"
    )


def _undecodable(name: str, given: str, exc: UnicodeDecodeError, lines_before: int) -> str:
    """The message for bytes `given` cannot decode, naming their line. `lines_before`: the lines
    already handed to the parser; the decoder decodes a block at a time, so the bad byte is on
    that many lines plus those the block holds before it."""
    before = bytes(exc.object[: exc.start])
    try:  # UTF-16 or UTF-32: count the line ends of the text, not the bytes 0x0a and 0x0d
        text = before.decode(exc.encoding) if exc.encoding.startswith("utf-") else None
    except (UnicodeDecodeError, LookupError):
        text = None
    line = lines_before + 1 + _line_ends(before.decode("latin-1") if text is None else text)
    bad = " ".join(f"0x{b:02x}" for b in exc.object[exc.start : min(exc.end, exc.start + 4)])
    family = exc.encoding[:6]  # "utf-16" or "utf-32" when a byte-order mark chose the codec
    if family in ("utf-16", "utf-32") and not codecs.lookup(given).name.startswith(family):
        return (
            f"{name}: line {line}: not valid {family.upper()} text (byte {bad}), though the"
            f" file starts with a {family.upper()} byte-order mark: is the file damaged?"
        )
    return (
        f"{name}: line {line}: not valid {given} text (byte {bad}); pass --encoding with the"
        " file's encoding, e.g. --encoding cp1252 (Excel on Windows) or --encoding latin-1"
    )


# --- CSV ---------------------------------------------------------------------------------------

_CANDIDATES = (";", "\t", "|")  # delimiters tried when ',' reads the header as one column
_SNIFF_LINES = 5  # lines after the header that a detected delimiter must agree with
_SEP_LINE = re.compile(r'"?sep=(.)"?\r?\n?', re.IGNORECASE)


def _shown(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


def _without_trailing_empties(fields: list[str], width: int) -> list[str]:
    # Trailing empty fields (a row ending in a delimiter) carry no data: drop them.
    while len(fields) > width and fields[-1] == "":
        fields.pop()
    return fields


class _Feed:
    """The input's lines for the csv reader, keeping the lines of the record being read.

    The csv reader pulls one line at a time and stops at the end of a record, so after each
    record `held` holds exactly that record's lines: counting them gives each row's line, and a
    record that swallowed rows (a quote never closed) can be read again from its second line.
    Lines to read again wait in `replay`, which every reader made by `lines` empties first.
    A record whose lines add up to more than `limit` characters raises LineTooLong (record=True,
    line None: the reader knows where the record started).
    """

    def __init__(
        self, source: Iterator[str], quiet: QuietLines | None, limit: int = MAX_LINE
    ) -> None:
        self.source = source
        self.quiet = quiet
        self.limit = limit
        self.held: list[str] = []
        self.replay: deque[str] = deque()

    def read_again(self, lines: Sequence[str]) -> None:
        """`lines` come next, before any line not yet read again (a reader given up on may
        have left some in `replay`)."""
        self.replay.extendleft(reversed(lines))

    def lines(self) -> Iterator[str]:
        held, replay, quiet, limit = self.held, self.replay, self.quiet, self.limit
        chars = 0  # in the record being read: the reader empties `held` after each record
        while replay:
            line = replay.popleft()
            if quiet is not None:
                quiet.replayed(line)  # it tracks open quotes to know when it may signal quiet
            chars = chars + len(line) if held else len(line)
            held.append(line)
            if chars > limit:
                raise LineTooLong(limit, None, record=True)
            yield line
        for line in self.source:
            chars = chars + len(line) if held else len(line)
            held.append(line)
            if chars > limit:
                raise LineTooLong(limit, None, record=True)
            yield line

    def peek(self, n: int) -> list[str]:
        """Up to `n` lines from the source (fewer at its end, or when a pipe goes quiet), to be
        handed back with `read_again`."""
        got: list[str] = []
        for line in itertools.islice(self.source, n):
            if self.quiet is not None and self.quiet.quiet:
                break  # nothing more for now: decide on what arrived
            got.append(line)
        if self.quiet is not None:
            self.quiet.record_done()  # the lines are handed out again, and counted again, later
        return got


@dataclass
class _Broken:
    """A record whose quoting broke: the row is invalid, and the lines after its first are read
    again, rows starting up to `check_until` having to prove themselves."""

    reason: str
    check_until: int


class _Pending:
    """The rows read for the next chunk, and when it is full."""

    def __init__(
        self, header: list[str], max_rows: int, max_chars: int, column: str | None = None
    ) -> None:
        self.header, self.max_rows, self.max_chars = header, max_rows, max_chars
        # The one column the chunks hold (read_chunks), else None: all of them.
        self.column = column if column in header else None
        self._reset()

    def _reset(self) -> None:
        self.cells: list[list[str]] = []
        # Blocks of rows parsed whole by pyarrow (_arrow_rows), in order; `cells` follow them.
        self.tables: list[pa.Table] = []
        self.rows: list[int] = []
        self.bad: list[tuple[int, str]] = []
        self.lines: dict[int, int] = {}
        self.chars = 0

    def __len__(self) -> int:
        return len(self.rows) + len(self.bad)

    def full(self) -> bool:
        return len(self) >= self.max_rows or self.chars >= self.max_chars

    def add_table(self, table: pa.Table) -> None:
        """Rows parsed by pyarrow, after those added so far."""
        self._cells_to_table()
        self.tables.append(table)

    def _cells_to_table(self) -> None:
        if self.cells:
            if self.column is not None:
                at = self.header.index(self.column)
                cells = pa.array([fields[at] for fields in self.cells], pa.string())
                self.tables.append(pa.table([cells], names=[self.column]))
            else:
                columns = [pa.array(c, pa.string()) for c in zip(*self.cells, strict=True)]
                self.tables.append(pa.table(columns, names=self.header))
            self.cells = []

    def chunk(self) -> Chunk:
        """The rows so far as a Chunk; the next chunk starts empty."""
        if self.tables or self.column is not None:
            self._cells_to_table()
            # No row, one column (the tables are the rows').
            tables = self.tables or [pa.table({self.column: pa.array([], pa.string())})]
            # The same frame as from the cells: pandas' "str" columns hold arrow strings.
            frame = pa.concat_tables(tables).combine_chunks().to_pandas()
        else:
            frame = pd.DataFrame(self.cells, columns=self.header, dtype="str")
        # The frame holds the values now: free the strings (an object per cell, several times
        # the text) before the chunk is normalized, rather than when the next one starts.
        chunk = Chunk(frame, self.rows, self.bad, self.lines)
        self._reset()
        return chunk


class _CsvReader:
    def __init__(
        self,
        path: str,
        binary: BinaryIO,
        options: SourceOptions,
        encoding: str,
        quiet: QuietLines | None,
        column: str | None = None,
        say: Callable[..., None] = logger.warning,
    ) -> None:
        self.name = input_name(path)
        self.column = column
        self.say = say  # what the reader decides on its own (read_chunks' `warn`)
        self.path = path
        self.binary = binary
        self.options = options
        self.encoding = encoding
        self.quiet = quiet

    def chunks(self) -> Iterator[Chunk]:
        # A file's lines come in blocks (TextLines.batch), read as io.TextIOWrapper would read
        # them; a pipe's as they arrive. The caller owns (and closes) the binary stream.
        source: TextLines | QuietLines
        source = TextLines(self.binary, self.encoding) if self.quiet is None else self.quiet
        self.source = source  # its count: the lines handed out, to place a decoding error
        self.feed = _Feed(source, self.quiet)
        yield from self._chunks()

    def _reader(self) -> Iterator[list[str]]:
        # strict: a quote followed by text, or still open at the end, raises instead of
        # being glued into the value (see the module docstring).
        return csv.reader(self.feed.lines(), delimiter=self.delimiter, strict=True)

    def _chunks(self) -> Iterator[Chunk]:
        name, feed, quiet, options = self.name, self.feed, self.quiet, self.options
        held = feed.held
        line_no = 0  # the lines read, up to the end of the last record read
        try:
            self.delimiter, peeked, line_no = self._dialect()
            feed.read_again(peeked)
            reader = self._reader()
            header, unnamed, line_no = self._read_header(reader, line_no)
        except UnicodeDecodeError as exc:
            lines_before = self.source.count
            raise InputError(_undecodable(name, options.encoding, exc, lines_before)) from None
        except LineTooLong as exc:
            if exc.line is None:
                exc.line = line_no + 1
            raise InputError(_too_long(name, exc)) from None
        width = len(header)
        row_no = 0
        # Rows read again after a broken quote, up to line check_until, must prove themselves.
        self.check_until = self.broken_at = 0
        limit = options.limit
        # A chunk ends at chunk_size rows, at chunk_cells cells, or past chunk_chars characters.
        pending = _Pending(
            header,
            min(options.chunk_size, max(1, options.chunk_cells // width)),
            options.chunk_chars,
            self.column,
        )
        done = False
        # A file (not a pipe) is read in blocks of lines by _block while nothing is unusual;
        # the careful reader below takes over from a record _block leaves (a broken quote, a
        # record running past the block) until the lines it was handed back are read.
        blocks = self.source if isinstance(self.source, TextLines) else None
        careful = blocks is None
        self._whole = True
        while not done:
            if not careful:
                assert blocks is not None
                try:
                    batch = list(feed.replay) if feed.replay else blocks.batch()
                except UnicodeDecodeError as exc:
                    lines_before = self.source.count
                    raise InputError(
                        _undecodable(name, options.encoding, exc, lines_before)
                    ) from None
                except LineTooLong as exc:
                    raise InputError(_too_long(name, exc)) from None
                feed.replay.clear()
                if not batch:
                    break
                used, row_no, line_no, done = yield from self._block(
                    batch, pending, row_no, line_no, width, unnamed
                )
                if used < len(batch) and not done:
                    feed.read_again(batch[used:])
                    reader = self._reader()
                    careful = True
                continue
            # The loop over one reader; a broken quote raises csv.Error out of it, or the
            # row's check replaces the reader: the next one reads the swallowed lines again.
            try:
                for fields in reader:
                    if quiet is not None:
                        quiet.record_done()
                    n = len(held)
                    start = line_no + 1
                    if not fields:  # a blank line is not a data row
                        held.clear()
                        if quiet is None or not quiet.quiet:
                            line_no += n
                        elif pending:  # not a line: the pipe went quiet
                            yield pending.chunk()
                        continue
                    row_no += 1
                    pending.lines[row_no] = start
                    pending.chars += len(held[0]) if n == 1 else sum(map(len, held))
                    broken = None
                    if n > 1 or start <= self.check_until:  # rare: the common row is one line
                        if n > 1:
                            broken = self._swallowed(fields, width, start)
                        if start <= self.check_until and (
                            broken is not None or not self._sound(fields, width)
                        ):
                            raise InputError(self._unbounded(self.broken_at, start))
                    if broken is None:
                        line_no += n
                        held.clear()
                        self._add(pending, row_no, fields, width, unnamed)
                    else:
                        line_no, reader = self._left_out(pending, row_no, broken, start)
                    if pending.full():
                        yield pending.chunk()
                    if limit is not None and row_no >= limit:
                        done = True
                        break
                    if broken is not None:
                        break  # on with the new reader
                    if blocks is not None and not feed.replay and line_no >= self.check_until:
                        careful = False  # nothing unusual left: back to reading blocks
                        break
                else:
                    done = True
            except csv.Error as exc:
                if quiet is not None:
                    quiet.record_done()
                start = line_no + 1  # the record the reader gave up on started there
                row_no += 1
                pending.lines[row_no] = start
                if start <= self.check_until:
                    raise InputError(self._unbounded(self.broken_at, start)) from None
                broken = self._strict_error(exc, start)
                line_no, reader = self._left_out(pending, row_no, broken, start)
                if pending.full():
                    yield pending.chunk()
                done = limit is not None and row_no >= limit
            except UnicodeDecodeError as exc:
                lines_before = self.source.count
                raise InputError(_undecodable(name, options.encoding, exc, lines_before)) from None
            except LineTooLong as exc:
                if exc.line is None:  # a record over several lines: where it started
                    exc.line = line_no + 1
                raise InputError(_too_long(name, exc)) from None
        if pending or row_no == 0:  # a header-only file still shows its columns
            yield pending.chunk()

    def _block(
        self,
        batch: list[str],
        pending: _Pending,
        row_no: int,
        line_no: int,
        width: int,
        unnamed: int,
    ) -> Generator[Chunk, None, tuple[int, int, int, bool]]:
        """The rows of `batch` (lines read from a file, the first starting a record, no row to
        prove itself), as the careful loop in _chunks would read them, yielding the chunks
        they fill. Stops before a record it leaves to that loop: one whose quote breaks, one
        that runs past the batch or over `limit` characters, one that swallowed rows.
        Returns (the lines read, row_no, line_no, done: the row limit is reached)."""
        limit = self.options.limit
        delimiter = self.delimiter
        records: Iterator[list[str]] | None = None  # the batch's records, one per line
        table = _arrow_rows(batch, pending.header, delimiter, pending.column)
        if table is not None:
            return (yield from self._whole_rows(batch, table, pending, row_no, line_no))
        if self._whole:  # the last batch had one record per line: this one likely has too
            rows: list[list[str]] = []
            try:
                rows.extend(csv.reader(batch, delimiter=delimiter, strict=True))
            except csv.Error:
                self._whole = False
            else:
                self._whole = len(rows) == len(batch)
            if self._whole:
                if min(map(len, rows)) == max(map(len, rows)) == width:
                    # The common batch: every row as wide as the header, taken in slices as
                    # the chunks' bounds allow.
                    return (yield from self._whole_rows(batch, rows, pending, row_no, line_no))
                records = iter(rows)  # blank lines, or rows of another width among them
        reader = None
        if records is None:  # read again, to learn the lines of each record
            reader = csv.reader(batch, delimiter=delimiter, strict=True)
            records = reader
        held, max_record = self.feed.held, self.feed.limit
        used = 0  # the lines of the records read
        whole = True  # one line per record so far
        try:
            for fields in records:
                n = 1 if reader is None else reader.line_num - used
                start = line_no + 1
                if not fields:  # a blank line is not a data row
                    used += n
                    line_no += n
                    continue
                if n == 1:
                    chars = len(batch[used])
                else:
                    whole = False
                    record = batch[used : used + n]
                    chars = sum(map(len, record))
                    if chars > max_record:
                        break  # the careful loop raises LineTooLong for it
                    held.extend(record)
                    broken = self._swallowed(fields, width, start)
                    held.clear()
                    if broken is not None:
                        break  # the careful loop leaves it out, and reads on after it
                row_no += 1
                pending.lines[row_no] = start
                pending.chars += chars
                line_no += n
                used += n
                self._add(pending, row_no, fields, width, unnamed)
                if pending.full():
                    yield pending.chunk()
                if limit is not None and row_no >= limit:
                    return used, row_no, line_no, True
        except csv.Error:
            whole = False  # the record from line `used` on: the careful loop reads it again
        self._whole = whole
        return used, row_no, line_no, False

    def _whole_rows(
        self,
        batch: list[str],
        rows: list[list[str]] | pa.Table,
        pending: _Pending,
        row_no: int,
        line_no: int,
    ) -> Generator[Chunk, None, tuple[int, int, int, bool]]:
        """`rows` (row i read from line i of `batch`, each as wide as the header) into the
        pending chunk, cut where the row-by-row loop would cut it."""
        limit = self.options.limit
        i, n = 0, len(rows)
        while i < n:
            take = min(n - i, pending.max_rows - len(pending))
            if limit is not None:
                take = min(take, limit - row_no)
            lines = batch[i : i + take]
            chars = sum(map(len, lines))
            if pending.chars + chars >= pending.max_chars:
                # The chunk is full at the first row that brings it to max_chars characters.
                sums = list(itertools.accumulate(map(len, lines), initial=pending.chars))
                take = bisect_left(sums, pending.max_chars)
                chars = sums[take] - pending.chars
            numbers = range(row_no + 1, row_no + take + 1)
            if isinstance(rows, pa.Table):
                pending.add_table(rows.slice(i, take))
            else:
                pending.cells.extend(rows[i : i + take])
            pending.rows.extend(numbers)
            pending.lines.update(zip(numbers, range(line_no + 1, line_no + take + 1), strict=True))
            pending.chars += chars
            row_no += take
            line_no += take
            i += take
            if pending.full():
                yield pending.chunk()
            if limit is not None and row_no >= limit:
                return i, row_no, line_no, True
        return i, row_no, line_no, False

    def _add(
        self, pending: _Pending, row_no: int, fields: list[str], width: int, unnamed: int
    ) -> None:
        """Row `row_no`'s fields to the pending chunk, or the row as invalid when, without its
        trailing empty fields, it is not as wide as the header."""
        if len(fields) != width:
            _without_trailing_empties(fields, width)
        if len(fields) == width:
            pending.cells.append(fields)
            pending.rows.append(row_no)
        else:
            pending.bad.append((row_no, self._ragged(len(fields), width, unnamed)))

    def _left_out(
        self, pending: _Pending, row_no: int, broken: _Broken, start: int
    ) -> tuple[int, Iterator[list[str]]]:
        """A row with a broken quote is left out (invalid); reading starts again on the line
        after its start, and the rows read again up to `broken.check_until` must prove
        themselves. Returns the lines read so far and the new reader."""
        pending.bad.append((row_no, broken.reason))
        if broken.check_until > self.check_until:
            self.check_until, self.broken_at = broken.check_until, start
        return self._read_again(start)

    def _read_header(self, reader: Iterator[list[str]], line_no: int) -> tuple[list[str], int, int]:
        """(the column names, how many unnamed columns end the header, the header's last line)."""
        held, quiet = self.feed.held, self.quiet
        while True:
            try:
                fields = next(reader, None)
            except csv.Error as exc:
                raise InputError(
                    f"{self.name}: line {line_no + 1}: the header {_quote_problem(exc)}"
                ) from None
            if fields is None:
                raise InputError(f"{self.name} is empty: expected a header row naming the columns")
            if quiet is not None:
                quiet.record_done()
            start = line_no + 1
            if not (quiet is not None and quiet.quiet):
                line_no += len(held)
            held.clear()
            if fields:
                header, unnamed = self._header(fields, start)
                return header, unnamed, line_no

    def _read_again(self, start: int) -> tuple[int, Iterator[list[str]]]:
        """After a broken record that started on line `start`: the row is that line alone, and
        a new reader reads the lines after it again. Returns (lines done, the new reader)."""
        held = self.feed.held
        self.feed.read_again(held[1:])
        held.clear()
        return start, self._reader()

    def _unbounded(self, broken_at: int, start: int) -> str:
        return (
            f"{self.name}: line {broken_at}: a quoted field is not closed, or a quote in it is"
            f" not doubled, and the lines after it do not read as rows (line {start} does"
            f" not): fix the quotes on line {broken_at} (inside quotes, a quote is written"
            ' twice: "")'
        )

    # --- delimiter ---

    def _dialect(self) -> tuple[str, list[str], int]:
        """(the delimiter, the lines read to choose it, to be read again as usual, the lines
        skipped: 1 after a `sep=` line)."""
        feed, options = self.feed, self.options
        peeked = feed.peek(1)
        sep = _SEP_LINE.fullmatch(peeked[0]) if peeked else None
        if sep is not None:
            peeked = []
            declared = sep.group(1)
            if options.delimiter is not None and options.delimiter != declared:
                self.say(
                    "%s: line 1 is Excel's 'sep=%s' line: skipped; the delimiter is %s, as"
                    " --delimiter says",
                    self.name,
                    declared,
                    _shown(options.delimiter),
                )
                return options.delimiter, peeked, 1
            self.say(
                "%s: line 1 is Excel's 'sep=%s' line: skipped, and %s read as the delimiter",
                self.name,
                declared,
                _shown(declared),
            )
            return declared, peeked, 1
        if options.delimiter is not None:
            return options.delimiter, peeked, 0
        plain = self.path[:-3] if self.path.lower().endswith(".gz") else self.path
        if plain.lower().endswith(".tsv"):
            return "\t", peeked, 0
        while peeked and not peeked[-1].strip():  # blank lines before the header
            more = feed.peek(1)
            if not more:
                break
            peeked += more
        header_line = peeked[-1] if peeked else ""
        if header_line.count('"') % 2:  # a header cell with a line break: too odd to guess on
            return ",", peeked, 0
        if len(next(csv.reader([header_line]), [])) != 1:
            return ",", peeked, 0
        candidates = [c for c in _CANDIDATES if c in header_line]
        if not candidates:
            return ",", peeked, 0
        peeked += feed.peek(_SNIFF_LINES)
        scores = {c: _fit(c, peeked) for c in candidates}
        best = max(candidates, key=lambda c: scores[c])
        if scores[best][1] < 2:
            return ",", peeked, 0
        self.say(
            "%s: detected %s as the delimiter (the header has no ','); pass --delimiter to choose",
            self.name,
            _shown(best),
        )
        return best, peeked, 0

    # --- header ---

    def _header(self, fields: list[str], line: int) -> tuple[list[str], int]:
        """The column names, and how many unnamed columns end the header (dropped)."""
        name = self.name
        header = [h.strip() for h in fields]
        if any("\x00" in h for h in header):
            raise InputError(
                f"{name}: the header contains NUL bytes; is the file UTF-16? try --encoding utf-16"
            )
        unnamed = 0
        while len(header) > 1 and header[-1] == "":
            header.pop()
            unnamed += 1
        if len(header) > MAX_COLUMNS:
            raise InputError(
                f"{name}: line {line}: the header has {len(header):,} columns; bulksync reads"
                f" at most {MAX_COLUMNS:,} (Customer.io takes at most 300 attributes per"
                " person): remove the columns not to send, or is the delimiter wrong?"
            )
        if "" in header:
            raise InputError(
                f"{name}: line {line}: header column {header.index('') + 1} has no name"
            )
        dupes = sorted(h for h, count in Counter(header).items() if count > 1)
        if dupes:
            raise InputError(
                f"{name}: line {line}: duplicate column names in the header: {', '.join(dupes)}"
            )
        spaced = [f for f in fields if f and f != f.strip()]
        if spaced:
            listed = ", ".join(f"{f!r} as {f.strip()!r}" for f in spaced[:3])
            more = f" and {len(spaced) - 3} more" if len(spaced) > 3 else ""
            self.say("%s: spaces around column names are removed: %s%s", name, listed, more)
        if unnamed:
            self.say(
                "%s: the header ends with %s: %d unnamed column(s) ignored; a row with a value"
                " there is invalid",
                name,
                _shown(self.delimiter),
                unnamed,
            )
        return header, unnamed

    # --- rows ---

    @staticmethod
    def _ragged(count: int, width: int, unnamed: int) -> str:
        if width < count <= width + unnamed:
            return f"a value in column {count}, which the header leaves unnamed"
        return f"row has {count} fields but the header has {width}"

    def _sound(self, fields: list[str], width: int) -> bool:
        """A row read again after a broken quote: does it look like a row of its own?"""
        if len(fields) != width:
            _without_trailing_empties(fields, width)
        return len(fields) == width and sum(line.count('"') for line in self.feed.held) % 2 == 0

    def _strict_error(self, error: csv.Error, start: int) -> _Broken:
        held = self.feed.held
        end = start + len(held) - 1
        message = str(error)
        if "expected after" in message and end == start:
            reason = (
                f"line {start}: a quoted field has text after its closing quote (inside quotes,"
                ' a quote is written twice: ""); the row is left out'
            )
        elif "expected after" in message or "unexpected end of data" in message:
            reason = f"line {start}: a quoted field is not closed; the row is left out"
        elif "field limit" in message:
            reason = (
                f"line {start}: a field is longer than {csv.field_size_limit():,} characters"
                " (a quoted field not closed?); the row is left out"
            )
        else:  # not a quote: say what the csv module says
            raise InputError(f"{self.name}: line {start}: {message}")
        # The rows the quote swallowed, and the line after it when this line's quotes are
        # unbalanced (it may have been a cell's first line), must read as rows.
        unbalanced = held[0].count('"') % 2 == 1
        return _Broken(reason, max(end, start + 1 if unbalanced else start))

    def _swallowed(self, fields: list[str], width: int, start: int) -> _Broken | None:
        """A record over several lines: a multi-line cell, or a quote that swallowed rows?"""
        held = self.feed.held
        whole = [line for line in held[1:-1] if line.strip("\r\n")]
        looks_like_rows = (
            width >= 2
            and len(whole) >= 2
            and all(
                '"' not in line and _width(line, self.delimiter, width) == width for line in whole
            )
        )
        if not looks_like_rows:
            return None  # a multi-line cell (in a ragged row, the row is invalid as such)
        reason = f"line {start}: a quoted field is not closed; the row is left out"
        return _Broken(reason, start + len(held) - 1)


def _arrow_rows(
    batch: list[str], header: list[str], delimiter: str, column: str | None = None
) -> pa.Table | None:
    """The rows of `batch` parsed by pyarrow (several times faster than the csv module), when
    that is sure to give what the csv module gives: every line a row as wide as the header,
    no quote anywhere (so no multi-line cell, no quoting to judge strictly), no blank line, no
    field past csv's size limit. None otherwise: the csv module reads the batch. `column`:
    only that column's values are made (every row's width is checked all the same)."""
    text = "".join(batch)
    field_limit = csv.field_size_limit()
    if (
        '"' in text
        or text.startswith("\ufeff")  # pyarrow would drop a byte-order mark starting its text
        or not (delimiter.isascii() and delimiter not in "\r\n")
        or (len(text) > field_limit and max(map(len, batch)) > field_limit)
    ):
        return None
    try:
        table = pa_csv.read_csv(
            io.BytesIO(text.encode()),
            read_options=pa_csv.ReadOptions(
                column_names=header, block_size=max(1 << 20, 2 * len(text)), use_threads=False
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter, quote_char=False, newlines_in_values=False
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                include_columns=[] if column is None else [column],
                strings_can_be_null=False,
                null_values=[],
            ),
        )
    except (pa.ArrowInvalid, UnicodeEncodeError):  # a row of another width
        return None
    # pyarrow skips blank lines, which count as lines here: then the rows' lines are unknown.
    return table if table.num_rows == len(batch) else None


def _width(line: str, delimiter: str, width: int) -> int:
    """The fields of a line without quotes, trailing empty ones beyond `width` not counted."""
    return len(_without_trailing_empties(line.rstrip("\r\n").split(delimiter), width))


def _fit(delimiter: str, lines: list[str]) -> tuple[bool, int]:
    """How well `delimiter` reads `lines` (a header and the next few): (every complete row has
    the header's width, the header's width)."""
    records: list[list[str]] = []
    with contextlib.suppress(csv.Error):  # an odd line among the few: judged on the others
        records.extend(r for r in csv.reader(lines, delimiter=delimiter) if r)
    if not records:
        return False, 0
    width = len(records[0])
    # The last line may end inside a multi-line cell: only rows before it are complete.
    complete = records[1:-1] if lines and lines[-1].count('"') % 2 else records[1:]
    agree = all(len(_without_trailing_empties(r, width)) == width for r in complete)
    return agree, width


def _quote_problem(error: csv.Error) -> str:
    message = str(error)
    if "expected after" in message or "unexpected end of data" in message:
        return 'has a quoted field that is not closed, or a quote in it that is not doubled ("")'
    return f"cannot be read: {message}"


# --- JSONL -------------------------------------------------------------------------------------


# orjson reads an integer beyond 64 bits as a float (rounded): a float this large may be one.
_HUGE = float(2**63)


def _read_jsonl(
    path: str,
    binary: BinaryIO,
    options: SourceOptions,
    encoding: str,
    lines: QuietLines | None = None,
) -> Iterator[Chunk]:
    name = input_name(path)
    codec = codecs.lookup(encoding).name
    utf8 = codec in ("utf-8", "utf-8-sig")
    text = None
    source: Iterator[bytes] | Iterator[str] | ByteLines
    if lines is not None:
        source = lines
    elif not utf8 and "\n".encode(encoding) != b"\n":
        # UTF-16 or UTF-32: lines cannot be split on the byte b"\n"; split the decoded text,
        # on LF only as for bytes.
        text = io.TextIOWrapper(binary, encoding=encoding, newline="\n")
        source = BoundedLines(text.readline)
    else:
        source = ByteLines(binary)  # read in blocks, parsed many lines at a time
    objects: list[dict[str, object]] = []
    rows: list[int] = []
    bad: list[tuple[int, str]] = []
    numbers: dict[int, int] = {}
    keys: set[str] = set()  # the chunk's columns: every key of its objects
    chars = 0
    chunk_size, max_cells, max_chars = options.chunk_size, options.chunk_cells, options.chunk_chars
    row_no = line_no = 0
    first = True
    done = False
    try:
        for batch, parsed in _jsonl_batches(source):
            n = len(batch)
            if n > 1 and None not in parsed:
                # Every line an object that can be a row: when the chunk stays within its
                # bounds after the last of them, it does after each (rows, keys and characters
                # only grow), so they are taken at once.
                wider = keys.union(*parsed)  # type: ignore[arg-type]
                size = sum(map(len, batch))
                if (
                    (options.limit is None or row_no + n < options.limit)
                    and len(rows) + len(bad) + n < chunk_size
                    and (len(rows) + n) * len(wider) < max_cells
                    and len(wider) <= MAX_COLUMNS
                    and chars + size < max_chars
                ):
                    numbered = range(row_no + 1, row_no + n + 1)
                    keys = wider
                    objects.extend(parsed)  # type: ignore[arg-type]
                    rows.extend(numbered)
                    numbers.update(zip(numbered, range(line_no + 1, line_no + n + 1), strict=True))
                    chars += size
                    row_no += n
                    line_no += n
                    continue
            for raw, pre in zip(batch, parsed, strict=True):
                line = raw.strip()
                if first and isinstance(line, bytes):
                    line, first = line.removeprefix(UTF8_BOM), False
                if lines is not None and lines.quiet:  # not a line: the pipe went quiet
                    if rows or bad:
                        yield _jsonl_chunk(objects, rows, bad, numbers)
                        objects, rows, bad, numbers, keys, chars = [], [], [], {}, set(), 0
                    continue
                line_no += 1
                if not line:
                    continue  # blank lines are not counted as rows
                row_no += 1
                chars += len(raw)
                if pre is None:
                    obj, reason = _parse_object(line, utf8, encoding, options.encoding)
                else:  # parsed and checked already
                    obj, reason = pre, ""
                if obj is None:
                    bad.append((row_no, reason))
                else:
                    keys.update(obj)
                    if rows and (
                        len(keys) > MAX_COLUMNS or (len(rows) + 1) * len(keys) > max_cells
                    ):
                        # Its keys would make the frame too wide, or too large: cut before it.
                        yield _jsonl_chunk(objects, rows, bad, numbers)
                        objects, rows, bad, numbers = [], [], [], {}
                        keys, chars = set(obj), len(raw)
                    objects.append(obj)
                    rows.append(row_no)
                numbers[row_no] = line_no
                if (
                    len(rows) + len(bad) >= chunk_size
                    or len(rows) * len(keys) >= max_cells
                    or chars >= max_chars
                ):
                    yield _jsonl_chunk(objects, rows, bad, numbers)
                    objects, rows, bad, numbers, keys, chars = [], [], [], {}, set(), 0
                if options.limit is not None and row_no >= options.limit:
                    done = True
                    break
            if done:
                break
    except UnicodeDecodeError as exc:  # from decoding UTF-16/32 text, or a pipe's
        raise InputError(_undecodable(name, options.encoding, exc, line_no)) from None
    except LineTooLong as exc:
        raise InputError(_too_long(name, exc)) from None
    finally:
        if text is not None:
            text.detach()
    if row_no == 0:
        raise InputError(f"{name} is empty: expected one JSON object per line")
    if rows or bad:
        yield _jsonl_chunk(objects, rows, bad, numbers)


def _parse_object(
    line: bytes | str, utf8: bool, encoding: str, given: str
) -> tuple[dict[str, object], str] | tuple[None, str]:
    """(the line's JSON object, "") or (None, why the row is invalid)."""
    try:
        document = line if utf8 or isinstance(line, str) else line.decode(encoding)
        obj = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        if isinstance(line, bytes) and utf8:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as undecodable:
                at = undecodable.start
                return None, (
                    f"malformed JSON: not valid {given} text (byte 0x{line[at]:02x} at column"
                    f" {at + 1}); pass --encoding with the file's encoding, e.g. --encoding cp1252"
                )
        # orjson's own position says "line 1": the line is the row's; the column helps.
        return None, f"malformed JSON: {exc.msg} (column {exc.colno})"
    except UnicodeDecodeError as exc:
        return None, f"malformed JSON: not valid {given} text ({exc})"
    return _checked(obj, document)


def _checked(
    obj: object, document: bytes | str
) -> tuple[dict[str, object], str] | tuple[None, str]:
    """(`obj`, "") when it can be a row, else (None, why the row is invalid); `document`: the
    JSON text it was read from."""
    if not isinstance(obj, dict):
        return None, f"line is JSON {type(obj).__name__}, not an object"
    if len(obj) > MAX_COLUMNS:
        return None, (
            f"the object has {len(obj):,} keys; bulksync reads at most {MAX_COLUMNS:,}"
            " (Customer.io takes at most 300 attributes per person)"
        )
    kinds = set(map(type, obj.values()))
    try:
        huge = (float in kinds or dict in kinds or list in kinds) and _huge_float(obj)
    except RecursionError:  # nested deeper than Python recurses (orjson allows 1,024 levels)
        huge = False
    if huge:
        # Perhaps an integer beyond 64 bits, which orjson read as a float, silently rounded:
        # the standard library reads it exactly, to refuse the row rather than send another
        # number. (orjson cannot write such an integer either: a string must carry it.)
        try:
            beyond = _beyond_64_bits(json.loads(document), "")
        except (ValueError, RecursionError):  # thousands of digits; nested deeper than Python
            beyond = "a value"
        if beyond is not None:
            return None, (
                f"{beyond}: an integer beyond 64 bits cannot be sent exactly (JSON tools read it"
                " as a rounded float); write it as a string"
            )
    return obj, ""


_NEEDS_LOOKING = frozenset((float, dict, list))  # value types _checked looks inside


def _jsonl_batches(
    source: Iterator[bytes] | Iterator[str] | ByteLines,
) -> Iterator[tuple[Sequence[bytes | str], list[dict[str, object] | None]]]:
    """The lines of `source` in batches, each line with its object when the line is known to be
    one that can be a row (what _parse_object would return, with no reason), else None: the
    reader parses it.

    From a ByteLines (UTF-8 bytes from a file), lines are parsed a block at a time, and checked
    a block at a time when none of their values needs a closer look; any other source's lines
    are left to the reader, one at a time."""
    if not isinstance(source, ByteLines):
        for raw in source:
            yield [raw], [None]
        return
    loads = orjson.loads
    first = True
    while batch := source.batch():
        parsed: list[dict[str, object] | None] = []
        if first:  # the reader takes a byte-order mark off the first line
            parsed.append(None)
            first = False
        while len(parsed) < len(batch):
            try:
                parsed.extend(map(loads, itertools.islice(batch, len(parsed), None)))
            except orjson.JSONDecodeError:
                parsed.append(None)  # the reader parses it again, to say why
        objs = [o for o in parsed if o is not None]
        simple = (
            set(map(type, objs)) <= {dict}
            and max(map(len, objs), default=0) <= MAX_COLUMNS
            and _NEEDS_LOOKING.isdisjoint(
                map(type, itertools.chain.from_iterable(map(dict.values, objs)))
            )
        )
        if not simple:
            parsed = [
                None if o is None or _checked(o, raw.strip())[0] is None else o
                for raw, o in zip(batch, parsed, strict=True)
            ]
        yield batch, parsed


def _huge_float(value: dict[str, object] | list[object]) -> bool:
    """Is a float of 2^63 or more (in magnitude) anywhere in `value`?"""
    for item in value.values() if isinstance(value, dict) else value:
        if type(item) is float:
            if abs(item) >= _HUGE:
                return True
        elif isinstance(item, dict | list) and _huge_float(item):
            return True
    return False


def _beyond_64_bits(value: object, where: str) -> str | None:
    """Where in `value` (a key, or key.key) an integer outside int64/uint64 is; None if none."""
    if type(value) is int:
        return where if not -(2**63) <= value < 2**64 else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _beyond_64_bits(item, f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _beyond_64_bits(item, where or "a value")
            if found is not None:
                return found
    return None


def _jsonl_chunk(
    objects: list[dict[str, object]],
    rows: list[int],
    bad: list[tuple[int, str]],
    numbers: dict[int, int],
) -> Chunk:
    frame = _frame(objects)
    objects.clear()  # the frame holds the values now: free the dicts before normalizing
    return Chunk(frame, rows, bad, numbers)


def _frame(objects: list[dict[str, object]]) -> pd.DataFrame:
    # dtype=object keeps JSON types as they are: 42 stays int 42 (never 42.0 because a
    # neighbouring row lacks the key; the missing cell is NaN, which normalize treats as empty),
    # "01234" stays a string.
    return pd.DataFrame(objects, dtype=object)
