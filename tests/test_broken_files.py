"""Broken and odd files, as users' exports really are: each file is built here, then run through
the command (`bulksync sync FILE --dry-run`, and for quotes a real send to the simulator).

Every case ends one of two ways: every data row has exactly one outcome line, valid rows carrying
exactly what the file meant; or the run exits 2 with one line naming the line to fix, and nothing
is sent.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksync.cli import main
from bulksync.errors import InputError
from bulksync.source import Chunk, SourceOptions, read_chunks

from .conftest import ServerThread, read_results

# --- helpers --------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def dry_run(path: Path, *args: str) -> tuple[Result, dict[int, dict[str, Any]]]:
    """`bulksync sync PATH --dry-run ARGS`: the result, and the outcome lines by row (each row
    at most once)."""
    result = CliRunner().invoke(main, ["sync", str(path), "--dry-run", *args])
    assert "Traceback" not in result.output, result.output
    results = Path(f"{path}.dry-run.jsonl")
    lines = read_results(results) if results.exists() else []
    rows = [line["row"] for line in lines]
    assert len(rows) == len(set(rows)), f"a row has two outcomes: {rows}"
    return result, {line["row"]: line for line in lines}


def send(path: Path, *args: str) -> Result:
    """A real send to the simulator (the `api_env` fixture sets the environment)."""
    result = CliRunner().invoke(main, ["sync", str(path), "--rate", "0", *args])
    assert "Traceback" not in result.output, result.output
    return result


def assert_stops(result: Result, *fragments: str) -> None:
    """Exit 2, with one line on stderr (a warning aside) that says what is wrong and where."""
    assert result.exit_code == 2, (result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def payloads(rows: dict[int, dict[str, Any]]) -> dict[int, Any]:
    """row -> payload for valid rows, row -> (line, error) for invalid ones."""
    return {
        row: line["payload"] if line["status"] == "valid" else (line.get("line"), line["error"])
        for row, line in rows.items()
    }


def chunks_of(path: Path, **options: Any) -> list[Chunk]:
    return list(read_chunks(str(path), SourceOptions(**options)))


def lines_of(chunks: list[Chunk]) -> dict[int, int]:
    """row -> line, good and bad rows alike; each row once."""
    out: dict[int, int] = {}
    for chunk in chunks:
        assert sorted(chunk.lines) == sorted([*chunk.rows, *(r for r, _ in chunk.bad_rows)])
        out.update(chunk.lines)
    return out


NOT_CLOSED = "a quoted field is not closed; the row is left out"


# --- broken quotes --------------------------------------------------------------------------

# A quote opened on line 3 is never closed: csv would swallow lines 4-6 into one cell, and
# the run would send that cell and lose rows 3-5. Line 5 has a properly quoted field.
UNTERMINATED_MID = (
    "id,email,note\n"
    "1,a@example.com,first\n"
    '2,b@example.com,"Big deal\n'
    "3,c@example.com,plain\n"
    '4,d@example.com,"quoted, with a comma"\n'
    "5,e@example.com,last\n"
)
EXPECTED_MID = {
    1: {"id": "1", "email": "a@example.com", "note": "first"},
    2: (3, f"line 3: {NOT_CLOSED}"),
    3: {"id": "3", "email": "c@example.com", "note": "plain"},
    4: {"id": "4", "email": "d@example.com", "note": "quoted, with a comma"},
    5: {"id": "5", "email": "e@example.com", "note": "last"},
}


def test_unterminated_quote_mid_file(tmp_path: Path) -> None:
    result, rows = dry_run(write(tmp_path, "in.csv", UNTERMINATED_MID))
    assert result.exit_code == 1
    assert payloads(rows) == EXPECTED_MID


# The quote on the last row runs to the end of the file.
UNTERMINATED_END = 'id,email,note\n1,a@example.com,ok\n2,b@example.com,"never closed\n'


def test_unterminated_quote_at_the_end(tmp_path: Path) -> None:
    result, rows = dry_run(write(tmp_path, "in.csv", UNTERMINATED_END))
    assert result.exit_code == 1
    assert payloads(rows) == {
        1: {"id": "1", "email": "a@example.com", "note": "ok"},
        2: (3, f"line 3: {NOT_CLOSED}"),
    }


UNESCAPED = (
    "id,note\n"
    '1,"He said "hi" there"\n'
    '2,"Big" Bob\n'
    '3,"say ""hi"""\n'  # escaped properly: fine
    "4,6'2\" tall\n"  # a quote inside an unquoted field: fine, as every reader takes it
)


