"""Hostile environments: outputs planted as links, tampered results files, a full disk, a server
asking to wait for hours, credentials in a URL, identifiers that are path segments."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bulksync.cli import main
from bulksync.errors import UsageError
from bulksync.results import InputIdentity, ResultsLog

from .conftest import API_KEY, ServerThread, read_results


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in.csv"
    path.write_text("id,plan\nc1,pro\nc2,free\n", encoding="utf-8")
    return path


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of the user's that a planted link points to: it must stay as it is."""
    path = tmp_path / "precious.txt"
    path.write_text("do not touch\n", encoding="utf-8")
    path.chmod(0o644)
    return path


def assert_untouched(victim: Path) -> None:
    assert victim.read_text(encoding="utf-8") == "do not touch\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def assert_refused(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output


# --- outputs never follow a link they did not create ------------------------------------------


@pytest.mark.parametrize("extra", [(), ("--fresh",), ("--dry-run",)])
def test_a_results_file_planted_as_a_link_is_refused(
    extra: tuple[str, ...], source: Path, victim: Path, api_env: ServerThread
) -> None:
    name = f"{source}.dry-run.jsonl" if "--dry-run" in extra else f"{source}.results.jsonl"
    Path(name).symlink_to(victim)
    assert_refused(invoke("sync", source, "--rate", "0", *extra), "symbolic link")
    assert_untouched(victim)
    assert api_env.snapshot()[0] == []


def test_a_dangling_link_creates_nothing_at_its_target(
    source: Path, tmp_path: Path, api_env: ServerThread
) -> None:
    target = tmp_path / "elsewhere.jsonl"
    Path(f"{source}.results.jsonl").symlink_to(target)
    assert_refused(invoke("sync", source, "--rate", "0"), "symbolic link")
    assert not target.exists()


def test_a_lock_file_planted_as_a_link_is_refused(
    source: Path, victim: Path, api_env: ServerThread
) -> None:
    Path(f"{source}.results.jsonl.lock").symlink_to(victim)
    assert_refused(invoke("sync", source, "--rate", "0"), "symbolic link", "lock file")
    assert_untouched(victim)


@pytest.mark.parametrize("name", ["state.db", "state.db-wal", "state.db-shm"])
def test_a_state_file_or_journal_planted_as_a_link_is_refused(
    name: str, source: Path, tmp_path: Path, victim: Path, api_env: ServerThread
) -> None:
    (tmp_path / name).symlink_to(victim)
    result = invoke("sync", source, "--rate", "0", "--state", tmp_path / "state.db")
    assert_refused(result, "symbolic link")
    assert_untouched(victim)


def test_an_output_that_is_not_a_regular_file_is_refused(
    source: Path, tmp_path: Path, api_env: ServerThread
) -> None:
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    assert_refused(invoke("sync", source, "--rate", "0", "--results", fifo), "not a regular file")


def test_two_paths_to_one_results_file_share_one_lock(source: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    identity = InputIdentity.of(str(source))
    with (
        ResultsLog(real / "out.jsonl", identity),
        pytest.raises(UsageError, match="in use by another bulksync run"),
    ):
        ResultsLog(tmp_path / "alias" / "out.jsonl", identity)


# --- a tampered results file ------------------------------------------------------------------


@pytest.mark.parametrize("row", ["-3", "0", "4000000000", "4e9", '"7"'])
def test_a_tampered_results_line_is_refused_not_allocated(
    row: str, source: Path, api_env: ServerThread
) -> None:
    assert invoke("sync", source, "--rate", "0").exit_code == 0
    results = Path(f"{source}.results.jsonl")
    with results.open("a", encoding="utf-8") as f:
        f.write(f'{{"row": {row}, "id": "x", "status": "ok"}}\n')
    assert_refused(invoke("sync", source, "--rate", "0"), str(results))


# --- the API asks to wait too long; a URL with credentials; dot identifiers -------------------


def test_retry_after_beyond_max_wait_stops_with_exit_3_and_says_when(
    source: Path, api_env: ServerThread
) -> None:
    api_env.fake.config.fail_429 = 1.0
    api_env.fake.config.retry_after = 999_999
    result = invoke("sync", source, "--rate", "0", "--max-wait", "5")
    assert result.exit_code == 3, result.output
    assert "Retry-After" in result.output and "run again after" in result.output
    lines = read_results(Path(f"{source}.results.jsonl"))
    assert lines == []  # nothing failed for it: every row is sent on resume


def test_a_short_retry_after_is_honoured(source: Path, api_env: ServerThread) -> None:
    api_env.fake.config.fail_first = {"c1": 1}
    api_env.fake.config.retry_after = 1
    result = invoke("sync", source, "--rate", "0", "--max-wait", "5")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "url",
    [
        "http://admin:hunter2@127.0.0.1:9",
        "https://user:hunter2@track.example.invalid",
        "http://127.0.0.1:9/?token=hunter2",
        "http://127.0.0.1:9/#hunter2",
    ],
)
def test_a_base_url_with_credentials_query_or_fragment_is_refused_unechoed(
    url: str, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "site")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", API_KEY)
    result = invoke("sync", source, "--base-url", url)
    assert_refused(result, "--base-url")
    assert "hunter2" not in result.output


