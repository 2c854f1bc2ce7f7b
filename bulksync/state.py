"""The diff state store (`--state PATH`): what Customer.io last accepted for each identifier.

For each identifier it keeps a hash of the last payload the API **accepted** — never of one
merely sent — so a row whose normalized payload hashes the same on the next run is `unchanged`
and not sent again. The hash is of the payload itself (keys sorted), so it does not depend on
the input's column order, and every option that changes what is sent (--rename, --exclude,
--type, --empty, --update-only) changes it too, which resends.

Before a chunk's rows are sent, their identifiers are marked "in flight" (their hash cleared);
after each request is answered, the rows it got accepted are recorded with their new hash, in
one transaction per request. So a crash, even mid-request, can at worst make the next run resend
a row, never skip one: an edit reverted after a killed run is still sent. One SQLite file in WAL
mode (synchronous=NORMAL: a killed process loses nothing committed); one connection shared by the
reader thread (lookups) and the event loop (updates) behind a lock.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

from .errors import OutputError, UsageError
from .files import check_output, open_private

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    identifier TEXT PRIMARY KEY,
    hash BLOB NOT NULL,
    accepted_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    input TEXT,
    accepted INTEGER NOT NULL DEFAULT 0
);
"""
# Columns added since the first state files: added to an older file when it is opened.
# state.seen_run: the last run whose complete input held the identifier; state.kind: the --kind
# whose row was accepted (NULL in older files, which held people). runs.seen / absent / removed:
# the identifiers a complete input held, the known ones it did not, and those removed since.
_ADDED_COLUMNS = {
    "state": {"seen_run": "INTEGER", "kind": "TEXT"},
    "runs": {"seen": "INTEGER", "absent": "INTEGER", "removed": "INTEGER NOT NULL DEFAULT 0"},
}
# Rows of one kind (bound twice); a row of an older state file (no kind) was a person's.
_OF_KIND = "(kind = ? OR (kind IS NULL AND ? = 'people'))"
_ABSENT = f"{_OF_KIND} AND identifier NOT IN temp.seen"
# Identifiers seen in this run's input, for who is absent: per connection, never in the file.
_SEEN = "CREATE TEMP TABLE seen (identifier TEXT PRIMARY KEY) WITHOUT ROWID"


