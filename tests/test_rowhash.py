"""The diff state's fast path (bulksync/rowhash.py, plan.KnownRows): a nightly row that did not
change is found unchanged from its cells, before it is normalized. End to end against the
simulator: what it received, the results file and the state file. The one spy counts the rows
normalize() is given, to tell the fast path from the slow one (both must end the same)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

import bulksync.plan
import bulksync.state
from bulksync.normalize import NormalizeOptions, plan_columns
from bulksync.rowhash import hash_key, row_hashes
from bulksync.state import payload_hash

from .conftest import ROOT, ServerThread, read_results
from .test_state import people, sent, sync_state, write_csv

COLUMNS = ["id", "email", "plan", "zip"]


@pytest.fixture
def normalized(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many rows normalize() was given in the main pass (plan's), as "rows"."""
    counts: Counter[str] = Counter()
    real = bulksync.plan.normalize

    def counting(chunk: Any, plan: Any) -> Any:
        counts["rows"] += len(chunk.rows)
        return real(chunk, plan)

    monkeypatch.setattr(bulksync.plan, "normalize", counting)
    return counts


def lines_of(results: Path) -> list[dict[str, Any]]:
    """The outcome lines by row (answers may come in another order)."""
    return sorted(read_results(results), key=lambda line: int(line["row"]))


def rowhashes(state: Path) -> dict[str, tuple[int | None, int | None]]:
    """identifier -> the rowhash that counts ((None, None) for none)."""
    with contextlib.closing(sqlite3.connect(state)) as db:
        rows = db.execute(
            "SELECT identifier, iif(raw_at = accepted_at, raw1, NULL),"
            " iif(raw_at = accepted_at, raw2, NULL) FROM state"
        ).fetchall()
    return {identifier: (raw1, raw2) for identifier, raw1, raw2 in rows}


def forget_rowhashes(state: Path) -> None:
    """The state as a version without rowhashes left it."""
    with contextlib.closing(sqlite3.connect(state)) as db:
        db.execute("UPDATE state SET raw1 = NULL, raw2 = NULL, raw_at = NULL")
        db.commit()


