"""Sending, end to end: the CLI and `bulksync.sync()` against the Track API simulator over real
loopback sockets. No HTTP mocks: every assertion is about what the simulator received and what
the results file, the exit code and the output say."""

from __future__ import annotations

import contextlib
import csv
import itertools
import logging
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from click.testing import CliRunner, Result

from bulksync import AbortError, Credentials, SendOptions, Summary, SyncOptions, check, sync
from bulksync.cli import main
from bulksync.fake import Recorded

from .conftest import API_KEY, ROOT, SAMPLES, SITE_ID, ServerThread, after_requests, read_results

REGION_PATH = "/api/v1/accounts/region"
# Small backoffs keep retry tests fast; the CLI has no flag for these.
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05}


# --- helpers ---------------------------------------------------------------------------------


def people(n: int, prefix: str = "cust") -> list[dict[str, str]]:
    plans = ["free", "pro", "team"]
    return [
        {
            "id": f"{prefix}-{i}",
            "email": f"person{i}@example.com",
            "plan": plans[i % 3],
            "zip": f"{i:05d}",
        }
        for i in range(1, n + 1)
    ]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def outcomes(path: Path) -> list[dict[str, Any]]:
    """The row lines of a results file (the header line left out)."""
    return [line for line in read_results(path) if "row" in line]


def by_id(path: Path) -> dict[str, dict[str, Any]]:
    lines = outcomes(path)
    table = {str(line["id"]): line for line in lines}
    assert len(table) == len(lines), "one line per row"
    return table


def puts(fake: ServerThread) -> list[Recorded]:
    return [rec for rec in fake.fake.requests if rec.method == "PUT"]


def run(
    path: Path,
    fake: ServerThread,
    results: Path,
    *,
    progress: Callable[[str], None] | None = None,
    **send: Any,
) -> Summary:
    """`bulksync.sync()` against the simulator: uncapped rate and small backoffs by default."""
    options = SyncOptions(
        send=SendOptions(base_url=fake.url, **{"rate": None, **FAST, **send}),
        results=results,
    )
    return sync(str(path), options, credentials=Credentials(SITE_ID, API_KEY), progress=progress)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_all_ok_once(fake: ServerThread, results: Path, rows: list[dict[str, str]]) -> None:
    """Every row accepted exactly once with its body, and `ok` in the results."""
    assert fake.fake.accepted() == {row["id"]: [row] for row in rows}
    lines = by_id(results)
    assert sorted(lines) == sorted(row["id"] for row in rows)
    for line in lines.values():
        assert line["status"] == "ok", line
        assert line["http_status"] == 200
        assert line["error"] is None
        assert "payload" not in line


# --- every valid row arrives exactly once ----------------------------------------------------


@pytest.mark.parametrize(("name", "n_invalid"), [("customers.csv", 4), ("customers.jsonl", 5)])
def test_sample_every_valid_row_arrives_once_with_its_dry_run_payload(
    api_env: ServerThread, tmp_path: Path, name: str, n_invalid: int
) -> None:
    source = str(SAMPLES / name)
    dry, out = tmp_path / "dry.jsonl", tmp_path / "out.jsonl"
    result = invoke("sync", source, "--dry-run", "--results", str(dry))
    assert result.exit_code == 1, result.output
    assert api_env.fake.requests == []  # a dry run sends nothing
    planned = outcomes(dry)
    expected = {line["id"]: line["payload"] for line in planned if line["status"] == "valid"}
    invalid = {line["row"]: line for line in planned if line["status"] == "invalid"}
    assert len(invalid) == n_invalid
    assert len(expected) == 50 - n_invalid

    result = invoke("sync", source, "--results", str(out))
    assert result.exit_code == 1, result.output  # some rows are invalid
    # Every valid row arrived once, with exactly the dry run's payload; no invalid row arrived.
    assert api_env.fake.accepted() == {ident: [body] for ident, body in expected.items()}
    assert api_env.fake.requests_per_identifier() == Counter(dict.fromkeys(expected, 1))
    others = [rec for rec in api_env.fake.requests if rec.method != "PUT"]
    assert [(rec.method, rec.path) for rec in others] == [("GET", REGION_PATH)]

    lines = sorted(outcomes(out), key=lambda line: line["row"])
    assert [line["row"] for line in lines] == list(range(1, 51))  # one line per row
    for line in lines:
        if line["row"] in invalid:
            assert line == invalid[line["row"]]
            assert line["attempts"] == 0
            assert line["http_status"] is None
        else:
            assert line["status"] == "ok", line
            assert (line["http_status"], line["attempts"], line["error"]) == (200, 1, None)
            assert line["id"] in expected
    assert re.search(rf"ok\s+{len(expected)}\n", result.stdout)
    assert re.search(rf"invalid\s+{n_invalid}\n", result.stdout)