def payload_hash(attributes: dict[str, Any]) -> bytes:
    """A stable 16-byte hash of a payload: independent of key order."""
    return hashlib.blake2b(
        orjson.dumps(attributes, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).digest()


class StateStore:
    """Open (or create) the state file at `path`; use as a context manager."""

    def __init__(self, path: Path, *, input_name: str | None = None) -> None:
        self.path = path
        try:
            # Identifiers are personal data: create the file 0600 before SQLite does, and its
            # -wal and -shm files take the same mode.
            os.close(open_private(path, os.O_RDWR, "state file"))
            # SQLite opens these by name: a link planted there would be written through.
            for journal in ("-wal", "-shm", "-journal"):
                check_output(Path(f"{path}{journal}"), "state file's journal")
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                for name, declaration in columns.items():
                    if name not in have:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
            self._db.execute(_SEEN)
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(f"cannot open the state file {path}: {exc}") from None
        self._lock = threading.Lock()
        self._pending: list[tuple[str, bytes, int, str]] = []
        self._removed: list[str] = []
        self.accepted = 0
        self._run = (
            self._db.execute(
                "INSERT INTO runs (started_at, input) VALUES (?, ?)", (int(time.time()), input_name)
            ).lastrowid
            if input_name is not None
            else None
        )

    def last_hashes(self, identifiers: Iterable[str]) -> dict[str, bytes]:
        """The accepted hash of each of `identifiers` that has one."""
        # One statement for a whole chunk, looked up by the primary key: a join with a temporary
        # table made SQLite scan the whole state for every chunk.
        wanted = orjson.dumps(list(dict.fromkeys(identifiers))).decode()
        with self._lock:
            rows = self._db.execute(
                "SELECT identifier, hash FROM state"
                " WHERE identifier IN (SELECT value FROM json_each(?))",
                (wanted,),
            ).fetchall()
        return dict(rows)

    def mark_sending(self, identifiers: Iterable[str]) -> None:
        """These identifiers are about to be sent: until their acceptance is recorded, a later
        run must not take their old hash for what Customer.io holds."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE state SET hash = X'' WHERE identifier = ?", ((i,) for i in identifiers)
            )
            self._db.execute("COMMIT")

    def record_accepted(self, identifier: str, attributes: dict[str, Any], kind: str) -> None:
        """Customer.io accepted this payload; written by the next flush()."""
        self._pending.append((identifier, payload_hash(attributes), int(time.time()), kind))

    def record_removed(self, identifier: str) -> None:
        """Customer.io accepted this person's removal: forgotten by the next flush()."""
        self._removed.append(identifier)

    def flush(self) -> None:
        if not (self._pending or self._removed):
            return
        pending, self._pending = self._pending, []
        removed, self._removed = self._removed, []
        try:
            self._record(pending, removed)
        except sqlite3.Error as exc:  # "database or disk is full", most often
            raise OutputError.of(exc, self.path, "state file") from None
        self.accepted += len(pending)

    def _record(self, pending: list[tuple[str, bytes, int, str]], removed: list[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO state (identifier, hash, accepted_at, kind) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (identifier) DO UPDATE SET hash = excluded.hash,"
                " accepted_at = excluded.accepted_at, kind = excluded.kind",
                pending,
            )
            self._db.executemany("DELETE FROM state WHERE identifier = ?", ((i,) for i in removed))
            if self._run is not None:
                self._db.execute(
                    "UPDATE runs SET accepted = accepted + ?, removed = removed + ?"
                    " WHERE rowid = ?",
                    (len(pending), len(removed), self._run),
                )
            self._db.execute("COMMIT")

    # --- who is absent: mirror mode (--missing) -------------------------------------------------

    def see(self, identifiers: Iterable[str]) -> None:
        """These identifiers are in this run's input (any row of theirs, valid or not)."""
        # One statement per chunk (as in last_hashes): a statement per identifier cost more
        # than reading the row.
        seen = orjson.dumps(list(identifiers)).decode()
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO temp.seen SELECT value FROM json_each(?)", (seen,)
            )

    def known(self, kind: str) -> int:
        """How many identifiers of `kind` Customer.io accepted on some run, still known."""
        with self._lock:
            (count,) = self._db.execute(
                f"SELECT count(*) FROM state WHERE {_OF_KIND}", (kind, kind)
            ).fetchone()
        return int(count)

    def absent_count(self, kind: str) -> int:
        """How many known identifiers of `kind` this run's input did not hold."""
        with self._lock:
            (count,) = self._db.execute(
                f"SELECT count(*) FROM state WHERE {_ABSENT}", (kind, kind)
            ).fetchone()
        return int(count)

    def absent(self, kind: str) -> list[str]:
        """The known identifiers of `kind` this run's input did not hold, sorted."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT identifier FROM state WHERE {_ABSENT} ORDER BY identifier", (kind, kind)
            ).fetchall()
        return [row[0] for row in rows]

    def finish_seen(self, absent: int) -> None:
        """This run read its whole input: the identifiers it held were last seen now."""
        if self._run is None:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE state SET seen_run = ? WHERE identifier IN temp.seen", (self._run,)
            )
            self._db.execute(
                "UPDATE runs SET seen = (SELECT count(*) FROM temp.seen), absent = ?"
                " WHERE rowid = ?",
                (absent, self._run),
            )
            self._db.execute("COMMIT")

    def forget(self, identifiers: Iterable[str]) -> int:
        """Drop identifiers from the state, so their next row is sent; how many were known."""
        with self._lock:
            self._db.execute("BEGIN")
            cursor = self._db.executemany(
                "DELETE FROM state WHERE identifier = ?", ((i,) for i in identifiers)
            )
            self._db.execute("COMMIT")
        return cursor.rowcount

    def stats(self, runs: int = 5) -> dict[str, Any]:
        """Identifiers known, and the latest `runs` runs, newest first: start, end, input,
        rows accepted, identifiers seen (a complete input's), known ones absent, removed."""
        keys = ("started_at", "finished_at", "input", "accepted", "seen", "absent", "removed")
        with self._lock:
            (rows,) = self._db.execute("SELECT count(*) FROM state").fetchone()
            latest = self._db.execute(
                f"SELECT {', '.join(keys)} FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?",
                (runs,),
            ).fetchall()
        found = [dict(zip(keys, run, strict=True)) for run in latest]
        return {"identifiers": rows, "runs": found, "last_run": found[0] if found else None}

    def close(self) -> None:
        try:
            self.flush()
            if self._run is not None:
                with self._lock:
                    self._db.execute(
                        "UPDATE runs SET finished_at = ? WHERE rowid = ?",
                        (int(time.time()), self._run),
                    )
        finally:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
