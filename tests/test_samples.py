"""Every sample row's expected outcome, through the real CLI."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bulksync.cli import main
from bulksync.fake.process import ServerThread

from .conftest import SAMPLES, read_results

# row -> expected start of the reason; every other row is valid.
CSV_INVALID = {
    15: "email: invalid email 'maria.rossi@@example.com'",
    23: "created_at: cannot read '31/02/2023' as a date",
    31: "id: empty identifier",
    42: "email: invalid email 'no-at-sign.example.com'",
}
JSONL_INVALID = {**CSV_INVALID, 46: "malformed JSON"}


@pytest.mark.parametrize(
    ("name", "invalid"), [("customers.csv", CSV_INVALID), ("customers.jsonl", JSONL_INVALID)]
)
def test_sample_dry_run_outcomes(name: str, invalid: dict[int, str], results_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["sync", str(SAMPLES / name), "--dry-run", "--results", str(results_path)]
    )
    assert result.exit_code == 1, result.output  # some rows are invalid
    lines = read_results(results_path)
    assert [line["row"] for line in lines] == list(range(1, 51))
    for line in lines:
        row = line["row"]
        assert isinstance(row, int)
        if row in invalid:
            assert line["status"] == "invalid"
            assert str(line["error"]).startswith(invalid[row])
        else:
            assert line["status"] == "valid", line
            assert line["error"] is None
    assert re.search(rf"invalid\s+{len(invalid)}\n", result.output)
    assert stat.S_IMODE(results_path.stat().st_mode) == 0o600


def test_sample_payload_keeps_strings_and_converts_dates(results_path: Path) -> None:
    CliRunner().invoke(
        main, ["sync", str(SAMPLES / "customers.csv"), "--dry-run", "--results", str(results_path)]
    )
    by_row = {line["row"]: line for line in read_results(results_path)}
    payload = by_row[10]["payload"]
    assert isinstance(payload, dict)
    assert payload["zip"] == "01234"  # a zip code stays a string, leading zero kept
    assert payload["created_at"] == 1622505600  # 2021-06-01 (date only, UTC midnight)
    assert "notes" not in payload  # empty cell left out
    assert by_row[8]["payload"]["notes"] == "Moved office,\nnew address pending"  # type: ignore[index]


# --- the migration samples: one file per --kind, as exported from Braze, Mailchimp or a CRM ---

COMPANY = ["--object-type-id", "1", "--object-id-column", "company_id"]
OBJECTS = ["--kind", "objects", *COMPANY]
RELATIONSHIPS = ["--kind", "relationships", *COMPANY]
DEVICES = ["--kind", "devices", "--id-column", "external_id"]
BRAZE_EVENT = ["--event-column", "event_name", "--timestamp-column", "time"]
EVENTS = ["--kind", "events", "--id-column", "external_id", *BRAZE_EVENT]
SUPPRESSIONS = ["--kind", "suppressions", "--id-column", "Email Address"]
MERGES = ["--kind", "merges"]

# (file, options, rows, {row: expected start of the reason}); every other row is valid.
KIND_SAMPLES = [
    ("companies.csv", OBJECTS, 8, {}),
    ("memberships.csv", RELATIONSHIPS, 22, {}),
    (
        "devices.csv",
        DEVICES,
        13,
        {8: "platform: 'windows' is not a platform", 12: "device_id: empty device id"},
    ),
    ("purchases.jsonl", EVENTS, 22, {10: "event_name: empty event name"}),
    ("unsubscribes.csv", SUPPRESSIONS, 6, {}),
    ("merges.csv", MERGES, 11, {11: "primary and secondary are the same person ('cust-1011')"}),
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid_milliseconds(ulid: str) -> int:
    """The time part of a ULID: its first 10 characters, 48 bits of Unix milliseconds."""
    value = 0
    for char in ulid[:10]:
        value = value * 32 + _CROCKFORD.index(char)
    return value


def _dry_run(name: str, options: list[str], results_path: Path) -> dict[int, dict[str, Any]]:
    result = CliRunner().invoke(
        main, ["sync", str(SAMPLES / name), *options, "--dry-run", "--results", str(results_path)]
    )
    assert result.exit_code in (0, 1), result.output
    return {int(line["row"]): line for line in read_results(results_path)}


@pytest.mark.parametrize(("name", "options", "rows", "invalid"), KIND_SAMPLES)
def test_kind_sample_dry_run_outcomes(
    name: str, options: list[str], rows: int, invalid: dict[int, str], results_path: Path
) -> None:
    # A dry run needs no --yes, even for suppressions and merges.
    result = CliRunner().invoke(
        main, ["sync", str(SAMPLES / name), *options, "--dry-run", "--results", str(results_path)]
    )
    assert result.exit_code == (1 if invalid else 0), result.output
    lines = read_results(results_path)
    assert [line["row"] for line in lines] == list(range(1, rows + 1))
    kind = options[options.index("--kind") + 1]
    for line in lines:
        assert line["op"] == kind
        if line["row"] in invalid:
            assert line["status"] == "invalid", line
            assert str(line["error"]).startswith(invalid[int(line["row"])]), line
        else:
            assert line["status"] == "valid", line
            assert line["error"] is None
    if invalid:
        assert re.search(rf"invalid\s+{len(invalid)}\n", result.output)


def test_companies_become_objects(results_path: Path) -> None:
    by_row = _dry_run("companies.csv", [*OBJECTS, "--type", "employees=int"], results_path)
    assert by_row[5]["id"] == "1:co-105"
    assert by_row[5]["payload"] == {
        "type": "object",
        "identifiers": {"object_type_id": "1", "object_id": "co-105"},
        "action": "identify",
        "attributes": {  # company_id names the object: not sent as an attribute
            "name": "Rossi Architetti, S.r.l.",
            "industry": "Architecture",
            "plan": "pro",
            "employees": 24,
            "created_at": 1677542400,  # 2023-02-28
            "website": "rossi-architetti.example.com",
        },
    }


def test_memberships_become_relationships(results_path: Path) -> None:
    by_row = _dry_run("memberships.csv", RELATIONSHIPS, results_path)
    # cust-1021 belongs to two companies: two rows, each its own relationship.
    assert [by_row[row]["payload"] for row in (20, 21)] == [
        {
            "type": "person",
            "identifiers": {"id": "cust-1021"},
            "action": "add_relationships",
            "cio_relationships": [
                {
                    "identifiers": {"object_type_id": "1", "object_id": company},
                    "relationship_attributes": {"role": role},
                }
            ],
        }
        for company, role in (("co-101", "admin"), ("co-107", "advisor"))
    ]


def test_devices_platform_lower_cased_and_last_used_converted(results_path: Path) -> None:
    by_row = _dry_run("devices.csv", DEVICES, results_path)
    assert by_row[1]["id"] == "cust-1001"
    assert by_row[1]["payload"] == {
        "device": {
            "id": "7f3c9a1e5b2d4c6f8a0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a",
            "platform": "ios",  # "iOS" in the export
            "last_used": 1714637662,  # 2024-05-02T08:14:22Z
            "attributes": {"app_version": "5.12.0", "model": "iPhone15,2"},
        }
    }
    assert by_row[5]["payload"]["device"]["platform"] == "android"  # "ANDROID"
    assert by_row[5]["payload"]["device"]["last_used"] == 1714685412  # 06:30:12+09:00


def test_purchase_events_timestamp_and_ulid(results_path: Path) -> None:
    by_row = _dry_run("purchases.jsonl", EVENTS, results_path)
    payload = by_row[1]["payload"]
    # 2024-03-02T14:05:11-05:00 is 19:05:11 UTC; external_id, event_name and time are not data.
    assert payload["name"] == "purchase"
    assert payload["timestamp"] == 1709406311
    assert payload["data"] == {
        "product_id": "sku-espresso-200",
        "price": 24.5,  # JSON numbers stay numbers
        "currency": "USD",
        "quantity": 2,
    }
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", payload["id"])
    assert _ulid_milliseconds(payload["id"]) == 1709406311 * 1000
    assert by_row[5]["payload"]["timestamp"] == 1710011111  # "2024-03-09T19:05:11.000Z"
    # Rows 11 and 12 are the same purchase exported twice: same id, so it is counted once.
    assert by_row[11]["payload"] == by_row[12]["payload"]
    ids = [line["payload"]["id"] for row, line in by_row.items() if row not in (10, 12)]
    assert len(set(ids)) == len(ids) == 20


def test_unsubscribes_and_merges_payloads(tmp_path: Path) -> None:
    by_row = _dry_run("unsubscribes.csv", SUPPRESSIONS, tmp_path / "unsubscribes.jsonl")
    # The email names the person; the other Mailchimp columns are ignored.
    assert by_row[3]["id"] == "nora.muller47@example.com"
    assert by_row[3]["payload"] == {}
    by_row = _dry_run("merges.csv", MERGES, tmp_path / "merges.jsonl")
    assert by_row[1]["id"] == "cust-1001"
    assert by_row[1]["payload"] == {
        "primary": {"id": "cust-1001"},
        "secondary": {"id": "user-1001"},
    }


def test_suppressions_need_yes(api_env: ServerThread, results_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["sync", str(SAMPLES / "unsubscribes.csv"), *SUPPRESSIONS, "--results", str(results_path)],
    )
    assert result.exit_code == 2, result.output
    assert "6 row(s)" in result.output and "--yes" in result.output
    assert "--dry-run" in result.output
    requests, _ = api_env.snapshot()
    assert requests == []  # nothing sent, not even the credentials check
