"""Batch mode (`--batch`, POST /api/v2/batch): packing within the API's size limits, per-row
outcomes from 200/207/400 answers, bisection of whole-request refusals, retries, credentials,
identifiers on the wire, and kill -9 / resume. Real loopback HTTP against the simulator; every
assertion is about the exact bytes the simulator received and what the results file says."""

from __future__ import annotations

import csv
import itertools
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from bulksync import (
    AbortError,
    Credentials,
    Record,
    Rejection,
    SendOptions,
    Summary,
    SyncOptions,
    sync,
)
from bulksync.api import retry
from bulksync.batch import MAX_REQUEST_BYTES, Batch, pack
from bulksync.cli import main
from bulksync.fake import Recorded
from bulksync.operations import MAX_OPERATION_BYTES, identifiers, operation

from .conftest import API_KEY, ROOT, SITE_ID, ServerThread, read_results

BATCH_PATH = "/api/v2/batch"
REGION_PATH = "/api/v1/accounts/region"
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05}
ENVELOPE = len(b'{"batch":[') + len(b"]}")


# --- helpers ---------------------------------------------------------------------------------


def people(n: int, prefix: str = "cust") -> list[dict[str, str]]:
    plans = ["free", "pro", "team"]
    return [
        {"id": f"{prefix}-{i}", "email": f"person{i}@example.com", "plan": plans[i % 3]}
        for i in range(1, n + 1)
    ]


def write_csv(path: Path, rows: list[dict[str, str]], fieldnames: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_batch(path: Path, fake: ServerThread, results: Path, **send: Any) -> Summary:
    """`bulksync.sync()` in batch mode against the simulator: uncapped rate, small backoffs."""
    options = SyncOptions(
        send=SendOptions(base_url=fake.url, batch=True, **{"rate": None, **FAST, **send}),
        results=results,
        fresh=True,
    )
    return sync(str(path), options, credentials=Credentials(SITE_ID, API_KEY))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def posts(fake: ServerThread) -> list[Recorded]:
    return [rec for rec in list(fake.fake.requests) if rec.method == "POST"]


def body_ops(rec: Recorded) -> list[dict[str, Any]]:
    assert rec.path == BATCH_PATH
    assert isinstance(rec.body, dict), rec
    ops = rec.body["batch"]
    assert isinstance(ops, list)
    return ops


def op_id(op: dict[str, Any]) -> str:
    """The identifier an operation names, written as the row's identifier."""
    ((key, value),) = op["identifiers"].items()
    return f"cio_{value}" if key == "cio_id" else str(value)


def latest(results: Path) -> dict[int, dict[str, Any]]:
    """Each row's latest outcome line."""
    out: dict[int, dict[str, Any]] = {}
    for line in read_results(results):
        out[line["row"]] = line
    return out


def by_id(results: Path) -> dict[str, dict[str, Any]]:
    lines = read_results(results)
    table = {str(line["id"]): line for line in lines}
    assert len(table) == len(lines), "one line per row"
    return table


def big_value(i: int, k: int) -> str:
    """About 900 bytes of UTF-8 (under the 1,000-byte value limit) that serialize to more:
    two-byte characters, and quotes and backslashes that JSON escapes to two bytes each."""
    value = f"{i:05d}-{k:02d}" + "é" * 250 + '"' * 100 + "\\" * 50 + "x" * 230
    assert 880 <= len(value.encode()) <= 1000
    return value


def padded_record(row: int, op_bytes: int, value_size: int = 900) -> Record:
    """A Record whose operation() is exactly `op_bytes` long (ASCII attribute values)."""
    identifier = f"r{row}"
    attributes: dict[str, Any] = {}
    base = len(operation(Record(row, identifier, {})))
    k = 0
    while True:
        name = f"a{k:03d}"
        trial = {**attributes, name: ""}
        room = op_bytes - len(operation(Record(row, identifier, trial)))
        if room <= value_size:
            attributes = {**trial, name: "v" * room}
            break
        attributes[name] = "v" * value_size
        k += 1
    record = Record(row, identifier, attributes)
    assert base < op_bytes
    assert len(operation(record)) == op_bytes
    return record


def flatten(items: list[Batch | Rejection]) -> list[int]:
    """The rows of packed items: the batches' rows in the order pack() yielded them (row order
    within and across batches), then the rejected rows (yielded as soon as they are seen)."""
    sent = [r.row for item in items if isinstance(item, Batch) for r in item.records]
    rejected = [item.row for item in items if isinstance(item, Rejection)]
    assert sent == sorted(sent)
    assert rejected == sorted(rejected)
    return sorted(sent + rejected)  # a row lost or packed twice shows against range(...)


# --- identifiers() and operation() -----------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        ("42", {"id": "42"}),
        ("cust-7", {"id": "cust-7"}),
        ("person@example.com", {"email": "person@example.com"}),
        ("Mixed.Case+tag@example.co.uk", {"email": "Mixed.Case+tag@example.co.uk"}),
        ("cio_abc123", {"cio_id": "abc123"}),
        ("cio_03000001", {"cio_id": "03000001"}),
        ("xcio_1", {"id": "xcio_1"}),  # the prefix only counts at the start
        ("cio-abc", {"id": "cio-abc"}),
    ],
)
def test_identifiers_by_shape(identifier: str, expected: dict[str, str]) -> None:
    assert identifiers(identifier) == expected