def test_unescaped_inner_quotes(tmp_path: Path) -> None:
    result, rows = dry_run(write(tmp_path, "in.csv", UNESCAPED))
    assert result.exit_code == 1
    reason = (
        "a quoted field has text after its closing quote"
        ' (inside quotes, a quote is written twice: ""); the row is left out'
    )
    assert payloads(rows) == {
        1: (2, f"line 2: {reason}"),
        2: (3, f"line 3: {reason}"),
        3: {"id": "3", "note": 'say "hi"'},
        4: {"id": "4", "note": "6'2\" tall"},
    }


@pytest.mark.parametrize(
    ("content", "accepted"),
    [
        (
            UNTERMINATED_MID,
            {
                "1": [{"id": "1", "email": "a@example.com", "note": "first"}],
                "3": [{"id": "3", "email": "c@example.com", "note": "plain"}],
                "4": [{"id": "4", "email": "d@example.com", "note": "quoted, with a comma"}],
                "5": [{"id": "5", "email": "e@example.com", "note": "last"}],
            },
        ),
        (UNTERMINATED_END, {"1": [{"id": "1", "email": "a@example.com", "note": "ok"}]}),
        (
            UNESCAPED,
            {"3": [{"id": "3", "note": 'say "hi"'}], "4": [{"id": "4", "note": "6'2\" tall"}]},
        ),
    ],
    ids=["unterminated-mid", "unterminated-end", "unescaped"],
)
@pytest.mark.parametrize("batch", [False, True])
def test_broken_quotes_reach_the_api_as_the_file_meant(
    api_env: ServerThread,
    tmp_path: Path,
    content: str,
    accepted: dict[str, Any],
    batch: bool,
) -> None:
    path = write(tmp_path, "in.csv", content)
    result = send(path, *(["--batch"] if batch else []))
    assert result.exit_code == 1, result.output  # the broken rows are invalid
    assert api_env.fake.accepted() == accepted
    outcomes = read_results(Path(f"{path}.results.jsonl"))
    rows = sorted(line["row"] for line in outcomes)
    assert rows == list(range(1, len(rows) + 1))  # no row vanished
    assert {line["status"] for line in outcomes} == {"ok", "invalid"}


# The quote opened on line 2 is closed by a stray inch mark on line 5: the cell it makes has
# the header's width, but lines 3 and 4 are rows of their own. Reading from line 3 again, line 5
# has an unbalanced quote: where the damage ends cannot be told.
STRAY_CLOSE = 'id,note\n1,"runaway\n2,x\n3,y\n4,z 6\'2"\n5,w\n'
# A multi-line cell with an unescaped quote on its first line: reading line 3 as a row would
# send its text as a person.
BAD_QUOTE_IN_CELL = 'id,note\n1,"He said "hi"\nand left",x\n2,y\n'


@pytest.mark.parametrize(
    ("content", "line"),
    [(STRAY_CLOSE, 2), (BAD_QUOTE_IN_CELL, 2)],
    ids=["stray-close", "bad-quote-in-cell"],
)
def test_damage_that_cannot_be_bounded_stops_the_run(
    api_env: ServerThread, tmp_path: Path, content: str, line: int
) -> None:
    path = write(tmp_path, "in.csv", content)
    result, _ = dry_run(path)
    assert_stops(
        result, f"line {line}: a quoted field is not closed", f"fix the quotes on line {line}"
    )
    assert_stops(send(path), f"line {line}:")
    assert api_env.fake.accepted() == {}