def test_clean_file_exits_0_and_sends_every_row(api_env: ServerThread, tmp_path: Path) -> None:
    rows = people(7)
    rows[2]["plan"] = ""  # an empty cell is left out of the body
    source = write_csv(tmp_path / "clean.csv", rows)
    out = tmp_path / "out.jsonl"
    result = invoke("sync", str(source), "--results", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout)
    assert summary["ok"] == 7
    assert summary["failed"] == summary["invalid"] == 0
    assert summary["requests"] == 8  # 7 rows + the credentials check
    assert summary["exit_code"] == 0
    del rows[2]["plan"]
    assert_all_ok_once(api_env, out, rows)
    assert all(line["attempts"] == 1 for line in outcomes(out))
    assert api_env.fake.accepted()["cust-3"] == [
        {"id": "cust-3", "email": "person3@example.com", "zip": "00003"}
    ]


# --- identifiers arrive exactly as sent -----------------------------------------------------

ODD_IDS = [
    "a/b",
    "user@example.com",
    "a+b",
    "100%",
    "%40",
    "a%2Fb",
    "what?x=1",
    "hash#tag",
    "with space",
    "semi;colon&amp=1",
    "josé/ü",
    "日本語",
    "cio_03000001",
    "plain-id_42",
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_identifiers_arrive_exactly_as_sent(fake: ServerThread, tmp_path: Path, fmt: str) -> None:
    rows = [{"id": ident, "plan": f"p{i}"} for i, ident in enumerate(ODD_IDS)]
    path = tmp_path / f"odd.{fmt}"
    source = write_csv(path, rows) if fmt == "csv" else write_jsonl(path, rows)
    out = tmp_path / "out.jsonl"
    summary = run(source, fake, out)
    assert summary.exit_code == 0
    assert_all_ok_once(fake, out, rows)
    seen = {rec.identifier: rec for rec in puts(fake)}
    assert sorted(seen) == sorted(ODD_IDS)
    for ident in ODD_IDS:
        assert seen[ident].path == "/api/v1/customers/" + quote(ident, safe="")


def test_email_identifiers_arrive_exactly_as_sent(fake: ServerThread, tmp_path: Path) -> None:
    emails = ["Mixed.Case+tag@example.com", "o'brien@example.co.uk", "user%x@example.com"]
    rows = [{"email": email, "plan": "pro"} for email in emails]
    out = tmp_path / "out.jsonl"
    assert run(write_csv(tmp_path / "emails.csv", rows), fake, out).exit_code == 0
    assert fake.fake.accepted() == {row["email"]: [row] for row in rows}
    for rec in puts(fake):
        assert rec.identifier is not None
        assert rec.path == "/api/v1/customers/" + quote(rec.identifier, safe="")
        assert "@" not in rec.path  # %40, not a bare @
    assert [line["id"] for line in outcomes(out)] == emails


# --- transient failures are retried ----------------------------------------------------------


def assert_retried_to_ok(fake: ServerThread, out: Path, rows: list[dict[str, str]]) -> None:
    """All rows ok, each row's attempts equal to the requests the simulator saw for it, and
    some rows needed more than one."""
    assert_all_ok_once(fake, out, rows)
    counts = fake.fake.requests_per_identifier()
    lines = by_id(out)
    for ident, line in lines.items():
        assert line["attempts"] == counts[ident], line
    assert any(line["attempts"] > 1 for line in lines.values())


def test_429_without_retry_after_is_retried(fake: ServerThread, tmp_path: Path) -> None:
    fake.fake.config.fail_429 = 0.3
    fake.fake.config.seed = 11
    fake.fake.reset()
    rows = people(30)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=10, rate=1000)
    assert summary.exit_code == 0
    assert_retried_to_ok(fake, out, rows)
    assert any(rec.status == 429 for rec in puts(fake))


