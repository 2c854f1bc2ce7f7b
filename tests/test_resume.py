"""Long migrations, end to end: resume after kill -9, SIGINT/SIGTERM, `retry`, the outage breaker,
the results-file lock and fingerprint, the progress bar, --json and --log-file.

Every sender here is a real `python -m bulksync` process talking to the Track API simulator over
a loopback socket: the simulator runs in this process's background thread (the `fake` fixture,
whose request records carry `time.monotonic()` arrival times, compared with moments this process
notes, e.g. right after a kill) or, where it must die and come back, as its own
`bulksync fake-server` process.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import itertools
import os
import pty
import random
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksync import Credentials, SendOptions, SyncOptions, retry, sync
from bulksync.fake import Recorded

from .conftest import API_KEY, ROOT, SITE_ID, ServerThread

# --- helpers ---------------------------------------------------------------------------------


def people(n: int) -> list[dict[str, str]]:
    """n rows; row number i (1-based) has identifier cust-i."""
    plans = ["free", "pro", "team"]
    return [
        {
            "id": f"cust-{i}",
            "email": f"person{i}@example.com",
            "plan": plans[i % 3],
            "zip": f"{i:05d}",
        }
        for i in range(1, n + 1)
    ]


def ident(row: int) -> str:
    return f"cust-{row}"


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def cli_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUSTOMERIO_", "BULKSYNC_"))}
    env.update(CUSTOMERIO_SITE_ID=SITE_ID, CUSTOMERIO_API_KEY=API_KEY, BULKSYNC_BASE_URL=url)
    # The code of this tree, whatever the working directory of the process.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "bulksync", *map(str, args)]


def run_cli(url: str, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion; stdout and stderr are pipes (not a terminal)."""
    return subprocess.run(
        command(*args),
        env=cli_env(url),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )


@dataclass
class Proc:
    """A CLI process running in the background, its output going to files (never a full pipe)."""

    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


def start_cli(url: str, logs: Path, *args: str | Path) -> Proc:
    out, err = logs.with_suffix(".stdout"), logs.with_suffix(".stderr")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        popen = subprocess.Popen(
            command(*args),
            env=cli_env(url),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=ROOT,
        )
    return Proc(popen, out, err)


