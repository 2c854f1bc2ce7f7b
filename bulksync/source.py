"""Read CSV and JSONL input in bounded chunks of rows, each row with its 1-based data row number
and the input line where it starts.

CSV is parsed with the standard library's C `csv` reader rather than `pandas.read_csv`: a ragged
row (more or fewer fields than the header) must become one `invalid` row with its exact row
number, and neither pandas' C engine (which aborts or pads silently) nor pyarrow's streaming reader
(which cannot say where a skipped row was) can report that. Cells stay strings: zip "01234" stays
"01234". Each chunk is then a pandas DataFrame, so normalizing is vectorised.

Memory is bounded by `chunk_size` rows, never by the size of the input.

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
import logging
import re
import sys
import zipfile
import zlib
from collections import deque
from collections.abc import Generator, Iterator, Sequence
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
        head = binary.peek(64)
        _refuse_other_files(path, head, gzipped=binary is not raw)
        encoding = _encoding(input_name(path), head, options.encoding)
        if encoding.startswith("utf-16") or encoding.startswith("utf-32"):
            # Format detection looks for '{': in the decoded text, not in the bytes.
            head = head.decode(encoding, errors="ignore").encode()
        fmt = options.format or detect_format(path, head)
        lines = None
        if binary is raw and path == "-" and is_pipe(raw):
            # A pipe may trickle: read it so that a quiet spell sends the rows held so far.
            pending = raw.read1(len(raw.peek(1)))  # what peeking already buffered
            lines = QuietLines(raw.fileno(), encoding, pending, csv_quotes=fmt == "csv")
        if fmt == "csv":
            yield from _CsvReader(path, binary, options, encoding, lines).chunks()
        else:
            yield from _read_jsonl(path, binary, options, encoding, lines)
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


def _encoding(name: str, head: bytes, given: str) -> str:
    """The codec to decode with: the one a byte-order mark names (the codec drops the mark),
    else `given`."""
    given_name = codecs.lookup(given).name
    for bom, codec, label in _BOMS:
        if head.startswith(bom):
            if not given_name.startswith(codec.removesuffix("-sig")):
                logger.warning(
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


def _undecodable(name: str, given: str, exc: UnicodeDecodeError, lines_before: int) -> str:
    """The message for bytes `given` cannot decode, naming their line. `lines_before`: the lines
    already handed to the parser; the decoder decodes a block at a time, so the bad byte is on
    that many lines plus those the block holds before it."""
    before = exc.object[: exc.start]
    line = lines_before + 1 + _line_ends(bytes(before).decode("latin-1"))
    bad = " ".join(f"0x{b:02x}" for b in exc.object[exc.start : min(exc.end, exc.start + 4)])
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
    """

    def __init__(self, source: Iterator[str], quiet: QuietLines | None) -> None:
        self.source = source
        self.quiet = quiet
        self.held: list[str] = []
        self.replay: deque[str] = deque()

    def read_again(self, lines: Sequence[str]) -> None:
        """`lines` come next, before any line not yet read again (a reader given up on may
        have left some in `replay`)."""
        self.replay.extendleft(reversed(lines))

    def lines(self) -> Iterator[str]:
        held, replay, quiet = self.held, self.replay, self.quiet
        while replay:
            line = replay.popleft()
            if quiet is not None:
                quiet.replayed(line)  # it tracks open quotes to know when it may signal quiet
            held.append(line)
            yield line
        for line in self.source:
            held.append(line)
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


