"""Mapping files (`sync --mapping FILE.toml`), `--set`, `--snake-case`, `when_filled` and the
starting mapping of `bulksync mapping INPUT`, through the CLI: the exact bodies the simulator
receives, and every mistake in a mapping refused before anything is read or sent, naming the
file, the key and its line. The parser's own rules (line numbers, snake_case) are tested on
their functions where that is clearer."""

from __future__ import annotations

import csv
import io
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main
from bulksync.fake.process import ServerThread
from bulksync.mapping import line_of, parse
from bulksync.normalize import snake_case

from .conftest import API_KEY, read_results

REGION_PATH = "/api/v1/accounts/region"
PEOPLE = "id,First Name,email,Plan\nc1,Ann,ann@example.com,pro\nc2,Bob,,free\n"
COLUMNS_FOUND = "columns found: id, First Name, email, Plan"


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def seconds(text: str, zone: str = "UTC") -> int:
    """Unix seconds of an ISO date or time; without an offset, in `zone`."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return int(moment.timestamp())


def bodies(fake: ServerThread) -> dict[str | None, Any]:
    """The body of each request the simulator received, by the person it names (the
    credentials check left out); each person once."""
    requests, _ = fake.snapshot()
    sent = [rec for rec in requests if rec.path != REGION_PATH]
    found = {rec.identifier: rec.body for rec in sent}
    assert len(found) == len(sent), "a person was sent twice"
    return found


def send(
    fake: ServerThread, tmp_path: Path, content: str, *args: str | Path, name: str = "in.csv"
) -> dict[str | None, Any]:
    """Sync `content` (written to tmp_path/name) to the simulator; each person's body."""
    source = write(tmp_path / name, content)
    result = invoke("sync", source, "--rate", "0", "--quiet", *args)
    assert result.exit_code == 0, result.output
    assert all(line["status"] == "ok" for line in read_results(Path(f"{source}.results.jsonl")))
    return bodies(fake)


def dry_payloads(tmp_path: Path, source: Path, *args: str | Path) -> list[Any]:
    """Each row's payload in a dry run (None for an invalid row), in row order."""
    results = tmp_path / "dry.jsonl"
    result = invoke("sync", source, "--dry-run", "--fresh", "--results", results, *args)
    assert result.exit_code in (0, 1), result.output
    lines = sorted(read_results(results), key=lambda line: line["row"])
    return [line.get("payload") for line in lines]


