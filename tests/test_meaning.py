"""Validation follows what a column means, not what it is called: email checks on the identifier
and on columns named like an email column, trimmed addresses, `created_at` as sent, and
repeated identifiers reported and applied in file order (with `--state`, every night)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main

from .conftest import ServerThread, read_results


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def dry_run(tmp_path: Path, csv: str, *args: str) -> tuple[Result, dict[int, dict[str, Any]]]:
    source = tmp_path / "in.csv"
    source.write_text(csv, encoding="utf-8")
    result = invoke("sync", source, "--dry-run", *args)
    lines = read_results(Path(f"{source}.dry-run.jsonl")) if result.exit_code in (0, 1) else []
    return result, {line["row"]: line for line in lines}


def test_mailchimp_email_address_as_identifier_is_checked_and_trimmed(tmp_path: Path) -> None:
    csv = "Email Address,First Name\nnot-an-email,Ann\na@@b.com,Bob\n  cleo@example.com ,Cleo\n"
    result, rows = dry_run(tmp_path, csv, "--id-column", "Email Address")
    assert result.exit_code == 1, result.output
    assert rows[1]["status"] == rows[2]["status"] == "invalid"
    assert rows[1]["error"].startswith("Email Address: invalid email 'not-an-email'")
    assert rows[2]["error"].startswith("Email Address: invalid email 'a@@b.com'")
    assert (rows[3]["status"], rows[3]["id"]) == ("valid", "cleo@example.com")
    assert rows[3]["payload"] == {"Email Address": "cleo@example.com", "First Name": "Cleo"}


@pytest.mark.parametrize("name", ["E-mail", "EMAIL", "email_address", "Email Address"])
def test_columns_named_like_an_email_column_are_checked(name: str, tmp_path: Path) -> None:
    result, rows = dry_run(tmp_path, f"id,{name}\nc1,ann@example.com\nc2,nope\n")
    assert result.exit_code == 1, result.output
    assert rows[1]["status"] == "valid"
    assert rows[2]["error"].startswith(f"{name}: invalid email 'nope'")


def test_an_identifier_with_an_at_sign_is_checked_as_an_email(tmp_path: Path) -> None:
    csv = "contact,plan\ncust-1,pro\na@@b.com,pro\nann@example.com,pro\n"
    result, rows = dry_run(tmp_path, csv, "--id-column", "contact")
    assert result.exit_code == 1, result.output
    assert [rows[row]["status"] for row in (1, 2, 3)] == ["valid", "invalid", "valid"]
    assert rows[2]["error"].startswith("contact: invalid email 'a@@b.com'")


def test_an_error_about_an_address_with_spaces_blames_the_address(tmp_path: Path) -> None:
    result, rows = dry_run(tmp_path, "id,email\nc1, ann@@example.com \n")
    assert result.exit_code == 1
    assert rows[1]["error"].startswith("email: invalid email 'ann@@example.com'")


def test_created_at_is_a_date_as_sent_after_a_rename(tmp_path: Path) -> None:
    csv = "id,OPTIN_TIME,created_at\nc1,2024-05-01 10:00:00,2020-01-01\n"
    result, rows = dry_run(
        tmp_path, csv, "--rename", "OPTIN_TIME=created_at", "--rename", "created_at=first_seen"
    )
    assert result.exit_code == 0, result.output
    # Sent as created_at: converted; renamed away from it: sent as written.
    assert rows[1]["payload"] == {"id": "c1", "created_at": 1714557600, "first_seen": "2020-01-01"}


def test_rename_with_two_pairs_in_one_argument_is_refused(tmp_path: Path) -> None:
    result, _ = dry_run(tmp_path, "id,A,B\nc1,x,y\n", "--rename", "A=a,B=b")
    assert result.exit_code == 2
    assert "repeat --rename" in result.output


# --- repeated identifiers ----------------------------------------------------------------------


def versions_csv(path: Path, extra: list[str] | None = None) -> Path:
    """One person on five rows, v1..v5, among others; the file's last row for c1 is v5."""
    rows = ["c1,v1", "c2,a", "c1,v2", "c1,v3", "c3,b", "c1,v4", "c2,a2", "c1,v5", *(extra or [])]
    path.write_text("id,version\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_repeated_identifiers_are_counted_with_examples_in_the_summary(tmp_path: Path) -> None:
    source = versions_csv(tmp_path / "in.csv")
    result = invoke("sync", source, "--dry-run", "--json", "--chunk-size", "3")
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.output.strip().splitlines()[-1])
    assert summary["repeated"] == {
        "identifiers": 2,
        "rows": 5,
        "examples": [{"id": "c1", "rows": [1, 3, 4, 6, 8]}, {"id": "c2", "rows": [2, 7]}],
    }


