"""Decide which normalized rows to send: the plan stage, between normalize and send.

- resume: a row that already has an outcome in the results file is dropped;
- diff state (`--state`): a row whose payload Customer.io already accepted, unchanged, becomes
  `Unchanged` and is recorded as such instead of being sent. For people, `KnownRows` finds most
  such rows before normalizing them, by their rowhash (rowhash.py), and normalizes the rest.
"""

from __future__ import annotations

import heapq
import itertools
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import NamedTuple, cast, overload

import numpy as np
import numpy.typing as npt
import pandas as pd

from .normalize import ColumnPlan, Rejection, identifiers, normalize
from .operations import KINDS, PEOPLE, Record, state_key
from .results import ResultsLog
from .rowhash import hash_key, row_hashes
from .source import Chunk
from .state import StateStore, payload_hash


class Unchanged(NamedTuple):
    """A row not sent: its payload is the one Customer.io last accepted for its identifier, or
    (with `superseded_by`) a later row of the same identifier replaces it."""

    row: int
    identifier: str
    op: str = PEOPLE
    superseded_by: int | None = None


Item = Record | Rejection | Unchanged
Items = Sequence[Item]


class UnchangedRows(Sequence[Unchanged]):
    """A chunk whose rows KnownRows all found unchanged (people's, none superseded), kept as
    its rows and their identifiers: the stages after it pass it on whole and its results lines
    are made at once (results.unchanged_people_lines), without a tuple per row. Read as a
    sequence, it gives its Unchanged items."""

    def __init__(self, rows: list[int], identifiers: list[str]) -> None:
        self.rows = rows
        self.identifiers = identifiers

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> Unchanged: ...
    @overload
    def __getitem__(self, i: slice) -> list[Unchanged]: ...
    def __getitem__(self, i: int | slice) -> Unchanged | list[Unchanged]:
        if isinstance(i, slice):
            return list(map(Unchanged, self.rows[i], self.identifiers[i]))
        return Unchanged(self.rows[i], self.identifiers[i])

    def __iter__(self) -> Iterator[Unchanged]:
        return map(Unchanged, self.rows, self.identifiers)


def pending(items: Items, log: ResultsLog) -> list[Item]:
    """Resume: drop the rows that already have an outcome in the results file."""
    return [item for item in items if log.status(item.row) is None]


Raws = Mapping[int, tuple[int, int]]  # row -> its rowhash (rowhash.py)


def changed(items: Items, store: StateStore, raws: Raws | None = None) -> Items:
    """Turn the records Customer.io already accepted into `Unchanged`: for most kinds, the same
    payload accepted for the same key; for events ("once"), the event id accepted at all.

    A row whose key came earlier in this chunk is compared with that earlier row, which this
    run sends (or found unchanged) first, not with the state as it was: five versions of one
    person must not have the last one found "unchanged" against last night's and skipped while
    the four before it are sent. (Across chunks, the state is already up to date: rows are
    marked in flight before the next chunk is planned, and recorded once accepted.)

    `raws`: the rowhashes of these rows, for the state to keep with their payload's hash: now
    for the rows found unchanged, once accepted for the rows sent (KnownRows)."""
    if isinstance(items, UnchangedRows):  # no record in it
        return items
    keys = {
        item.row: key
        for item in items
        if isinstance(item, Record) and (key := state_key(item)) is not None
    }
    if not keys:
        return items
    accepted = store.last_hashes(keys.values())
    planned: Items = items
    known: list[Record] = []  # the records found unchanged against the state
    if accepted or len(set(keys.values())) < len(keys):  # else a first night: all are sent
        planned, known = _compared(items, keys, accepted)
    if raws and not store.read_only:
        # A row's rowhash goes with the hash its payload matched, never another: the state
        # must not pair a row with a payload it does not make.
        store.remember_rows(
            (*raws[r.row], keys[r.row], accepted[keys[r.row]]) for r in known if r.row in raws
        )
        sent = (item.row for item in planned if type(item) is Record)
        store.sending_rows({row: raws[row] for row in sent if row in raws})
    return planned


def _compared(
    items: Items, keys: Mapping[int, str], accepted: Mapping[str, bytes]
) -> tuple[list[Item], list[Record]]:
    before: dict[str, Record] = {}  # key -> its latest record so far in this chunk
    planned: list[Item] = []
    known: list[Record] = []
    for item in items:
        key = keys.get(item.row) if isinstance(item, Record) else None
        if key is None:
            planned.append(item)
            continue
        assert isinstance(item, Record)
        earlier = before.get(key)
        same = _accepted(item, accepted.get(key)) if earlier is None else _same(item, earlier)
        if same and earlier is None:
            known.append(item)
        before[key] = item
        planned.append(Unchanged(item.row, item.identifier, item.op) if same else item)
    return planned, known


def _accepted(record: Record, known: bytes | None) -> bool:
    if not known:  # unknown, or marked in flight by a run that never heard back
        return False
    if KINDS[record.op].diff == "once":
        return True
    return known == payload_hash(record.payload)  # hash only the rows the state knows


