"""Memory bounded by bytes, not by columns or by the length of a line (issue 12, item 2).

Functional, not timed: a chunk is cut by cells and by characters as well as by rows, so a wide
file gets chunks of fewer rows; a line or a CSV record longer than `MAX_LINE` is refused while it
is read (a gzip of zeros never fills memory); an absurdly wide header is refused at once; JSON
integers stay exact; a FIFO or /dev/fd/N input is read as a stream; a pipe's long line is
bounded too. `make bench` (section memory) measures the peak RSS these bound.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main
from bulksync.fake.process import ServerThread
from bulksync.lines import MAX_LINE, LineTooLong, QuietLines
from bulksync.results import InputIdentity
from bulksync.source import (
    DEFAULT_CHUNK_CELLS,
    DEFAULT_CHUNK_SIZE,
    MAX_COLUMNS,
    Chunk,
    SourceOptions,
    is_stream,
    read_chunks,
)

from .conftest import read_results


def _csv(path: Path, columns: int, rows: int, cell: str = "v") -> Path:
    header = ",".join(["id", *(f"c{j}" for j in range(1, columns))])
    body = "".join(f"u{i}," + ",".join([cell] * (columns - 1)) + "\n" for i in range(rows))
    path.write_text(header + "\n" + body)
    return path


def _chunks(path: Path | str, **options: Any) -> list[Chunk]:
    return list(read_chunks(str(path), SourceOptions(**options)))


def _sync(*argv: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["sync", *argv], input=stdin)


def _one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- chunks cut by cells and by characters ----------------------------------------------------


def test_a_wide_file_gets_chunks_of_fewer_rows(tmp_path: Path) -> None:
    narrow = _csv(tmp_path / "narrow.csv", 10, 2_000)
    wide = _csv(tmp_path / "wide.csv", 300, 2_000)
    # Default sizes: 10 columns stay under the cell cap, 300 columns do not.
    assert [len(c) for c in _chunks(narrow)] == [2_000]
    per_chunk = DEFAULT_CHUNK_CELLS // 300
    assert per_chunk < DEFAULT_CHUNK_SIZE
    sizes = [len(c) for c in _chunks(wide)]
    assert sizes == [per_chunk, 2_000 - per_chunk]
    for chunk in _chunks(wide):
        assert chunk.frame.shape[0] * chunk.frame.shape[1] <= DEFAULT_CHUNK_CELLS
    # Rows keep their numbers and lines across the cut.
    rows = [r for c in _chunks(wide) for r in c.rows]
    assert rows == list(range(1, 2_001))
    lines = {r: line for c in _chunks(wide) for r, line in c.lines.items()}
    assert lines[per_chunk + 1] == per_chunk + 2  # the header is line 1


@pytest.mark.parametrize(
    ("columns", "rows", "expected"), [(10, 250, 100), (100, 250, 10), (2_000, 12, 1)]
)
def test_rows_per_chunk_follow_the_cell_cap(
    tmp_path: Path, columns: int, rows: int, expected: int
) -> None:
    path = _csv(tmp_path / "in.csv", columns, rows)
    sizes = [len(c) for c in _chunks(path, chunk_cells=1_000)]
    assert sizes[0] == expected
    assert sum(sizes) == rows
    assert all(size <= expected for size in sizes)


def test_long_cells_cut_a_chunk_by_characters(tmp_path: Path) -> None:
    path = _csv(tmp_path / "in.csv", 3, 100, cell="x" * 200)  # rows of about 405 characters
    chunks = _chunks(path, chunk_chars=4_000)
    assert [len(c) for c in chunks] == [10] * 10  # the row that reaches 4,000 ends the chunk
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "note": "x" * 390}) + "\n" for i in range(100)))
    assert [len(c) for c in _chunks(jsonl, chunk_chars=4_000)] == [10] * 10


def test_jsonl_chunk_cells_count_every_key_of_the_chunk(tmp_path: Path) -> None:
    # Each object names a key of its own: the frame is rows x (every key seen), so the cells
    # grow with the square of the rows unless the cap cuts the chunk.
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, f"k{i}": i}) + "\n" for i in range(200)))
    chunks = _chunks(path, chunk_cells=1_000)
    assert sum(len(c) for c in chunks) == 200
    for chunk in chunks:
        assert chunk.frame.shape[0] * chunk.frame.shape[1] <= 1_000
    assert len(chunks) > 5


def test_chunk_options_are_checked() -> None:
    from bulksync.errors import UsageError

    with pytest.raises(UsageError, match="chunk cells"):
        SourceOptions(chunk_cells=0)
    with pytest.raises(UsageError, match="chunk characters"):
        SourceOptions(chunk_chars=0)


# --- bombs: lines and records bounded while they are read -------------------------------------


def _zeros_gz(path: Path, megabytes: int, *, truncate: bool = False) -> Path:
    """`megabytes` MB of NUL bytes, gzipped; `truncate`: the compressed stream cut short near
    its end, so that reading it all fails with another error than the line limit's."""
    block = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=9) as f:
        for _ in range(megabytes):
            f.write(block)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 200])
    return path