def test_429_retry_after_is_honoured_per_row(fake: ServerThread, tmp_path: Path) -> None:
    fake.fake.config.fail_429 = 0.3
    fake.fake.config.retry_after = 0.2
    fake.fake.config.seed = 5
    fake.fake.reset()
    rows = people(15)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=10, rate=100)
    assert summary.exit_code == 0
    assert_retried_to_ok(fake, out, rows)
    refused = 0
    for ident in (row["id"] for row in rows):
        mine = [rec for rec in puts(fake) if rec.identifier == ident]
        for before, after in itertools.pairwise(mine):
            assert before.status == 429
            refused += 1
            # The retry waited at least Retry-After (the backoff cap alone is 0.05 s).
            assert after.time - before.time >= 0.2 - 0.005, (ident, after.time - before.time)
    assert refused > 0


def test_429_retry_after_pauses_every_worker(fake: ServerThread, tmp_path: Path) -> None:
    """The simulator allows 10 requests per second, the client asks for 100: after a 429 with
    Retry-After, no worker may start a request before the pause is over (a request already
    in flight may still arrive a few milliseconds later)."""
    fake.fake.config.rate_limit = 10
    fake.fake.config.retry_after = 0.5
    rows = people(25)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=10, rate=100)
    assert summary.exit_code == 0
    assert_all_ok_once(fake, out, rows)
    refusals = [rec.time for rec in fake.fake.requests if rec.status == 429]
    assert refusals
    arrivals = [rec.time for rec in fake.fake.requests]
    # Inside a pause, past the in-flight stragglers of its first few milliseconds.
    hammering = {t for t in arrivals if any(r + 0.05 < t < r + 0.49 for r in refusals)}
    assert not hammering, (
        f"{len(hammering)} of {len(arrivals)} requests started during a Retry-After pause"
    )


def test_server_rate_limit_below_client_rate_ends_ok(fake: ServerThread, tmp_path: Path) -> None:
    fake.fake.config.rate_limit = 15
    rows = people(30)
    out = tmp_path / "out.jsonl"
    summary = run(
        write_csv(tmp_path / "in.csv", rows),
        fake,
        out,
        rate=100,
        max_retries=12,
        backoff_base=0.05,
        backoff_cap=0.4,
    )
    assert summary.exit_code == 0
    assert_retried_to_ok(fake, out, rows)


def test_5xx_bursts_are_retried(fake: ServerThread, tmp_path: Path) -> None:
    fake.fake.config.fail_500 = 0.15
    fake.fake.config.fail_503 = 0.15
    fake.fake.config.seed = 3
    fake.fake.reset()
    rows = people(40)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=10)
    assert summary.exit_code == 0
    assert_retried_to_ok(fake, out, rows)
    statuses = Counter(rec.status for rec in puts(fake))
    assert statuses[500] > 0
    assert statuses[503] > 0


def test_fail_first_within_budget_counts_attempts(fake: ServerThread, tmp_path: Path) -> None:
    fake.fake.config.fail_first = {"cust-2": 2, "cust-5": 4}
    rows = people(8)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=4)
    assert summary.exit_code == 0
    assert_retried_to_ok(fake, out, rows)
    attempts = {ident: line["attempts"] for ident, line in by_id(out).items()}
    assert attempts == {row["id"]: 1 for row in rows} | {"cust-2": 3, "cust-5": 5}
    assert summary.requests == 1 + 8 + 2 + 4


def test_dropped_connections_are_retried(fake: ServerThread, tmp_path: Path) -> None:
    fake.fake.config.drop = 0.3
    fake.fake.config.seed = 8
    fake.fake.reset()
    rows = people(30)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=10)
    assert summary.exit_code == 0
    # Every request the simulator saw went through the retry policy and the rate limiter:
    # aiohttp's own silent re-send of an idempotent PUT on a dropped connection is off.
    assert_retried_to_ok(fake, out, rows)
    assert summary.requests == len(fake.fake.requests)
    assert any(rec.status == 0 for rec in puts(fake))  # some connections really were dropped


def test_slow_answers_time_out_and_are_retried(fake: ServerThread, tmp_path: Path) -> None:
    fake.fake.config.slow = 0.25
    fake.fake.config.slow_seconds = 2.0
    fake.fake.config.seed = 4
    fake.fake.reset()
    rows = people(20)
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=8, timeout=0.3)
    assert time.monotonic() - started < 10  # nobody waited for a 2 s answer more than once
    assert summary.exit_code == 0
    assert_retried_to_ok(fake, out, rows)
    assert any(rec.status == 0 for rec in puts(fake))  # the client gave up on some


