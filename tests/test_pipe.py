"""A slow producer on stdin: rows are sent while the pipe is still open, not when it closes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bulksync.lines import LINGER, QuietLines

from .conftest import API_KEY, SITE_ID, ServerThread, read_results


def _wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("batch", [False, True])
def test_rows_trickling_on_stdin_are_sent_before_the_pipe_closes(
    fake: ServerThread, tmp_path: Path, batch: bool
) -> None:
    results = tmp_path / "r.jsonl"
    env = {
        **os.environ,
        "CUSTOMERIO_SITE_ID": SITE_ID,
        "CUSTOMERIO_API_KEY": API_KEY,
        "BULKSYNC_BASE_URL": fake.url,
    }
    argv = [sys.executable, "-m", "bulksync", "sync", "-", "--results", str(results), "--quiet"]
    proc = subprocess.Popen(argv + (["--batch"] if batch else []), stdin=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    try:
        proc.stdin.write(b"id,email\nu1,u1@example.com\nu2,u2@example.com\n")
        proc.stdin.flush()
        # The pipe stays open: with a 20,000-row chunk these two rows would wait for ever.
        arrived = _wait_for(lambda: {"u1", "u2"} <= set(fake.fake.accepted()), 10)
        assert arrived, "rows held back until more input arrived"
        proc.stdin.write(b'u3,"u3@example.com"\n')
    finally:
        proc.stdin.close()
    assert proc.wait(30) == 0
    assert {line["id"]: line["status"] for line in read_results(results)} == {
        "u1": "ok",
        "u2": "ok",
        "u3": "ok",
    }


def test_quiet_lines_never_split_a_quoted_field(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b'id,note\n1,"first\r\nhalf')  # the producer stops inside a quoted field
    lines = QuietLines(read_fd, "utf-8", csv_quotes=True)
    assert next(lines) == "id,note\n"
    lines.record_done()
    assert next(lines) == '1,"first\r\n'

    # Quiet for longer than LINGER, but inside quotes: no empty line may be given (it would
    # become part of the value), so the reader waits for the rest of the field.
    def finish() -> None:
        os.write(write_fd, b' done"\n')
        os.close(write_fd)

    timer = threading.Timer(3 * LINGER, finish)
    started = time.monotonic()
    timer.start()
    assert next(lines) == 'half done"\n'
    assert time.monotonic() - started >= 2 * LINGER
    assert not lines.quiet
    with pytest.raises(StopIteration):
        next(lines)
    timer.join()
    os.close(read_fd)


def test_quiet_lines_signal_a_quiet_pipe_between_records() -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"a\nb\n")
    lines = QuietLines(read_fd, "utf-8", csv_quotes=False)
    assert [next(lines), next(lines)] == ["a\n", "b\n"]
    assert next(lines) == "\n" and lines.quiet  # nothing more for a while
    os.write(write_fd, "ü\u2028x\r\n".encode())  # split on \n only, multi-byte text intact
    os.close(write_fd)
    assert next(lines) == "ü\u2028x\r\n"
    with pytest.raises(StopIteration):
        next(lines)
    os.close(read_fd)