def test_operation_puts_update_and_created_at_inside_attributes() -> None:
    attributes = {"email": "a@example.com", "created_at": 1700000000, "_update": True, "n": 1.5}
    op = orjson.loads(operation(Record(3, "cust-3", attributes)))
    assert op == {
        "type": "person",
        "identifiers": {"id": "cust-3"},
        "action": "identify",
        "attributes": attributes,
    }
    assert op["attributes"]["_update"] is True
    assert op["attributes"]["created_at"] == 1700000000
    # Never at the top level, where the API would ignore or refuse them.
    assert "_update" not in op
    assert "created_at" not in op
    cio = orjson.loads(operation(Record(4, "cio_abc123", {"plan": "pro"})))
    assert cio["identifiers"] == {"cio_id": "abc123"}
    assert cio["attributes"] == {"plan": "pro"}


# --- pack() ----------------------------------------------------------------------------------


def test_pack_respects_batch_size_and_keeps_order() -> None:
    records = [Record(i, f"cust-{i}", {"n": i}) for i in range(1, 11)]
    items = list(pack(records, 3))
    assert all(isinstance(item, Batch) for item in items)
    batches = [item for item in items if isinstance(item, Batch)]
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert flatten(items) == list(range(1, 11))
    for batch in batches:
        assert batch.operations == [operation(r) for r in batch.records]
        body = orjson.loads(batch.body())
        assert body == {"batch": [orjson.loads(op) for op in batch.operations]}
    assert len(list(pack(records, 1000))) == 1
    assert list(pack([], 10)) == []


def test_pack_fills_requests_up_to_the_byte_limit_before_batch_size() -> None:
    # 30 attributes of ~900 bytes: ~28 KB an operation, so ~17 fit in a request.
    records = [
        Record(i, f"cust-{i}", {f"attr{k:02d}": big_value(i, k) for k in range(30)})
        for i in range(1, 101)
    ]
    items = list(pack(records, 1000))
    batches = [item for item in items if isinstance(item, Batch)]
    assert len(batches) == len(items)  # all under the operation limit
    assert len(batches) > 1  # the byte limit, not batch_size, cut them
    assert flatten(items) == list(range(1, 101))
    for batch, following in zip(batches, [*batches[1:], None], strict=True):
        body = batch.body()
        assert len(body) <= MAX_REQUEST_BYTES
        assert len(body) == ENVELOPE + sum(map(len, batch.operations)) + len(batch) - 1
        assert orjson.loads(body)["batch"] == [orjson.loads(operation(r)) for r in batch.records]
        if following is not None:  # full: the next operation would not have fitted
            assert len(body) + 1 + len(following.operations[0]) >= MAX_REQUEST_BYTES


def test_pack_measures_serialized_bytes_not_characters() -> None:
    # Each value is ~640 characters but ~890 bytes of UTF-8 and ~1,040 bytes once JSON-escaped:
    # a packer counting characters or raw value bytes would build requests over the limit.
    records = [
        Record(i, f"cust-{i}", {f"attr{k:02d}": big_value(i, k) for k in range(30)})
        for i in range(1, 41)
    ]
    for item in pack(records, 1000):
        assert isinstance(item, Batch)
        assert len(item.body()) <= MAX_REQUEST_BYTES
        assert all(len(op) <= MAX_OPERATION_BYTES for op in item.operations)


def test_pack_operation_limit_is_exact() -> None:
    at_limit = padded_record(1, MAX_OPERATION_BYTES)
    over = padded_record(2, MAX_OPERATION_BYTES + 1)
    items = list(pack([at_limit, over], 1000))
    assert len(items) == 2
    (batch,) = [item for item in items if isinstance(item, Batch)]
    (rejection,) = [item for item in items if isinstance(item, Rejection)]
    assert batch.records == [at_limit]
    assert isinstance(rejection, Rejection)
    assert (rejection.row, rejection.identifier) == (2, "r2")
    assert "32,001 bytes" in rejection.reason
    assert "32,000" in rejection.reason