def refused(fake: ServerThread, tmp_path: Path, *args: str | Path) -> str:
    """Run a real sync of tmp_path/in.csv (written beforehand) that must be refused: exit 2, one
    error line, nothing sent (not even the credentials check), no results file. The line."""
    results = tmp_path / "out.results.jsonl"
    result = invoke("sync", tmp_path / "in.csv", "--results", results, "--rate", "0", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert fake.snapshot()[0] == []
    assert not results.exists()
    assert not Path(f"{tmp_path / 'in.csv'}.results.jsonl").exists()
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines[0].startswith("Usage:") else "\n".join(lines)


# --- mistakes in a mapping: exit 2 before anything is read or sent ---------------------------

MISTAKES = [
    pytest.param(
        'kind = "people"\nid_colum = "id"\n',
        ["m.toml line 2: id_colum: unknown key; a mapping's keys are kind, id_column"],
        id="unknown-key",
    ),
    pytest.param(
        'kind = "people"\nid-column = "id"\n',
        ["m.toml line 2: id-column: unknown key; write id_column"],
        id="option-name-with-dashes",
    ),
    pytest.param(
        '[columns]\n"First Name" = { nam = "first" }\n',
        ["m.toml line 2: First Name: unknown key 'nam'; a column's keys are name, type"],
        id="unknown-column-key",
    ),
    pytest.param(
        'kind = "people"\n\nsnake_case = "yes"\n',
        ["m.toml line 3: snake_case: must be a boolean (true or false), not 'yes'"],
        id="wrong-value-type",
    ),
    pytest.param(
        "[columns]\nPlan = { exclude = 1 }\n",
        ["m.toml line 2: Plan: exclude must be a boolean"],
        id="wrong-column-value-type",
    ),
    pytest.param(
        '[columns]\nPlan = { type = "integer" }\n',
        ["m.toml line 2: Plan: type 'integer' must be one of int, float, bool, str, date, email"],
        id="bad-column-type",
    ),
    pytest.param(
        '[columns]\n"First Name" = "first_name"\n"Last Name" = "last_name"\n',
        ["m.toml line 3: column 'Last Name' is not in the input", COLUMNS_FOUND],
        id="column-the-input-lacks",
    ),
    pytest.param(
        'id_column = "Customer ID"\n',
        ["m.toml line 1: column 'Customer ID' is not in the input", COLUMNS_FOUND],
        id="id-column-the-input-lacks",
    ),
    pytest.param(
        'kind = "people"\nemail_column = "E-mail"\n',
        ["m.toml line 2: column 'E-mail' is not in the input"],
        id="email-column-the-input-lacks",
    ),
    pytest.param(
        'kind = "events"\nevent_column = "What"\n',
        ["m.toml line 2: column 'What' is not in the input"],
        id="role-column-the-input-lacks",
    ),
    pytest.param(
        'kind = "people"\nevent_name = "signup"\n',
        ["m.toml line 2: event_name: does not apply to --kind people"],
        id="another-kinds-key",
    ),
    pytest.param(
        'kind = "people\n',
        ["m.toml: not a valid TOML file", "line 1"],
        id="invalid-toml",
    ),
    pytest.param(
        'kind = "people"\nkind = "events"\n',
        ["m.toml: not a valid TOML file"],
        id="a-key-twice",
    ),
    pytest.param(
        f'kind = "people"\napi_key = "{API_KEY}"\n',
        ["m.toml line 2: api_key: credentials stay in the environment", "CUSTOMERIO_API_KEY"],
        id="api-key",
    ),
    pytest.param(
        'site_id = "abc"\n',
        ["m.toml line 1: site_id: credentials stay in the environment"],
        id="site-id",
    ),
    pytest.param(
        '[columns]\nemail = { type = "email" }\nPlan = { type = "email" }\n',
        ['m.toml line 3: Plan: only one column can have type = "email"'],
        id="two-email-columns",
    ),
    pytest.param(
        'timezone = "Mars/Olympus"\n',
        ["m.toml line 1: timezone: 'Mars/Olympus' is not a known time zone"],
        id="bad-timezone",
    ),
    pytest.param(
        'kind = "customers"\n',
        ["m.toml line 1: kind: 'customers' must be one of people, events, devices"],
        id="kind-not-a-kind",
    ),
    pytest.param('format = "xlsx"\n', ["m.toml line 1: format: 'xlsx'"], id="bad-format"),
    pytest.param('empty = "never"\n', ["m.toml line 1: empty: 'never'"], id="bad-empty"),
    pytest.param(
        'delimiter = ";;"\n',
        ["m.toml line 1: delimiter: ';;' must be a single character"],
        id="bad-delimiter",
    ),
    pytest.param(
        'encoding = "klingon"\n',
        ["m.toml line 1: encoding: 'klingon' is not a known encoding"],
        id="bad-encoding",
    ),
    pytest.param(
        'kind = "devices"\nplatform = "windows"\n',
        ["m.toml line 2: platform: must be one of ios, android"],
        id="bad-platform",
    ),
    pytest.param('set = "x"\n', ["m.toml line 1: set: must be a table"], id="set-not-a-table"),
    pytest.param(
        '[set]\ntags = ["a", "b"]\n',
        ["m.toml line 2: tags: ['a', 'b']: a value to send must be a string, number"],
        id="set-value-an-array",
    ),
    pytest.param(
        "[set]\nscore = nan\n", ["m.toml line 2: score: nan: not a finite number"], id="set-nan"
    ),
    pytest.param(
        "[set]\nat = 10:30:00\n",
        ["m.toml line 2: at: 10:30:00: a time of day alone is not a date"],
        id="set-a-time-of-day",
    ),
    pytest.param(
        '[set]\nnote = "' + "x" * 1001 + '"\n',
        ["--set note: the value is longer than 1000 bytes"],
        id="set-value-too-long",
    ),
    pytest.param(
        '[set]\nid = "c9"\n',
        ["--set id: an 'id' attribute must be each row's identifier"],
        id="set-id",
    ),
    pytest.param(
        'timezone = "America/New_York"\n[set]\nmigrated_at = 2024-03-10T02:30:00\n',
        ["m.toml: migrated_at: 2024-03-10 02:30:00 is skipped or repeated by a DST change"],
        id="set-a-wall-time-dst-skips",
    ),
    pytest.param('[columns]\nPlan = ""\n', ["m.toml line 2: Plan: the name"], id="empty-name"),
    pytest.param(
        '[columns]\nPlan = { exclude = true, type = "int" }\n',
        ["m.toml line 2: Plan: an excluded column is not sent: give it no name or type"],
        id="excluded-with-a-type",
    ),
    pytest.param(
        "[columns]\nPlan = { when_filled = true }\n",
        ["m.toml line 2: Plan: when_filled must be a table"],
        id="when-filled-not-a-table",
    ),
    pytest.param(
        '[columns]\nPlan = { when_filled = { tags = ["a"] } }\n',
        ["m.toml line 2: Plan: when_filled: tags: ['a']: a value to send must be"],
        id="when-filled-value-an-array",
    ),
    pytest.param(
        "[columns]\n"
        "email = { when_filled = { vip = true } }\n"
        "Plan = { when_filled = { vip = false } }\n",
        ["m.toml line 3: Plan: when_filled: vip = false, but column 'email' sets it to true"],
        id="two-when-filled-disagree",
    ),
    pytest.param(
        '[columns]\nemail = { when_filled = { Plan = "gold" } }\n',
        ["m.toml line 2: email: when_filled Plan: column 'Plan' is also sent as 'Plan'"],
        id="when-filled-over-a-column",
    ),
    # Line numbers: a key of another table, a column's own keys and comments are no match.
    pytest.param(
        '[set]\nPlan = "x"\n\n[columns]\nPlan = { nam = "p" }\n',
        ["m.toml line 5: Plan: unknown key 'nam'"],
        id="line-of-a-column-not-of-the-set-key",
    ),
    pytest.param(
        '# name = "x"\n[columns]\n"First Name" = { name = "first" }\nname = "full_name"\n',
        ["m.toml line 4: column 'name' is not in the input"],
        id="line-of-a-column-not-a-comment-nor-a-columns-key",
    ),
    pytest.param(
        '[columns."Last Name"]\nname = "last"\n',
        ["m.toml line 1: column 'Last Name' is not in the input"],
        id="line-of-a-column-written-as-a-table",
    ),
]


@pytest.mark.parametrize(("text", "fragments"), MISTAKES)
def test_a_mistake_in_a_mapping_is_refused_naming_the_file_the_line_and_the_key(
    text: str, fragments: list[str], api_env: ServerThread, tmp_path: Path
) -> None:
    write(tmp_path / "in.csv", PEOPLE)
    mapping = write(tmp_path / "m.toml", text)
    message = refused(api_env, tmp_path, "--mapping", mapping)
    assert message.startswith("bulksync: error: "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert API_KEY not in message  # a key written in a mapping is never echoed


def test_a_missing_or_unreadable_mapping_file_is_refused(
    api_env: ServerThread, tmp_path: Path
) -> None:
    write(tmp_path / "in.csv", PEOPLE)
    message = refused(api_env, tmp_path, "--mapping", tmp_path / "nope.toml")
    assert message == f"bulksync: error: --mapping {tmp_path / 'nope.toml'}: no such file"
    (tmp_path / "latin.toml").write_bytes('[set]\nsource = "caf\xe9"\n'.encode("latin-1"))
    message = refused(api_env, tmp_path, "--mapping", tmp_path / "latin.toml")
    assert "latin.toml: not UTF-8 text" in message


def test_mapping_and_preset_together_are_refused(api_env: ServerThread, tmp_path: Path) -> None:
    write(tmp_path / "in.csv", PEOPLE)
    mapping = write(tmp_path / "m.toml", 'kind = "people"\n')
    message = refused(api_env, tmp_path, "--mapping", mapping, "--preset", "mailchimp")
    assert "--mapping and --preset: give one or the other" in message


def test_a_setting_overridden_on_the_command_line_is_still_checked(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """The whole file is checked, even a key an option overrides: the file is what the cron
    line will run with the next time, without the option."""
    write(tmp_path / "in.csv", PEOPLE)
    mapping = write(tmp_path / "m.toml", 'timezone = "Europe/Pariss"\n')
    message = refused(api_env, tmp_path, "--mapping", mapping, "--timezone", "UTC")
    assert "m.toml line 1: timezone: 'Europe/Pariss' is not a known time zone" in message


@pytest.mark.parametrize(
    ("text", "key", "table", "line"),
    [
        ('kind = "people"\n[columns]\nkind = "k"\n', "kind", None, 1),
        ('kind = "people"\n[columns]\nkind = "k"\n', "kind", "columns", 3),
        ('[set]\nplan = "x"\n[columns]\nplan = "p"\n', "plan", "set", 2),
        ('[columns]\nplan = "p"\n[set]\nplan = "x"\n', "plan", "set", 4),
        ('[columns]\n"Email" = { name = "e" }\nname = "n"\n', "name", "columns", 3),
        ('[columns]\n"say \\"hi\\"" = "s"\n', 'say "hi"', "columns", 2),
        ("[columns]\n'a\\b' = \"s\"\n", "a\\b", "columns", 2),
        ('# "x" = 1\n\n[columns]\n  "x" = "y"\n', "x", "columns", 4),
        ('[columns."A B"]\nname = "ab"\n', "A B", "columns", 1),
        ('[[steps]]\nname = "s"\ncolumns = { "A" = "a" }\n', "A", "columns", 3),
        ('[[steps]]\nname = "s"\n[steps.columns]\n"A" = "a"\n', "A", "columns", 4),
        ('a = "\u2028"\n[columns]\nb = "c"\n', "b", "columns", 3),
        ("[columns]\n", "nope", "columns", None),
    ],
)
def test_line_of_a_key(text: str, key: str, table: str | None, line: int | None) -> None:
    assert line_of(text, key, table) == line


# --- --set and [set] -------------------------------------------------------------------------


def test_set_on_the_command_line_strings_and_booleans(
    api_env: ServerThread, tmp_path: Path
) -> None:
    result = send(
        api_env,
        tmp_path,
        PEOPLE,
        *("--set", "source=import", "--set", "vip=true", "--set", "churned=false"),
        *("--set", "landing=https://example.com/?a=b&c=d", "--set", "empty="),
        *("--set", "count=5", "--set", "shout=TRUE"),
    )
    added = {
        "source": "import",
        "vip": True,
        "churned": False,
        "landing": "https://example.com/?a=b&c=d",  # split at the first "=" only
        "empty": "",
        "count": "5",  # a string: on the command line only true and false are not
        "shout": "TRUE",
    }
    assert result == {
        "c1": {"id": "c1", "First Name": "Ann", "email": "ann@example.com", "Plan": "pro", **added},
        "c2": {"id": "c2", "First Name": "Bob", "Plan": "free", **added},
    }


def test_set_in_a_mapping_keeps_tomls_types_and_dates_become_seconds(
    api_env: ServerThread, tmp_path: Path
) -> None:
    mapping = write(
        tmp_path / "m.toml",
        'timezone = "Europe/Paris"\n'
        "[columns]\n"
        "Plan = { exclude = true }\n"
        '"First Name" = { exclude = true }\n'
        "[set]\n"
        'source = "crm"\n'
        "score = 42\n"
        "ratio = 0.25\n"
        "vip = true\n"
        "imported_at = 2024-05-01T10:00:00Z\n"
        "offset_at = 2024-05-01T10:00:00+02:00\n"
        "local_at = 2024-05-01T10:00:00\n"  # no offset: the mapping's time zone
        "day = 2024-05-01\n",  # a date: its midnight there
    )
    result = send(api_env, tmp_path, PEOPLE, "--mapping", mapping)
    added = {
        "source": "crm",
        "score": 42,
        "ratio": 0.25,
        "vip": True,
        "imported_at": seconds("2024-05-01T10:00:00+00:00"),
        "offset_at": seconds("2024-05-01T08:00:00+00:00"),
        "local_at": seconds("2024-05-01T10:00:00", "Europe/Paris"),
        "day": seconds("2024-05-01T00:00:00", "Europe/Paris"),
    }
    assert result == {
        "c1": {"id": "c1", "email": "ann@example.com", **added},
        "c2": {"id": "c2", **added},
    }
    assert orjson.dumps(result["c2"]).count(b".") == 1  # 42 is sent as 42, not 42.0


def test_set_on_the_command_line_overrides_the_mappings(
    api_env: ServerThread, tmp_path: Path
) -> None:
    mapping = write(
        tmp_path / "m.toml",
        'timezone = "Europe/Paris"\n[set]\nsource = "crm"\nwave = 1\nat = 2024-05-01T10:00:00\n',
    )
    args = ("--mapping", mapping, "--set", "source=manual", "--timezone", "UTC")
    result = send(api_env, tmp_path, "id\nc1\n", *args)
    # --timezone applies to the mapping's dates without an offset, as to the cells.
    assert result == {
        "c1": {"id": "c1", "source": "manual", "wave": 1, "at": seconds("2024-05-01T10:00:00")}
    }


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--set", "Plan=gold"), ["--set Plan: column 'Plan' is also sent as 'Plan'", "--exclude"]),
        (("--set", "plan=gold", "--rename", "Plan=plan"), ["column 'Plan' is also sent as 'plan'"]),
        (("--set", "first_name=x", "--snake-case"), ["column 'First Name' is also sent as"]),
        (("--set", "id=c9"), ["--set id: an 'id' attribute must be each row's identifier"]),
        (("--set", "email=ann", "--exclude", "email"), ["--set email: invalid email 'ann'"]),
        (("--set", "note=" + "é" * 501), ["--set note: the value is longer than 1000 bytes"]),
        (("--set", "n" * 151 + "=x"), ["the name is longer than 150 bytes"]),
        (("--set", "note=a\x00b"), ["--set note: the value contains a NUL character"]),
        (("--set", "=x"), ["'=x' is not of the form KEY=VALUE"]),
        (("--set", "source"), ["'source' is not of the form KEY=VALUE"]),
        (("--kind", "deletions", "--set", "a=b", "--yes"), ["--set a: --kind deletions sends no"]),
        (("--kind", "merges", "--set", "a=b", "--yes"), ["--kind merges sends no attributes"]),
    ],
)
def test_set_refused(
    args: tuple[str, ...], fragments: list[str], api_env: ServerThread, tmp_path: Path
) -> None:
    write(tmp_path / "in.csv", PEOPLE)
    message = refused(api_env, tmp_path, *args)
    for fragment in fragments:
        assert fragment in message


def test_set_of_a_column_excluded_is_sent_instead(api_env: ServerThread, tmp_path: Path) -> None:
    args = ("--set", "Plan=gold", "--exclude", "Plan", "--set", "email=team@example.com")
    result = send(api_env, tmp_path, "id,Plan\nc1,pro\n", *args)
    assert result == {"c1": {"id": "c1", "Plan": "gold", "email": "team@example.com"}}


def test_set_for_events_is_event_data_without_a_limit_per_value(
    api_env: ServerThread, tmp_path: Path
) -> None:
    long = "y" * 1200  # event data has no per-value limit; attributes do (above)
    args = ("--kind", "events", "--event-name", "import", "--set", f"note={long}")
    send(api_env, tmp_path, "id,total\nc1,9\n", *args)
    (rec,) = [rec for rec in api_env.snapshot()[0] if rec.path != REGION_PATH]
    assert rec.path == "/api/v1/customers/c1/events"
    assert rec.body["data"] == {"total": "9", "note": long}


# --- --snake-case ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "snake"),
    [
        ("First Name", "first_name"),
        ("OPTIN_TIME", "optin_time"),
        ("lastName", "last_name"),
        ("State / Region", "state_region"),
        ("Prénom", "prénom"),
        ("ÉTAT Civil", "état_civil"),
        ("first_name", "first_name"),
        ("userID", "user_id"),
        ("HTTPServer", "http_server"),
        ("Address 2", "address_2"),
        ("E-mail", "e_mail"),
        ("  Last   Login At ", "last_login_at"),
        ("__private__", "private"),
        ("🎉", "🎉"),  # no letter or digit: kept as it is, not ""
    ],
)
def test_snake_case(name: str, snake: str) -> None:
    assert snake_case(name) == snake


