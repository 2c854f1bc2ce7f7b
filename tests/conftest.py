"""Shared fixtures. Tests talk to real parts: files on disk, the CLI through click's CliRunner or a
subprocess, and (for sending) the local Track API simulator over loopback."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def read_results(path: Path) -> list[dict[str, object]]:
    """Every line of a results file, parsed."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture
def results_path(tmp_path: Path) -> Path:
    return tmp_path / "out.results.jsonl"
