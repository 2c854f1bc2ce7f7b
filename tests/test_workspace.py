"""The sender in a real workspace, against the simulator over loopback: one person's rows applied
in file order (a server that answers out of order, retries of the earlier row, batch mode), a
limit lower than --rate that adapts instead of failing rows, a breaker that judges a window,
and the library stopped from another thread through its StopHandle."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bulksync import (
    AbortError,
    Credentials,
    SendOptions,
    StopHandle,
    Summary,
    SyncOptions,
    retry,
    sync,
)
from bulksync.policy import Breaker

from .conftest import API_KEY, SITE_ID, ServerThread, after_requests
from .test_send import FAST, by_id, outcomes, people, puts, run, write_csv

BATCH_PATH = "/api/v2/batch"
REGION_PATH = "/api/v1/accounts/region"


def versions(n_people: int, n_versions: int) -> list[dict[str, str]]:
    """Each person's rows v1..vN, interleaved the way an update log or a CRM export with
    duplicates has them: a person's versions are near each other, not adjacent."""
    rows = []
    for v in range(1, n_versions + 1):
        for p in range(n_people):
            rows.append({"id": f"p{p}", "v": str(v), "plan": f"plan-{v}"})
    # Shuffle within small windows, keeping each person's versions in order.
    return sorted(rows, key=lambda r: (int(r["v"]) * 7 + int(r["id"][1:]) % 11, r["id"]))


def applied(fake: ServerThread) -> dict[str, list[int]]:
    """Identifier -> the versions the simulator accepted for it, in the order applied."""
    return {
        ident: [int(body["v"]) for body in bodies] for ident, bodies in fake.fake.accepted().items()
    }


def assert_file_order(fake: ServerThread, rows: list[dict[str, str]]) -> None:
    expected: dict[str, list[int]] = {}
    for row in rows:
        expected.setdefault(row["id"], []).append(int(row["v"]))
    assert applied(fake) == expected


# --- one identifier, one request in flight, in file order -------------------------------------


def test_single_mode_applies_each_persons_rows_in_file_order(
    fake: ServerThread, tmp_path: Path
) -> None:
    """Answers take 1-80 ms in random order; before, most people ended on an older row."""
    fake.fake.config.latency = 0.001
    fake.fake.config.jitter = 0.08
    rows = versions(30, 5)
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, tmp_path / "out.jsonl")
    assert summary.counts == {"ok": 150}
    assert_file_order(fake, rows)
    # Still concurrent: requests for different people overlapped.
    assert summary.elapsed < 150 * 0.04


def test_retries_of_the_earlier_row_come_before_the_later_row(
    fake: ServerThread, tmp_path: Path
) -> None:
    fake.fake.config.jitter = 0.03
    rows = versions(10, 3)
    # Some people's first request fails twice (503) before it is accepted.
    retried = {"p1", "p4", "p6", "p9"}
    fake.fake.config.fail_first = dict.fromkeys(retried, 2)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=5)
    assert summary.counts == {"ok": 30}
    assert_file_order(fake, rows)
    for line in outcomes(out):
        first = rows[line["row"] - 1]["v"] == "1"
        assert line["attempts"] == (3 if first and line["id"] in retried else 1), line


def test_batch_mode_holds_one_operation_per_person_in_file_order(
    fake: ServerThread, tmp_path: Path
) -> None:
    fake.fake.config.latency = 0.001
    fake.fake.config.jitter = 0.05
    fake.fake.config.fail_first = {"p3": 1, "p7": 2}  # batches naming them are retried
    rows = versions(20, 5)
    summary = run(
        write_csv(tmp_path / "in.csv", rows),
        fake,
        tmp_path / "out.jsonl",
        batch=True,
        batch_size=8,
        concurrency=6,
    )
    assert summary.counts == {"ok": 100}
    assert_file_order(fake, rows)
    for rec in fake.fake.requests:
        if rec.path == BATCH_PATH:
            named = [op["identifiers"]["id"] for op in rec.body["batch"]]
            assert len(named) == len(set(named)), named


def test_one_person_many_times_is_sent_one_at_a_time(fake: ServerThread, tmp_path: Path) -> None:
    fake.fake.config.jitter = 0.02
    rows = [{"id": "same", "v": str(v), "plan": "x"} for v in range(1, 21)]
    rows += [{"id": f"other{i}", "v": "1", "plan": "y"} for i in range(20)]
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, tmp_path / "out.jsonl")
    assert summary.counts == {"ok": 40}
    assert_file_order(fake, rows)


