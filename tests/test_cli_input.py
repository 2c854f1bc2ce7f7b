"""Reading input through the real command: `bulksync sync INPUT --dry-run`, with click's CliRunner
(and one real subprocess for standard input). Each case checks the exit code and either the
results lines or the one-line error message."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main

from .conftest import read_results

# --- helpers --------------------------------------------------------------------------------


@dataclass
class Run:
    result: Result
    results_path: Path

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def lines(self) -> list[dict[str, Any]]:
        return read_results(self.results_path)

    def by_row(self) -> dict[int, dict[str, Any]]:
        lines = self.lines
        rows = [line["row"] for line in lines]
        assert len(rows) == len(set(rows)), f"a row has two outcomes: {rows}"
        return {line["row"]: line for line in lines}

    def payloads(self) -> dict[int, Any]:
        return {row: line.get("payload") for row, line in self.by_row().items()}


def sync(
    tmp_path: Path, name: str, content: str | bytes | None, *args: str, stdin: bytes | None = None
) -> Run:
    """`bulksync sync tmp_path/name --dry-run --results ... ARGS`, after writing `content` to
    the file (None: leave the path as it is)."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    results = tmp_path / "out.results.jsonl"
    target = "-" if name == "-" else str(path)
    argv = ["sync", target, "--dry-run", "--results", str(results), *args]
    return Run(CliRunner().invoke(main, argv, input=stdin), results)


def assert_clean_exit(run: Run, code: int) -> None:
    """The run exited with `code` on purpose: no exception escaped, no traceback printed."""
    assert run.exit_code == code, (run.result.output, run.result.exception)
    assert run.result.exception is None or isinstance(run.result.exception, SystemExit)
    assert "Traceback" not in run.result.output


def assert_input_error(run: Run, *fragments: str) -> None:
    """Exit 2 with one line on stderr that says what is wrong."""
    assert_clean_exit(run, 2)
    lines = run.result.stderr.splitlines()
    assert len(lines) == 1, run.result.stderr
    assert lines[0].startswith("bulksync: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


def valid(payload: dict[str, Any], row: int, identifier: str | None = None) -> dict[str, Any]:
    """The results line of a valid row in a dry run."""
    return {
        "row": row,
        "id": identifier if identifier is not None else payload["id"],
        "op": "people",
        "status": "valid",
        "http_status": None,
        "attempts": 0,
        "error": None,
        "payload": payload,
    }


def invalid(row: int, error: str, identifier: str | None = None, *, line: int) -> dict[str, Any]:
    """The results line of an invalid row, with the input line where the row starts."""
    return {
        "row": row,
        "id": identifier,
        "op": "people",
        "status": "invalid",
        "http_status": None,
        "attempts": 0,
        "error": error,
        "line": line,
    }


# --- the input as a whole: errors that stop the run (exit 2) --------------------------------


def test_missing_file(tmp_path: Path) -> None:
    run = sync(tmp_path, "nope.csv", None)
    assert_input_error(run, "nope.csv: no such file")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "exports.csv").mkdir()
    assert_input_error(sync(tmp_path, "exports.csv", None), "is a directory")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("in.csv", "", "is empty: expected a header row naming the columns"),
        ("in.jsonl", "\n\n", "is empty: expected one JSON object per line"),
        ("in.csv", "id,email,email\n1,a,b\n", "duplicate column names in the header: email"),
        ("in.csv", "id,,email\n1,a,b\n", "header column 2 has no name"),
        ("in.txt", "id\n1\n", "pass --format csv or --format jsonl"),
        ("in.csv", "name,zip\nAnn,01234\n", "neither 'id' nor 'email'"),
    ],
)
def test_whole_file_problems(tmp_path: Path, name: str, content: str, message: str) -> None:
    assert_input_error(sync(tmp_path, name, content), message)


def test_missing_id_column_lists_the_columns_found(tmp_path: Path) -> None:
    run = sync(tmp_path, "in.csv", "name,zip\nAnn,01234\n")
    assert_input_error(run, "--id-column", "columns found: name, zip")


def test_utf16_without_bom_read_as_utf8(tmp_path: Path) -> None:
    content = "id,email\n1,a@example.com\n".encode("utf-16-le")
    assert_input_error(sync(tmp_path, "in.csv", content), "is the file UTF-16?", "--encoding")
    run = sync(tmp_path, "in.csv", content, "--encoding", "utf-16-le")
    assert_clean_exit(run, 0)
    assert run.lines == [valid({"id": "1", "email": "a@example.com"}, 1)]