@pytest.mark.parametrize("name", ["zeros.csv.gz", "zeros.jsonl.gz"])
def test_a_gzip_of_zeros_is_refused_after_the_line_limit(tmp_path: Path, name: str) -> None:
    # 50 MB of zeros, its end cut off: had the reader gone on to the end it would say the file
    # is truncated; it stops at line 1's first MAX_LINE characters.
    bomb = _zeros_gz(tmp_path / name, 50, truncate=True)
    with pytest.raises(EOFError), gzip.open(bomb) as f:  # the file is indeed broken at its end
        while f.read(1 << 24):
            pass
    result = _sync(str(bomb), "--dry-run", "--results", str(tmp_path / "r.jsonl"))
    line = _one_line_error(result, f"line 1 is longer than {MAX_LINE:,} characters")
    assert "truncated" not in line and "cannot read" not in line


def test_a_long_line_later_in_the_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "in.csv.gz"
    rows = "".join(f"u{i},x\n" for i in range(1, 1_000))  # lines 2..1000
    with gzip.open(path, "wb") as f:
        f.write(b"id,name\n" + rows.encode() + b"u1000," + b"y" * (MAX_LINE + 10) + b"\n")
    result = _sync(str(path), "--dry-run", "--results", str(tmp_path / "r.jsonl"))
    _one_line_error(result, "line 1001 is longer than")


