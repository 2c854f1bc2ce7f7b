"""Shared fixtures. Tests talk to real parts: files on disk, the CLI through click's CliRunner or a
subprocess, and (for sending) the local Track API simulator over loopback."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from bulksync.fake import FakeConfig
from bulksync.fake.process import ServerThread

T = TypeVar("T")
SITE_ID = "site-123"
# A recognisable secret: tests assert it never appears in any output or file.
API_KEY = "sk-secret-9f8e7d6c5b4a"

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every outcome line of a results file, parsed (the header line left out)."""
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [line for line in lines if "row" in line]


@pytest.fixture
def results_path(tmp_path: Path) -> Path:
    return tmp_path / "out.results.jsonl"


@pytest.fixture
def fake() -> Iterator[ServerThread]:
    """A running simulator (credentials site/key); tests may change `fake.fake.config`."""
    server = ServerThread(FakeConfig(site_id=SITE_ID, api_key=API_KEY))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def api_env(fake: ServerThread, monkeypatch: pytest.MonkeyPatch) -> ServerThread:
    """The environment a user sets: credentials and the simulator's URL."""
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", SITE_ID)
    monkeypatch.setenv("CUSTOMERIO_API_KEY", API_KEY)
    monkeypatch.setenv("BULKSYNC_BASE_URL", fake.url)
    return fake


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    """CLI processes a test starts (`Proc`s of tests/test_resume.py); any still running at the
    end are killed."""
    started: list[Any] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


@contextlib.contextmanager
def after_requests(
    fake: ServerThread, n: int, change: Callable[[FakeConfig], None]
) -> Iterator[None]:
    """Change the simulator's config once it has received `n` requests (in a watcher thread)."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and len(fake.fake.requests) < n:
            time.sleep(0.002)
        change(fake.fake.config)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