def test_pack_rejects_operations_over_32000_bytes() -> None:
    # 40 attributes of ~900 bytes (well under the 300-attribute limit): ~40 KB an operation.
    oversized = {f"attr{k:02d}": big_value(0, k) for k in range(40)}
    records = [
        Record(i, f"cust-{i}", oversized if i % 4 == 0 else {"plan": "pro", "n": i})
        for i in range(1, 21)
    ]
    items = list(pack(records, 1000))
    rejections = [item for item in items if isinstance(item, Rejection)]
    assert [r.row for r in rejections] == [4, 8, 12, 16, 20]
    for rejection in rejections:
        assert rejection.identifier == f"cust-{rejection.row}"
        size = len(operation(records[rejection.row - 1]))
        assert size > MAX_OPERATION_BYTES
        assert rejection.reason == (
            f"batch operation is {size:,} bytes, over the API's {MAX_OPERATION_BYTES:,}"
        )
    sent = [r.row for item in items if isinstance(item, Batch) for r in item.records]
    assert sent == [i for i in range(1, 21) if i % 4]
    assert flatten(items) == list(range(1, 21))  # each row exactly once


def test_pack_splits_a_request_that_would_be_one_byte_over() -> None:
    # 20 operations whose request would be exactly 500,001 bytes.
    sizes = [25_000] * 19
    sizes.append(MAX_REQUEST_BYTES + 1 - ENVELOPE - 19 - sum(sizes))
    records = [padded_record(i, size) for i, size in enumerate(sizes, start=1)]
    items = list(pack(records, 1000))
    assert [len(item) for item in items if isinstance(item, Batch)] == [19, 1]
    assert all(isinstance(item, Batch) and len(item.body()) < MAX_REQUEST_BYTES for item in items)


def test_pack_request_stays_strictly_under_500000_bytes() -> None:
    """track-api.md: the whole request must be "< 500 KB", and "stay under 500,000" bytes
    (the strict reading, which batch.py says it holds). A request of exactly 500,000 bytes is
    not under 500,000."""
    sizes = [25_000] * 19
    sizes.append(MAX_REQUEST_BYTES - ENVELOPE - 19 - sum(sizes))
    records = [padded_record(i, size) for i, size in enumerate(sizes, start=1)]
    items = list(pack(records, 1000))
    assert flatten(items) == list(range(1, 21))
    for item in items:
        assert isinstance(item, Batch)
        assert len(item.body()) < MAX_REQUEST_BYTES, len(item.body())


def random_records(rng: random.Random, most: int, large: float, ids: list[str]) -> list[Record]:
    """Up to `most` - 1 records, one person each (named with one of `ids` and the row): 5% with
    an operation over 32,000 bytes, up to `large` of them with up to 34 long attributes, the
    others small."""
    records = []
    for i in range(1, rng.randint(1, most)):
        kind = rng.random()
        if kind < 0.05:
            attrs: dict[str, Any] = {f"a{k}": "z" * 900 for k in range(rng.randint(36, 60))}
        elif kind < large:
            attrs = {f"a{k}": "y" * rng.randint(100, 999) for k in range(rng.randint(1, 34))}
        else:
            attrs = {"plan": "pro", "n": i}
        records.append(Record(i, rng.choice(ids) + str(i), attrs))
    return records


def test_pack_loses_nothing_on_random_mixes() -> None:
    rng = random.Random(1234)
    for _ in range(30):
        records = random_records(rng, 300, large=0.5, ids=["id-"])
        batch_size = rng.choice([1, 2, 7, 50, 1000])
        items = list(pack(records, batch_size))
        assert flatten(items) == [r.row for r in records]  # each exactly once, in order
        for item in items:
            if isinstance(item, Batch):
                assert 1 <= len(item) <= batch_size
                assert len(item.body()) <= MAX_REQUEST_BYTES
                assert item.operations == [operation(r) for r in item.records]
            else:
                assert len(operation(records[item.row - 1])) > MAX_OPERATION_BYTES


def test_pack_of_distinct_people_matches_the_general_packing() -> None:
    """A chunk naming nobody twice is packed in runs (batch._pack_runs), without the search
    for a batch each row may join (_pack_apart): both must give the same batches and
    rejections, in the same order."""
    from bulksync.batch import _pack_apart, _pack_runs
    from bulksync.operations import order_keys

    rng = random.Random(99)
    for _ in range(40):
        records = random_records(rng, 400, large=0.4, ids=["id-", "cio_", "e@"])
        batch_size = rng.choice([1, 3, 50, 1000])
        keys = [order_keys(record) for record in records]
        runs = list(_pack_runs(records, batch_size))
        assert runs == list(_pack_apart(records, keys, batch_size))
        assert runs == list(pack(records, batch_size))


