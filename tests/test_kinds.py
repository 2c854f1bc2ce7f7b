"""Every `--kind`, through the CLI, against the simulator over loopback: the exact request in
single-row mode and the exact v2 operation in batch mode, invalid rows, `retry`, `--yes`, events
sent once (state, re-runs, kill -9 and resume)."""

from __future__ import annotations

import random
import re
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from bulksync.batch import pack
from bulksync.cli import main
from bulksync.fake import Recorded
from bulksync.operations import KINDS, Record, ulid
from bulksync.results import read_lines

from .conftest import ServerThread, read_results
from .test_resume import Proc, count_outcomes, start_cli, wait_until

REGION_PATH = "/api/v1/accounts/region"
ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def sent(fake: ServerThread) -> list[Recorded]:
    """The requests the simulator received, the credentials check left out."""
    requests, _ = fake.snapshot()
    return [rec for rec in requests if rec.path != REGION_PATH]


def ulid_milliseconds(value: str) -> int:
    """The time part of a ULID: its first 10 Crockford base32 characters, 48 bits."""
    ms = 0
    for char in value[:10]:
        ms = ms * 32 + CROCKFORD.index(char)
    return ms


@dataclass(frozen=True)
class Case:
    """One kind: an input row, the options, and what must be sent for it."""

    kind: str
    csv: str
    args: tuple[str, ...]
    method: str
    path: str
    body: dict[str, Any] | None  # the single request's body (None: no body)
    operation: dict[str, Any]  # the v2 operation in a batch
    rejected: str  # the identifier the simulator is told to refuse (reject_ids)


EVENT_ID = "01HWSSHG80BE9PQEXB76QZQ7PN"  # a ULID given in the file: sent as it is
OBJECT = {
    "type": "object",
    "identifiers": {"object_type_id": "1", "object_id": "acme"},
    "action": "identify",
    "attributes": {"name": "Acme Inc", "plan": "pro"},
}
RELATIONSHIP = {
    "type": "person",
    "identifiers": {"id": "c1"},
    "action": "add_relationships",
    "cio_relationships": [
        {
            "identifiers": {"object_type_id": "1", "object_id": "acme"},
            "relationship_attributes": {"role": "admin"},
        }
    ],
}

