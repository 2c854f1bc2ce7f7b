"""The batch send stage made cheap, held to what it did row by row: pack() cuts a chunk's
batches from its operations serialized one after the other, and must make the same batches,
bodies and rejections as packing a row at a time; a batch knows who its rows touch; ok_lines
(and unchanged_lines, a re-run's) make each line as outcome_line does; and the sender lets go
of the rows it has answered."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bulksync.batch import MAX_REQUEST_BYTES, Batch, _pack_apart, _pack_runs, pack
from bulksync.connection import SendOptions
from bulksync.normalize import Rejection
from bulksync.operations import (
    DELETIONS,
    MAX_OPERATION_BYTES,
    PEOPLE,
    Record,
    identifiers,
    operation,
    order_keys,
)
from bulksync.outcomes import Outcomes
from bulksync.plan import Unchanged
from bulksync.results import (
    REMOVAL_ROW,
    InputIdentity,
    ResultsLog,
    Status,
    ok_lines,
    outcome_line,
    unchanged_lines,
)
from bulksync.send import Sender
from bulksync.track import Credentials, TrackClient

from .conftest import API_KEY, SITE_ID, ServerThread, read_results

ENVELOPE = len(b'{"batch":[') + len(b"]}")


# --- pack(): the same batches as packing a row at a time --------------------------------------


def packed_row_by_row(records: list[Record], batch_size: int) -> list[Any]:
    """What pack() made of records naming nobody twice when it took a row at a time: each row's
    operation joins the open batch unless that would make a request of MAX_REQUEST_BYTES or
    more, or the batch has batch_size rows; an operation over MAX_OPERATION_BYTES is rejected
    where it comes. Batches as (rows, operations), rejections as (row, size)."""
    made: list[Any] = []
    rows: list[int] = []
    ops: list[bytes] = []
    size = ENVELOPE
    for record in records:
        op = operation(record)
        if len(op) > MAX_OPERATION_BYTES:
            made.append((record.row, len(op)))
            continue
        if ops and size + 1 + len(op) >= MAX_REQUEST_BYTES:
            made.append((rows, ops))
            rows, ops, size = [], [], ENVELOPE
        size += len(op) + (1 if ops else 0)
        rows.append(record.row)
        ops.append(op)
        if len(ops) >= batch_size:
            made.append((rows, ops))
            rows, ops, size = [], [], ENVELOPE
    if ops:
        made.append((rows, ops))
    return made


def as_made(items: list[Batch | Rejection]) -> list[Any]:
    """pack()'s output in packed_row_by_row's terms, each batch's body checked on the way."""
    made: list[Any] = []
    for item in items:
        if isinstance(item, Batch):
            ops = item.operations
            assert item.body() == b'{"batch":[' + b",".join(ops) + b"]}"
            assert len(item.body()) < MAX_REQUEST_BYTES
            made.append(([record.row for record in item.records], ops))
        else:
            size = int(item.reason.split(" bytes")[0].rsplit(" ", 1)[1].replace(",", ""))
            made.append((item.row, size))
    return made


def padded(row: int, identifier: str, size: int) -> Record:
    """A person whose identify operation is exactly `size` bytes."""
    base = len(operation(Record(row, identifier, {"p": ""})))
    return Record(row, identifier, {"p": "x" * (size - base)})


def test_pack_cuts_the_same_batches_as_row_by_row() -> None:
    rng = random.Random(7)
    for _ in range(60):
        records = []
        for row in range(1, rng.randint(1, 700)):
            identifier = rng.choice(["id-", "cio_", "e@x", 'é"\\', "%d"]) + str(row)
            roll = rng.random()
            if roll < 0.02:
                size = rng.choice([MAX_OPERATION_BYTES, MAX_OPERATION_BYTES + 1, 40_000])
            elif roll < 0.3:
                size = rng.randint(5_000, 31_000)  # a few dozen fill a request
            else:
                size = rng.randint(60, 900)
            records.append(padded(row, identifier, size))
        batch_size = rng.choice([1, 2, 7, 100, 1000])
        expected = packed_row_by_row(records, batch_size)
        assert as_made(list(pack(records, batch_size))) == expected
        assert as_made(list(_pack_runs(records, batch_size))) == expected