def test_batch_halves() -> None:
    records = [Record(i, f"cust-{i}", {"n": i}) for i in range(1, 6)]
    (batch,) = pack(records, 10)
    assert isinstance(batch, Batch)
    left, right = batch.halves()
    assert (len(left), len(right)) == (2, 3)
    assert left.records + right.records == batch.records
    assert left.operations + right.operations == batch.operations
    for half in (left, right):
        assert half.operations == [operation(r) for r in half.records]
        assert orjson.loads(half.body())["batch"] == [orjson.loads(op) for op in half.operations]
    one, two = Batch(records[:2], [operation(r) for r in records[:2]]).halves()
    assert (one.records, two.records) == ([records[0]], [records[1]])


# --- 207: per-operation refusals -------------------------------------------------------------


def test_207_fails_exactly_the_listed_rows(api_env: ServerThread, tmp_path: Path) -> None:
    rows = people(30)
    rejected = {"cust-3", "cust-14", "cust-30"}
    api_env.fake.config.reject_ids = frozenset(rejected)
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    result = invoke(
        "sync", str(source), "--batch", "--batch-size", "10", "--results", str(out), "--rate", "0"
    )
    assert result.exit_code == 1, result.output  # some rows failed

    requests = posts(api_env)
    assert len(requests) == 3  # 30 rows, 10 per request
    assert [(r.method, r.path) for r in api_env.fake.requests if r.method != "POST"] == [
        ("GET", REGION_PATH)
    ]
    assert sorted(op_id(op) for rec in requests for op in body_ops(rec)) == sorted(
        row["id"] for row in rows
    )
    assert all(rec.status == 207 for rec in requests)  # each batch holds one rejected id

    lines = by_id(out)
    assert sorted(lines) == sorted(row["id"] for row in rows)
    for row in rows:
        line = lines[row["id"]]
        assert line["mode"] == "batch", line
        assert line["attempts"] == 1
        assert line["http_status"] == 207
        if row["id"] in rejected:
            assert line["status"] == "failed", line
            assert line["error"] == "HTTP 207 (identifiers): rejected by test"
            assert line["payload"] == row
        else:
            assert line["status"] == "ok", line
            assert line["error"] is None
            assert "payload" not in line
    accepted = api_env.fake.accepted()
    assert accepted == {row["id"]: [row] for row in rows if row["id"] not in rejected}


def test_207_and_200_batches_side_by_side(fake: ServerThread, tmp_path: Path) -> None:
    rows = people(40)
    fake.fake.config.reject_ids = frozenset({"cust-12", "cust-13"})
    out = tmp_path / "out.jsonl"
    summary = run_batch(write_csv(tmp_path / "in.csv", rows), fake, out, batch_size=10)
    assert summary.counts == {"ok": 38, "failed": 2}
    statuses = {op_id(body_ops(rec)[0]): rec.status for rec in posts(fake)}
    assert statuses == {"cust-1": 200, "cust-11": 207, "cust-21": 200, "cust-31": 200}
    lines = by_id(out)
    for row in rows:
        number = int(row["id"].split("-")[1])
        expected = 207 if 11 <= number <= 20 else 200
        assert lines[row["id"]]["http_status"] == expected
        assert lines[row["id"]]["status"] == ("failed" if number in (12, 13) else "ok")
    assert fake.fake.accepted() == {
        row["id"]: [row] for row in rows if row["id"] not in ("cust-12", "cust-13")
    }


# --- 400 for the whole request: bisection ----------------------------------------------------


@pytest.mark.parametrize(("n", "poisoned"), [(64, 1), (64, 38), (64, 64), (100, 57), (37, 1)])
def test_whole_batch_400_is_bisected_down_to_the_bad_row(
    fake: ServerThread, tmp_path: Path, n: int, poisoned: int
) -> None:
    rows = people(n)
    bad = f"cust-{poisoned}"
    fake.fake.config.poison_ids = frozenset({bad})
    out = tmp_path / "out.jsonl"
    summary = run_batch(write_csv(tmp_path / "in.csv", rows), fake, out, batch_size=n)
    assert summary.counts == {"ok": n - 1, "failed": 1}

    requests = posts(fake)
    assert len(requests) <= 2 * math.ceil(math.log2(n)) + 2, len(requests)
    assert len(requests[0].body["batch"]) == n
    assert Counter(rec.status for rec in requests)[400] == len(requests) // 2 + 1
    # Every good row was accepted exactly once; the bad one never.
    accepted = fake.fake.accepted()
    assert accepted == {row["id"]: [row] for row in rows if row["id"] != bad}
    assert Counter(ident for ident, _ in fake.fake.batch_accepted) == Counter(
        row["id"] for row in rows if row["id"] != bad
    )
    lines = by_id(out)
    failed = lines.pop(bad)
    assert failed["status"] == "failed"
    assert failed["http_status"] == 400
    assert failed["error"] == "HTTP 400: poisoned operation (test)"
    assert failed["payload"] == rows[poisoned - 1]
    assert failed["mode"] == "batch"
    assert all(line["status"] == "ok" and line["mode"] == "batch" for line in lines.values())
    # The last request for the bad row held it alone.
    alone = [rec for rec in requests if [op_id(op) for op in body_ops(rec)] == [bad]]
    assert len(alone) == 1
    assert alone[0].status == 400


