"""The diff state store (`--state`): a nightly re-run sends only the rows whose payload changed
since Customer.io last accepted it. End to end against the Track API simulator over loopback;
every assertion is about what the simulator received, the results file, the summary, or the
state file itself (read with sqlite3 or StateStore). No mocks."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main
from bulksync.state import StateStore, payload_hash

from .conftest import API_KEY, ROOT, SITE_ID, ServerThread, read_results

Row = dict[str, str]
SHUFFLED = ["plan", "zip", "id", "email"]  # day 2's column order (day 1: id, email, plan, zip)
PLANS = ("free", "pro", "team")


# --- helpers ---------------------------------------------------------------------------------


def people(n: int, start: int = 1) -> list[Row]:
    return [
        {
            "id": f"cust-{i}",
            "email": f"person{i}@example.com",
            "plan": PLANS[i % 3],
            "zip": f"{i:05d}",
        }
        for i in range(start, start + n)
    ]


def write_csv(path: Path, rows: Sequence[Row], fieldnames: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def next_day(rows: list[Row], changed: int, new: int) -> tuple[list[Row], set[str], set[str]]:
    """Tomorrow's export: `changed` rows with one value edited, `new` rows inserted at random
    places (so row numbers shift); returns (rows, changed ids, new ids)."""
    rng = random.Random(7)
    out = [dict(row) for row in rows]
    edited = rng.sample(range(len(out)), changed)
    for k, index in enumerate(edited):
        row = out[index]
        if k % 2:
            row["plan"] = "enterprise"
        else:
            row["zip"] = "99" + row["zip"][2:]
    added = people(new, start=100_001)
    for row in added:
        out.insert(rng.randrange(len(out) + 1), row)
    return out, {rows[i]["id"] for i in edited}, {row["id"] for row in added}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def sync_state(source: Path, state: Path, results: Path, *extra: str) -> Result:
    """`bulksync sync SOURCE --state STATE --results RESULTS --rate 0 EXTRA...` in-process."""
    args = ["sync", str(source), "--state", str(state), "--results", str(results)]
    return invoke(*args, "--rate", "0", *extra)


def as_json(result: Result) -> dict[str, Any]:
    summary: dict[str, Any] = orjson.loads(result.stdout)
    return summary


def op_id(op: dict[str, Any]) -> str:
    ((key, value),) = op["identifiers"].items()
    return f"cio_{value}" if key == "cio_id" else str(value)


def sent(fake: ServerThread, since: int = 0) -> Counter[str]:
    """How often each identifier was sent in the requests received from index `since` on:
    once per PUT, once per batch operation."""
    ids: Counter[str] = Counter()
    for rec in list(fake.fake.requests)[since:]:
        if rec.method == "PUT" and rec.identifier is not None:
            ids[rec.identifier] += 1
        elif rec.method == "POST":
            ids.update(op_id(op) for op in rec.body["batch"])
    return ids


def by_id(results: Path) -> dict[str, dict[str, Any]]:
    """The outcome lines of a results file by identifier, asserting one line per row."""
    lines = read_results(results)
    table = {str(line["id"]): line for line in lines}
    assert len(table) == len(lines), "one line per row"
    return table


def statuses(results: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for identifier, line in by_id(results).items():
        out.setdefault(line["status"], set()).add(identifier)
    return out


def hashes(state: Path) -> dict[str, bytes]:
    """identifier -> hash, read from the state file with sqlite3 directly."""
    with contextlib.closing(sqlite3.connect(state)) as db:
        return dict(db.execute("SELECT identifier, hash FROM state").fetchall())


def snapshot(state: Path) -> tuple[list[Any], list[Any]]:
    """Everything the state file holds: its identifiers and its runs."""
    with contextlib.closing(sqlite3.connect(state)) as db:
        return (
            db.execute("SELECT * FROM state ORDER BY identifier").fetchall(),
            db.execute("SELECT rowid, * FROM runs ORDER BY rowid").fetchall(),
        )


def env_for(fake: ServerThread) -> dict[str, str]:
    return {
        **os.environ,
        "CUSTOMERIO_SITE_ID": SITE_ID,
        "CUSTOMERIO_API_KEY": API_KEY,
        "BULKSYNC_BASE_URL": fake.url,
    }


def complete_lines(path: Path) -> list[dict[str, Any]]:
    """Outcome lines fully written so far (a torn last line does not count, as on resume)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    lines = [orjson.loads(line) for line in whole.splitlines() if line.strip()]
    return [line for line in lines if "row" in line]