def test_pack_requests_at_the_byte_limit() -> None:
    """Operations whose requests come to exactly MAX_REQUEST_BYTES - 1, MAX_REQUEST_BYTES and
    one byte more: the first is sent whole, the others cut one operation earlier."""
    for over in (-1, 0, 1):
        sizes = [25_000] * 19
        sizes.append(MAX_REQUEST_BYTES + over - ENVELOPE - 19 - sum(sizes))
        records = [padded(row, f"r{row}", size) for row, size in enumerate(sizes, start=1)]
        records += [padded(21, "r21", 100)]
        expected = packed_row_by_row(records, 1000)
        assert as_made(list(pack(records, 1000))) == expected
        assert [len(rows) for rows, _ in expected] == ([20, 1] if over < 0 else [19, 2])


def test_pack_of_every_kind_matches_row_by_row() -> None:
    records = [Record(row, f"cust-{row}", {}, DELETIONS) for row in range(1, 40)]
    records += [Record(row, f"p-{row}", {"plan": "pro"}, PEOPLE) for row in range(40, 80)]
    records.append(
        Record(80, "a", {"primary": identifiers("a"), "secondary": identifiers("b")}, "merges")
    )
    for batch_size in (1, 9, 1000):
        assert as_made(list(pack(records, batch_size))) == packed_row_by_row(records, batch_size)


# --- who a batch touches ----------------------------------------------------------------------


def test_a_batch_knows_who_its_rows_touch() -> None:
    merges = [
        Record(row, f"p{row}", {"primary": identifiers(f"p{row}"), "secondary": {"id": f"s{row}"}})
        for row in range(1, 30)
    ]
    merges = [record._replace(op="merges") for record in merges]
    repeated = [Record(row, f"r{row % 7}", {"n": row}) for row in range(1, 60)]  # _pack_apart
    for records in (merges, repeated):
        for batch_size in (1, 4, 1000):
            batches = [item for item in pack(records, batch_size) if isinstance(item, Batch)]
            for batch in batches:
                touched = [key for record in batch.records for key in order_keys(record)]
                assert sorted(batch.identifiers) == sorted(touched)
    assert order_keys(merges[0]) == ("p1", "s1")  # a merge touches two people


def test_batch_made_from_operations() -> None:
    records = [Record(row, f"cust-{row}", {"n": row}) for row in range(1, 6)]
    ops = [operation(record) for record in records]
    batch = Batch(records, ops)
    assert batch.body() == b'{"batch":[' + b",".join(ops) + b"]}"
    assert batch.operations == ops
    assert list(batch.identifiers) == [f"cust-{row}" for row in range(1, 6)]
    (packed,) = pack(records, 10)
    assert packed == batch
    left, right = batch.halves()
    assert left + right == batch
    kept, other = batch.split(lambda record: record.row % 2 == 1)
    assert (kept.operations, other.operations) == (ops[0::2], ops[1::2])
    assert Batch([], []).body() == b'{"batch":[]}'


def test_pack_apart_and_runs_agree_without_repeats() -> None:
    records = [padded(row, f"id-{row}", 200 + row * 37 % 5_000) for row in range(1, 400)]
    keys = [order_keys(record) for record in records]
    for batch_size in (1, 3, 1000):
        assert list(_pack_runs(records, batch_size)) == list(_pack_apart(records, keys, batch_size))


# --- ok_lines(): outcome_line's lines --------------------------------------------------------

texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 10**9), texts, st.sampled_from([PEOPLE, DELETIONS, "merges"])),
        max_size=30,
    ),
    mode=st.sampled_from(["batch", "single", "%s%%"]),
    http_status=st.sampled_from([200, 207, None]),
    attempts=st.integers(0, 9),
)
def test_ok_lines_are_outcome_lines(
    rows: list[tuple[int, str, str]], mode: str, http_status: int | None, attempts: int
) -> None:
    records = [Record(row, identifier, {"x": 1}, op) for row, identifier, op in rows]
    expected = b"".join(
        outcome_line(
            record.row,
            record.identifier,
            "ok",
            record.op,
            http_status=http_status,
            attempts=attempts,
            mode=mode,
        )
        for record in records
    )
    assert bytes(ok_lines(records, mode, http_status, attempts)) == expected