def test_latin1_file_needs_the_encoding_option(tmp_path: Path) -> None:
    content = "id,name\n1,Chloé Müller\n".encode("latin-1")
    assert_input_error(sync(tmp_path, "in.csv", content), "not valid utf-8 text", "--encoding")
    run = sync(tmp_path, "in.csv", content, "--encoding", "latin-1")
    assert_clean_exit(run, 0)
    assert run.lines == [valid({"id": "1", "name": "Chloé Müller"}, 1)]


@pytest.mark.parametrize("encoding", ["klingon", "hex"])
def test_unusable_encoding(tmp_path: Path, encoding: str) -> None:
    run = sync(tmp_path, "in.csv", "id\n1\n", "--encoding", encoding)
    assert_input_error(run, f"unknown text encoding '{encoding}'")


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(b"id,n\n" + b"".join(b"c%d,%d\n" % (i, i) for i in range(3000)))
    run = sync(tmp_path, "in.csv.gz", data[: len(data) // 2])
    assert_input_error(run, "in.csv.gz: cannot read:", "Compressed file ended")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id-column", "cid"], "--id-column 'cid': no such column in the input"),
        (["--id-column", "customer_id"], "an 'id' column would also be sent; pass --exclude id"),
        (["--timezone", "Mars/Olympus_Mons"], "--timezone 'Mars/Olympus_Mons': unknown time zone"),
        (["--timezone", "America"], "--timezone 'America': unknown time zone"),
        (["--exclude", "nope"], "--exclude 'nope': no such column in the input"),
    ],
)
def test_bad_column_options(tmp_path: Path, args: list[str], message: str) -> None:
    run = sync(tmp_path, "in.csv", "id,customer_id\n1,c1\n", *args)
    assert_input_error(run, message)


def test_id_column_with_id_excluded_is_fine(tmp_path: Path) -> None:
    content = "id,customer_id\n1,c1\n"
    run = sync(tmp_path, "in.csv", content, "--id-column", "customer_id", "--exclude", "id")
    assert_clean_exit(run, 0)
    assert run.lines == [valid({"customer_id": "c1"}, 1, "c1")]


def test_jsonl_keys_first_seen_after_the_first_chunk(tmp_path: Path) -> None:
    """The options are checked against the first chunk; keys that appear only later are
    still converted (created_at), validated (email) and never sent as a second id."""
    content = (
        '{"email": "a@example.com"}\n'
        '{"email": "b@example.com", "created_at": "2024-05-01T00:00:00Z"}\n'
        '{"email": "c@example.com", "id": "c-other"}\n'
        '{"email": "not-an-email"}\n'
    )
    run = sync(tmp_path, "in.jsonl", content, "--chunk-size", "1")
    assert_clean_exit(run, 1)
    rows = run.by_row()
    assert rows[1] == valid({"email": "a@example.com"}, 1, "a@example.com")
    assert rows[2] == valid(
        {"email": "b@example.com", "created_at": 1714521600}, 2, "b@example.com"
    )
    assert rows[3]["status"] == "invalid" and rows[3]["id"] == "c@example.com"
    assert rows[3]["error"].startswith("id: an 'id' attribute would differ from the identifier")
    assert rows[4]["error"].startswith("email: invalid email 'not-an-email'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--type", "zip"], "'zip' is not of the form NAME=VALUE"),
        (["--type", "zip=date"], "the type must be one of int, float, bool, str"),
        (["--type", "=int"], "is not of the form NAME=VALUE"),
        (["--delimiter", ";;"], "must be a single character"),
    ],
)
def test_bad_option_syntax(tmp_path: Path, args: list[str], message: str) -> None:
    run = sync(tmp_path, "in.csv", "id,zip\n1,01234\n", *args)
    assert_clean_exit(run, 2)
    assert message in run.result.stderr


# --- rows that cannot be parsed: invalid, and the run goes on (exit 1) -----------------------


def test_malformed_jsonl_lines(tmp_path: Path) -> None:
    content = '{"id": "a"}\n{"id": "b", \n[1, 2]\n\n{"id": "d"}\n'
    run = sync(tmp_path, "in.jsonl", content)
    assert_clean_exit(run, 1)
    rows = run.by_row()
    assert sorted(rows) == [1, 2, 3, 4]  # the blank line is not a row
    assert rows[1] == valid({"id": "a"}, 1)
    assert rows[2]["status"] == "invalid" and rows[2]["id"] is None
    assert rows[2]["error"].startswith("malformed JSON: unexpected end of data")
    assert rows[3] == invalid(3, "line is JSON list, not an object", line=3)
    assert rows[4] == valid({"id": "d"}, 4)