def _same(record: Record, earlier: Record) -> bool:
    """Does `record` repeat the row of its key just before it (sent or unchanged)?"""
    return KINDS[record.op].diff == "once" or record.payload == earlier.payload


class KnownRows:
    """The fast path of an unchanged nightly run (people, with the state and the input's
    repeats known): a row whose rowhash is the one the state keeps for a person's accepted row
    becomes `Unchanged` before it is normalized (only its identifier is read); the other rows
    are normalized, and their rowhashes handed to `changed()` for the state to keep.

    The state's rowhashes are read once, at the start: a row sent tonight cannot make a later
    row of the same person stale, since with the repeats known (`last`, as for superseded())
    only a person's last row is ever sent, and the rows `last` replaces take the slow path."""

    def __init__(
        self,
        store: StateStore,
        plan: ColumnPlan,
        last: Mapping[int, int],
        rowhashes: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    ) -> None:
        """`rowhashes`: the state's, as `store.rowhashes()` reads them."""
        self.store = store
        self.plan = plan
        self._first, self._second = rowhashes
        self._replaced = np.array(sorted(last), dtype=np.int64)
        self._keys: dict[tuple[str, ...], bytes] = {}  # a chunk's columns -> its hash key
        self._raws: dict[int, tuple[int, int]] = {}  # the chunk's normalized rows' rowhashes
        # Rows found unchanged by their rowhash so far, each of a known person, one row each
        # (a row that a later one replaces takes the slow path): of distinct known people.
        self.found = 0

    def normalize(self, chunk: Chunk) -> Items:
        """`normalize(chunk)`, with the rows the state knows as they were accepted taken as
        `Unchanged` without normalizing them; in row order."""
        self._raws = {}
        frame, rows = chunk.frame, chunk.rows
        hashes = row_hashes(frame, self._key(frame)) if len(rows) else None
        if hashes is None:
            return normalize(chunk, self.plan)
        numbers = np.asarray(rows, dtype=np.int64)
        fast = self._known(hashes, numbers)
        known = frame if len(fast) == len(rows) else frame.iloc[fast]
        ids = identifiers(known, self.plan) if len(fast) else []
        if None in ids:  # never for a row once accepted; if it were, normalize() tells why
            fast, ids = fast[:0], []
        self.found += len(fast)
        slow = np.ones(len(rows), dtype=bool)
        slow[fast] = False
        slow_rows = numbers[slow].tolist()
        self._raws = dict(zip(slow_rows, map(tuple, hashes[slow].tolist()), strict=True))
        if not len(fast):
            return normalize(chunk, self.plan)
        if not slow_rows and not chunk.bad_rows:
            return UnchangedRows(rows, cast(list[str], ids))
        # Unchanged(row, identifier) for each, built from C as normalize() builds its Records.
        values = zip(numbers[fast].tolist(), ids, repeat(PEOPLE), repeat(None))
        unchanged: list[Item] = list(map(tuple.__new__, repeat(Unchanged), values))
        rest = Chunk(
            frame.iloc[slow].reset_index(drop=True), slow_rows, chunk.bad_rows, chunk.lines
        )
        return list(heapq.merge(unchanged, normalize(rest, self.plan), key=_ROW))

    def _key(self, frame: pd.DataFrame) -> bytes:
        """The hash key of a chunk with these columns (of these types)."""
        columns = tuple(f"{d}: {c}" for c, d in zip(frame.columns, frame.dtypes, strict=True))
        key = self._keys.get(columns)
        if key is None:
            key = self._keys[columns] = hash_key(self.plan, list(columns))
        return key

    def _known(
        self, hashes: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.intp]:
        """Positions of the rows whose rowhash the state has, unless a later row replaces them."""
        if not len(self._first):
            return np.empty(0, dtype=np.intp)
        # Looked up in sorted order (and put back): a third of the time of random lookups.
        order = np.argsort(hashes[:, 0])
        at = np.empty_like(order)
        at[order] = np.searchsorted(self._first, hashes[order, 0])
        at[at == len(self._first)] = 0
        hit = (self._first[at] == hashes[:, 0]) & (self._second[at] == hashes[:, 1])
        if len(self._replaced):  # by binary search: np.isin hashes both arrays first
            at = np.minimum(np.searchsorted(self._replaced, rows), len(self._replaced) - 1)
            hit &= self._replaced[at] != rows
        return np.flatnonzero(hit)

    def changed(self, items: Items) -> Items:
        """changed(), with the rowhashes of the chunk just normalized."""
        return changed(items, self.store, self._raws)


def superseded(items: Items, last: Mapping[int, int]) -> Items:
    """Rows that a later row of the same identifier replaces (`last`: row -> that later row)
    become `Unchanged`: with `--state`, only a person's last row is what Customer.io must end
    with, so the rows before it are not sent, tonight or any night."""
    if isinstance(items, UnchangedRows):  # no record in it
        return items
    return [
        Unchanged(item.row, item.identifier, item.op, last[item.row])
        if isinstance(item, Record) and item.row in last
        else item
        for item in items
    ]