class _CsvReader:
    def __init__(
        self,
        path: str,
        binary: BinaryIO,
        options: SourceOptions,
        encoding: str,
        quiet: QuietLines | None,
    ) -> None:
        self.name = input_name(path)
        self.path = path
        self.binary = binary
        self.options = options
        self.encoding = encoding
        self.quiet = quiet

    def chunks(self) -> Iterator[Chunk]:
        text = None
        source: Iterator[str]
        if self.quiet is None:
            source = text = io.TextIOWrapper(self.binary, encoding=self.encoding, newline="")
        else:
            source = self.quiet
        try:
            self.feed = _Feed(source, self.quiet)
            yield from self._chunks()
        finally:
            if text is not None:
                text.detach()  # the caller owns (and closes) the binary stream, stdin included

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
            lines_before = line_no + len(held)  # (blank lines before the header aside)
            raise InputError(_undecodable(name, options.encoding, exc, lines_before)) from None
        width = len(header)
        row_no = 0
        # Rows read again after a broken quote, up to line check_until, must prove themselves.
        check_until = broken_at = 0
        cells: list[list[str]] = []
        rows: list[int] = []
        bad: list[tuple[int, str]] = []
        lines: dict[int, int] = {}
        chunk_size, limit = options.chunk_size, options.limit
        done = False
        while not done:
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
                        elif rows or bad:  # not a line: the pipe went quiet
                            yield Chunk(self._frame(cells, header), rows, bad, lines)
                            cells, rows, bad, lines = [], [], [], {}
                        continue
                    row_no += 1
                    lines[row_no] = start
                    broken = None
                    if n > 1 or start <= check_until:  # rare: the common row is one line
                        if n > 1:
                            broken = self._swallowed(fields, width, start)
                        if start <= check_until and (
                            broken is not None or not self._sound(fields, width)
                        ):
                            raise InputError(self._unbounded(broken_at, start))
                    if broken is None:
                        line_no += n
                        held.clear()
                        if len(fields) != width:
                            _without_trailing_empties(fields, width)
                        if len(fields) == width:
                            cells.append(fields)
                            rows.append(row_no)
                        else:
                            bad.append((row_no, self._ragged(len(fields), width, unnamed)))
                    else:
                        bad.append((row_no, broken.reason))
                        line_no, reader = self._read_again(start)
                        if broken.check_until > check_until:
                            check_until, broken_at = broken.check_until, start
                    if len(rows) + len(bad) >= chunk_size:
                        yield Chunk(self._frame(cells, header), rows, bad, lines)
                        cells, rows, bad, lines = [], [], [], {}
                    if limit is not None and row_no >= limit:
                        done = True
                        break
                    if broken is not None:
                        break  # on with the new reader
                else:
                    done = True
            except csv.Error as exc:
                if quiet is not None:
                    quiet.record_done()
                start = line_no + 1  # the record the reader gave up on started there
                row_no += 1
                lines[row_no] = start
                if start <= check_until:
                    raise InputError(self._unbounded(broken_at, start)) from None
                broken = self._strict_error(exc, start)
                bad.append((row_no, broken.reason))
                line_no, reader = self._read_again(start)
                if broken.check_until > check_until:
                    check_until, broken_at = broken.check_until, start
                if len(rows) + len(bad) >= chunk_size:
                    yield Chunk(self._frame(cells, header), rows, bad, lines)
                    cells, rows, bad, lines = [], [], [], {}
                done = limit is not None and row_no >= limit
            except UnicodeDecodeError as exc:
                lines_before = line_no + len(held)
                raise InputError(_undecodable(name, options.encoding, exc, lines_before)) from None
        if rows or bad or row_no == 0:  # a header-only file still shows its columns
            yield Chunk(self._frame(cells, header), rows, bad, lines)

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

    @staticmethod
    def _frame(cells: list[list[str]], header: list[str]) -> pd.DataFrame:
        return pd.DataFrame(cells, columns=header, dtype="str")

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
                logger.warning(
                    "%s: line 1 is Excel's 'sep=%s' line: skipped; the delimiter is %s, as"
                    " --delimiter says",
                    self.name,
                    declared,
                    _shown(options.delimiter),
                )
                return options.delimiter, peeked, 1
            logger.warning(
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
        logger.warning(
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
        if "" in header:
            raise InputError(
                f"{name}: line {line}: header column {header.index('') + 1} has no name"
            )
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise InputError(
                f"{name}: line {line}: duplicate column names in the header: {', '.join(dupes)}"
            )
        spaced = [f for f in fields if f and f != f.strip()]
        if spaced:
            listed = ", ".join(f"{f!r} as {f.strip()!r}" for f in spaced[:3])
            more = f" and {len(spaced) - 3} more" if len(spaced) > 3 else ""
            logger.warning("%s: spaces around column names are removed: %s%s", name, listed, more)
        if unnamed:
            logger.warning(
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
    source: Iterator[bytes] | Iterator[str] = binary if lines is None else lines
    if lines is None and not utf8 and "\n".encode(encoding) != b"\n":
        # UTF-16 or UTF-32: lines cannot be split on the byte b"\n"; split the decoded text,
        # on LF only as for bytes.
        text = io.TextIOWrapper(binary, encoding=encoding, newline="\n")
        source = text
    objects: list[dict[str, object]] = []
    rows: list[int] = []
    bad: list[tuple[int, str]] = []
    numbers: dict[int, int] = {}
    row_no = line_no = 0
    first = True
    try:
        for raw in source:
            line = raw.strip()
            if first and isinstance(line, bytes):
                line, first = line.removeprefix(UTF8_BOM), False
            if lines is not None and lines.quiet:  # not a line: the pipe went quiet
                if rows or bad:
                    yield Chunk(_frame(objects), rows, bad, numbers)
                    objects, rows, bad, numbers = [], [], [], {}
                continue
            line_no += 1
            if not line:
                continue  # blank lines are not counted as rows
            row_no += 1
            numbers[row_no] = line_no
            try:
                obj = orjson.loads(line if utf8 or isinstance(line, str) else line.decode(encoding))
            except orjson.JSONDecodeError as exc:
                # orjson's own position says "line 1": the line is the row's; the column helps.
                bad.append((row_no, f"malformed JSON: {exc.msg} (column {exc.colno})"))
            except UnicodeDecodeError as exc:
                bad.append((row_no, f"malformed JSON: not valid {options.encoding} text ({exc})"))
            else:
                if isinstance(obj, dict):
                    objects.append(obj)
                    rows.append(row_no)
                else:
                    bad.append((row_no, f"line is JSON {type(obj).__name__}, not an object"))
            if len(rows) + len(bad) >= options.chunk_size:
                yield Chunk(_frame(objects), rows, bad, numbers)
                objects, rows, bad, numbers = [], [], [], {}
            if options.limit is not None and row_no >= options.limit:
                break
    except UnicodeDecodeError as exc:  # from decoding UTF-16/32 text, or a pipe's
        raise InputError(_undecodable(name, options.encoding, exc, line_no)) from None
    finally:
        if text is not None:
            text.detach()
    if row_no == 0:
        raise InputError(f"{name} is empty: expected one JSON object per line")
    if rows or bad:
        yield Chunk(_frame(objects), rows, bad, numbers)


def _frame(objects: list[dict[str, object]]) -> pd.DataFrame:
    # dtype=object keeps JSON types as they are: 42 stays int 42 (never 42.0 because a
    # neighbouring row lacks the key; the missing cell is NaN, which normalize treats as empty),
    # "01234" stays a string.
    return pd.DataFrame(objects, dtype=object)
