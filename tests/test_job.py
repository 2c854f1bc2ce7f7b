"""`bulksync run JOB.toml`, end to end: a job's steps in order against the simulator, kill -9 and
resume, the job checked whole before any request, the next night's run, dry runs, --json, exit
codes, one run at a time, paths relative to the job file, and the mistakes a new user makes.

Runs that must be killed, or must run at the same time, are real `python -m bulksync` processes
(tests/test_resume.py's helpers); the rest go through click's CliRunner in this process (with
`api_env`, the environment a user sets; `fake = api_env` names its simulator). The simulator runs
in a background thread of this process.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main
from bulksync.fake import Recorded

from .conftest import API_KEY, ROOT, ServerThread
from .test_resume import (
    Proc,
    assert_every_row_ok_once,
    cli_env,
    command,
    count_outcomes,
    ident,
    people,
    read_lines,
    sha256,
    start_cli,
    wait_until,
)

REGION_PATH = "/api/v1/accounts/region"  # the credentials check, once per step that runs
ENTITY_PATH = "/api/v2/entity"  # an object sent alone
T_2024_05_01_NOON = 1714564800

# --- helpers ---------------------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def companies(n: int, size: int = 10) -> list[dict[str, str]]:
    return [
        {"company_id": f"co-{i}", "name": f"Company {i}", "employees": str(i * size)}
        for i in range(1, n + 1)
    ]


def purchases(n: int, event: str = "purchase") -> list[dict[str, str]]:
    return [
        {"id": ident(i), "event": event, "timestamp": "2024-05-01T12:00:00Z", "total": f"{i}.5"}
        for i in range(1, n + 1)
    ]


# Three steps: objects, people, events. Sending settings shared; rate = 0: no cap.
THREE_STEPS = """\
rate = 0
concurrency = 4
max_retries = 1

[[steps]]
name = "companies"
input = "companies.csv"
kind = "objects"
object_type_id = "1"
object_id_column = "company_id"
[steps.columns]
employees = { type = "int" }

[[steps]]
name = "people"
input = "people.csv"