CASES = [
    Case(
        "people",
        "id,email,plan\na/b,ann@example.com,pro\n",
        (),
        "PUT",
        "/api/v1/customers/a%2Fb",
        {"id": "a/b", "email": "ann@example.com", "plan": "pro"},
        {
            "type": "person",
            "identifiers": {"id": "a/b"},
            "action": "identify",
            "attributes": {"id": "a/b", "email": "ann@example.com", "plan": "pro"},
        },
        "a/b",
    ),
    Case(
        "events",
        "email,event,timestamp,event_id,total,note\n"
        f"ann+1@example.com,purchase,2024-05-01T12:00:00+02:00,{EVENT_ID},19.99,gift\n",
        ("--id-column", "email"),
        "POST",
        "/api/v1/customers/ann%2B1%40example.com/events",
        {
            "name": "purchase",
            "data": {"total": "19.99", "note": "gift"},
            "timestamp": 1714557600,
            "id": EVENT_ID,
        },
        {
            "type": "person",
            "identifiers": {"email": "ann+1@example.com"},
            "action": "event",
            "name": "purchase",
            "id": EVENT_ID,
            "timestamp": 1714557600,
            "attributes": {"total": "19.99", "note": "gift"},
        },
        "ann+1@example.com",
    ),
    Case(
        "devices",
        "external_id,token,os,last_used,app_version\nc 1,tok-1,iOS,2024-05-01T00:00:00Z,5.2\n",
        ("--id-column", "external_id", "--device-id-column", "token", "--platform-column", "os"),
        "PUT",
        "/api/v1/customers/c%201/devices",
        {
            "device": {
                "id": "tok-1",
                "platform": "ios",
                "last_used": 1714521600,
                "attributes": {"app_version": "5.2"},
            }
        },
        {
            "type": "person",
            "identifiers": {"id": "c 1"},
            "action": "add_device",
            "device": {
                "token": "tok-1",
                "platform": "ios",
                "last_used": 1714521600,
                "attributes": {"app_version": "5.2"},
            },
        },
        "c 1",
    ),
    Case(
        "objects",
        "company_id,name,plan\nacme,Acme Inc,pro\n",
        ("--object-type-id", "1", "--object-id-column", "company_id"),
        "POST",
        "/api/v2/entity",
        OBJECT,
        OBJECT,
        "acme",
    ),
    Case(
        "relationships",
        "id,object_type_id,object_id,role\nc1,1,acme,admin\n",
        (),
        "POST",
        "/api/v2/entity",
        RELATIONSHIP,  # sent alone to /api/v2/entity, the operation is the body
        RELATIONSHIP,
        "c1",
    ),
    Case(
        "deletions",
        "id,name,created_at\ncio_abc,Ann,not a date\n",  # other columns: ignored, not checked
        ("--yes",),
        "DELETE",
        "/api/v1/customers/cio_abc",
        None,
        {"type": "person", "identifiers": {"cio_id": "abc"}, "action": "delete"},
        "cio_abc",
    ),
    Case(
        "suppressions",
        "Email Address,UNSUB_TIME\nann@example.com,2024-01-02 10:00:00\n",
        ("--id-column", "Email Address", "--yes"),
        "POST",
        "/api/v1/customers/ann%40example.com/suppress",
        None,
        {"type": "person", "identifiers": {"email": "ann@example.com"}, "action": "suppress"},
        "ann@example.com",
    ),
    Case(
        "unsuppressions",
        "email\nann@example.com\n",
        (),
        "POST",
        "/api/v1/customers/ann%40example.com/unsuppress",
        None,
        {"type": "person", "identifiers": {"email": "ann@example.com"}, "action": "unsuppress"},
        "ann@example.com",
    ),
    Case(
        "merges",
        "keep,drop\nc1,ann@example.com\n",
        ("--primary-column", "keep", "--secondary-column", "drop", "--yes"),
        "POST",
        "/api/v1/merge_customers",
        {"primary": {"id": "c1"}, "secondary": {"email": "ann@example.com"}},
        {
            "type": "person",
            "action": "merge",
            "primary": {"id": "c1"},
            "secondary": {"email": "ann@example.com"},
        },
        "c1",
    ),
]
IDS = [case.kind for case in CASES]


def sync_case(case: Case, tmp_path: Path, *extra: str) -> tuple[Result, Path]:
    source = tmp_path / f"{case.kind}.csv"
    source.write_text(case.csv, encoding="utf-8")
    results = tmp_path / f"{case.kind}.results.jsonl"
    args = ("sync", source, "--kind", case.kind, *case.args, "--results", results, "--rate", "0")
    return invoke(*args, *extra), results


def assert_exact(rec: Recorded, method: str, path: str, body: dict[str, Any] | None) -> None:
    """The request, byte for byte: the simulator keeps the raw path, the parsed body (whose key
    order is kept) and the body's size, so orjson's compact form of it is what was sent."""
    assert (rec.method, rec.path) == (method, path)
    if body is None:
        assert rec.size == 0 and rec.body is None
    else:
        expected = orjson.dumps(body)
        assert orjson.dumps(rec.body) == expected
        assert rec.size == len(expected)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_single_request_of_each_kind_exactly(
    case: Case, api_env: ServerThread, tmp_path: Path
) -> None:
    result, results = sync_case(case, tmp_path)
    assert result.exit_code == 0, result.output
    (rec,) = sent(api_env)
    assert_exact(rec, case.method, case.path, case.body)
    assert rec.status == 200
    (line,) = read_results(results)
    assert (line["op"], line["status"], line["mode"]) == (case.kind, "ok", "single")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_batch_operation_of_each_kind_exactly(
    case: Case, api_env: ServerThread, tmp_path: Path
) -> None:
    result, results = sync_case(case, tmp_path, "--batch")
    assert result.exit_code == 0, result.output
    (rec,) = sent(api_env)
    assert_exact(rec, "POST", "/api/v2/batch", {"batch": [case.operation]})
    assert rec.status == 200
    (line,) = read_results(results)
    assert (line["op"], line["status"], line["mode"]) == (case.kind, "ok", "batch")


