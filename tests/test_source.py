"""source: chunked CSV / JSONL readers, on real files in tmp_path."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bulksync.errors import InputError, UsageError
from bulksync.source import Chunk, SourceOptions, detect_format, read_chunks

# --- helpers --------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def read_all(path: str, **options: Any) -> list[Chunk]:
    return list(read_chunks(path, SourceOptions(**options)))


def rows_of(chunks: list[Chunk]) -> list[dict[str, Any]]:
    """Every parsed row as {"row": n, **cells} (missing JSONL keys, NaN, left out), in order."""
    out: list[dict[str, Any]] = []
    for chunk in chunks:
        for row, record in zip(chunk.rows, chunk.frame.to_dict("records"), strict=True):
            out.append({"row": row} | {str(k): v for k, v in record.items() if not _absent(v)})
    return out


def bad_of(chunks: list[Chunk]) -> list[tuple[int, str]]:
    return [bad for chunk in chunks for bad in chunk.bad_rows]


def all_row_numbers(chunks: list[Chunk]) -> list[int]:
    return sorted([*(r for c in chunks for r in c.rows), *(r for r, _ in bad_of(chunks))])


def _absent(value: Any) -> bool:
    return isinstance(value, float) and pd.isna(value)


def csv_text(n: int) -> str:
    return "id,zip\n" + "".join(f"c{i},{i:05d}\n" for i in range(1, n + 1))


# --- CSV ------------------------------------------------------------------------------------


def test_csv_cells_stay_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", "id,zip,n,flag,empty\n1,01234,42,true,\n")
    [chunk] = read_all(path)
    assert chunk.rows == [1] and chunk.bad_rows == []
    assert list(chunk.frame.columns) == ["id", "zip", "n", "flag", "empty"]
    assert chunk.frame.iloc[0].tolist() == ["1", "01234", "42", "true", ""]
    assert all(pd.api.types.is_string_dtype(chunk.frame[c]) for c in chunk.frame.columns)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 11, 20_000])
def test_csv_chunks_are_bounded_and_rows_contiguous(tmp_path: Path, chunk_size: int) -> None:
    path = write(tmp_path, "in.csv", csv_text(10))
    chunks = read_all(path, chunk_size=chunk_size)
    assert all(0 < len(c) <= chunk_size for c in chunks)
    assert len(chunks) == -(-10 // chunk_size)
    assert rows_of(chunks) == [{"row": i, "id": f"c{i}", "zip": f"{i:05d}"} for i in range(1, 11)]


def test_reading_is_lazy(tmp_path: Path) -> None:
    """Memory is bounded by the chunk size: the first chunk comes before the rest of the file is
    read, so a problem at the end of a file is only met when the reader gets there."""
    path = write(tmp_path, "in.csv", csv_text(5000).encode() + b"c9,\xff\xfe\n")
    chunks = read_chunks(path, SourceOptions(chunk_size=100))
    first = next(chunks)
    assert first.rows == list(range(1, 101))
    # The header is line 1, so the 5,001st row is on line 5,002.
    with pytest.raises(InputError, match=r"line 5002: not valid utf-8 text \(byte 0xff"):
        for _ in chunks:
            pass


def test_blank_lines_are_skipped_and_not_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", "\n\nid,a\n\n1,x\n\n\n2,y\r\n\r\n3,z\n\n")
    chunks = read_all(path, chunk_size=2)
    assert rows_of(chunks) == [
        {"row": 1, "id": "1", "a": "x"},
        {"row": 2, "id": "2", "a": "y"},
        {"row": 3, "id": "3", "a": "z"},
    ]


def test_ragged_rows_become_bad_rows_and_later_rows_keep_their_numbers(tmp_path: Path) -> None:
    content = "id,a,b\n1,x,y\n2,x\n3,x,y,z\n4,x,y,,\n5\n6,x,y\n7,x,y,\n"
    chunks = read_all(write(tmp_path, "in.csv", content), chunk_size=3)
    assert bad_of(chunks) == [
        (2, "row has 2 fields but the header has 3"),
        (3, "row has 4 fields but the header has 3"),
        (5, "row has 1 fields but the header has 3"),
    ]
    assert [r["row"] for r in rows_of(chunks)] == [1, 4, 6, 7]  # trailing empty fields: fine
    assert rows_of(chunks)[1] == {"row": 4, "id": "4", "a": "x", "b": "y"}
    assert all(len(c) <= 3 for c in chunks)  # bad rows count towards the chunk size
    assert all_row_numbers(chunks) == list(range(1, 8))


def test_quoted_fields_crlf_and_header_spaces(tmp_path: Path) -> None:
    content = ' id , note \r\n1,"a, b"\r\n2,"line one\r\nline two"\r\n3,"say ""hi"""\r\n4,x\r\n'
    chunks = read_all(write(tmp_path, "in.csv", content))
    assert rows_of(chunks) == [
        {"row": 1, "id": "1", "note": "a, b"},
        {"row": 2, "id": "2", "note": "line one\r\nline two"},
        {"row": 3, "id": "3", "note": 'say "hi"'},
        {"row": 4, "id": "4", "note": "x"},
    ]