def test_snake_case_sends_the_names_not_renamed_in_snake_case(
    api_env: ServerThread, tmp_path: Path
) -> None:
    content = "id,First Name,OPTIN_TIME,lastName,State / Region,Prénom\nc1,Ann,x,Lee,GA,Anne\n"
    result = send(api_env, tmp_path, content, "--snake-case", "--rename", "lastName=surname")
    assert result == {
        "c1": {
            "id": "c1",
            "first_name": "Ann",
            "optin_time": "x",
            "surname": "Lee",  # a rename wins
            "state_region": "GA",
            "prénom": "Anne",
        }
    }


def test_snake_case_in_a_mapping_as_with_the_option(api_env: ServerThread, tmp_path: Path) -> None:
    mapping = write(
        tmp_path / "m.toml",
        'snake_case = true\n[columns]\n"lastName" = "surname"\n"OPTIN_TIME" = { type = "date" }\n',
    )
    content = "id,First Name,OPTIN_TIME,lastName\nc1,Ann,2024-05-01 10:00:00,Lee\n"
    result = send(api_env, tmp_path, content, "--mapping", mapping)
    assert result == {
        "c1": {
            "id": "c1",
            "first_name": "Ann",
            "optin_time": seconds("2024-05-01T10:00:00"),  # a date column, sent in snake_case
            "surname": "Lee",
        }
    }