@pytest.mark.parametrize("chunk_size", ["1", "2", "3", "100"])
def test_a_broken_quote_across_chunks_keeps_every_row_once(tmp_path: Path, chunk_size: str) -> None:
    path = write(tmp_path, "in.csv", UNTERMINATED_MID)
    result, rows = dry_run(path, "--chunk-size", chunk_size)
    assert result.exit_code == 1
    assert payloads(rows) == EXPECTED_MID


def test_a_quote_that_runs_to_the_end_of_a_long_file(tmp_path: Path) -> None:
    """No quote after it: csv reads to the end of the file (or to its field size limit, 131,072
    characters, whichever comes first); every row after it is read again."""
    body = "".join(f"{i},u{i}@example.com,{'x' * 60}\n" for i in range(3, 3003))
    content = 'id,email,note\n1,a@example.com,ok\n2,b@example.com,"oops\n' + body
    result, rows = dry_run(write(tmp_path, "in.csv", content), "--chunk-size", "500")
    assert result.exit_code == 1
    assert sorted(rows) == list(range(1, 3003))
    assert rows[2]["status"] == "invalid" and rows[2]["line"] == 3
    assert all(rows[i]["status"] == "valid" for i in rows if i != 2)
    assert rows[3002]["payload"] == {"id": "3002", "email": "u3002@example.com", "note": "x" * 60}


def test_a_broken_quote_among_the_lines_read_to_detect_the_delimiter(tmp_path: Path) -> None:
    """The lines read ahead to choose ';' are read again as rows, broken quote included."""
    content = 'id;note\n1;a\n2;"never closed\n3;b\n4;"c"\n5;d\n6;e\n7;f\n'
    result, rows = dry_run(write(tmp_path, "in.csv", content))
    assert "detected ';'" in result.stderr
    assert payloads(rows) == {
        1: {"id": "1", "note": "a"},
        2: (3, f"line 3: {NOT_CLOSED}"),
        **{i: {"id": str(i), "note": n} for i, n in zip(range(3, 8), "bcdef", strict=True)},
    }


def test_legitimate_multi_line_cells_are_kept(tmp_path: Path) -> None:
    """Cells with line breaks, commas and doubled quotes, CRLF inside and between rows: no
    false alarm, even where a cell's lines hold commas."""
    content = (
        "id,note\r\n"
        '1,"Dear John,\nThanks, see you.\nBye"\r\n'
        '2,"12 Main St, Apt 4\r\nSpringfield, IL"\r\n'
        '3,"one\n\nthree ""quoted"", four"\r\n'
        "4,plain\r\n"
    )
    result, rows = dry_run(write(tmp_path, "in.csv", content))
    assert result.exit_code == 0, result.output
    assert payloads(rows) == {
        1: {"id": "1", "note": "Dear John,\nThanks, see you.\nBye"},
        2: {"id": "2", "note": "12 Main St, Apt 4\r\nSpringfield, IL"},
        3: {"id": "3", "note": 'one\n\nthree "quoted", four'},
        4: {"id": "4", "note": "plain"},
    }