# --- a limit lower than --rate: slow down, never fail a row for it -----------------------------


def test_limit_below_rate_slows_down_and_fails_no_row(fake: ServerThread, tmp_path: Path) -> None:
    """The workspace admits 20 requests/s, --rate says 50, and --max-retries 0 asks to fail
    fast: a 429 is the workspace's limit, not the row's fault, so every row ends ok."""
    fake.fake.config.rate_limit = 20
    rows = people(80)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, rate=50, max_retries=0)
    assert summary.counts == {"ok": 80}
    refused = [rec for rec in fake.fake.requests if rec.status == 429]
    assert refused, "the limit was never reached: the test proves nothing"
    assert summary.rate_limited == len(refused)
    assert summary.requests == len(fake.fake.requests)
    assert sorted(fake.fake.accepted()) == sorted(row["id"] for row in rows)
    # Sending at --rate regardless would have had 60% of requests refused; the adaptive rate
    # finds the limit within the first seconds (the benchmark measures the steady state).
    assert len(refused) < 0.45 * len(fake.fake.requests)


def test_429_storm_without_end_trips_the_breaker_without_failed_rows(
    fake: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Breaker, "WINDOW", 1.5)  # the real window is 30 s
    rows = people(10)
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    with (
        pytest.raises(AbortError, match=r"kept failing \(HTTP 429"),
        after_requests(fake, 1, lambda config: setattr(config, "fail_429", 1.0)),
    ):
        run(write_csv(tmp_path / "in.csv", rows), fake, out, rate=20, max_retries=0)
    assert time.monotonic() - started < 10
    assert outcomes(out) == []
    assert len(fake.fake.requests) > 10  # it kept trying, slower, for the whole window


# --- the breaker judges a window, not one row --------------------------------------------------


def test_fail_fast_with_random_503s_never_trips(fake: ServerThread, tmp_path: Path) -> None:
    """--max-retries 0 against an API with 20% random 503s: the failed rows are failed, the
    rest ok, and the run finishes (before, it stopped with exit 3 after a few hundred rows)."""
    fake.fake.config.fail_503 = 0.2
    fake.fake.config.seed = 9
    fake.fake.reset()
    rows = people(400)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=0)
    assert summary.counts["ok"] + summary.counts["failed"] == 400
    assert 40 < summary.counts["failed"] < 130
    lines = by_id(out)
    for ident, line in lines.items():
        if line["status"] == "failed":
            assert line["http_status"] == 503
            assert line["attempts"] == 1
            assert ident not in fake.fake.accepted()
        else:
            assert fake.fake.accepted()[ident] == [next(r for r in rows if r["id"] == ident)]


def test_outage_with_fail_fast_stops_without_failed_rows(
    fake: ServerThread, tmp_path: Path
) -> None:
    """The API goes down for good mid-run with --max-retries 0: every failure is held back
    until the API is seen to work, the breaker trips, and no row is marked failed for it."""
    rows = people(300)
    fake.fake.config.latency = 0.002
    out = tmp_path / "out.jsonl"
    with (
        pytest.raises(AbortError, match="kept failing"),
        after_requests(fake, 50, lambda config: setattr(config, "fail_503", 1.0)),
    ):
        run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=0, rate=200)
    statuses = {line["status"] for line in outcomes(out)}
    assert statuses <= {"ok"}, statuses
    assert len(outcomes(out)) >= 40


def test_last_row_failing_is_confirmed_by_the_credentials_check(
    fake: ServerThread, tmp_path: Path
) -> None:
    """The last row fails with --max-retries 0 and no request follows it: the credentials
    check shows the API is up, so the row is `failed` (exit 1), not an outage (exit 3)."""
    rows = people(5)
    fake.fake.config.fail_first = {"cust-5": 1}
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=0, concurrency=1)
    assert summary.counts == {"ok": 4, "failed": 1}
    assert by_id(out)["cust-5"]["http_status"] == 503
    paths = [rec.path for rec in fake.fake.requests]
    assert paths[0] == paths[-1] == REGION_PATH  # the check before, and the one after


# --- the library, embedded: a worker thread, a stop handle, no signal handlers ----------------