def test_two_columns_with_one_snake_case_name_are_refused_naming_both(
    api_env: ServerThread, tmp_path: Path
) -> None:
    write(tmp_path / "in.csv", "id,First Name,first_name\nc1,Ann,Anne\n")
    message = refused(api_env, tmp_path, "--snake-case")
    assert "columns 'First Name' and 'first_name' would both be sent as 'first_name'" in message
    args = ("--snake-case", "--exclude", "first_name")
    result = send(api_env, tmp_path, "id,First Name,first_name\nc1,Ann,Anne\n", *args)
    assert result == {"c1": {"id": "c1", "first_name": "Ann"}}


def test_snake_case_names_event_data_not_the_columns_a_kind_reads(
    api_env: ServerThread, tmp_path: Path
) -> None:
    content = "Customer ID,Event Name,Order Total,orderCount\nc1,Purchase,9.5,2\n"
    args = ("--kind", "events", "--snake-case", "--id-column", "Customer ID")
    send(api_env, tmp_path, content, *args, "--event-column", "Event Name")
    (rec,) = [rec for rec in api_env.snapshot()[0] if rec.path != REGION_PATH]
    assert rec.path == "/api/v1/customers/c1/events"
    assert rec.body["name"] == "Purchase"
    assert rec.body["data"] == {"order_total": "9.5", "order_count": "2"}

    clash = tmp_path / "clash"
    clash.mkdir()
    write(clash / "in.csv", "id,Order Total,orderTotal\nc1,9,8\n")
    api_env.reset()
    message = refused(api_env, clash, "--kind", "events", "--event-name", "x", "--snake-case")
    assert "columns 'Order Total' and 'orderTotal' would both be sent as 'order_total'" in message