def test_a_broken_quote_on_a_trickling_pipe(tmp_path: Path) -> None:
    """The same rule on standard input read as it arrives (lines re-read after the broken
    quote are fed to the csv reader again, not to the pipe)."""
    results = tmp_path / "stdin.results.jsonl"
    argv = [sys.executable, "-m", "bulksync", "sync", "-", "--dry-run", "--results", str(results)]
    proc = subprocess.run(
        argv, input=UNTERMINATED_MID.encode(), capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 1, proc.stderr
    assert payloads({line["row"]: line for line in read_results(results)}) == EXPECTED_MID


def _line_ends(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


# Cells with the characters that matter to CSV; at most two line breaks a row, so that no
# record has two whole lines inside it (the rule's one blind spot, documented in source.py).
CELL = st.text(alphabet='ab ,;"\n\r\t', max_size=8)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[int, list[list[str]], str]:
    width = draw(st.integers(1, 4))
    terminator = draw(st.sampled_from(["\r\n", "\n"]))
    rows = draw(st.lists(st.lists(CELL, min_size=width, max_size=width), max_size=12))
    if terminator == "\n":
        # csv.writer quotes only the line ends of its own terminator: a bare CR would be
        # written unquoted, a line end no reader could tell from a row's end.
        rows = [[c.replace("\r", "") for c in r] for r in rows]
    rows = [r for r in rows if sum(_line_ends(c) for c in r) <= 2]
    return width, rows, terminator


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=well_formed())
def test_a_well_formed_file_reads_as_written(
    tmp_path: Path, case: tuple[int, list[list[str]], str]
) -> None:
    """Whatever csv.writer writes (quotes, delimiters, line breaks in cells, CRLF or LF) reads
    back as the same rows, no false alarm, each row on the line it was written."""
    width, written, terminator = case
    header = [f"c{i}" for i in range(width)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=terminator)
    writer.writerow(header)
    expected_lines, line = [], 2
    for row in written:
        expected_lines.append(line)
        before = out.tell()
        writer.writerow(row)
        line += _line_ends(out.getvalue()[before:])
    path = write(tmp_path, "in.csv", out.getvalue())
    chunks = chunks_of(path, chunk_size=5, delimiter=",")
    assert [c for chunk in chunks for c in chunk.frame.to_numpy().tolist()] == written
    assert [r for chunk in chunks for r in chunk.rows] == list(range(1, len(written) + 1))
    assert all(not chunk.bad_rows for chunk in chunks)
    assert lines_of(chunks) == dict(enumerate(expected_lines, start=1))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cells=st.lists(
        st.lists(st.text(alphabet="ab xy", max_size=5), min_size=3, max_size=3),
        min_size=1,
        max_size=15,
    ),
    at=st.integers(0, 14),
    column=st.integers(0, 2),
)
def test_one_unclosed_quote_costs_one_row(
    tmp_path: Path, cells: list[list[str]], at: int, column: int
) -> None:
    """A file without quotes but one that is never closed: that row is invalid on its line,
    every other row reads as written."""
    at %= len(cells)
    lines = ["a,b,c", *(",".join(row) for row in cells)]
    lines[at + 1] = ",".join(
        ('"' + cell) if i == column else cell for i, cell in enumerate(cells[at])
    )
    chunks = chunks_of(write(tmp_path, "in.csv", "\n".join(lines) + "\n"), chunk_size=4)
    assert [r for chunk in chunks for r, _ in chunk.bad_rows] == [at + 1]
    assert [reason for chunk in chunks for _, reason in chunk.bad_rows] == [
        f"line {at + 2}: {NOT_CLOSED}"
    ]
    good = [row for i, row in enumerate(cells) if i != at]
    assert [c for chunk in chunks for c in chunk.frame.to_numpy().tolist()] == good
    assert lines_of(chunks) == {i: i + 1 for i in range(1, len(cells) + 1)}


# --- delimiters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delimiter", "shown"), [(";", "';'"), ("\t", "tab"), ("|", "'|'")], ids=["semi", "tab", "pipe"]
)
def test_the_delimiter_is_detected_and_said(tmp_path: Path, delimiter: str, shown: str) -> None:
    content = f"id{delimiter}email{delimiter}city\n1{delimiter}a@example.com{delimiter}Paris, FR\n"
    result, rows = dry_run(write(tmp_path, "in.csv", content))
    assert result.exit_code == 0, result.output
    assert f"detected {shown} as the delimiter" in result.stderr
    assert "pass --delimiter" in result.stderr
    assert payloads(rows) == {1: {"id": "1", "email": "a@example.com", "city": "Paris, FR"}}