@pytest.mark.parametrize("mode", ["single", "batch"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_retry_resends_the_same_operation(
    case: Case, mode: str, api_env: ServerThread, tmp_path: Path
) -> None:
    batch = ("--batch",) if mode == "batch" else ()
    api_env.fake.config.reject_ids = frozenset({case.rejected})
    result, results = sync_case(case, tmp_path, *batch)
    assert result.exit_code == 1, result.output
    (failed,) = read_results(results)
    assert (failed["op"], failed["status"], failed["http_status"]) == (
        case.kind,
        "failed",
        400 if mode == "single" else 207,
    )
    first = sent(api_env)
    api_env.reset()
    api_env.fake.config.reject_ids = frozenset()

    yes = ("--yes",) if "--yes" in case.args else ()
    result = invoke("retry", results, "--all-failed", "--rate", "0", *batch, *yes)
    assert result.exit_code == 0, result.output
    again = sent(api_env)
    assert [(r.method, r.path, r.body) for r in again] == [
        (r.method, r.path, r.body) for r in first
    ]
    assert all(r.status == 200 for r in again)
    latest = read_results(results)[-1]
    assert (latest["row"], latest["op"], latest["status"]) == (1, case.kind, "ok")


# --- rows a kind cannot send: invalid, with the reason, never sent ----------------------------

LONG = "x" * 1000

INVALID = [
    (
        "events",
        ["id,event,note", "c1,,x", f"c2,{'e' * 101},x", "c3,ok," + "y" * 1200],
        (),
        {1: "event: empty event name", 2: "event: event name is longer than 100 bytes"},
    ),
    (
        "events",
        ["id,event," + ",".join(f"c{i}" for i in range(101)), "c1,big," + ",".join([LONG] * 101)],
        (),
        {1: "event data is 10"},
    ),
    (
        "devices",
        ["id,device_id,platform", "c1,t1,windows", "c2,,ios", "c3,t3,Android"],
        (),
        {1: "platform: 'windows' is not a platform", 2: "device_id: empty device id"},
    ),
    (
        "objects",
        ["object_type_id,object_id,name", "1,,Acme", ",b,Beta", "1,c,Gamma"],
        (),
        {1: "object_id: empty object id", 2: "object_type_id: empty object type id"},
    ),
    (
        "objects",
        ["object_id," + ",".join(f"a{i}" for i in range(40)), "big," + ",".join(["z" * 900] * 40)],
        ("--object-type-id", "1"),
        {1: "operation is 36,"},
    ),
    (
        "relationships",
        ["id,object_id", "c1,", ",acme", "c3,acme"],
        ("--object-type-id", "1"),
        {1: "object_id: empty object id", 2: "id: empty identifier"},
    ),
    (
        "merges",
        ["primary,secondary", "c1,c1", "c2,", "c3,c4"],
        (),
        {1: "primary and secondary are the same person", 2: "secondary: empty secondary person"},
    ),
]


@pytest.mark.parametrize(("kind", "lines", "args", "reasons"), INVALID)
def test_rows_breaking_a_limit_are_invalid_with_the_reason(
    kind: str, lines: list[str], args: tuple[str, ...], reasons: dict[int, str], tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = invoke("sync", source, "--kind", kind, *args, "--dry-run")
    assert result.exit_code == 1, result.output
    by_row = {line["row"]: line for line in read_results(Path(f"{source}.dry-run.jsonl"))}
    assert len(by_row) == len(lines) - 1
    for row, line in by_row.items():
        assert line["op"] == kind
        if row in reasons:
            assert line["status"] == "invalid", line
            assert line["error"].startswith(reasons[row]), line["error"]
        else:
            assert line["status"] == "valid", line


def test_event_data_has_no_per_value_limit_but_people_do(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"id,event,note\nc1,x,{'y' * 1200}\n", encoding="utf-8")
    assert invoke("sync", source, "--kind", "events", "--dry-run").exit_code == 0
    source.write_text(f"id,note\nc1,{'y' * 1200}\n", encoding="utf-8")
    assert invoke("sync", source, "--dry-run", "--fresh").exit_code == 1


# --- options that do not fit the kind: exit 2, one line ---------------------------------------


@pytest.mark.parametrize(
    ("csv", "args", "fragments"),
    [
        ("id,x\n1,a\n", ("--kind", "events"), ("--event-column", "--event-name")),
        ("id,x\n1,a\n", ("--event-name", "buy"), ("--event-name", "--kind people")),
        ("id,event\n1,a\n", ("--kind", "events", "--update-only"), ("--update-only",)),
        ("object_id\n1\n", ("--kind", "objects", "--id-column", "x"), ("--id-column",)),
        ("id,device_id,p\n1,t,ios\n", ("--kind", "devices"), ("--platform-column",)),
        (
            "id,device_id,platform\n1,t,ios\n",
            ("--kind", "devices", "--platform", "ios", "--platform-column", "platform"),
            ("--platform-column and --platform",),
        ),
        ("id,event\n1,a\n", ("--kind", "events", "--timestamp-column", "when"), ("'when'",)),
        ("keep,drop\n1,2\n", ("--kind", "merges", "--primary-column", "keep"), ("secondary",)),
    ],
)
def test_options_that_do_not_fit_the_kind_exit_2(
    csv: str, args: tuple[str, ...], fragments: tuple[str, ...], tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(csv, encoding="utf-8")
    result = invoke("sync", source, *args, "--dry-run")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output


# --- irreversible kinds ask first -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "csv"),
    [
        ("deletions", "id\nc1\nc2\nc3\n"),
        ("suppressions", "email\na@example.com\nb@example.com\nc@example.com\n"),
        ("merges", "primary,secondary\nc1,c2\nc3,c4\nc5,c6\n"),
    ],
)
def test_irreversible_kinds_send_nothing_without_yes(
    kind: str, csv: str, api_env: ServerThread, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(csv, encoding="utf-8")
    result = invoke("sync", source, "--kind", kind)
    assert result.exit_code == 2, result.output
    assert "3 row(s) would be sent" in result.output
    assert "--dry-run" in result.output and "--yes" in result.output
    requests, _ = api_env.snapshot()
    assert requests == []  # not even the credentials check
    assert not Path(f"{source}.results.jsonl").exists()

    dry = invoke("sync", source, "--kind", kind, "--dry-run")  # a dry run needs no --yes
    assert dry.exit_code == 0, dry.output
    assert api_env.snapshot()[0] == []

    done = invoke("sync", source, "--kind", kind, "--yes", "--rate", "0")
    assert done.exit_code == 0, done.output
    assert len(sent(api_env)) == 3


def test_retry_of_irreversible_rows_needs_yes(api_env: ServerThread, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id\nc1\nc2\n", encoding="utf-8")
    api_env.fake.config.reject_ids = frozenset({"c2"})
    result = invoke("sync", source, "--kind", "deletions", "--yes", "--rate", "0")
    assert result.exit_code == 1, result.output
    api_env.reset()
    api_env.fake.config.reject_ids = frozenset()
    results = Path(f"{source}.results.jsonl")
    refused = invoke("retry", results, "--all-failed")
    assert refused.exit_code == 2, refused.output
    assert "1 row(s) would be sent" in refused.output
    assert sent(api_env) == []
    assert invoke("retry", results, "--all-failed", "--yes").exit_code == 0
    assert [(r.method, r.path) for r in sent(api_env)] == [("DELETE", "/api/v1/customers/c2")]


# --- events are sent once --------------------------------------------------------------------


def events_csv(path: Path, n: int) -> Path:
    rows = [
        f"cust-{i % 50},{'purchase' if i % 3 else 'refund'},{1_700_000_000 + i},{i * 1.5},EUR"
        for i in range(1, n + 1)
    ]
    path.write_text("id,event,timestamp,total,currency\n" + "\n".join(rows) + "\n")
    return path


def test_derived_event_ids_are_ulids_stable_across_runs_with_the_time_as_timestamp(
    tmp_path: Path,
) -> None:
    source = events_csv(tmp_path / "ev.csv", 20)
    ids = []
    for _ in range(2):
        assert invoke("sync", source, "--kind", "events", "--dry-run").exit_code == 0
        lines = read_results(Path(f"{source}.dry-run.jsonl"))
        ids.append([line["payload"]["id"] for line in lines])
        for line in lines:
            assert ULID.fullmatch(line["payload"]["id"])
            assert ulid_milliseconds(line["payload"]["id"]) == line["payload"]["timestamp"] * 1000
    assert ids[0] == ids[1]
    assert len(set(ids[0])) == 20  # distinct rows, distinct ids


def test_event_id_column_a_ulid_is_kept_any_other_id_becomes_a_stable_ulid(
    tmp_path: Path,
) -> None:
    source = tmp_path / "ev.csv"
    source.write_text(
        "id,event,timestamp,event_id\n"
        "c1,a,1700000000,01hwsshg80be9pqexb76qz7pn0\n"  # lower case: the same ULID
        "c1,a,1700000000,6f1c2a0e-1b2c-4d5e-8f90-123456789abc\n"
        "c2,b,1700000001,6f1c2a0e-1b2c-4d5e-8f90-123456789abc\n"
        "c1,a,1700000000,\n"
    )
    assert invoke("sync", source, "--kind", "events", "--dry-run").exit_code == 0
    ids = [line["payload"]["id"] for line in read_results(Path(f"{source}.dry-run.jsonl"))]
    assert ids[0] == "01HWSSHG80BE9PQEXB76QZ7PN0"
    assert ULID.fullmatch(ids[1]) and ULID.fullmatch(ids[3])
    # One source id, one event: its ULID does not depend on who or what the row says.
    assert ids[1][10:] == ids[2][10:]
    assert len(set(ids)) == 4


def test_with_state_an_accepted_event_is_never_sent_again(
    api_env: ServerThread, tmp_path: Path
) -> None:
    source = events_csv(tmp_path / "ev.csv", 30)
    state = tmp_path / "state.db"
    args = ("sync", source, "--kind", "events", "--state", state, "--rate", "0")
    assert invoke(*args).exit_code == 0
    assert len(sent(api_env)) == 30
    api_env.reset()
    again = invoke(*args, "--fresh", "--json")
    assert again.exit_code == 0, again.output
    summary = orjson.loads(again.output.strip().splitlines()[-1])
    assert (summary["ok"], summary["unchanged"]) == (0, 30)
    assert sent(api_env) == []


def test_a_rerun_without_state_sends_the_same_event_ids(
    api_env: ServerThread, tmp_path: Path
) -> None:
    source = events_csv(tmp_path / "ev.csv", 30)
    args = ("sync", source, "--kind", "events", "--rate", "0", "--batch", "--batch-size", "7")
    assert invoke(*args).exit_code == 0
    first = [op["id"] for rec in sent(api_env) for op in rec.body["batch"]]
    api_env.reset()
    assert invoke(*args, "--fresh").exit_code == 0
    second = [op["id"] for rec in sent(api_env) for op in rec.body["batch"]]
    assert sorted(first) == sorted(second) and len(set(first)) == 30


def test_kill_9_then_resume_of_an_events_run_gives_each_event_one_id(
    fake: ServerThread, tmp_path: Path, procs: list[Proc]
) -> None:
    n = 600
    fake.fake.config.latency = 0.01
    source = events_csv(tmp_path / "ev.csv", n)
    out = tmp_path / "ev.results.jsonl"
    args = ("sync", source, "--kind", "events", "--results", out, "--rate", "300", "--quiet")
    rng = random.Random(7)
    for trial in range(3):
        before = count_outcomes(out)
        proc = start_cli(fake.url, tmp_path / f"kill-{trial}", *args)
        procs.append(proc)
        target = before + rng.randint(20, 80)
        wait_until(lambda target=target: count_outcomes(out) >= target, proc, what="outcomes")
        assert proc.poll() is None
        proc.popen.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(0.05)  # requests in flight at the kill reach the simulator
    final = start_cli(fake.url, tmp_path / "final", *args)
    procs.append(final)
    assert final.wait(60) == 0, final.stderr()

    latest = {line["row"]: line for line in read_lines(out)}
    assert sorted(latest) == list(range(1, n + 1))
    assert all(line["status"] == "ok" and line["op"] == "events" for line in latest.values())
    # Every event that reached the simulator, however often, under one id only.
    ids: dict[bytes, set[str]] = defaultdict(set)
    for rec in sent(fake):
        assert rec.path.endswith("/events")
        body = dict(rec.body)
        event = body.pop("id")
        ids[orjson.dumps([rec.path, body])].add(event)
    assert len(ids) == n
    assert all(len(found) == 1 for found in ids.values())
    resent = len(sent(fake)) - n
    assert resent >= 0


# --- the results file says which operation each row was ---------------------------------------


def test_read_lines_is_pure_and_fills_in_op_for_old_files(tmp_path: Path) -> None:
    path = tmp_path / "old.results.jsonl"
    content = (
        b'{"bulksync_results":1,"input":"x.csv"}\n'
        b'{"row":1,"id":"a","status":"failed","http_status":503,"attempts":6,"error":"e",'
        b'"payload":{"plan":"pro"}}\n'
        b'{"row":2,"id":"b","op":"events","status":"ok","http_status":200,"attempts":1,"error":null}\n'
        b'{"row":3,"id":"c","sta'  # torn by a crash
    )
    path.write_bytes(content)
    lines = list(read_lines(path))
    assert [(line["row"], line["op"]) for line in lines] == [(1, "people"), (2, "events")]
    assert path.read_bytes() == content  # no truncation: a reader never writes


def test_a_merge_waits_for_rows_naming_its_secondary() -> None:
    """Merging B into A, then C into B: the second names B, which the first removes; they
    must not share a batch (whose order inside the API is not documented)."""
    records = [
        Record(1, "A", {"primary": {"id": "A"}, "secondary": {"id": "B"}}, "merges"),
        Record(2, "B", {"primary": {"id": "B"}, "secondary": {"id": "C"}}, "merges"),
        Record(3, "D", {"primary": {"id": "D"}, "secondary": {"cio_id": "E"}}, "merges"),
        Record(4, "cio_E", {}, "deletions"),
    ]
    batches = list(pack(records, 100))
    rows = [[record.row for record in batch.records] for batch in batches]  # type: ignore[union-attr]
    assert rows == [[1, 3], [2, 4]]


def test_a_results_file_of_another_kind_is_not_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "site")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "key")
    source = tmp_path / "in.csv"
    source.write_text("id,event\nc1,signup\n", encoding="utf-8")
    results = tmp_path / "out.jsonl"
    first = invoke("sync", source, "--dry-run", "--results", results)
    assert first.exit_code == 0, first.output
    # A real run over it would be refused as a dry run's file anyway; make it a real one's.
    content = results.read_bytes().replace(b'"dry_run":true', b'"dry_run":false')
    results.write_bytes(content)
    again = invoke(
        "sync", source, "--kind", "events", "--results", results, "--base-url", "http://127.0.0.1:9"
    )
    assert again.exit_code == 2, again.output
    assert "--kind people run, not events" in again.output
    assert results.read_bytes() == content


def test_errors_name_the_users_column_and_merges_keep_the_primary(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("who,token,os\nc1,,ios\nc2,t2,Windows Phone\n", encoding="utf-8")
    args = ("--id-column", "who", "--device-id-column", "token", "--platform-column", "os")
    assert invoke("sync", source, "--kind", "devices", *args, "--dry-run").exit_code == 1
    errors = [line["error"] for line in read_results(Path(f"{source}.dry-run.jsonl"))]
    assert errors == [
        "token: empty device id",
        "os: 'Windows Phone' is not a platform: use ios or android",
    ]

    merges = tmp_path / "merges.csv"
    merges.write_text("primary,secondary\nc1,c1\nc2,\n", encoding="utf-8")
    assert invoke("sync", merges, "--kind", "merges", "--dry-run").exit_code == 1
    lines = read_results(Path(f"{merges}.dry-run.jsonl"))
    assert [(line["id"], line["status"]) for line in lines] == [
        ("c1", "invalid"),
        ("c2", "invalid"),
    ]


def test_a_constant_option_and_a_column_of_that_name_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,device_id,platform\nc1,t1,windows\n", encoding="utf-8")
    result = invoke("sync", source, "--kind", "devices", "--platform", "ios", "--dry-run")
    assert result.exit_code == 2, result.output
    assert "--exclude platform" in result.output
    excluded = invoke(
        "sync",
        source,
        "--kind",
        "devices",
        "--platform",
        "ios",
        "--exclude",
        "platform",
        "--dry-run",
    )
    assert excluded.exit_code == 0, excluded.output
    (line,) = read_results(Path(f"{source}.dry-run.jsonl"))
    assert line["payload"] == {"device": {"id": "t1", "platform": "ios"}}


def test_a_dry_run_of_an_irreversible_kind_says_yes_is_needed(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id\nc1\n", encoding="utf-8")
    result = invoke("sync", source, "--kind", "deletions", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "run again without --dry-run and with --yes to send" in result.output


def test_yes_counts_only_rows_not_yet_done_and_a_finished_run_needs_none(
    api_env: ServerThread, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id\nc1\nc2\nc3\nc4\n", encoding="utf-8")
    args = ("sync", source, "--kind", "deletions", "--rate", "0")
    # The first two deleted: the user confirmed those, not the rest.
    assert invoke(*args, "--yes", "--limit", "2").exit_code == 0
    refused = invoke(*args)
    assert refused.exit_code == 2
    assert "2 row(s) would be sent" in refused.output
    assert invoke(*args, "--yes").exit_code == 0
    api_env.reset()
    again = invoke(*args)  # every row has its outcome: nothing to send, nothing to confirm
    assert again.exit_code == 0, again.output
    assert sent(api_env) == []


@pytest.mark.parametrize(
    ("kind", "header", "rows", "changed"),
    [
        (
            "objects",
            "object_type_id,object_id,plan",
            ["1,a,pro", "1,b,free", "2,a,pro"],
            "1,b,team",
        ),
        (
            "devices",
            "id,device_id,platform",
            ["c1,t1,ios", "c1,t2,ios", "c2,t1,ios"],
            "c1,t2,android",
        ),
        (
            "relationships",
            "id,object_type_id,object_id,role",
            ["c1,1,a,admin", "c1,1,b,member", "c2,1,a,member"],
            "c1,1,b,owner",
        ),
    ],
)
def test_state_skips_what_was_accepted_for_the_same_target(
    kind: str, header: str, rows: list[str], changed: str, api_env: ServerThread, tmp_path: Path
) -> None:
    """The state's key is the whole target (object type and id; person and device; person and
    object), so rows sharing a person or an id are not taken for one another."""
    source = tmp_path / "in.csv"
    state = tmp_path / "state.db"
    args = ("sync", source, "--kind", kind, "--state", state, "--rate", "0", "--fresh", "--json")
    source.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    assert invoke(*args).exit_code == 0
    assert len(sent(api_env)) == 3
    api_env.reset()
    source.write_text("\n".join([header, rows[0], changed, rows[2]]) + "\n", encoding="utf-8")
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    summary = orjson.loads(again.output.strip().splitlines()[-1])
    assert (summary["ok"], summary["unchanged"]) == (1, 2)
    (rec,) = sent(api_env)
    line = {line["row"]: line for line in read_results(Path(f"{source}.results.jsonl"))}
    assert line[2]["status"] == "ok" and line[1]["status"] == line[3]["status"] == "unchanged"
    assert changed.split(",")[-1] in orjson.dumps(rec.body).decode()


def test_each_kinds_action_names_the_operation_it_builds() -> None:
    """The table's "type action" is what the operation says (and what the simulator counts)."""
    for case in CASES:
        kind = KINDS[case.kind]
        assert f"{case.operation['type']} {case.operation['action']}" == kind.action


def test_a_merge_refused_after_an_unclear_attempt_says_it_may_have_been_applied(
    api_env: ServerThread, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("primary,secondary\nc1,c2\n", encoding="utf-8")
    api_env.fake.config.fail_first = {"c1": 1}  # a 503 first: did the merge happen?
    api_env.fake.config.reject_ids = frozenset({"c2"})  # then a 400, as if c2 were gone
    result = invoke("sync", source, "--kind", "merges", "--yes", "--rate", "0")
    assert result.exit_code == 1, result.output
    (line,) = read_results(Path(f"{source}.results.jsonl"))
    assert line["status"] == "failed" and line["attempts"] == 2
    assert "may have been applied" in line["error"]


def test_an_irreversible_kind_from_a_pipe_needs_yes_since_it_cannot_be_counted(
    api_env: ServerThread,
) -> None:
    result = CliRunner().invoke(main, ["sync", "-", "--kind", "deletions"], input="id\nc1\n")
    assert result.exit_code == 2, result.output
    assert "--yes" in result.output and "pipe" in result.output
    assert api_env.snapshot()[0] == []


def test_ulid_digits_are_the_five_bit_groups_of_time_then_entropy() -> None:
    """ulid() makes two digits per lookup: the same 26 Crockford digits as one 5-bit group
    at a time (a derived event id must not change between versions: Customer.io drops a
    copy by its id)."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

    def digit_by_digit(ms: int, entropy: bytes) -> str:
        value = (min(max(ms, 0), 2**48 - 1) << 80) | int.from_bytes(entropy[:10].rjust(10, b"\0"))
        return "".join(alphabet[(value >> shift) & 31] for shift in range(125, -1, -5))

    rng = random.Random(5)
    cases = [
        (rng.randrange(-10, 2**49), rng.randbytes(rng.choice([0, 3, 10, 12]))) for _ in range(3000)
    ]
    cases += [(0, b""), (2**48 - 1, b"\xff" * 10), (-1, b"\x01")]
    assert [ulid(*case) for case in cases] == [digit_by_digit(*case) for case in cases]
    assert ulid(2**48 - 1, b"\xff" * 10) == "7" + "Z" * 25


def test_derived_event_ids_are_those_of_the_whole_row_as_sorted_json() -> None:
    """The derived id hashes orjson.dumps([identifier, name, timestamp, data], sorted keys),
    as it always did, though the data comes serialized already: the ids of events a
    previous version sent are the same (Customer.io drops a copy by its id)."""
    import hashlib

    from bulksync.operations import event_id

    rng = random.Random(9)
    words = ["a", "Zoë", 'q"', "b\\", "\n", "中", "z", "A"]

    def value(depth: int) -> Any:
        choice = rng.randrange(6 if depth < 2 else 4)
        if choice == 0:
            return rng.choice(words)
        if choice == 1:
            return rng.choice([0, -1, 2**53 + 1, 1.5, True, None])
        if choice in (2, 3):
            return rng.randrange(10**6)
        if choice == 4:
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        return {rng.choice(words): value(depth + 1) for _ in range(rng.randrange(4))}

    for _ in range(500):
        data = {rng.choice(words): value(0) for _ in range(rng.randrange(5))}
        who, name = rng.choice(words), rng.choice(words)
        timestamp = rng.choice([None, 0, 1_700_000_000])
        whole = orjson.dumps([who, name, timestamp, data], option=orjson.OPT_SORT_KEYS)
        expected = ulid((timestamp or 0) * 1000, hashlib.blake2b(whole, digest_size=10).digest())
        body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        assert event_id(who, name, timestamp, body, None) == expected
