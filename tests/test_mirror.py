"""Mirror mode for nightly imports (`--state` with `--missing keep|delete|suppress`): the people
Customer.io accepted on an earlier run and absent from tonight's input are counted, and removed
(DELETE or suppress, v2 operations with --batch) only when it is safe: the input read to the end,
no unreadable row, not more than --max-missing of them, --yes given. The default results file of
a finished night is rotated away (dated) by the next night's input.

Through the CLI (in-process with CliRunner, or a real `python -m bulksync` process where it must
be killed) against the Track API simulator over loopback. Every assertion is about the exact
requests the simulator received (method, raw path, body), the results files, the summary, or the
state file itself (read with sqlite3). No mocks."""

from __future__ import annotations

import contextlib
import csv
import gzip
import re
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from click.testing import CliRunner, Result

import bulksync.state
from bulksync.cli import main
from bulksync.fake import Recorded
from bulksync.fake.process import ServerThread
from bulksync.fake.server import peak_in_window
from bulksync.state import StateStore

from .conftest import read_results
from .test_resume import Proc, start_cli, wait_until

Row = dict[str, str]
REGION_PATH = "/api/v1/accounts/region"
BATCH_PATH = "/api/v2/batch"
MIRROR = ("--missing", "delete", "--yes")  # the nightly mirror: delete who left


# --- helpers ---------------------------------------------------------------------------------


def person(i: int, plan: str | None = None) -> Row:
    return {
        "id": f"cust-{i}",
        "email": f"person{i}@example.com",
        "plan": plan or ("free", "pro", "team")[i % 3],
    }


def people(numbers: Sequence[int] | range) -> list[Row]:
    return [person(i) for i in numbers]


def ids(numbers: Sequence[int] | range | set[int]) -> set[str]:
    return {f"cust-{i}" for i in numbers}


