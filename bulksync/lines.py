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
        self._text = self._decoder.decode(pending)
        self._eof = False
        self._csv_quotes = csv_quotes
        self._open_quotes = False  # inside a quoted CSV field
        self.quiet = False

    def record_done(self) -> None:
        """The reader finished a record: no quoted field is open any more."""
        self._open_quotes = False

    def __next__(self) -> str:
        self.quiet = False
        while True:
            end = self._text.find("\n")
            if end >= 0:
                line, self._text = self._text[: end + 1], self._text[end + 1 :]
                return self._note(line)
            if self._eof:
                if self._text:
                    line, self._text = self._text, ""
                    return self._note(line)
                raise StopIteration
            readable, _, _ = select.select([self._fd], [], [], LINGER)
            if not readable and not self._open_quotes and not self._text:
                self.quiet = True
                return "\n"
            if readable or self._text:
                self._read()

    def _read(self) -> None:
        block = os.read(self._fd, READ_SIZE)
        self._eof = not block
        self._text += self._decoder.decode(block, final=self._eof)

    def _note(self, line: str) -> str:
        if self._csv_quotes and line.count('"') % 2:
            self._open_quotes = not self._open_quotes
        return line
