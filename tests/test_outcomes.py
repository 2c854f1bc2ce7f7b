"""outcomes: a chunk's outcomes written at once (Outcomes.many, results.valid_lines,
ResultsLog.write_many). Each test writes the same outcomes one at a time (valid, unchanged,
invalid: what a dry run did before) and at once, and compares the files byte for byte, the
counts, the statuses and what the progress callback heard."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksync.console import ProgressBar
from bulksync.normalize import Rejection
from bulksync.operations import DELETIONS, PEOPLE, Record
from bulksync.outcomes import Outcomes
from bulksync.plan import Unchanged, UnchangedRows
from bulksync.results import REMOVAL_ROW, InputIdentity, ResultsLog, Status, outcome_line
from bulksync.results import valid_lines as make_valid_lines

Item = Record | Unchanged | Rejection


def one_at_a_time(outcomes: Outcomes, items: Sequence[Item]) -> None:
    for item in items:
        if isinstance(item, Record):
            outcomes.valid(item)
        elif isinstance(item, Unchanged):
            outcomes.unchanged(item)
        else:
            outcomes.invalid(item)


def open_log(path: Path) -> ResultsLog:
    return ResultsLog(path, InputIdentity("in.csv"), fresh=True, dry_run=True)


def written(path: Path) -> list[bytes]:
    """The file's lines, the header's start time left out."""
    header, *lines = path.read_bytes().splitlines(keepends=True)
    started = orjson.loads(header)
    del started["started"]
    return [orjson.dumps(started), *lines]


def state(log: ResultsLog, rows: int) -> tuple[Any, ...]:
    return (
        list(log.counts.items()),  # in order: a Summary's counts keep it
        [log.status(row) for row in range(rows + 2)],
        dict(log.removals),
    )


def item_of(kind: str, row: int, text: str) -> Item:
    match kind:
        case "record":
            return Record(row, f"id-{row}", {"name": text, "n": row, "ok": row % 2 == 0})
        case "removal":
            return Record(REMOVAL_ROW, f"gone-{text}", {}, DELETIONS)
        case "unchanged":
            return Unchanged(row, f"id-{row}", PEOPLE)
        case "superseded":
            return Unchanged(row, f"id-{row}", PEOPLE, superseded_by=row + 1)
        case "rejection":
            return Rejection(row, f"id-{row}", f"email: invalid {text!r}")
        case _:
            return Rejection(row, None, "line 3: a quoted field is not closed", line=row + 1)


KINDS = ["record", "removal", "unchanged", "superseded", "rejection", "broken"]


@st.composite
def chunks(draw: st.DrawFn) -> list[list[Item]]:
    """Chunks of items as a dry run gets them: rows in order, mostly consecutive, sometimes
    with gaps (a resumed plan drops rows), and removals, which name no row, in their own."""
    result: list[list[Item]] = []
    row = 0
    for _ in range(draw(st.integers(1, 4))):
        chunk: list[Item] = []
        for kind in draw(st.lists(st.sampled_from(KINDS), max_size=12)):
            row += draw(st.sampled_from([1, 1, 1, 2]))
            chunk.append(item_of(kind, row, draw(st.text(max_size=5))))
        result.append(chunk)
    return result


@settings(max_examples=60, deadline=None)
@given(chunks())
def test_a_chunk_at_once_writes_what_one_outcome_at_a_time_writes(
    tmp_path_factory: pytest.TempPathFactory, items: list[list[Item]]
) -> None:
    both_ways(tmp_path_factory.mktemp("out"), items, sum(map(len, items)) * 2)


def both_ways(folder: Path, chunks: Sequence[Sequence[Item]], rows: int) -> None:
    """Each chunk written at once (Outcomes.many) and one outcome at a time: the same file,
    the same statuses of rows 0 to `rows`, the same callbacks."""
    heard: dict[str, list[Status]] = {"one": [], "chunk": []}
    logs = {}
    for how in ("one", "chunk"):
        with open_log(folder / f"{how}.jsonl") as log:
            outcomes = Outcomes(log, heard[how].append)
            for chunk in chunks:
                if how == "one":
                    one_at_a_time(outcomes, list(chunk))
                else:
                    outcomes.many(chunk)
                outcomes.flush()
            logs[how] = state(log, rows)
    assert written(folder / "chunk.jsonl") == written(folder / "one.jsonl")
    assert (logs["chunk"], heard["chunk"]) == (logs["one"], heard["one"])


def test_the_progress_bar_counts_a_chunk_at_once(tmp_path: Path) -> None:
    items: list[Item] = [item_of(kind, row, "x") for row, kind in enumerate(KINDS * 3, start=1)]
    counts = {}
    for how in ("one", "chunk"):
        with open_log(tmp_path / f"{how}.jsonl") as log, ProgressBar(None, False, "x") as bar:
            outcomes = Outcomes(log, bar)
            if how == "one":
                one_at_a_time(outcomes, items)
            else:
                outcomes.many(items)
            counts[how] = bar.counts
    assert counts["chunk"] == counts["one"] == {"valid": 6, "unchanged": 6, "invalid": 6}


def test_rows_with_an_outcome_already_are_set_one_by_one(tmp_path: Path) -> None:
    """write_many() sets a run of statuses at once only over rows without one: a row written
    again moves its count from the old status to the new, as write() does."""
    results: dict[str, tuple[Any, ...]] = {}
    for how in ("one", "many"):
        with open_log(tmp_path / f"{how}.jsonl") as log:
            log.write(2, "invalid", b"x\n")
            log.write(5, "ok", b"x\n")
            rows = [2, 3, 4, 5]
            statuses: list[Status] = ["valid", "valid", "unchanged", "valid"]
            if how == "one":
                for row, status in zip(rows, statuses, strict=True):
                    log.write(row, status, b"y\n")
            else:
                log.write_many(b"y\n" * 4, rows, statuses, [None] * 4)
            results[how] = state(log, 6)
    assert results["many"] == results["one"]
    assert (tmp_path / "many.jsonl").read_bytes().endswith(b"y\n" * 4)


def test_valid_lines_are_outcome_lines() -> None:
    records = [
        Record(1, "a", {"name": 'Zoë "q" \n', "n": 2**63, "x": 1.5, "b": False}),
        Record(REMOVAL_ROW, "gone@example.com", {}, DELETIONS),
        Record(7, "cust/7", {"nested": {"list": [1, None, "é"]}}, "events"),
    ]
    expected = b"".join(
        outcome_line(row, identifier, "valid", op, payload=payload)
        for row, identifier, payload, op in records
    )
    assert bytes(make_valid_lines(records)) == expected


def test_a_value_json_cannot_hold_fails_after_the_lines_before_it(tmp_path: Path) -> None:
    """orjson refuses an integer over 64 bits (normalize never lets one through): the rows
    before it still get their lines, as when each outcome was written alone."""
    items: list[Item] = [
        Record(1, "a", {"n": 1}),
        Record(2, "b", {"n": 2**64}),
        Record(3, "c", {"n": 3}),
    ]
    for how in ("one", "chunk"):
        with open_log(tmp_path / f"{how}.jsonl") as log:
            outcomes = Outcomes(log)
            with pytest.raises(orjson.JSONEncodeError):
                if how == "one":
                    one_at_a_time(outcomes, items)
                else:
                    outcomes.many(items)
    assert written(tmp_path / "chunk.jsonl") == written(tmp_path / "one.jsonl")


@pytest.mark.parametrize(
    ("records", "before"),
    [
        # Rows apart, a removal among them: each line and status made one at a time.
        (
            [
                Record(3, "a", {"name": "Zoë"}),
                Record(4, "b@example.com", {}),
                Record(REMOVAL_ROW, "gone", {}, DELETIONS),
                Record(9, "cust/9", {"n": 1}),
            ],
            None,
        ),
        # The common batch: consecutive rows of one kind, lines and statuses made at once...
        ([Record(row, f"c{row}", {"n": row}) for row in range(2, 9)], None),
        # ...unless a row already has an outcome (a resumed run): its count moves to "ok".
        ([Record(row, f'q"{row}', {}) for row in range(2, 9)], 5),
    ],
)
def test_a_batch_accepted_whole_writes_what_ok_writes(
    tmp_path: Path, records: list[Record], before: int | None
) -> None:
    """all_ok(): a batch's thousand accepted rows at once, as ok() writes each, the diff state
    told of each."""
    from bulksync.state import StateStore

    results = {}
    for how in ("one", "all"):
        with (
            open_log(tmp_path / f"{how}.jsonl") as log,
            StateStore(tmp_path / f"{how}.db", input_name="in.csv") as store,
        ):
            if before is not None:
                log.write(before, "failed", b"x\n")
            heard: list[Status] = []
            outcomes = Outcomes(log, heard.append, store)
            if how == "one":
                for record in records:
                    outcomes.ok(record, "batch", 200, 2)
            else:
                outcomes.all_ok(records, "batch", 200, 2)
            outcomes.flush()
            people = [r.identifier for r in records if r.row != REMOVAL_ROW]
            results[how] = (state(log, 10), heard, store.last_hashes(people))
    assert written(tmp_path / "all.jsonl") == written(tmp_path / "one.jsonl")
    assert results["all"] == results["one"]
    assert len(results["all"][2]) == len(people)
    assert heard.count("ok") == len(records)


@settings(max_examples=80, deadline=None)
@given(
    identifiers=st.lists(st.text(min_size=1, max_size=6), max_size=30),
    gaps=st.lists(st.sampled_from([1, 1, 1, 2]), min_size=30, max_size=30),
)
def test_a_chunk_of_unchanged_rows_as_columns_writes_what_one_at_a_time_writes(
    tmp_path_factory: pytest.TempPathFactory, identifiers: list[str], gaps: list[int]
) -> None:
    """KnownRows' chunk (UnchangedRows: its lines made from its columns) against the same
    Unchanged items one at a time: any identifier (quotes, backslashes, control characters,
    any letter), rows consecutive or not."""
    rows = [sum(gaps[: i + 1]) for i in range(len(identifiers))]
    block = UnchangedRows(rows, identifiers)
    assert list(block) == [Unchanged(r, i) for r, i in zip(rows, identifiers, strict=True)]
    both_ways(tmp_path_factory.mktemp("out"), [block], (rows[-1] if rows else 0) + 2)