def last_rows(chunks: Iterable[Items]) -> dict[int, int]:
    """row -> the last row of the same identifier, for every row of a last-wins kind (people,
    objects) that a later row replaces. Memory: 16 bytes per row, in numpy arrays."""
    hashes: list[npt.NDArray[np.int64]] = []
    rows: list[npt.NDArray[np.int64]] = []
    for items in chunks:
        records = [i for i in items if isinstance(i, Record) and KINDS[i.op].last_wins]
        hashes.append(np.fromiter((hash(r.identifier) for r in records), np.int64, len(records)))
        rows.append(np.fromiter((r.row for r in records), np.int64, len(records)))
    if not hashes:
        return {}
    h, r = np.concatenate(hashes), np.concatenate(rows)
    order = np.lexsort((r, h))  # by identifier, then row
    h, r = h[order], r[order]
    later = np.flatnonzero(h[:-1] == h[1:])  # rows followed by one of the same identifier
    if not len(later):
        return {}
    # Each group's last row: the row at the end of its run of equal hashes.
    ends = np.flatnonzero(np.append(h[:-1] != h[1:], True))
    last_of = ends[np.searchsorted(ends, later)]
    return dict(zip(r[later].tolist(), r[last_of].tolist(), strict=True))


_ROW, _IDENTIFIER = operator.attrgetter("row"), operator.attrgetter("identifier")


class Repeats:
    """Identifiers found on more than one row, for the kinds where a later row replaces an
    earlier one (people, objects): counted as rows are read, with a few examples. Memory: 12
    bytes per distinct identifier (sorted numpy arrays of hashes and first rows), in 16 parts
    by the hashes' first bits, so that merging a chunk's new ones in copies a part at a time,
    not all of them at once: a dry run's memory must not grow with the file."""

    EXAMPLES = 5  # identifiers shown
    ROWS_SHOWN = 5  # rows shown per identifier
    _PARTS = 16  # by a hash's top 4 bits

    def __init__(self) -> None:
        self._hashes: list[npt.NDArray[np.int64]] = [
            np.empty(0, dtype=np.int64) for _ in range(self._PARTS)
        ]  # each sorted
        # Aligned with _hashes: each one's first row. 32 bits while the rows fit.
        self._first: list[npt.NDArray[np.int32 | np.int64]] = [
            np.empty(0, dtype=np.int32) for _ in range(self._PARTS)
        ]
        self._repeated: set[int] = set()
        self.rows = 0  # rows whose identifier came on an earlier row
        self.identifiers = 0  # identifiers on more than one row
        self.examples: dict[str, list[int]] = {}

    def observe(self, items: Items) -> Items:
        """Count the repeats among `items` (one chunk, in row order); return them unchanged."""
        # Record, or Unchanged found before normalizing (KnownRows): who each row names.
        named = (Record, Unchanged)  # a tuple: `Record | Unchanged` would be made per row
        records = [i for i in items if isinstance(i, named) and KINDS[i.op].last_wins]
        if not records:
            return items
        # map() runs hash and the getters from C, without a Python frame per row.
        h = np.fromiter(map(hash, map(_IDENTIFIER, records)), np.int64, len(records))
        rows = np.fromiter(map(_ROW, records), np.int64, len(records))
        # The chunk's distinct hashes, sorted (first: the index of each one's first row): looked
        # up and merged in order, faster than the rows' hashes in row order.
        unique, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        if rows[-1] > np.iinfo(self._first[0].dtype).max:
            self._first = [f.astype(np.int64) for f in self._first]
        known = np.zeros(len(unique), dtype=bool)
        earliest = rows[first]  # each one's first row: this chunk's, or an earlier one's
        # Sorted, a part's hashes come together (its top bits are the same).
        part = (unique.view(np.uint64) >> 60).astype(np.intp)
        bounds = [0, *(np.flatnonzero(part[1:] != part[:-1]) + 1).tolist(), len(unique)]
        for start, end in itertools.pairwise(bounds):
            p, these = int(part[start]), unique[start:end]
            hashes, firsts = self._hashes[p], self._first[p]
            at = np.searchsorted(hashes, these)
            inside = at < len(hashes)
            found = np.zeros(len(these), dtype=bool)
            found[inside] = hashes[at[inside]] == these[inside]
            known[start:end] = found
            earliest[start:end][found] = firsts[at[found]]
            new = ~found
            self._hashes[p] = np.insert(hashes, at[new], these[new])
            self._first[p] = np.insert(firsts, at[new], rows[first[start:end][new]])
        again = np.ones(len(h), dtype=bool)
        again[first] = False
        for i in np.flatnonzero(known[inverse] | again).tolist():
            u = inverse[i]
            self._count(int(h[i]), records[i].identifier, int(earliest[u]), int(rows[i]))
        return items

    def _count(self, key: int, identifier: str, earliest: int, row: int) -> None:
        self.rows += 1
        if key not in self._repeated:
            self._repeated.add(key)
            self.identifiers += 1
            if len(self.examples) < self.EXAMPLES:
                self.examples[identifier] = [earliest]
        shown = self.examples.get(identifier)
        if shown is not None and len(shown) < self.ROWS_SHOWN:
            shown.append(row)