def test_retry_budget_runs_out_row_failed_with_payload(fake: ServerThread, tmp_path: Path) -> None:
    fake.fake.config.fail_first = {"cust-4": 10}
    rows = people(10)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=2)
    assert summary.exit_code == 1
    assert summary.counts == {"ok": 9, "failed": 1}
    lines = by_id(out)
    failed = lines.pop("cust-4")
    assert failed["status"] == "failed"
    assert failed["attempts"] == 3
    assert failed["http_status"] == 503
    assert "HTTP 503" in failed["error"]
    assert "fail_first" in failed["error"]  # the API's own message
    assert "gave up after 3 attempts" in failed["error"]
    assert failed["payload"] == rows[3]
    assert fake.fake.requests_per_identifier()["cust-4"] == 3
    assert "cust-4" not in fake.fake.accepted()
    assert all(line["status"] == "ok" for line in lines.values())


def test_one_failing_row_does_not_abort_a_sequential_run(
    fake: ServerThread, tmp_path: Path
) -> None:
    """With --concurrency 1, a row that runs out of retries while every other row succeeds is
    a `failed` row, not an outage: the rows after it must still be sent."""
    fake.fake.config.fail_first = {"cust-3": 10}
    rows = people(6)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=2, concurrency=1)
    assert summary.counts == {"ok": 5, "failed": 1}
    assert summary.exit_code == 1
    assert by_id(out)["cust-3"]["status"] == "failed"
    assert sorted(fake.fake.accepted()) == sorted(r["id"] for r in rows if r["id"] != "cust-3")


def test_api_down_aborts_without_marking_rows_failed(fake: ServerThread, tmp_path: Path) -> None:
    """Every request fails once the credentials check has passed: the rows run out of
    retries, the health check at the end fails too, and the breaker stops the run."""
    rows = people(6)
    out = tmp_path / "out.jsonl"
    with (
        pytest.raises(AbortError, match="kept failing"),
        after_requests(fake, 1, lambda config: setattr(config, "fail_503", 1.0)),
    ):
        run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=2, concurrency=2)
    assert outcomes(out) == []  # nothing marked failed: a re-run sends every row
    assert fake.fake.accepted() == {}


# --- terminal refusals -----------------------------------------------------------------------


def test_400_fails_after_one_attempt_with_the_api_message(
    fake: ServerThread, tmp_path: Path
) -> None:
    fake.fake.config.reject_ids = frozenset({"cust-3"})
    rows = people(6)
    out = tmp_path / "out.jsonl"
    summary = run(write_csv(tmp_path / "in.csv", rows), fake, out, max_retries=5)
    assert summary.exit_code == 1
    lines = by_id(out)
    rejected = lines.pop("cust-3")
    assert rejected["status"] == "failed"
    assert rejected["attempts"] == 1
    assert rejected["http_status"] == 400
    assert rejected["error"] == "HTTP 400: rejected by test"
    assert rejected["payload"] == rows[2]
    assert fake.fake.requests_per_identifier()["cust-3"] == 1
    assert all(line["status"] == "ok" for line in lines.values())


# --- credentials refused ---------------------------------------------------------------------


def test_wrong_key_exits_3_and_sends_only_the_check(
    api_env: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "not-the-key")
    out = tmp_path / "out.jsonl"
    result = invoke("sync", str(SAMPLES / "customers.csv"), "--results", str(out))
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("bulksync: error: credentials refused (HTTP 401)")
    assert "CUSTOMERIO_API_KEY" in result.stderr
    assert "nothing was sent" in result.stderr
    assert "Traceback" not in result.output
    assert [(r.method, r.path, r.status) for r in api_env.fake.requests] == [
        ("GET", REGION_PATH, 401)
    ]
    assert outcomes(out) == []  # no row marked failed (nor anything else)


def test_key_revoked_mid_run_aborts_without_failed_lines(
    fake: ServerThread, tmp_path: Path
) -> None:
    rows = people(40)
    out = tmp_path / "out.jsonl"
    ok = 0

    def progress(status: str) -> None:
        nonlocal ok
        ok += status == "ok"
        if ok == 5:
            fake.fake.config.api_key = "rotated"

    with pytest.raises(AbortError, match=r"credentials refused \(HTTP 401\).*re-run") as info:
        run(write_csv(tmp_path / "in.csv", rows), fake, out, progress=progress, concurrency=2)
    assert API_KEY not in str(info.value)
    lines = outcomes(out)
    assert 5 <= len(lines) < 40
    assert all(line["status"] == "ok" for line in lines)  # unsent rows have no outcome
    assert {line["id"] for line in lines} <= set(fake.fake.accepted())
    statuses = Counter(rec.status for rec in puts(fake))
    # The run stopped at once: each of the 2 workers saw at most one 401.
    assert 1 <= statuses[401] <= 2
    assert sum(statuses.values()) < 40