def kill_after(command: list[str], env: dict[str, str], results: Path, oks: int) -> int:
    """Run `command`, SIGKILL it once `oks` rows are `ok` in `results`; the `ok` rows then."""
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while sum(line["status"] == "ok" for line in complete_lines(results)) < oks:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    return sum(line["status"] == "ok" for line in complete_lines(results))


def no_traceback(result: Result) -> None:
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


# --- day 2 sends exactly what changed --------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_day_2_sends_exactly_the_changed_and_new_rows(
    api_env: ServerThread, tmp_path: Path, mode: str
) -> None:
    fake = api_env.fake
    extra = ["--batch", "--batch-size", "100"] if mode == "batch" else []
    state = tmp_path / "customers.state.db"
    day1 = people(1000)
    first = sync_state(write_csv(tmp_path / "day1.csv", day1), state, tmp_path / "1.jsonl", *extra)
    assert first.exit_code == 0, first.output
    assert sent(api_env) == Counter(row["id"] for row in day1)
    assert hashes(state) == {row["id"]: payload_hash(row) for row in day1}

    day2, changed, new = next_day(day1, changed=10, new=10)
    assert len(changed) == len(new) == 10
    source = write_csv(tmp_path / "day2.csv", day2, SHUFFLED)
    before = len(fake.requests)
    second = sync_state(source, state, tmp_path / "2.jsonl", "--json", *extra)

    assert second.exit_code == 0, second.output
    # Exactly the changed and new rows reached the simulator, once each, with today's values.
    assert sent(api_env, before) == Counter(changed | new)
    accepted = fake.accepted()
    today = {row["id"]: row for row in day2}
    for identifier in changed | new:
        assert accepted[identifier][-1] == today[identifier]
    # Every other row is `unchanged` in the results, with no request behind it.
    lines = by_id(tmp_path / "2.jsonl")
    assert set(lines) == set(today)
    assert statuses(tmp_path / "2.jsonl") == {
        "ok": changed | new,
        "unchanged": set(today) - changed - new,
    }
    for line in lines.values():
        if line["status"] == "unchanged":
            assert (line["http_status"], line["attempts"], line["error"]) == (None, 0, None)
            assert "payload" not in line
    requests = len(fake.requests) - before
    assert requests == (21 if mode == "single" else 2)  # the credentials check and the rows
    summary = as_json(second)
    expected = {"rows": 1010, "ok": 20, "unchanged": 990, "failed": 0, "invalid": 0}
    assert {key: summary[key] for key in expected} == expected
    assert (summary["requests"], summary["exit_code"]) == (requests, 0)
    # The state now holds today's payloads.
    assert hashes(state) == {i: payload_hash(row) for i, row in today.items()}

    # Day 3, same file: nothing but the credentials check is sent; the summary says why.
    before = len(fake.requests)
    third = sync_state(source, state, tmp_path / "3.jsonl", *extra)
    assert third.exit_code == 0, third.output
    assert len(fake.requests) - before == 1
    assert sent(api_env, before) == Counter()
    assert re.search(r"^  unchanged +1,010$", third.stdout, re.M), third.stdout
    assert ", 1 request)" in third.stdout.splitlines()[0]
    assert not re.search(r"^  ok ", third.stdout, re.M)


