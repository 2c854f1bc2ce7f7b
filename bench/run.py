"""Run bulksync's benchmarks and print their results as Markdown tables.

    python bench/run.py [--only NAME] [--quick] [--out docs/benchmarks.md]

Machines are shared and noisy, so each section reports RATIOS measured side by side in one run,
with absolute figures for information only. Nothing here is asserted by the tests.

To add a section: write `def bench_NAME(quick: bool) -> list[str]` returning Markdown blocks
(tables, notes) and add it to the SECTIONS dict. Helpers: `data_file()` makes (or reuses)
a generated input in bench/data/, `measure()` runs a command in a fresh process and returns its
wall time and peak RSS, `table()` formats rows.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import csv
import gzip
import hashlib
import json
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DATA = BENCH / "data"
sys.path.insert(0, str(BENCH))

from gen import write  # noqa: E402

from bulksync.fake.process import fake_server_process  # noqa: E402

# --- helpers ---------------------------------------------------------------------------------


def data_file(fmt: str, rows: int) -> Path:
    """bench/data/customers-ROWS.FMT, generated unless a file with exactly `rows` rows exists."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"customers-{rows}.{fmt}"
    if path.exists() and _data_rows(path) == rows:
        return path
    print(f"generating {path.relative_to(ROOT)} ...", file=sys.stderr, flush=True)
    # Write to a temporary name then rename, so an interrupted run leaves no half-written file
    # under the final name. gen.write picks the format by suffix: keep it.
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp, rows)
    tmp.replace(path)
    return path


def _data_rows(path: Path) -> int:
    """Rows in a generated file: its newline count, less the header line for CSV."""
    lines = 0
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
    return lines - 1 if path.suffix == ".csv" else lines


# Runs argv[1:] in a child process and prints one JSON object: wall time, exit code, the child's
# peak RSS (ru_maxrss of waited-for children: KiB on Linux) and its stderr. It runs in a fresh
# interpreter so the measurement is isolated from this driver: ru_maxrss of a child that forks
# counts the parent's pages copied at fork, and this wrapper is only a few MiB.
_WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - t
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "rc": p.returncode, "maxrss_kib": usage.ru_maxrss,
                  "cpu": usage.ru_utime + usage.ru_stime,
                  "stderr": p.stderr.decode(errors="replace")}))
"""


@dataclass(frozen=True)
class Run:
    wall: float  # seconds, process start to exit
    peak_rss_mib: float
    cpu: float = 0.0  # seconds of CPU, user and system, its children's included


class BenchError(Exception):
    """A benchmarked command failed: the section's figures would mean nothing."""


def measure(argv: Sequence[str], expect_rc: int = 0, env: Mapping[str, str] | None = None) -> Run:
    """Run `argv` once in a fresh process; its wall time and peak RSS (children included).
    `env`: variables to set for it, on top of this process's environment."""
    r = _measure_stderr(argv, env)
    if r["rc"] != expect_rc:
        raise BenchError(
            f"{shlex.join(argv)} exited {r['rc']} (expected {expect_rc}); stderr:\n{r['stderr']}"
        )
    return Run(wall=r["wall"], peak_rss_mib=r["maxrss_kib"] / 1024, cpu=r["cpu"])