def test_two_poisoned_rows_are_both_isolated(fake: ServerThread, tmp_path: Path) -> None:
    rows = people(50)
    bad = {"cust-7", "cust-41"}
    fake.fake.config.poison_ids = frozenset(bad)
    out = tmp_path / "out.jsonl"
    summary = run_batch(write_csv(tmp_path / "in.csv", rows), fake, out, batch_size=50)
    assert summary.counts == {"ok": 48, "failed": 2}
    assert len(posts(fake)) <= 4 * math.ceil(math.log2(50)) + 2
    assert fake.fake.accepted() == {row["id"]: [row] for row in rows if row["id"] not in bad}
    assert {i for i, line in by_id(out).items() if line["status"] == "failed"} == bad


def test_transient_failure_deep_in_a_bisection_is_retried(
    fake: ServerThread, tmp_path: Path
) -> None:
    """A 503 on a half of a bisected batch is an ordinary transient failure: it must be retried
    with the usual budget. The 400s that led to the split are not retries of that half."""
    rows = people(64)
    fake.fake.config.poison_ids = frozenset({"cust-64"})
    fake.fake.config.fail_503 = 0.25
    fake.fake.config.seed = 5
    fake.fake.reset()
    out = tmp_path / "out.jsonl"
    # One batch, so requests go one at a time and the seed fixes which of them get a 503.
    summary = run_batch(
        write_csv(tmp_path / "in.csv", rows), fake, out, batch_size=64, max_retries=3
    )
    requests = posts(fake)
    # The scenario happened: a half of 16 rows or fewer met a 503.
    assert any(rec.status == 503 and len(body_ops(rec)) <= 16 for rec in requests)
    assert summary.counts == {"ok": 63, "failed": 1}
    assert by_id(out)["cust-64"]["http_status"] == 400
    assert set(fake.fake.accepted()) == {row["id"] for row in rows[:-1]}


# --- size limits on the wire -----------------------------------------------------------------


def test_large_rows_stay_within_the_size_limits_on_the_wire(
    api_env: ServerThread, tmp_path: Path
) -> None:
    columns = ["id", "email", *(f"c{k:02d}" for k in range(40))]
    oversized = {7, 50, 51}  # these rows fill 40 columns (~40 KB an operation)
    rows = []
    for i in range(1, 121):
        row = {"id": f"big-{i}", "email": f"big{i}@example.com"}
        for k in range(40 if i in oversized else 20):
            row[f"c{k:02d}"] = big_value(i, k)
        rows.append(row)
    source = write_csv(tmp_path / "big.csv", rows, columns)
    out = tmp_path / "out.jsonl"
    result = invoke("sync", str(source), "--batch", "--results", str(out), "--rate", "0")
    assert result.exit_code == 1, result.output  # the oversized rows are invalid

    requests = posts(api_env)
    assert requests
    assert all(rec.status == 200 for rec in requests), Counter(r.status for r in requests)
    for rec in requests:
        assert 0 < rec.size <= MAX_REQUEST_BYTES
        for op in body_ops(rec):
            assert len(orjson.dumps(op)) <= MAX_OPERATION_BYTES
    # Requests are filled, not one row each: each would have overflowed with the next row.
    ordered = sorted(requests, key=lambda rec: int(op_id(body_ops(rec)[0]).split("-")[1]))
    for rec, following in itertools.pairwise(ordered):
        assert rec.size + 1 + len(orjson.dumps(body_ops(following)[0])) >= MAX_REQUEST_BYTES
    assert len(requests) < 120 // 10

    sent = [op_id(op) for rec in requests for op in body_ops(rec)]
    assert sorted(sent) == sorted(f"big-{i}" for i in range(1, 121) if i not in oversized)
    lines = by_id(out)
    for i in range(1, 121):
        line = lines[f"big-{i}"]
        if i in oversized:
            assert line["status"] == "invalid", line
            assert "over the API's 32,000" in line["error"]
            assert "mode" not in line
        else:
            assert line["status"] == "ok", line
            assert line["mode"] == "batch"
    accepted = api_env.fake.accepted()
    assert accepted["big-1"] == [rows[0]]
    assert len(accepted) == 120 - len(oversized)