@pytest.mark.parametrize(
    ("name", "content", "delimiter"),
    [
        ("in.csv", "id;note\n1;a,b\n", ";"),
        ("in.csv", "id\tnote\n1\ta,b\n", "\t"),
        ("in.tsv", "id\tnote\n1\ta,b\n", None),
        ("in.TSV.gz", "id\tnote\n1\ta,b\n", None),
    ],
)
def test_delimiters(tmp_path: Path, name: str, content: str, delimiter: str | None) -> None:
    data = gzip.compress(content.encode()) if name.endswith(".gz") else content.encode()
    chunks = read_all(write(tmp_path, name, data), delimiter=delimiter)
    assert rows_of(chunks) == [{"row": 1, "id": "1", "note": "a,b"}]


def test_utf8_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    [chunk] = read_all(write(tmp_path, "in.csv", b"\xef\xbb\xbfid,name\n1,Zo\xc3\xab\n"))
    assert list(chunk.frame.columns) == ["id", "name"]
    assert rows_of([chunk]) == [{"row": 1, "id": "1", "name": "Zoë"}]


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16", "utf-16-le"])
def test_other_encodings(tmp_path: Path, encoding: str) -> None:
    path = write(tmp_path, "in.csv", "id,name\n1,Chloé\n".encode(encoding))
    assert rows_of(read_all(path, encoding=encoding)) == [{"row": 1, "id": "1", "name": "Chloé"}]


def test_limit_counts_bad_rows_too(tmp_path: Path) -> None:
    path = write(tmp_path, "in.csv", "id,a\n1,x\n2\n3,x\n4,x\n")
    chunks = read_all(path, limit=3)
    assert all_row_numbers(chunks) == [1, 2, 3]
    assert all_row_numbers(read_all(path, limit=100)) == [1, 2, 3, 4]


def test_header_only_file_yields_its_columns(tmp_path: Path) -> None:
    [chunk] = read_all(write(tmp_path, "in.csv", "id,email\n\n"))
    assert list(chunk.frame.columns) == ["id", "email"]
    assert len(chunk) == 0


def test_nul_in_a_cell_is_kept_for_normalize_to_refuse(tmp_path: Path) -> None:
    chunks = read_all(write(tmp_path, "in.csv", "id,a\n1,x\x00y\n2,z\n"))
    assert rows_of(chunks) == [
        {"row": 1, "id": "1", "a": "x\x00y"},
        {"row": 2, "id": "2", "a": "z"},
    ]