def test_no_snake_case_overrides_the_mappings(api_env: ServerThread, tmp_path: Path) -> None:
    mapping = write(tmp_path / "m.toml", "snake_case = true\n")
    args = ("--mapping", mapping, "--no-snake-case")
    result = send(api_env, tmp_path, "id,First Name\nc1,Ann\n", *args)
    assert result == {"c1": {"id": "c1", "First Name": "Ann"}}


# --- when_filled -----------------------------------------------------------------------------

UNSUBSCRIBES = "id,UNSUB_TIME,Plan\nc1,2024-01-02 03:04:05,pro\nc2,,free\n"


def test_when_filled_adds_attributes_to_the_rows_filling_the_column(
    api_env: ServerThread, tmp_path: Path
) -> None:
    mapping = write(
        tmp_path / "m.toml",
        "[columns]\n"
        'UNSUB_TIME = { name = "unsubscribed_at", type = "date",'
        " when_filled = { unsubscribed = true, unsubscribed_on = 2024-01-02 } }\n",
    )
    result = send(api_env, tmp_path, UNSUBSCRIBES, "--mapping", mapping)
    assert result == {
        "c1": {
            "id": "c1",
            "unsubscribed_at": seconds("2024-01-02T03:04:05"),
            "Plan": "pro",
            "unsubscribed": True,
            "unsubscribed_on": seconds("2024-01-02T00:00:00"),  # a TOML date here too
        },
        "c2": {"id": "c2", "Plan": "free"},
    }


def test_when_filled_of_an_excluded_column(api_env: ServerThread, tmp_path: Path) -> None:
    mapping = write(
        tmp_path / "m.toml",
        "[columns]\nUNSUB_TIME = { exclude = true, when_filled = { unsubscribed = true } }\n",
    )
    content = f"{UNSUBSCRIBES}c3,  ,team\nc4,not a date,gold\n"
    result = send(api_env, tmp_path, content, "--mapping", mapping)
    assert result == {
        "c1": {"id": "c1", "Plan": "pro", "unsubscribed": True},
        "c2": {"id": "c2", "Plan": "free"},
        "c3": {"id": "c3", "Plan": "team"},  # spaces only: as empty as ""
        "c4": {"id": "c4", "Plan": "gold", "unsubscribed": True},  # excluded: not read as a date
    }


def test_set_wins_over_when_filled(api_env: ServerThread, tmp_path: Path) -> None:
    mapping = write(
        tmp_path / "m.toml",
        "[columns]\nUNSUB_TIME = { exclude = true, when_filled = { unsubscribed = true } }\n",
    )
    args = ("--mapping", mapping, "--set", "unsubscribed=false")
    result = send(api_env, tmp_path, UNSUBSCRIBES, *args)
    assert {person: body["unsubscribed"] for person, body in result.items()} == {
        "c1": False,
        "c2": False,
    }


def test_when_filled_in_jsonl_null_and_missing_keys_are_empty(
    api_env: ServerThread, tmp_path: Path
) -> None:
    mapping = write(
        tmp_path / "m.toml",
        "[columns]\ncancelled = { exclude = true, when_filled = { churned = true } }\n",
    )
    content = (
        '{"id": "c1", "cancelled": "2024-01-01"}\n'
        '{"id": "c2", "cancelled": null}\n'
        '{"id": "c3"}\n'
        '{"id": "c4", "cancelled": false}\n'  # filled: a value, even false
    )
    result = send(api_env, tmp_path, content, "--mapping", mapping, name="in.jsonl")
    assert result == {
        "c1": {"id": "c1", "churned": True},
        "c2": {"id": "c2"},
        "c3": {"id": "c3"},
        "c4": {"id": "c4", "churned": True},
    }


# --- options on the command line override the mapping's --------------------------------------

OVERRIDDEN = (
    'kind = "people"\n'
    'id_column = "id"\n'
    'timezone = "Europe/Paris"\n'
    "[columns]\n"
    '"First Name" = "first_name"\n'
    'signup = { name = "signed_up_at", type = "date" }\n'
    '"Customer Email" = { name = "email", type = "email" }\n'
)
OVERRIDDEN_CSV = "id,First Name,signup,Customer Email\nc1,Ann,2024-05-01 10:00:00,ann@example.com\n"
PARIS_SIGNUP = seconds("2024-05-01T10:00:00", "Europe/Paris")


def test_without_options_the_mapping_applies(api_env: ServerThread, tmp_path: Path) -> None:
    mapping = write(tmp_path / "m.toml", OVERRIDDEN)
    result = send(api_env, tmp_path, OVERRIDDEN_CSV, "--mapping", mapping)
    assert result == {
        "c1": {
            "id": "c1",
            "first_name": "Ann",
            "signed_up_at": PARIS_SIGNUP,
            "email": "ann@example.com",
        }
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--rename", "First Name=given_name"),
            {"c1": {"id": "c1", "given_name": "Ann", "signed_up_at": PARIS_SIGNUP}},
        ),
        (
            ("--type", "signup=str"),  # over the mapping's type = "date"
            {"c1": {"id": "c1", "first_name": "Ann", "signed_up_at": "2024-05-01 10:00:00"}},
        ),
        (
            ("--timezone", "UTC"),
            {"c1": {"id": "c1", "first_name": "Ann", "signed_up_at": seconds("2024-05-01T10:00")}},
        ),
        (
            ("--exclude", "First Name"),
            {"c1": {"id": "c1", "signed_up_at": PARIS_SIGNUP}},
        ),
        (
            ("--id-column", "Customer Email", "--exclude", "id"),
            {"ann@example.com": {"first_name": "Ann", "signed_up_at": PARIS_SIGNUP}},
        ),
    ],
)
def test_an_option_overrides_the_mapping_column_by_column(
    args: tuple[str, ...], expected: dict[str, Any], api_env: ServerThread, tmp_path: Path
) -> None:
    mapping = write(tmp_path / "m.toml", OVERRIDDEN)
    result = send(api_env, tmp_path, OVERRIDDEN_CSV, "--mapping", mapping, *args)
    for body in expected.values():
        body["email"] = "ann@example.com"
    assert result == expected