def test_key_revoked_mid_run_cli_exits_3_then_resumes(
    api_env: ServerThread, tmp_path: Path
) -> None:
    rows = people(40)
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    api_env.fake.config.latency = 0.01
    stop = threading.Event()

    def revoke_after_five() -> None:
        while not stop.is_set():
            if sum(rec.status == 200 for rec in list(api_env.fake.requests)) >= 5:
                api_env.fake.config.api_key = "rotated"
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=revoke_after_five, daemon=True)
    watcher.start()
    try:
        result = invoke("sync", str(source), "--results", str(out), "--rate", "40")
    finally:
        stop.set()
        watcher.join(5)
    assert result.exit_code == 3, result.output
    assert "credentials refused (HTTP 401)" in result.stderr
    assert "re-run the same command to resume" in result.stderr
    assert "Traceback" not in result.output
    first = outcomes(out)
    assert first
    assert all(line["status"] == "ok" for line in first)
    assert len(first) < 40

    # Credentials fixed: the same command completes the file without re-sending a done row.
    api_env.fake.config.api_key = API_KEY
    result = invoke("sync", str(source), "--results", str(out), "--rate", "0")
    assert result.exit_code == 0, result.output
    final = outcomes(out)
    assert sorted(line["row"] for line in final) == list(range(1, 41))
    assert all(line["status"] == "ok" for line in final)
    done_first = {line["id"] for line in first}
    counts = api_env.fake.requests_per_identifier()
    assert all(counts[ident] == 1 for ident in done_first)
    assert set(api_env.fake.accepted()) == {row["id"] for row in rows}


# --- rate ------------------------------------------------------------------------------------