def test_ragged_csv_rows(tmp_path: Path) -> None:
    content = "id,a,b\n1,x,y\n2,x,y,z\n3,x\n4,x,y,,\n5,x,y\n"
    run = sync(tmp_path, "in.csv", content)
    assert_clean_exit(run, 1)
    assert run.lines == [
        valid({"id": "1", "a": "x", "b": "y"}, 1),
        invalid(2, "row has 4 fields but the header has 3", line=3),
        invalid(3, "row has 2 fields but the header has 3", line=4),
        valid({"id": "4", "a": "x", "b": "y"}, 4),  # trailing empty fields carry no data
        valid({"id": "5", "a": "x", "b": "y"}, 5),
    ]


def test_nul_in_a_cell(tmp_path: Path) -> None:
    run = sync(tmp_path, "in.csv", "id,name\n1,An\x00n\n2,Bob\n")
    assert_clean_exit(run, 1)
    assert run.lines == [
        invalid(1, "name: contains a NUL character", "1", line=2),
        valid({"id": "2", "name": "Bob"}, 2),
    ]


# --- what CSV means -------------------------------------------------------------------------


def test_utf8_bom(tmp_path: Path) -> None:
    run = sync(tmp_path, "in.csv", b"\xef\xbb\xbfid,email\n1,a@example.com\n")
    assert_clean_exit(run, 0)
    assert run.lines == [valid({"id": "1", "email": "a@example.com"}, 1)]


def test_quotes_newlines_and_crlf(tmp_path: Path) -> None:
    content = 'id,note\r\n1,"Moved office,\r\nnew address"\r\n2,"say ""hi"""\r\n3,plain\r\n'
    run = sync(tmp_path, "in.csv", content)
    assert_clean_exit(run, 0)
    assert run.payloads() == {
        1: {"id": "1", "note": "Moved office,\r\nnew address"},
        2: {"id": "2", "note": 'say "hi"'},
        3: {"id": "3", "note": "plain"},
    }


@pytest.mark.parametrize(
    ("name", "content", "args"),
    [
        ("in.csv", "id;note\n1;a,b\n", ["--delimiter", ";"]),
        ("in.csv", "id\tnote\n1\ta,b\n", ["--delimiter", "tab"]),
        ("in.tsv", "id\tnote\n1\ta,b\n", []),
    ],
)
def test_delimiters(tmp_path: Path, name: str, content: str, args: list[str]) -> None:
    run = sync(tmp_path, name, content, *args)
    assert_clean_exit(run, 0)
    assert run.lines == [valid({"id": "1", "note": "a,b"}, 1)]


def test_blank_lines_are_not_rows(tmp_path: Path) -> None:
    run = sync(tmp_path, "in.csv", "id\n\n1\n\n\n2\n\n")
    assert_clean_exit(run, 0)
    assert run.payloads() == {1: {"id": "1"}, 2: {"id": "2"}}


def test_zip_codes_stay_strings(tmp_path: Path) -> None:
    run = sync(tmp_path, "in.csv", "id,zip,n\n007,01234,42\n")
    assert_clean_exit(run, 0)
    assert run.lines == [valid({"id": "007", "zip": "01234", "n": "42"}, 1)]


def test_jsonl_numbers_stay_numbers(tmp_path: Path) -> None:
    content = '{"id": "a", "n": 42, "zip": "01234"}\n{"id": "b"}\n{"id": 7, "n": 1.5}\n'
    run = sync(tmp_path, "in.jsonl", content)
    assert_clean_exit(run, 0)
    assert run.payloads() == {
        1: {"id": "a", "n": 42, "zip": "01234"},
        2: {"id": "b"},
        3: {"id": 7, "n": 1.5},
    }
    assert type(run.payloads()[1]["n"]) is int  # 42, not 42.0
    assert run.by_row()[3]["id"] == "7"  # the identifier is the string in the URL


@pytest.mark.parametrize("name", ["in.csv.gz", "in.jsonl.gz"])
def test_gzip_input(tmp_path: Path, name: str) -> None:
    if name.startswith("in.csv"):
        text = "id,zip\n" + "".join(f"c{i},{i:05d}\n" for i in range(1, 6))
    else:
        text = "".join(f'{{"id": "c{i}", "zip": "{i:05d}"}}\n' for i in range(1, 6))
    run = sync(tmp_path, name, gzip.compress(text.encode()), "--chunk-size", "2")
    assert_clean_exit(run, 0)
    assert run.payloads() == {i: {"id": f"c{i}", "zip": f"{i:05d}"} for i in range(1, 6)}


def test_format_option_overrides_the_extension(tmp_path: Path) -> None:
    run = sync(tmp_path, "export.txt", '{"id": "a", "n": 1}\n', "--format", "jsonl")
    assert_clean_exit(run, 0)
    assert run.lines == [valid({"id": "a", "n": 1}, 1)]


# --- which rows: --limit, chunks -----------------------------------------------------------


