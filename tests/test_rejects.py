"""`bulksync rejects RESULTS`, through the CLI: the invalid and failed rows with their original
cells, read back from a fingerprinted input, in a file a person fixes and syncs; the round trip
ends with exactly the fixed values in the simulator, and none of bulksync's own columns."""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import shlex
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main
from bulksync.results import InputIdentity

from .conftest import ServerThread, read_results

ADDED = ["bulksync_row", "bulksync_line", "bulksync_error"]
HEADER = ["id", "email", "plan", "zip", "created_at"]


def invoke(*args: str | Path, input: bytes | None = None) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], input=input)


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    text = path.read_bytes().decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def people(n: int) -> list[list[str]]:
    return [
        [f"c{i}", f"c{i}@example.com", "pro", f"0{i:04d}", "2024-05-01"] for i in range(1, n + 1)
    ]


def sync_command(stdout: str) -> list[str]:
    """The command `rejects` printed for sending the fixed file, as argv (without 'bulksync')."""
    [command] = [
        line.strip() for line in stdout.splitlines() if line.strip().startswith("bulksync sync")
    ]
    return shlex.split(command)[1:]


def mixed(tmp_path: Path) -> tuple[Path, list[list[str]]]:
    """10 people: rows 2 and 6 with bad emails, row 4 with a bad date; c8 is refused by the
    simulator in the tests that send."""
    rows = people(10)
    rows[1][1] = "c2@@example.com"
    rows[5][1] = "not an email"
    rows[3][4] = "31/02/2023"
    rows[3][2] = "team, yearly"  # a cell with the delimiter, read back quoted
    return write_csv(tmp_path / "in.csv", rows), rows


# --- the round trip ----------------------------------------------------------------------------


def test_round_trip_after_a_real_sync(api_env: ServerThread, tmp_path: Path) -> None:
    source, rows = mixed(tmp_path)
    api_env.fake.config.reject_ids = frozenset({"c8"})
    results = tmp_path / "in.results.jsonl"
    assert invoke("sync", source, "--results", results, "--rate", "0").exit_code == 1

    fix = tmp_path / "fix.csv"
    result = invoke("rejects", results, "-o", fix)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # fingerprint checked, nothing to warn about
    assert "wrote 4 rows (1 failed, 3 invalid)" in result.stdout
    assert stat.S_IMODE(fix.stat().st_mode) == 0o600
    assert fix.read_bytes().startswith(codecs.BOM_UTF8)

    table = read_csv(fix)
    assert list(table[0]) == ADDED + HEADER  # ours first, then the input's, in its order
    assert [r["bulksync_row"] for r in table] == ["2", "4", "6", "8"]
    for record in table:
        assert [record[c] for c in HEADER] == rows[int(record["bulksync_row"]) - 1]
    errors = {r["bulksync_row"]: r["bulksync_error"] for r in table}
    assert errors["2"].startswith("email: invalid email 'c2@@example.com'")
    assert errors["4"].startswith("created_at: cannot read '31/02/2023'")
    assert errors["8"] == "HTTP 400: rejected by test"
    for record in table:  # the reader's line when it knows it; never a wrong one
        assert record["bulksync_line"] in ("", str(int(record["bulksync_row"]) + 1))

    # A person fixes the cells, keeps our columns, and runs the printed command.
    fixes = {"2": ("email", "c2@example.com"), "4": ("created_at", "2023-02-28"),
             "6": ("email", "c6@example.com"), "8": ("plan", "basic")}  # fmt: skip
    for record in table:
        column, value = fixes[record["bulksync_row"]]
        record[column] = value
    with fix.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ADDED + HEADER)
        writer.writeheader()
        writer.writerows(table)
    api_env.fake.config.reject_ids = frozenset()
    argv = sync_command(result.stdout)
    assert argv == ["sync", str(fix)]  # our columns are never sent: nothing to exclude
    again = invoke(*argv, "--rate", "0")
    assert again.exit_code == 0, again.output

    accepted = api_env.fake.accepted()
    for i in (2, 4, 6, 8):
        row = dict(zip(HEADER, rows[i - 1], strict=True))
        column, value = fixes[str(i)]
        row[column] = value
        row["created_at"] = {"2023-02-28": 1677542400, "2024-05-01": 1714521600}[row["created_at"]]
        assert accepted[f"c{i}"][-1] == row  # exactly the file's values, nothing of ours
    assert not any(key.startswith("bulksync_") for p in accepted.values() for a in p for key in a)
    assert {line["status"] for line in read_results(Path(f"{fix}.results.jsonl"))} == {"ok"}