@contextlib.contextmanager
def fake_server_process(*args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`bulksync fake-server` in its own process (no shared GIL with the client)."""
    command = [sys.executable, "-m", "bulksync", "fake-server", "--port", "0"]
    command += ["--site-id", SITE_ID, "--api-key", API_KEY, *args]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    ) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "fake-server printed nothing"
            line = proc.stdout.readline()
            match = re.match(
                r"bulksync fake Track API listening on (http://127\.0\.0\.1:\d+) ", line
            )
            assert match, line
            yield match.group(1), proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return orjson.loads(resp.read())


def test_rate_never_exceeded_in_any_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n, rate = 300, 50
    source = write_csv(tmp_path / "in.csv", people(n))
    out = tmp_path / "out.jsonl"
    with fake_server_process("--latency", "0.05") as (url, _):
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", SITE_ID)
        monkeypatch.setenv("CUSTOMERIO_API_KEY", API_KEY)
        monkeypatch.setenv("BULKSYNC_BASE_URL", url)
        started = time.monotonic()
        result = invoke("sync", str(source), "--results", str(out), "--rate", str(rate), "-q")
        elapsed = time.monotonic() - started
        stats = get_json(f"{url}/_fake/stats")
    assert result.exit_code == 0, result.output
    assert stats["requests"] == n + 1  # the rows and the credentials check
    assert stats["accepted"] == n
    assert stats["peak_per_second"] <= rate
    assert elapsed >= n / rate - 1
    assert stats["span_seconds"] >= n / rate - 1
    assert stats["cpu_seconds"] > 0  # the simulator's own process's, for the benchmarks
    assert [line["status"] for line in outcomes(out)] == ["ok"] * n


# --- secrets ---------------------------------------------------------------------------------


def test_no_secret_in_any_output_or_file(
    api_env: ServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [API_KEY, b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()]
    api_env.fake.config.reject_ids = frozenset({"cust-1003"})
    api_env.fake.config.fail_first = {"cust-1005": 10}
    texts: list[str] = []
    out = tmp_path / "out.jsonl"
    source = str(SAMPLES / "customers.csv")
    for extra in ([], ["--json"]):
        api_env.fake.reset()
        result = invoke("sync", source, "--results", str(out), "--max-retries", "1", *extra)
        assert result.exit_code == 1, result.output
        failed = {line["id"]: line for line in outcomes(out) if line["status"] == "failed"}
        assert sorted(failed) == ["cust-1003", "cust-1005"]  # the failures really happened
        assert [failed[i]["http_status"] for i in sorted(failed)] == [400, 503]
        texts += [result.stdout, result.stderr, out.read_text()]
        out.unlink()
    result = invoke("check")
    assert result.exit_code == 0, result.output
    texts += [result.stdout, result.stderr]
    api_env.fake.config.api_key = "rotated"  # credentials refused: the error paths
    for command in (["check"], ["sync", source, "--results", str(out)]):
        result = invoke(*command)
        assert result.exit_code == 3, result.output
        assert "credentials refused" in result.stderr
        texts += [result.stdout, result.stderr]
    texts += [caplog.text, out.read_text()]
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sync", "check"])
def test_missing_key_exits_2_naming_it(
    api_env: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.delenv("CUSTOMERIO_API_KEY")
    out = tmp_path / "out.jsonl"
    args = ["sync", str(SAMPLES / "customers.csv"), "--results", str(out)]
    result = invoke(*(args if command == "sync" else ["check"]))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("bulksync: error: CUSTOMERIO_API_KEY not set")
    assert "CUSTOMERIO_SITE_ID" not in result.stderr  # only what is missing is named
    assert "Traceback" not in result.output
    assert api_env.fake.requests == []
    assert not out.exists()


def test_plain_http_to_a_remote_host_is_refused(api_env: ServerThread, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    for args in (
        ["sync", str(SAMPLES / "customers.csv"), "--results", str(out)],
        ["check"],
    ):
        result = invoke(*args, "--base-url", "http://example.invalid")
        assert result.exit_code == 2, result.output
        assert "plain http:// is only allowed for loopback hosts" in result.stderr
    assert api_env.fake.requests == []
    assert not out.exists()


def test_dry_run_needs_no_credentials(
    fake: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CUSTOMERIO_SITE_ID", "CUSTOMERIO_API_KEY", "BULKSYNC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    clean = write_csv(tmp_path / "clean.csv", people(3))
    out = tmp_path / "out.jsonl"
    result = invoke("sync", str(clean), "--dry-run", "--results", str(out))
    assert result.exit_code == 0, result.output
    assert [line["status"] for line in outcomes(out)] == ["valid"] * 3
    result = invoke("sync", str(SAMPLES / "customers.csv"), "--dry-run", "--results", str(out))
    assert result.exit_code == 1, result.output
    assert fake.fake.requests == []


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_api_exits_3_nothing_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = closed_port_url()
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", SITE_ID)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", API_KEY)
    monkeypatch.setenv("BULKSYNC_BASE_URL", url)
    out = tmp_path / "out.jsonl"
    args = ["sync", str(SAMPLES / "customers.csv"), "--results", str(out)]
    result = invoke(*args, "--max-retries", "1")
    assert result.exit_code == 3, result.output
    assert "cannot reach the Track API" in result.stderr
    assert "nothing was sent" in result.stderr
    assert "Traceback" not in result.output
    assert outcomes(out) == []
    # `bulksync check` has no --max-retries flag: the library call with small backoffs.
    options = SendOptions(base_url=url, max_retries=1, **FAST)
    with pytest.raises(AbortError, match="cannot reach the Track API"):
        check(options, Credentials(SITE_ID, API_KEY))


# --- check -----------------------------------------------------------------------------------


def test_check_prints_region_and_environment(api_env: ServerThread) -> None:
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert "credentials accepted: region us" in result.stdout
    assert "(environment) id 123" in result.stdout
    assert "https://track.customer.io" in result.stdout
    api_env.fake.config.region = "eu"
    api_env.fake.config.environment_id = 98765
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert "region eu" in result.stdout
    assert "(environment) id 98765" in result.stdout
    assert "https://track-eu.customer.io" in result.stdout
    assert [(r.method, r.path, r.status) for r in api_env.fake.requests] == [
        ("GET", REGION_PATH, 200)
    ] * 2


def test_check_wrong_key_exits_3(api_env: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "not-the-key")
    result = invoke("check")
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("bulksync: error: credentials refused (HTTP 401)")
    assert result.stdout == ""


# --- fake-server command ---------------------------------------------------------------------


def test_fake_server_command_serves_and_stops_on_sigterm() -> None:
    with fake_server_process("--fail-503", "1") as (url, proc):
        assert get_json(f"{url}/_fake/stats")["requests"] == 0
        request = urllib.request.Request(
            f"{url}{REGION_PATH}",
            headers={
                "Authorization": "Basic " + b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()
            },
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 503  # --fail-503 reached the simulator
        info.value.close()
        assert get_json(f"{url}/_fake/stats")["statuses"] == {"503": 1}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