def test_limit(tmp_path: Path) -> None:
    content = "id\n" + "".join(f"{i}\n" for i in range(1, 11))
    run = sync(tmp_path, "in.csv", content, "--limit", "4", "--chunk-size", "3")
    assert_clean_exit(run, 0)
    assert sorted(run.by_row()) == [1, 2, 3, 4]


@pytest.mark.parametrize("chunk_size", ["1", "3", "7"])
def test_chunk_boundaries_keep_every_row_once(tmp_path: Path, chunk_size: str) -> None:
    """Good rows, ragged rows, bad emails and blank lines spread over several chunks: every
    data row gets exactly one line, under its own row number."""
    lines = ["id,email"]
    line_of: dict[int, int] = {}
    for i in range(1, 12):
        line_of[i] = len(lines) + 1  # the line this row is written on
        if i % 4 == 0:
            lines.append(f"{i},x@example.com,extra")  # ragged
        elif i % 5 == 0:
            lines.append(f"{i},not-an-email")
        else:
            lines.append(f"{i},p{i}@example.com")
        if i % 3 == 0:
            lines.append("")  # a blank line, not a row
    run = sync(tmp_path, "in.csv", "\n".join(lines) + "\n", "--chunk-size", chunk_size)
    assert_clean_exit(run, 1)
    rows = run.by_row()
    assert sorted(rows) == list(range(1, 12))
    for i, line in rows.items():
        if i % 4 == 0:
            assert line == invalid(i, "row has 3 fields but the header has 2", line=line_of[i])
        elif i % 5 == 0:
            assert line["status"] == "invalid" and line["id"] == str(i)
            assert line["error"].startswith("email: invalid email 'not-an-email'")
            assert line["line"] == line_of[i]
        else:
            assert line == valid({"id": str(i), "email": f"p{i}@example.com"}, i)


# --- the results file -----------------------------------------------------------------------


def test_results_file_is_private_even_if_it_existed(tmp_path: Path) -> None:
    results = tmp_path / "out.results.jsonl"
    results.write_text('{"row": 1, "stale": true}\n')
    os.chmod(results, 0o644)
    run = sync(tmp_path, "in.csv", "id\n1\n")
    assert_clean_exit(run, 0)
    assert stat.S_IMODE(results.stat().st_mode) == 0o600
    assert run.lines == [valid({"id": "1"}, 1)]  # a dry run starts the file over


def test_new_results_file_is_private(tmp_path: Path) -> None:
    old = os.umask(0o000)  # even with a permissive umask
    try:
        run = sync(tmp_path, "in.csv", "id\n1\n")
    finally:
        os.umask(old)
    assert_clean_exit(run, 0)
    assert stat.S_IMODE(run.results_path.stat().st_mode) == 0o600


def test_header_only_file_has_zero_rows_and_a_warning(tmp_path: Path) -> None:
    run = sync(tmp_path, "in.csv", "id,email\n")
    assert_clean_exit(run, 0)
    assert run.lines == []
    assert "warning" in run.result.stderr.lower()
    assert "Traceback" not in run.result.stderr


# --- standard input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"id,zip\n1,01234\n2,\n", {1: {"id": "1", "zip": "01234"}, 2: {"id": "2"}}),
        (b'\n{"id": "1", "n": 42}\n{"id": "2"}\n', {1: {"id": "1", "n": 42}, 2: {"id": "2"}}),
    ],
    ids=["csv", "jsonl"],
)
def test_stdin_with_cli_runner(tmp_path: Path, data: bytes, expected: dict[int, Any]) -> None:
    run = sync(tmp_path, "-", None, stdin=data)
    assert_clean_exit(run, 0)
    assert run.payloads() == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"id,zip,created_at\r\n1,01234,2024-05-01\r\n2,,\r\n3\r\n",
            {
                1: {"id": "1", "zip": "01234", "created_at": 1714521600},
                2: {"id": "2"},
                3: None,
            },
        ),
        (
            b'{"id": "1", "n": 42, "created_at": 1714557600123}\n{"id": "2"}\n[3]\n',
            {1: {"id": "1", "n": 42, "created_at": 1714557600}, 2: {"id": "2"}, 3: None},
        ),
    ],
    ids=["csv", "jsonl"],
)
def test_stdin_in_a_real_process(tmp_path: Path, data: bytes, expected: dict[int, Any]) -> None:
    """`python -m bulksync sync - --dry-run`: the format is told by the first character."""
    results = tmp_path / "stdin.results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "bulksync", "sync", "-", "--dry-run", "--results", str(results)],
        input=data,
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr  # row 3 cannot be parsed
    assert b"Traceback" not in proc.stderr
    lines = {line["row"]: line for line in read_results(results)}
    assert {row: line.get("payload") for row, line in lines.items()} == expected
    assert lines[3]["status"] == "invalid"
    assert b"standard input" in proc.stdout
