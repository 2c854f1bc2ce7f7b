"""Text lines from a pipe, and a signal when the pipe goes quiet.

A reader that waits for a full chunk of rows would hold a slow producer's rows (a trickle on
stdin) until thousands more arrive. `QuietLines` reads the pipe itself with `select`, so that when
no byte has arrived for `linger` seconds it hands the CSV or JSONL reader an empty line and sets
`quiet`: the reader then sends the rows it holds, and goes on reading.

An empty line is harmless between records (both readers skip blank lines), but inside a quoted
CSV field it would add a newline to the value, so for CSV it is only given when every quote seen
since the last record is closed.

Every line, from a pipe or a file, is bounded while it is read: a line longer than `MAX_LINE`
characters (a gzip of zeros, a binary file) raises `LineTooLong` once that many characters have
arrived, never after the whole line is in memory. Every source counts the lines it hands out, so
the error (and a decoding error) can name the line.

A file is read ahead in blocks (`TextLines` for CSV text, `ByteLines` for UTF-8 JSONL), so that a
reader can take many lines at once (`batch()`) rather than a Python call per line. They give the
lines, counts and errors `BoundedLines` gives over a text wrapper's or a binary file's `readline`:
the bytes are read in the same blocks and decoded the same way, and an error met ahead (bytes that
cannot be decoded, a damaged gzip, a line too long) is raised only when the line it concerns is
asked for.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import select
import stat
from collections import deque
from collections.abc import Callable, Iterator
from typing import AnyStr, BinaryIO, Generic

LINGER = 0.2  # seconds a partial chunk from a quiet pipe waits before it is sent
READ_SIZE = 1 << 16
# The longest line (or CSV record) read, line end included. A row Customer.io can take is far
# shorter (300 attributes of at most 1,000 bytes; 32,000 bytes per batch operation).
MAX_LINE = 4 * 1024 * 1024


class LineTooLong(Exception):
    """Line `line` (1-based; None when the reader must say) holds more than `limit` characters.
    `record`: a CSV record over several lines, rather than one line."""

    def __init__(self, limit: int, line: int | None, *, record: bool = False) -> None:
        super().__init__(limit, line, record)
        self.limit = limit
        self.line = line
        self.record = record


def is_pipe(stream: BinaryIO) -> bool:
    """True for a pipe, socket or terminal: something that can go quiet without ending."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return not stat.S_ISREG(mode)


class BoundedLines(Iterator[AnyStr], Generic[AnyStr]):
    """The lines `readline(size)` returns (a file object's: text or bytes, line ends kept), each
    at most `limit` characters: a longer one raises LineTooLong after `limit` + 1 characters are
    read. `count`: the lines handed out so far."""

    def __init__(self, readline: Callable[[int], AnyStr], limit: int = MAX_LINE) -> None:
        self._readline: Callable[[int], AnyStr] = readline
        self._limit = limit
        self.count = 0

    def __next__(self) -> AnyStr:
        line = self._readline(self._limit + 1)
        if not line:
            raise StopIteration
        if len(line) > self._limit:
            raise LineTooLong(self._limit, self.count + 1)
        self.count += 1
        return line


# A line of a text stream opened with newline="": it ends at LF, CRLF or CR only (str.splitlines
# also ends lines at other characters), or at the end of the text.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_BYTES_LINE = re.compile(rb"[^\n]*\n|[^\n]+")  # a line of bytes: it ends at LF only
TEXT_CHUNK = 8192  # bytes decoded at a time: io.TextIOWrapper's chunk size
BYTES_CHUNK = 8192  # bytes read at a time by `ByteLines`: what readline reads (a gzip error
# loses the block it is found in)
READ_AHEAD = 1 << 20  # characters (bytes) of lines read ahead, about, to hand out