@settings(max_examples=200, deadline=None)
@given(
    op=st.sampled_from([PEOPLE, DELETIONS, "merges"]),
    rows=st.lists(st.tuples(st.integers(1, 10**9), texts), max_size=40),
    mode=st.sampled_from(["batch", "%s%%", "%d"]),
)
def test_ok_lines_of_one_kind(op: str, rows: list[tuple[int, str]], mode: str) -> None:
    """A batch of one kind and no removal (the common one): its lines made all at once."""
    records = [Record(row, identifier, {}, op) for row, identifier in rows]
    expected = b"".join(
        outcome_line(r.row, r.identifier, "ok", op, http_status=200, attempts=1, mode=mode)
        for r in records
    )
    assert bytes(ok_lines(records, mode, 200, 1)) == expected


def test_ok_lines_of_awkward_identifiers() -> None:
    names = ['a"b', "c\\d", "é✓😀", "tab\there", "nul\x00", "%d%b%s", "", "cio_1", "x@y"]
    records = [Record(row, name, {}) for row, name in enumerate(names, start=1)]
    records.append(Record(REMOVAL_ROW, "gone", {}, DELETIONS))
    expected = b"".join(
        outcome_line(r.row, r.identifier, "ok", r.op, http_status=200, attempts=2, mode="batch")
        for r in records
    )
    assert bytes(ok_lines(records, "batch", 200, 2)) == expected


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 10**9),
            texts,
            st.sampled_from([PEOPLE, "objects"]),
            st.none() | st.integers(1, 10**9),
        ),
        max_size=30,
    )
)
def test_unchanged_lines_are_outcome_lines(rows: list[tuple[int, str, str, int | None]]) -> None:
    """As ok_lines: a nightly re-run writes one per row, most of them made from a shared end."""
    items = [Unchanged(row, identifier, op, later) for row, identifier, op, later in rows]
    expected = b"".join(
        outcome_line(i.row, i.identifier, "unchanged", i.op, superseded_by=i.superseded_by)
        for i in items
    )
    assert bytes(unchanged_lines(items)) == expected


# --- the sender lets go of answered rows --------------------------------------------------------


class Payload(dict[str, Any]):
    """A payload that can be watched (weakref) until nothing holds its row any more."""


def test_sender_lets_go_of_rows_once_answered(fake: ServerThread, tmp_path: Path) -> None:
    """By the time the third chunk is read, the first two chunks' rows are answered: neither
    the reader nor an idle worker may still hold them (every full pass of the garbage
    collector would walk them again)."""
    chunk_rows, chunks_count = 40, 4
    watched: list[weakref.ref[Payload]] = []
    answered = 0
    still_held: list[int] = []

    def progress(status: Status) -> None:
        nonlocal answered
        answered += status == "ok"

    def chunks() -> Iterator[list[Record]]:  # read in the sender's reader thread
        for chunk in range(chunks_count):
            if chunk == 2:
                deadline = time.monotonic() + 30
                while answered < 2 * chunk_rows and time.monotonic() < deadline:
                    time.sleep(0.005)
                gc.collect()  # cycles (futures chained across threads) are not holders
                still_held.extend(i for i, ref in enumerate(watched) if ref() is not None)
            yield [person(chunk * chunk_rows + i + 1) for i in range(chunk_rows)]

    def person(row: int) -> Record:
        payload = Payload(plan="pro", n=row)
        watched.append(weakref.ref(payload))
        return Record(row, f"cust-{row}", payload)

    log = ResultsLog(tmp_path / "out.jsonl", InputIdentity("in.csv"), fresh=True)
    options = SendOptions(rate=None, batch=True, batch_size=5, concurrency=16)

    async def send() -> None:
        async with TrackClient(fake.url, Credentials(SITE_ID, API_KEY)) as client:
            await Sender(client, Outcomes(log, progress), options).run(chunks())

    with log:
        thread = threading.Thread(target=asyncio.run, args=(send(),))
        thread.start()
        thread.join(60)
    assert answered == chunk_rows * chunks_count
    assert still_held == []
    lines = read_results(tmp_path / "out.jsonl")
    assert sorted(line["row"] for line in lines) == list(range(1, chunk_rows * chunks_count + 1))