@pytest.mark.parametrize(("people", "rows"), [(300, 2000), (6000, 9000)])
def test_repeats_counted_chunk_by_chunk_match_a_plain_count(people: int, rows: int) -> None:
    import random
    from collections import Counter

    from bulksync.operations import Record
    from bulksync.plan import Repeats, last_rows

    rng = random.Random(11)
    ids = [f"p{rng.randrange(people)}" for _ in range(rows)]
    chunks = [
        [Record(row, ids[row - 1], {}) for row in range(start, min(start + 137, rows + 1))]
        for start in range(1, rows + 1, 137)
    ]
    repeats = Repeats()
    for chunk in chunks:
        repeats.observe(chunk)
    counts = Counter(ids)
    assert repeats.identifiers == sum(1 for n in counts.values() if n > 1)
    assert repeats.rows == sum(n - 1 for n in counts.values())
    for identifier, rows in repeats.examples.items():
        assert rows == [r for r, i in enumerate(ids, start=1) if i == identifier][:5]
    last = {i: r for r, i in enumerate(ids, start=1)}
    expected = {r: last[i] for r, i in enumerate(ids, start=1) if last[i] != r}
    assert last_rows(chunks) == expected


@pytest.mark.parametrize("chunk_size", ["2", "100"])
@pytest.mark.parametrize("mode", [(), ("--batch",)])
def test_with_state_every_night_ends_on_the_files_last_row_and_an_unchanged_file_sends_nothing(
    chunk_size: str, mode: tuple[str, ...], api_env: ServerThread, tmp_path: Path
) -> None:
    source = versions_csv(tmp_path / "in.csv")
    state = tmp_path / "state.db"
    args = ("sync", source, "--state", state, "--rate", "0", "--concurrency", "1", "--json")
    sent_per_night, ok_per_night = [], []
    for night in range(3):
        before = len(api_env.fake.requests)
        result = invoke(*args, "--chunk-size", chunk_size, "--fresh", *mode)
        assert result.exit_code == 0, result.output
        accepted = api_env.fake.accepted()
        assert accepted["c1"][-1] == {"id": "c1", "version": "v5"}, night
        assert accepted["c2"][-1] == {"id": "c2", "version": "a2"}, night
        sent_per_night.append(len(api_env.fake.requests) - before - 1)  # - the credentials check
        lines = {line["row"]: line for line in read_results(Path(f"{source}.results.jsonl"))}
        assert [lines[row].get("superseded_by") for row in (1, 3, 4, 6, 2)] == [8, 8, 8, 8, 7]
        ok_per_night.append(sum(line["status"] == "ok" for line in lines.values()))
    assert ok_per_night == [3, 0, 0]  # c1 v5, c2 a2, c3 b; then nothing
    assert sent_per_night[1:] == [0, 0]