# --- identifiers on the wire -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            [{"email": f"p{i}@example.com", "plan": "pro"} for i in range(1, 6)],
            [{"email": f"p{i}@example.com"} for i in range(1, 6)],
        ),
        (
            [{"id": f"u{i}", "email": f"p{i}@example.com"} for i in range(1, 6)],
            [{"id": f"u{i}"} for i in range(1, 6)],
        ),
        (
            [{"id": f"cio_abc12{i}", "plan": "team"} for i in range(1, 6)],
            [{"cio_id": f"abc12{i}"} for i in range(1, 6)],
        ),
    ],
    ids=["email-only", "id", "cio-prefix"],
)
def test_identifiers_on_the_wire(
    fake: ServerThread,
    tmp_path: Path,
    rows: list[dict[str, str]],
    expected: list[dict[str, str]],
) -> None:
    out = tmp_path / "out.jsonl"
    summary = run_batch(write_csv(tmp_path / "in.csv", rows), fake, out)
    assert summary.exit_code == 0
    (rec,) = posts(fake)
    ops = body_ops(rec)
    assert [op["identifiers"] for op in ops] == expected
    for op, row in zip(ops, rows, strict=True):
        assert op["type"] == "person"
        assert op["action"] == "identify"
        assert op["attributes"] == row
    identifier_column = "id" if "id" in rows[0] else "email"
    assert fake.fake.accepted() == {row[identifier_column]: [row] for row in rows}
    assert [line["id"] for line in read_results(out)] == [row[identifier_column] for row in rows]


def test_update_only_and_created_at_travel_inside_attributes(
    api_env: ServerThread, tmp_path: Path
) -> None:
    rows = [
        {"id": "u1", "created_at": "2024-01-02T03:04:05Z"},
        {"id": "u2", "created_at": "2021-06-01"},
    ]
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    result = invoke(
        "sync", str(source), "--batch", "--update-only", "--results", str(out), "--rate", "0"
    )
    assert result.exit_code == 0, result.output
    (rec,) = posts(api_env)
    ops = body_ops(rec)
    assert [op["attributes"] for op in ops] == [
        {"id": "u1", "created_at": 1704164645, "_update": True},
        {"id": "u2", "created_at": 1622505600, "_update": True},
    ]
    assert all(set(op) == {"type", "identifiers", "action", "attributes"} for op in ops)


# --- transient failures and `retry --batch` --------------------------------------------------


def test_transient_failures_are_retried_to_ok(fake: ServerThread, tmp_path: Path) -> None:
    fake.fake.config.fail_503 = 0.3
    fake.fake.config.seed = 11
    fake.fake.reset()
    rows = people(400)
    out = tmp_path / "out.jsonl"
    summary = run_batch(
        write_csv(tmp_path / "in.csv", rows), fake, out, batch_size=20, max_retries=10
    )
    assert summary.exit_code == 0
    assert summary.counts == {"ok": 400}
    requests = posts(fake)
    statuses = Counter(rec.status for rec in requests)
    assert statuses[503] > 0
    assert statuses[200] == 20  # one accepted request per batch
    assert fake.fake.accepted() == {row["id"]: [row] for row in rows}  # exactly once each
    # Each row's attempts are the requests that carried it.
    carried = Counter(op_id(op) for rec in requests for op in body_ops(rec))
    lines = by_id(out)
    for ident, line in lines.items():
        assert line["status"] == "ok"
        assert line["mode"] == "batch"
        assert line["attempts"] == carried[ident], line
    assert any(line["attempts"] > 1 for line in lines.values())
    assert summary.requests == len(fake.fake.requests)


