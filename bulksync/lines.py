"""Text lines from a pipe, and a signal when the pipe goes quiet.

A reader that waits for a full chunk of rows would hold a slow producer's rows (a trickle on
stdin) until thousands more arrive. `QuietLines` reads the pipe itself with `select`, so that when
no byte has arrived for `linger` seconds it hands the CSV or JSONL reader an empty line and sets
`quiet`: the reader then sends the rows it holds, and goes on reading.

An empty line is harmless between records (both readers skip blank lines), but inside a quoted
CSV field it would add a newline to the value, so for CSV it is only given when every quote seen
since the last record is closed.
"""

from __future__ import annotations

import codecs
import os
import select
import stat
from collections import deque
from collections.abc import Iterator
from typing import BinaryIO

LINGER = 0.2  # seconds a partial chunk from a quiet pipe waits before it is sent
READ_SIZE = 1 << 16


def is_pipe(stream: BinaryIO) -> bool:
    """True for a pipe, socket or terminal: something that can go quiet without ending."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return not stat.S_ISREG(mode)


class QuietLines(Iterator[str]):
    """Decoded lines (line ends kept) from the file descriptor of `stream`.

    Reads straight from the descriptor, so nothing may have been read through `stream`'s own
    buffer except what `pending` hands over (bytes already peeked or buffered).
    """

    def __init__(self, fd: int, encoding: str, pending: bytes = b"", *, csv_quotes: bool) -> None:
        self._fd = fd
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self._lines: deque[str] = deque()
        self._partial = ""  # text after the last newline read
        self._eof = False
        self._csv_quotes = csv_quotes
        self._open_quotes = False  # inside a quoted CSV field
        self.quiet = False
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
                self._lines.append(self._partial)
                self._partial = ""
                break
            readable, _, _ = select.select([self._fd], [], [], LINGER)
            if not readable and not self._open_quotes and not self._partial:
                self.quiet = True
                return "\n"
            if readable or self._partial:
                block = os.read(self._fd, READ_SIZE)
                self._eof = not block
                self._add(self._decoder.decode(block, final=self._eof))
        return self._note(self._lines.popleft())

    def _add(self, text: str) -> None:
        # Split on "\n" only: str.splitlines would also split on \r, \x1c or U+2028 inside a
        # value, and the CSV reader takes each string it is given for a whole line.
        parts = (self._partial + text).split("\n")
        self._partial = parts.pop()
        self._lines.extend(part + "\n" for part in parts)

    def _note(self, line: str) -> str:
        if self._csv_quotes and line.count('"') % 2:
            self._open_quotes = not self._open_quotes
        return line