def first_night(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    """Sync `rows` with a new state file; the state file."""
    state = tmp_path / "s.db"
    result = sync_state(write_csv(tmp_path / "1.csv", rows), state, tmp_path / "1.jsonl")
    assert result.exit_code == 0, result.output
    return state


# --- the hashes themselves -------------------------------------------------------------------


def hashes_of(rows: list[list[str | None]], columns: list[str] | None = None) -> list[Any]:
    columns = columns or [f"c{i}" for i in range(len(rows[0]))]
    frame = pd.DataFrame(rows, columns=columns, dtype="str")
    plan = plan_columns(NormalizeOptions(id_column=columns[0]), columns)
    found = row_hashes(frame, hash_key(plan, columns))
    assert found is not None
    return [tuple(pair) for pair in found.tolist()]


def test_rows_whose_cells_join_alike_hash_apart() -> None:
    """Each cell's length is hashed with the row: no two different rows hash alike, wherever
    their cells split the same bytes; a missing cell is not an empty one."""
    rows: list[list[str | None]] = [
        ["a\x1fb", "c"],
        ["a", "b\x1fc"],
        ["a\\", "\x1fc"],
        ["a\\\x1f", "c"],
        ["x", None],
        ["x", ""],
        ["x", "\\0"],
        ["x", "\\\\0"],
        ["x", "\\u"],
    ]
    found = hashes_of(rows)
    assert len(set(found)) == len(rows)
    assert hashes_of([["a", "b"], ["a", "b"]])[0] == hashes_of([["a", "b"]])[0]


def test_the_columns_and_the_options_key_the_hash() -> None:
    """The same cells under other column names (or another order), or with other options,
    hash otherwise: each would normalize to another payload."""
    frame = pd.DataFrame([["1", "2"]], columns=["id", "zip"], dtype="str")
    swapped = pd.DataFrame([["1", "2"]], columns=["zip", "id"], dtype="str")
    plan = plan_columns(NormalizeOptions(), ["id", "zip"])
    excluding = plan_columns(NormalizeOptions(exclude=frozenset({"zip"})), ["id", "zip"])
    found = {
        tuple(row_hashes(f, hash_key(p, list(f.columns))).tolist()[0])  # type: ignore[union-attr]
        for f, p in ((frame, plan), (swapped, plan), (frame, excluding))
    }
    assert len(found) == 3


def test_a_column_of_other_json_values_has_no_rowhash() -> None:
    """JSON's 1 and "1" are different payloads that read alike as text: no rowhash."""
    frame = pd.DataFrame({"id": pd.Series(["1"], dtype="str"), "n": pd.Series([1], dtype=object)})
    plan = plan_columns(NormalizeOptions(), ["id", "n"])
    assert row_hashes(frame, hash_key(plan, ["id", "n"])) is None


def test_the_key_is_the_same_in_every_process() -> None:
    """Options hold sets, whose order differs between processes: the key must not."""
    code = (
        "from bulksync.normalize import NormalizeOptions, plan_columns\n"
        "from bulksync.rowhash import hash_key\n"
        "c = ['id', 'a', 'b', 'c', 'd']\n"
        "o = NormalizeOptions(exclude=frozenset({'a', 'b', 'c'}), date_columns=('d',),"
        " rename={'b': 'x', 'a': 'y'})\n"
        "print(hash_key(plan_columns(o, c), c).hex())"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(keys) == 1


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.parametrize("named_by", ["id", "email"])
def test_an_unchanged_night_normalizes_nothing_and_ends_as_the_slow_path(
    api_env: ServerThread, tmp_path: Path, normalized: Counter[str], named_by: str
) -> None:
    """Named by an id column, or by an email column (Mailchimp's), which normalize() reads
    into the identifier: the fast path finds it as normalize() would."""
    state = tmp_path / "s.db"
    rows = people(300)
    if named_by == "email":  # no id column; some addresses in capitals
        rows = [{k: v for k, v in row.items() if k != "id"} for row in rows]
        for row in rows[::7]:
            row["email"] = row["email"].upper()
    source = write_csv(tmp_path / "in.csv", rows)
    assert sync_state(source, state, tmp_path / "1.jsonl", "--batch").exit_code == 0
    assert None not in {raw for pair in rowhashes(state).values() for raw in pair}
    slow = tmp_path / "slow.db"
    slow.write_bytes(state.read_bytes())
    forget_rowhashes(slow)

    normalized.clear()
    before = len(api_env.fake.requests)
    fast_run = sync_state(source, state, tmp_path / "fast.jsonl")
    assert fast_run.exit_code == 0, fast_run.output
    assert normalized["rows"] == 0
    assert sent(api_env, before) == Counter()

    slow_run = sync_state(source, slow, tmp_path / "slow.jsonl")
    assert slow_run.exit_code == 0, slow_run.output
    assert normalized["rows"] == 300  # no rowhash known: every row normalized
    assert lines_of(tmp_path / "fast.jsonl") == lines_of(tmp_path / "slow.jsonl")
    assert {line["status"] for line in lines_of(tmp_path / "fast.jsonl")} == {"unchanged"}
    # The slow run learned each row's rowhash: the third night is fast.
    assert rowhashes(slow) == rowhashes(state)
    normalized.clear()
    assert sync_state(source, slow, tmp_path / "3.jsonl").exit_code == 0
    assert normalized["rows"] == 0


def test_an_edited_row_is_sent_and_its_new_rowhash_kept(
    api_env: ServerThread, tmp_path: Path, normalized: Counter[str]
) -> None:
    rows = people(50)
    state = first_night(tmp_path, rows)
    rows[10]["plan"] = "enterprise"
    rows[20]["zip"] = "99999"
    source = write_csv(tmp_path / "2.csv", rows)
    normalized.clear()
    before = len(api_env.fake.requests)
    assert sync_state(source, state, tmp_path / "2.jsonl").exit_code == 0
    assert sent(api_env, before) == Counter({"cust-11": 1, "cust-21": 1})
    assert normalized["rows"] == 2
    assert api_env.fake.accepted()["cust-11"][-1]["plan"] == "enterprise"
    normalized.clear()
    before = len(api_env.fake.requests)
    assert sync_state(source, state, tmp_path / "3.jsonl").exit_code == 0
    assert (sent(api_env, before), normalized["rows"]) == (Counter(), 0)


def test_an_option_that_changes_the_payload_is_not_hidden_by_the_rowhash(
    api_env: ServerThread, tmp_path: Path
) -> None:
    state = tmp_path / "s.db"
    source = write_csv(tmp_path / "in.csv", people(20))
    assert sync_state(source, state, tmp_path / "1.jsonl").exit_code == 0
    before = len(api_env.fake.requests)
    assert sync_state(source, state, tmp_path / "2.jsonl", "--exclude", "zip").exit_code == 0
    assert sum(sent(api_env, before).values()) == 20
    assert all("zip" not in api_env.fake.accepted()[f"cust-{i}"][-1] for i in range(1, 21))


def test_a_repeated_person_known_by_rowhash_is_superseded_as_on_the_slow_path(
    api_env: ServerThread, tmp_path: Path, normalized: Counter[str]
) -> None:
    """Last night's row of cust-2, then tonight's edit of it further down, then an exact copy
    of cust-3's row: the known rows are `unchanged` superseded by the later ones, as without
    rowhashes, and only the edit is sent."""
    rows = people(5)
    state = first_night(tmp_path, rows)
    edited = {**rows[1], "plan": "enterprise"}
    source = write_csv(tmp_path / "2.csv", [*rows, edited, rows[2]])
    slow = tmp_path / "slow.db"
    slow.write_bytes(state.read_bytes())
    forget_rowhashes(slow)

    before = len(api_env.fake.requests)
    fast_run = sync_state(source, state, tmp_path / "fast.jsonl", "--json")
    assert fast_run.exit_code == 0, fast_run.output
    assert sent(api_env, before) == Counter({"cust-2": 1})
    assert api_env.fake.accepted()["cust-2"][-1]["plan"] == "enterprise"
    assert sync_state(source, slow, tmp_path / "slow.jsonl").exit_code == 0
    fast = lines_of(tmp_path / "fast.jsonl")
    assert fast == lines_of(tmp_path / "slow.jsonl")
    superseded = {line["row"]: line.get("superseded_by") for line in fast if line["row"] in (2, 3)}
    assert superseded == {2: 6, 3: 7}
    repeated = orjson.loads(fast_run.stdout)["repeated"]
    assert (repeated["identifiers"], repeated["rows"]) == (2, 2)


def test_a_row_whose_send_failed_loses_its_rowhash(api_env: ServerThread, tmp_path: Path) -> None:
    """Tonight's edit of cust-3 is refused: Customer.io still has last night's row, but the
    state no longer claims to know it, and tomorrow's row (last night's again) is sent."""
    state = tmp_path / "s.db"
    rows = people(5)
    first = write_csv(tmp_path / "1.csv", rows)
    assert sync_state(first, state, tmp_path / "1.jsonl").exit_code == 0
    api_env.fake.config.reject_ids = frozenset({"cust-3"})
    edited = write_csv(tmp_path / "2.csv", [*rows[:2], {**rows[2], "plan": "x"}, *rows[3:]])
    assert sync_state(edited, state, tmp_path / "2.jsonl").exit_code != 0
    assert rowhashes(state)["cust-3"] == (None, None)
    api_env.fake.config.reject_ids = frozenset()
    before = len(api_env.fake.requests)
    assert sync_state(first, state, tmp_path / "3.jsonl").exit_code == 0
    assert sent(api_env, before) == Counter({"cust-3": 1})


def test_a_dry_run_reads_rowhashes_and_writes_none(
    api_env: ServerThread, tmp_path: Path, normalized: Counter[str]
) -> None:
    state = tmp_path / "s.db"
    source = write_csv(tmp_path / "in.csv", people(30))
    assert sync_state(source, state, tmp_path / "1.jsonl").exit_code == 0
    known = rowhashes(state)
    normalized.clear()
    dry = sync_state(source, state, tmp_path / "dry.jsonl", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert normalized["rows"] == 0
    assert {line["status"] for line in lines_of(tmp_path / "dry.jsonl")} == {"unchanged"}
    forget_rowhashes(state)
    assert sync_state(source, state, tmp_path / "dry2.jsonl", "--dry-run").exit_code == 0
    assert set(rowhashes(state).values()) == {(None, None)}
    assert len(known) == 30


def test_jsonl_of_strings_takes_the_fast_path_and_of_numbers_the_slow_one(
    api_env: ServerThread, tmp_path: Path, normalized: Counter[str]
) -> None:
    state = tmp_path / "s.db"
    strings = tmp_path / "s.jsonl"
    strings.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in people(10)))
    numbers = tmp_path / "n.jsonl"
    numbers.write_bytes(
        b"".join(orjson.dumps({"id": f"n{i}", "score": i}) + b"\n" for i in range(10))
    )
    for source in (strings, numbers):
        assert sync_state(source, state, tmp_path / "1.jsonl", "--fresh").exit_code == 0
    normalized.clear()
    assert sync_state(strings, state, tmp_path / "2.jsonl", "--fresh").exit_code == 0
    assert normalized["rows"] == 0
    before = len(api_env.fake.requests)
    assert sync_state(numbers, state, tmp_path / "3.jsonl", "--fresh").exit_code == 0
    assert normalized["rows"] == 10
    assert sent(api_env, before) == Counter()  # unchanged all the same, by the payload's hash
    assert {line["status"] for line in lines_of(tmp_path / "3.jsonl")} == {"unchanged"}


def test_an_acceptance_by_a_version_without_rowhashes_voids_the_rowhash(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """A version before rowhashes, run in between, sent cust-2's edit and recorded its hash (a
    later accepted_at) but left the rowhash of the row before it: last night's row, back in
    tonight's file, is not taken for what Customer.io holds."""
    state = tmp_path / "s.db"
    rows = people(5)
    source = write_csv(tmp_path / "1.csv", rows)
    assert sync_state(source, state, tmp_path / "1.jsonl").exit_code == 0
    with contextlib.closing(sqlite3.connect(state)) as db:
        db.execute(
            "UPDATE state SET hash = ?, accepted_at = accepted_at + 1 WHERE identifier = 'cust-2'",
            (payload_hash({**rows[1], "plan": "edited"}),),
        )
        db.execute("UPDATE state SET hash = X'' WHERE identifier = 'cust-4'")  # in flight
        db.commit()
    before = len(api_env.fake.requests)
    assert sync_state(source, state, tmp_path / "2.jsonl").exit_code == 0
    assert sent(api_env, before) == Counter({"cust-2": 1, "cust-4": 1})


def test_known_edited_new_and_broken_rows_in_one_chunk_keep_their_order(
    api_env: ServerThread, tmp_path: Path, normalized: Counter[str]
) -> None:
    """Rows found by rowhash, rows normalized (edited, new, invalid) and a row the reader
    cannot read, mixed: the results file is the slow path's, line for line."""
    rows = people(40)
    state = first_night(tmp_path, rows)
    rows[5]["plan"] = "enterprise"
    rows[9]["email"] = "not an address"
    rows.insert(20, people(1, start=500)[0])
    source = write_csv(tmp_path / "2.csv", rows)
    text = source.read_text().splitlines(keepends=True)
    text.insert(30, "cust-x,too,many,fields,here\n")
    source.write_text("".join(text))
    slow = tmp_path / "slow.db"
    slow.write_bytes(state.read_bytes())
    forget_rowhashes(slow)

    normalized.clear()
    fast_run = sync_state(source, state, tmp_path / "fast.jsonl")
    assert fast_run.exit_code == 1, fast_run.output  # some rows invalid
    assert normalized["rows"] == 3  # the edited, the invalid and the new row
    assert sync_state(source, slow, tmp_path / "slow.jsonl").exit_code == 1
    fast = lines_of(tmp_path / "fast.jsonl")
    assert fast == lines_of(tmp_path / "slow.jsonl")
    assert [line["row"] for line in fast] == list(range(1, 43))
    assert Counter(line["status"] for line in fast) == Counter(
        {"unchanged": 38, "ok": 2, "invalid": 2}
    )


def test_who_is_absent_on_a_night_found_by_rowhash(
    api_env: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every known person is found by a rowhash, nobody is absent and no identifier is
    read back from the state; when one is missing (or is found only on a slow row: a repeated
    person's earlier row, an edit), they are looked up, and only the missing one is absent."""
    looked_up: list[int] = []
    real = bulksync.state.StateStore.absent_count

    def counting(self: bulksync.state.StateStore, kind: str) -> int:
        looked_up.append(n := real(self, kind))
        return n

    monkeypatch.setattr(bulksync.state.StateStore, "absent_count", counting)
    rows = people(20)
    state = first_night(tmp_path, rows)

    def night(name: str, tonight: list[dict[str, str]]) -> int | None:
        source = write_csv(tmp_path / f"{name}.csv", tonight)
        result = sync_state(source, state, tmp_path / f"{name}.jsonl", "--json")
        assert result.exit_code == 0, result.output
        absent: int | None = orjson.loads(result.stdout)["absent"]
        return absent

    assert (night("same", rows), looked_up) == (0, [])
    assert (night("gone", rows[:4] + rows[5:]), looked_up) == (1, [1])  # cust-5
    # cust-5 is still known (--missing keep): a row for each of the others, cust-3 twice (its
    # earlier row replaced: the slow path) and cust-8 edited.
    edited = {**rows[7], "plan": "edited"}
    tonight = rows[:4] + rows[5:7] + [edited] + rows[8:] + [rows[2]]
    assert (night("repeat", tonight), looked_up) == (1, [1, 1])
    # All back, each found by its rowhash (cust-8's edit too, accepted last night).
    assert (night("back", [*rows[:7], edited, *rows[8:]]), looked_up) == (0, [1, 1])
    # All there, cust-8 on a slow row only (edited again): looked up, none absent.
    again = {**rows[7], "plan": "again"}
    assert (night("again", [*rows[:7], again, *rows[8:]]), looked_up) == (0, [1, 1, 0])


def test_what_the_reader_decides_is_said_once_however_often_the_file_is_read(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """With --state the file is read up to four times (its identifiers, its repeats, its
    repeated people's rows, then the pass that sends): a detected delimiter and spaces around
    names are said once a night, not once a read."""
    source = tmp_path / "in.csv"
    source.write_text(" id ;email;plan\ncust-1;a@example.com;free\ncust-1;a@example.com;pro\n")
    for night in (1, 2):
        result = sync_state(source, tmp_path / "s.db", tmp_path / f"{night}.jsonl", "--fresh")
        assert result.exit_code == 0, result.output
        assert result.stderr.count("detected ';' as the delimiter") == 1, result.stderr
        assert result.stderr.count("spaces around column names are removed") == 1
        assert result.stderr.count("WARNING") == 2, result.stderr
