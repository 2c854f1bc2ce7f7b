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
arrived, never after the whole line is in memory. Both sources count the lines they hand out, so
the error (and a decoding error) can name the line.
"""

from __future__ import annotations

import codecs
import os
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
