"""`bulksync report RESULTS`, through the CLI, on results files written by real runs against the
simulator (and a few written by hand for what a run rarely leaves: several kinds, missing rows);
and the run's own stderr, which shows the first row failures and then a count."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main
from bulksync.console import ROW_FAILURES_SHOWN, setup_logging
from bulksync.report import reason_key

from .conftest import ServerThread

HEADER = ["id", "email", "plan", "created_at"]


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("\n".join(",".join(row) for row in [HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def mixed_rows() -> list[list[str]]:
    """20 people: rows 3 and 8 with bad emails (two values, one problem), row 11 with a bad
    date, the others fine (rows 5 and 14 are refused by the simulator in the tests)."""
    rows = [[f"c{i}", f"c{i}@example.com", "pro", "2024-05-01"] for i in range(1, 21)]
    rows[2][1] = "x@@example.com"
    rows[7][1] = "y@@example.org"
    rows[10][3] = "31/02/2023"
    return rows


def mixed_run(api_env: ServerThread, tmp_path: Path) -> Path:
    """A real run with 3 invalid rows and 2 the API refuses: the results file."""
    api_env.fake.config.reject_ids = frozenset({"c5", "c14"})
    source = write_csv(tmp_path / "in.csv", mixed_rows())
    results = tmp_path / "in.results.jsonl"
    result = invoke("sync", source, "--results", results, "--rate", "0")
    assert result.exit_code == 1, result.output
    return results


def write_results(path: Path, header: dict[str, Any], lines: list[dict[str, Any]]) -> Path:
    head = {"bulksync_results": 1, "input": "in.csv", "size": None, "sha256": None}
    head |= {"dry_run": False, "op": "people", "started": "2026-01-01T00:00:00+00:00"}
    body = [orjson.dumps(head | header)] + [orjson.dumps(line) for line in lines]
    path.write_bytes(b"\n".join(body) + b"\n")
    return path


def line(row: int, status: str, **fields: Any) -> dict[str, Any]:
    out = {"row": row, "id": f"c{row}", "op": "people", "status": status}
    out |= {"http_status": None, "attempts": 0, "error": None}
    return out | fields


# --- the report of a real run ----------------------------------------------------------------


def test_report_of_a_mixed_run(api_env: ServerThread, tmp_path: Path) -> None:
    results = mixed_run(api_env, tmp_path)
    result = invoke("report", results)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert re.search(r"ok\s+15\b", text)
    assert re.search(r"failed\s+2\b", text)
    assert re.search(r"invalid\s+3\b", text)
    # The two bad emails are one reason, the value taken out, with both rows as examples.
    assert re.search(r"2\s+invalid: email: invalid email …: .*@-sign", text), text
    assert "e.g. row 3, row 8" in text or "e.g. row 3 (line 4), row 8 (line 9)" in text
    assert re.search(r"1\s+invalid: created_at: cannot read … as a date", text)
    assert re.search(r"2\s+failed: HTTP 400: rejected by test", text)
    assert "x@@example.com" not in text  # reasons, not values: rows are named by number
    # Requests: one per sent row (17), no retries; what to do next.
    assert "requests: 17 for the rows sent one per request (17 rows" in text
    assert f"bulksync rejects {results}" in text
    assert f"bulksync retry {results} --all-failed" in text
    assert f"bulksync retry {results}\n" not in text  # no transient failure to retry
    assert "no outcome" not in text


def test_report_json(api_env: ServerThread, tmp_path: Path) -> None:
    results = mixed_run(api_env, tmp_path)
    result = invoke("report", results, "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert report["results"] == str(results)
    assert report["input"] == str(tmp_path / "in.csv")
    assert (report["rows"], report["ok"], report["failed"], report["invalid"]) == (20, 15, 2, 3)
    assert report["by_op"] == {"people": {"ok": 15, "failed": 2, "invalid": 3}}
    assert report["dry_run"] is False
    assert report["missing_rows"] == 0
    assert report["attempts"] == 17 and report["single_requests"] == 17
    assert report["failed_refused"] == 2 and report["failed_transient"] == 0
    reasons = report["reasons"]
    # Most rows first; then failed before invalid.
    assert [(r["status"], r["count"]) for r in reasons] == [
        ("failed", 2),
        ("invalid", 2),
        ("invalid", 1),
    ]
    email = reasons[1]
    assert email["reason"].startswith("email: invalid email …: ")
    assert [e["row"] for e in email["examples"]] == [3, 8]
    assert email["examples"][0]["error"].startswith("email: invalid email 'x@@example.com'")
    assert [e["row"] for e in reasons[0]["examples"]] == [5, 14]
    commands = [step.get("command") for step in report["next"]]
    assert f"bulksync rejects {results}" in commands
    assert f"bulksync retry {results} --all-failed" in commands


def test_the_latest_line_of_a_row_is_its_outcome(api_env: ServerThread, tmp_path: Path) -> None:
    results = mixed_run(api_env, tmp_path)
    api_env.fake.config.reject_ids = frozenset()
    assert invoke("retry", results, "--all-failed", "--rate", "0").exit_code == 1  # invalid left
    report = orjson.loads(invoke("report", results, "--json").stdout)
    assert (report["rows"], report["ok"], report["failed"], report["invalid"]) == (20, 17, 0, 3)
    assert report["lines"] == 22
    assert report["attempts"] == 19  # 17 requests, then the 2 re-sent rows
    assert [r["status"] for r in report["reasons"]] == ["invalid", "invalid"]
    assert "--all-failed" not in invoke("report", results).stdout


def test_report_of_a_dry_run(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", mixed_rows())
    results = tmp_path / "dry.jsonl"
    assert invoke("sync", source, "--dry-run", "--results", results).exit_code == 1
    result = invoke("report", results)
    assert result.exit_code == 0, result.output
    assert "dry run of" in result.stdout
    assert re.search(r"valid\s+17\b", result.stdout)
    assert "requests:" not in result.stdout and "rate:" not in result.stdout
    assert "fix the invalid rows in the input and dry-run it again" in result.stdout
    report = orjson.loads(invoke("report", results, "--json").stdout)
    assert report["dry_run"] is True and "rows_per_second" not in report


def test_a_clean_dry_run_says_to_send(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", [["c1", "c1@example.com", "pro", "2024-05-01"]])
    results = tmp_path / "dry.jsonl"
    assert invoke("sync", source, "--dry-run", "--results", results).exit_code == 0
    assert "every row is valid: run the same command without --dry-run" in (
        invoke("report", results).stdout
    )


# --- what the file alone says: kinds, missing rows, the rate ---------------------------------


def test_several_kinds_are_counted_apart(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "r.jsonl",
        {},
        [
            line(1, "ok", attempts=1, mode="single", http_status=200),
            line(2, "ok", op="events", attempts=1, mode="batch", http_status=200),
            line(3, "failed", op="events", attempts=3, mode="batch", http_status=503,
                 error="HTTP 503 server error (gave up after 3 attempts)"),
            line(4, "failed", op="events", attempts=6, mode="batch", http_status=503,
                 error="HTTP 503 server error (gave up after 6 attempts)"),
        ],
    )  # fmt: skip
    report = orjson.loads(invoke("report", results, "--json").stdout)
    assert report["by_op"] == {"events": {"ok": 1, "failed": 2}, "people": {"ok": 1}}
    assert report["modes"] == {"single": 1, "batch": 3}
    assert report["single_requests"] == 1 and report["attempts"] == 11
    assert report["retried_rows"] == 2
    assert report["failed_transient"] == 2
    [group] = report["reasons"]
    assert (group["op"], group["count"]) == ("events", 2)
    assert group["reason"] == "HTTP 503 server error (gave up after … attempts)"
    assert report["next"][0]["command"] == f"bulksync retry {results}"
    text = invoke("report", results).stdout
    assert "by operation:" in text and re.search(r"events\s+1 ok, 2 failed", text)
    assert re.search(r"2\s+failed events: HTTP 503", text)
    assert "batches: 3 rows sent in batches" in text


def test_rows_without_an_outcome_say_resume(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "r.jsonl", {}, [line(row, "ok", attempts=1) for row in (1, 2, 4, 7)]
    )
    report = orjson.loads(invoke("report", results, "--json").stdout)
    assert (report["missing_rows"], report["first_missing_rows"]) == (3, [3, 5, 6])
    text = invoke("report", results).stdout
    assert re.search(r"no outcome\s+3\s+\(rows 3, 5, 6; up to row 7\)", text)
    assert "the sync was interrupted (or is still running)" in text


def test_the_rate_spans_the_start_to_the_last_change(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "r.jsonl",
        {"started": "2026-01-01T00:00:00+00:00"},
        [line(row, "ok", attempts=1) for row in range(1, 101)],
    )
    end = 1767225600 + 20  # 2026-01-01T00:00:20Z
    os.utime(results, (end, end))
    report = orjson.loads(invoke("report", results, "--json").stdout)
    assert report["seconds"] == 20.0 and report["rows_per_second"] == 5.0
    assert "rate: 5.0 rows/s on average over 20s" in invoke("report", results).stdout
    os.utime(results, (end + 3 * 86400, end + 3 * 86400))  # resumed three days later
    assert "rate: 0.0 rows/s on average over 72h00m20s" in invoke("report", results).stdout
    # Lines have no time: without a start in the header, no rate is made up.
    no_start = write_results(tmp_path / "s.jsonl", {"started": None}, [line(1, "ok")])
    assert "rows_per_second" not in orjson.loads(invoke("report", no_start, "--json").stdout)


def test_a_torn_last_line_is_left_out(tmp_path: Path) -> None:
    results = write_results(tmp_path / "r.jsonl", {}, [line(1, "ok"), line(2, "ok")])
    with results.open("ab") as f:
        f.write(b'{"row": 3, "id": "c3", "st')
    report = orjson.loads(invoke("report", results, "--json").stdout)
    assert report["rows"] == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such results file"),
        (b"", "is not a bulksync results file"),
        (b"id,email\nc1,a@example.com\n", "is not a bulksync results file"),
        (b'{"row": 1}\n', "is not a bulksync results file"),
        (b'{"bulksync_results": 1}\nnot json\n', "line 2 is not JSON"),
        (b'{"bulksync_results": 1}\n{"row": "x", "status": "ok"}\n', "not a results line"),
    ],
)
def test_a_bad_results_file_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "r.jsonl"
    if content is not None:
        path.write_bytes(content)
    for args in ((), ("--json",)):
        result = invoke("report", path, *args)
        assert result.exit_code == 2, result.output
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.output and result.stdout == ""


def test_a_directory_is_not_a_results_file(tmp_path: Path) -> None:
    result = invoke("report", tmp_path)
    assert result.exit_code == 2
    assert "is a directory" in result.stderr


# --- grouping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "identifier", "key"),
    [
        (
            "email: invalid email 'x@@y.com': The part after the @-sign contains invalid"
            " characters: '@'.",
            "c1",
            "email: invalid email …: The part after the @-sign contains invalid characters: ….",
        ),
        ('plan: "it\'s" is not a valid int', None, "plan: … is not a valid int"),
        (
            "name: value " + repr("a" * 80)[:57] + "... is too long",
            None,
            "name: value … is too long",
        ),
        (
            "malformed JSON: unexpected character: line 1 column 12 (char 11)",
            None,
            "malformed JSON: unexpected character: line …",
        ),
        ("HTTP 400: person cust-7 is blocked", "cust-7", "HTTP 400: person … is blocked"),
        ("HTTP 400: person cust-77 is blocked", "cust-7", "HTTP 400: person cust-77 is blocked"),
        ("row has 5 fields but the header has 4", None, "row has 5 fields but the header has 4"),
    ],
)
def test_reason_key(error: str, identifier: str | None, key: str) -> None:
    assert reason_key(error, identifier) == key


# --- the run's stderr: the first row failures, then a count ------------------------------------


def test_stderr_shows_the_first_failures_then_a_count(
    api_env: ServerThread, tmp_path: Path
) -> None:
    rejected = 25
    api_env.fake.config.reject_ids = frozenset(f"c{i}" for i in range(1, rejected + 1))
    rows = [[f"c{i}", f"c{i}@example.com", "pro", "2024-05-01"] for i in range(1, 41)]
    source = write_csv(tmp_path / "in.csv", rows)
    results = tmp_path / "in.results.jsonl"
    log_file = tmp_path / "run.log"
    result = invoke("sync", source, "--results", results, "--rate", "0", "--log-file", log_file)
    assert result.exit_code == 1, result.output

    stderr = result.stderr.splitlines()
    failures = [text for text in stderr if re.search(r"row \d+ \(id c\d+\) failed: ", text)]
    assert len(failures) == ROW_FAILURES_SHOWN, result.stderr
    more = [text for text in stderr if "... more rows failed: see the results file" in text]
    assert len(more) == 1 and "bulksync report RESULTS" in more[0]
    assert str(log_file) in more[0]  # where every line is
    assert stderr.index(more[0]) > max(stderr.index(text) for text in failures)
    assert f"{rejected} rows failed in all; the first {ROW_FAILURES_SHOWN} are shown" in (
        result.stderr
    )
    assert len(stderr) == ROW_FAILURES_SHOWN + 2, result.stderr
    # The log file keeps every one; the summary names the report of this run.
    logged = re.findall(r"ERROR row \d+ \(id c\d+\) failed", log_file.read_text())
    assert len(logged) == rejected
    assert f"bulksync report {results}" in result.stdout


def test_a_few_failures_are_all_shown_with_no_count(api_env: ServerThread, tmp_path: Path) -> None:
    api_env.fake.config.reject_ids = frozenset({"c1", "c2"})
    rows = [[f"c{i}", f"c{i}@example.com", "pro", "2024-05-01"] for i in range(1, 6)]
    source = write_csv(tmp_path / "in.csv", rows)
    result = invoke("sync", source, "--rate", "0", "--json")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 2, result.stderr
    assert "more rows failed" not in result.stderr and "in all" not in result.stderr


def test_marked_records_are_limited_too(capsys: pytest.CaptureFixture[str]) -> None:
    """A row failure logged with `extra={"row_failure": True}` is limited whatever its words;
    other errors are never held back."""
    setup_logging(None, quiet=False)
    log = logging.getLogger("bulksync")
    try:
        for i in range(ROW_FAILURES_SHOWN + 3):
            log.error("operation %d refused", i, extra={"row_failure": True})
        log.error("something else")
    finally:
        setup_logging(None, quiet=True)
    err = capsys.readouterr().err.splitlines()
    assert sum("refused" in text for text in err) == ROW_FAILURES_SHOWN
    assert err[-2].endswith("... more rows failed: see the results file (or bulksync report"
                            " RESULTS)")  # fmt: skip
    assert err[-1] == "bulksync: ERROR: something else"


def test_report_is_fast_enough_for_big_files(tmp_path: Path) -> None:
    """200,000 lines, every row re-sent once: a few seconds at most, memory by row number."""
    results = tmp_path / "r.jsonl"
    with results.open("wb") as f:
        f.write(orjson.dumps({"bulksync_results": 1, "input": "in.csv", "op": "people"}) + b"\n")
        for row in range(1, 100_001):
            f.write(orjson.dumps(line(row, "failed", http_status=503, error="HTTP 503")) + b"\n")
        for row in range(1, 100_001):
            f.write(orjson.dumps(line(row, "ok", attempts=1)) + b"\n")
    started = time.monotonic()
    report = orjson.loads(invoke("report", results, "--json").stdout)
    assert report["ok"] == 100_000 and report["failed"] == 0
    assert time.monotonic() - started < 20