[[steps]]
name = "events"
input = "events.csv"
kind = "events"
"""


def three_step_job(
    folder: Path, n_companies: int = 10, n_people: int = 20, n_events: int = 10, text: str = ""
) -> Path:
    """The job THREE_STEPS (or `text`) in `folder`, with its three inputs."""
    write_rows(folder / "companies.csv", companies(n_companies))
    write_rows(folder / "people.csv", people(n_people))
    write_rows(folder / "events.csv", purchases(n_events))
    job = folder / "nightly.toml"
    job.write_text(text or THREE_STEPS, encoding="utf-8")
    return job


def run(url: str, *args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The CLI to completion in its own process, in `cwd`."""
    return subprocess.run(
        command(*args),
        env=cli_env(url),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def invoke(*args: str | Path) -> Result:
    """The CLI in this process (faster); the environment is the test's (`api_env`)."""
    return CliRunner().invoke(main, [str(arg) for arg in args])


def run_here(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`invoke`, its result shaped as `run`'s."""
    result = invoke(*args)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def printed_json(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout
    summary = orjson.loads(lines[0])
    assert isinstance(summary, dict)
    return summary


def statuses(summary: dict[str, Any]) -> list[str]:
    return [step["status"] for step in summary["steps"]]


def requests(fake: ServerThread) -> list[Recorded]:
    return fake.snapshot()[0]


def checks(fake: ServerThread) -> int:
    return sum(rec.path == REGION_PATH for rec in requests(fake))


def record(results_dir: Path) -> dict[str, Any]:
    data = orjson.loads((results_dir / "job.json").read_bytes())
    assert isinstance(data, dict)
    return data


# --- 1. kill -9 mid-step, then the same command ------------------------------------------------


def test_kill_9_in_step_2_then_the_same_command_resumes_the_job(
    fake: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    n = 2000
    job = three_step_job(tmp_path, n_companies=20, n_people=n, n_events=30)
    results = tmp_path / "nightly-results"  # the default: beside the job file
    people_out = results / "people.results.jsonl"
    fake.fake.config.latency = 0.01  # 4 workers: about 400 rows/s, so the kill lands mid-step
    first = start_cli(fake.url, tmp_path / "first", "run", job, "--quiet")
    procs.append(first)
    wait_until(lambda: count_outcomes(people_out) >= 150, first, what="150 outcomes of step 2")
    first.popen.send_signal(signal.SIGKILL)
    first.wait(10)
    killed_at = time.monotonic()

    # The record, replaced whole at each change, says where the job was.
    at_kill = record(results)
    assert at_kill["job"] == str(job.resolve())
    assert at_kill["started"] == ["companies", "people"]
    assert list(at_kill["finished"]) == ["companies"]
    assert at_kill["finished"]["companies"]["ok"] == 20
    assert at_kill["finished_at"] is None
    _, company_lines = read_lines(results / "companies.results.jsonl")
    assert [line["status"] for line in company_lines] == ["ok"] * 20
    _, lines = read_lines(people_out, allow_torn=True)
    done = {line["row"] for line in lines}
    assert len(done) == len(lines), "a row has two outcomes"
    assert 150 <= len(done) < n, len(done)
    assert not (results / "events.results.jsonl").exists()
    assert checks(fake) == 2

    fake.fake.config.latency = 0.0
    result = run(fake.url, "run", job, "--json")
    assert result.returncode == 0, result.stderr
    summary = printed_json(result.stdout)
    assert statuses(summary) == ["resumed", "done", "done"]
    assert summary["exit_code"] == 0
    counts = [
        {k: step[k] for k in ("rows", "ok", "failed", "invalid", "exit_code")}
        for step in summary["steps"]
    ]
    assert counts == [
        {"rows": 20, "ok": 20, "failed": 0, "invalid": 0, "exit_code": 0},
        {"rows": n, "ok": n, "failed": 0, "invalid": 0, "exit_code": 0},
        {"rows": 30, "ok": 30, "failed": 0, "invalid": 0, "exit_code": 0},
    ]
    assert [step["results"] for step in summary["steps"]] == [
        str(results / f"{name}.results.jsonl") for name in ("companies", "people", "events")
    ]

    sent = requests(fake)
    # Step 1 was not run again: no request for an object after the kill, each object once.
    assert [r for r in sent if r.path == ENTITY_PATH and r.time > killed_at] == []
    assert fake.operations()["object identify"] == 20
    assert fake.fake.object_attributes("1", "co-7") == {"name": "Company 7", "employees": 70}
    # Step 2: a row with an outcome at the kill was never sent again; only the rows in flight
    # then (at most one per worker) may have been sent twice.
    puts = Counter(r.identifier for r in sent if r.method == "PUT")
    assert set(puts) == {ident(row) for row in range(1, n + 1)}
    assert all(puts[ident(row)] == 1 for row in done)
    twice = {identifier for identifier, count in puts.items() if count > 1}
    assert max(puts.values()) <= 2 and len(twice) <= 4, twice
    assert_every_row_ok_once(people_out, n)
    accepted = fake.fake.accepted()
    assert all(accepted[ident(i)][-1] == row for i, row in enumerate(people(n), start=1))
    # Step 3 ran once, after the kill.
    event_posts = [r for r in sent if r.path.endswith("/events")]
    assert len(event_posts) == 30 and all(r.time > killed_at for r in event_posts)
    assert fake.operations()["person event"] == 30
    event = fake.person(ident(30))
    assert event is not None
    assert [(e["name"], e["timestamp"], e["data"]) for e in event["events"]] == [
        ("purchase", T_2024_05_01_NOON, {"total": "30.5"})
    ]
    # One credentials check per step run: companies and people, then people and events.
    assert checks(fake) == 4
    finished = record(results)
    assert finished["started"] == ["companies", "people", "events"]
    assert finished["finished_at"] is not None


# --- 2. the whole job file checked before any request -----------------------------------------

STEP_3_OK = """\
[[steps]]
name = "events"
input = "events.csv"
kind = "events"
"""


@pytest.mark.parametrize(
    ("step_3", "files", "message"),
    [
        pytest.param(
            STEP_3_OK + 'evnt_column = "event"\n',
            {},
            r"nightly\.toml line 22: step 3 \(events\): evnt_column: unknown key; did you mean"
            r" 'event_column'\?",
            id="unknown-key",
        ),
        pytest.param(
            STEP_3_OK + '[steps.columns]\n"amount" = { type = "float" }\n',
            {},
            r"line 23\b.*amount",
            id="column-not-in-input",
        ),
        pytest.param(
            STEP_3_OK + 'mapping = "events.mapping.toml"\n',
            {"events.mapping.toml": 'kind = "events"\n\n[columns]\n"amount" = "amount"\n'},
            r"events\.mapping\.toml line 4\b.*amount",
            id="mapping-file-column-not-in-input",
        ),
        pytest.param(
            STEP_3_OK.replace("events.csv", "tonight/events.csv"),
            {},
            r"step events: input .*tonight/events\.csv: no such file",
            id="input-missing",
        ),
        pytest.param(
            STEP_3_OK + f'api_key = "{API_KEY}"\n',
            {},
            r"line 22: step 3 \(events\): api_key: credentials stay in the environment",
            id="credentials",
        ),
        pytest.param(
            STEP_3_OK.replace('kind = "events"', 'kind = "deletions"'),
            {},
            r"step events: --kind deletions cannot be undone; nothing was sent.*yes = true",
            id="irreversible-without-yes",
        ),
        pytest.param(
            STEP_3_OK.replace('kind = "events"', 'kind = "evnts"'),
            {},
            r"line 21: kind: 'evnts' must be one of",
            id="bad-kind",
        ),
        pytest.param(
            STEP_3_OK.replace('name = "events"', 'name = "people"'),
            {},
            r"line 19: name: two steps are named 'people'",
            id="duplicate-name",
        ),
        pytest.param(
            STEP_3_OK + 'mapping = "events.mapping.toml"\npreset = "klaviyo"\n',
            {"events.mapping.toml": 'kind = "events"\n'},
            r"line 23: step events: preset: give a step a mapping or a preset, not both",
            id="mapping-and-preset",
        ),
        pytest.param(
            STEP_3_OK + 'mapping = "maps/events.toml"\n',
            {},
            r"line 22: step events: mapping: .*maps/events\.toml: no such mapping file",
            id="mapping-missing",
        ),
        pytest.param(
            STEP_3_OK + 'preset = "hubspt"\n',
            {},
            r"line 22: step events: preset: 'hubspt': one of hubspot, klaviyo, mailchimp",
            id="unknown-preset",
        ),
        pytest.param(
            STEP_3_OK + "rate = -1\n",
            {},
            r"step events: rate -1\.0: must be > 0",
            id="negative-rate",
        ),
        pytest.param(
            STEP_3_OK + "state = true\n",
            {},
            r"line 22: step events: state: state = true needs a state_dir",
            id="state-without-state-dir",
        ),
        pytest.param(
            STEP_3_OK + "yes = 1\n",
            {},
            r"line 22: step 3 \(events\): yes: must be a bool, not 1",
            id="wrong-type",
        ),
    ],
)
def test_a_job_with_a_bad_step_3_sends_nothing_and_writes_nothing(
    api_env: ServerThread, tmp_path: Path, step_3: str, files: dict[str, str], message: str
) -> None:
    """Whatever is wrong in the last step, it is found before step 1 sends anything: no
    request at all (not even the credentials check), no results file, no record."""
    text = THREE_STEPS.replace(STEP_3_OK, step_3)
    assert text != THREE_STEPS
    job = three_step_job(tmp_path, text=text)
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    result = invoke("run", job)
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert str(job) in result.output
    assert "Traceback" not in result.output
    assert requests(api_env) == []
    assert not (tmp_path / "nightly-results" / "companies.results.jsonl").exists()
    assert not (tmp_path / "nightly-results" / "job.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rate = 10\n", r"no steps"),
        ("rate = 10\nsteps = []\n", r"line 2: steps: no steps"),
        ('site_id = "x"\n[[steps]]\nname = "a"\ninput = "people.csv"\n', r"line 1: job: site_id"),
        ("yes = true\n" + STEP_3_OK, r"line 1: job: yes: unknown key"),
        ('[[steps]]\nname = "a b"\ninput = "people.csv"\n', r"line 2: name: 'a b'"),
        ('[[steps]]\ninput = "people.csv"\n', r"step 1: no 'name'"),
        ('[[steps]]\nname = "a"\ninpt = "people.csv"\n', r"did you mean 'input'"),
        ('rate = "fast"\n' + STEP_3_OK, r"line 1: job: rate: must be a int or float"),
        ("[[steps]\n", r"not a valid TOML file"),
    ],
    ids=[
        "no-steps",
        "empty-steps",
        "credentials",
        "job-level-yes",
        "bad-name",
        "no-name",
        "typo",
        "rate-string",
        "not-toml",
    ],
)
def test_job_files_a_new_user_gets_wrong_are_refused_with_the_line(
    api_env: ServerThread, tmp_path: Path, text: str, message: str
) -> None:
    write_rows(tmp_path / "people.csv", people(3))
    write_rows(tmp_path / "events.csv", purchases(3))
    job = tmp_path / "job.toml"
    job.write_text(text, encoding="utf-8")
    result = invoke("run", job)
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output
    assert requests(api_env) == []
    assert not (tmp_path / "job-results").exists()


def test_missing_credentials_are_found_before_step_1(
    api_env: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not at step 1 as it starts, recorded as started: before anything."""
    monkeypatch.delenv("CUSTOMERIO_API_KEY")
    job = three_step_job(tmp_path)
    result = invoke("run", job)
    assert result.exit_code == 2, result.output
    assert "CUSTOMERIO_API_KEY not set" in result.output
    assert "step" not in result.output  # no summary table: the job never started
    assert requests(api_env) == []
    assert not (tmp_path / "nightly-results").exists()
    # A dry run needs no credentials.
    assert invoke("run", job, "--dry-run", "--quiet").exit_code == 0
    assert requests(api_env) == []


def test_irreversible_steps_run_with_yes_in_the_step_or_on_the_command_line(
    api_env: ServerThread, tmp_path: Path
) -> None:
    write_rows(tmp_path / "gone.csv", [{"id": "c1"}, {"id": "c2"}])
    text = '[[steps]]\nname = "erase"\ninput = "gone.csv"\nkind = "deletions"\nrate = 0\n'
    job = tmp_path / "erase.toml"
    job.write_text(text, encoding="utf-8")
    assert invoke("run", job).exit_code == 2
    assert requests(api_env) == []

    result = invoke("run", job, "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert [(r.method, r.path) for r in requests(api_env) if r.path != REGION_PATH] == [
        ("DELETE", "/api/v1/customers/c1"),
        ("DELETE", "/api/v1/customers/c2"),
    ]
    job.write_text(text + "yes = true\n", encoding="utf-8")
    result = invoke("run", job, "--json")
    assert result.exit_code == 0, result.output
    assert api_env.operations()["person delete"] == 4


# --- 3. the next night -------------------------------------------------------------------------


def test_after_a_finished_run_the_next_run_starts_every_step_over(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """Last night's job finished; tonight's files replace the inputs: every step starts over
    with a fresh results file, never "belongs to another input". With a state_dir, a step sends
    only what changed since last night; a step with state = false sends every row."""
    fake = api_env
    night_1 = people(30)
    write_rows(tmp_path / "people.csv", night_1)
    write_rows(tmp_path / "events.csv", purchases(10))
    job = tmp_path / "nightly.toml"
    job.write_text(
        textwrap.dedent(
            """\
            rate = 0
            batch = true
            batch_size = 7
            state_dir = "state"

            [[steps]]
            name = "people"
            input = "people.csv"

            [[steps]]
            name = "events"
            input = "events.csv"
            kind = "events"
            state = false
            """
        ),
        encoding="utf-8",
    )
    result = run_here("run", job, "--json")
    assert result.returncode == 0, result.stderr
    assert statuses(printed_json(result.stdout)) == ["done", "done"]
    assert (tmp_path / "state" / "people.state.sqlite").is_file()
    assert not (tmp_path / "state" / "events.state.sqlite").exists()
    fake.reset()

    # Tonight: rows 1-10 changed, 11-30 as they were, 31-40 new; other events.
    night_2 = people(40)
    for row in night_2[:10]:
        row["plan"] = "enterprise"
    write_rows(tmp_path / "people.csv", night_2)
    write_rows(tmp_path / "events.csv", purchases(12, event="refund"))
    result = run_here("run", job, "--json")
    assert result.returncode == 0, result.stderr
    assert "another input" not in result.stderr
    summary = printed_json(result.stdout)
    assert statuses(summary) == ["done", "done"]
    people_step, events_step = summary["steps"]
    assert (people_step["rows"], people_step["ok"], people_step["unchanged"]) == (40, 20, 20)
    assert (events_step["rows"], events_step["ok"]) == (12, 12)

    results = tmp_path / "nightly-results"
    for name, source in (("people", "people.csv"), ("events", "events.csv")):
        header, lines = read_lines(results / f"{name}.results.jsonl")
        assert header["sha256"] == sha256(tmp_path / source), "a fresh results file"
        assert sorted(line["row"] for line in lines) == list(range(1, len(lines) + 1))
    accepted = fake.fake.accepted()
    changed = [*range(1, 11), *range(31, 41)]
    assert sorted(accepted) == sorted(ident(i) for i in changed)
    assert all(accepted[ident(i)] == [night_2[i - 1]] for i in changed)
    assert fake.operations() == Counter({"person identify": 20, "person event": 12})
    assert fake.person(ident(12)) is not None
    assert fake.person(ident(12))["events"][0]["name"] == "refund"  # type: ignore[index]


def test_a_step_stopped_before_its_results_file_was_written_starts_over_on_resume(
    api_env: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    """Tonight's step 2 stops as it starts (here its input vanished while step 1 ran: the
    exporter was rewriting it), so its results file is still last night's. The record says the
    step started; the same command must not resume last night's file ("belongs to another
    input", or its rows taken as sent tonight): the step starts over."""
    fake = api_env
    job = three_step_job(tmp_path, n_companies=12)
    result = run_here("run", job, "--quiet")
    assert result.returncode == 0, result.stderr
    results = tmp_path / "nightly-results"
    assert record(results)["finished_at"] is not None

    tonight = people(25)
    for row in tonight:
        row["plan"] = "tonight"
    write_rows(tmp_path / "companies.csv", companies(12, size=100))
    mark = len(requests(fake))
    fake.fake.config.latency = 0.1  # step 1 takes a few tenths of a second
    proc = start_cli(fake.url, tmp_path / "second", "run", job)
    procs.append(proc)
    wait_until(lambda: len(requests(fake)) > mark + 1, proc, what="step 1 sending")
    (tmp_path / "people.csv").unlink()
    assert proc.wait(30) == 2, proc.stderr()
    assert "people.csv" in proc.stderr()
    assert re.search(r"people +people +stopped", proc.stdout()), proc.stdout()
    assert record(results)["started"] == ["companies", "people"]

    write_rows(tmp_path / "people.csv", tonight)
    fake.fake.config.latency = 0.0
    mark = len(requests(fake))
    result = run_here("run", job, "--json")
    assert result.returncode == 0, result.stderr
    assert statuses(printed_json(result.stdout)) == ["resumed", "done", "done"]
    header, _ = read_lines(results / "people.results.jsonl")
    assert header["sha256"] == sha256(tmp_path / "people.csv")
    assert_every_row_ok_once(results / "people.results.jsonl", 25)
    tonight_puts = [r for r in requests(fake)[mark:] if r.method == "PUT"]
    assert sorted(r.identifier or "" for r in tonight_puts) == sorted(
        ident(i) for i in range(1, 26)
    )
    assert all(r.body["plan"] == "tonight" for r in tonight_puts)


# --- 4. dry run, --json, failed rows, a step that stops -------------------------------------------


def refuse_credentials_after(fake: ServerThread, n: int) -> list[int]:
    """The simulator answers 401 to every request after the first `n` (deterministically: no
    watcher thread racing the client). Set the returned list's item to a large number to accept
    them again."""
    limit = [n]
    accept = fake.fake._auth_ok

    def auth_ok(request: Any) -> bool:
        # Called for each request before it is appended to the records.
        return len(fake.fake.requests) < limit[0] and accept(request)

    fake.fake._auth_ok = auth_ok  # type: ignore[method-assign]
    return limit


def test_a_step_stopped_with_exit_3_stops_the_job_a_dry_run_leaves_it_then_it_resumes(
    api_env: ServerThread, tmp_path: Path
) -> None:
    fake = api_env
    job = three_step_job(tmp_path, n_companies=10, n_people=20, n_events=10)
    results = tmp_path / "nightly-results"
    # Step 1: its credentials check and 10 objects. Step 2's credentials check is refused.
    limit = refuse_credentials_after(fake, 11)
    result = run_here("run", job)
    assert result.returncode == 3, result.stderr
    assert re.search(r"bulksync: error: step people: .*401", result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    table = result.stdout
    assert re.search(r"companies +objects +done +10 +10 +0 +0 +0$", table, re.M), table
    assert re.search(r"people +people +stopped +- +- +- +- +-$", table, re.M), table
    assert re.search(r"events +events +not run +- +- +- +- +-$", table, re.M), table
    assert "stopped at step people (exit 3)" in table
    assert [r.method for r in requests(fake)].count("PUT") == 0
    assert not (results / "events.results.jsonl").exists()
    unfinished = (results / "job.json").read_bytes()
    assert orjson.loads(unfinished)["started"] == ["companies", "people"]

    # A dry run of the job: no request at all, every step checked into STEP.dry-run.jsonl,
    # and the record of the unfinished run left as it was.
    mark = len(requests(fake))
    result = run_here("run", job, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert len(requests(fake)) == mark
    assert (results / "job.json").read_bytes() == unfinished
    summary = printed_json(result.stdout)
    assert set(summary) == {"job", "dry_run", "elapsed_seconds", "steps", "exit_code"}
    assert summary["dry_run"] is True
    assert summary["exit_code"] == 0
    assert summary["job"] == str(job)
    assert statuses(summary) == ["done", "done", "done"]
    for step, (name, kind, rows) in zip(
        summary["steps"],
        [("companies", "objects", 10), ("people", "people", 20), ("events", "events", 10)],
        strict=True,
    ):
        assert set(step) == {
            *("step", "kind", "input", "status", "exit_code", "error", "results"),
            *("rows", "ok", "failed", "invalid", "unchanged", "valid"),
        }
        assert (step["step"], step["kind"], step["rows"], step["valid"]) == (name, kind, rows, rows)
        assert (step["ok"], step["exit_code"], step["error"]) == (0, 0, None)
        assert step["results"] == str(results / f"{name}.dry-run.jsonl")
        header, lines = read_lines(results / f"{name}.dry-run.jsonl")
        assert header["dry_run"] is True
        assert [line["status"] for line in lines] == ["valid"] * rows
    _, lines = read_lines(results / "people.dry-run.jsonl")
    assert lines[0]["payload"] == people(1)[0]

    # The credentials are accepted again: the same command resumes at step 2.
    limit[0] = 10**9
    result = run_here("run", job)
    assert result.returncode == 0, result.stderr
    assert re.search(r"companies +objects +resumed +10 +10 +0 +0 +0$", result.stdout, re.M)
    assert re.search(r"people +people +done +20 +20 +0 +0 +0$", result.stdout, re.M)
    assert re.search(r"events +events +done +10 +10 +0 +0 +0$", result.stdout, re.M)
    sent = requests(fake)[mark:]
    assert not [r for r in sent if r.path == ENTITY_PATH], "step 1 was run again"
    assert sorted(r.identifier or "" for r in sent if r.method == "PUT") == sorted(
        ident(i) for i in range(1, 21)
    )
    assert fake.operations()["person event"] == 10


def test_failed_rows_give_exit_1_and_the_job_goes_on(api_env: ServerThread, tmp_path: Path) -> None:
    fake = api_env
    job = three_step_job(tmp_path, n_companies=5, n_people=20, n_events=5)
    rows = people(20)
    rows[5]["email"] = "not-an-email"
    write_rows(tmp_path / "people.csv", rows)
    fake.fake.config.reject_ids = frozenset({ident(3), ident(9)})  # a terminal 400 each
    result = run_here("run", job, "--json")
    assert result.returncode == 1, result.stderr
    summary = printed_json(result.stdout)
    assert summary["exit_code"] == 1
    assert statuses(summary) == ["done", "done", "done"]
    counts = [
        (s["rows"], s["ok"], s["failed"], s["invalid"], s["exit_code"]) for s in summary["steps"]
    ]
    # Events of the refused people are refused too (reject_ids names people).
    assert counts == [(5, 5, 0, 0, 0), (20, 17, 2, 1, 1), (5, 4, 1, 0, 1)]
    table = {line["row"]: line for line in read_lines(Path(summary["steps"][1]["results"]))[1]}
    assert {row for row, line in table.items() if line["status"] == "failed"} == {3, 9}
    assert table[6]["status"] == "invalid"
    assert fake.operations()["person event"] == 4
    assert record(tmp_path / "nightly-results")["finished_at"] is not None


def test_an_unfinished_job_whose_finished_step_has_a_new_input_is_not_resumed(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """Last night's job stopped at step 2 (an outage) and nobody re-ran it; tonight's cron runs
    the same command with tonight's files. Step 1 finished last night with last night's file:
    shown "resumed", tonight's file would never be sent. Refused, nothing sent, until --fresh."""
    fake = api_env
    job = three_step_job(tmp_path, n_companies=5, n_people=5, n_events=5)
    limit = refuse_credentials_after(fake, 1 + 5)  # step 1 runs, step 2's check is refused
    assert invoke("run", job, "--quiet").exit_code == 3
    limit[0] = 10**9
    write_rows(tmp_path / "companies.csv", companies(5, size=100))  # tonight's
    mark = len(requests(fake))
    result = invoke("run", job)
    assert result.exit_code == 2, result.output
    assert re.search(r"step companies finished .* has changed since .*--fresh", result.output)
    assert len(requests(fake)) == mark

    result = invoke("run", job, "--fresh", "--json")
    assert result.exit_code == 0, result.output
    assert statuses(printed_json(result.stdout)) == ["done", "done", "done"]
    assert fake.fake.object_attributes("1", "co-5") == {"name": "Company 5", "employees": 500}


def test_sigterm_in_step_2_stops_the_job_with_exit_3_then_it_resumes(
    api_env: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    fake = api_env
    n = 400
    job = three_step_job(tmp_path, n_companies=5, n_people=n, n_events=5)
    people_out = tmp_path / "nightly-results" / "people.results.jsonl"
    fake.fake.config.latency = 0.01
    proc = start_cli(fake.url, tmp_path / "first", "run", job, "--json")
    procs.append(proc)
    wait_until(lambda: count_outcomes(people_out) >= 40, proc, what="40 outcomes of step 2")
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 3, proc.stderr()
    assert "Traceback" not in proc.stderr()
    summary = printed_json(proc.stdout())
    assert summary["exit_code"] == 3
    assert statuses(summary) == ["done", "stopped", "not run"]
    stopped = summary["steps"][1]
    _, lines = read_lines(people_out)
    assert 40 <= stopped["ok"] == len(lines) < n
    assert (stopped["rows"], stopped["exit_code"]) == (len(lines), 3)
    assert summary["steps"][2]["exit_code"] is None

    fake.fake.config.latency = 0.0
    result = run_here("run", job, "--json")
    assert result.returncode == 0, result.stderr
    assert statuses(printed_json(result.stdout)) == ["resumed", "done", "done"]
    assert_every_row_ok_once(people_out, n)
    puts = Counter(r.identifier for r in requests(fake) if r.method == "PUT")
    assert sorted(puts.values()) == [1] * n, "a graceful stop leaves no row in doubt"


# --- 5. one run of a job at a time --------------------------------------------------------------


def test_a_second_run_of_the_job_is_refused_naming_the_first(
    api_env: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    fake = api_env
    job = three_step_job(tmp_path, n_companies=30)
    results = tmp_path / "nightly-results"
    holder = start_cli(fake.url, tmp_path / "holder", "run", job, "--quiet")
    procs.append(holder)
    wait_until(lambda: len(requests(fake)) >= 3, holder, what="step 1 sending")
    fake.fake.config.latency = 30.0  # the first run stalls mid-step, still running
    time.sleep(0.1)
    held = (results / "job.json").read_bytes()
    mark = len(requests(fake))

    for extra in ([], ["--fresh"]):
        refused = invoke("run", job, *extra)
        assert refused.exit_code == 2, refused.output
        assert f"{job} is being run by another bulksync (pid {holder.pid})" in refused.output
        assert "Traceback" not in refused.output
        assert (results / "job.json").read_bytes() == held
    assert len(requests(fake)) == mark, "the refused runs sent nothing"

    holder.popen.send_signal(signal.SIGKILL)
    holder.wait(10)
    fake.fake.config.latency = 0.0
    result = run_here("run", job, "--json")
    assert result.returncode == 0, result.stderr
    assert statuses(printed_json(result.stdout)) == ["done", "done", "done"]
    assert_every_row_ok_once(results / "people.results.jsonl", 20)
    assert fake.fake.object_attributes("1", "co-30") == {"name": "Company 30", "employees": 300}


# --- 6. paths, mappings, the record ---------------------------------------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    yield folder
    assert list(folder.iterdir()) == [], "nothing is written in the working directory"


def test_paths_are_relative_to_the_job_file_and_step_keys_override_its_mapping(
    fake: ServerThread, tmp_path: Path, elsewhere: Path
) -> None:
    jobs, data = tmp_path / "jobs", tmp_path / "data"
    (jobs / "maps").mkdir(parents=True)
    data.mkdir()
    rows = [
        {"Customer ID": "c1", "E-mail": "ann@example.com", "Plan": "pro", "Notes": "vip"},
        {"Customer ID": "c2", "E-mail": "bob@example.com", "Plan": "free", "Notes": ""},
    ]
    write_rows(data / "crm.csv", rows)
    (jobs / "maps" / "crm.toml").write_text(
        textwrap.dedent(
            """\
            kind = "people"
            id_column = "Customer ID"

            [set]
            source = "crm"
            team = "sales"

            [columns]
            "Customer ID" = "id"
            "E-mail" = { name = "email", type = "email" }
            "Plan" = "plan"
            "Notes" = "notes"
            """
        ),
        encoding="utf-8",
    )
    (jobs / "nightly.toml").write_text(
        textwrap.dedent(
            """\
            rate = 0
            batch = true
            results_dir = "../out"
            state_dir = "state"

            [[steps]]
            name = "crm"
            input = "../data/crm.csv"
            mapping = "maps/crm.toml"
            [steps.set]
            source = "nightly"
            imported = 2024-05-01
            [steps.columns]
            "Notes" = { exclude = true }
            "Plan" = "tier"
            """
        ),
        encoding="utf-8",
    )
    result = run(fake.url, "run", "../jobs/nightly.toml", "--json", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    summary = printed_json(result.stdout)
    assert summary["steps"][0]["results"] == "../jobs/../out/crm.results.jsonl"
    assert (tmp_path / "out" / "crm.results.jsonl").is_file()
    assert (tmp_path / "out" / "job.json").is_file()
    assert (jobs / "state" / "crm.state.sqlite").is_file()
    # The step's [set] over the mapping's, key by key; its [columns] over the mapping's.
    expected = {
        "c1": {"id": "c1", "email": "ann@example.com", "tier": "pro"},
        "c2": {"id": "c2", "email": "bob@example.com", "tier": "free"},
    }
    for person, attributes in expected.items():
        attributes |= {"source": "nightly", "team": "sales", "imported": 1714521600}
        assert fake.fake.accepted()[person] == [attributes]
    batches = [r for r in requests(fake) if r.path == "/api/v2/batch"]
    assert len(batches) == 1
    assert [op["identifiers"] for op in batches[0].body["batch"]] == [{"id": "c1"}, {"id": "c2"}]


def test_a_damaged_record_is_refused_until_fresh(api_env: ServerThread, tmp_path: Path) -> None:
    job = three_step_job(tmp_path, n_companies=3, n_people=3, n_events=3)
    results = tmp_path / "nightly-results"
    assert invoke("run", job, "--quiet").exit_code == 0
    (results / "job.json").write_bytes(b'{"job": "')  # not written by bulksync: edited, a disk
    (results / "job.json.new").write_bytes(b"torn")  # a write a kill interrupted: ignored
    api_env.reset()
    result = invoke("run", job)
    assert result.exit_code == 2, result.output
    assert "job.json: cannot read the job's record" in result.output
    assert "--fresh" in result.output
    assert requests(api_env) == []
    result = invoke("run", job, "--fresh", "--json")
    assert result.exit_code == 0, result.output
    assert statuses(printed_json(result.stdout)) == ["done", "done", "done"]
    assert record(results)["finished_at"] is not None
    assert not (results / "job.json.new").exists()
    assert os.stat(results / "job.json").st_mode & 0o777 == 0o600


def test_two_jobs_sharing_a_results_folder_are_refused(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """Each would start the other over (and remove its results files): the second one run is
    refused, naming the first, and sends nothing."""
    job = three_step_job(tmp_path)
    assert invoke("run", job).exit_code == 0
    other = tmp_path / "other.toml"
    other.write_text('results_dir = "nightly-results"\n' + THREE_STEPS, encoding="utf-8")
    before = len(requests(api_env))
    result = invoke("run", other, "--fresh")
    assert result.exit_code == 2, result.output
    assert f"holds the results of another job ({job.resolve()})" in result.output
    assert len(requests(api_env)) == before
    assert record(tmp_path / "nightly-results")["job"] == str(job.resolve())