def test_round_trip_after_a_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run's results have no fingerprint: rows are matched by number, with a warning. The
    input path in the header is relative, as the user typed it: rejects runs from there too."""
    mixed(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert invoke("sync", "in.csv", "--dry-run").exit_code == 1
    result = invoke("rejects", "in.csv.dry-run.jsonl")
    assert result.exit_code == 0, result.output
    assert "no fingerprint" in result.stderr and "matched by number" in result.stderr
    fix = tmp_path / "in.csv.dry-run.rejects.csv"  # the default name, beside the results
    assert f"to {fix.name}" in result.stdout
    table = read_csv(fix)
    assert [r["bulksync_row"] for r in table] == ["2", "4", "6"]
    # Fixed by hand, synced (dry run here) with the printed command: every row is valid.
    text = fix.read_text(encoding="utf-8-sig").replace("c2@@example", "c2@example")
    text = text.replace("not an email", "c6@example.com").replace("31/02/2023", "2023-02-28")
    fix.write_text(text, encoding="utf-8")
    check = invoke(*sync_command(result.stdout), "--dry-run")
    assert check.exit_code == 0, check.output
    payloads = [line["payload"] for line in read_results(Path(f"{fix}.dry-run.jsonl"))]
    assert [p["id"] for p in payloads] == ["c2", "c4", "c6"]
    assert payloads[1]["plan"] == "team, yearly" and payloads[1]["zip"] == "00004"
    assert all(not key.startswith("bulksync_") for p in payloads for key in p)


def test_unreadable_rows_are_written_with_empty_cells(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,email,plan\nc1,c1@example.com,pro\nc2,c2@example.com\n\nc3,x,y,z,w\n")
    results = tmp_path / "r.jsonl"
    assert invoke("sync", source, "--dry-run", "--results", results).exit_code == 1
    result = invoke("rejects", results, "-o", tmp_path / "fix.csv")
    assert result.exit_code == 0, result.output
    table = read_csv(tmp_path / "fix.csv")
    assert [r["bulksync_row"] for r in table] == ["2", "3"]
    for record in table:
        assert "fields" in record["bulksync_error"]
        assert (record["id"], record["email"], record["plan"]) == ("", "", "")
    assert table[1]["bulksync_line"] in ("", "5")  # after a blank line: row 3 is on line 5


def test_jsonl_input_gives_jsonl(api_env: ServerThread, tmp_path: Path) -> None:
    objects: list[Any] = [
        {"id": "c1", "email": "c1@example.com", "score": 7, "tags": "a"},
        {"id": "c2", "email": "c2@@example.com", "score": 8, "vip": True},
        {"id": "c3", "email": "c3@example.com", "score": 9.5, "note": None},
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(orjson.dumps(o) for o in objects) + b"\n\n{not json\n")
    api_env.fake.config.reject_ids = frozenset({"c3"})
    results = tmp_path / "in.jsonl.results.jsonl"
    assert invoke("sync", source, "--rate", "0").exit_code == 1

    refused = invoke("rejects", results, "-o", tmp_path / "fix.csv")
    assert refused.exit_code == 2 and "the input is JSONL" in refused.stderr
    result = invoke("rejects", results)
    assert result.exit_code == 0, result.output
    fix = tmp_path / "in.jsonl.results.rejects.jsonl"
    lines = [orjson.loads(raw) for raw in fix.read_bytes().splitlines()]
    assert [line["bulksync_row"] for line in lines] == [2, 3, 4]
    assert list(lines[0])[:3] == ADDED
    # The original objects, JSON types kept, a key absent stays absent, a null stays null.
    assert {k: v for k, v in lines[0].items() if k not in ADDED} == objects[1]
    assert {k: v for k, v in lines[1].items() if k not in ADDED} == objects[2]
    assert lines[2]["bulksync_error"].startswith("malformed JSON")
    assert lines[2]["bulksync_line"] in (None, 5)
    assert stat.S_IMODE(fix.stat().st_mode) == 0o600

    # Fix the bad email, drop the unreadable line, send with the printed command.
    fixed = [dict(lines[0], email="c2@example.com"), lines[1]]
    fix.write_bytes(b"\n".join(orjson.dumps(o) for o in fixed) + b"\n")
    api_env.fake.config.reject_ids = frozenset()
    again = invoke(*sync_command(result.stdout), "--rate", "0")
    assert again.exit_code == 0, again.output
    accepted = api_env.fake.accepted()
    assert accepted["c2"][-1] == {"id": "c2", "email": "c2@example.com", "score": 8, "vip": True}
    assert accepted["c3"][-1] == {"id": "c3", "email": "c3@example.com", "score": 9.5}


# --- the input must be the one the run read --------------------------------------------------


def test_a_changed_input_is_refused(api_env: ServerThread, tmp_path: Path) -> None:
    source, _ = mixed(tmp_path)
    results = tmp_path / "in.results.jsonl"
    assert invoke("sync", source, "--results", results, "--rate", "0").exit_code == 1
    original = source.read_bytes()

    source.write_bytes(original + b"c11,c11@example.com,pro,00011,2024-05-01\n")
    result = invoke("rejects", results)
    assert result.exit_code == 2
    assert f"{source} has changed since the run" in result.stderr
    assert f"{len(original) + 41:,} bytes now, {len(original):,} bytes when" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output

    source.write_bytes(original.replace(b"c1@example.com", b"c9@example.com"))  # same size
    result = invoke("rejects", results)
    assert result.exit_code == 2
    assert "same size" in result.stderr and "different content" in result.stderr
    assert not list(tmp_path.glob("*.rejects.*"))  # nothing written

    # The file as the run read it, elsewhere: --input.
    copy = tmp_path / "copy.csv"
    copy.write_bytes(original)
    result = invoke("rejects", results, "--input", copy)
    assert result.exit_code == 0, result.output
    assert len(read_csv(tmp_path / "in.results.rejects.csv")) == 3


def test_a_missing_input_says_what_to_do(tmp_path: Path) -> None:
    source, _ = mixed(tmp_path)
    results = tmp_path / "r.jsonl"
    assert invoke("sync", source, "--dry-run", "--results", results).exit_code == 1
    source.unlink()
    result = invoke("rejects", results)
    assert result.exit_code == 2
    assert "no such file" in result.stderr and "--input" in result.stderr


def test_standard_input_needs_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source, _ = mixed(tmp_path)
    assert invoke("sync", "-", "--dry-run", input=source.read_bytes()).exit_code == 1
    result = invoke("rejects", "stdin.dry-run.jsonl")
    assert result.exit_code == 2 and "standard input" in result.stderr
    result = invoke("rejects", "stdin.dry-run.jsonl", "--input", source)
    assert result.exit_code == 0, result.output
    assert len(read_csv(tmp_path / "stdin.dry-run.rejects.csv")) == 3


# --- the output file ---------------------------------------------------------------------------


def test_an_existing_output_is_kept_unless_force(tmp_path: Path) -> None:
    source, _ = mixed(tmp_path)
    results = tmp_path / "r.jsonl"
    assert invoke("sync", source, "--dry-run", "--results", results).exit_code == 1
    fix = tmp_path / "fix.csv"
    fix.write_text("my fixes\n")
    fix.chmod(0o644)
    result = invoke("rejects", results, "-o", fix)
    assert result.exit_code == 2 and "--force" in result.stderr
    assert fix.read_text() == "my fixes\n"
    result = invoke("rejects", results, "-o", fix, "--force")
    assert result.exit_code == 0, result.output
    assert len(read_csv(fix)) == 3
    assert stat.S_IMODE(fix.stat().st_mode) == 0o600
    # Never over the input itself, even with --force.
    result = invoke("rejects", results, "-o", source, "--force")
    assert result.exit_code == 2 and "read from" in result.stderr
    assert source.stat().st_size > 100


@pytest.mark.parametrize("name", ["fix.jsonl", "fix", "fix.csv.gz"])
def test_the_output_name_must_tell_the_format(tmp_path: Path, name: str) -> None:
    source, _ = mixed(tmp_path)
    results = tmp_path / "r.jsonl"
    assert invoke("sync", source, "--dry-run", "--results", results).exit_code == 1
    result = invoke("rejects", results, "-o", tmp_path / name)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / name).exists()


def test_tsv_output_and_other_input_options(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes("id;email;city\nc1;c1@example.com;Köln\nc2;bad;Zürich\n".encode("cp1252"))
    results = tmp_path / "r.jsonl"
    args = ("--format", "csv", "--delimiter", ";", "--encoding", "cp1252")
    assert invoke("sync", source, "--dry-run", "--results", results, *args).exit_code == 1
    result = invoke("rejects", results, "-o", tmp_path / "fix.tsv", *args)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "fix.tsv").read_bytes().decode("utf-8-sig")
    assert text.splitlines()[1].split("\t")[3:] == ["c2", "bad", "Zürich"]


# --- which rows ----------------------------------------------------------------------------------


def test_nothing_to_write(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", people(3))
    results = tmp_path / "r.jsonl"
    assert invoke("sync", source, "--dry-run", "--results", results).exit_code == 0
    result = invoke("rejects", results)
    assert result.exit_code == 0
    assert "no invalid or failed rows" in result.stdout
    assert not list(tmp_path.glob("*.rejects.*"))


def test_a_row_replaced_by_a_later_one_is_left_out(api_env: ServerThread, tmp_path: Path) -> None:
    """c1's row 1 is invalid, but its row 3 was accepted since: sending row 1 now would put the
    older data over the newer."""
    rows = people(3)
    rows[0][1] = "bad@@example.com"
    rows[2][0] = "c1"
    rows[1][1] = "c2@@example.com"
    source = write_csv(tmp_path / "in.csv", rows)
    results = tmp_path / "r.jsonl"
    assert invoke("sync", source, "--results", results, "--rate", "0").exit_code == 1
    result = invoke("rejects", results, "-o", tmp_path / "fix.csv")
    assert result.exit_code == 0, result.output
    assert "1 rejected row(s) left out" in result.stderr and "row 1 (by row 3)" in result.stderr
    assert [r["bulksync_row"] for r in read_csv(tmp_path / "fix.csv")] == ["2"]


def test_transient_failures_point_to_retry(tmp_path: Path) -> None:
    """A results file of another kind, with a 503 and a 400 (written by hand): the printed
    command has the kind, and retry is suggested for the 503."""
    source = write_csv(tmp_path / "ev.csv", [["c1", "signup"], ["c2", "buy"]], ["id", "event"])
    identity = InputIdentity.of(str(source))
    header = {"bulksync_results": 1, "input": str(source), "dry_run": False, "op": "events"}
    header |= {"size": identity.size, "sha256": identity.sha256, "started": None}
    lines = [
        {"row": 1, "id": "c1", "op": "events", "status": "failed", "http_status": 503,
         "attempts": 6, "error": "HTTP 503 server error"},
        {"row": 2, "id": "c2", "op": "events", "status": "failed", "http_status": 400,
         "attempts": 1, "error": "HTTP 400: no"},
    ]  # fmt: skip
    results = tmp_path / "ev.results.jsonl"
    results.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in [header, *lines]))
    result = invoke("rejects", results)
    assert result.exit_code == 0, result.output
    assert (
        f"1 of them failed for a passing reason (429, 5xx, network): bulksync retry {results}"
        in (result.stdout)
    )
    assert sync_command(result.stdout)[:4] == ["sync", str(tmp_path / "ev.results.rejects.csv"),
                                               "--kind", "events"]  # fmt: skip


def test_bad_results_files(tmp_path: Path) -> None:
    assert invoke("rejects", tmp_path / "none.jsonl").exit_code == 2
    (tmp_path / "x.jsonl").write_text('{"id": 1}\n')
    result = invoke("rejects", tmp_path / "x.jsonl")
    assert result.exit_code == 2 and "not a bulksync results file" in result.stderr


def test_a_second_round_of_fixes(tmp_path: Path) -> None:
    """The fixed file, synced, still has bad rows: its rejects carry this round's bulksync_*
    columns in place of the first round's, and the same command sends them."""
    rows = people(3)
    rows[0][1] = rows[2][1] = "bad@@example.com"
    source = write_csv(tmp_path / "in.csv", rows)
    results = tmp_path / "in.csv.dry-run.jsonl"
    assert invoke("sync", source, "--dry-run").exit_code == 1
    first = invoke("rejects", results, "-o", tmp_path / "fix.csv")
    fix = tmp_path / "fix.csv"
    fix.write_text(fix.read_text(encoding="utf-8-sig").replace(",bad@@", ",c1@", 1))
    assert invoke(*sync_command(first.stdout), "--dry-run").exit_code == 1  # row 2 still bad

    second = invoke("rejects", tmp_path / "fix.csv.dry-run.jsonl", "-o", tmp_path / "fix2.csv")
    assert second.exit_code == 0, second.output
    [record] = read_csv(tmp_path / "fix2.csv")
    assert list(record) == ADDED + HEADER
    assert (record["bulksync_row"], record["id"]) == ("2", "c3")  # row 2 of fix.csv
    assert record["bulksync_error"].startswith("email: invalid email 'bad@@example.com'")
    assert sync_command(second.stdout)[2:] == sync_command(first.stdout)[2:]


def test_many_rows_are_streamed(tmp_path: Path) -> None:
    """Chunks of 1,000 rows: rejects in several chunks come out in input order."""
    rows = people(5000)
    for i in range(0, 5000, 7):
        rows[i][1] = f"bad{i}@@example.com"
    source = write_csv(tmp_path / "in.csv", rows)
    results = tmp_path / "r.jsonl"
    assert invoke("sync", source, "--dry-run", "--results", results).exit_code == 1
    result = invoke("rejects", results, "-o", tmp_path / "fix.csv")
    assert result.exit_code == 0, result.output
    table = read_csv(tmp_path / "fix.csv")
    assert [int(r["bulksync_row"]) for r in table] == list(range(1, 5001, 7))
    assert all(r["email"].startswith("bad") for r in table)
    assert os.path.getsize(tmp_path / "fix.csv") > 0
    assert re.search(r"wrote 715 rows \(715 invalid\)", result.stdout)