def wait_until(
    condition: Callable[[], bool], proc: Proc | None = None, timeout: float = 30, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"process exited ({proc.poll()}) before {what}:\n{proc.stdout()}\n{proc.stderr()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def count_outcomes(path: Path) -> int:
    """Complete outcome lines so far (header and a torn last line not counted)."""
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def read_lines(
    path: Path, *, allow_torn: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, outcome lines). Every complete line must be a JSON object; a last line without
    its newline (a crash mid-write) is ignored when `allow_torn`, an error otherwise."""
    data = path.read_bytes()
    if not data and allow_torn:
        return {}, []  # killed between creating the file and writing its header
    *complete, tail = data.split(b"\n")
    if tail:
        assert allow_torn, f"{path} ends with an unterminated line: {tail[:80]!r}"
    parsed = [orjson.loads(line) for line in complete]
    assert all(isinstance(line, dict) for line in parsed)
    assert parsed, "no header line"
    header, lines = parsed[0], parsed[1:]
    assert header.get("bulksync_results") == 1, header
    # A finished run's last line says so: {"bulksync_end": TIME}, after every row's outcome.
    ends = [i for i, line in enumerate(lines) if "bulksync_end" in line]
    assert all(set(lines[i]) == {"bulksync_end"} for i in ends)
    lines = [line for line in lines if "bulksync_end" not in line]
    assert all("row" in line for line in lines), "only the first line is a header"
    return header, lines


def latest(lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Row number -> its latest outcome line."""
    table: dict[int, dict[str, Any]] = {}
    for line in lines:
        table[line["row"]] = line
    return table


def assert_every_row_ok_once(path: Path, n: int) -> list[dict[str, Any]]:
    """Each of rows 1..n has exactly one line in the file, and it is `ok` with its identifier."""
    _, lines = read_lines(path)
    counts = Counter(line["row"] for line in lines)
    assert sorted(counts) == list(range(1, n + 1)), "every row has an outcome"
    duplicated = {row: c for row, c in counts.items() if c > 1}
    assert duplicated == {}, "a row with an outcome was written again"
    bad = [line for line in lines if line["status"] != "ok" or line["id"] != ident(line["row"])]
    assert bad == []
    return lines


def puts(fake: ServerThread) -> list[Recorded]:
    return [rec for rec in list(fake.fake.requests) if rec.method == "PUT"]


def resent_after(fake: ServerThread, rows: set[int], moment: float) -> list[tuple[str, float]]:
    """Requests for these rows' identifiers that arrived after `moment`."""
    ids = {ident(row) for row in rows}
    return [
        (r.identifier, r.time - moment)
        for r in puts(fake)
        if r.identifier in ids and r.time > moment
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return orjson.loads(resp.read())


@dataclass
class ServerProc:
    popen: subprocess.Popen[str]
    url: str
    port: int


def start_fake_server(port: int = 0, *args: str) -> ServerProc:
    """`bulksync fake-server` in its own process, so the test can kill it like an outage."""
    popen = subprocess.Popen(
        [
            *command(
                "fake-server", "--port", str(port), "--site-id", SITE_ID, "--api-key", API_KEY
            ),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert popen.stdout is not None
    ready, _, _ = select.select([popen.stdout], [], [], 30)
    assert ready, "fake-server printed nothing"
    line = popen.stdout.readline()
    match = re.match(r"bulksync fake Track API listening on (http://127\.0\.0\.1:(\d+)) ", line)
    assert match, (line, popen.stderr.read() if popen.poll() is not None else "")
    return ServerProc(popen, match.group(1), int(match.group(2)))


@pytest.fixture
def servers() -> Iterator[list[ServerProc]]:
    started: list[ServerProc] = []
    yield started
    for server in started:
        if server.popen.poll() is None:
            server.popen.kill()
        server.popen.wait()
        for stream in (server.popen.stdout, server.popen.stderr):
            if stream is not None:
                stream.close()


# --- 1. kill -9 at random moments, then resume ------------------------------------------------


def test_kill_9_at_random_moments_then_resume_never_resends_a_row_with_an_outcome(
    fake: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    n = 2000
    fake.fake.config.latency = 0.005
    source = write_csv(tmp_path / "in.csv", people(n))
    out = tmp_path / "in.results.jsonl"
    args = ("sync", source, "--results", out, "--rate", "400", "--quiet")
    rng = random.Random(20240601)
    kills: list[tuple[float, set[int]]] = []  # (when, rows that had an outcome then)
    for trial in range(12):
        before = count_outcomes(out)
        proc = start_cli(fake.url, tmp_path / f"kill-{trial}", *args)
        procs.append(proc)
        if trial % 3 == 2:
            # Any moment at all: start-up, the credentials check, or mid-send.
            time.sleep(rng.uniform(0.05, 1.0))
        else:
            target = before + rng.randint(1, 100)
            wait_until(
                lambda target=target: count_outcomes(out) >= target, proc, what="more outcomes"
            )
            time.sleep(rng.uniform(0, 0.03))
        assert proc.poll() is None, f"trial {trial}: the run ended first: {proc.stderr()}"
        proc.popen.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = time.monotonic()
        _, lines = read_lines(out, allow_torn=True) if out.exists() else ({}, [])
        rows = [line["row"] for line in lines]
        assert len(rows) == len(set(rows)), f"trial {trial}: a row has two outcomes"
        assert all(line["status"] == "ok" for line in lines)
        kills.append((killed_at, set(rows)))

    progress = [len(rows) for _, rows in kills]
    assert progress == sorted(progress), "an outcome was lost by a resume"
    assert 0 < progress[-1] < n, progress
    grew = [after > before for before, after in itertools.pairwise([0, *progress])]
    assert sum(grew) >= 8, f"most kills must land mid-send: {progress}"

    final = start_cli(fake.url, tmp_path / "final", *args)
    procs.append(final)
    assert final.wait(60) == 0, final.stderr()

    header, _ = read_lines(out)
    assert header["sha256"] == sha256(source)
    assert_every_row_ok_once(out, n)
    accepted = fake.fake.accepted()
    assert set(accepted) == {ident(row) for row in range(1, n + 1)}

    # A row that had an outcome at a kill was never sent again afterwards; only rows in flight
    # at a kill (no outcome yet) may have been sent twice.
    for number, (killed_at, rows) in enumerate(kills):
        assert resent_after(fake, rows, killed_at) == [], f"re-sent after kill {number}"


def test_torn_last_line_is_dropped_and_its_row_resent(fake: ServerThread, tmp_path: Path) -> None:
    n = 20
    source = write_csv(tmp_path / "in.csv", people(n))
    out = tmp_path / "in.results.jsonl"
    args = ("sync", source, "--results", out, "--rate", "0", "--quiet")
    assert run_cli(fake.url, *args).returncode == 0
    data = out.read_bytes()
    # The finished run's last line says so; taken away, with the last row's line torn, the
    # file is what a crash in the middle of that row's write leaves.
    body, end, _ = data.rsplit(b"\n", 2)
    assert set(orjson.loads(end)) == {"bulksync_end"}
    body, last = body.rsplit(b"\n", 1)
    torn_row = orjson.loads(last)["row"]
    out.write_bytes(body + b"\n" + last[: len(last) // 2])  # a crash in the middle of a write
    fake.fake.requests.clear()

    result = run_cli(fake.url, *args)
    assert result.returncode == 0, result.stderr
    assert [rec.identifier for rec in puts(fake)] == [ident(torn_row)]
    assert_every_row_ok_once(out, n)


# --- 2. SIGINT / SIGTERM ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "as_json"), [(signal.SIGINT, False), (signal.SIGTERM, True)], ids=["SIGINT", "SIGTERM"]
)
def test_signal_mid_run_exits_3_then_same_command_resumes(
    fake: ServerThread, tmp_path: Path, procs: list[Proc], sig: signal.Signals, as_json: bool
) -> None:
    n = 500
    fake.fake.config.latency = 0.05
    source = write_csv(tmp_path / "in.csv", people(n))
    out = tmp_path / "in.results.jsonl"
    args = ["sync", source, "--results", out, "--rate", "50", "--grace", "5"]
    args += ["--json"] if as_json else []
    proc = start_cli(fake.url, tmp_path / "first", *args)
    procs.append(proc)
    wait_until(lambda: count_outcomes(out) >= 40, proc, what="40 outcomes")
    signalled = time.monotonic()
    proc.popen.send_signal(sig)
    assert proc.wait(15) == 3, proc.stderr()
    exited = time.monotonic()
    assert exited - signalled < 3, "stopped sending at once (requests in flight take 0.05 s)"
    assert "Traceback" not in proc.stderr()

    _, lines = read_lines(out)  # every line, the last included, is whole JSON
    done = {line["row"] for line in lines}
    assert len(done) == len(lines)
    assert all(line["status"] == "ok" for line in lines)
    assert 40 <= len(done) < n
    if as_json:
        summary = orjson.loads(proc.stdout())
        assert summary["interrupted"] is True
        assert summary["exit_code"] == 3
        assert summary["ok"] == summary["rows"] == len(done)
    else:
        assert "interrupted" in proc.stdout()
    # Requests in flight were let finish and their outcomes written: every row the API
    # accepted has its line; and nothing new started after the signal.
    assert set(fake.fake.accepted()) == {ident(row) for row in done}
    assert [r for r in puts(fake) if r.time > signalled + 0.2] == []

    again = start_cli(fake.url, tmp_path / "again", *args)
    procs.append(again)
    assert again.wait(60) == 0, again.stderr()
    assert_every_row_ok_once(out, n)
    assert resent_after(fake, done, exited) == []
    assert set(fake.fake.accepted()) == {ident(row) for row in range(1, n + 1)}


def test_second_sigint_stops_at_once(fake: ServerThread, tmp_path: Path, procs: list[Proc]) -> None:
    n = 60
    source = write_csv(tmp_path / "in.csv", people(n))
    out = tmp_path / "in.results.jsonl"
    args = ("sync", source, "--results", out, "--rate", "50", "--grace", "30")
    proc = start_cli(fake.url, tmp_path / "first", *args)
    procs.append(proc)
    wait_until(lambda: count_outcomes(out) >= 5, proc, what="5 outcomes")
    fake.fake.config.latency = 30.0  # requests from now on hang: the grace period would wait
    slowed = time.monotonic()
    wait_until(lambda: any(r.time > slowed for r in puts(fake)), proc, what="a hanging request")
    proc.popen.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None, "the first Ctrl-C waits for requests in flight (--grace 30)"
    second = time.monotonic()
    proc.popen.send_signal(signal.SIGINT)
    assert proc.wait(10) == 3, proc.stderr()
    assert time.monotonic() - second < 2, "the second Ctrl-C stops at once"
    assert "Traceback" not in proc.stderr()
    assert "interrupted" in proc.stdout()

    _, lines = read_lines(out)
    assert all(line["status"] == "ok" for line in lines)
    hanging = {r.identifier for r in puts(fake) if r.time > slowed}
    assert hanging.isdisjoint(line["id"] for line in lines), "an unanswered row got an outcome"

    fake.fake.config.latency = 0.0
    result = run_cli(fake.url, *args)
    assert result.returncode == 0, result.stderr
    assert_every_row_ok_once(out, n)


def test_grace_bounds_the_wait_for_hanging_requests(
    fake: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    n = 60
    source = write_csv(tmp_path / "in.csv", people(n))
    out = tmp_path / "in.results.jsonl"
    args = ("sync", source, "--results", out, "--rate", "50", "--grace", "1", "--json")
    proc = start_cli(fake.url, tmp_path / "first", *args)
    procs.append(proc)
    wait_until(lambda: count_outcomes(out) >= 5, proc, what="5 outcomes")
    fake.fake.config.latency = 30.0
    slowed = time.monotonic()
    wait_until(lambda: any(r.time > slowed for r in puts(fake)), proc, what="a hanging request")
    signalled = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 3, proc.stderr()
    waited = time.monotonic() - signalled
    assert 0.9 <= waited < 4, f"waited {waited:.2f}s for requests in flight with --grace 1"
    assert orjson.loads(proc.stdout())["interrupted"] is True
    _, lines = read_lines(out)
    hanging = {r.identifier for r in puts(fake) if r.time > slowed}
    assert hanging.isdisjoint(line["id"] for line in lines)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_credentials_check_exits_3(
    fake: ServerThread, tmp_path: Path, procs: list[Proc], sig: signal.Signals
) -> None:
    """A signal that arrives before the first row is sent (here: while the credentials check
    waits for a slow API; likewise while it retries an unreachable one) is still an interruption:
    exit 3 and one line, as the exit-code contract says for SIGINT/SIGTERM."""
    fake.fake.config.latency = 5.0
    source = write_csv(tmp_path / "in.csv", people(10))
    out = tmp_path / "in.results.jsonl"
    proc = start_cli(fake.url, tmp_path / "run", "sync", source, "--results", out, "--quiet")
    procs.append(proc)
    wait_until(lambda: bool(fake.fake.requests), proc, what="the credentials check")
    proc.popen.send_signal(sig)
    assert proc.wait(10) == 3, (proc.poll(), proc.stderr())
    assert "Traceback" not in proc.stderr()
    assert read_lines(out)[1] == []
    assert puts(fake) == []


def test_library_calls_give_back_the_callers_signal_handlers(
    fake: ServerThread, tmp_path: Path
) -> None:
    """`bulksync.sync()` and `retry()` handle SIGINT/SIGTERM while they send, then must put back
    what the calling program had: an application embedding the library (or the CLI, which
    turns SIGTERM into an interruption) keeps its own handlers once the call returns."""
    source = write_csv(tmp_path / "in.csv", people(5))
    out = tmp_path / "in.results.jsonl"
    fake.fake.config.fail_first = {ident(2): 100}
    options = SyncOptions(
        send=SendOptions(base_url=fake.url, rate=None, max_retries=0), results=out
    )
    credentials = Credentials(SITE_ID, API_KEY)

    def on_term(signum: int, frame: object) -> None:
        raise AssertionError("not sent")

    def on_int(signum: int, frame: object) -> None:
        raise AssertionError("not sent")

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)
        assert sync(str(source), options, credentials=credentials).counts == {"ok": 4, "failed": 1}
        after_sync = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)
        fake.fake.config.fail_first = {}
        assert retry(out, options, credentials=credentials).counts == {"ok": 5}
        after_retry = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert after_sync == (on_int, on_term)
    assert after_retry == (on_int, on_term)


# --- 3. retry --------------------------------------------------------------------------------


def test_retry_resends_failed_payloads_without_the_input(
    fake: ServerThread, tmp_path: Path
) -> None:
    n = 60
    rows = people(n)
    # Refused (400) rows, and rows failing with 503 for longer than --max-retries 1 allows,
    # spread out so that other rows succeed after each of them (no outage).
    terminal = {ident(r) for r in (4, 20, 33)}
    transient_rows = (7, 18, 29, 41)
    transient = {ident(r) for r in transient_rows}
    fake.fake.config.reject_ids = frozenset(terminal)
    fake.fake.config.fail_first = dict.fromkeys(transient, 100)
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "in.results.jsonl"
    sync_args = ("sync", source, "--results", out, "--rate", "50", "--max-retries", "1", "--quiet")
    result = run_cli(fake.url, *sync_args)
    assert result.returncode == 1, result.stderr

    _, lines = read_lines(out)
    table = latest(lines)
    assert sorted(table) == list(range(1, n + 1))
    failed = {line["id"]: line for line in table.values() if line["status"] == "failed"}
    assert set(failed) == terminal | transient
    assert {failed[i]["http_status"] for i in terminal} == {400}
    assert {failed[i]["http_status"] for i in transient} == {503}
    assert all(failed[i]["attempts"] == 2 for i in transient)  # --max-retries 1
    sent_bodies = {r.identifier: r.body for r in puts(fake)}
    for identifier, line in failed.items():
        assert line["payload"] == sent_bodies[identifier] == rows[line["row"] - 1]

    # Re-running the same sync resumes a finished file: failed rows have an outcome, so they
    # are not sent again by `sync` (that is what `retry` is for).
    mark = len(puts(fake))
    assert run_cli(fake.url, *sync_args).returncode == 1
    assert len(puts(fake)) == mark

    # retry: the input is gone; the API is healthy for the transient ones again.
    source.unlink()
    fake.fake.config.fail_first = {}
    mark = len(puts(fake))
    result = run_cli(fake.url, "retry", out, "--rate", "50", "--quiet")
    assert result.returncode == 1, result.stderr  # the refused rows are still failed
    sent = puts(fake)[mark:]
    assert sorted(r.identifier for r in sent) == sorted(transient)
    assert all(r.status == 200 for r in sent)
    for rec in sent:
        assert rec.body == failed[rec.identifier]["payload"]
    table = latest(read_lines(out)[1])
    assert {line["id"] for line in table.values() if line["status"] == "failed"} == terminal
    assert all(table[row]["status"] == "ok" for row in transient_rows)

    # --all-failed, after the workspace stopped refusing them.
    fake.fake.config.reject_ids = frozenset()
    mark = len(puts(fake))
    result = run_cli(fake.url, "retry", out, "--all-failed", "--rate", "50", "--quiet")
    assert result.returncode == 0, result.stderr
    sent = puts(fake)[mark:]
    assert sorted(r.identifier for r in sent) == sorted(terminal)
    for rec in sent:
        assert rec.body == failed[rec.identifier]["payload"]
    table = latest(read_lines(out)[1])
    assert sorted(table) == list(range(1, n + 1))
    assert all(line["status"] == "ok" for line in table.values())
    assert set(fake.fake.accepted()) == {ident(r) for r in range(1, n + 1)}


# --- 4. outage -------------------------------------------------------------------------------


def test_api_gone_mid_run_exits_3_quickly_nothing_failed_then_resumes(
    tmp_path: Path, procs: list[Proc], servers: list[ServerProc]
) -> None:
    """The simulator process dies mid-run (connection refused); a new one comes back on the
    same port, and the same command completes the file."""
    n = 300
    server = start_fake_server(0, "--latency", "0.005")
    servers.append(server)
    source = write_csv(tmp_path / "in.csv", people(n))
    out = tmp_path / "in.results.jsonl"
    args = ("sync", source, "--results", out, "--rate", "100", "--max-retries", "2", "--quiet")
    proc = start_cli(server.url, tmp_path / "first", *args)
    procs.append(proc)
    wait_until(lambda: count_outcomes(out) >= 60, proc, what="60 outcomes")
    server.popen.kill()
    server.popen.wait()
    down = time.monotonic()
    assert proc.wait(30) == 3, proc.stderr()
    # Per row: at most 0.5 s + 1 s of backoff for --max-retries 2, plus the rate limiter.
    assert time.monotonic() - down < 8
    stderr = proc.stderr()
    assert "kept failing" in stderr
    assert "Traceback" not in stderr

    _, lines = read_lines(out)
    statuses = Counter(line["status"] for line in lines)
    assert statuses["failed"] == 0, f"rows marked failed because the API was down: {statuses}"
    done = {line["row"] for line in lines}
    assert len(done) == len(lines)

    back = start_fake_server(server.port, "--latency", "0.005")
    servers.append(back)
    result = run_cli(back.url, *args)
    assert result.returncode == 0, result.stderr
    assert_every_row_ok_once(out, n)
    # The new simulator saw exactly the rows without an outcome, once each, plus the check.
    stats = get_json(f"{back.url}/_fake/stats")
    assert stats["accepted"] == n - len(done)
    assert stats["requests"] == n - len(done) + 1


def test_api_failing_503_mid_run_exits_3_nothing_failed_then_resumes(
    fake: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    n = 300
    fake.fake.config.latency = 0.005
    source = write_csv(tmp_path / "in.csv", people(n))
    out = tmp_path / "in.results.jsonl"
    args = ("sync", source, "--results", out, "--rate", "100", "--max-retries", "2", "--quiet")
    proc = start_cli(fake.url, tmp_path / "first", *args)
    procs.append(proc)
    wait_until(lambda: count_outcomes(out) >= 60, proc, what="60 outcomes")
    fake.fake.config.fail_503 = 1.0
    down = time.monotonic()
    assert proc.wait(30) == 3, proc.stderr()
    stopped = time.monotonic()
    assert stopped - down < 8
    assert "kept failing" in proc.stderr()

    _, lines = read_lines(out)
    statuses = Counter(line["status"] for line in lines)
    assert statuses["failed"] == 0, f"rows marked failed because the API was down: {statuses}"
    done = {line["row"] for line in lines}

    fake.fake.config.fail_503 = 0.0
    result = run_cli(fake.url, *args)
    assert result.returncode == 0, result.stderr
    assert_every_row_ok_once(out, n)
    assert resent_after(fake, done, stopped) == []
    assert set(fake.fake.accepted()) == {ident(r) for r in range(1, n + 1)}


# --- 5. one run at a time --------------------------------------------------------------------


def test_second_run_refuses_naming_the_holder_and_a_killed_holder_blocks_nothing(
    fake: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    n = 150
    source = write_csv(tmp_path / "in.csv", people(n))
    out = tmp_path / "in.results.jsonl"
    args = ("sync", source, "--results", out, "--rate", "20", "--quiet")
    holder = start_cli(fake.url, tmp_path / "holder", *args)
    procs.append(holder)
    wait_until(lambda: count_outcomes(out) >= 3, holder, what="3 outcomes")
    fake.fake.config.latency = 30.0  # the holder stalls mid-run, still holding the file
    time.sleep(0.1)
    snapshot = out.read_bytes()
    checks = sum(1 for r in list(fake.fake.requests) if r.method == "GET")

    for extra in ([], ["--fresh"]):
        result = run_cli(fake.url, *args, *extra, timeout=20)
        assert result.returncode == 2, result.stderr
        assert f"pid {holder.pid}" in result.stderr
        assert "Traceback" not in result.stderr
        assert out.read_bytes() == snapshot, "the refused run touched the results file"
    assert sum(1 for r in list(fake.fake.requests) if r.method == "GET") == checks, "sent nothing"
    lock = out.with_name(out.name + ".lock")
    assert lock.read_text().strip() == str(holder.pid)

    holder.popen.send_signal(signal.SIGKILL)
    holder.wait(10)
    fake.fake.config.latency = 0.0
    result = run_cli(fake.url, "sync", source, "--results", out, "--rate", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    assert_every_row_ok_once(out, n)


def test_stale_lock_file_with_a_dead_pid_is_taken_over(
    fake: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    n = 20
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    source = write_csv(tmp_path / "in.csv", people(n))
    out = tmp_path / "in.results.jsonl"
    lock = out.with_name(out.name + ".lock")
    lock.write_text(f"{dead.pid}\n")
    proc = start_cli(fake.url, tmp_path / "run", "sync", source, "--results", out, "--rate", "0")
    procs.append(proc)
    assert proc.wait(30) == 0, proc.stderr()
    assert lock.read_text().strip() == str(proc.pid)
    assert_every_row_ok_once(out, n)


# --- 6. a results file from another input ------------------------------------------------------


def test_results_of_another_input_refused_until_fresh(fake: ServerThread, tmp_path: Path) -> None:
    n = 30
    rows = people(n)
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "in.results.jsonl"
    args = ("sync", source, "--results", out, "--rate", "0", "--quiet")
    assert run_cli(fake.url, *args).returncode == 0
    before = out.read_bytes()

    rows[9]["plan"] = rows[9]["plan"][::-1]  # same size, different content
    size = source.stat().st_size
    write_csv(source, rows)
    assert source.stat().st_size == size
    fake.fake.requests.clear()
    result = run_cli(fake.url, *args)
    assert result.returncode == 2, result.stderr
    assert "--fresh" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_bytes() == before
    assert list(fake.fake.requests) == []

    result = run_cli(fake.url, *args, "--fresh")
    assert result.returncode == 0, result.stderr
    header, _ = read_lines(out)
    assert header["sha256"] == sha256(source)
    assert_every_row_ok_once(out, n)
    assert sorted(r.identifier for r in puts(fake)) == sorted(row["id"] for row in rows)
    assert fake.fake.accepted()[ident(10)] == [rows[9]]


# --- 7. progress bar, --json -------------------------------------------------------------------


def run_on_pty(url: str, cwd: Path, *args: str | Path, columns: int = 100) -> tuple[int, str, str]:
    """Run the CLI in `cwd` with stderr on a pseudo-terminal of `columns`; return (exit code,
    what the terminal received, stdout)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        popen = subprocess.Popen(
            command(*args),
            env=cli_env(url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=cwd,
        )
    finally:
        os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if popen.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer closed it
                break
            if not chunk:
                break
            received += chunk
        stdout, _ = popen.communicate(timeout=30)
    finally:
        os.close(master)
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    return popen.returncode, received.decode(errors="replace"), stdout.decode()


def test_progress_bar_on_a_terminal(fake: ServerThread, tmp_path: Path) -> None:
    n = 300
    write_csv(tmp_path / "in.csv", people(n))
    code, terminal, stdout = run_on_pty(fake.url, tmp_path, "sync", "in.csv", "--rate", "400")
    assert code == 0, terminal
    assert_every_row_ok_once(tmp_path / "in.csv.results.jsonl", n)
    assert "\r" in terminal
    assert re.search(r"\d+%\|", terminal), terminal
    assert f"{n}/{n}" in terminal  # the estimate of a plain file is its row count
    assert "rows/s" in terminal
    assert "bulksync: sync of" in stdout


def test_progress_bar_fits_rate_and_counts_in_80_columns(
    fake: ServerThread, tmp_path: Path
) -> None:
    """README: the bar shows rows done, rate, ETA and the failed/invalid counts. On the most
    common terminal width, none of them may be cut off."""
    rows = people(300)
    rows[3]["email"] = "not-an-email"
    fake.fake.config.reject_ids = frozenset({ident(8)})
    write_csv(tmp_path / "customers.csv", rows)
    code, terminal, _ = run_on_pty(
        fake.url, tmp_path, "sync", "customers.csv", "--rate", "400", columns=80
    )
    assert code == 1, terminal
    frames = [frame for frame in re.split(r"[\r\n]+", terminal) if frame.strip()]
    last = frames[-1]
    assert len(last) <= 80
    assert "300/300" in last, last
    assert "rows/s" in last, last
    assert re.search(r"failed\W*1\b", last), last
    assert re.search(r"invalid\W*1\b", last), last


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_no_progress_bar_on_a_terminal_with_quiet_or_json(
    fake: ServerThread, tmp_path: Path, flag: str
) -> None:
    write_csv(tmp_path / "in.csv", people(100))
    code, terminal, _ = run_on_pty(fake.url, tmp_path, "sync", "in.csv", "--rate", "0", flag)
    assert code == 0, terminal
    assert_every_row_ok_once(tmp_path / "in.csv.results.jsonl", 100)
    assert "\r" not in terminal
    assert "%|" not in terminal
    assert "rows/s" not in terminal


def test_no_progress_bar_off_a_terminal(fake: ServerThread, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", people(300))
    out = tmp_path / "in.results.jsonl"
    result = run_cli(fake.url, "sync", source, "--results", out, "--rate", "400")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "%|" not in result.stderr
    assert "bulksync: sync of" in result.stdout


def test_json_summary_counts_match_the_results_file(fake: ServerThread, tmp_path: Path) -> None:
    n = 40
    rows = people(n)
    rows[4]["email"] = "not-an-email"
    rows[8]["email"] = "two@@example.com"
    fake.fake.config.reject_ids = frozenset({ident(12), ident(30)})
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "in.results.jsonl"
    args = ("sync", source, "--results", out, "--rate", "0", "--json")
    for resumed in (0, n):  # a first run, then a re-run that finds every row done
        result = run_cli(fake.url, *args)
        assert result.returncode == 1, result.stderr
        printed = [line for line in result.stdout.splitlines() if line.strip()]
        assert len(printed) == 1, result.stdout
        summary = orjson.loads(printed[0])
        mine = Counter(line["status"] for line in latest(read_lines(out)[1]).values())
        assert mine == {"ok": 36, "invalid": 2, "failed": 2}
        for status in ("ok", "failed", "invalid", "unchanged", "valid"):
            assert summary[status] == mine.get(status, 0), status
        assert summary["rows"] == n
        assert summary["resumed"] == resumed
        assert summary["exit_code"] == 1
        assert summary["interrupted"] is False
        assert summary["results"] == str(out)
        assert "\r" not in result.stderr


# --- 8. --log-file ---------------------------------------------------------------------------


def test_log_file_keeps_every_retry_stderr_only_final_failures(
    fake: ServerThread, tmp_path: Path
) -> None:
    fake.fake.config.fail_first = {ident(3): 2, ident(6): 100}
    source = write_csv(tmp_path / "in.csv", people(40))
    out = tmp_path / "in.results.jsonl"
    log = tmp_path / "run.log"
    args = ("sync", source, "--results", out, "--rate", "50", "--max-retries", "2")
    result = run_cli(fake.url, *args, "--log-file", log)
    assert result.returncode == 1, result.stderr

    table = latest(read_lines(out)[1])
    assert table[3]["status"] == "ok"
    assert table[3]["attempts"] == 3
    assert table[6]["status"] == "failed"
    text = log.read_text()
    for row, attempt in ((3, 1), (3, 2), (6, 1), (6, 2), (6, 3)):
        assert re.search(rf"DEBUG rows? {row}\b.*attempt {attempt}\b", text), (row, attempt, text)
    assert re.search(r"ERROR row 6 \(id cust-6\) failed", text)

    failures = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(failures) == 1, result.stderr
    assert re.search(r"row 6 \(id cust-6\) failed: .*503", failures[0])
    assert "attempt 1" not in result.stderr
    assert "cust-3" not in result.stderr
    assert "bulksync: sync of" in result.stdout