def test_jsonl_key_order_is_ignored_but_a_type_change_is_sent(
    api_env: ServerThread, tmp_path: Path
) -> None:
    rows: list[dict[str, Any]] = [
        {"id": f"u{i}", "score": i, "vip": i % 2 == 0, "zip": f"{i:05d}"} for i in range(1, 31)
    ]
    day1 = tmp_path / "day1.jsonl"
    day1.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    state = tmp_path / "s.db"
    assert sync_state(day1, state, tmp_path / "1.jsonl").exit_code == 0
    # Day 2: every object's keys reversed; u5's score becomes the string "5", u9's zip a number.
    today = [dict(reversed(row.items())) for row in rows]
    today[4]["score"] = "5"
    today[8]["zip"] = 9
    day2 = tmp_path / "day2.jsonl"
    day2.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in today))
    before = len(api_env.fake.requests)
    result = sync_state(day2, state, tmp_path / "2.jsonl")
    assert result.exit_code == 0, result.output
    assert sent(api_env, before) == Counter({"u5": 1, "u9": 1})
    assert api_env.fake.accepted()["u5"][-1]["score"] == "5"
    assert api_env.fake.accepted()["u9"][-1]["zip"] == 9


# --- kill -9 --------------------------------------------------------------------------------


def test_kill_9_on_day_2_then_resume_skips_no_changed_row(
    api_env: ServerThread, tmp_path: Path
) -> None:
    fake = api_env.fake
    state = tmp_path / "s.db"
    day1 = people(1000)
    first = sync_state(write_csv(tmp_path / "day1.csv", day1), state, tmp_path / "1.jsonl")
    assert first.exit_code == 0, first.output

    day2, changed, new = next_day(day1, changed=50, new=25)
    source = write_csv(tmp_path / "day2.csv", day2, SHUFFLED)
    out = tmp_path / "2.jsonl"
    fake.config.latency = 0.02  # rows are in flight at the kill
    before = len(fake.requests)
    command = [sys.executable, "-m", "bulksync", "sync", str(source), "--state", str(state)]
    command += ["--results", str(out), "--rate", "50", "--quiet"]
    done = kill_after(command, env_for(api_env), out, oks=20)
    assert done < len(changed | new), "the kill came too late to test anything"

    resumed = subprocess.run(
        command, env=env_for(api_env), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert resumed.returncode == 0, resumed.stderr

    # No changed or new row skipped: each was accepted with today's payload...
    today = {row["id"]: row for row in day2}
    accepted = fake.accepted()
    for identifier in changed | new:
        assert accepted[identifier][-1] == today[identifier], identifier
    # ...and nothing else was sent on day 2.
    assert set(sent(api_env, before)) <= changed | new
    # One outcome per row, `unchanged` for the rows that did not change.
    lines = by_id(out)
    assert set(lines) == set(today)
    assert sorted(line["row"] for line in lines.values()) == list(range(1, len(day2) + 1))
    for identifier, line in lines.items():
        expected = {"ok", "unchanged"} if identifier in changed | new else {"unchanged"}
        assert line["status"] in expected, line


def test_edit_reverted_after_a_kill_is_sent(api_env: ServerThread, tmp_path: Path) -> None:
    """Day 2 changes 60 rows and is killed after some were accepted, then resumed; day 3 the
    export has the day-1 values again. Customer.io holds the day-2 values for those rows, so
    day 3 must send them: after a run that exits 0, Customer.io holds what the file says."""
    fake = api_env.fake
    state = tmp_path / "s.db"
    day1 = people(200)
    source1 = write_csv(tmp_path / "day1.csv", day1)
    assert sync_state(source1, state, tmp_path / "1.jsonl").exit_code == 0

    day2, changed, _ = next_day(day1, changed=60, new=0)
    source2 = write_csv(tmp_path / "day2.csv", day2)
    out = tmp_path / "2.jsonl"
    fake.config.latency = 0.02
    command = [sys.executable, "-m", "bulksync", "sync", str(source2), "--state", str(state)]
    command += ["--results", str(out), "--rate", "50", "--quiet"]
    assert kill_after(command, env_for(api_env), out, oks=20) < len(changed)
    resumed = subprocess.run(command, env=env_for(api_env), cwd=ROOT, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    fake.config.latency = 0

    result = sync_state(source1, state, tmp_path / "3.jsonl")  # day 3: the edits are undone
    assert result.exit_code == 0, result.output
    accepted, file_says = fake.accepted(), {row["id"]: row for row in day1}
    stale = sorted(i for i in changed if accepted[i][-1] != file_says[i])
    assert stale == [], f"{len(stale)} rows left with day 2's values in Customer.io"


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_a_persons_first_row_accepted_while_a_later_row_is_in_flight_is_not_their_state(
    api_env: ServerThread, tmp_path: Path, mode: str
) -> None:
    """A person twice in one run (from standard input, which cannot be read ahead for repeats:
    both rows are sent, in order). Once the first row is accepted, the second is sent; a crash
    while it is in flight leaves Customer.io with either row's payload. So the state must not
    say the first one: the next night would skip a row holding the first row's values as
    unchanged, and leave the second's in Customer.io. It says the second once that is
    accepted."""
    fake = api_env.fake
    source = write_csv(tmp_path / "in.csv", [{"id": "x", "plan": "a"}, {"id": "x", "plan": "b"}])
    state, out = tmp_path / "s.db", tmp_path / "out.jsonl"
    fake.config.latency = 1.5  # the second row's request, in flight while the state is read
    command = [sys.executable, "-m", "bulksync", "sync", "-", "--state", str(state)]
    command += ["--results", str(out), "--rate", "0", "--quiet"]
    command += ["--batch", "--batch-size", "10"] if mode == "batch" else []
    with source.open("rb") as stdin:
        proc = subprocess.Popen(command, env=env_for(api_env), cwd=ROOT, stdin=stdin)
    try:
        deadline = time.monotonic() + 30
        while not any(line["status"] == "ok" for line in complete_lines(out)):
            assert proc.poll() is None and time.monotonic() < deadline, "row 1 never accepted"
            time.sleep(0.01)
        time.sleep(0.3)  # the state's flush follows the results file's at once
        assert proc.poll() is None, "the second row was answered already"
        with contextlib.closing(sqlite3.connect(state)) as db:
            ((held,),) = db.execute("SELECT hash FROM state WHERE identifier = 'x'").fetchall()
        assert held != payload_hash({"id": "x", "plan": "a"})
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert [payload["plan"] for payload in fake.accepted()["x"]] == ["a", "b"]
    with StateStore(state) as store:
        assert store.last_hashes(["x"]) == {"x": payload_hash({"id": "x", "plan": "b"})}


def test_an_identifiers_acceptance_counts_once_its_last_row_sent_is_answered(
    tmp_path: Path,
) -> None:
    """The state's own account: rows marked sending, then each answered, accepted or failed.
    The hash of an acceptance is written only when no other row of the identifier is still
    to be answered."""
    a, b = {"plan": "a"}, {"plan": "b"}
    with StateStore(tmp_path / "s.db") as store:
        store.mark_sending(["x", "x", "y", "z", "z"])
        store.record_accepted("x", a, "people", 1)
        store.record_accepted("y", a, "people", 2)
        store.record_accepted("z", a, "people", 3)
        store.flush()
        assert store.last_hashes(["x", "y", "z"]) == {"x": b"", "y": payload_hash(a), "z": b""}
        store.record_accepted("x", b, "people", 4)  # the last row of x: what x now holds
        store.unsent("z", 5)  # refused: z holds the first row's payload, or the one before
        store.flush()
        assert store.last_hashes(["x", "z"]) == {"x": payload_hash(b), "z": b""}
        store.mark_sending(["z"])  # a run later: z alone
        store.record_accepted("z", b, "people", 1)
        store.flush()
        assert store.last_hashes(["z"]) == {"z": payload_hash(b)}


# --- failures and acceptance ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_row_that_failed_yesterday_is_resent_though_unchanged(
    api_env: ServerThread, tmp_path: Path, mode: str
) -> None:
    fake = api_env.fake
    extra = ["--batch", "--batch-size", "10"] if mode == "batch" else []
    rows = people(50)
    rejected = {"cust-7", "cust-30"}
    source = write_csv(tmp_path / "in.csv", rows)
    state = tmp_path / "s.db"
    fake.config.reject_ids = frozenset(rejected)
    first = sync_state(source, state, tmp_path / "1.jsonl", *extra)
    assert first.exit_code == 1, first.output
    assert statuses(tmp_path / "1.jsonl") == {
        "failed": rejected,
        "ok": {row["id"] for row in rows} - rejected,
    }
    # The state knows only what was accepted.
    assert hashes(state) == {
        row["id"]: payload_hash(row) for row in rows if row["id"] not in rejected
    }

    fake.config.reject_ids = frozenset()
    before = len(fake.requests)
    second = sync_state(source, state, tmp_path / "2.jsonl", *extra)
    assert second.exit_code == 0, second.output
    assert sent(api_env, before) == Counter(rejected)
    assert statuses(tmp_path / "2.jsonl") == {
        "ok": rejected,
        "unchanged": {row["id"] for row in rows} - rejected,
    }
    assert hashes(state) == {row["id"]: payload_hash(row) for row in rows}


def test_transient_failure_leaves_no_state(api_env: ServerThread, tmp_path: Path) -> None:
    rows = people(30)
    api_env.fake.config.fail_first = {"cust-12": 10}  # 503 past every retry
    state = tmp_path / "s.db"
    result = sync_state(
        write_csv(tmp_path / "in.csv", rows), state, tmp_path / "1.jsonl", "--max-retries", "1"
    )
    assert result.exit_code == 1, result.output
    assert by_id(tmp_path / "1.jsonl")["cust-12"]["status"] == "failed"
    assert set(hashes(state)) == {row["id"] for row in rows} - {"cust-12"}


def test_dry_run_reports_unchanged_and_leaves_the_state_alone(
    api_env: ServerThread, tmp_path: Path
) -> None:
    rows = people(40)
    state = tmp_path / "s.db"
    first = sync_state(write_csv(tmp_path / "day1.csv", rows), state, tmp_path / "1.jsonl")
    assert first.exit_code == 0, first.output
    before_state = snapshot(state)
    before = len(api_env.fake.requests)

    day2, changed, new = next_day(rows, changed=4, new=2)
    source = write_csv(tmp_path / "day2.csv", day2, SHUFFLED)
    out = tmp_path / "dry.jsonl"
    result = sync_state(source, state, out, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert len(api_env.fake.requests) == before  # a dry run sends nothing
    assert statuses(out) == {
        "valid": changed | new,
        "unchanged": {row["id"] for row in day2} - changed - new,
    }
    today = {row["id"]: row for row in day2}
    for identifier, line in by_id(out).items():
        if line["status"] == "valid":
            assert line["payload"] == today[identifier]
    summary = as_json(result)
    assert (summary["valid"], summary["unchanged"]) == (6, 36)
    assert snapshot(state) == before_state
    assert oct(state.stat().st_mode & 0o777) == oct(0o600)


def test_dry_run_does_not_create_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "new.state.db"
    source = write_csv(tmp_path / "in.csv", people(5))
    result = sync_state(source, state, tmp_path / "dry.jsonl", "--dry-run")
    assert result.exit_code == 0, result.output
    assert statuses(tmp_path / "dry.jsonl") == {"valid": {f"cust-{i}" for i in range(1, 6)}}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("new.state")) == []


# --- options that change the payload; --full ------------------------------------------------

PAYLOAD_OPTIONS = [
    ["--rename", "plan=tier"],
    ["--exclude", "zip"],
    ["--type", "zip=int"],
    ["--update-only"],
    ["--empty", "clear"],
]


@pytest.mark.parametrize("option", PAYLOAD_OPTIONS, ids=lambda o: " ".join(o))
def test_option_that_changes_the_payload_resends_everything(
    api_env: ServerThread, tmp_path: Path, option: list[str]
) -> None:
    fake = api_env.fake
    # Every row has an empty `nickname`: left out by default, sent as "" with --empty clear.
    rows = [{**row, "nickname": ""} for row in people(40)]
    source = write_csv(tmp_path / "in.csv", rows)
    state = tmp_path / "s.db"
    assert sync_state(source, state, tmp_path / "1.jsonl").exit_code == 0
    yesterday = {i: bodies[-1] for i, bodies in fake.accepted().items()}

    before = len(fake.requests)
    result = sync_state(source, state, tmp_path / "2.jsonl", *option)
    assert result.exit_code == 0, result.output
    assert sent(api_env, before) == Counter(row["id"] for row in rows)
    accepted = fake.accepted()
    assert all(accepted[i][-1] != yesterday[i] for i in yesterday)
    # The state now holds the new payloads: the same options again send nothing.
    before = len(fake.requests)
    again = sync_state(source, state, tmp_path / "3.jsonl", *option)
    assert again.exit_code == 0, again.output
    assert sent(api_env, before) == Counter()


def test_full_resends_everything_and_refreshes_the_state(
    api_env: ServerThread, tmp_path: Path
) -> None:
    fake = api_env.fake
    rows = people(40)
    source = write_csv(tmp_path / "in.csv", rows)
    state = tmp_path / "s.db"
    assert sync_state(source, state, tmp_path / "1.jsonl").exit_code == 0
    # The state drifts from what the file says (e.g. people edited in Customer.io's UI).
    with StateStore(state) as store:
        for row in rows[:5]:
            store.record_accepted(row["id"], {**row, "plan": "edited elsewhere"}, "people")
    assert hashes(state)[rows[0]["id"]] != payload_hash(rows[0])

    before = len(fake.requests)
    full = sync_state(source, state, tmp_path / "2.jsonl", "--full", "--json")
    assert full.exit_code == 0, full.output
    assert sent(api_env, before) == Counter(row["id"] for row in rows)
    assert (as_json(full)["ok"], as_json(full)["unchanged"]) == (40, 0)
    assert hashes(state) == {row["id"]: payload_hash(row) for row in rows}
    with StateStore(state) as store:
        assert store.stats()["last_run"]["accepted"] == 40

    before = len(fake.requests)
    assert sync_state(source, state, tmp_path / "3.jsonl").exit_code == 0
    assert sent(api_env, before) == Counter()


# --- retry --state ------------------------------------------------------------------------


def test_retry_records_accepted_rows_in_the_state(api_env: ServerThread, tmp_path: Path) -> None:
    fake = api_env.fake
    rows = people(30)
    rejected = {"cust-4", "cust-22"}
    source = write_csv(tmp_path / "in.csv", rows)
    state = tmp_path / "s.db"
    results = tmp_path / "1.jsonl"
    fake.config.reject_ids = frozenset(rejected)
    assert sync_state(source, state, results).exit_code == 1
    assert not rejected & set(hashes(state))

    fake.config.reject_ids = frozenset()
    before = len(fake.requests)
    result = invoke(
        "retry", str(results), "--all-failed", "--state", str(state), "--rate", "0", "--json"
    )
    assert result.exit_code == 0, result.output
    assert sent(api_env, before) == Counter(rejected)
    assert hashes(state) == {row["id"]: payload_hash(row) for row in rows}
    with StateStore(state) as store:
        last = store.stats()["last_run"]
    assert (last["input"], last["accepted"]) == (str(results), 2)
    assert last["finished_at"] is not None

    # The next night sends nothing: retry's acceptances count.
    before = len(fake.requests)
    assert sync_state(source, state, tmp_path / "2.jsonl").exit_code == 0
    assert sent(api_env, before) == Counter()


# --- state stats / forget; the file ---------------------------------------------------------


def test_state_stats_and_forget(api_env: ServerThread, tmp_path: Path) -> None:
    fake = api_env.fake
    rows = people(25)
    source = write_csv(tmp_path / "in.csv", rows)
    state = tmp_path / "s.db"
    started = int(time.time())
    assert sync_state(source, state, tmp_path / "1.jsonl").exit_code == 0
    assert oct(state.stat().st_mode & 0o777) == oct(0o600)

    stats = invoke("state", "stats", str(state))
    assert stats.exit_code == 0, stats.output
    lines = stats.stdout.splitlines()
    assert lines[0] == "identifiers: 25"
    assert lines[1] == "runs, newest first:"
    match = re.fullmatch(
        r"  (\S+) to (\S+), (.+): 25 rows accepted, saw 25, 0 known absent", lines[2]
    )
    assert match, lines
    assert match.group(3) == str(source)
    run_started, run_finished = (datetime.fromisoformat(match.group(k)) for k in (1, 2))
    assert started - 1 <= run_started.timestamp() <= run_finished.timestamp() <= time.time() + 1

    forget = invoke("state", "forget", str(state), "cust-3", "cust-17", "nobody")
    assert forget.exit_code == 0, forget.output
    assert forget.stdout.strip() == "forgot 2 of 3 identifiers"
    assert invoke("state", "stats", str(state)).stdout.splitlines()[0] == "identifiers: 23"
    assert {"cust-3", "cust-17"}.isdisjoint(hashes(state))

    before = len(fake.requests)
    assert sync_state(source, state, tmp_path / "2.jsonl").exit_code == 0
    assert sent(api_env, before) == Counter({"cust-3": 1, "cust-17": 1})
    assert len(hashes(state)) == 25
    assert oct(state.stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize("command", [["stats"], ["forget", "cust-1"]])
def test_state_commands_on_a_missing_file_exit_2(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "missing.db"
    result = invoke("state", command[0], str(missing), *command[1:])
    assert result.exit_code == 2
    no_traceback(result)
    assert "does not exist" in result.output
    assert not missing.exists()


@pytest.mark.parametrize("command", [["stats"], ["forget", "cust-1"]])
def test_state_commands_on_a_file_that_is_not_a_state_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 200)
    result = invoke("state", command[0], str(path), *command[1:])
    no_traceback(result)
    assert result.exit_code == 2
    assert "not a database" in result.output
    assert path.read_text() == "not a database\n" * 200


def test_sync_with_a_file_that_is_not_a_state_exits_2_sending_nothing(
    api_env: ServerThread, tmp_path: Path
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 200)
    result = sync_state(write_csv(tmp_path / "in.csv", people(3)), path, tmp_path / "1.jsonl")
    no_traceback(result)
    assert result.exit_code == 2
    assert "not a database" in result.output
    assert sent(api_env) == Counter()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_every_file_of_a_new_state_is_private(tmp_path: Path) -> None:
    """The state lists identifiers (often emails): its WAL and shared-memory files too must be
    0600 from the start, while the first run writes to them."""
    path = tmp_path / "new.db"
    with umask(0o022), StateStore(path, input_name="in.csv") as store:
        store.record_accepted("person@example.com", {"plan": "pro"}, "people")
        store.flush()
        files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("new.db"))
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert "new.db-wal" in modes
    assert modes == dict.fromkeys(modes, oct(0o600))


def test_an_existing_state_file_is_narrowed_to_0600(api_env: ServerThread, tmp_path: Path) -> None:
    """A state restored from a backup or copied under another umask may be 0644: the next run
    narrows it before writing identifiers to it, as it does for the results file."""
    source = write_csv(tmp_path / "in.csv", people(5))
    state = tmp_path / "s.db"
    assert sync_state(source, state, tmp_path / "1.jsonl").exit_code == 0
    state.chmod(0o644)
    result = sync_state(source, state, tmp_path / "2.jsonl")
    assert result.exit_code == 0, result.output
    assert oct(state.stat().st_mode & 0o777) == oct(0o600)


# --- payload_hash -------------------------------------------------------------------------


def test_payload_hash_ignores_key_order() -> None:
    payload = {"id": "c1", "email": "a@example.com", "plan": "pro", "score": 3, "vip": True}
    reordered = dict(reversed(payload.items()))
    assert list(reordered) != list(payload)
    assert payload_hash(reordered) == payload_hash(payload)
    assert len(payload_hash(payload)) == 16


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"zip": "1"}, {"zip": 1}),
        ({"zip": 1}, {"zip": 1.0}),
        ({"vip": 1}, {"vip": True}),
        ({"vip": "true"}, {"vip": True}),
        ({"nick": ""}, {}),
        ({"plan": "pro"}, {"plan": "pro", "_update": True}),
        ({"ab": "c"}, {"a": "bc"}),
        ({"plan": "pro"}, {"tier": "pro"}),
    ],
)
def test_payload_hash_differs_when_the_payload_does(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert payload_hash(a) != payload_hash(b)