def sync_in_thread(
    path: Path, fake: ServerThread, out: Path, stop: StopHandle, **send: Any
) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    options = SyncOptions(
        send=SendOptions(base_url=fake.url, **{"rate": None, **FAST, **send}),
        results=out,
        grace=5.0,
    )

    def target() -> None:
        try:
            box["summary"] = sync(
                str(path), options, credentials=Credentials(SITE_ID, API_KEY), stop=stop
            )
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def test_sync_in_a_worker_thread_stops_through_its_handle_then_resumes(
    fake: ServerThread, tmp_path: Path
) -> None:
    fake.fake.config.latency = 0.05
    rows = people(400)
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    stop = StopHandle()
    thread, box = sync_in_thread(source, fake, out, stop, concurrency=4)
    deadline = time.monotonic() + 20
    while len(puts(fake)) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stop.stop() is True
    thread.join(20)
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")
    summary: Summary = box["summary"]
    assert summary.interrupted and summary.exit_code == 3
    # Requests in flight finished (grace): every request sent has its row's outcome.
    answered = {line["id"] for line in outcomes(out)}
    assert answered == {rec.identifier for rec in puts(fake)}
    assert 0 < len(answered) < 400
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers

    again, box = sync_in_thread(source, fake, out, StopHandle(), concurrency=4)
    again.join(60)
    assert box["summary"].counts == {"ok": 400}
    assert sorted(fake.fake.accepted()) == sorted(row["id"] for row in rows)
    assert all(len(bodies) == 1 for bodies in fake.fake.accepted().values())


def test_stop_asked_before_sending_sends_no_row(fake: ServerThread, tmp_path: Path) -> None:
    stop = StopHandle()
    assert stop.stop() is False  # no run yet: nothing told, but remembered
    thread, box = sync_in_thread(
        write_csv(tmp_path / "in.csv", people(50)), fake, tmp_path / "o", stop
    )
    thread.join(20)
    assert box["summary"].interrupted
    assert puts(fake) == []


# --- retry never puts an older row over a newer one -------------------------------------------


def test_retry_skips_a_failed_row_whose_person_has_a_later_row_accepted(
    fake: ServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"id": "p", "v": "1", "plan": "old"},
        {"id": "q", "v": "1", "plan": "x"},
        {"id": "p", "v": "2", "plan": "new"},
        {"id": "r", "v": "1", "plan": "y"},
        {"id": "s", "v": "1", "plan": "z"},
    ]
    # p's first row and r's row fail once (503) with --max-retries 0; p's second row is ok.
    fake.fake.config.fail_first = {"p": 1, "r": 1}
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=0, concurrency=1)
    assert summary.counts == {"ok": 3, "failed": 2}
    assert applied(fake) == {"p": [2], "q": [1], "s": [1]}

    before = len(fake.fake.requests)
    again = retry(
        out,
        SyncOptions(send=SendOptions(base_url=fake.url, rate=None, **FAST)),
        credentials=Credentials(SITE_ID, API_KEY),
    )
    resent = [rec.identifier for rec in fake.fake.requests[before:] if rec.identifier]
    assert resent == ["r"]  # not p's row 1: it would overwrite row 3
    assert applied(fake)["p"] == [2]
    assert again.counts == {"ok": 4, "failed": 1}
    assert "1 failed row(s) not re-sent" in caplog.text
    assert "row 1, superseded by row 3" in caplog.text


def test_batch_rows_waiting_for_a_person_do_not_hold_back_the_rest(
    fake: ServerThread, tmp_path: Path
) -> None:
    """People repeat a few rows apart, so nearly every batch names someone from the batch
    before: only those rows wait for its answer (a smaller request), the others go at once."""
    fake.fake.config.latency = 0.03
    rows = []
    for i in range(120):
        rows.append({"id": f"p{i}", "v": "1", "plan": "a"})
        if i >= 3:
            rows.append({"id": f"p{i - 3}", "v": "2", "plan": "b"})
    summary = run(
        write_csv(tmp_path / "in.csv", rows),
        fake,
        tmp_path / "out.jsonl",
        batch=True,
        batch_size=10,
        concurrency=8,
    )
    assert summary.counts == {"ok": len(rows)}
    assert_file_order(fake, rows)
    sizes = [len(rec.body["batch"]) for rec in fake.fake.requests if rec.path == BATCH_PATH]
    assert sum(sizes) == len(rows)
    assert min(sizes[:-1]) < 10  # some batches went in two parts