def test_retry_batch_resends_transient_failures_from_the_payloads(
    api_env: ServerThread, tmp_path: Path
) -> None:
    fake = api_env.fake
    # The batch naming r3 and r4 gets 503 twice and runs out of retries, while the other
    # batch's success (or, at the end, the credentials check) shows the API is up.
    fake.config.fail_first = {"r3": 2}
    rows = [
        {"id": "r1", "email": "r1@example.com", "plan": "pro"},
        {"id": "r2", "email": "r2@example.com", "plan": "team"},
        {"id": "r3", "email": "r3@example.com", "plan": "free"},
        {"id": "r4", "email": "r4@example.com", "plan": "pro"},
    ]
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    options = SyncOptions(
        send=SendOptions(
            base_url=fake.url, rate=None, batch=True, batch_size=2, max_retries=1, **FAST
        ),
        results=out,
        fresh=True,
    )
    summary = sync(str(source), options, credentials=Credentials(SITE_ID, API_KEY))
    assert summary.counts == {"ok": 2, "failed": 2}
    failed = {ident: line for ident, line in by_id(out).items() if line["status"] == "failed"}
    assert sorted(failed) == ["r3", "r4"]  # one whole batch
    for ident, line in failed.items():
        assert line["http_status"] == 503
        assert line["attempts"] == 2
        assert "gave up after 2 attempts" in line["error"]
        assert line["payload"] == next(row for row in rows if row["id"] == ident)
        assert line["mode"] == "batch"

    source.unlink()  # retry needs only the results file
    before = len(fake.requests)
    result = invoke("retry", str(out), "--batch", "--rate", "0")
    assert result.exit_code == 0, result.output
    resent = fake.requests[before:]
    assert [(rec.method, rec.path) for rec in resent] == [
        ("GET", REGION_PATH),
        ("POST", BATCH_PATH),
    ]
    assert resent[1].body == {
        "batch": [
            {
                "type": "person",
                "identifiers": {"id": ident},
                "action": "identify",
                "attributes": failed[ident]["payload"],
            }
            for ident in sorted(failed)
        ]
    }
    final = latest(out)
    assert all(line["status"] == "ok" for line in final.values())
    assert all(final[line["row"]]["mode"] == "batch" for line in failed.values())
    assert fake.accepted() == {row["id"]: [row] for row in rows}  # each exactly once


def test_retry_batch_all_failed_resends_207_refusals(api_env: ServerThread, tmp_path: Path) -> None:
    rows = people(12)
    api_env.fake.config.reject_ids = frozenset({"cust-2", "cust-9"})
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    assert run_batch(source, api_env, out, batch_size=5).counts == {"ok": 10, "failed": 2}
    source.unlink()

    # A 207 refusal is not transient: a plain retry leaves it alone.
    before = len(api_env.fake.requests)
    result = invoke("retry", str(out), "--batch", "--rate", "0")
    assert result.exit_code == 1, result.output
    assert not [rec for rec in api_env.fake.requests[before:] if rec.method == "POST"]

    api_env.fake.config.reject_ids = frozenset()
    result = invoke("retry", str(out), "--batch", "--all-failed", "--rate", "0")
    assert result.exit_code == 0, result.output
    (rec,) = [r for r in api_env.fake.requests[before:] if r.method == "POST"]
    assert [op_id(op) for op in body_ops(rec)] == ["cust-2", "cust-9"]
    assert [op["attributes"] for op in body_ops(rec)] == [rows[1], rows[8]]
    assert not [r for r in api_env.fake.requests if r.method == "PUT"]
    final = latest(out)
    assert sorted(final) == list(range(1, 13))
    assert all(line["status"] == "ok" and line["mode"] == "batch" for line in final.values())
    assert api_env.fake.accepted() == {row["id"]: [row] for row in rows}


def test_retry_library_batch_mode(fake: ServerThread, tmp_path: Path) -> None:
    rows = people(6)
    fake.fake.config.reject_ids = frozenset({"cust-4"})
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    run_batch(source, fake, out)
    fake.fake.config.reject_ids = frozenset()
    source.unlink()
    options = SyncOptions(send=SendOptions(base_url=fake.url, rate=None, batch=True, **FAST))
    summary = retry(out, options, all_failed=True, credentials=Credentials(SITE_ID, API_KEY))
    assert summary.exit_code == 0
    assert {status: n for status, n in summary.counts.items() if n} == {"ok": 6}
    assert [op_id(op) for op in body_ops(posts(fake)[-1])] == ["cust-4"]


def test_api_down_in_batch_mode_aborts_without_marking_rows_failed(
    fake: ServerThread, tmp_path: Path
) -> None:
    config = fake.fake.config
    config.latency = 0.2  # the credentials check is answered 200 after this

    def go_down_after_the_check() -> None:
        deadline = time.monotonic() + 10
        while not fake.fake.requests and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)  # its fault was drawn on arrival; its answer is still 150 ms away
        config.fail_503 = 1.0
        config.latency = 0.0

    watcher = threading.Thread(target=go_down_after_the_check, daemon=True)
    watcher.start()
    out = tmp_path / "out.jsonl"
    try:
        with pytest.raises(AbortError, match="kept failing"):
            run_batch(
                write_csv(tmp_path / "in.csv", people(100)),
                fake,
                out,
                batch_size=20,
                max_retries=2,
                concurrency=4,
            )
    finally:
        watcher.join(10)
    assert fake.fake.requests[0].status == 200  # the check passed: the API went down later
    assert read_results(out) == []  # nothing marked failed: a re-run sends every row
    assert fake.fake.accepted() == {}
    assert posts(fake)
    assert all(rec.status == 503 for rec in posts(fake))


# --- credentials refused ---------------------------------------------------------------------


