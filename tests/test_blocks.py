"""A file's CSV rows are read in blocks (pyarrow for a block of plain rows, the csv module for the
rest) while a pipe's are read a line at a time: both must give the same rows, row numbers, lines
and reasons, whatever the file holds."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bulksync.lines
from bulksync.errors import InputError
from bulksync.source import SourceOptions, read_chunks

HEADER = "id,email,name\n"


def _read(
    path: str, options: SourceOptions, column: str | None = None
) -> tuple[list[Any], list[Any], str | None]:
    """Every row as (row, line, cells), every unreadable row as (row, reason), and the error
    that stopped the reader, if any; `column`: read with read_chunks(column=...)."""
    rows: list[Any] = []
    bad: list[Any] = []
    try:
        for chunk in read_chunks(path, options, column=column):
            if options.format == "csv":
                assert all(str(dtype) == "str" for dtype in chunk.frame.dtypes)
            records = chunk.frame.to_dict("records")
            rows += [(n, chunk.lines.get(n), r) for n, r in zip(chunk.rows, records, strict=True)]
            bad += [(n, chunk.lines.get(n), why) for n, why in chunk.bad_rows]
    except InputError as exc:
        return rows, bad, str(exc).split(": ", 1)[1]  # the input's name differs
    return rows, bad, None


def _from_pipe(data: bytes, options: SourceOptions) -> tuple[list[Any], list[Any], str | None]:
    read_fd, write_fd = os.pipe()

    def write() -> None:
        with os.fdopen(write_fd, "wb") as out:
            out.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        return _read(f"/dev/fd/{read_fd}", options)
    finally:
        writer.join()
        os.close(read_fd)


def _compare(tmp_path: Path, data: bytes, **kwargs: Any) -> tuple[list[Any], list[Any]]:
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    options = SourceOptions(format="csv", **kwargs)
    from_file = _read(str(path), options)
    assert from_file == _from_pipe(data, options)
    # One column read alone: the same rows, numbers, lines and reasons, and that column.
    rows, bad, error = from_file
    alone = [(n, line, {"email": cells["email"]}) for n, line, cells in rows]
    assert _read(str(path), options, column="email") == (alone, bad, error)
    return from_file[0], from_file[1]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks of a few lines, so that one file has plain blocks and odd ones.
    monkeypatch.setattr(bulksync.lines, "TEXT_CHUNK", 64)
    monkeypatch.setattr(bulksync.lines, "READ_AHEAD", 128)


# No CR: a pipe's lines end at LF only (see lines.py), a file's at CR too.
_CELL = st.text(alphabet='ab é,"\n\x00\ufeff;', max_size=6)
_PLAIN = st.text(alphabet="abcxyz é-.@0189\ufeff", max_size=8)


def _quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


@st.composite
def _lines(draw: st.DrawFn) -> str:
    """A mostly plain file: rows of the header's width, and now and then a quoted cell, a
    multi-line cell, a blank line, a ragged row, a broken quote."""
    out = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["plain"] * 6 + ["quoted", "odd", "blank", "ragged"]))
        if kind == "plain":
            out.append(",".join(draw(st.lists(_PLAIN, min_size=3, max_size=3))) + "\n")
        elif kind == "quoted":
            out.append(",".join(_quoted(c) for c in draw(st.lists(_CELL, min_size=3, max_size=3))))
            out.append("\n")
        elif kind == "odd":  # anything: broken quotes, cells over lines, NULs, marks
            out.append(",".join(draw(st.lists(_CELL, min_size=1, max_size=4))) + "\n")
        elif kind == "blank":
            out.append("\n")
        else:
            out.append(",".join(draw(st.lists(_PLAIN, min_size=1, max_size=5))) + "\n")
    return "".join(out)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_lines(), chunk_size=st.integers(1, 30))
def test_blocks_read_what_lines_read(
    tmp_path: Path, small_blocks: None, body: str, chunk_size: int
) -> None:
    _compare(tmp_path, (HEADER + body).encode(), chunk_size=chunk_size)


def test_plain_blocks_keep_every_cell_as_written(tmp_path: Path) -> None:
    rows = [f"u{i},0{i}@example.com, spaced ,{i}.50\n" for i in range(3000)]
    data = ("id,email,note,amount\n" + "".join(rows)).encode()
    got, bad = _compare(tmp_path, data, chunk_size=700)
    assert bad == []
    assert len(got) == 3000
    assert got[0] == (
        1,
        2,
        {"id": "u0", "email": "00@example.com", "note": " spaced ", "amount": "0.50"},
    )
    assert got[-1][:2] == (3000, 3001)


def test_an_odd_row_among_plain_blocks_keeps_its_number_and_line(tmp_path: Path) -> None:
    plain = [f"u{i},u{i}@example.com,N{i}\n" for i in range(5000)]
    body = [*plain[:2500], "\n", 'u-x,"two\nlines",x\n', "ragged\n", *plain[2500:]]
    got, bad = _compare(tmp_path, (HEADER + "".join(body)).encode())
    assert len(got) == 5001
    assert got[2500] == (2501, 2503, {"id": "u-x", "email": "two\nlines", "name": "x"})
    assert got[2501][:2] == (2503, 2506)  # after the blank line, two-line cell and ragged row
    assert [(row, line) for row, line, _ in bad] == [(2502, 2505)]


def test_limit_stops_inside_a_block(tmp_path: Path) -> None:
    data = (HEADER + "".join(f"u{i},e{i},n\n" for i in range(1000))).encode()
    got, _ = _compare(tmp_path, data, limit=333, chunk_size=100)
    assert [row for row, _, _ in got] == list(range(1, 334))


def test_trailing_unnamed_column_in_a_plain_block(tmp_path: Path) -> None:
    # Every line ends with a delimiter: the unnamed last column is dropped, a value there is not.
    body = "".join(f"u{i},e{i},n{i},\n" for i in range(2000)) + "u-x,e,n,surprise\n"
    got, bad = _compare(tmp_path, (HEADER.rstrip("\n") + ",\n" + body).encode())
    assert len(got) == 2000
    assert got[5] == (6, 7, {"id": "u5", "email": "e5", "name": "n5"})
    assert [row for row, _, _ in bad] == [2001]


def test_cr_and_crlf_line_ends_in_blocks(tmp_path: Path) -> None:
    # Old Mac exports end lines with CR, Windows ones with CRLF; both count lines as LF does.
    body = "".join(f"u{i},e{i},n{i}" + ("\r" if i % 3 else "\r\n") for i in range(3000))
    path = tmp_path / "in.csv"
    path.write_bytes(("id,email,name\r\n" + body + "\r\nu-x,e,n\r").encode())
    got, bad, error = _read(str(path), SourceOptions())
    assert error is None and bad == []
    assert got[0] == (1, 2, {"id": "u0", "email": "e0", "name": "n0"})
    assert got[2999] == (3000, 3001, {"id": "u2999", "email": "e2999", "name": "n2999"})
    assert got[3000] == (3001, 3003, {"id": "u-x", "email": "e", "name": "n"})  # after a blank


def test_a_byte_order_mark_inside_the_file_stays_in_its_cell(tmp_path: Path) -> None:
    # Two exports concatenated: the second one's mark is data, as the csv module reads it.
    got, _ = _compare(tmp_path, (HEADER + "\ufeffu1,e1,n1\nu2,e2,n2\n").encode())
    assert [cells["id"] for _, _, cells in got] == ["\ufeffu1", "u2"]


_JSON_LINE = st.one_of(
    st.dictionaries(
        st.sampled_from(["id", "email", "n", "x"]),
        st.one_of(
            st.text(max_size=5),
            st.integers(-(2**70), 2**70),
            st.floats(allow_nan=False),
            st.booleans(),
            st.none(),
            st.lists(st.integers(), max_size=2),
        ),
    ).map(json.dumps),
    st.sampled_from(["", "[1]", "{", '{"id": 1e999}', '"text"', "{}", '{"id":"a"} x']),
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(_JSON_LINE, max_size=40), chunk_size=st.integers(1, 30))
def test_jsonl_blocks_read_what_lines_read(
    tmp_path: Path, small_blocks: None, lines: list[str], chunk_size: int
) -> None:
    data = "".join(line + "\n" for line in lines).encode()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    options = SourceOptions(format="jsonl", chunk_size=chunk_size)
    from_file = _read(str(path), options)
    assert from_file == _from_pipe(data, options)


def test_one_column_alone_of_a_file_without_rows_or_without_that_column(tmp_path: Path) -> None:
    """A header-only file still shows the column (as its one column, of strings); a column
    the header lacks gives every column, as without `column`."""
    path = tmp_path / "in.csv"
    path.write_text(HEADER)
    (chunk,) = read_chunks(str(path), column="email")
    assert list(chunk.frame.columns) == ["email"] and str(chunk.frame.dtypes.iloc[0]) == "str"
    path.write_text(HEADER + "1,a@example.com,Ann\n")
    (chunk,) = read_chunks(str(path), column="nope")
    assert chunk.frame.to_dict("records") == [{"id": "1", "email": "a@example.com", "name": "Ann"}]