def test_the_detected_delimiter_is_the_one_the_rows_agree_with(tmp_path: Path) -> None:
    """The header splits on ';' into 2 and on '|' into 3, but the rows have 2 ';'-fields."""
    content = "id;email|x|y\n1;a@example.com\n2;b@example.com\n"
    result, rows = dry_run(write(tmp_path, "in.csv", content))
    assert "detected ';'" in result.stderr
    assert rows[1]["payload"] == {"id": "1", "email|x|y": "a@example.com"}


def test_no_detection_when_the_delimiter_is_given_or_the_header_has_commas(tmp_path: Path) -> None:
    result, rows = dry_run(write(tmp_path, "in.csv", "id,note\n1,a;b\n"))
    assert "detected" not in result.stderr and rows[1]["payload"] == {"id": "1", "note": "a;b"}
    path = write(tmp_path, "other.csv", "id;note\n1;a\n")
    result, _ = dry_run(path, "--delimiter", ",")
    assert "detected" not in result.stderr
    assert_stops(result, "neither 'id' nor 'email'")  # as asked: one column named 'id;note'


def test_excel_sep_line(tmp_path: Path) -> None:
    content = "sep=;\r\nid;email;note\r\n1;a@example.com;a,b\r\n2;b@example.com\r\n"
    path = write(tmp_path, "in.csv", content)
    result, rows = dry_run(path)
    assert "'sep=;'" in result.stderr
    assert payloads(rows) == {
        1: {"id": "1", "email": "a@example.com", "note": "a,b"},
        2: (4, "row has 2 fields but the header has 3"),  # the sep= line counts: line 4
    }
    assert lines_of(chunks_of(path)) == {1: 3, 2: 4}


def test_a_tsv_stays_tab(tmp_path: Path) -> None:
    result, rows = dry_run(write(tmp_path, "in.tsv", "id\tnote\n1\ta;b|c\n"))
    assert "detected" not in result.stderr
    assert rows[1]["payload"] == {"id": "1", "note": "a;b|c"}


# --- encodings ------------------------------------------------------------------------------

TEXT = "id,name\r\n1,Chloé Müller\r\n2,Zoë 🙂\r\n"
MEANT = {1: {"id": "1", "name": "Chloé Müller"}, 2: {"id": "2", "name": "Zoë 🙂"}}