def test_a_record_over_many_lines_is_bounded(tmp_path: Path) -> None:
    # Each quoted cell is short and holds a line break: the csv field limit never trips, yet
    # the record grows without end. It is refused at MAX_LINE characters, naming its start.
    field = '"a\nb",'
    cells = field * (MAX_LINE // len(field) + 10)
    path = tmp_path / "in.csv"
    path.write_text("id,name\nu1,x\n" + cells + "\n")
    result = _sync(str(path), "--dry-run", "--results", str(tmp_path / "r.jsonl"))
    _one_line_error(result, "line 3: a row running over several lines is longer than")


def test_a_long_line_on_a_pipe_is_refused_without_waiting_for_its_end(tmp_path: Path) -> None:
    data = b"id,name\n" + b"\0" * (MAX_LINE + 100_000)  # no line end: would wait for EOF
    proc = subprocess.run(
        [sys.executable, "-m", "bulksync", "sync", "-", "--dry-run", "--results", "r.jsonl"],
        input=data,
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "line 2 is longer than" in lines[0], proc.stderr


def test_quiet_lines_bound_a_line_before_it_ends() -> None:
    """A producer writes a line longer than the limit and keeps the pipe open: the reader must
    refuse it once `limit` characters arrived, not wait for a newline that may never come."""
    read_fd, write_fd = os.pipe()
    finished = threading.Event()

    def produce() -> None:
        os.write(write_fd, b"short line\n")
        for _ in range(300):  # 3,000 characters in small pieces, no line end
            os.write(write_fd, b"0123456789")
        finished.wait(10)  # keep the pipe open; the test must not need its end
        os.close(write_fd)

    writer = threading.Thread(target=produce, daemon=True)
    writer.start()
    try:
        lines = QuietLines(read_fd, "utf-8", csv_quotes=True, limit=1_000)
        assert next(lines) == "short line\n"
        with pytest.raises(LineTooLong) as caught:
            while True:
                next(lines)
        assert caught.value.line == 2 and caught.value.limit == 1_000
        assert not finished.is_set()
    finally:
        finished.set()
        writer.join(10)
        os.close(read_fd)


def test_quiet_lines_join_a_long_line_from_many_pieces() -> None:
    """A long line arriving a few bytes at a time comes out whole (its pieces are joined once,
    when it ends: linear, where joining at every piece was quadratic)."""
    read_fd, write_fd = os.pipe()
    line = "".join(f"{i:07d}," for i in range(100_000)) + "\n"  # 800,001 characters
    data = line.encode()

    def produce() -> None:
        for at in range(0, len(data), 4096):
            os.write(write_fd, data[at : at + 4096])
        os.close(write_fd)

    writer = threading.Thread(target=produce, daemon=True)
    writer.start()
    try:
        got = list(QuietLines(read_fd, "utf-8", csv_quotes=False))
        assert [g for g in got if g != "\n"] == [line]  # quiet spells aside
    finally:
        writer.join(10)
        os.close(read_fd)


# --- wide headers -----------------------------------------------------------------------------


def test_a_50000_column_header_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{j}" for j in range(50_000)) + "\n" + ",".join("x" * 50_000) + "\n")
    started = time.monotonic()
    result = _sync(str(path), "--dry-run", "--results", str(tmp_path / "r.jsonl"))
    _one_line_error(result, "line 1: the header has 50,000 columns", f"at most {MAX_COLUMNS:,}")
    assert time.monotonic() - started < 60  # no timing goal: only "not minutes" (was 157 s)


def test_a_header_at_the_column_cap_is_read(tmp_path: Path) -> None:
    path = _csv(tmp_path / "wide.csv", MAX_COLUMNS, 3)
    chunks = _chunks(path)
    assert len(chunks[0].frame.columns) == MAX_COLUMNS
    assert sum(len(c) for c in chunks) == 3


def test_duplicate_names_in_a_wide_header_are_still_named(tmp_path: Path) -> None:
    names = [f"c{j}" for j in range(5_000)] + ["c17", "c42"]
    path = tmp_path / "dupes.csv"
    path.write_text(",".join(names) + "\n")
    result = _sync(str(path), "--dry-run", "--results", str(tmp_path / "r.jsonl"))
    _one_line_error(result, "duplicate column names in the header: c17, c42")


def test_a_jsonl_object_with_too_many_keys_is_an_invalid_row(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    huge = {"id": "u2", **{f"k{j}": j for j in range(MAX_COLUMNS + 1)}}
    path.write_text(
        json.dumps({"id": "u1"}) + "\n" + json.dumps(huge) + "\n" + json.dumps({"id": "u3"}) + "\n"
    )
    chunks = _chunks(path)
    assert [r for c in chunks for r in c.rows] == [1, 3]
    (bad,) = [b for c in chunks for b in c.bad_rows]
    assert bad[0] == 2 and f"at most {MAX_COLUMNS:,}" in bad[1]
    assert all(len(c.frame.columns) <= MAX_COLUMNS for c in chunks)


# --- JSON integers stay exact -----------------------------------------------------------------


def test_jsonl_integers_beyond_2_53_are_sent_exactly(tmp_path: Path) -> None:
    big = 2**53 + 1  # a float64 would make it 2**53
    path = tmp_path / "in.jsonl"
    rows = [
        {"id": big, "score": big},
        {"id": "u2", "other": 1},  # no score: the column mixes ints and missing values
        {"id": "u3", "score": 2**64 - 1, "low": -(2**63)},
        {"id": "u4", "score": 2**64 + 1},  # beyond 64 bits: no JSON tool keeps it exact
        {"id": "u5", "phone": "12345678901234567890123"},  # digits in a string are text
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    results = tmp_path / "r.jsonl"
    result = _sync(str(path), "--dry-run", "--results", str(results))
    assert result.exit_code == 1, result.output  # row 4 is invalid
    # Parsed with the standard library: orjson would round what it cannot hold.
    lines = [json.loads(raw) for raw in results.read_text().splitlines()[1:]]
    by_row = {line["row"]: line for line in lines if "row" in line}  # not the end line
    assert by_row[1]["id"] == str(big)
    assert by_row[1]["payload"] == {"id": big, "score": big}
    assert by_row[2]["payload"] == {"id": "u2", "other": 1}
    assert by_row[3]["payload"] == {"id": "u3", "score": 2**64 - 1, "low": -(2**63)}
    assert by_row[4]["status"] == "invalid"
    assert by_row[4]["error"].startswith("score: an integer beyond 64 bits")
    assert by_row[5]["payload"] == {"id": "u5", "phone": "12345678901234567890123"}


def test_a_nested_integer_beyond_64_bits_is_named(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        json.dumps({"id": "u1", "data": {"items": [1, {"n": 2**70}]}})
        + "\n"
        + json.dumps({"id": "u2", "big": 1e19, "small": -1.5})  # floats as written: fine
        + "\n"
    )
    (chunk,) = _chunks(path)
    assert chunk.bad_rows == [
        (
            1,
            "data.items.n: an integer beyond 64 bits cannot be sent exactly (JSON tools read it"
            " as a rounded float); write it as a string",
        )
    ]
    assert chunk.rows == [2]
    assert chunk.frame["big"].tolist() == [1e19]


def test_jsonl_big_integers_reach_the_api_exactly(tmp_path: Path, api_env: ServerThread) -> None:
    big = 2**53 + 1
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "u1", "score": big}) + "\n")
    results = tmp_path / "r.jsonl"
    result = _sync(str(path), "--results", str(results), "--quiet")
    assert result.exit_code == 0, result.output
    person = api_env.person("u1")
    assert person is not None
    assert person["attributes"]["score"] == big  # the simulator parses with json: exact ints
    assert type(person["attributes"]["score"]) is int


# --- FIFOs and /dev/fd/N: read as streams -----------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, threading.Event, list[bytes]]]:
    """A FIFO, and a writer thread that writes the bytes put in the list once the event is set
    (and the FIFO opened for reading); unblocked at the end if no reader ever came."""
    path = tmp_path / "input.fifo"
    os.mkfifo(path)
    go = threading.Event()
    data: list[bytes] = []

    def write() -> None:
        go.wait(30)
        with open(path, "wb") as f:  # blocks until a reader opens it
            for block in data:
                f.write(block)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    yield path, go, data
    go.set()
    if writer.is_alive():  # no reader came: open it to let the writer finish
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        writer.join(10)
        os.close(fd)


def test_a_fifo_is_a_stream_never_fingerprinted(
    fifo: tuple[Path, threading.Event, list[bytes]],
) -> None:
    path, _, _ = fifo
    assert is_stream(str(path)) and is_stream("-")
    assert not is_stream(str(path.parent))
    # Fingerprinting would read (consume) it, or block until a writer came.
    assert InputIdentity.of(str(path)) == InputIdentity(str(path))


def test_a_fifo_input_is_sent(
    tmp_path: Path, api_env: ServerThread, fifo: tuple[Path, threading.Event, list[bytes]]
) -> None:
    path, go, data = fifo
    data.append(b"id,email\n")
    data += [f"u{i},u{i}@example.com\n".encode() for i in range(1, 501)]
    go.set()
    results = tmp_path / "r.jsonl"
    argv = ["--format", "csv", "--rate", "0", "--results", str(results), "--quiet"]
    result = _sync(str(path), *argv)
    assert result.exit_code == 0, result.output
    assert len(read_results(results)) == 500
    assert {line["status"] for line in read_results(results)} == {"ok"}
    assert api_env.person("u500") is not None


def test_a_fifo_without_extension_guesses_its_format(
    tmp_path: Path, fifo: tuple[Path, threading.Event, list[bytes]]
) -> None:
    path, go, data = fifo
    data.append(b'{"id": "u1", "plan": "pro"}\n{"id": "u2"}\n')
    go.set()
    results = tmp_path / "r.jsonl"
    result = _sync(str(path), "--dry-run", "--results", str(results))
    assert result.exit_code == 0, result.output
    assert [line["payload"] for line in read_results(results)] == [
        {"id": "u1", "plan": "pro"},
        {"id": "u2"},
    ]


def test_dev_fd_of_a_pipe_is_read(tmp_path: Path) -> None:
    """`bulksync sync <(zcat export.csv.gz)`: the shell passes /dev/fd/N, a pipe."""
    read_fd, write_fd = os.pipe()
    results = tmp_path / "r.jsonl"
    argv = [sys.executable, "-m", "bulksync", "sync", f"/dev/fd/{read_fd}", "--dry-run"]
    proc = subprocess.Popen(
        [*argv, "--results", str(results)],
        pass_fds=(read_fd,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    os.close(read_fd)
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(gzip.decompress(gzip.compress(b"id,plan\nu1,pro\nu2,team\n")))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert [line["payload"] for line in read_results(results)] == [
        {"id": "u1", "plan": "pro"},
        {"id": "u2", "plan": "team"},
    ]


def test_gzip_stream_from_a_fifo(
    tmp_path: Path, fifo: tuple[Path, threading.Event, list[bytes]]
) -> None:
    path, go, data = fifo
    data.append(gzip.compress(b"id,plan\nu1,pro\n"))
    go.set()
    results = tmp_path / "r.jsonl"
    result = _sync(str(path), "--format", "csv", "--dry-run", "--results", str(results))
    assert result.exit_code == 0, result.output
    assert [line["payload"] for line in read_results(results)] == [{"id": "u1", "plan": "pro"}]