def test_wrong_key_in_batch_mode_exits_3_nothing_sent(
    api_env: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "not-the-key")
    source = write_csv(tmp_path / "in.csv", people(20))
    out = tmp_path / "out.jsonl"
    result = invoke("sync", str(source), "--batch", "--results", str(out))
    assert result.exit_code == 3, result.output
    assert "credentials refused (HTTP 401)" in result.stderr
    assert [(r.method, r.status) for r in api_env.fake.requests] == [("GET", 401)]
    assert read_results(out) == []


def test_key_revoked_mid_batch_run_exits_3_without_failed_rows(
    api_env: ServerThread, tmp_path: Path
) -> None:
    fake = api_env.fake
    rows = people(200)
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    stop = threading.Event()

    def revoke_after_first_batch() -> None:
        while not stop.is_set():
            if any(rec.method == "POST" and rec.status == 200 for rec in list(fake.requests)):
                fake.config.api_key = "rotated"
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=revoke_after_first_batch, daemon=True)
    watcher.start()
    args = ["sync", str(source), "--batch", "--batch-size", "20", "--results", str(out)]
    try:
        result = invoke(*args, "--rate", "4", "--concurrency", "1")
    finally:
        stop.set()
        watcher.join(5)
    assert result.exit_code == 3, result.output
    assert "credentials refused (HTTP 401)" in result.stderr
    assert "re-run the same command to resume" in result.stderr
    first = read_results(out)
    assert first, "the first batch was answered before the key was revoked"
    assert len(first) % 20 == 0
    assert len(first) < 200
    assert all(line["status"] == "ok" and line["mode"] == "batch" for line in first)
    assert Counter(rec.status for rec in posts(api_env))[401] == 1

    fake.config.api_key = API_KEY
    before = len(fake.requests)
    result = invoke(*args, "--rate", "0")
    assert result.exit_code == 0, result.output
    final = latest(out)
    assert sorted(final) == list(range(1, 201))
    assert all(line["status"] == "ok" for line in final.values())
    resent_ids = {
        op_id(op) for rec in fake.requests[before:] if rec.method == "POST" for op in body_ops(rec)
    }
    assert not resent_ids & {line["id"] for line in first}  # done rows not sent again
    assert set(fake.accepted()) == {row["id"] for row in rows}


# --- kill -9 and resume ----------------------------------------------------------------------


def complete_lines(path: Path) -> list[dict[str, Any]]:
    """Outcome lines fully written (a torn last line does not count, as on resume)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    lines = [orjson.loads(line) for line in whole.splitlines() if line.strip()]
    return [line for line in lines if "row" in line]


def test_kill_9_and_resume_in_batch_mode(fake: ServerThread, tmp_path: Path) -> None:
    total = 3000
    rows = people(total)
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    fake.fake.config.latency = 0.01
    env = {
        **os.environ,
        "CUSTOMERIO_SITE_ID": SITE_ID,
        "CUSTOMERIO_API_KEY": API_KEY,
        "BULKSYNC_BASE_URL": fake.url,
    }
    command = [sys.executable, "-m", "bulksync", "sync", str(source), "--batch"]
    command += ["--batch-size", "50", "--rate", "20", "--results", str(out)]

    kills: list[tuple[float, set[str]]] = []
    for threshold in (300, 1200, 2100):
        proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while len(complete_lines(out)) < threshold:
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
        killed_at = time.monotonic()
        done = {line["id"] for line in complete_lines(out)}
        assert threshold <= len(done) < total
        kills.append((killed_at, done))

    for _ in range(5):  # resume with the same command until it completes
        finished = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        if finished.returncode == 0:
            break
    assert finished.returncode == 0, finished.stderr

    final = latest(out)
    assert sorted(final) == list(range(1, total + 1))  # every row has an outcome
    assert all(line["status"] == "ok" for line in final.values())
    assert all(line["mode"] == "batch" for line in final.values())
    every_line = read_results(out)
    assert len(every_line) == total  # one line per row: no row got a second outcome
    assert all(line["status"] == "ok" for line in every_line)  # no failed line at all
    assert set(fake.fake.accepted()) == {row["id"] for row in rows}
    # A row with an outcome at a kill is never sent again afterwards.
    requests = posts(fake)
    for killed_at, done in kills:
        later = {op_id(op) for rec in requests if rec.time > killed_at for op in body_ops(rec)}
        assert later, "the resumed runs sent something"
        assert not later & done
    # Re-sent at most: the rows in flight at each kill (no outcome yet), a few batches each.
    times = Counter(ident for ident, _ in fake.fake.batch_accepted)
    in_flight = SendOptions(rate=20).workers * 50
    assert sum(1 for n in times.values() if n > 1) <= len(kills) * in_flight