# --- CSV: whole-file problems ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty: expected a header row"),
        (b"\n\r\n\n", "is empty: expected a header row"),
        (b"id,a,a,b,b\n1,2,3,4,5\n", "duplicate column names in the header: a, b"),
        (b"id, email ,email\n", "duplicate column names in the header: email"),
        (b"id,,b\n1,2,3\n", "header column 2 has no name"),
        ("id,a\n1,x\n".encode("utf-16-le"), "is the file UTF-16? try --encoding utf-16"),
        ("id,a\n1,Chloé\n".encode("latin-1"), "line 2: not valid utf-8 text (byte 0xe9)"),
        ("id,a\n1,Chlo\x81\n".encode("latin-1"), "pass --encoding with the file's encoding"),
    ],
)
def test_csv_file_problems(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, "in.csv", content)
    with pytest.raises(InputError, match=re.escape(message)) as exc:
        read_all(path)
    assert "\n" not in str(exc.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.csv: no such file"):
        read_all(str(tmp_path / "nope.csv"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        read_all(str(tmp_path / "dir.csv"))


@pytest.mark.parametrize("encoding", ["no-such-codec", "hex", "rot13", "base64"])
@pytest.mark.parametrize("name", ["in.csv", "in.jsonl"])
def test_unusable_encoding_is_a_usage_error(tmp_path: Path, name: str, encoding: str) -> None:
    path = write(tmp_path, name, '{"id": 1}\n' if name.endswith("jsonl") else "id\n1\n")
    with pytest.raises(UsageError, match=f"unknown text encoding '{encoding}'"):
        read_all(path, encoding=encoding)


# --- gzip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["in.csv.gz", "in.csv", "in.CSV.GZ"])
def test_gzip_is_recognised_by_content(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, gzip.compress(csv_text(25).encode()))
    chunks = read_all(path, chunk_size=10)
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert rows_of(chunks)[0] == {"row": 1, "id": "c1", "zip": "00001"}


@pytest.mark.parametrize(("name", "text"), [("in.csv.gz", csv_text(2000)), ("in.jsonl.gz", "")])
def test_truncated_gzip_is_an_input_error(tmp_path: Path, name: str, text: str) -> None:
    text = text or "".join(f'{{"id": {i}}}\n' for i in range(2000))
    path = write(tmp_path, name, gzip.compress(text.encode())[:-40])
    with pytest.raises(InputError, match="cannot read: Compressed file ended"):
        read_all(path)


def test_corrupt_gzip_is_an_input_error(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(csv_text(50).encode()))
    data[-6] ^= 0xFF  # the CRC no longer matches
    with pytest.raises(InputError, match="cannot read: CRC check failed"):
        read_all(write(tmp_path, "in.csv.gz", bytes(data)))


# --- JSONL ----------------------------------------------------------------------------------


def test_jsonl_keeps_json_types(tmp_path: Path) -> None:
    content = (
        '{"id": 1, "n": 42, "zip": "01234", "x": 1.5, "ok": true, "o": {"a": [1]}}\n'
        '{"id": 2, "none": null}\n'
    )
    chunks = read_all(write(tmp_path, "in.jsonl", content))
    [first, second] = rows_of(chunks)
    # An object is kept as it is, for normalize to refuse.
    assert first == {
        "row": 1,
        "id": 1,
        "n": 42,
        "zip": "01234",
        "x": 1.5,
        "ok": True,
        "o": {"a": [1]},
    }
    assert type(first["n"]) is int  # not 42.0, though row 2 has no "n"
    assert second == {"row": 2, "id": 2, "none": None}  # null is None; a missing key is NaN


def test_jsonl_bad_lines_become_bad_rows(tmp_path: Path) -> None:
    content = b'{"id": 1}\n{"id": \n[1, 2]\n"text"\n42\n{"id": "\xff"}\n{"id": 7}\n'
    chunks = read_all(write(tmp_path, "in.jsonl", content), chunk_size=4)
    assert [r["row"] for r in rows_of(chunks)] == [1, 7]
    bad = dict(bad_of(chunks))
    assert sorted(bad) == [2, 3, 4, 5, 6]
    assert bad[2].startswith("malformed JSON: ")
    assert bad[3] == "line is JSON list, not an object"
    assert bad[4] == "line is JSON str, not an object"
    assert bad[5] == "line is JSON int, not an object"
    assert bad[6].startswith("malformed JSON: ")  # not UTF-8
    assert all(len(c) <= 4 for c in chunks)


def test_jsonl_blank_lines_bom_and_crlf(tmp_path: Path) -> None:
    content = b'\xef\xbb\xbf{"id": 1}\r\n\r\n   \n{"id": 2}\r\n\n{"id": 3}'
    chunks = read_all(write(tmp_path, "in.ndjson", content), chunk_size=2)
    assert rows_of(chunks) == [{"row": 1, "id": 1}, {"row": 2, "id": 2}, {"row": 3, "id": 3}]


def test_jsonl_with_another_encoding_and_limit(tmp_path: Path) -> None:
    content = '{"id": 1, "name": "Chloé"}\n{"id": 2}\n{"id": 3}\n'.encode("latin-1")
    path = write(tmp_path, "in.jsonl", content)
    chunks = read_all(path, encoding="latin-1", limit=2)
    assert rows_of(chunks) == [{"row": 1, "id": 1, "name": "Chloé"}, {"row": 2, "id": 2}]


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_jsonl_is_an_input_error(tmp_path: Path, content: str) -> None:
    with pytest.raises(InputError, match="is empty: expected one JSON object per line"):
        read_all(write(tmp_path, "in.jsonl", content))


def test_jsonl_chunks_are_bounded_and_rows_contiguous(tmp_path: Path) -> None:
    content = "".join(f'{{"id": {i}}}\n' if i % 4 else "[]\n" for i in range(1, 11))
    chunks = read_all(write(tmp_path, "in.jsonl", content), chunk_size=3)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert all_row_numbers(chunks) == list(range(1, 11))
    assert [r for r, _ in bad_of(chunks)] == [4, 8]


# --- format detection -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "head", "expected"),
    [
        ("a.csv", b"", "csv"),
        ("a.CSV", b"", "csv"),
        ("a.tsv", b"", "csv"),
        ("dir.v2/a.csv.gz", b"", "csv"),
        ("a.jsonl", b"", "jsonl"),
        ("a.ndjson.gz", b"", "jsonl"),
        ("my.data.jsonl", b"", "jsonl"),
        ("-", b'{"id": 1}', "jsonl"),
        ("-", b'\xef\xbb\xbf \r\n {"id": 1}', "jsonl"),
        ("-", b"id,email\n", "csv"),
        ("-", b"", "csv"),
    ],
)
def test_detect_format(path: str, head: bytes, expected: str) -> None:
    assert detect_format(path, head) == expected


@pytest.mark.parametrize("path", ["a.txt", "a", "a.gz", "a.json", "a.csv.bak"])
def test_unknown_extension_asks_for_format(path: str) -> None:
    with pytest.raises(UsageError, match="pass --format csv or --format jsonl"):
        detect_format(path, b"id\n")


def test_format_option_overrides_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "export.txt", '{"id": "a"}\n')
    assert rows_of(read_all(path, format="jsonl")) == [{"row": 1, "id": "a"}]
    path = write(tmp_path, "export.jsonl", "id\na\n")
    assert rows_of(read_all(path, format="csv")) == [{"row": 1, "id": "a"}]