def median_run(
    argv: Sequence[str], repeat: int, expect_rc: int = 0, env: Mapping[str, str] | None = None
) -> Run:
    runs = [measure(argv, expect_rc, env) for _ in range(repeat)]
    return Run(
        wall=statistics.median(r.wall for r in runs),
        peak_rss_mib=statistics.median(r.peak_rss_mib for r in runs),
        cpu=statistics.median(r.cpu for r in runs),
    )


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; numbers right-aligned."""

    def align(col: int) -> str:
        numeric = all(isinstance(r[col], int | float) for r in rows)
        return "---:" if numeric and rows else "---"

    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align(i) for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def code_state() -> tuple[str, str]:
    """(git commit, with a note if bulksync/ has uncommitted changes; digest of bulksync/*.py).

    Other engineers edit bulksync/ while benchmarks run: the digest, taken before and after a
    section, tells whether its figures mix two versions of the code.
    """
    digest = hashlib.sha256()
    for path in sorted((ROOT / "bulksync").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "bulksync"):
        commit += " + uncommitted changes in bulksync/"
    return commit, digest.hexdigest()


# --- sections --------------------------------------------------------------------------------

ROWS_PER_SECOND_TARGET = 100_000
RSS_GROWTH_TARGET = 1.1  # RSS at 10x the rows over RSS at 1x (issue 15)


def bench_dryrun(quick: bool) -> list[str]:
    """`bulksync sync FILE --dry-run --quiet`, CSV and JSONL, two sizes 10x apart."""
    small, large = (10_000, 100_000) if quick else (100_000, 1_000_000)
    repeat = 1 if quick else 3
    runs: dict[tuple[str, int], Run] = {}
    started = time.monotonic()
    paths = {
        (fmt, rows): data_file(fmt, rows) for fmt in ("csv", "jsonl") for rows in (small, large)
    }
    prepared = time.monotonic() - started
    with tempfile.TemporaryDirectory(prefix="bulksync-bench-") as tmp:
        results = Path(tmp) / "results.jsonl"
        for (fmt, rows), path in paths.items():
            argv = [sys.executable, "-m", "bulksync", "sync", str(path)]
            argv += ["--dry-run", "--quiet", "--results", str(results)]
            print(f"dryrun: {fmt} {rows:,} rows x{repeat} ...", file=sys.stderr, flush=True)
            runs[fmt, rows] = median_run(argv, repeat)
            results.unlink(missing_ok=True)

    measured = table(
        ["format", "rows", "wall s", "rows/s", "peak RSS MiB"],
        [
            [fmt, rows, r.wall, round(rows / r.wall), r.peak_rss_mib]
            for (fmt, rows), r in runs.items()
        ],
    )
    ratios = []
    for fmt in ("csv", "jsonl"):
        s, g = runs[fmt, small], runs[fmt, large]
        speed = large / g.wall / ROWS_PER_SECOND_TARGET
        growth = g.peak_rss_mib / s.peak_rss_mib
        ratios.append(
            [
                fmt,
                f"{speed:.2f}x" + ("" if speed >= 1 else " (below)"),
                f"{growth:.2f}x" + ("" if growth <= RSS_GROWTH_TARGET else " (above)"),
            ]
        )
    ratio_table = table(
        [
            "format",
            f"rows/s at {large:,} / {ROWS_PER_SECOND_TARGET:,} target",
            f"RSS({large:,}) / RSS({small:,}) (target ≤ {RSS_GROWTH_TARGET}x)",
        ],
        ratios,
    )
    note = (
        f"Each figure is the median of {repeat} run(s) of `python -m bulksync sync FILE --dry-run"
        " --quiet --results TMP`, each in a fresh process: wall time and rows/s include"
        " interpreter start-up and imports; peak RSS is the process's ru_maxrss."
        f" Input files: bench/data/ ({prepared:.0f} s to generate or check them)."
    )
    return ["## dryrun\n\n" + note, measured, ratio_table]


# --- sending, against the simulator in its own process ---------------------------------------

SITE_ID, API_KEY = "bench-site", "bench-key"
SATURATION_TARGET = 0.97  # achieved rate over --rate
CPU_RATIO_TARGET = 0.3  # bulksync's CPU per row over the official client's (issue 15)
UNTHROTTLED_AIM = 2_000  # requests/s with no cap, latency 0


def simulator(*options: str) -> contextlib.AbstractContextManager[str]:
    """`bulksync fake-server` in a child process (so it does not share our GIL); yields its URL."""
    return fake_server_process(*options, site_id=SITE_ID, api_key=API_KEY)


def simulator_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_fake/stats") as answer:
        stats: dict[str, Any] = json.load(answer)
    return stats


def send_bulksync(
    path: Path, url: str, rate: float | None, batch_size: int | None = None
) -> tuple[float, float, int]:
    """bulksync.sync() in this process (batch mode when `batch_size` is given):
    (wall seconds, CPU seconds, requests)."""
    from bulksync import Credentials, SendOptions, SyncOptions, sync

    send = SendOptions(rate=rate, base_url=url)
    if batch_size is not None:
        send = SendOptions(rate=rate, base_url=url, batch=True, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        options = SyncOptions(results=Path(tmp) / "results.jsonl", send=send)
        wall, cpu = time.perf_counter(), time.process_time()
        summary = sync(str(path), options, credentials=Credentials(SITE_ID, API_KEY))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if summary.exit_code != 0:
        raise BenchError(f"bulksync sync ended with {summary.counts}")
    return wall, cpu, summary.requests


def send_official(path: Path, url: str) -> tuple[float, float]:
    """customerio 3.x, `identify` in a loop as its README shows: (wall seconds, CPU seconds)."""
    from customerio import CustomerIO

    client = CustomerIO(SITE_ID, API_KEY)
    client.base_url = f"{url}/api/v1"  # the official way to aim it elsewhere is its host/port
    wall, cpu = time.perf_counter(), time.process_time()
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            client.identify(id=row.pop("id"), **row)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_send(quick: bool) -> list[str]:
    """PUT per row against the simulator: saturation at --rate 100 with 100 ms latency; the
    official client side by side; CPU per row and unthrottled throughput at latency 0."""
    rows = 600 if quick else 3_000
    official_rows = 100 if quick else 300  # the official client sends one at a time: 10/s here
    cpu_rows = 2_000 if quick else 10_000
    blocks = [
        "## send\n\nbulksync's library `sync()` runs in this process; the simulator"
        " (`bulksync fake-server`) in its own, so neither shares the other's GIL or CPU count."
    ]

    path = data_file("csv", rows)
    with simulator("--latency", "0.1", "--jitter", "0.02") as url:
        wall, _, requests = send_bulksync(path, url, rate=100)
        peak = simulator_stats(url)["peak_per_second"]
    achieved = rows / wall
    blocks.append("### Saturation: PUT per row, simulator latency 100 ms (+0-20 ms jitter)")
    blocks.append(
        table(
            [
                "rows",
                "--rate",
                "wall s",
                "rows/s",
                "achieved / rate",
                "target",
                "peak sliding second",
            ],
            [
                [
                    rows,
                    100,
                    wall,
                    achieved,
                    achieved / 100,
                    f">= {SATURATION_TARGET}",
                    f"{peak} (<= 100)",
                ]
            ],
        )
    )

    small = data_file("csv", official_rows)
    with simulator("--latency", "0.1") as url:
        ours, _, _ = send_bulksync(small, url, rate=100)
        theirs, _ = send_official(small, url)
    blocks.append(
        f"### Versus the official client (customerio 3.x), {official_rows} rows, latency 100 ms"
    )
    blocks.append(
        table(
            ["client", "wall s", "rows/s"],
            [
                ["bulksync --rate 100", ours, official_rows / ours],
                ["customerio identify() loop", theirs, official_rows / theirs],
                ["wall-time ratio (official / bulksync)", theirs / ours, ""],
            ],
        )
    )

    big = data_file("csv", cpu_rows)
    with simulator() as url:
        ours_wall, ours_cpu, requests = send_bulksync(big, url, rate=None)
        theirs_wall, theirs_cpu = send_official(big, url)
    ours_k, theirs_k = ours_cpu / cpu_rows * 1000, theirs_cpu / cpu_rows * 1000
    blocks.append(
        "### CPU per 1,000 rows and unthrottled throughput:"
        f" {cpu_rows:,} rows, latency 0, no rate cap"
    )
    blocks.append(
        table(
            ["client", "wall s", "requests/s", "CPU s per 1,000 rows"],
            [
                ["bulksync --rate 0", ours_wall, requests / ours_wall, ours_k],
                ["customerio identify() loop", theirs_wall, cpu_rows / theirs_wall, theirs_k],
            ],
        )
    )
    blocks.append(
        f"CPU ratio bulksync / official: **{ours_k / theirs_k:.2f}**"
        f" (target <= {CPU_RATIO_TARGET});"
        f" unthrottled: **{requests / ours_wall:,.0f} requests/s** (aim >= {UNTHROTTLED_AIM:,})."
        " CPU is this process's only: the simulator runs in its own process."
    )
    return blocks


BATCH_RATIO_TARGET = 50  # batch rows/s over single-row rows/s


def bench_batch(quick: bool) -> list[str]:
    """--batch against single-row mode, same simulator (latency 100 ms) and --rate 100; and the
    rows/s of a few batch sizes, to choose the default."""
    single_rows = 500 if quick else 3_000
    batch_rows = 20_000 if quick else 100_000
    sizes = (100, 1000) if quick else (100, 250, 500, 1000, 2000)
    blocks = [
        "## batch\n\n`POST /api/v2/batch` against one PUT per row, both at `--rate 100` with"
        " the simulator (its own process) answering after 100 ms."
    ]
    rows = []
    single = 0.0
    for size in (None, *sizes):
        count = single_rows if size is None else batch_rows
        # A simulator per run, so each run's peak second is its own.
        with simulator("--latency", "0.1") as url:
            wall, cpu, requests = send_bulksync(
                data_file("csv", count), url, rate=100, batch_size=size
            )
            peak = simulator_stats(url)["peak_per_second"]
        rate = count / wall
        if size is None:
            single = rate
            rows.append(["single (PUT per row)", count, requests, wall, rate, "", "", peak])
            continue
        per_10k = cpu / count * 10_000
        label = f"--batch --batch-size {size}"
        rows.append([label, count, requests, wall, rate, f"{rate / single:,.0f}x", per_10k, peak])
    blocks.append(
        table(
            [
                "mode",
                "rows",
                "requests",
                "wall s",
                "rows/s",
                "vs single",
                "CPU s / 10k rows",
                "peak second (<= 100)",
            ],
            rows,
        )
    )
    blocks.append(
        f"Goal: batch rows/s >= {BATCH_RATIO_TARGET}x single-row, no second over 100 requests."
        " CPU is bulksync's process only. At large batch sizes throughput is bound by CPU"
        " (reading, normalizing, the results file) and by the simulator's own validation of each"
        " operation, not by the rate limit; requests also stop growing past ~1,600 operations,"
        " where these rows reach the 500,000-byte request limit. The peak second is the"
        " simulator's count of arrivals, timed by its own event loop: at 100-250 operations per"
        " request it validates up to 25,000 operations a second on the 2 cores it shares with"
        " bulksync, and its timestamps bunch up. bulksync's own clock, stamped when each"
        " request's headers were written, showed at most 100 in any second in runs of the"
        " same configuration (the limiter counts from that stamp); the default 1,000 stays far"
        " below the cap."
    )
    return blocks


KIND_RATIO_TARGET = 0.8  # each kind's batch rows/s over people's, same run


def kind_file(kind: str, rows: int) -> Path:
    """bench/data/KIND-ROWS.csv: rows of one --kind, read with its default column names. Each
    row names another person (or object), as the people file does: the comparison is of what
    each kind costs to read, build and send, not of how often a person must wait for their
    previous row (the batch section measures that)."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"{kind}-{rows}.csv"
    if path.exists() and _data_rows(path) == rows:
        return path

    def row(i: int) -> list[object]:
        person = f"cust-{i}"
        match kind:
            case "events":
                return [person, "purchase", 1_700_000_000 + i, f"sku-{i % 97}", f"{i % 500}.99"]
            case "devices":
                return [person, f"token-{i}", "ios" if i % 2 else "android", 1_700_000_000 + i]
            case "objects":
                return [1, f"company-{i}", f"Company {i}", "pro", i % 900]
            case "relationships":
                return [person, 1, f"company-{i % 2_000}", "member"]
            case "merges":
                return [f"cust-{i}", f"dup-{i}@example.com"]
            case _:  # deletions, suppressions, unsuppressions
                return [person]

    header = {
        "events": ["id", "event", "timestamp", "sku", "total"],
        "devices": ["id", "device_id", "platform", "last_used"],
        "objects": ["object_type_id", "object_id", "name", "plan", "employees"],
        "relationships": ["id", "object_type_id", "object_id", "role"],
        "merges": ["primary", "secondary"],
    }.get(kind, ["id"])
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(row(i) for i in range(1, rows + 1))
    tmp.replace(path)
    return path


def bench_kinds(quick: bool) -> list[str]:
    """Every --kind in batch mode at --rate 100 against the simulator answering after 100 ms:
    rows/s, each as a ratio to people's in the same run."""
    from bulksync import KINDS, Credentials, NormalizeOptions, SendOptions, SyncOptions, sync

    rows = 10_000 if quick else 50_000
    measured: list[list[object]] = []
    people_rate = 0.0
    for kind in KINDS:
        path = data_file("csv", rows) if kind == "people" else kind_file(kind, rows)
        with simulator("--latency", "0.1") as url, tempfile.TemporaryDirectory() as tmp:
            options = SyncOptions(
                normalize=NormalizeOptions(kind=kind),
                send=SendOptions(rate=100, base_url=url, batch=True),
                results=Path(tmp) / "results.jsonl",
                yes=True,
            )
            wall = time.perf_counter()
            summary = sync(str(path), options, credentials=Credentials(SITE_ID, API_KEY))
            wall = time.perf_counter() - wall
            stats = simulator_stats(url)
        if summary.exit_code != 0:
            raise BenchError(f"--kind {kind}: {summary.counts}")
        rate = rows / wall
        people_rate = people_rate or rate
        measured.append(
            [
                kind,
                rows,
                summary.requests,
                wall,
                rate,
                f"{rate / people_rate:.2f}",
                stats["peak_per_second"],
            ]
        )
    blocks = [
        "## kinds\n\nEvery `--kind` with `--batch` (default 1,000 operations per request) at"
        " `--rate 100`, the simulator in its own process answering after 100 ms. Every row names"
        " another person (or object), as in the people file, so no batch waits for another.",
        table(
            ["kind", "rows", "requests", "wall s", "rows/s", "vs people", "peak second (<= 100)"],
            measured,
        ),
        f"Goal: every kind >= {KIND_RATIO_TARGET}x the rows/s of people in the same run (the"
        " sender, the packing and the results file are shared; only building the operation"
        " differs), and no second over 100 requests.",
    ]
    return blocks


STATE_RSS_TARGET = 1.2  # peak RSS of the unchanged re-run over a dry run of the same file


def bench_state(quick: bool) -> list[str]:
    """Re-run of an unchanged CSV with the diff state (`--state`) populated: requests sent beyond
    the credentials check (goal 0), rows/s (goal >= 100,000), peak RSS (goal <= 1.2x a dry run)."""
    rows = 100_000 if quick else 1_000_000
    repeat = 1 if quick else 3
    path = data_file("csv", rows)
    sync = [sys.executable, "-m", "bulksync", "sync", str(path), "--quiet"]
    with tempfile.TemporaryDirectory(prefix="bulksync-bench-") as tmp, simulator() as url:
        state, results = Path(tmp) / "state.db", Path(tmp) / "results.jsonl"
        env = {"CUSTOMERIO_SITE_ID": SITE_ID, "CUSTOMERIO_API_KEY": API_KEY}
        env["BULKSYNC_BASE_URL"] = url
        print(f"state: populating the state, {rows:,} rows ...", file=sys.stderr, flush=True)
        populate = measure(
            [*sync, "--state", str(state), "--rate", "0", "--batch", "--results", str(results)],
            env=env,
        )
        with contextlib.closing(sqlite3.connect(state)) as db:
            (known,) = db.execute("SELECT count(*) FROM state").fetchone()
        if known != rows:
            raise BenchError(f"the populating run left {known:,} identifiers in the state")

        reruns, sent = [], []
        for _ in range(repeat):
            print(f"state: unchanged re-run, {rows:,} rows ...", file=sys.stderr, flush=True)
            before = simulator_stats(url)["requests"]
            argv = [*sync, "--state", str(state), "--results", str(results), "--fresh"]
            reruns.append(measure(argv, env=env))
            sent.append(simulator_stats(url)["requests"] - before)
            unchanged = results.read_bytes().count(b'"status":"unchanged"')
            if unchanged != rows:
                raise BenchError(f"the re-run found {unchanged:,} of {rows:,} rows unchanged")
        dry_results = Path(tmp) / "dry-run.jsonl"
        print(f"state: dry run, {rows:,} rows x{repeat} ...", file=sys.stderr, flush=True)
        dry = median_run([*sync, "--dry-run", "--results", str(dry_results)], repeat)

    rerun = Run(
        wall=statistics.median(r.wall for r in reruns),
        peak_rss_mib=statistics.median(r.peak_rss_mib for r in reruns),
    )
    extra = max(sent) - 1  # every run checks the credentials once: GET /api/v1/accounts/region
    speed = rows / rerun.wall / ROWS_PER_SECOND_TARGET
    rss = rerun.peak_rss_mib / dry.peak_rss_mib
    measured = table(
        ["run", "rows", "wall s", "rows/s", "peak RSS MiB", "requests"],
        [
            [
                "populate: --state --batch --rate 0",
                rows,
                populate.wall,
                rows / populate.wall,
                populate.peak_rss_mib,
                "",
            ],
            [
                "re-run, unchanged: --state --fresh",
                rows,
                rerun.wall,
                rows / rerun.wall,
                rerun.peak_rss_mib,
                max(sent),
            ],
            ["dry run: --dry-run", rows, dry.wall, rows / dry.wall, dry.peak_rss_mib, 0],
        ],
    )
    ratios = table(
        ["goal", "measured", "verdict"],
        [
            ["requests beyond the credentials check = 0", extra, "met" if extra == 0 else "MISSED"],
            [
                f"re-run rows/s / {ROWS_PER_SECOND_TARGET:,} target",
                f"{speed:.2f}x",
                "met" if speed >= 1 else "below",
            ],
            [
                f"re-run RSS / dry-run RSS (target <= {STATE_RSS_TARGET}x)",
                f"{rss:.2f}x",
                "met" if rss <= STATE_RSS_TARGET else "above",
            ],
        ],
    )
    note = (
        "A nightly re-run of a file that did not change: the state (`--state`, SQLite) was"
        " populated by one batch-mode run against the simulator (its own process, latency 0),"
        " then `python -m bulksync sync FILE --state S --quiet --results R --fresh` runs again"
        f" (median of {repeat}, each in a fresh process; wall time includes interpreter start-up,"
        " imports and fingerprinting the input), beside a dry run of the same file. Requests are"
        " counted by the simulator; each run makes one credentials check before any row."
    )
    return ["## state\n\n" + note, measured, ratios]


# --- adaptive rate: a workspace limit below --rate, and one that changes ----------------------

ADAPTIVE_CEILING = 100  # --rate given to bulksync (its default)
GOODPUT_TARGET = 0.90  # accepted rows/s over the simulator's limit, when the limit is below --rate
LIMITED_SHARE_TARGET = 0.05  # 429 answers over all requests the simulator received
SCHEDULE_WALL_TARGET = 1.2  # wall time over a client that knew the changing limit
LOW_LIMIT = 60  # scenario 1: the workspace's real limit, below --rate
# Scenario 2: (seconds after the first request, limit) pairs, as --limit-schedule takes them;
# --rate-limit ADAPTIVE_CEILING holds before the first.
SCHEDULE = ((10.0, 30.0), (25.0, 100.0))


def ideal_seconds(
    requests: int, ceiling: float, limit: float | None, schedule: Sequence[tuple[float, float]]
) -> float:
    """Seconds a client that knew the limit in force at every moment needs for `requests`: it
    sends at min(ceiling, limit), `limit` until the schedule's first time, then each scheduled
    limit in turn."""
    t, left = 0.0, float(requests)
    for until, following in [*schedule, (float("inf"), None)]:
        speed = ceiling if limit is None else min(ceiling, limit)
        if left <= speed * (until - t):
            return t + left / speed
        left -= speed * (until - t)
        t, limit = until, following
    raise AssertionError("unreachable: the last step never ends")


def sync_cli(path: Path, url: str, *options: str) -> dict[str, Any]:
    """`python -m bulksync sync PATH --quiet --json --results TMP OPTIONS` in a child process,
    aimed at `url`: its JSON summary. BenchError unless every row ended ok."""
    with tempfile.TemporaryDirectory(prefix="bulksync-bench-") as tmp:
        argv = [sys.executable, "-m", "bulksync", "sync", str(path), "--quiet", "--json"]
        argv += ["--results", str(Path(tmp) / "results.jsonl"), *options]
        env = {**os.environ, "CUSTOMERIO_SITE_ID": SITE_ID, "CUSTOMERIO_API_KEY": API_KEY}
        env["BULKSYNC_BASE_URL"] = url
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} exited {done.returncode}; stderr:\n{done.stderr}")
    summary: dict[str, Any] = json.loads(done.stdout)
    if summary["failed"] or summary["invalid"] or summary["ok"] != _data_rows(path):
        raise BenchError(f"bulksync sync {path.name}: not every row ended ok: {summary}")
    return summary


def bench_adaptive(quick: bool) -> list[str]:
    """PUT per row at --rate 100 against a workspace limit below it (60/s), one that drops to
    30/s and recovers, and none: accepted rows/s, share of 429s, peak second."""
    low_rows, schedule_rows, free_rows = (600, 1_500, 600) if quick else (2_400, 6_000, 2_400)
    # --quick shrinks the schedule with the rows, so its figures are a smoke run only: the
    # adaptive rate takes as many seconds to grow back whatever the schedule's length.
    scale = schedule_rows / 6_000
    schedule = tuple((after * scale, limit) for after, limit in SCHEDULE)
    schedule_text = ",".join(f"{after:g}:{limit:g}" for after, limit in schedule)
    scenarios = [
        ("limit below --rate", ("--rate-limit", str(LOW_LIMIT)), low_rows),
        (
            "limit drops and recovers",
            ("--rate-limit", str(ADAPTIVE_CEILING), "--limit-schedule", schedule_text),
            schedule_rows,
        ),
        ("no contention", (), free_rows),
    ]
    measured, goals = [], []
    for name, options, rows in scenarios:
        path = data_file("csv", rows)
        print(f"adaptive: {name}, {rows:,} rows ...", file=sys.stderr, flush=True)
        with simulator(*options) as url:  # a fresh one each: its own limiter, peak and clock
            summary = sync_cli(path, url, "--rate", str(ADAPTIVE_CEILING))
            stats = simulator_stats(url)
        if stats["accepted"] != rows:
            raise BenchError(f"{name}: the simulator accepted {stats['accepted']:,} of {rows:,}")
        span, limited = stats["span_seconds"], stats["statuses"].get("429", 0)
        if summary["rate_limited"] != limited:
            raise BenchError(
                f"{name}: bulksync counted {summary['rate_limited']:,} 429s,"
                f" the simulator answered {limited:,}"
            )
        goodput, share, peak = rows / span, limited / stats["requests"], stats["peak_per_second"]
        measured.append(
            [
                name,
                " ".join(options) or "(no limit)",
                rows,
                stats["requests"],
                limited,
                span,
                summary["elapsed_seconds"],
                goodput,
                f"{peak} / {ADAPTIVE_CEILING}: "
                + ("never above" if peak <= ADAPTIVE_CEILING else "ABOVE"),
            ]
        )
        if name == "limit below --rate":
            ratio = goodput / LOW_LIMIT
            goals.append(
                [
                    name,
                    f"accepted rows/s / limit {LOW_LIMIT}",
                    f"{ratio:.2f}",
                    f">= {GOODPUT_TARGET}",
                    "met" if ratio >= GOODPUT_TARGET else "MISSED",
                ]
            )
        elif name == "limit drops and recovers":
            # The simulator's clock starts at the first request: the credentials check.
            ideal = ideal_seconds(
                stats["requests"] - limited, ADAPTIVE_CEILING, ADAPTIVE_CEILING, schedule
            )
            ratio = span / ideal
            goals.append(
                [
                    name,
                    f"wall / ideal {ideal:.1f} s",
                    f"{ratio:.2f}",
                    f"<= {SCHEDULE_WALL_TARGET}",
                    "met" if ratio <= SCHEDULE_WALL_TARGET else "MISSED",
                ]
            )
        else:
            ratio = goodput / ADAPTIVE_CEILING
            goals.append(
                [
                    name,
                    f"accepted rows/s / --rate {ADAPTIVE_CEILING}",
                    f"{ratio:.2f}",
                    f">= {SATURATION_TARGET}",
                    "met" if ratio >= SATURATION_TARGET else "MISSED",
                ]
            )
        target = 0 if name == "no contention" else LIMITED_SHARE_TARGET
        goals.append(
            [
                name,
                "429s / requests received",
                f"{share:.1%}",
                "0" if target == 0 else f"<= {target:.0%}",
                "met" if share <= target else "MISSED",
            ]
        )

    note = (
        f"`--rate` ({ADAPTIVE_CEILING}, the default) is a ceiling: on a 429 bulksync cuts its rate"
        " and grows it back (AIMD, `bulksync/policy.py` AdaptiveRate), for a workspace whose"
        " limit is lower because other traffic shares it. Each scenario runs"
        f" `python -m bulksync sync FILE --quiet --json --results TMP --rate {ADAPTIVE_CEILING}`"
        " (one PUT per row, a generated CSV with distinct ids) in a fresh process against a fresh"
        " simulator (`bulksync fake-server OPTIONS`, its own process, latency 0, 429s without"
        " `Retry-After`). Its `--rate-limit N` admits N requests in any sliding second, counting"
        " admitted requests only; `--limit-schedule T:N,...` changes N at T seconds after the"
        " first request. Span is the simulator's, first request (the credentials check) to"
        " last; accepted rows/s is rows / span; client s is bulksync's own elapsed time (with"
        " reading the input). The ideal wall time is a client that knew the limit: it sends at"
        f" min(--rate, limit) under schedule `{schedule_text}`, its requests being the rows and"
        " the credentials check. The peak second is the simulator's most arrivals in any sliding"
        " second, refused ones included."
    )
    if quick:
        note += (
            f" **--quick**: fewer rows and the schedule shrunk to {scale:g}x its times; the"
            " adaptive rate needs the same seconds to grow back whatever the schedule, so these"
            " figures are a smoke run, not comparable to a full run."
        )
    blocks = ["## adaptive\n\n" + note]
    blocks.append(
        table(
            [
                "scenario",
                "simulator",
                "rows",
                "requests",
                "429s",
                "span s",
                "client s",
                "accepted rows/s",
                "peak second / --rate",
            ],
            measured,
        )
    )
    blocks.append(table(["scenario", "ratio", "measured", "goal", "verdict"], goals))
    return blocks


# --- memory: bounded by bytes, not by columns ----------------------------------------------

MEMORY_RATIO_TARGET = 1.5  # peak RSS of a 300-column file over a 10-column file of the same size
BOMB_RSS_TARGET_MIB = 600  # peak RSS refusing 1 GiB of zeros, gzipped
_WIDE_POOL = 97  # distinct values per column; cell (i, j) is pool[j][(i * 7 + j) % 97]


def wide_file(columns: int, megabytes: int) -> Path:
    """bench/data/wide-COLUMNScols-MBmb.csv: `columns` columns (id, email, then properties of
    mixed shapes: integers, decimals, words, booleans, dates, empty cells), rows until the file
    holds `megabytes` MB. The cells follow one distribution whatever `columns`, so two such files
    of the same size hold about the same number of cells and bytes: only their shape differs."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"wide-{columns}cols-{megabytes}mb.csv"
    size = megabytes * 1_000_000
    if path.exists() and size <= path.stat().st_size < size * 1.01:
        return path
    print(f"generating {path.relative_to(ROOT)} ...", file=sys.stderr, flush=True)
    words = ["free", "pro", "team", "enterprise", "Lisbon", "Lagos", "Osaka", "Zürich", "yes"]
    pools: list[list[str]] = []
    for j in range(columns - 2):
        shape = j % 6
        pool = []
        for k in range(_WIDE_POOL):
            n = (k * 7919 + j * 104_729) % 1_000_003
            pool.append(
                [
                    str(n),
                    f"{n / 97:.2f}",
                    words[n % len(words)] + str(n % 100),
                    "true" if n % 2 else "false",
                    f"20{n % 25:02d}-{n % 12 + 1:02d}-{n % 28 + 1:02d}",
                    "" if n % 3 else f"note {n % 1000}",
                ][shape]
            )
        pools.append(pool)
    header = ["id", "email", *(f"prop_{j:03d}" for j in range(columns - 2))]
    tmp = path.with_name(f".{path.stem}.tmp.csv")
    written, first = 0, 1
    with tmp.open("wb") as f:
        f.write((",".join(header) + "\n").encode())
        while written < size:
            block = []
            for i in range(first, first + 100):
                cells = [pool[(i * 7 + j) % _WIDE_POOL] for j, pool in enumerate(pools)]
                block.append(f"cust-{i},user{i}@example.com," + ",".join(cells) + "\n")
            data = "".join(block).encode()
            f.write(data)
            written += len(data)
            first += 100
    tmp.replace(path)
    return path


def zeros_gz(gib: int = 1) -> Path:
    """bench/data/zeros-GIBgib.csv.gz: `gib` GiB of NUL bytes, gzipped at level 9 while
    streaming (about 1 MB per GiB): one 'line' a billion characters long."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"zeros-{gib}gib.csv.gz"
    if path.exists():
        return path
    print(f"generating {path.relative_to(ROOT)} ...", file=sys.stderr, flush=True)
    tmp = path.with_name(f".{path.name}.tmp")
    block = bytes(1 << 20)
    with gzip.open(tmp, "wb", compresslevel=9) as f:
        for _ in range(gib * 1024):
            f.write(block)
    tmp.replace(path)
    return path


def _measure_stderr(argv: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """As measure(), whatever the exit code: {"wall", "rc", "maxrss_kib", "stderr"}."""
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, **env} if env is not None else None,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def bench_memory(quick: bool) -> list[str]:
    """Peak RSS of a 300-column CSV over a 10-column CSV of the same byte size, in a dry run, a
    single-row send and a batch send (goal <= 1.5x each); a 1 GiB-of-zeros .gz refused with exit
    2, one line, peak RSS <= 600 MB."""
    megabytes = 20 if quick else 100
    narrow, wide = wide_file(10, megabytes), wide_file(300, megabytes)
    bomb = zeros_gz(1)
    files = {10: narrow, 300: wide}
    rows = {c: _data_rows(p) for c, p in files.items()}
    # The dry runs read both files whole. Sending every row would take minutes (the 10-column
    # file has over a million): the sends read a limited number of rows, each more than a
    # chunk of the reader before the cap on cells (20,000 rows whatever the width), so that
    # memory is steady and that reader's figures would show; see the note.
    limits: dict[str, dict[int, int | None]] = {
        "dry run": {10: None, 300: None},
        "single (--rate 0)": {10: min(rows[10], 60_000), 300: min(rows[300], 25_000)},
        "batch (--rate 0)": {10: min(rows[10], 200_000), 300: min(rows[300], 30_000)},
    }
    table_rows: list[list[object]] = []
    ratios: list[list[object]] = []
    env = {"CUSTOMERIO_SITE_ID": SITE_ID, "CUSTOMERIO_API_KEY": API_KEY}
    with tempfile.TemporaryDirectory(prefix="bulksync-bench-") as tmp, simulator() as url:
        env["BULKSYNC_BASE_URL"] = url
        results = Path(tmp) / "results.jsonl"
        for mode, limit_of in limits.items():
            peaks: dict[int, float] = {}
            for columns, path in files.items():
                argv = [sys.executable, "-m", "bulksync", "sync", str(path), "--quiet"]
                argv += ["--results", str(results), "--fresh"]
                if mode == "dry run":
                    argv.append("--dry-run")
                else:
                    argv += ["--rate", "0"] + (["--batch"] if mode.startswith("batch") else [])
                limit = limit_of[columns]
                if limit is not None:
                    argv += ["--limit", str(limit)]
                print(f"memory: {mode}, {columns} columns ...", file=sys.stderr, flush=True)
                run = measure(argv, env=env)
                done = limit or rows[columns]
                # Outcome lines: not the header, nor the end line of an input read whole.
                written = results.read_bytes().count(b'\n{"row":')
                if written != done:
                    raise BenchError(f"{mode}, {columns} columns: {written:,} of {done:,} rows")
                results.unlink()
                peaks[columns] = run.peak_rss_mib
                table_rows.append(
                    [
                        mode,
                        columns,
                        done,
                        done * path.stat().st_size // rows[columns] / 1e6,
                        run.wall,
                        run.peak_rss_mib,
                    ]
                )
            ratio = peaks[300] / peaks[10]
            verdict = "met" if ratio <= MEMORY_RATIO_TARGET else "NOT met"
            ratios.append([mode, f"{ratio:.2f}x", f"<= {MEMORY_RATIO_TARGET}x", verdict])

        print("memory: 1 GiB of zeros, gzipped ...", file=sys.stderr, flush=True)
        argv = [sys.executable, "-m", "bulksync", "sync", str(bomb), "--dry-run", "--quiet"]
        got = _measure_stderr([*argv, "--results", str(results)], env=env)
    bomb_mib = got["maxrss_kib"] / 1024
    stderr_lines = got["stderr"].strip().splitlines()
    bomb_ok = got["rc"] == 2 and len(stderr_lines) == 1 and bomb_mib <= BOMB_RSS_TARGET_MIB
    blocks = [
        "## memory\n\nPeak RSS (ru_maxrss of a fresh `python -m bulksync sync FILE --quiet`"
        f" process) for two generated CSV files of {megabytes} MB each, one of 10 columns"
        f" ({rows[10]:,} rows) and one of 300 ({rows[300]:,} rows), their cells drawn from one"
        " distribution (bench/data/wide-*.csv). Sends go to the simulator, in its own process,"
        " with --rate 0. The dry runs read both files whole; the sends read the rows shown"
        " (`--limit`), at least three chunks of the 10-column file (20,000 rows each) and more"
        " than 20,000 rows of the 300-column one: a chunk's memory is reached by then, and"
        " reading more of the 10-column file only adds its rows' per-row bookkeeping, so the"
        " ratio errs on the high side. Batch mode's figures are dominated by the batches in"
        " flight (64 workers at --rate 0, each with up to 1,000 rows or 500,000 bytes).",
        table(["mode", "columns", "rows", "MB read", "wall s", "peak RSS MiB"], table_rows),
        table(["mode", "RSS 300 columns / RSS 10 columns", "goal", "verdict"], ratios),
        f"### 1 GiB of zeros, gzipped ({bomb.stat().st_size:,} bytes)",
        table(
            [
                "exit code (goal 2)",
                "stderr lines (goal 1)",
                "wall s",
                f"peak RSS MiB (goal <= {BOMB_RSS_TARGET_MIB})",
                "verdict",
            ],
            [
                [
                    got["rc"],
                    len(stderr_lines),
                    got["wall"],
                    bomb_mib,
                    "met" if bomb_ok else "NOT met",
                ]
            ],
        ),
        "stderr: `"
        + (stderr_lines[0] if stderr_lines else "")
        + "`"
        + (f" (and {len(stderr_lines) - 1} more lines)" if len(stderr_lines) > 1 else ""),
    ]
    return blocks


# --- startup: how long a command takes before it does anything --------------------------------

STARTUP_RATIO_TARGET = 3.0  # whole-process wall time over `python -c "import click"`


def bench_startup(quick: bool) -> list[str]:
    """Whole-process wall time of `bulksync --help`, `bulksync sync --help` and `bulksync check`
    (against the simulator), each over `python -c "import click"` measured in the same rounds:
    goal <= 3x each."""
    rounds = 3 if quick else 7
    script = Path(sys.executable).with_name("bulksync")  # the console script pip installed
    bulksync = [str(script)] if script.exists() else [sys.executable, "-m", "bulksync"]
    shown = "bulksync" if script.exists() else "python -m bulksync"
    reference = 'python -c "import click"'
    commands: dict[str, list[str]] = {
        reference: [sys.executable, "-c", "import click"],
        'python -c "import cloup"': [sys.executable, "-c", "import cloup"],
        'python -c "import aiohttp"': [sys.executable, "-c", "import aiohttp"],
        f"{shown} --help": [*bulksync, "--help"],
        f"{shown} sync --help": [*bulksync, "sync", "--help"],
        f"{shown} check": [*bulksync, "check"],
    }
    goals = list(commands)[3:]
    walls: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="bulksync-bench-") as tmp, simulator() as url:
        # Bytecode as an installed package has it: cached (pip compiles on install), whatever
        # PYTHONDONTWRITEBYTECODE says here; in a private cache, the same for every command.
        env = {"PYTHONPYCACHEPREFIX": tmp, "PYTHONDONTWRITEBYTECODE": ""}
        env |= {"CUSTOMERIO_SITE_ID": SITE_ID, "CUSTOMERIO_API_KEY": API_KEY}
        env["BULKSYNC_BASE_URL"] = url
        for argv in commands.values():
            measure(argv, env=env)  # a first run fills the bytecode cache
        # Round-robin, so a busy moment of a shared machine slows every command alike.
        for i in range(rounds):
            print(f"startup: round {i + 1} of {rounds} ...", file=sys.stderr, flush=True)
            for name, argv in commands.items():
                walls[name].append(measure(argv, env=env).wall)
    best = {name: min(times) for name, times in walls.items()}
    measured = table(
        ["command", "best ms", "median ms", f"best / {reference}"],
        [
            [
                f"`{name}`",
                best[name] * 1000,
                statistics.median(walls[name]) * 1000,
                f"{best[name] / best[reference]:.2f}x",
            ]
            for name in commands
        ],
    )
    verdicts = []
    for name in goals:
        ratio = best[name] / best[reference]
        verdicts.append(
            [
                f"`{name}`",
                f"{ratio:.2f}x",
                f"<= {STARTUP_RATIO_TARGET:g}x",
                "met" if ratio <= STARTUP_RATIO_TARGET else "not met",
            ]
        )
    note = (
        f"Wall time of a whole process, start to exit (best and median of {rounds} rounds; each"
        " round runs every command once, in turn), after one untimed run of each fills a"
        " private bytecode cache (as an installed package has its .pyc). `bulksync check`"
        " checks the credentials against the simulator (its own process, latency 0): one"
        " GET /api/v1/accounts/region over loopback. For information: `import cloup`, which"
        " the command group is built with, and `import aiohttp`, the sender's HTTP client,"
        " which `bulksync check` no longer imports (it sends its one request with http.client)."
    )
    return [
        "## startup\n\n" + note,
        measured,
        table([f"command / {reference}", "measured", "goal", "verdict"], verdicts),
    ]


# --- the speed goals, each a ratio to a reference measured in the same run --------------------

DRY_RUN_RATIO_GOAL = 2.5  # dry run, whole process / pandas reading the same file, whole process
RERUN_RATIO_GOAL = 2.0  # unchanged --state re-run / the same reference
BATCH_SPEED_GOAL = 0.8  # batch send rows/s / dry run rows/s
GOAL_ROWS = 300_000


def bench_goals(quick: bool) -> list[str]:
    """The speed goals of a whole process against pandas reading the same file (whole process,
    imports included), all in this run: a dry run (CSV and JSONL), an unchanged re-run with
    --state, and a batch send against the simulator (latency 0, no cap) against the dry run."""
    rows = 30_000 if quick else GOAL_ROWS
    repeat = 1 if quick else 3
    python = sys.executable
    readers = {
        "csv": "import pandas, sys; pandas.read_csv(sys.argv[1], dtype=str, keep_default_na=False)",
        "jsonl": "import pandas, sys; pandas.read_json(sys.argv[1], lines=True)",
    }
    figures: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="bulksync-bench-") as tmp, simulator() as url:
        env = {"CUSTOMERIO_SITE_ID": SITE_ID, "CUSTOMERIO_API_KEY": API_KEY}
        env["BULKSYNC_BASE_URL"] = url
        results, state = Path(tmp) / "results.jsonl", Path(tmp) / "state.db"
        for fmt, reader in readers.items():
            path = data_file(fmt, rows)
            sync = [
                python,
                "-m",
                "bulksync",
                "sync",
                str(path),
                "--quiet",
                "--results",
                str(results),
            ]
            print(f"goals: {fmt} {rows:,} rows x{repeat} ...", file=sys.stderr, flush=True)
            figures[f"reference {fmt}"] = median_run([python, "-c", reader, str(path)], repeat)
            figures[f"dry run {fmt}"] = median_run([*sync, "--dry-run"], repeat)
            if fmt != "csv":
                continue
            batch = [*sync, "--batch", "--rate", "0", "--fresh"]
            figures["batch, filling the state"] = median_run(
                [*batch, "--state", str(state)], 1, env=env
            )
            rerun = [*sync, "--state", str(state), "--fresh"]
            figures["re-run csv"] = median_run(rerun, repeat, env=env)
            before = simulator_stats(url)["cpu_seconds"]
            figures["batch (no state) csv"] = median_run(batch, repeat, env=env)
            simulator_cpu = (simulator_stats(url)["cpu_seconds"] - before) / repeat
    ratio = {
        fmt: figures[f"dry run {fmt}"].wall / figures[f"reference {fmt}"].wall for fmt in readers
    }
    rerun = figures["re-run csv"].wall / figures["reference csv"].wall
    batch_speed = figures["dry run csv"].wall / figures["batch (no state) csv"].wall

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    measured = table(
        ["command", "rows", "wall s", "rows/s", "CPU s", "peak RSS MiB"],
        [
            [name, rows, r.wall, round(rows / r.wall), r.cpu, r.peak_rss_mib]
            for name, r in figures.items()
        ],
    )
    goals = table(
        ["goal", "measured", "goal", "verdict"],
        [
            *(
                [f"dry run {fmt} / pandas reading it", f"{ratio[fmt]:.2f}x",
                 f"<= {DRY_RUN_RATIO_GOAL}x", verdict(ratio[fmt] <= DRY_RUN_RATIO_GOAL)]
                for fmt in readers
            ),
            ["unchanged re-run --state / pandas.read_csv", f"{rerun:.2f}x",
             f"<= {RERUN_RATIO_GOAL}x", verdict(rerun <= RERUN_RATIO_GOAL)],
            ["batch send rows/s / dry run rows/s", f"{batch_speed:.2f}x",
             f">= {BATCH_SPEED_GOAL}x", verdict(batch_speed >= BATCH_SPEED_GOAL)],
        ],
    )  # fmt: skip
    note = (
        f"Whole processes, each the median of {repeat} fresh run(s), on generated files of"
        f" {rows:,} people (bench/gen.py: ISO dates with offsets, accented names, zip codes)."
        ' References: `python -c "import pandas; pandas.read_csv(F, dtype=str,'
        ' keep_default_na=False)"` for CSV, `pandas.read_json(F, lines=True)` for JSONL.'
        " bulksync: `python -m bulksync sync F --quiet` with `--dry-run`; with `--batch --rate 0`"
        " against the simulator in its own process (latency 0), once with `--state S` to fill"
        " the state, then the unchanged re-run `--state S --fresh` (nothing sent), and the batch"
        " send without the state for the batch goal. The other goals of issue 15 are in their"
        " sections: start-up (`startup`), CPU per row against the official client (`send`),"
        " flat memory (`dryrun`, `memory`). CPU s: the command's own CPU seconds (user and"
        " system, all its threads). The simulator answering the batch sends spent"
        f" {simulator_cpu:.2f} CPU seconds a run on the same machine's CPUs, which a batch run"
        " shares with it while the dry run has them to itself."
    )
    return ["## goals\n\n" + note, measured, goals]


SECTIONS: dict[str, Callable[[bool], list[str]]] = {
    "dryrun": bench_dryrun,
    "send": bench_send,
    "batch": bench_batch,
    "state": bench_state,
    "adaptive": bench_adaptive,
    "kinds": bench_kinds,
    "memory": bench_memory,
    "startup": bench_startup,
    "goals": bench_goals,
}


# --- driver ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _header(argv: Sequence[str], commit: str) -> str:
    import pandas as pd

    command = shlex.join(["python", "bench/run.py", *argv])
    return "\n".join(
        [
            "# Benchmarks",
            "",
            "Generated by `make bench` (`bench/run.py`): do not edit by hand. Machines are shared"
            " and noisy: compare the ratios, read absolute figures as indications only.",
            "",
            f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {os.cpu_count()} CPUs ({_cpu_model()}), {platform.system()}"
            f" {platform.release()}",
            f"- Python {platform.python_version()}, pandas {pd.__version__}",
            f"- bulksync: commit {commit}",
            f"- command: `{command}`",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SECTIONS), help="run this section only")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)

    names = [args.only] if args.only else list(SECTIONS)
    commit, _ = code_state()
    # Every process measured imports bulksync as an installed copy does: from its bytecode,
    # not compiled again from source each time (as it would be under PYTHONDONTWRITEBYTECODE,
    # while pandas' and click's come from the bytecode their install wrote).
    compileall.compile_dir(ROOT / "bulksync", quiet=1)
    blocks: list[str] = []
    failed = False
    for name in names:
        started = time.monotonic()
        before = code_state()
        try:
            section = SECTIONS[name](args.quick)
        except BenchError as exc:
            failed = True
            section = [f"## {name}\n\nFAILED: {exc}"]
        section.append(f"_section took {time.monotonic() - started:.0f} s_")
        after = code_state()
        if after != before:
            failed = True
            section.append(
                f"**WARNING: bulksync/ changed while this section ran ({before[0]} ->"
                f" {after[0]}): its figures mix two versions of the code. Run it again.**"
            )
        print("\n\n".join(section) + "\n", flush=True)
        blocks += section

    if args.out:
        args.out.write_text(_header(raw_argv, commit) + "\n\n" + "\n\n".join(blocks) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
