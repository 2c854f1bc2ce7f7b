"""The diff state store (`--state PATH`): what Customer.io last accepted for each identifier.

For each identifier it keeps a hash of the last payload the API **accepted** — never of one
merely sent — so a row whose normalized payload hashes the same on the next run is `unchanged`
and not sent again. The hash is of the payload itself (keys sorted), so it does not depend on
the input's column order, and every option that changes what is sent (--rename, --exclude,
--type, --empty, --update-only) changes it too, which resends. For a person, it also keeps the
rowhash of the input row that payload came from (rowhash.py), valid only as long as the hash it
was written with: a row whose cells hash the same is found unchanged before it is normalized.

Before a chunk's rows are sent, their identifiers are marked "in flight" (their hash cleared);
after each request is answered, the rows it got accepted are recorded with their new hash, in
one transaction per request. So a crash, even mid-request, can at worst make the next run resend
a row, never skip one: an edit reverted after a killed run is still sent. One SQLite file in WAL
mode (synchronous=NORMAL: a killed process loses nothing committed); one connection shared by the
reader thread (lookups) and the event loop (updates) behind a lock.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt
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
# state.seen_run: the last run whose complete input held the identifier, as versions before
# rowhashes wrote it (no longer written: it rewrote every known person each night, and nothing
# read it; the runs table counts who each run saw); state.kind: the --kind
# whose row was accepted (NULL in older files, which held people); state.raw1 / raw2: the
# rowhash of the input row whose payload was accepted (NULL when not known), with which the next
# run finds that row unchanged before normalizing it, and raw_at the acceptance it belongs to: a
# version without rowhashes, run in between, updates accepted_at (or empties hash) and leaves the
# rowhash, which must then not count. runs.seen / absent / removed: the
# identifiers a complete input held, the known ones it did not, and those removed since.
_ADDED_COLUMNS = {
    "state": {
        "seen_run": "INTEGER",
        "kind": "TEXT",
        "raw1": "INTEGER",
        "raw2": "INTEGER",
        "raw_at": "INTEGER",
    },
    "runs": {"seen": "INTEGER", "absent": "INTEGER", "removed": "INTEGER NOT NULL DEFAULT 0"},
}
ABSENT_PAGE = 50_000  # known identifiers read at a time to find the absent
# Rows of one kind (bound twice); a row of an older state file (no kind) was a person's.
_OF_KIND = "(kind = ? OR (kind IS NULL AND ? = 'people'))"


def payload_hash(attributes: dict[str, Any]) -> bytes:
    """A stable 16-byte hash of a payload: independent of key order."""
    return hashlib.blake2b(
        orjson.dumps(attributes, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).digest()


class StateStore:
    """Open (or create) the state file at `path`; use as a context manager."""

    def __init__(
        self, path: Path, *, input_name: str | None = None, read_only: bool = False
    ) -> None:
        self.path = path
        self.read_only = read_only  # a dry run's: it may look, not write
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
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(f"cannot open the state file {path}: {exc}") from None
        self._lock = threading.Lock()
        self._pending: list[tuple[str, bytes, int, str, int | None, int | None]] = []
        # row -> its rowhash, for the rows being sent: stored with the payload once accepted.
        self._raws: dict[int, tuple[int, int]] = {}
        self._removed: list[str] = []
        # identifier -> its rows marked sending and not answered yet (mark_sending): usually one
        self._sending: Counter[str] = Counter()
        self._seen: list[npt.NDArray[np.int64]] = []  # hashes of this run's identifiers (see())
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

    def rowhashes(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The rowhash of each person's accepted row that has one (rowhash.py), as its two
        halves, sorted by the first: 16 bytes a person, read at the start of a run (a lookup
        per row cost more than hashing it). Only people's rows have a rowhash: an acceptance of
        another kind writes none."""
        halves: list[list[npt.NDArray[np.int64]]] = [[], []]
        after = ""  # below every identifier (none is empty; one missed only costs speed)
        with self._lock:
            while True:
                # A page of them at a time, each half as one text of numbers parsed in C: no
                # Python object per person, and no text of them all at once.
                first, second, count, after = self._db.execute(
                    "SELECT group_concat(raw1), group_concat(raw2), count(*), max(identifier)"
                    " FROM (SELECT identifier, raw1, raw2 FROM state"
                    "  WHERE identifier > ? AND raw_at = accepted_at AND length(hash) > 0"
                    "  ORDER BY identifier LIMIT 100000)",
                    (after,),
                ).fetchone()
                if not count:
                    break
                for found, text in zip(halves, (first, second), strict=True):
                    found.append(np.fromstring(text, dtype=np.int64, sep=","))
        first_halves = np.concatenate([np.empty(0, np.int64), *halves[0]])
        second_halves = np.concatenate([np.empty(0, np.int64), *halves[1]])
        del halves
        order = np.argsort(first_halves)
        first_halves.sort()  # in place, as argsort ordered it; then the other half, by order
        return first_halves, second_halves[order]

    def remember_rows(self, rows: Iterable[tuple[int, int, str, bytes]]) -> None:
        """(raw1, raw2, identifier, hash): rows found unchanged by their payload's hash, whose
        rowhash is now known, so the next run finds them unchanged before normalizing. Only
        where the identifier still has that hash (an acceptance may have landed since)."""
        if self.read_only:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE state SET raw1 = ?, raw2 = ?, raw_at = accepted_at"
                " WHERE identifier = ? AND hash = ?",
                rows,
            )
            self._db.execute("COMMIT")

    def mark_sending(self, identifiers: Iterable[str]) -> None:
        """These identifiers are about to be sent (one for each row): until their acceptance is
        recorded, a later run must not take their old hash (nor their old row) for what
        Customer.io holds."""
        identifiers = list(identifiers)
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE state SET hash = X'', raw_at = NULL WHERE identifier = ?",
                ((i,) for i in identifiers),
            )
            self._db.execute("COMMIT")
            self._sending.update(identifiers)

    def sending_rows(self, raws: dict[int, tuple[int, int]]) -> None:
        """row -> its rowhash, for rows about to be sent: kept with their payload's hash once
        accepted (record_accepted)."""
        self._raws.update(raws)

    def unsent(self, identifier: str, row: int) -> None:
        """The row failed: its rowhash is not needed, and it is answered (record_accepted)."""
        self._raws.pop(row, None)
        self._answered(identifier)

    def record_accepted(
        self, identifier: str, attributes: dict[str, Any], kind: str, row: int | None = None
    ) -> None:
        """Customer.io accepted this payload (of input row `row`); written by the next flush().

        Unless a later row of the same identifier is still to be answered (a person twice in a
        run that was not read ahead, from standard input say): that one is sent next, and a
        crash while it is in flight would leave Customer.io holding either payload. The
        acceptance is then written with an empty hash, as mark_sending left it, and the later
        row's own acceptance says what Customer.io holds."""
        raw1, raw2 = self._raws.pop(row, (None, None)) if row is not None else (None, None)
        if self._answered(identifier):
            digest = payload_hash(attributes)
        else:  # a later row of it is still to be answered: in flight, as mark_sending left it
            digest, raw1, raw2 = b"", None, None
        self._pending.append((identifier, digest, int(time.time()), kind, raw1, raw2))

    def _answered(self, identifier: str) -> bool:
        """One row of `identifier` marked sending has its answer: is it the last one?"""
        with self._lock:
            left = self._sending.pop(identifier, 1) - 1  # one never marked: its last too
            if left > 0:
                self._sending[identifier] = left
        return left <= 0

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

    def _record(
        self, pending: list[tuple[str, bytes, int, str, int | None, int | None]], removed: list[str]
    ) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO state (identifier, hash, accepted_at, kind, raw1, raw2, raw_at)"
                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, iif(?5 IS NULL, NULL, ?3))"
                " ON CONFLICT (identifier) DO UPDATE SET hash = excluded.hash,"
                " accepted_at = excluded.accepted_at, kind = excluded.kind,"
                " raw1 = excluded.raw1, raw2 = excluded.raw2, raw_at = excluded.raw_at",
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
        # Their hashes, in memory (8 bytes a row): a table of them in SQLite cost more than
        # reading the rows. Only this process compares them, so Python's own hash will do; a
        # collision could only make an absent person look present, and be kept.
        self._seen.append(np.fromiter(map(hash, identifiers), dtype=np.int64))

    def known(self, kind: str) -> int:
        """How many identifiers of `kind` Customer.io accepted on some run, still known."""
        with self._lock:
            (count,) = self._db.execute(
                f"SELECT count(*) FROM state WHERE {_OF_KIND}", (kind, kind)
            ).fetchone()
        return int(count)

    def absent_count(self, kind: str) -> int:
        """How many known identifiers of `kind` this run's input did not hold."""
        return sum(int(gone.sum()) for _, gone in self._absent(kind))

    def absent(self, kind: str) -> list[str]:
        """The known identifiers of `kind` this run's input did not hold, sorted."""
        return [
            name
            for names, gone in self._absent(kind)
            for name in itertools.compress(names, gone.tolist())
        ]

    def _absent(self, kind: str) -> Iterator[tuple[list[str], npt.NDArray[np.bool_]]]:
        """The known identifiers of `kind` in sorted batches (the primary key's order), each
        with which were not seen: read in batches, as everyone could be absent (from an input
        that is not the right one)."""
        seen = self._seen_once()
        after = ""  # below every identifier (none is empty)
        while True:
            start = after
            with self._lock:
                # A batch as one text (NUL between them) split in Python: two thirds of the
                # time of a row object per identifier.
                text, count, after = self._db.execute(
                    "SELECT group_concat(identifier, char(0)), count(*), max(identifier)"
                    f" FROM (SELECT identifier FROM state WHERE identifier > ? AND {_OF_KIND}"
                    "  ORDER BY identifier LIMIT ?)",
                    (start, kind, kind, ABSENT_PAGE),
                ).fetchone()
                if not count:
                    return
                names = text.split("\0")
                if len(names) != count:  # an identifier holding a NUL: a row at a time
                    rows = self._db.execute(
                        "SELECT identifier FROM state WHERE identifier > ? AND identifier <= ?"
                        f" AND {_OF_KIND} ORDER BY identifier",
                        (start, after, kind, kind),
                    )
                    names = [row[0] for row in rows]
            hashes = np.fromiter(map(hash, names), dtype=np.int64, count=len(names))
            if not len(seen):
                yield names, np.ones(len(names), dtype=bool)
                continue
            # By binary search (seen is sorted), in sorted order: np.isin hashes both arrays.
            order = np.argsort(hashes)
            ordered = hashes[order]
            at = np.minimum(np.searchsorted(seen, ordered), len(seen) - 1)
            gone = np.empty(len(names), dtype=bool)
            gone[order] = seen[at] != ordered
            yield names, gone

    def _seen_once(self) -> npt.NDArray[np.int64]:
        """The hashes see() was given, sorted, each once (and kept so)."""
        seen = np.concatenate([np.empty(0, np.int64), *self._seen])
        self._seen = []
        seen.sort()  # in place: no second copy of a hash per row
        # Not np.unique: numpy 2's hashes the values, many times slower than sorting them.
        seen = seen[np.append(True, seen[1:] != seen[:-1])] if len(seen) else seen
        self._seen = [seen]
        return seen

    def finish_seen(self, absent: int) -> None:
        """This run read its whole input: how many identifiers it held, and how many known
        ones it did not."""
        if self._run is None:
            return
        seen = len(self._seen_once())
        with self._lock:
            self._db.execute(
                "UPDATE runs SET seen = ?, absent = ? WHERE rowid = ?", (seen, absent, self._run)
            )

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