def test_kind_on_the_command_line_overrides_the_mappings(
    api_env: ServerThread, tmp_path: Path
) -> None:
    mapping = write(tmp_path / "m.toml", OVERRIDDEN)
    args = ("--mapping", mapping, "--kind", "events", "--event-name", "signed_up")
    send(api_env, tmp_path, OVERRIDDEN_CSV, *args)
    (rec,) = [rec for rec in api_env.snapshot()[0] if rec.path != REGION_PATH]
    assert (rec.method, rec.path) == ("POST", "/api/v1/customers/c1/events")
    assert rec.body["name"] == "signed_up"
    # The mapping's columns still apply: its renames, dates and time zone, as event data.
    assert rec.body["data"] == {
        "first_name": "Ann",
        "signed_up_at": seconds("2024-05-01T10:00:00", "Europe/Paris"),
        "email": "ann@example.com",
    }


def test_a_kinds_keys_in_a_mapping(api_env: ServerThread, tmp_path: Path) -> None:
    mapping = write(
        tmp_path / "m.toml",
        'kind = "events"\nid_column = "Customer"\nevent_column = "What"\n'
        'timestamp_column = "When"\ntimezone = "Europe/Paris"\nsnake_case = true\n',
    )
    content = "Customer,What,When,Order Total\nc1,purchase,2024-05-01 10:00:00,9\n"
    send(api_env, tmp_path, content, "--mapping", mapping)
    (rec,) = [rec for rec in api_env.snapshot()[0] if rec.path != REGION_PATH]
    assert rec.path == "/api/v1/customers/c1/events"
    body = dict(rec.body)
    assert body.pop("id")
    assert body == {
        "name": "purchase",
        "data": {"order_total": "9"},
        "timestamp": seconds("2024-05-01T10:00:00", "Europe/Paris"),
    }


def test_empty_and_update_only_from_a_mapping_and_overridden(
    api_env: ServerThread, tmp_path: Path
) -> None:
    mapping = write(tmp_path / "m.toml", 'empty = "clear"\nupdate_only = true\n')
    result = send(api_env, tmp_path, PEOPLE, "--mapping", mapping)
    cleared = {"id": "c2", "First Name": "Bob", "email": "", "Plan": "free", "_update": True}
    assert result["c2"] == cleared
    api_env.reset()
    again = send(api_env, tmp_path, PEOPLE, "--mapping", mapping, "--empty", "skip", "--fresh")
    assert again["c2"] == {"id": "c2", "First Name": "Bob", "Plan": "free", "_update": True}


def test_an_excluded_column_is_not_checked(api_env: ServerThread, tmp_path: Path) -> None:
    """A column is left out as often as not because it holds what cannot be sent: its cells
    must not reject the row."""
    mapping = write(tmp_path / "m.toml", "[columns]\nnotes = { exclude = true }\n")
    content = f"id,notes,Plan\nc1,{'x' * 1200},pro\n"
    assert send(api_env, tmp_path, content, "--mapping", mapping) == {
        "c1": {"id": "c1", "Plan": "pro"}
    }
    api_env.reset()
    assert send(api_env, tmp_path, content, "--exclude", "notes", "--fresh") == {
        "c1": {"id": "c1", "Plan": "pro"}
    }


@pytest.mark.parametrize(
    ("content", "args"),
    [
        ("Customer ID,email\nc1,a@example.com\n", ("--rename", "Customer ID=id")),
        ("ID,email\nc1,a@example.com\n", ("--snake-case",)),
    ],
)
def test_a_column_sent_as_id_that_is_not_the_identifier_is_refused_naming_it(
    content: str, args: tuple[str, ...], api_env: ServerThread, tmp_path: Path
) -> None:
    write(tmp_path / "in.csv", content)
    message = refused(api_env, tmp_path, *args)
    column = content.split(",")[0]
    assert f"the identifier is column 'email' but column {column!r} would be sent as 'id'" in (
        message
    )
    assert "--id-column" in message
    people = tmp_path / "ok"
    people.mkdir()
    result = send(api_env, people, content, *args, "--id-column", column)
    assert result == {"c1": {"id": "c1", "email": "a@example.com"}}


# --- how the input is read: a mapping's format, encoding and delimiter ------------------------


def test_a_mappings_format_reads_a_txt_of_json_lines(api_env: ServerThread, tmp_path: Path) -> None:
    mapping = write(tmp_path / "m.toml", 'format = "jsonl"\nsnake_case = true\n')
    content = '{"id": "c1", "First Name": "Ann", "Score": 7, "VIP": true}\n'
    result = send(api_env, tmp_path, content, "--mapping", mapping, name="export.txt")
    assert result == {"c1": {"id": "c1", "first_name": "Ann", "score": 7, "vip": True}}