class _AheadLines(Iterator[AnyStr], Generic[AnyStr]):
    """Lines read ahead in blocks, handed out one at a time or all at once (`batch()`), each
    at most `limit` long: a longer one raises LineTooLong when it is asked for. An error
    reading or decoding a block is raised when the first line it keeps from being read is
    asked for. `count`: the lines handed out so far."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lines: list[AnyStr] = []  # read ahead, from self._pos on not handed out yet
        self._pos = 0
        self._partial: list[AnyStr] = []  # text after the last line end, in pieces
        self._partial_len = 0
        self._eof = False
        self._error: Exception | None = None  # raised once the lines before it are handed out
        self.count = 0

    def _block(self) -> AnyStr:
        """The next block of text, empty at the end (then `_eof` is set)."""
        raise NotImplementedError

    def _split(self, text: AnyStr) -> list[AnyStr]:
        """`text` in lines, line ends kept; the last piece may have none."""
        raise NotImplementedError

    def _ended(self, piece: AnyStr) -> bool:
        """Does `piece`, the last of a block, end its line?"""
        raise NotImplementedError

    def __next__(self) -> AnyStr:
        if self._pos >= len(self._lines):
            self._fill()
        line = self._lines[self._pos]
        self._pos += 1
        self.count += 1
        return line

    def batch(self) -> list[AnyStr]:
        """Every line read ahead and not handed out yet (reading more when there is none),
        handed out now; [] at the end of the input."""
        if self._pos >= len(self._lines):
            try:
                self._fill()
            except StopIteration:
                return []
        lines = self._lines[self._pos :] if self._pos else self._lines
        self._lines, self._pos = [], 0
        self.count += len(lines)
        return lines

    def _fill(self) -> None:
        """Read lines ahead; raise the error that comes first, or StopIteration at the end."""
        self._lines, self._pos = [], 0
        lines = self._lines
        chars = 0
        while (chars < READ_AHEAD or not lines) and self._error is None and not self._eof:
            try:
                text = self._block()
            except Exception as exc:  # raised in its turn, when the line needs the block
                self._error = exc
                break
            if text:
                self._add(text)
                chars += len(text)
            elif self._eof and self._partial:  # the last line, without a line end
                lines.append(self._partial[0][:0].join(self._partial))
                self._partial, self._partial_len = [], 0
        if not lines:
            error = self._error
            if error is None:
                raise StopIteration
            self._error = None  # raised once; a reader asking again gets the end
            self._eof = True
            if isinstance(error, LineTooLong):
                error.line = self.count + 1
            raise error

    def _add(self, text: AnyStr) -> None:
        """Split `text` into the lines it ends, and what follows the last line end."""
        pieces = self._split(text)
        rest = None if self._eof or self._ended(pieces[-1]) else pieces.pop()
        limit = self._limit
        longest = self._partial_len + len(text)  # no line read so far can be longer
        if self._partial and pieces:
            self._partial.append(pieces[0])
            pieces[0] = text[:0].join(self._partial)
            self._partial, self._partial_len = [], 0
        if pieces:
            if longest > limit and max(map(len, pieces)) > limit:
                too_long = next(i for i, line in enumerate(pieces) if len(line) > limit)
                del pieces[too_long:]
                self._error = LineTooLong(limit, None)
                rest = None
            self._lines.extend(pieces)
        if rest is not None:
            self._partial.append(rest)
            self._partial_len += len(rest)
            if self._partial_len > limit:
                # No line end in sight: refuse the line now, before it fills memory.
                self._error = LineTooLong(limit, None)
                self._partial, self._partial_len = [], 0


class TextLines(_AheadLines[str]):
    """The lines of `binary` decoded with `encoding`, exactly as `BoundedLines` over
    `io.TextIOWrapper(binary, encoding, newline="").readline` gives them (lines end at LF, CRLF
    or a lone CR, line ends kept; a line longer than `limit` raises LineTooLong), with the same
    `count`, and any error (undecodable bytes, a damaged gzip) raised when the line that needs
    it is asked for, as that wrapper raises it: the bytes are read and decoded as it reads them
    (`read1` of its chunk size, its newline decoder), only ahead of time."""

    def __init__(self, binary: BinaryIO, encoding: str, limit: int = MAX_LINE) -> None:
        super().__init__(limit)
        read1 = getattr(binary, "read1", None)
        self._read = read1 if read1 is not None else binary.read
        self._decoder = io.IncrementalNewlineDecoder(
            codecs.getincrementaldecoder(encoding)(), translate=False
        )

    def _block(self) -> str:
        block = self._read(TEXT_CHUNK)
        self._eof = not block
        text: str = self._decoder.decode(block, final=self._eof)
        return text

    def _split(self, text: str) -> list[str]:
        pieces = text.splitlines(keepends=True)
        ends = text.count("\n")
        if "\r" in text:
            ends += text.count("\r") - text.count("\r\n")
        if len(pieces) - (not self._ended(pieces[-1])) != ends:
            # splitlines also split at a \v, \f, \x1c-\x1e, \x85, U+2028 or U+2029.
            pieces = _LINE.findall(text)
        return pieces

    def _ended(self, piece: str) -> bool:
        # The decoder holds back a final CR (it may be CRLF's): a CR at the end ends the line.
        return piece[-1] in "\r\n"


class ByteLines(_AheadLines[bytes]):
    """The lines of `binary` (bytes, split at LF only, line ends kept) exactly as `BoundedLines`
    over `binary.readline` gives them, with the same `count` and errors, read ahead."""

    def __init__(self, binary: BinaryIO, limit: int = MAX_LINE) -> None:
        super().__init__(limit)
        read1 = getattr(binary, "read1", None)
        self._read = read1 if read1 is not None else binary.read

    def _block(self) -> bytes:
        block: bytes = self._read(BYTES_CHUNK)
        self._eof = not block
        return block

    def _split(self, text: bytes) -> list[bytes]:
        # bytes.splitlines also splits at CR: only right when every CR is a CRLF's.
        if b"\r" not in text or (
            text.count(b"\r") == text.count(b"\r\n") and not text.endswith(b"\r")
        ):
            return text.splitlines(keepends=True)
        pieces: list[bytes] = _BYTES_LINE.findall(text)
        return pieces

    def _ended(self, piece: bytes) -> bool:
        return piece.endswith(b"\n")


class QuietLines(Iterator[str]):
    """Decoded lines (line ends kept) from the file descriptor of `stream`.

    Reads straight from the descriptor, so nothing may have been read through `stream`'s own
    buffer except what `pending` hands over (bytes already peeked or buffered). `count`: the
    lines handed out so far, the empty lines of quiet spells not counted.
    """

    def __init__(
        self,
        fd: int,
        encoding: str,
        pending: bytes = b"",
        *,
        csv_quotes: bool,
        limit: int = MAX_LINE,
    ) -> None:
        self._fd = fd
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self._lines: deque[str] = deque()
        # Text after the last newline read, in pieces: joined only when its line ends, so a
        # long line arriving in many blocks costs linear time, not quadratic.
        self._partial: list[str] = []
        self._partial_len = 0
        self._eof = False
        self._csv_quotes = csv_quotes
        self._open_quotes = False  # inside a quoted CSV field
        self._limit = limit
        self.quiet = False
        self.count = 0
        self._add(self._decoder.decode(pending))

    def record_done(self) -> None:
        """The reader finished a record: no quoted field is open any more."""
        self._open_quotes = False

    def replayed(self, line: str) -> None:
        """The reader is reading `line` again (it was handed out before): count its quotes, so
        that a quiet spell inside a quoted field it opens gives no empty line."""
        self._note(line)

    def __next__(self) -> str:
        self.quiet = False
        while not self._lines:
            if self._eof:
                if not self._partial:
                    raise StopIteration
                self._lines.append("".join(self._partial))
                self._partial, self._partial_len = [], 0
                break
            readable, _, _ = select.select([self._fd], [], [], LINGER)
            if not readable and not self._open_quotes and not self._partial:
                self.quiet = True
                return "\n"
            if readable or self._partial:
                block = os.read(self._fd, READ_SIZE)
                self._eof = not block
                self._add(self._decoder.decode(block, final=self._eof))
        line = self._lines.popleft()
        if len(line) > self._limit:
            raise LineTooLong(self._limit, self.count + 1)
        self.count += 1
        return self._note(line)

    def _add(self, text: str) -> None:
        # Split on "\n" only: str.splitlines would also split on \r, \x1c or U+2028 inside a
        # value, and the CSV reader takes each string it is given for a whole line.
        if not text:
            return
        if "\n" not in text:
            self._partial.append(text)
            self._partial_len += len(text)
            if self._partial_len > self._limit:
                # No line end in sight: refuse the line now, before it fills memory.
                raise LineTooLong(self._limit, self.count + len(self._lines) + 1)
            return
        parts = text.split("\n")
        if self._partial:
            parts[0] = "".join(self._partial) + parts[0]
        last = parts.pop()
        self._partial, self._partial_len = ([last], len(last)) if last else ([], 0)
        self._lines.extend(part + "\n" for part in parts)

    def _note(self, line: str) -> str:
        if self._csv_quotes and line.count('"') % 2:
            self._open_quotes = not self._open_quotes
        return line
