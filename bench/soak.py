"""Soak test: bulksync against a misbehaving Track API, killed with SIGKILL and resumed.

    python bench/soak.py [--quick] [--seed N] [--out docs/reliability.md]

Minutes, not part of `make test` (`make soak` runs it). For each mode (single-row PUTs, then
`--batch --batch-size 50`) it:

1. generates a CSV (in a temporary directory) whose identifiers repeat: ~80 % of the rows are
   distinct people, the rest are 2nd-5th rows of a few thousand people, some close together
   (same batch, same in-flight window), most far apart. Column `v` is the row number, so the
   order in which one person's rows were applied can be read back from the simulator;
2. runs the Track API simulator in this process (its own event loop, in a thread) and changes its
   `config` while the client runs: jittered latency, 10 % transient faults (503, 500, dropped
   connections), a 400 for every row of ~1 % of the identifiers, 429 storms with and without
   `Retry-After`, and a rate limit that drops from 100 to 40 and recovers;
3. runs `python -m bulksync sync INPUT --results R --quiet --json --rate 100 [...]` as a child
   process, kills it with SIGKILL at random points (after it has written some outcomes), and runs
   the same command again until it exits 0 or 1 (exit 3, aborted, is re-run too);
4. checks the results file against the input and against what the simulator accepted.

Exit status: 0 when every check passed, 1 when one failed (details on stderr and in --out).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from random import Random
from typing import Any

import orjson

from bulksync.fake import FakeConfig, FakeTrackAPI, Recorded, peak_in_window
from bulksync.fake.process import ServerThread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import code_state, table

ROOT = Path(__file__).resolve().parent.parent

SITE_ID = "soak-site"
API_KEY = "soak-key-not-a-real-secret"
RATE = 100  # --rate given to bulksync, and the simulator's normal limit
LOW_LIMIT = 40  # the simulator's limit while "the workspace's other traffic" takes the rest
BATCH_SIZE = 50
DISTINCT_SHARE = 0.8  # distinct identifiers / rows
NEAR_SHARE = 0.3  # share of repeated rows placed within NEAR_ROWS of another row of the person
NEAR_ROWS = 40
REJECT_SHARE = 0.01  # identifiers whose every row the simulator refuses (400)
FIRST_NAMES = ["Ana", "Ben", "Chloé", "Dmitri", "Eve", "Farah", "Gus", "Hana", "Ivo", "Zoë"]
# Between a kill and the next run: a person re-running a command takes longer than this, and it
# keeps the two processes' requests out of one 1-second window (each process paces only itself).
RESTART_PAUSE = 1.0
MODE_DEADLINE = 900.0  # seconds; a mode still running then is a failure, not a hang
TRANSIENT = {0, 408, 429}  # plus every 5xx; 0: no HTTP answer
# A row the API refused: 400 for a PUT; in batch mode, 207 for an operation the answer lists.
REFUSED = {400, 207}


@dataclass(frozen=True)
class Sizes:
    single_rows: int
    batch_rows: int
    kills: int
    phase_scale: float  # multiplies every phase's duration


FULL = Sizes(single_rows=12_000, batch_rows=50_000, kills=5, phase_scale=1.0)
QUICK = Sizes(single_rows=2_000, batch_rows=3_000, kills=2, phase_scale=0.3)


# --- the simulator, in this process ------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float  # of client running time (the clock stops between a kill and the next run)
    fail_429: float = 0.0
    retry_after: float | None = None
    rate_limit: float = RATE


# One cycle, repeated for as long as a mode runs. Transient faults and latency hold throughout.
CYCLE = (
    Phase("normal", 2.0),
    Phase("429 storm, no Retry-After", 3.0, fail_429=0.6),
    Phase("normal", 2.0),
    Phase(f"limit {RATE} -> {LOW_LIMIT}", 4.0, rate_limit=LOW_LIMIT),
    Phase("normal", 2.0),
    Phase("429 storm, Retry-After: 1", 3.0, fail_429=0.6, retry_after=1.0),
)


def base_config(seed: int) -> FakeConfig:
    return FakeConfig(
        site_id=SITE_ID,
        api_key=API_KEY,
        rate_limit=RATE,
        latency=0.005,
        jitter=0.05,
        seed=seed,
        fail_503=0.05,
        fail_500=0.03,
        drop=0.02,
    )


class Chaos(threading.Thread):
    """Walks the simulator through CYCLE while a client runs, and records when each phase held."""

    def __init__(self, fake: FakeTrackAPI, scale: float) -> None:
        super().__init__(daemon=True)
        self.fake = fake
        self.scale = scale
        self.client_running = threading.Event()
        self.done = threading.Event()
        self.intervals: list[tuple[str, float, float]] = []  # (phase, start, end), monotonic
        # Seconds of client running time per phase.
        self.active: defaultdict[str, float] = defaultdict(float)

    def _apply(self, phase: Phase) -> None:
        cfg = self.fake.config
        cfg.fail_429 = phase.fail_429
        cfg.retry_after = phase.retry_after
        cfg.rate_limit = phase.rate_limit

    def run(self) -> None:
        index, elapsed = 0, 0.0
        self._apply(CYCLE[0])
        started = last = time.monotonic()
        while not self.done.wait(0.02):
            now = time.monotonic()
            phase = CYCLE[index]
            if self.client_running.is_set():
                elapsed += now - last
                self.active[phase.name] += now - last
            last = now
            if elapsed >= phase.seconds * self.scale:
                self.intervals.append((phase.name, started, now))
                index, elapsed, started = (index + 1) % len(CYCLE), 0.0, now
                self._apply(CYCLE[index])
        self.intervals.append((CYCLE[index].name, started, time.monotonic()))
        self._apply(CYCLE[0])


# --- input -------------------------------------------------------------------------------------


def make_ids(rows: int, rnd: Random) -> list[str]:
    """The identifier of each row (index 0 is row 1): ~80 % distinct, the rest repeats of a few
    thousand people (2-5 rows each), shuffled so repeats land at scattered positions."""
    distinct = round(rows * DISTINCT_SHARE)
    extra = rows - distinct
    ids = [f"p{i:06d}" for i in range(1, distinct + 1)]
    keys = {ident: rnd.random() for ident in ids}
    placed: list[tuple[float, str]] = [(key, ident) for ident, key in keys.items()]
    for ident in rnd.sample(ids, min(distinct, extra)):
        if extra == 0:
            break
        more = min(rnd.randint(1, 4), extra)
        extra -= more
        for _ in range(more):
            if rnd.random() < NEAR_SHARE:
                key = keys[ident] + rnd.uniform(-NEAR_ROWS, NEAR_ROWS) / rows
            else:
                key = rnd.random()
            placed.append((key, ident))
    placed.sort()
    return [ident for _, ident in placed]


def write_csv(path: Path, ids: Sequence[str], rnd: Random) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["id", "email", "first_name", "v"])
        for row, ident in enumerate(ids, start=1):
            out.writerow([ident, f"{ident}@example.com", rnd.choice(FIRST_NAMES), row])


# --- running the client ------------------------------------------------------------------------


@dataclass
class ModeRun:
    mode: str
    rows: int
    ids: list[str]
    reject_ids: frozenset[str]
    results: Path
    command: list[str]
    runs: int = 0
    kills: int = 0
    kill_points: list[int] = field(default_factory=list)  # outcome lines in the file at each kill
    aborted: int = 0  # runs that exited 3
    exit_code: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    wall: float = 0.0
    run_spans: list[tuple[float, float]] = field(default_factory=list)  # monotonic
    error: str | None = None  # the mode could not finish: a usage error, a deadline
    requests: list[Recorded] = field(default_factory=list)
    accepted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    phase_active: dict[str, float] = field(default_factory=dict)


class LineCounter:
    """Complete lines in a file that only grows (or is cut back to its last complete line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        if size < self.offset:
            self.offset = self.lines = 0
        if size > self.offset:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read(size - self.offset)
            end = chunk.rfind(b"\n") + 1  # stop at the last newline: a line may be half written
            self.lines += chunk.count(b"\n", 0, end)
            self.offset += end
        return self.lines


def run_mode(server: ServerThread, run: ModeRun, kills: int, rnd: Random, chaos: Chaos) -> None:
    """Run the command until it exits 0 or 1, killing it `kills` times on the way."""
    env = {
        **os.environ,
        "CUSTOMERIO_SITE_ID": SITE_ID,
        "CUSTOMERIO_API_KEY": API_KEY,
        "BULKSYNC_BASE_URL": server.url,
    }
    # Kill when the results file holds this many outcome lines (+1: the header line).
    targets = sorted(round(rnd.uniform(0.05, 0.85) * run.rows) + 1 for _ in range(kills))
    min_new = max(1, run.rows // 200)  # outcomes a run writes before it may be killed
    counter = LineCounter(run.results)
    logs = run.results.parent
    started = time.monotonic()
    while True:
        if time.monotonic() - started > MODE_DEADLINE:
            run.error = f"still not finished after {MODE_DEADLINE:.0f} s ({run.runs} runs)"
            break
        run.runs += 1
        at_start = counter.count()
        stdout = logs / f"{run.mode}.run{run.runs}.stdout"
        stderr = logs / f"{run.mode}.run{run.runs}.stderr"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(run.command, stdout=out, stderr=err, env=env, cwd=ROOT)
            span_start = time.monotonic()
            chaos.client_running.set()
            killed = False
            try:
                while proc.poll() is None:
                    lines = counter.count()
                    due = run.kills < kills and lines >= targets[run.kills]
                    if due and lines - at_start >= min_new:
                        time.sleep(rnd.uniform(0, 0.1))  # not always right after a flush
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait()
                        killed = True
                        break
                    if time.monotonic() - started > MODE_DEADLINE:
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait()
                        break
                    time.sleep(0.02)
            finally:
                chaos.client_running.clear()
                run.run_spans.append((span_start, time.monotonic()))
        rc = proc.returncode
        if killed:
            run.kills += 1
            run.kill_points.append(counter.count() - 1)
            print(
                f"  {run.mode}: run {run.runs} killed (SIGKILL) at {counter.count() - 1:,}"
                " outcome lines",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(RESTART_PAUSE)
            continue
        print(f"  {run.mode}: run {run.runs} exited {rc}", file=sys.stderr, flush=True)
        if rc == 3:
            run.aborted += 1
            time.sleep(RESTART_PAUSE)
            continue
        if rc in (0, 1):
            run.exit_code = rc
            text = stdout.read_text(encoding="utf-8").strip().splitlines()
            try:
                run.summary = orjson.loads(text[-1]) if text else {}
            except orjson.JSONDecodeError:
                run.summary = {}
            break
        if rc < 0 and time.monotonic() - started > MODE_DEADLINE:
            continue  # killed at the deadline: the loop's first test ends the mode
        run.error = f"run {run.runs} exited {rc}: {stderr.read_text(errors='replace')[-2000:]}"
        break
    run.wall = time.monotonic() - started


# --- checks ------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    summary: str  # one line for the table
    details: list[str] = field(default_factory=list)  # what failed, for stderr and the report


@dataclass
class Facts:
    """What the checks measured, for the tables."""

    counts: Counter[str] = field(default_factory=Counter)
    failed_refused: int = 0
    failed_transient: int = 0
    failed_transient_rejected: int = 0  # rows of reject_ids that failed transiently
    resent: int = 0  # accepted payloads beyond one per (identifier, v): resends after a kill
    accepted_though_failed: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    peak: int = 0
    peak_per_run: int = 0
    puts: int = 0
    batches: int = 0


MAX_SHOWN = 10


def _rows_of(ids: Sequence[str]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = defaultdict(list)
    for row, ident in enumerate(ids, start=1):
        rows[ident].append(row)
    return rows


def _describe(
    ident: str,
    rows: Sequence[int],
    latest: dict[int, dict[str, Any]],
    seen: Sequence[int] | None,
) -> str:
    outcomes = ", ".join(
        f"{r}:{latest[r]['status']}/{latest[r]['http_status']}" if r in latest else f"{r}:-"
        for r in rows
    )
    return f"{ident}: rows (row:status/http) {outcomes}; simulator accepted v = {list(seen or [])}"


def check_mode(run: ModeRun) -> tuple[list[Check], Facts]:
    facts = Facts()
    checks: list[Check] = []
    n = run.rows
    rows_of = _rows_of(run.ids)

    # 1. accounting -------------------------------------------------------------------------
    problems: list[str] = []
    raw_lines = run.results.read_bytes().splitlines() if run.results.exists() else []
    latest: dict[int, dict[str, Any]] = {}
    header: Any = None
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problems.append(f"line {number} is not JSON: {raw[:80]!r}")
            continue
        if number == 1:
            header = line
            continue
        row = line.get("row") if isinstance(line, dict) else None
        if not isinstance(row, int):
            problems.append(f"line {number} has no row number: {raw[:80]!r}")
            continue
        latest[row] = line
    if not isinstance(header, dict) or "bulksync_results" not in header:
        problems.append(f"first line is not a results header: {header!r}")
    missing = [r for r in range(1, n + 1) if r not in latest]
    extra = sorted(r for r in latest if not 1 <= r <= n)
    if missing:
        problems.append(f"{len(missing)} rows have no outcome, e.g. {missing[:MAX_SHOWN]}")
    if extra:
        problems.append(f"outcomes for rows not in the input: {extra[:MAX_SHOWN]}")
    wrong_id = [r for r, line in latest.items() if 1 <= r <= n and line.get("id") != run.ids[r - 1]]
    if wrong_id:
        r = wrong_id[0]
        problems.append(
            f"{len(wrong_id)} outcomes name another identifier than their row, e.g. row {r}:"
            f" {latest[r].get('id')!r}, input {run.ids[r - 1]!r}"
        )
    facts.counts = Counter(str(line.get("status")) for line in latest.values())
    counted = sum(facts.counts[s] for s in ("ok", "failed", "invalid", "unchanged"))
    if counted != n or set(facts.counts) - {"ok", "failed", "invalid", "unchanged"}:
        problems.append(f"ok+failed+invalid+unchanged = {counted} for {n} rows ({facts.counts})")
    if run.summary:
        summary_counts = {
            s: run.summary.get(s, 0) for s in ("ok", "failed", "invalid", "unchanged", "valid")
        }
        file_counts = {s: facts.counts.get(s, 0) for s in summary_counts}
        if summary_counts != file_counts or run.summary.get("rows") != n:
            problems.append(
                f"final --json summary {summary_counts} (rows {run.summary.get('rows')})"
                f" differs from the results file {file_counts}"
            )
        if run.summary.get("exit_code") != run.exit_code:
            problems.append(
                f"summary exit_code {run.summary.get('exit_code')} but the process exited"
                f" {run.exit_code}"
            )
    else:
        problems.append("the final run printed no --json summary")
    if run.error:
        problems.insert(0, run.error)
    checks.append(
        Check(
            "accounting",
            not problems,
            f"{len(latest):,} rows with an outcome, {counted:,} counted" if not problems else "",
            problems,
        )
    )

    # 2. outcomes match the simulator -------------------------------------------------------
    problems = []
    seen_v: dict[str, list[int]] = {}
    for ident, payloads in run.accepted.items():
        values: list[int] = []
        for payload in payloads:
            try:
                values.append(int(str(payload.get("v"))))
            except ValueError:
                problems.append(f"{ident}: accepted a payload without a usable v: {payload}")
        seen_v[ident] = values
        facts.resent += len(values) - len(set(values))
        foreign = [v for v in values if not 1 <= v <= n or run.ids[v - 1] != ident]
        if foreign:
            problems.append(f"{ident}: simulator accepted rows of other identifiers, v={foreign}")
        if ident in run.reject_ids:
            problems.append(f"{ident} is in reject_ids but the simulator accepted v={values}")
    not_accepted = []
    for row, line in sorted(latest.items()):
        if not 1 <= row <= n:
            continue
        ident = run.ids[row - 1]
        status, http = line.get("status"), line.get("http_status")
        accepted_here = row in seen_v.get(ident, ())
        if status == "ok" and not accepted_here:
            not_accepted.append(row)
        if status != "failed":
            continue
        if accepted_here:
            facts.accepted_though_failed += 1
        # Refused by the API: a PUT's 400, or (batch mode) an operation a 207 answer lists.
        if http in REFUSED:
            facts.failed_refused += 1
            if ident not in run.reject_ids:
                problems.append(
                    f"row {row} failed {http} ({line.get('error')}) but {ident} is not in"
                    f" reject_ids; {_describe(ident, rows_of[ident], latest, seen_v.get(ident))}"
                )
        elif http in TRANSIENT or (isinstance(http, int) and http >= 500):
            facts.failed_transient += 1
            facts.failed_transient_rejected += ident in run.reject_ids
        else:
            problems.append(f"row {row} failed with unexpected http_status {http}: {line}")
    for row in not_accepted[:MAX_SHOWN]:
        ident = run.ids[row - 1]
        problems.append(
            f"row {row} is ok but the simulator never accepted it;"
            f" {_describe(ident, rows_of[ident], latest, seen_v.get(ident))}"
        )
    if len(not_accepted) > MAX_SHOWN:
        problems.append(f"... {len(not_accepted)} ok rows not accepted in all")
    for ident in sorted(run.reject_ids):
        for row in rows_of.get(ident, []):
            line = latest.get(row, {})
            if line.get("status") != "failed":
                problems.append(
                    f"row {row} of rejected {ident} is {line.get('status')!r}, not failed"
                )
    checks.append(
        Check(
            "outcomes match the simulator",
            not problems,
            f"{facts.counts['ok']:,} ok rows all accepted; {facts.failed_refused:,} rows refused,"
            f" all of reject_ids; {facts.failed_transient:,} failed transiently",
            problems[: MAX_SHOWN * 2],
        )
    )

    # 3. per-identifier order ---------------------------------------------------------------
    problems = []
    for ident, values in sorted(seen_v.items()):
        backwards = [(a, b) for a, b in itertools.pairwise(values) if b < a]
        ok_rows = [r for r in rows_of.get(ident, []) if latest.get(r, {}).get("status") == "ok"]
        expected_last = max(ok_rows) if ok_rows else None
        last = values[-1] if values else None
        if backwards or last != expected_last:
            why = f"older v after newer {backwards[:3]}" if backwards else ""
            if last != expected_last:
                why += ("; " if why else "") + (
                    f"last accepted v={last}, but the last ok row is {expected_last}"
                )
            problems.append(f"{why}: {_describe(ident, rows_of.get(ident, []), latest, values)}")
    for ident, rows in rows_of.items():
        ok_rows = [r for r in rows if latest.get(r, {}).get("status") == "ok"]
        if ok_rows and ident not in seen_v:
            problems.append(
                f"{ident} has ok rows but nothing accepted: {_describe(ident, rows, latest, [])}"
            )
    repeated = sum(len(rows) > 1 for rows in rows_of.values())
    checks.append(
        Check(
            "per-identifier order",
            not problems,
            f"{len(seen_v):,} identifiers ({repeated:,} with 2-5 rows): v never goes back,"
            " last accepted = last ok row",
            problems[: MAX_SHOWN * 2] + ([f"... {len(problems)} in all"] if problems else []),
        )
    )

    # 4. rate -------------------------------------------------------------------------------
    times = [rec.time for rec in run.requests]
    facts.requests = len(run.requests)
    facts.statuses = Counter(rec.status for rec in run.requests)
    facts.peak = peak_in_window(times)
    facts.peak_per_run = max(
        (peak_in_window([t for t in times if start <= t <= end]) for start, end in run.run_spans),
        default=0,
    )
    facts.puts = sum(rec.method == "PUT" for rec in run.requests)
    facts.batches = sum(rec.method == "POST" for rec in run.requests)
    share = facts.statuses[429] / facts.requests if facts.requests else 0.0
    problems = []
    if facts.peak > RATE:
        problems.append(
            f"{facts.peak} requests in one 1-second window (limit {RATE});"
            f" within one run at most {facts.peak_per_run}"
        )
        problems += _busiest(run)
    checks.append(
        Check(
            "rate",
            not problems,
            f"peak {facts.peak} requests/s (≤ {RATE}); 429: {share:.1%} of {facts.requests:,}",
            problems,
        )
    )
    return checks, facts


def _busiest(run: ModeRun) -> list[str]:
    """Each stretch of 1-second windows holding more than RATE requests: its fullest window,
    which run sent it and when, and how its requests were spread (per 100 ms)."""
    recs = sorted(run.requests, key=lambda rec: rec.time)
    groups: list[tuple[int, int]] = []  # (start, end) indexes of each stretch's fullest window
    start = 0
    for end, rec in enumerate(recs):
        while rec.time - recs[start].time >= 1.0:
            start += 1
        if end - start + 1 <= RATE:
            continue
        if groups and recs[start].time - recs[groups[-1][0]].time < 1.0:
            if end - start > groups[-1][1] - groups[-1][0]:
                groups[-1] = (start, end)
        else:
            groups.append((start, end))
    out: list[str] = []
    t0 = run.run_spans[0][0] if run.run_spans else 0.0
    for start, end in groups[:MAX_SHOWN]:
        window = recs[start : end + 1]
        first, last = window[0].time, window[-1].time
        spans = [
            (i + 1, s)
            for i, (s, e) in enumerate(run.run_spans)
            if s <= first <= e or s <= last <= e
        ]
        where = ", ".join(f"run {i} (+{first - s:.2f} s after it started)" for i, s in spans)
        buckets = Counter(int((r.time - first) * 10) for r in window)
        statuses = dict(Counter(r.status for r in window))
        out.append(
            f"{len(window)} requests arrived in {last - first:.3f} s from t0+{first - t0:.3f} s"
            f" (t0 = the mode's first run start), in {where}; statuses {statuses};"
            f" per 100 ms: {[buckets[i] for i in range(10)]}"
        )
    if len(groups) > MAX_SHOWN:
        out.append(f"... {len(groups)} such stretches in all")
    return out


def dump_requests(run: ModeRun, path: Path) -> None:
    """One JSON line per request the simulator saw (time from the mode's first run start)."""
    t0 = run.run_spans[0][0] if run.run_spans else 0.0
    with path.open("wb") as f:
        for rec in run.requests:
            body = rec.body
            if isinstance(body, dict) and isinstance(body.get("batch"), list):
                ops = [
                    op.get("attributes", {}).get("v")
                    for op in body["batch"]
                    if isinstance(op, dict)
                ]
                vs: Any = ops
            else:
                vs = body.get("v") if isinstance(body, dict) else None
            line = {
                "t": round(rec.time - t0, 6),
                "method": rec.method,
                "id": rec.identifier,
                "status": rec.status,
                "v": vs,
            }
            f.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))


# --- report ------------------------------------------------------------------------------------


def summary_table(runs: Sequence[ModeRun], facts: Sequence[Facts]) -> str:
    def row(label: str, *values: object) -> list[object]:
        return [label, *values]

    def status(f: Facts, *codes: int) -> int:
        return sum(f.statuses[c] for c in codes)

    rows = [
        row(
            "command options", *(" ".join(r.command[5:]).replace(str(r.results), "R") for r in runs)
        ),
        row("input rows", *(r.rows for r in runs)),
        row("distinct identifiers", *(len(set(r.ids)) for r in runs)),
        row(
            "identifiers with 2-5 rows",
            *(sum(c > 1 for c in Counter(r.ids).values()) for r in runs),
        ),
        row("identifiers in reject_ids (400)", *(len(r.reject_ids) for r in runs)),
        row("runs (kill -9 + resume)", *(r.runs for r in runs)),
        row("killed with SIGKILL", *(r.kills for r in runs)),
        row(
            "outcomes in the file at each kill",
            *(", ".join(f"{k:,}" for k in r.kill_points) or "-" for r in runs),
        ),
        row("runs that exited 3 (aborted)", *(r.aborted for r in runs)),
        row("final exit code", *(r.exit_code for r in runs)),
        row("wall time s", *(r.wall for r in runs)),
        row("ok", *(f.counts["ok"] for f in facts)),
        row("failed, refused: 400 / listed in a 207", *(f.failed_refused for f in facts)),
        row("failed, transient (429/5xx/network)", *(f.failed_transient for f in facts)),
        row("invalid", *(f.counts["invalid"] for f in facts)),
        row("unchanged", *(f.counts["unchanged"] for f in facts)),
        row("rows accepted twice (resent after a kill)", *(f.resent for f in facts)),
        row("failed rows the simulator had accepted", *(f.accepted_though_failed for f in facts)),
        row("requests (PUT / batch POST)", *(f"{f.puts:,} / {f.batches:,}" for f in facts)),
        row("answered 200 / 207", *(f"{f.statuses[200]:,} / {f.statuses[207]:,}" for f in facts)),
        row("answered 400", *(f.statuses[400] for f in facts)),
        row(
            "answered 429",
            *(f"{f.statuses[429]:,} ({f.statuses[429] / max(f.requests, 1):.1%})" for f in facts),
        ),
        row("answered 500 / 503", *(f"{status(f, 500):,} / {status(f, 503):,}" for f in facts)),
        row("dropped (no answer)", *(f.statuses[0] for f in facts)),
        row(f"peak requests in 1 s (≤ {RATE})", *(f.peak for f in facts)),
    ]
    return table(["", *(r.mode for r in runs)], rows)


def checks_table(runs: Sequence[ModeRun], checks: Sequence[Sequence[Check]]) -> str:
    names = [c.name for c in checks[0]]
    rows: list[list[object]] = []
    for i, name in enumerate(names):
        cells: list[object] = [name]
        for mode_checks in checks:
            c = mode_checks[i]
            cells.append(f"pass: {c.summary}" if c.ok else f"**FAIL**: {len(c.details)} problem(s)")
        rows.append(cells)
    return table(["check", *(r.mode for r in runs)], rows)


def phase_table(run: ModeRun) -> str:
    rows: list[list[object]] = []
    for phase in dict.fromkeys(p.name for p in CYCLE):
        spans = [(s, e) for name, s, e in run.phases if name == phase]
        recs = [r for r in run.requests if any(s <= r.time < e for s, e in spans)]
        active = run.phase_active.get(phase, 0.0)
        statuses = Counter(r.status for r in recs)
        admitted = sum(c for s, c in statuses.items() if s != 429)
        rows.append(
            [
                phase,
                len(spans),
                round(active, 1),
                len(recs),
                statuses[429],
                round(admitted / active, 1) if active else "-",
            ]
        )
    return table(["phase", "times", "client running s", "requests", "429", "admitted req/s"], rows)


CHECKS_EXPLAINED = f"""\
- **accounting**: the results file starts with its header, and holds exactly one latest outcome
  for every input row (1..rows, none missing, none extra, each naming its row's identifier);
  ok + failed + invalid + unchanged = rows, and the final run's `--json` summary says the same
  (and its exit code).
- **outcomes match the simulator**: every row whose latest outcome is `ok` was accepted by the
  simulator (its `v` is among the payloads accepted for its identifier, PUTs and batch operations
  alike); rows `failed` as refused by the API are exactly the rows of identifiers in `reject_ids`,
  and the simulator accepted nothing for those. A refused row's `http_status` is 400 in
  single-row mode, and in batch mode 207: the batch answer that lists the row's operation as
  invalid (the other operations in it were accepted). Rows `failed` after running out of
  retries on transient errors are allowed, and counted.
- **per-identifier order**: for each identifier, the `v` values the simulator accepted never go
  back (a repeat of the same `v` is a legitimate resend after kill -9 + resume; an older row after
  a newer one would leave Customer.io with stale data), and the last one accepted is the
  identifier's last row whose outcome is `ok`.
- **rate**: the most requests that arrived in any sliding 1-second window, refused ones included,
  is at most `--rate {RATE}`. The share of requests answered 429 is reported, not judged: most
  are injected storms, the rest the simulator's limit at {LOW_LIMIT}/s.
"""


def report(
    args: argparse.Namespace,
    sizes: Sizes,
    runs: Sequence[ModeRun],
    checks: Sequence[Sequence[Check]],
    facts: Sequence[Facts],
    wall: float,
    commit: str,
    code_changed: bool,
) -> str:
    command = "python bench/soak.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    verdict = "every check passed"
    if not all(c.ok for mode_checks in checks for c in mode_checks):
        verdict = "**checks FAILED** (see Failures)"
    phases = ", ".join(f"{p.name} {p.seconds * sizes.phase_scale:g} s" for p in CYCLE)
    parts = [
        "# Reliability soak",
        "Generated by `make soak` (`bench/soak.py`): do not edit by hand. Minutes long, not part"
        " of `make test`.",
        "\n".join(
            [
                f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
                f"- machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()},"
                f" Python {platform.python_version()}",
                f"- bulksync: commit {commit}"
                + (
                    " (bulksync/ changed DURING the soak: later runs used newer code)"
                    if code_changed
                    else ""
                ),
                f"- command: `{command.strip()}` (seed {args.seed}; `make soak` runs it with"
                " `--out docs/reliability.md`)",
                f"- total wall time: {wall:.0f} s",
                f"- result: {verdict}",
            ]
        ),
        "## Scenario",
        "Each mode runs `python -m bulksync sync INPUT --results R --quiet --json --rate"
        f" {RATE}` (batch mode adds `--batch --batch-size {BATCH_SIZE}`) against the Track API"
        " simulator (`bulksync.fake`), which runs in the soak's own process so the soak can"
        " change its behaviour mid-run. The simulator is reset between the modes.\n\n"
        f"- Input: a generated CSV (`id,email,first_name,v`, `v` = the row number); about"
        f" {DISTINCT_SHARE:.0%} of the rows are distinct people, the others are 2nd to 5th rows"
        f" of people seen elsewhere in the file ({NEAR_SHARE:.0%} of those within {NEAR_ROWS}"
        " rows of another of the person's rows, the rest anywhere)."
        + (
            f" Single-row mode uses fewer rows: at {RATE} requests/s, {sizes.batch_rows:,} PUTs"
            f" would take {sizes.batch_rows / RATE / 60:.0f}+ minutes."
            if sizes.single_rows < sizes.batch_rows
            else ""
        )
        + "\n"
        "- Throughout: latency 5 ms + 0-50 ms jitter; 10 % transient faults (5 % 503, 3 % 500,"
        f" 2 % dropped connections); every row of {REJECT_SHARE:.0%} of the identifiers"
        f" refused with 400; simulator limit {RATE} requests in any 1-second window.\n"
        f"- Phases, cycled for as long as a client runs (the clock stops between runs): {phases}."
        " A storm answers 60 % of admitted requests 429 on top of the other faults.\n"
        f"- kill -9: {sizes.kills} times per mode, when the results file reaches a random number"
        " of outcomes (5-85 % of the rows, and only once the current run has written some), then"
        f" the same command again after {RESTART_PAUSE:g} s; a run that exits 3 (aborted) is"
        " re-run too, until one exits 0 or 1.",
        "## Results",
        summary_table(runs, facts),
        checks_table(runs, checks),
    ]
    for run in runs:
        parts += [f"### Phases: {run.mode}", phase_table(run)]
    failures = [
        f"- {run.mode} / {c.name}: {d}"
        for run, mode_checks in zip(runs, checks, strict=True)
        for c in mode_checks
        if not c.ok
        for d in c.details
    ]
    if failures:
        parts += ["## Failures", "\n".join(failures)]
    parts += ["## What is checked", CHECKS_EXPLAINED.strip()]
    return "\n\n".join(parts) + "\n"


# --- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, help="write the report (Markdown) here")
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 kills: a smoke run")
    parser.add_argument("--seed", type=int, default=1, help="input, faults and kill points")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    commit, digest = code_state()

    server = ServerThread(base_config(args.seed))
    tmp = Path(tempfile.mkdtemp(prefix="bulksync-soak-"))
    runs: list[ModeRun] = []
    try:
        for index, (mode, rows, extra) in enumerate(
            [
                ("single", sizes.single_rows, []),
                ("batch", sizes.batch_rows, ["--batch", "--batch-size", str(BATCH_SIZE)]),
            ]
        ):
            rnd = Random(args.seed * 1000 + index)
            ids = make_ids(rows, rnd)
            path = tmp / f"{mode}.csv"
            write_csv(path, ids, rnd)
            distinct = sorted(set(ids))
            reject = frozenset(rnd.sample(distinct, round(len(distinct) * REJECT_SHARE)))
            results = tmp / f"{mode}.results.jsonl"
            command = [sys.executable, "-m", "bulksync", "sync", str(path)]
            command += ["--results", str(results), "--quiet", "--json", "--rate", str(RATE)]
            run = ModeRun(mode, rows, ids, reject, results, command + extra)
            server.fake.config = base_config(args.seed + index)
            server.fake.config.reject_ids = reject
            server.reset()
            chaos = Chaos(server.fake, sizes.phase_scale)
            chaos.start()
            print(f"soak: {mode} mode, {rows:,} rows ...", file=sys.stderr, flush=True)
            try:
                run_mode(server, run, sizes.kills, rnd, chaos)
            finally:
                chaos.done.set()
                chaos.join()
            time.sleep(0.5)  # let handlers of connections cut by the last kill finish
            run.requests, run.accepted = server.snapshot()
            run.phases, run.phase_active = chaos.intervals, dict(chaos.active)
            runs.append(run)
    finally:
        server.close()

    checked = [check_mode(run) for run in runs]
    checks = [c for c, _ in checked]
    facts = [f for _, f in checked]
    wall = time.monotonic() - started
    commit_end, digest_end = code_state()
    code_changed = digest_end != digest
    if code_changed:
        # Each run imports bulksync afresh: runs after the change ran the new code.
        commit = f"{commit} at the start, {commit_end} at the end"
    text = report(args, sizes, runs, checks, facts, wall, commit, code_changed)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + _hand_written(args.out), encoding="utf-8")
        print(f"soak: wrote {args.out}", file=sys.stderr)
    failed = [(run, c) for run, cs in zip(runs, checks, strict=True) for c in cs if not c.ok]
    for run, c in failed:
        print(f"soak: FAILED {run.mode} / {c.name}:", file=sys.stderr)
        for line in c.details:
            print(f"    {line}", file=sys.stderr)
    if code_changed:
        print("soak: note: bulksync/ changed while the soak ran", file=sys.stderr)
    if failed or args.keep:
        for run in runs:
            dump_requests(run, tmp / f"{run.mode}.requests.jsonl")
        print(f"soak: inputs, results files and client logs kept in {tmp}", file=sys.stderr)
    else:
        for path in sorted(tmp.iterdir()):
            path.unlink()
        tmp.rmdir()
    print(f"soak: {'FAILED' if failed else 'all checks passed'} in {wall:.0f} s", file=sys.stderr)
    return 1 if failed else 0


# The part of --out below this line is written by hand (the hardening probe): kept as it is.
HAND_WRITTEN = "<!-- Below: written by hand; make soak keeps it. -->"


def _hand_written(out: Path) -> str:
    existing = out.read_text(encoding="utf-8") if out.exists() else ""
    at = existing.find(HAND_WRITTEN)
    return "\n" + existing[at:] if at >= 0 else ""


if __name__ == "__main__":
    sys.exit(main())