def test_a_mappings_encoding_and_delimiter(api_env: ServerThread, tmp_path: Path) -> None:
    mapping = write(
        tmp_path / "m.toml",
        'encoding = "cp1252"\ndelimiter = ";"\n[columns]\n"Société" = "company"\n',
    )
    source = tmp_path / "in.csv"
    source.write_bytes("id;Prénom;Société\nc1;Zoé;Acmé €\n".encode("cp1252"))
    result = invoke("sync", source, "--mapping", mapping, "--rate", "0", "--quiet")
    assert result.exit_code == 0, result.output
    assert bodies(api_env) == {"c1": {"id": "c1", "Prénom": "Zoé", "company": "Acmé €"}}
    # The options given win: read as UTF-8, the file is refused.
    api_env.reset()
    again = invoke("sync", source, "--mapping", mapping, "--encoding", "utf-8", "--fresh")
    assert again.exit_code == 2
    assert "not valid utf-8 text" in again.stderr


def test_a_jsonl_input_with_a_mapping(api_env: ServerThread, tmp_path: Path) -> None:
    mapping = write(
        tmp_path / "m.toml",
        "[columns]\n"
        'signup = { name = "created_at", type = "date" }\n'
        'score = { type = "int" }\n'
        "tags = { exclude = true }\n",
    )
    content = (
        '{"id": "c1", "signup": 1714557600, "score": "7", "tags": ["a"]}\n'
        '{"id": 2, "signup": "2024-05-01", "score": 8.0}\n'
    )
    result = send(api_env, tmp_path, content, "--mapping", mapping, name="in.jsonl")
    assert result == {
        "c1": {"id": "c1", "created_at": 1714557600, "score": 7},
        "2": {"id": 2, "created_at": seconds("2024-05-01T00:00:00"), "score": 8},
    }


# --- skip_missing_columns --------------------------------------------------------------------

SEVERAL_EXPORTS = (
    "skip_missing_columns = true\n"
    "[columns]\n"
    '"First Name" = "first_name"\n'
    'UNSUB_TIME = { name = "unsubscribed_at", type = "date",'
    " when_filled = { unsubscribed = true } }\n"
    "CLEAN_TIME = { exclude = true, when_filled = { unsubscribed = true } }\n"
    'MEMBER_RATING = { name = "rating", type = "int" }\n'
)


def test_skip_missing_columns_lets_a_mapping_name_columns_an_input_lacks(
    api_env: ServerThread, tmp_path: Path
) -> None:
    mapping = write(tmp_path / "m.toml", SEVERAL_EXPORTS)
    content = "id,First Name,UNSUB_TIME\nc1,Ann,2024-01-02 03:04:05\nc2,Bob,\n"
    result = send(api_env, tmp_path, content, "--mapping", mapping)
    assert result == {
        "c1": {
            "id": "c1",
            "first_name": "Ann",
            "unsubscribed_at": seconds("2024-01-02T03:04:05"),
            "unsubscribed": True,
        },
        "c2": {"id": "c2", "first_name": "Bob"},
    }


def test_without_skip_missing_columns_a_column_the_input_lacks_is_refused_with_its_line(
    api_env: ServerThread, tmp_path: Path
) -> None:
    mapping = write(tmp_path / "m.toml", SEVERAL_EXPORTS.replace("true", "false", 1))
    write(tmp_path / "in.csv", "id,First Name,UNSUB_TIME,MEMBER_RATING\nc1,Ann,,3\n")
    message = refused(api_env, tmp_path, "--mapping", mapping)
    assert "m.toml line 5: column 'CLEAN_TIME' is not in the input" in message


def test_skip_missing_columns_does_not_forgive_an_option_naming_a_missing_column(
    api_env: ServerThread, tmp_path: Path
) -> None:
    mapping = write(tmp_path / "m.toml", SEVERAL_EXPORTS)
    write(tmp_path / "in.csv", "id,First Name\nc1,Ann\n")
    message = refused(api_env, tmp_path, "--mapping", mapping, "--rename", "Phone=mobile")
    assert "--rename 'Phone': no such column in the input" in message


# --- the starting mapping: bulksync mapping INPUT ----------------------------------------------

EXPORT = (
    "id,Email Address,First Name,lastName,signup_date,Last Login At,lifetime_value,"
    "Time on Site,Twitter,Plan\n"
    "c1,ann@example.com,Ann,Lee,2024-01-02,2024-05-01 10:00:00,12.50,35,@ann,pro\n"
    "c2,bob@example.com,Bob,,2023-12-31,,300,120,@bob,\n"
)