def test_with_state_from_stdin_the_last_row_still_wins(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """Standard input cannot be read ahead: each version is compared with the one before it
    (not with last night's), so the person still ends on the file's last row."""
    source = versions_csv(tmp_path / "in.csv")
    state = tmp_path / "state.db"
    for night in range(2):
        args = ["sync", "-", "--state", str(state), "--rate", "0", "--concurrency", "1"]
        results = ["--results", str(tmp_path / "stdin.results.jsonl")]
        result = CliRunner().invoke(main, [*args, *results, "--fresh"], input=source.read_text())
        assert result.exit_code == 0, result.output
        assert api_env.fake.accepted()["c1"][-1] == {"id": "c1", "version": "v5"}, night


def test_with_state_a_json_number_and_its_string_are_one_person(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """Whether a person repeats is first told from the raw identifier cells; 7.0 and "7" differ
    as cells but name one person: the earlier row is still superseded."""
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": 7.0, "v": "old"}\n{"id": "", "v": "x"}\n{"id": "", "v": "y"}\n'
        '{"id": "8", "v": "b"}\n{"id": "7", "v": "new"}\n'
    )
    args = ("sync", source, "--state", tmp_path / "state.db", "--rate", "0", "--json", "--fresh")
    result = invoke(*args)
    assert result.exit_code == 1, result.output  # 1: some rows are invalid
    lines = {line["row"]: line for line in read_results(Path(f"{source}.results.jsonl"))}
    assert lines[1]["superseded_by"] == 5
    assert [lines[row]["status"] for row in (2, 3, 4, 5)] == ["invalid", "invalid", "ok", "ok"]
    assert api_env.fake.accepted()["7"] == [{"id": "7", "v": "new"}]


def test_with_state_unique_identifier_cells_supersede_nothing(
    api_env: ServerThread, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,v\n1,a\n,b\n,c\n01,d\n1.0,e\n")  # empty cells are no identifiers
    args = ("sync", source, "--state", tmp_path / "state.db", "--rate", "0", "--json", "--fresh")
    result = invoke(*args)
    assert result.exit_code == 1, result.output  # 1: some rows are invalid
    lines = sorted(read_results(Path(f"{source}.results.jsonl")), key=lambda line: line["row"])
    assert [line["status"] for line in lines] == ["ok", "invalid", "invalid", "ok", "ok"]
    assert not any(line.get("superseded_by") for line in lines)
    assert sorted(api_env.fake.accepted()) == ["01", "1", "1.0"]


def test_with_state_typed_identifier_cells_that_differ_can_name_one_person(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """--type id=int makes "01" and "1" one person: distinct cells prove nothing then, and the
    earlier row is still superseded."""
    source = tmp_path / "in.csv"
    source.write_text("id,v\n01,old\n2,b\n1,new\n")
    args = ("sync", source, "--state", tmp_path / "state.db", "--rate", "0", "--json", "--fresh")
    result = invoke(*args, "--type", "id=int")
    assert result.exit_code == 0, result.output
    lines = {line["row"]: line for line in read_results(Path(f"{source}.results.jsonl"))}
    assert lines[1]["superseded_by"] == 3
    assert api_env.fake.accepted()["1"] == [{"id": 1, "v": "new"}]


@pytest.mark.parametrize("timezone", [(), ("--timezone", "Europe/Paris")])
def test_dates_before_1677_are_seconds_and_a_stray_fraction_is_invalid(
    tmp_path: Path, timezone: tuple[str, ...]
) -> None:
    """SQL Server exports write 0001-01-01 for "no date": outside pandas' nanosecond range,
    it stopped the whole run with a traceback, and so did ".1" (read as the year 0)."""
    csv = "id,created_at\na,0001-01-01T00:00:00Z\nb,.1\nc,1969-12-31T23:59:59.5Z\n"
    result, rows = dry_run(tmp_path, csv, *timezone)
    assert result.exit_code == 1, result.output
    assert rows[1]["payload"]["created_at"] == -62_135_596_800
    assert rows[2]["status"] == "invalid"
    assert rows[2]["error"].startswith("created_at: cannot read '.1' as a date")
    assert rows[3]["payload"]["created_at"] == -1
