"""The retry policy's pieces on their own, with the clock passed in: the adaptive rate (AIMD),
the outage breaker, batch packing that keeps one operation per person, the limiter's rate
changes, and options checked where they are built. No network."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from bulksync import NormalizeOptions, SendOptions, SourceOptions, SyncOptions, UsageError
from bulksync.batch import MAX_OPEN_BATCHES, Batch, pack
from bulksync.operations import Record
from bulksync.policy import AdaptiveRate, Breaker
from bulksync.ratelimit import RateLimiter

from .test_send import invoke, people, write_csv

# --- AdaptiveRate ----------------------------------------------------------------------------


def test_adaptive_rate_starts_at_the_ceiling_and_cuts_on_a_429() -> None:
    aimd = AdaptiveRate(100, now=0.0)
    assert aimd.rate == 100
    assert aimd.rate_limited(started=1.0, now=1.05) == pytest.approx(100 * AdaptiveRate.DECREASE)
    assert aimd.cuts == 1


def test_adaptive_rate_cuts_once_for_requests_sent_at_the_old_rate() -> None:
    """429s for requests started before the cut (or just after it, while the API's window
    still remembers the old rate) are answers to the old rate: one cut, not one per 429."""
    aimd = AdaptiveRate(100, now=0.0)
    aimd.rate_limited(started=1.0, now=1.0)
    once = aimd.rate
    for started in (0.95, 0.99, 1.0, 1.0 + AdaptiveRate.HOLD / 2):
        aimd.rate_limited(started=started, now=1.0 + AdaptiveRate.HOLD / 2 + 0.01)
    assert aimd.rate == once
    aimd.rate_limited(started=1.0 + AdaptiveRate.HOLD + 0.01, now=1.5)
    assert aimd.rate == pytest.approx(once * AdaptiveRate.DECREASE)
    assert aimd.cuts == 2


def test_adaptive_rate_never_goes_below_its_floor() -> None:
    aimd = AdaptiveRate(100, now=0.0)
    for i in range(200):
        aimd.rate_limited(started=i * 1.0, now=i * 1.0)
    assert aimd.rate == aimd.floor == 1.0


def test_adaptive_rate_grows_back_additively_to_the_ceiling() -> None:
    aimd = AdaptiveRate(100, now=0.0)
    aimd.rate_limited(started=0.0, now=0.0)
    cut = aimd.rate
    step = AdaptiveRate.INCREASE * 100  # per second without a 429
    assert aimd.accepted(now=1.0) == pytest.approx(cut + step)
    assert aimd.accepted(now=1.5) == pytest.approx(cut + 1.5 * step)
    assert aimd.accepted(now=1000.0) == 100  # never above the ceiling


def test_adaptive_rate_settles_near_a_lower_limit() -> None:
    """A model of a workspace admitting 60 requests/s to a client whose ceiling is 100: the
    rate saws between the cut and the limit, so the client sends close to the limit."""
    aimd = AdaptiveRate(100, now=0.0)
    now, sent, refused, over_time = 0.0, 0, 0, []
    while now < 120:
        rate = aimd.rate
        now += 1 / rate
        sent += 1
        if rate > 60:  # what the API sees: more than it admits
            refused += 1
            aimd.rate_limited(started=now, now=now + 0.02)
        else:
            aimd.accepted(now)
        if now > 20:
            over_time.append(min(rate, 60))
    assert refused / sent < 0.05
    assert sum(over_time) / len(over_time) > 0.9 * 60


# --- Breaker ---------------------------------------------------------------------------------


def test_breaker_never_trips_on_20_percent_random_failures() -> None:
    breaker, rng = Breaker(now=0.0), random.Random(3)
    for i in range(20_000):
        now = i * 0.01
        failed = rng.random() < 0.2
        breaker.record(not failed, now)
        if failed:
            assert not breaker.tripped(now), f"tripped at answer {i}: {breaker}"


def test_breaker_trips_on_an_outage_within_its_window() -> None:
    breaker = Breaker(now=0.0)
    for i in range(3000):  # 30 s of successes at 100/s
        breaker.record(True, i * 0.01)
    now, tripped_at = 30.0, None
    while tripped_at is None and now < 100:
        now += 0.5  # retries slowed down by backoff: two failures a second
        breaker.record(False, now)
        if breaker.tripped(now):
            tripped_at = now
    assert tripped_at is not None
    assert tripped_at - 30.0 <= Breaker.WINDOW + 1


def test_breaker_needs_several_failures() -> None:
    breaker = Breaker(now=0.0)
    breaker.record(True, 0.0)
    for i in range(Breaker.MIN_FAILURES - 1):
        breaker.record(False, 0.1 + i * 0.01)
        assert not breaker.tripped(0.1 + i * 0.01)
    breaker.record(False, 0.5)
    assert breaker.tripped(0.5)


def test_breaker_does_not_count_429s_but_trips_when_nothing_else_comes() -> None:
    breaker = Breaker(now=0.0)
    breaker.record(True, 0.0)
    for i in range(1, 100):
        breaker.record(None, i * 0.1)  # 429s: the API is up, only busy
        assert not breaker.tripped(i * 0.1)
    breaker.record(None, Breaker.WINDOW + 0.1)
    assert breaker.tripped(Breaker.WINDOW + 0.1)  # nothing accepted for a whole window


def test_breaker_trips_a_slow_run_after_a_window_without_success() -> None:
    """--concurrency 1 with long backoffs never gathers MIN_FAILURES in a window."""
    breaker = Breaker(now=0.0)
    breaker.record(True, 1.0)
    for t in (2.0, 10.0, 25.0):
        breaker.record(False, t)
        assert not breaker.tripped(t)
    breaker.record(False, 31.5)
    assert breaker.tripped(31.5)


# --- pack: one operation per person in a batch ------------------------------------------------


def records(identifiers: list[str]) -> list[Record]:
    return [Record(row, ident, {"v": row}) for row, ident in enumerate(identifiers, start=1)]


def batches(identifiers: list[str], size: int) -> list[Batch]:
    packed = list(pack(records(identifiers), size))
    assert all(isinstance(b, Batch) for b in packed)
    return [b for b in packed if isinstance(b, Batch)]


def assert_ordered_and_distinct(packed: list[Batch], n_rows: int) -> None:
    seen_rows = sorted(r.row for b in packed for r in b.records)
    assert seen_rows == list(range(1, n_rows + 1))  # every row once
    last_batch: dict[str, int] = {}
    last_row: dict[str, int] = {}
    for index, batch in enumerate(packed):
        idents = [r.identifier for r in batch.records]
        assert len(idents) == len(set(idents)), f"batch {index} names a person twice"
        for record in batch.records:
            # A later row of a person is in a later batch than its earlier rows.
            assert last_batch.get(record.identifier, -1) < index
            assert last_row.get(record.identifier, 0) < record.row
            last_batch[record.identifier] = index
            last_row[record.identifier] = record.row


def test_pack_puts_a_repeated_person_in_later_batches() -> None:
    identifiers = [f"p{i}" for i in range(20) for _ in range(5)]  # v1..v5 of each, adjacent
    packed = batches(identifiers, 10)
    assert_ordered_and_distinct(packed, len(identifiers))
    # Five open batches fill side by side: no batch of one.
    assert all(len(b) == 10 for b in packed)


def test_pack_keeps_order_for_a_person_repeated_more_than_the_open_batches() -> None:
    identifiers = ["same"] * (MAX_OPEN_BATCHES * 3) + [f"p{i}" for i in range(30)]
    packed = batches(identifiers, 10)
    assert_ordered_and_distinct(packed, len(identifiers))


def test_pack_random_repeats_property() -> None:
    rng = random.Random(5)
    for _ in range(50):
        identifiers = [f"p{rng.randrange(30)}" for _ in range(rng.randrange(1, 300))]
        size = rng.randrange(1, 40)
        packed = batches(identifiers, size)
        assert_ordered_and_distinct(packed, len(identifiers))
        assert all(len(b) <= size for b in packed)


def test_pack_without_repeats_fills_batches_in_row_order() -> None:
    packed = batches([f"p{i}" for i in range(25)], 10)
    assert [[r.row for r in b.records] for b in packed] == [
        list(range(1, 11)),
        list(range(11, 21)),
        list(range(21, 26)),
    ]


# --- RateLimiter.set_rate ---------------------------------------------------------------------


async def test_rate_limiter_set_rate_holds_the_lower_rate_at_once() -> None:
    limiter = RateLimiter(50)
    starts: list[float] = []

    async def worker() -> None:
        while time.monotonic() < stop_at:
            await limiter.acquire()
            starts.append(time.monotonic())

    begin = time.monotonic()
    stop_at = begin + 2.5
    tasks = [asyncio.create_task(worker()) for _ in range(20)]
    await asyncio.sleep(0.5)
    limiter.set_rate(10)
    cut_at = time.monotonic()
    # The adaptive rate moves the rate a little at every answer.
    step = 0
    while time.monotonic() < stop_at - 0.1:
        await asyncio.sleep(0.02)
        step += 1
        limiter.set_rate(10 - 0.5 * (step % 4))
    limiter.set_rate(10)
    await asyncio.gather(*tasks)
    assert limiter.rate == 10
    # From one window after the cut, never more than 10 starts in any second.
    after = [t for t in starts if t >= cut_at + limiter.window]
    assert after, "nothing started after the cut"
    assert max(sum(1 for u in after if t <= u < t + 1.0) for t in after) <= 10
    # Spread over the second, not let through in a bunch when the window empties.
    assert max(sum(1 for u in after if t <= u < t + 0.2) for t in after) <= 4
    limiter.set_rate(500)
    assert limiter.rate == 50  # never above the ceiling it was made with


# --- options are checked where they are built --------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SendOptions(rate=0), "rate"),
        (lambda: SendOptions(rate=float("nan")), "rate"),
        (lambda: SendOptions(concurrency=0), "concurrency"),
        (lambda: SendOptions(max_retries=-1), "max_retries"),
        (lambda: SendOptions(timeout=0), "timeout"),
        (lambda: SendOptions(region="asia"), "region"),
        (lambda: SendOptions(batch_size=0), "batch_size"),
        (lambda: NormalizeOptions(types={"age": "integer"}), "--type age=integer"),  # type: ignore[dict-item]
        (lambda: NormalizeOptions(empty="drop"), "--empty"),  # type: ignore[arg-type]
        (lambda: SourceOptions(chunk_size=0), "chunk size"),
        (lambda: SourceOptions(format="xlsx"), "format"),  # type: ignore[arg-type]
        (lambda: SyncOptions(grace=-1), "grace"),
    ],
)
def test_bad_option_values_are_usage_errors_when_built(build: object, message: str) -> None:
    assert callable(build)
    with pytest.raises(UsageError, match=message):
        build()


def test_cli_bad_type_exits_2_before_any_file_is_written(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", people(3))
    results = tmp_path / "out.jsonl"
    result = invoke(
        "sync", str(source), "--dry-run", "--type", "zip=integer", "--results", str(results)
    )
    assert result.exit_code == 2
    assert "--type zip=integer" in result.output
    assert "Traceback" not in result.output
    assert not results.exists()
    assert not list(tmp_path.glob("*.lock"))