@pytest.mark.parametrize("identifier", [".", "..", "..."])
def test_dot_identifiers_are_invalid_not_sent_as_path_segments(
    identifier: str, tmp_path: Path, api_env: ServerThread
) -> None:
    path = tmp_path / "dots.csv"
    path.write_text(f"id,plan\n{identifier},pro\nc2,free\n", encoding="utf-8")
    result = invoke("sync", path, "--rate", "0")
    assert result.exit_code == 1, result.output
    lines = {line["row"]: line for line in read_results(Path(f"{path}.results.jsonl"))}
    assert lines[1]["status"] == "invalid" and "dots" in lines[1]["error"]
    assert lines[2]["status"] == "ok"
    requests, _ = api_env.snapshot()
    assert all("/customers/." not in rec.path for rec in requests)


# --- a full disk ------------------------------------------------------------------------------


class _FullDisk:
    """The results file's writer, failing with ENOSPC after `room` bytes: a full disk (no real
    part can be made full without privileges)."""

    def __init__(self, inner: Any, room: int) -> None:
        self.inner, self.room = inner, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return int(self.inner.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("mode", [(), ("--batch", "--batch-size", "2"), ("--dry-run",)])
def test_a_full_disk_under_the_results_file_exits_3_with_one_line_then_resumes(
    mode: tuple[str, ...], tmp_path: Path, api_env: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "many.csv"
    path.write_text("id\n" + "\n".join(f"c{i}" for i in range(40)) + "\n", encoding="utf-8")
    original = ResultsLog.__init__

    def init(self: ResultsLog, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._file = _FullDisk(self._file, 600)  # type: ignore[assignment]

    monkeypatch.setattr(ResultsLog, "__init__", init)
    result = invoke("sync", path, "--rate", "0", *mode)
    assert result.exit_code == 3, result.output
    assert "no space left" in result.output.lower()
    assert "Traceback" not in result.output and "ExceptionGroup" not in result.output
    monkeypatch.setattr(ResultsLog, "__init__", original)
    if not mode or mode[0] != "--dry-run":
        again = invoke("sync", path, "--rate", "0", *mode)
        assert again.exit_code == 0, again.output
        rows = [line["row"] for line in read_results(Path(f"{path}.results.jsonl"))]
        assert sorted(set(rows)) == list(range(1, 41))


def test_a_full_disk_under_the_state_file_exits_3_with_one_line(
    source: Path, tmp_path: Path, api_env: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from bulksync.state import StateStore

    def full(self: StateStore, pending: object, removed: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(StateStore, "_record", full)
    result = invoke("sync", source, "--rate", "0", "--state", tmp_path / "state.db")
    assert result.exit_code == 3, result.output
    assert "database or disk is full" in result.output and "state file" in result.output
    assert "Traceback" not in result.output


def test_an_answer_of_megabytes_is_not_read_whole_and_a_207_is_not_taken_as_ok(
    source: Path, api_env: ServerThread
) -> None:
    from bulksync.track import MAX_ANSWER_BYTES

    api_env.fake.config.answer_padding = MAX_ANSWER_BYTES + 1
    api_env.fake.config.reject_ids = frozenset({"c2"})  # the batch answer is a 207
    result = invoke("sync", source, "--rate", "0", "--batch", "--max-retries", "1")
    # Single answers of 200 are still 200: the body does not matter. A 207 whose list of
    # refused operations cannot be read is retried, never taken as "all accepted".
    lines = read_results(Path(f"{source}.results.jsonl"))
    assert all(line["status"] != "ok" for line in lines), lines
    assert result.exit_code in (1, 3), result.output
    api_env.fake.config.answer_padding = 0
    results = Path(f"{source}.results.jsonl")
    again = invoke("retry", results, "--all-failed", "--rate", "0", "--batch")
    assert again.exit_code == 1, again.output
    latest = {line["id"]: line["status"] for line in read_results(results)}
    assert latest == {"c1": "ok", "c2": "failed"}


def test_bad_bytes_in_a_later_chunk_while_sending_is_one_line_not_a_traceback(
    tmp_path: Path, api_env: ServerThread
) -> None:
    path = tmp_path / "late.csv"
    rows = b"".join(f"c{i},pro\n".encode() for i in range(1, 51))
    path.write_bytes(b"id,plan\n" + rows + b"c51,caf\xe9\n")  # cp1252, not UTF-8
    result = invoke("sync", path, "--rate", "0", "--chunk-size", "10")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "ExceptionGroup" not in result.output
    assert "--encoding" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- the log file; what is printed ------------------------------------------------------------


def test_the_log_file_is_private_and_never_written_through_a_link(
    source: Path, tmp_path: Path, victim: Path, api_env: ServerThread
) -> None:
    log = tmp_path / "run.log"
    assert invoke("sync", source, "--rate", "0", "--log-file", log).exit_code == 0
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    linked = tmp_path / "linked.log"
    linked.symlink_to(victim)
    result = invoke("sync", source, "--rate", "0", "--fresh", "--log-file", linked)
    assert_refused(result, "symbolic link")
    assert_untouched(victim)


def test_an_unwritable_log_file_is_one_line_and_exit_2(source: Path, tmp_path: Path) -> None:
    result = invoke("sync", source, "--dry-run", "--log-file", tmp_path / "no-such-dir" / "x.log")
    assert_refused(result, "log file")
    assert len(result.output.strip().splitlines()) == 1


def test_terminal_escapes_in_identifiers_are_not_printed_raw(
    tmp_path: Path, api_env: ServerThread
) -> None:
    evil = "c1\x1b[2J\x1b]0;pwned\x07"
    path = tmp_path / "evil.csv"
    path.write_text(f'id,plan\n"{evil}",pro\n"{evil}",free\n', encoding="utf-8")
    api_env.fake.config.reject_ids = frozenset({evil})
    result = invoke("sync", path, "--rate", "0")
    assert result.exit_code == 1, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "c1\\x1b[2J" in result.output


def test_a_json_identifier_too_large_to_be_exact_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text('{"id": 1e20, "plan": "pro"}\n{"id": 42, "plan": "pro"}\n', encoding="utf-8")
    result = invoke("sync", path, "--dry-run")
    assert result.exit_code == 1, result.output
    lines = {line["row"]: line for line in read_results(Path(f"{path}.dry-run.jsonl"))}
    assert lines[1]["status"] == "invalid" and "too large to be exact" in lines[1]["error"]
    assert (lines[2]["status"], lines[2]["id"]) == ("valid", "42")


def test_a_late_input_error_lets_the_rows_read_before_it_finish_with_their_outcomes(
    tmp_path: Path, api_env: ServerThread
) -> None:
    path = tmp_path / "late.csv"
    note = "x" * 900  # rows long enough that the bad byte is decoded well after the first chunk
    rows = b"".join(f"c{i},{note}\n".encode() for i in range(1, 201))
    path.write_bytes(b"id,note\n" + rows + b"c201,caf\xe9\n" + b"c202,pro\n")
    api_env.fake.config.latency = 0.05  # requests still in flight when the reader breaks
    result = invoke("sync", path, "--rate", "0", "--chunk-size", "10")
    assert result.exit_code == 2, result.output
    assert "--fresh" in result.output
    accepted = api_env.fake.accepted()
    lines = {line["id"]: line["status"] for line in read_results(Path(f"{path}.results.jsonl"))}
    # Every row the API accepted has its outcome: none was lost with the requests in flight.
    assert set(accepted) <= {i for i, status in lines.items() if status == "ok"}
    assert len(accepted) >= 10


def test_a_full_disk_under_the_log_file_exits_3_with_one_line(
    source: Path, tmp_path: Path, api_env: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    def full(self: logging.StreamHandler[Any]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    api_env.fake.config.reject_ids = frozenset({"c1"})  # a failure to log
    monkeypatch.setattr("bulksync.console._LogFile.flush", full)
    result = invoke("sync", source, "--rate", "0", "--log-file", tmp_path / "run.log")
    assert result.exit_code == 3, result.output
    assert "cannot write the log file" in result.output and "No space left" in result.output
    assert "Traceback" not in result.output and "Logging error" not in result.output