def starter(tmp_path: Path, name: str, content: str | bytes, *args: str) -> str:
    source = tmp_path / name
    source.write_bytes(content.encode() if isinstance(content, str) else content)
    result = invoke("mapping", source, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_starter_lists_every_column_and_guesses_dates_and_the_email(tmp_path: Path) -> None:
    text = starter(tmp_path, "export.csv", EXPORT)
    table = tomllib.loads(text)
    assert table["kind"] == "people" and table["id_column"] == "id"
    assert table["columns"] == {
        "id": "id",
        "Email Address": {"name": "email", "type": "email"},  # Customer.io's email attribute
        "First Name": "first_name",
        "lastName": "last_name",
        "signup_date": {"name": "signup_date", "type": "date"},
        "Last Login At": {"name": "last_login_at", "type": "date"},
        "lifetime_value": "lifetime_value",  # numbers, and no date in its name
        "Time on Site": "time_on_site",  # "time" in its name, but 35 is no date after 1973
        "Twitter": "twitter",  # "@ann" is not an address
        "Plan": "plan",
    }
    assert parse(text, "starter").columns.keys() == table["columns"].keys()


def test_a_sync_with_the_starter_unedited_sends_what_a_user_expects(
    api_env: ServerThread, tmp_path: Path
) -> None:
    """snake_case names, dates as seconds, the address as `email`, nothing else changed: the
    same as --snake-case with those dates and that rename."""
    text = starter(tmp_path, "export.csv", EXPORT)
    mapping = write(tmp_path / "export.toml", text)
    source = tmp_path / "export.csv"
    expected = {
        "c1": {
            "id": "c1",
            "email": "ann@example.com",
            "first_name": "Ann",
            "last_name": "Lee",
            "signup_date": seconds("2024-01-02T00:00:00"),
            "last_login_at": seconds("2024-05-01T10:00:00"),
            "lifetime_value": "12.50",
            "time_on_site": "35",
            "twitter": "@ann",
            "plan": "pro",
        },
        "c2": {
            "id": "c2",
            "email": "bob@example.com",
            "first_name": "Bob",
            "signup_date": seconds("2023-12-31T00:00:00"),
            "lifetime_value": "300",
            "time_on_site": "120",
            "twitter": "@bob",
        },
    }
    result = invoke("sync", source, "--mapping", mapping, "--rate", "0", "--quiet")
    assert result.exit_code == 0, result.output
    assert bodies(api_env) == expected

    options = (
        *("--snake-case", "--rename", "Email Address=email"),
        *("--date-column", "signup_date", "--date-column", "Last Login At"),
    )
    assert dry_payloads(tmp_path, source, *options) == list(expected.values())


@pytest.mark.parametrize(
    ("name", "content", "args", "first"),
    [
        # The identifier: a column called ID; no id but an email column: that one.
        (
            "ids.csv",
            "ID,Email\n7,a@example.com\n",
            (),
            ("7", {"id": "7", "email": "a@example.com"}),
        ),
        (
            "emails.csv",
            "Email Address,First Name\na@example.com,Ann\n",
            (),
            ("a@example.com", {"email": "a@example.com", "first_name": "Ann"}),
        ),
        # Two address columns: one is the email; two names alike: told apart.
        (
            "two.csv",
            "id,Email,Work Email,Plan,plan\nc1,a@example.com,b@example.com,pro,x\n",
            (),
            (
                "c1",
                {
                    "id": "c1",
                    "email": "a@example.com",
                    "work_email": "b@example.com",
                    "plan": "pro",
                    "plan_2": "x",
                },
            ),
        ),
        # How the input was read is written in the starter, so that sync reads it the same way.
        (
            "latin.csv",
            "id;Prénom\nc1;Zoé\n".encode("cp1252"),
            ("--encoding", "cp1252", "--delimiter", ";"),
            ("c1", {"id": "c1", "prénom": "Zoé"}),
        ),
        (
            "export.txt",
            '{"id": "c1", "Signed Up At": 1714557600, "tags": ["a"], "Score": 3}\n',
            ("--format", "jsonl"),
            ("c1", {"id": "c1", "signed_up_at": 1714557600, "score": 3}),
        ),
    ],
)
def test_the_starter_of_an_awkward_export_works_unedited(
    name: str,
    content: str | bytes,
    args: tuple[str, ...],
    first: tuple[str, dict[str, Any]],
    api_env: ServerThread,
    tmp_path: Path,
) -> None:
    mapping = write(tmp_path / "m.toml", starter(tmp_path, name, content, *args))
    result = invoke("sync", tmp_path / name, "--mapping", mapping, "--rate", "0", "--quiet")
    assert result.exit_code == 0, (result.output, mapping.read_text())
    identifier, body = first
    assert bodies(api_env) == {identifier: body}


ODD_HEADER = [
    "id",
    'say "hi"',
    "back\\slash",
    "tab\there",
    "two\nlines",
    "del\x7fete",
    "bell\x07",
    "emoji 🎉",
    "# not a comment",
    "[not a table]",
    "a.b",
    "=",
    "it's",
    "'quoted'",
    "ünïcödé",
    "line\u2028sep",
]


def test_the_starter_of_an_odd_header_is_valid_toml_that_round_trips(
    api_env: ServerThread, tmp_path: Path
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ODD_HEADER)
    writer.writerow(["c1", *(f"v{i}" for i in range(1, len(ODD_HEADER)))])
    text = starter(tmp_path, "odd.csv", buffer.getvalue())
    assert list(tomllib.loads(text)["columns"]) == ODD_HEADER
    mapping = write(tmp_path / "odd.toml", text)
    result = invoke("sync", tmp_path / "odd.csv", "--mapping", mapping, "--rate", "0", "--quiet")
    assert result.exit_code == 0, result.output
    (body,) = bodies(api_env).values()
    assert body == {"id": "c1", **{snake_case(c): f"v{i}" for i, c in enumerate(ODD_HEADER) if i}}


def test_the_starter_of_a_file_with_an_odd_name_is_valid_toml(tmp_path: Path) -> None:
    folder = tmp_path / "a\nb"
    folder.mkdir()
    text = starter(folder, "in.csv", "id\nc1\n")
    assert tomllib.loads(text)["columns"] == {"id": "id"}


def test_mapping_output_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    source = write(tmp_path / "export.csv", EXPORT)
    out = write(tmp_path / "export.toml", "# my edits\n")
    refused_ = invoke("mapping", source, "-o", out)
    assert refused_.exit_code == 2, refused_.output
    assert "exists; pass --force" in refused_.output
    assert out.read_text() == "# my edits\n"
    forced = invoke("mapping", source, "-o", out, "--force")
    assert forced.exit_code == 0, forced.output
    assert tomllib.loads(out.read_text())["id_column"] == "id"
    fresh = tmp_path / "new.toml"
    written = invoke("mapping", source, "-o", fresh)
    assert written.exit_code == 0, written.output
    assert fresh.read_text() == out.read_text() == starter(tmp_path, "export.csv", EXPORT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give an INPUT to map, or a --preset to write"),
        (("in.csv", "--preset", "mailchimp"), "give an INPUT to map, or a --preset to write"),
        (("missing.csv",), "missing.csv: no such file"),
    ],
)
def test_mapping_command_refusals(
    args: tuple[str, ...], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "in.csv", "id\nc1\n")
    result = invoke("mapping", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_set_strips_spaces_around_the_equals_sign(api_env: ServerThread, tmp_path: Path) -> None:
    result = send(api_env, tmp_path, "id,plan\nc1,pro\n", "--set", "tier = gold")
    assert result == {"c1": {"id": "c1", "plan": "pro", "tier": "gold"}}