@pytest.mark.parametrize(
    ("bom", "codec", "said"),
    [
        (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 (little-endian)"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 (big-endian)"),
        (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 (little-endian)"),
        (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 (big-endian)"),
        (codecs.BOM_UTF8, "utf-8", None),
    ],
)
@pytest.mark.parametrize("encoding", [[], ["--encoding", "latin-1"]], ids=["default", "latin-1"])
def test_a_byte_order_mark_decides_the_encoding(
    tmp_path: Path, bom: bytes, codec: str, said: str | None, encoding: list[str]
) -> None:
    result, rows = dry_run(write(tmp_path, "in.csv", bom + TEXT.encode(codec)), *encoding)
    assert result.exit_code == 0, result.output
    assert payloads(rows) == MEANT
    if said is not None or encoding:
        assert f"byte-order mark: reading it as {said or 'UTF-8'}" in result.stderr


def test_utf16_jsonl_with_a_bom(tmp_path: Path) -> None:
    content = '{"id": "1", "name": "Zoë"}\n\n{"id": "2"}\n'.encode("utf-16")
    path = write(tmp_path, "in.jsonl", content)
    _, rows = dry_run(path)
    assert payloads(rows) == {1: {"id": "1", "name": "Zoë"}, 2: {"id": "2"}}
    assert lines_of(chunks_of(path)) == {1: 1, 2: 3}


def test_cp1252_read_as_utf8_names_the_line_and_the_encoding(tmp_path: Path) -> None:
    content = "id,name\n1,Ann\n2,Zoé\n3,5 €\n".encode("cp1252")
    path = write(tmp_path, "in.csv", content)
    result, _ = dry_run(path)
    assert_stops(result, "line 3: not valid utf-8 text (byte 0xe9)", "--encoding cp1252")
    result, rows = dry_run(path, "--encoding", "cp1252")
    assert payloads(rows) == {
        1: {"id": "1", "name": "Ann"},
        2: {"id": "2", "name": "Zoé"},
        3: {"id": "3", "name": "5 €"},
    }


def test_an_undecodable_byte_deep_in_a_file_is_found_on_its_line(tmp_path: Path) -> None:
    """The decoder works a block at a time: the line is counted into the block."""
    body = "".join(f'{i},"note {i}\nsecond line"\n' for i in range(1, 3001))  # two lines a row
    content = ("id,note\n" + body).encode() + b"3001,caf\xe9\n"
    with pytest.raises(InputError, match=r"line 6002: not valid utf-8 text \(byte 0xe9\)"):
        chunks_of(write(tmp_path, "in.csv", content), chunk_size=1000)


# --- not CSV at all -------------------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return data.getvalue()


XLSX = _zip({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>"})
ODS = _zip({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet", "content.xml": b""})


def _parquet() -> bytes:
    data = io.BytesIO()
    pq.write_table(pa.table({"id": ["1", "2"], "n": [1, 2]}), data)
    return data.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("customers.xlsx", XLSX, ["is an Excel workbook (.xlsx)", "Save As", "CSV UTF-8"]),
        ("customers.csv", XLSX, ["is an Excel workbook (.xlsx)"]),  # the content decides
        ("customers.ods", ODS, ["OpenDocument spreadsheet"]),
        ("customers.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504), ["(.xls)"]),
        (
            "export.zip",
            _zip({"export/customers.csv": b"id\n1\n", "export/events.jsonl": b""}),
            ["zip archive holding export/customers.csv, export/events.jsonl", "unzip -p"],
        ),
        ("export.csv", _zip({"readme.txt": b""}), ["is a zip archive"]),
        ("data.parquet", _parquet(), ["is a Parquet file", "to_json"]),
        ("data.csv.bz2", b"BZh91AY&SY" + bytes(30), ["compressed with bzip2"]),
    ],
    ids=["xlsx", "xlsx-named-csv", "ods", "xls", "zip", "zip-other", "parquet", "bzip2"],
)
def test_workbooks_archives_and_binary_formats_say_what_to_do(
    tmp_path: Path, name: str, content: bytes, fragments: list[str]
) -> None:
    result, rows = dry_run(write(tmp_path, name, content), "--format", "csv")
    assert_stops(result, *fragments)
    assert rows == {}
    assert "--encoding" not in result.stderr  # never encoding hints for a workbook


# --- the header -----------------------------------------------------------------------------


def test_a_trailing_comma_on_every_line_is_an_ignored_column(tmp_path: Path) -> None:
    content = (
        "id,email,\n1,a@example.com,\n2,b@example.com\n3,c@example.com,oops\n4,d@example.com,,\n"
    )
    path = write(tmp_path, "in.csv", content)
    result, rows = dry_run(path)
    assert "unnamed column(s) ignored" in result.stderr
    assert payloads(rows) == {
        1: {"id": "1", "email": "a@example.com"},
        2: {"id": "2", "email": "b@example.com"},
        3: (4, "a value in column 3, which the header leaves unnamed"),
        4: {"id": "4", "email": "d@example.com"},
    }


def test_an_unnamed_column_before_a_named_one_stops_the_run(tmp_path: Path) -> None:
    result, _ = dry_run(write(tmp_path, "in.csv", "\nid,,email\n1,x,a@example.com\n"))
    assert_stops(result, "line 2: header column 2 has no name")


def test_ragged_rows_are_invalid_on_their_lines(tmp_path: Path) -> None:
    content = 'id,a,b\n1,x,y\n\n2,x\n3,"multi\nline",y,z\n4,x,y\n'
    _, rows = dry_run(write(tmp_path, "in.csv", content))
    assert payloads(rows) == {
        1: {"id": "1", "a": "x", "b": "y"},
        2: (4, "row has 2 fields but the header has 3"),
        3: (5, "row has 4 fields but the header has 3"),  # a multi-line cell in it: lines 5-6
        4: {"id": "4", "a": "x", "b": "y"},
    }


def test_duplicate_column_names_stop_the_run(tmp_path: Path) -> None:
    result, _ = dry_run(write(tmp_path, "in.csv", "id,email,email ,x,x\n1,a,b,c,d\n"))
    assert_stops(result, "line 1: duplicate column names in the header: email, x")


def test_spaces_around_column_names_are_removed_and_said(tmp_path: Path) -> None:
    result, rows = dry_run(write(tmp_path, "in.csv", " id ,email\t,name\n1,a@example.com,Ann\n"))
    assert "spaces around column names are removed: ' id ' as 'id', 'email\\t' as 'email'" in (
        result.stderr
    )
    assert payloads(rows) == {1: {"id": "1", "email": "a@example.com", "name": "Ann"}}


# --- line numbers ---------------------------------------------------------------------------


def test_mixed_line_ends(tmp_path: Path) -> None:
    """CRLF, LF and a lone CR each end a line; inside a quoted cell they are kept."""
    content = 'id,note\r\n1,a\n2,"x\r\ny"\r3,b\r\n\n4,c'
    path = write(tmp_path, "in.csv", content)
    _, rows = dry_run(path)
    assert payloads(rows) == {
        1: {"id": "1", "note": "a"},
        2: {"id": "2", "note": "x\r\ny"},
        3: {"id": "3", "note": "b"},
        4: {"id": "4", "note": "c"},
    }
    assert lines_of(chunks_of(path)) == {1: 2, 2: 3, 3: 5, 4: 7}


@pytest.mark.parametrize("chunk_size", [1, 2, 100])
def test_chunk_lines(tmp_path: Path, chunk_size: int) -> None:
    """`Chunk.lines`: every row, good or bad, with the line it starts on: the header, blank
    lines, multi-line cells and re-read lines counted, whatever the chunk boundaries."""
    content = (
        "\n"  # line 1: blank
        "id,note\n"  # 2: header
        "1,a\n"  # 3
        "\n"  # 4: blank
        '2,"two\nlines"\n'  # 5-6
        "3,x,extra\n"  # 7: ragged
        '4,"never closed\n'  # 8: broken, lines 9- read again
        "5,b\n"  # 9
        '6,"three\n\nlines"\n'  # 10-12
    )
    chunks = chunks_of(write(tmp_path, "in.csv", content), chunk_size=chunk_size)
    assert lines_of(chunks) == {1: 3, 2: 5, 3: 7, 4: 8, 5: 9, 6: 10}
    assert all(len(chunk) <= chunk_size for chunk in chunks)


def test_jsonl_lines_and_messages(tmp_path: Path) -> None:
    content = '{"id": "a"}\n\n  \n{"id": "b", \n[1]\n{"id": "c"}\n'
    path = write(tmp_path, "in.jsonl", content)
    assert lines_of(chunks_of(path)) == {1: 1, 2: 4, 3: 5, 4: 6}
    _, rows = dry_run(path)
    assert payloads(rows) == {
        1: {"id": "a"},
        2: (4, "malformed JSON: unexpected end of data (column 12)"),  # not orjson's "line 1"
        3: (5, "line is JSON list, not an object"),
        4: {"id": "c"},
    }


def test_the_results_name_the_line_of_an_invalid_row(tmp_path: Path) -> None:
    content = 'id,email\n\n1,a@example.com\n2,"multi\nline"\n3,not-an-email\n'
    _, rows = dry_run(write(tmp_path, "in.csv", content))
    assert rows[3]["status"] == "invalid" and rows[3]["line"] == 6


# --- environment ----------------------------------------------------------------------------


def test_no_file_is_left_behind_by_a_refused_input(tmp_path: Path) -> None:
    """A refused workbook creates no results file: nothing was read."""
    path = write(tmp_path, "in.xlsx", XLSX)
    dry_run(path)
    assert sorted(os.listdir(tmp_path)) == ["in.xlsx"]