def csv_text(rows: Sequence[Row]) -> str:
    lines = [",".join(rows[0])]
    lines += [",".join(row.values()) for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[Row]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: Sequence[Row]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def nightly(source: Path, state: Path, *extra: str | Path) -> Result:
    """The nightly command: `bulksync sync SOURCE --state STATE --rate 0 --json EXTRA...`, its
    results file at the default path (SOURCE.results.jsonl)."""
    result = invoke("sync", source, "--state", state, "--rate", "0", "--json", *extra)
    assert "Traceback" not in result.output, result.output
    return result


def summary(result: Result) -> dict[str, Any]:
    printed = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(printed) == 1, result.output
    value: dict[str, Any] = orjson.loads(printed[0])
    return value


def counts(result: Result, *keys: str) -> dict[str, Any]:
    data = summary(result)
    return {key: data.get(key) for key in keys}


def received(fake: ServerThread, since: int = 0) -> list[Recorded]:
    """The requests the simulator received from index `since` on, the credentials check left
    out."""
    requests, _ = fake.snapshot()
    return [rec for rec in requests[since:] if rec.path != REGION_PATH]


def mark(fake: ServerThread) -> int:
    return len(fake.snapshot()[0])


def calls(recs: list[Recorded]) -> list[tuple[str, str]]:
    return [(rec.method, rec.path) for rec in recs]


# Identifiers in v1 paths are percent-encoded whole (track-api.md): a/b is a%2Fb, @ is %40.


def put(identifier: str) -> tuple[str, str]:
    return ("PUT", f"/api/v1/customers/{quote(identifier, safe='')}")


def delete(identifier: str) -> tuple[str, str]:
    return ("DELETE", f"/api/v1/customers/{quote(identifier, safe='')}")


def suppress(identifier: str) -> tuple[str, str]:
    return ("POST", f"/api/v1/customers/{quote(identifier, safe='')}/suppress")


def deleted(recs: list[Recorded]) -> list[str]:
    """Who the DELETE requests among `recs` named, in arrival order."""
    return [str(rec.identifier) for rec in recs if rec.method == "DELETE"]


def removal_lines(path: Path) -> list[dict[str, Any]]:
    return [line for line in read_results(path) if line.get("absent") is True]


def row_lines(path: Path) -> list[dict[str, Any]]:
    return [line for line in read_results(path) if line.get("absent") is not True]


def known(state: Path) -> set[str]:
    """The identifiers the state file holds, read with sqlite3 directly."""
    with contextlib.closing(sqlite3.connect(state)) as db:
        return {identifier for (identifier,) in db.execute("SELECT identifier FROM state")}


def snapshot(state: Path) -> tuple[list[Any], ...]:
    """Everything the state file holds, table by table."""
    with contextlib.closing(sqlite3.connect(state)) as db:
        tables = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return tuple(db.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall() for name in tables)


def complete_lines(path: Path) -> list[dict[str, Any]]:
    """Lines fully written so far (a torn last line does not count, as on resume)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in whole.splitlines() if line.strip()]


def results_of(source: Path) -> Path:
    return Path(f"{source}.results.jsonl")


def first_night(fake: ServerThread, tmp_path: Path, n: int, *extra: str) -> tuple[Path, Path]:
    """Night 1: people.csv with people 1..n, accepted into a new state file."""
    source = write_csv(tmp_path / "people.csv", people(range(1, n + 1)))
    state = tmp_path / "people.state.db"
    result = nightly(source, state, *extra)
    assert result.exit_code == 0, result.output
    assert known(state) == ids(range(1, n + 1))
    return source, state


# --- 1. three nights -------------------------------------------------------------------------


def test_three_nights_put_what_changed_and_delete_who_left(
    api_env: ServerThread, tmp_path: Path
) -> None:
    n = 100
    today = {datetime.now(UTC).date().isoformat(), datetime.now().date().isoformat()}
    source = tmp_path / "people.csv"
    state = tmp_path / "people.state.db"
    results = results_of(source)

    # Night 1: everyone is new; nobody is known, so nobody is absent.
    night1 = people(range(1, n + 1))
    write_csv(source, night1)
    first = nightly(source, state, *MIRROR)
    assert first.exit_code == 0, first.output
    assert sorted(calls(received(api_env))) == sorted(put(row["id"]) for row in night1)
    assert counts(first, "ok", "absent", "removed") == {"ok": n, "absent": 0, "removed": 0}
    assert removal_lines(results) == []
    night1_results = results.read_bytes()

    # Night 2: 5 changed, 2 added, 3 gone.
    changed, added, gone = {3, 17, 42, 64, 99}, {101, 102}, {10, 20, 30}
    night2 = [
        person(i, "enterprise" if i in changed else None)
        for i in [*range(1, n + 1), *sorted(added)]
        if i not in gone
    ]
    write_csv(source, night2)
    before = mark(api_env)
    second = nightly(source, state, *MIRROR)
    assert second.exit_code == 0, second.output
    sent = received(api_env, before)
    puts = [rec for rec in sent if rec.method == "PUT"]
    assert sorted(calls(puts)) == sorted(put(i) for i in ids(changed | added))
    assert sorted(calls(sent[len(puts) :])) == sorted(delete(i) for i in ids(gone))
    assert len(sent) == 10  # the rows first, then the removals, nothing else
    bodies = {row["id"]: row for row in night2}
    for rec in puts:
        assert rec.body == bodies[str(rec.identifier)]
    for rec in sent[len(puts) :]:
        assert rec.body is None and rec.size == 0
    assert counts(second, "rows", "ok", "unchanged", "absent", "removed", "exit_code") == {
        "rows": n - 3 + 2,
        "ok": 7,
        "unchanged": n - 3 - 5,
        "absent": 3,
        "removed": 3,
        "exit_code": 0,
    }
    # The removals are results lines of their own: no row, the identifier, the operation.
    removals = sorted(removal_lines(results), key=lambda line: line["id"])
    assert [line["id"] for line in removals] == sorted(ids(gone))
    for line in removals:
        assert line["row"] is None
        assert (line["op"], line["status"]) == ("deletions", "ok")
    assert Counter(line["status"] for line in row_lines(results)) == {"ok": 7, "unchanged": 92}
    # The state forgot them; everyone else is known.
    assert known(state) == ids(range(1, n + 1)) - ids(gone) | ids(added)
    # Last night's results file was moved aside with its date, untouched.
    rotated = sorted(p.name for p in tmp_path.glob("people.csv.results.*.jsonl"))
    assert len(rotated) == 1, rotated
    match = re.fullmatch(r"people\.csv\.results\.(\d{4}-\d\d-\d\d)\.jsonl", rotated[0])
    assert match and match.group(1) in today, rotated
    day = match.group(1)
    assert (tmp_path / rotated[0]).read_bytes() == night1_results
    night2_results = results.read_bytes()

    # Night 3: one more change, cust-20 (deleted on night 2) is back, cust-40 is gone.
    night3 = [
        person(i, "enterprise" if i in changed | {50} else None)
        for i in [*range(1, n + 1), *sorted(added)]
        if i not in {10, 30, 40}
    ]
    write_csv(source, night3)
    before = mark(api_env)
    third = nightly(source, state, *MIRROR)
    assert third.exit_code == 0, third.output
    sent = received(api_env, before)
    assert sorted(calls(sent[:2])) == [put("cust-20"), put("cust-50")]
    assert calls(sent[2:]) == [delete("cust-40")]
    tonight = {row["id"]: row for row in night3}
    assert {str(rec.identifier): rec.body for rec in sent[:2]} == {
        "cust-20": person(20),  # back: identified again with all of tonight's row
        "cust-50": tonight["cust-50"],
    }
    assert counts(third, "ok", "unchanged", "absent", "removed") == {
        "ok": 2,
        "unchanged": len(night3) - 2,
        "absent": 1,
        "removed": 1,
    }
    assert [(line["id"], line["status"]) for line in removal_lines(results)] == [("cust-40", "ok")]
    assert known(state) == {row["id"] for row in night3}
    # Both earlier nights are kept beside it: the second one with a -2 suffix (same date).
    rotated = sorted(p.name for p in tmp_path.glob("people.csv.results.*.jsonl"))
    assert len(rotated) == 2, rotated
    assert rotated == [f"people.csv.results.{day}-2.jsonl", f"people.csv.results.{day}.jsonl"]
    assert (tmp_path / rotated[1]).read_bytes() == night1_results
    assert (tmp_path / rotated[0]).read_bytes() == night2_results
    # Each finished file ends with its end line.
    for path in (results, *(tmp_path / name for name in rotated)):
        assert "bulksync_end" in orjson.loads(path.read_bytes().splitlines()[-1])


def test_the_text_summary_says_absent_and_removed(api_env: ServerThread, tmp_path: Path) -> None:
    source, state = first_night(api_env, tmp_path, 40)
    write_csv(source, people(range(1, 39)))
    result = invoke("sync", source, "--state", state, "--rate", "0", "--missing", "delete", "--yes")
    assert result.exit_code == 0, result.output
    assert re.search(r"^absent: 2 known people are not in this input$", result.stdout, re.M), (
        result.stdout
    )
    assert re.search(r"^\s*removed\s+2$", result.stdout, re.M), result.stdout
    assert deleted(received(api_env)) == ["cust-39", "cust-40"]


# --- 2. --missing keep -------------------------------------------------------------------------


@pytest.mark.parametrize("option", [[], ["--missing", "keep"]], ids=["default", "keep"])
def test_keep_counts_the_absent_sends_no_removal_and_the_state_keeps_them(
    api_env: ServerThread, tmp_path: Path, option: list[str]
) -> None:
    source, state = first_night(api_env, tmp_path, 100)
    # Half of them gone: no limit applies when nobody would be removed.
    write_csv(source, people(range(1, 51)))
    for night in (2, 3):
        before = mark(api_env)
        result = nightly(source, state, *option)
        assert result.exit_code == 0, (night, result.output)
        assert received(api_env, before) == []  # nothing changed, nobody removed
        assert counts(result, "unchanged", "absent", "removed") == {
            "unchanged": 50,
            "absent": 50,
            "removed": 0,
        }
        assert known(state) == ids(range(1, 101))  # still known: absent again tomorrow
        assert all(line["status"] != "ok" for line in removal_lines(results_of(source)))

    text = invoke("sync", source, "--state", state, "--rate", "0", "--fresh")
    assert text.exit_code == 0, text.output
    assert re.search(r"^absent: 50 known people are not in this input \(kept", text.stdout, re.M), (
        text.stdout
    )
    assert "removed" not in text.stdout


# --- 3. suppress; batch mode -------------------------------------------------------------------


def by_email(numbers: range | list[int]) -> list[Row]:
    """People identified by email (no id column), one with a + in the address."""
    return [
        {"email": f"p{i}+x@example.com" if i == 7 else f"p{i}@example.com", "plan": "pro"}
        for i in numbers
    ]


@pytest.mark.parametrize("action", ["delete", "suppress"])
def test_single_mode_removal_requests_are_exact(
    api_env: ServerThread, tmp_path: Path, action: str
) -> None:
    source = write_csv(tmp_path / "people.csv", by_email(range(1, 41)))
    state = tmp_path / "s.db"
    assert nightly(source, state).exit_code == 0
    gone = {"p7+x@example.com", "p31@example.com"}
    night2 = [row for row in by_email(range(1, 41)) if row["email"] not in gone]
    night2[0]["plan"] = "team"  # p1 changed: its PUT goes before the removals
    write_csv(source, night2)
    before = mark(api_env)
    result = nightly(source, state, "--missing", action, "--yes")
    assert result.exit_code == 0, result.output
    sent = received(api_env, before)
    remove = delete if action == "delete" else suppress
    assert calls(sent[:1]) == [put("p1@example.com")]
    assert sorted(calls(sent[1:])) == sorted(remove(email) for email in gone)
    assert any("/p7%2Bx%40example.com" in rec.path for rec in sent)  # the raw path, encoded
    for rec in sent[1:]:
        assert rec.body is None and rec.size == 0
        assert rec.status == 200
    op = "deletions" if action == "delete" else "suppressions"
    lines = removal_lines(results_of(source))
    assert sorted((line["id"], line["op"], line["status"]) for line in lines) == [
        ("p31@example.com", op, "ok"),
        ("p7+x@example.com", op, "ok"),
    ]
    assert counts(result, "ok", "absent", "removed") == {"ok": 1, "absent": 2, "removed": 2}
    workspace = api_env.workspace()
    assert workspace["deleted" if action == "delete" else "suppressed"] == 2
    assert known(state) == {row["email"] for row in night2}


@pytest.mark.parametrize("action", ["delete", "suppress"])
def test_batch_mode_sends_v2_delete_or_suppress_operations(
    api_env: ServerThread, tmp_path: Path, action: str
) -> None:
    source = write_csv(tmp_path / "people.csv", people(range(1, 201)))
    state = tmp_path / "s.db"
    assert nightly(source, state, "--batch").exit_code == 0
    gone = {5, 50, 150, 200}
    night2 = [person(i, "enterprise" if i == 9 else None) for i in range(1, 201) if i not in gone]
    write_csv(source, night2)
    before = mark(api_env)
    result = nightly(source, state, "--batch", "--missing", action, "--yes")
    assert result.exit_code == 0, result.output
    sent = received(api_env, before)
    assert {rec.path for rec in sent} == {BATCH_PATH}
    assert all(rec.method == "POST" and rec.status == 200 for rec in sent)
    operations = [op for rec in sent for op in rec.body["batch"]]
    # The changed row first, as an identify; then one operation per absent person, exactly.
    assert operations[0] == {
        "type": "person",
        "identifiers": {"id": "cust-9"},
        "action": "identify",
        "attributes": person(9, "enterprise"),
    }
    assert sorted(operations[1:], key=lambda op: op["identifiers"]["id"]) == [
        {"type": "person", "identifiers": {"id": identifier}, "action": action}
        for identifier in sorted(ids(gone))
    ]
    # Removals only after the rows: no batch mixes them, none comes before.
    assert [op["action"] for op in operations] == ["identify"] + [action] * len(gone)
    assert all(len({op["action"] for op in rec.body["batch"]}) == 1 for rec in sent)
    op = "deletions" if action == "delete" else "suppressions"
    lines = removal_lines(results_of(source))
    assert sorted(line["id"] for line in lines) == sorted(ids(gone))
    assert {(line["op"], line["status"], line["row"]) for line in lines} == {(op, "ok", None)}
    assert counts(result, "ok", "absent", "removed") == {"ok": 1, "absent": 4, "removed": 4}
    assert known(state) == {row["id"] for row in night2}


# --- removals go through the sender: rate limit, retries, failures ------------------------------


def test_removals_keep_the_rate_retry_transient_failures_and_a_refused_one_is_kept(
    api_env: ServerThread, tmp_path: Path
) -> None:
    source, state = first_night(api_env, tmp_path, 100, "--batch")
    write_csv(source, people(range(1, 71)))  # 71..100 gone
    fake = api_env.fake
    api_env.reset()  # fail_first counts the requests naming a person: night 1's counted
    fake.config.fail_first = {"cust-75": 2}  # two 503s, then accepted
    fake.config.reject_ids = frozenset({"cust-80"})  # refused: 400
    before = mark(api_env)
    args = (*MIRROR, "--max-missing", "30%", "--rate", "20")
    result = nightly(source, state, *args)
    assert result.exit_code == 1, result.output  # a removal failed
    sent = received(api_env, before)
    assert Counter(deleted(sent)) == Counter(
        {**dict.fromkeys(ids(range(71, 101)), 1), "cust-75": 3}
    )
    assert peak_in_window([rec.time for rec in sent]) <= 20  # --rate holds for removals too
    lines = {line["id"]: line for line in removal_lines(results_of(source))}
    assert set(lines) == ids(range(71, 101))
    assert (lines["cust-75"]["status"], lines["cust-75"]["attempts"]) == ("ok", 3)
    assert (lines["cust-80"]["status"], lines["cust-80"]["http_status"]) == ("failed", 400)
    assert counts(result, "absent", "removed", "removals_failed", "exit_code") == {
        "absent": 30,
        "removed": 29,
        "removals_failed": 1,
        "exit_code": 1,
    }
    # The state forgot only those whose removal was accepted.
    assert known(state) == ids(range(1, 71)) | {"cust-80"}
    # The report counts the removals, and says what to do about the failed one.
    report = invoke("report", results_of(source), "--json")
    assert report.exit_code == 0, report.output
    summary = orjson.loads(report.stdout)
    assert summary["removals"] == {"ok": 29, "failed": 1}
    assert any("removal(s) of absent people failed" in step["why"] for step in summary["next"])

    # The same command again (or the next night's) tries the refused one again.
    fake.config.reject_ids = frozenset()
    before = mark(api_env)
    again = nightly(source, state, *MIRROR, "--max-missing", "30%")
    assert again.exit_code == 0, again.output
    assert calls(received(api_env, before)) == [delete("cust-80")]
    assert known(state) == ids(range(1, 71))


# --- 4. --max-missing --------------------------------------------------------------------------


def test_more_absent_than_the_limit_removes_nobody_and_exits_2(
    api_env: ServerThread, tmp_path: Path
) -> None:
    source, state = first_night(api_env, tmp_path, 100)
    # Night 2 has half of them, 4 changed.
    changed = {2, 11, 23, 47}
    night2 = [person(i, "enterprise" if i in changed else None) for i in range(1, 51)]
    write_csv(source, night2)
    before = mark(api_env)
    result = nightly(source, state, "--missing", "delete", "--yes")
    assert result.exit_code == 2, result.output
    # The input's rows were sent; nobody was removed, and the state still knows them.
    sent = received(api_env, before)
    assert sorted(calls(sent)) == sorted(put(i) for i in ids(changed))
    assert known(state) == ids(range(1, 101))
    assert removal_lines(results_of(source)) == []
    # It says how many, and the limit.
    assert re.search(r"\b50\b", result.stderr), result.stderr
    assert "--max-missing" in result.stderr and "5%" in result.stderr, result.stderr
    assert "Traceback" not in result.output

    # A higher limit lets it through: the same command resumes, sends no row again.
    before = mark(api_env)
    again = nightly(source, state, "--missing", "delete", "--yes", "--max-missing", "60%")
    assert again.exit_code == 0, again.output
    sent = received(api_env, before)
    assert sorted(calls(sent)) == sorted(delete(i) for i in ids(range(51, 101)))
    assert known(state) == ids(range(1, 51))
    assert counts(again, "absent", "removed") == {"absent": 50, "removed": 50}


@pytest.mark.parametrize(
    ("limit", "absent", "allowed"),
    [
        (None, 5, True),  # default 5% of the 100 known: 5 is not more
        (None, 6, False),
        ("6", 6, True),  # an absolute number
        ("5", 6, False),
        ("6%", 6, True),
        ("0", 1, False),
        ("100%", 100, True),
    ],
)
def test_max_missing_is_a_number_or_a_percentage_of_the_known(
    api_env: ServerThread, tmp_path: Path, limit: str | None, absent: int, allowed: bool
) -> None:
    source, state = first_night(api_env, tmp_path, 100, "--batch")
    if absent == 100:
        write_csv(source, [{"id": "someone-new", "email": "new@example.com", "plan": "pro"}])
    else:
        write_csv(source, people(range(1, 101 - absent)))
    option = [] if limit is None else ["--max-missing", limit]
    before = mark(api_env)
    result = nightly(source, state, "--batch", "--missing", "delete", "--yes", *option)
    operations = [op for rec in received(api_env, before) for op in rec.body["batch"]]
    removed = sorted(op["identifiers"]["id"] for op in operations if op["action"] == "delete")
    if allowed:
        assert result.exit_code == 0, result.output
        assert len(removed) == absent
    else:
        assert result.exit_code == 2, result.output
        assert removed == []
        assert f"{absent}" in result.stderr


# --- 5. nobody removed after an input not read to the end, or with unreadable rows -------------


def assert_nobody_removed(fake: ServerThread, since: int, state: Path, everyone: set[str]) -> None:
    sent = received(fake, since)
    assert deleted(sent) == []
    assert all(rec.method == "PUT" for rec in sent), calls(sent)
    assert known(state) >= everyone


def test_a_truncated_gzip_removes_nobody(api_env: ServerThread, tmp_path: Path) -> None:
    n = 3000
    night1 = people(range(1, n + 1))
    source = tmp_path / "people.csv.gz"
    source.write_bytes(gzip.compress(csv_text(night1).encode()))
    state = tmp_path / "s.db"
    assert nightly(source, state, "--batch").exit_code == 0
    # Night 2: the first rows changed, three people gone; the download was cut in the middle.
    night2 = [person(i, "enterprise" if i <= 20 else None) for i in range(1, n + 1)]
    night2 = [row for row in night2 if row["id"] not in {"cust-5", "cust-6", "cust-7"}]
    data = gzip.compress(csv_text(night2).encode())
    source.write_bytes(data[: len(data) // 2])
    before = mark(api_env)
    result = nightly(
        source,
        state,
        "--chunk-size",
        "100",
        "--missing",
        "delete",
        "--yes",
        "--max-missing",
        "100%",
    )
    assert result.exit_code == 2, result.output
    assert "cannot read" in result.stderr, result.stderr
    assert_nobody_removed(api_env, before, state, ids(range(1, n + 1)))


BROKEN = {
    "jsonl": b'{"id": "cust-8", "email": "person8@example.com", \n',
    "csv": b'cust-8,"person8@example.com,free\n',
}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_unreadable_row_removes_nobody(api_env: ServerThread, tmp_path: Path, fmt: str) -> None:
    night1 = people(range(1, 101))
    source = tmp_path / f"people.{fmt}"
    write = write_jsonl if fmt == "jsonl" else write_csv
    write(source, night1)
    state = tmp_path / "s.db"
    assert nightly(source, state).exit_code == 0
    # Night 2: cust-8's line is broken (so cust-8 looks absent), cust-90..92 really are gone.
    night2 = [row for row in night1 if row["id"] not in {"cust-90", "cust-91", "cust-92"}]
    write(source, night2)
    lines = source.read_bytes().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if b'"cust-8"' in line or b"cust-8," in line)
    lines[index] = BROKEN[fmt]
    source.write_bytes(b"".join(lines))
    before = mark(api_env)
    result = nightly(source, state, "--missing", "delete", "--yes", "--max-missing", "100%")
    assert result.exit_code == 1, result.output  # the broken row is invalid
    assert Counter(line["status"] for line in row_lines(results_of(source))) == {
        "unchanged": 96,
        "invalid": 1,
    }
    assert_nobody_removed(api_env, before, state, ids(range(1, 101)))
    assert summary(result).get("removed") == 0


def test_an_invalid_row_is_not_absent(api_env: ServerThread, tmp_path: Path) -> None:
    """A row that was read but does not validate (a typo in the email) still names its person:
    they are in tonight's input, and must not be removed; the truly absent are."""
    source, state = first_night(api_env, tmp_path, 100)
    night2 = people(range(1, 100))
    night2[7]["email"] = "person8-at-example.com"
    write_csv(source, night2)
    before = mark(api_env)
    result = nightly(source, state, "--missing", "delete", "--yes")
    assert result.exit_code == 1, result.output
    assert deleted(received(api_env, before)) == ["cust-100"]
    assert "cust-8" in known(state)


def test_limit_removes_nobody(api_env: ServerThread, tmp_path: Path) -> None:
    source, state = first_night(api_env, tmp_path, 100)
    write_csv(source, people(range(1, 98)))  # 98..100 gone
    before = mark(api_env)
    result = nightly(
        source, state, "--limit", "90", "--missing", "delete", "--yes", "--max-missing", "100%"
    )
    assert result.exit_code == 0, result.output
    assert_nobody_removed(api_env, before, state, ids(range(1, 101)))
    assert summary(result).get("removed") == 0


def test_sigterm_before_the_removals_removes_nobody_then_the_rerun_does(
    api_env: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    fake = api_env
    source, state = first_night(fake, tmp_path, 300, "--batch")
    night2 = [person(i, "enterprise" if i <= 150 else None) for i in range(1, 296)]  # 296.. gone
    write_csv(source, night2)
    fake.fake.config.latency = 0.02
    before = mark(fake)
    args: list[str | Path] = ["sync", source, "--state", state, "--rate", "100", "--quiet"]
    args += ["--missing", "delete", "--yes"]
    proc = start_cli(fake.url, tmp_path / "night2", *args)
    procs.append(proc)
    results = results_of(source)
    # (night 1's file, all ok, is moved aside first)
    wait_until(
        lambda: (
            len(list(tmp_path.glob("people.csv.results.*.jsonl"))) == 1
            and sum(line.get("status") == "ok" for line in complete_lines(results)) >= 20
        ),
        proc,
        what="20 rows sent",
    )
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 3, proc.stderr()
    sent = received(fake, before)
    assert deleted(sent) == []
    assert 20 <= len(sent) < 150, "interrupted while sending the rows"
    assert known(state) >= ids(range(1, 301))

    fake.fake.config.latency = 0
    before = mark(fake)
    rerun = start_cli(fake.url, tmp_path / "rerun", *args)
    procs.append(rerun)
    assert rerun.wait(60) == 0, rerun.stderr()
    sent = received(fake, before)
    assert sorted(deleted(sent)) == sorted(ids(range(296, 301)))
    assert known(state) == ids(range(1, 296))


# --- nightly from standard input ---------------------------------------------------------------


def test_nightly_from_standard_input_sends_tonights_changes(
    api_env: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export | bulksync sync - --state S --missing delete --yes` every night: the default
    results file is stdin.results.jsonl, finished by last night's run. Tonight's stream is
    another input (it cannot be fingerprinted, but a finished file has nothing left to resume):
    last night's file must be moved aside, not resumed, or tonight's rows are taken as done by
    their row numbers and never sent, while the absent are still removed."""
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "s.db"
    args = ["sync", "-", "--state", str(state), "--rate", "0", "--json", *MIRROR]
    first = CliRunner().invoke(main, args, input=csv_text(people(range(1, 41))))
    assert first.exit_code == 0, first.output
    night2 = [person(i, "enterprise" if i == 5 else None) for i in range(1, 40)]  # 40 gone
    before = mark(api_env)
    second = CliRunner().invoke(main, args, input=csv_text(night2))
    assert second.exit_code == 0, second.output
    assert calls(received(api_env, before)) == [put("cust-5"), delete("cust-40")]
    assert counts(second, "rows", "ok", "unchanged", "resumed") == {
        "rows": 39,
        "ok": 1,
        "unchanged": 38,
        "resumed": 0,
    }
    assert len(list(tmp_path.glob("stdin.results.*.jsonl"))) == 1


# --- 6. refused before anything is sent --------------------------------------------------------

REFUSALS = {
    # case: (options besides the input and --rate 0, what the message must name)
    "delete-without-yes": (["--state", "S", "--missing", "delete"], ["--yes", "--missing"]),
    "suppress-without-yes": (["--state", "S", "--missing", "suppress"], ["--yes", "--missing"]),
    "without-state": ([*MIRROR], ["--missing", "--state"]),
    "events": (["--state", "S", *MIRROR, "--kind", "events"], ["--missing", "people"]),
    "max-abc": (["--state", "S", *MIRROR, "--max-missing", "abc"], ["--max-missing", "abc"]),
    "max-negative": (["--state", "S", *MIRROR, "--max-missing", "-1"], ["--max-missing", "-1"]),
    "max-150%": (["--state", "S", *MIRROR, "--max-missing", "150%"], ["--max-missing", "150%"]),
    "max-1.5.5%": (["--state", "S", *MIRROR, "--max-missing", "1.5.5%"], ["--max-missing"]),
    "unknown-action": (["--state", "S", "--missing", "remove", "--yes"], ["--missing", "remove"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_before_anything_is_sent(api_env: ServerThread, tmp_path: Path, case: str) -> None:
    source, state = first_night(api_env, tmp_path, 30)
    first_results = results_of(source).read_bytes()
    args, fragments = REFUSALS[case]
    if "events" in args:  # tonight's input: events, or the people with two gone, one changed
        tonight = tmp_path / "events.csv"
        tonight.write_text("id,event\ncust-1,signup\n", encoding="utf-8")
    else:
        tonight = write_csv(source, [person(i, "team" if i == 1 else None) for i in range(1, 29)])
    before_state = snapshot(state)
    before = mark(api_env)
    args = [str(state) if arg == "S" else arg for arg in args]
    result = invoke("sync", tonight, "--rate", "0", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert "another input" not in result.output  # refused for the option, not the file
    assert mark(api_env) == before, "something was sent (even the credentials check counts)"
    assert snapshot(state) == before_state
    assert results_of(source).read_bytes() == first_results
    assert list(tmp_path.glob("*.results.*.jsonl")) == []
    assert not results_of(tmp_path / "events.csv").exists()


# --- 7. dry run ------------------------------------------------------------------------------


def test_dry_run_lists_who_would_be_removed_and_changes_nothing(
    api_env: ServerThread, tmp_path: Path
) -> None:
    source, state = first_night(api_env, tmp_path, 60)
    night2 = [person(i, "enterprise" if i in {4, 8} else None) for i in range(1, 61) if i % 20]
    write_csv(source, night2)  # 20, 40, 60 gone; 4 and 8 changed
    before_state = snapshot(state)
    before = mark(api_env)
    result = invoke(
        "sync", source, "--state", state, "--dry-run", "--missing", "delete", "--json"
    )  # no --yes: a dry run removes nobody
    assert result.exit_code == 0, result.output
    assert mark(api_env) == before  # a dry run sends nothing at all
    assert snapshot(state) == before_state
    dry = Path(f"{source}.dry-run.jsonl")
    would = removal_lines(dry)
    assert sorted(line["id"] for line in would) == sorted(ids({20, 40, 60}))
    assert {(line["row"], line["status"], line["op"]) for line in would} == {
        (None, "valid", "deletions")
    }
    rows = Counter(line["status"] for line in row_lines(dry))
    assert rows == {"valid": 2, "unchanged": 55}
    assert counts(result, "valid", "absent", "would_remove", "removed", "dry_run") == {
        "valid": 2,
        "absent": 3,
        "would_remove": 3,
        "removed": 0,
        "dry_run": True,
    }

    # The real run afterwards removes them.
    before = mark(api_env)
    real = nightly(source, state, "--missing", "delete", "--yes")
    assert real.exit_code == 0, real.output
    sent = received(api_env, before)
    assert sorted(calls(sent)) == sorted(
        [put("cust-4"), put("cust-8"), *(delete(i) for i in ids({20, 40, 60}))]
    )


def test_a_dry_run_over_the_limit_exits_2_and_says_nothing_was_sent(
    api_env: ServerThread, tmp_path: Path
) -> None:
    source, state = first_night(api_env, tmp_path, 40)
    write_csv(source, [person(i, "enterprise" if i == 1 else None) for i in range(1, 21)])
    before_state = snapshot(state)
    before = mark(api_env)
    result = invoke("sync", source, "--state", state, "--dry-run", "--missing", "delete")
    assert result.exit_code == 2, result.output
    assert mark(api_env) == before
    assert snapshot(state) == before_state
    assert "20 of the 40" in result.stderr and "--max-missing 5%" in result.stderr
    # Nothing was sent: the message must not say the rows were.
    assert "were sent" not in result.stderr, result.stderr


# --- 8. kill -9 during the removals -------------------------------------------------------------


def kill_during_removals(
    fake: ServerThread, tmp_path: Path, procs: list[Proc]
) -> tuple[Path, Path, list[str | Path], set[str], float, set[str], list[str]]:
    """Night 1: 400 people; night 2: 31 of them gone, removed slowly, killed -9 once some
    DELETEs were received. Returns (source, state, command args, the absent, the kill's moment,
    who the state had forgotten then, who was DELETEd by then)."""
    source, state = first_night(fake, tmp_path, 400, "--batch")
    gone = set(range(7, 400, 13))  # 31 people, spread through the file
    assert len(gone) == 31
    write_csv(source, people([i for i in range(1, 401) if i not in gone]))
    fake.fake.config.latency = 0.05
    args: list[str | Path] = [
        "sync",
        source,
        "--state",
        state,
        "--rate",
        "40",
        "--concurrency",
        "4",
        "--quiet",
        "--missing",
        "delete",
        "--yes",
        "--max-missing",
        "10%",
    ]
    before = mark(fake)
    proc = start_cli(fake.url, tmp_path / "night2", *args)
    procs.append(proc)
    wait_until(lambda: len(deleted(received(fake, before))) >= 8, proc, what="8 DELETEs")
    proc.popen.send_signal(signal.SIGKILL)
    proc.wait(10)
    killed = time.monotonic()
    done = deleted(received(fake, before))
    assert len(done) < len(gone), "the kill came after the last removal"
    # Forgotten by the state, or an ok removal line: only after the API accepted the DELETE.
    forgotten = ids(gone) - known(state)
    assert forgotten <= set(done)
    lines = complete_lines(results_of(source))
    assert {line["id"] for line in lines if line.get("absent") and line["status"] == "ok"} <= set(
        done
    )
    fake.fake.config.latency = 0
    return source, state, args, ids(gone), killed, forgotten, done


def test_kill_9_during_removals_then_the_same_command_removes_the_rest(
    api_env: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    fake = api_env
    source, state, args, gone, killed, forgotten, done = kill_during_removals(fake, tmp_path, procs)

    rerun = start_cli(fake.url, tmp_path / "rerun", *args, "--json")
    procs.append(rerun)
    assert rerun.wait(60) == 0, rerun.stderr()
    requests, _ = fake.snapshot()
    after = [rec for rec in requests if rec.time > killed]
    assert [rec for rec in after if rec.method == "PUT"] == []
    # Everyone absent deleted; nobody present; nobody the state had forgotten sent again.
    every = [str(rec.identifier) for rec in requests if rec.method == "DELETE"]
    assert set(every) == gone
    again = {str(rec.identifier) for rec in after if rec.method == "DELETE"}
    assert again.isdisjoint(forgotten)
    twice = {i for i, n in Counter(every).items() if n > 1}
    assert twice <= set(done) - forgotten, "only those in flight at the kill go twice"
    assert len(twice) <= 4  # --concurrency 4: at most 4 in flight
    # The resumed results file: every row once, every removal with its ok line.
    final = results_of(source)
    assert Counter(line["status"] for line in row_lines(final)) == {"unchanged": 369}
    oks = Counter(line["id"] for line in removal_lines(final) if line["status"] == "ok")
    assert set(oks) == gone
    assert known(state) == ids(range(1, 401)) - gone
    stats = orjson.loads(rerun.stdout())
    # Tonight's file counts every removal, the killed run's too (as it counts resumed rows);
    # absent counts those the state still knew at the re-run.
    assert (stats["absent"], stats["removed"]) == (len(again), len(gone))
    assert stats["exit_code"] == 0


def test_a_person_back_in_the_input_after_a_kill_is_not_removed(
    api_env: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    fake = api_env
    """Killed during the removals; before the re-run the export changed: one of the people not
    yet removed is back. The results file belongs to the old input and is unfinished, so the same
    command is refused (exit 2, nothing sent) as for any other unfinished file; --fresh then
    starts tonight over: the person back is not removed (nor sent: unchanged), the others are."""
    source, state, args, gone, killed, _, done = kill_during_removals(fake, tmp_path, procs)
    back = sorted(gone - set(done), key=lambda i: int(i.split("-")[1]))[-1]
    number = int(back.split("-")[1])
    rows = people([i for i in range(1, 401) if f"cust-{i}" not in gone or i == number])
    write_csv(source, rows)
    unfinished = results_of(source).read_bytes()

    before = mark(fake)
    refused = start_cli(fake.url, tmp_path / "refused", *args)
    procs.append(refused)
    assert refused.wait(60) == 2, refused.stderr()
    assert "another input" in refused.stderr() and "--fresh" in refused.stderr()
    assert mark(fake) == before
    assert results_of(source).read_bytes() == unfinished

    fresh = start_cli(fake.url, tmp_path / "fresh", *args, "--fresh")
    procs.append(fresh)
    assert fresh.wait(60) == 0, fresh.stderr()
    requests, _ = fake.snapshot()
    every = [str(rec.identifier) for rec in requests if rec.method == "DELETE"]
    assert back not in every
    assert set(every) == gone - {back}
    assert [rec for rec in requests if rec.time > killed and rec.method == "PUT"] == []
    assert known(state) == {row["id"] for row in rows}
    held = fake.person(back)
    assert held is not None and not held["deleted"]


# --- 9. state stats --------------------------------------------------------------------------


def test_state_stats_shows_each_runs_seen_absent_and_removed(
    api_env: ServerThread, tmp_path: Path
) -> None:
    source, state = first_night(api_env, tmp_path, 50)
    write_csv(source, people(range(1, 48)))  # 48..50 gone: counted, kept
    assert nightly(source, state).exit_code == 0
    write_csv(source, people(range(1, 47)))  # 47..50 gone: removed
    assert nightly(source, state, *MIRROR, "--max-missing", "4").exit_code == 0
    stats = invoke("state", "stats", state)
    assert stats.exit_code == 0, stats.output
    lines = stats.stdout.splitlines()
    assert lines[0] == "identifiers: 46"
    runs = [line for line in lines[1:] if re.match(r"\s+\S+ to \S+, ", line)]
    assert len(runs) == 3, lines
    expected = [(46, 4, 4), (47, 3, 0), (50, 0, 0)]  # newest first
    for line, (seen, absent, removed) in zip(runs, expected, strict=True):
        assert f"saw {seen}" in line, line
        assert f"{absent} known absent" in line, line
        if removed:
            assert f"{removed} removed" in line, line
        else:
            assert not re.search(r"[1-9]\d* removed", line), line


# --- 10. an unfinished results file of another input ----------------------------------------------


def test_an_unfinished_results_file_of_another_input_is_refused(
    fake: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    source = write_csv(tmp_path / "people.csv", people(range(1, 301)))
    state = tmp_path / "s.db"
    fake.fake.config.latency = 0.02
    args: list[str | Path] = ["sync", source, "--state", state, "--rate", "100", "--quiet"]
    proc = start_cli(fake.url, tmp_path / "night1", *args)
    procs.append(proc)
    results = results_of(source)
    wait_until(lambda: len(complete_lines(results)) >= 20, proc, what="20 outcomes")
    proc.popen.send_signal(signal.SIGKILL)
    proc.wait(10)
    fake.fake.config.latency = 0
    unfinished = results.read_bytes()

    write_csv(source, people(range(2, 302)))  # the next night's export
    before = mark(fake)
    refused = start_cli(fake.url, tmp_path / "night2", *args, "--missing", "delete", "--yes")
    procs.append(refused)
    assert refused.wait(60) == 2, refused.stderr()
    assert "belongs to another input" in refused.stderr(), refused.stderr()
    assert "Traceback" not in refused.stderr()
    assert mark(fake) == before
    assert results.read_bytes() == unfinished
    assert list(tmp_path.glob("people.csv.results.*.jsonl")) == []


@pytest.mark.parametrize("page", [2, 3, 50_000])
def test_the_absent_are_read_back_a_page_at_a_time_whatever_the_identifiers_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    """The known identifiers are read back a page at a time as one text with NULs between
    them: an identifier holding a NUL (or a comma, or other text) is found all the same,
    on any page."""
    monkeypatch.setattr(bulksync.state, "ABSENT_PAGE", page)
    names = ["a", "b\x00c", "b", "d,e", "é", "f\x00", "g", "h i", "\x00z"]
    with StateStore(tmp_path / "s.db", input_name="in.csv") as store:
        for name in names:
            store.record_accepted(name, {"n": name}, "people")
        store.record_accepted("an-object", {}, "objects")  # another kind: never absent
        store.flush()
        store.see(["a", "d,e", "f\x00", "nobody"])
        absent = sorted(set(names) - {"a", "d,e", "f\x00"})
        assert store.absent("people") == absent
        assert store.absent_count("people") == len(absent)
