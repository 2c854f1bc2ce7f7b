"""Every sample row's expected outcome, through the real CLI."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from bulksync.cli import main

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
