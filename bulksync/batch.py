"""Pack records into `POST /api/v2/batch` requests, within the API's size limits.

One batch request counts as one request against the workspace's rate limit, so it carries
hundreds of people where identify carries one. Limits (track-api.md): a request under 500 KB, an
operation at most 32 KB. Whether KB means 1000 or 1024 is unconfirmed, so the limits are held in
the stricter reading, measured on the exact bytes sent.

A batch's body is made once, while packing (in the sender's reader thread). A chunk's operations
are serialized one after the other into one buffer, each let go as soon as it is copied there:
kept as bytes objects of their own, a thousand of orjson's small outputs cost more to allocate
than to serialize. The chunk's batches are then cut from the buffer by the operations' sizes.
"""

from __future__ import annotations

import bisect
import io
import itertools
import operator
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import orjson

from .defaults import DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE
from .normalize import Rejection
from .operations import KINDS, MAX_OPERATION_BYTES, Kind, Record, order_keys

MAX_REQUEST_BYTES = 500_000
_OPEN, _CLOSE = b'{"batch":[', b"]}"


class Batch:
    """Records and their serialized operations, sent as one request: the body holds the
    operations in the records' order, separated by commas, record i's `sizes[i]` bytes long."""

    __slots__ = ("_body", "_identifiers", "_sizes", "records")

    records: list[Record]
    _body: bytes
    _sizes: list[int]
    _identifiers: Collection[str] | None

    def __init__(self, records: list[Record], operations: Iterable[bytes]) -> None:
        """The batch of `records` whose operations (`operations.operation`) are `operations`."""
        operations = list(operations)
        body = _OPEN + b",".join(operations) + _CLOSE
        self._set(records, body, [len(op) for op in operations], None)

    @classmethod
    def _made(
        cls, records: list[Record], body: bytes, sizes: list[int], identifiers: Collection[str]
    ) -> Batch:
        """A batch whose body pack() has made, with who its records touch (pack() knows
        already: the sender claims them for the order without a call per row)."""
        batch = cls.__new__(cls)
        batch._set(records, body, sizes, identifiers)
        return batch

    def _set(
        self,
        records: list[Record],
        body: bytes,
        sizes: list[int],
        identifiers: Collection[str] | None,
    ) -> None:
        assert len(records) == len(sizes), "one operation per record"
        self.records = records
        self._body = body
        self._sizes = sizes
        self._identifiers = identifiers

    def body(self) -> bytes:
        return self._body

    @property
    def operations(self) -> list[bytes]:
        """Each record's operation, as the body holds it."""
        operations = []
        start = len(_OPEN)
        for size in self._sizes:
            operations.append(self._body[start : start + size])
            start += size + 1  # and its comma
        return operations

    @property
    def identifiers(self) -> Collection[str]:
        """Who the operations touch (`operations.order_keys` of each record), for the sender's
        per-identifier order."""
        if self._identifiers is None:
            self._identifiers = [key for record in self.records for key in order_keys(record)]
        return self._identifiers

    def halves(self) -> tuple[Batch, Batch]:
        middle = len(self.records) // 2
        operations = self.operations
        return (
            Batch(self.records[:middle], operations[:middle]),
            Batch(self.records[middle:], operations[middle:]),
        )

    def split(self, keep: Callable[[Record], bool]) -> tuple[Batch, Batch]:
        """(the records `keep` accepts, the others), each with its operations, in order."""
        flags = [keep(record) for record in self.records]
        return self._where(flags, True), self._where(flags, False)

    def _where(self, flags: list[bool], wanted: bool) -> Batch:
        rows = zip(self.records, self.operations, flags, strict=True)
        pairs = [(record, op) for record, op, flag in rows if flag is wanted]
        return Batch([record for record, _ in pairs], [op for _, op in pairs])

    def __add__(self, other: Batch) -> Batch:
        return Batch(self.records + other.records, self.operations + other.operations)

    def __len__(self) -> int:
        return len(self.records)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Batch):
            return NotImplemented
        return self.records == other.records and self._body == other._body

    def __repr__(self) -> str:
        rows = [record.row for record in self.records]
        return f"Batch(rows={rows!r}, {len(self._body):,} bytes)"


# Batches kept open at once while packing: a row whose identifier is already in a batch goes to
# a later one, so a file with each person a few times in a row still fills whole batches.
MAX_OPEN_BATCHES = 8


class _Open:
    """A batch being filled."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.body = bytearray(_OPEN)
        self.sizes: list[int] = []
        self.identifiers: set[str] = set()
        self.full = False

    def add(self, record: Record, op: bytes, keys: tuple[str, ...], batch_size: int) -> bool:
        """Add the operation (touching `keys`) if it fits; a batch that refuses one for its
        size is full."""
        comma = 1 if self.records else 0
        # "< 500 KB": a request of exactly MAX_REQUEST_BYTES is already too large.
        too_large = len(self.body) + comma + len(op) + len(_CLOSE) >= MAX_REQUEST_BYTES
        if self.full or (self.records and too_large):
            self.full = True
            return False
        if comma:
            self.body += b","
        self.body += op
        self.sizes.append(len(op))
        self.records.append(record)
        self.identifiers.update(keys)
        self.full = len(self.records) >= batch_size
        return True

    def batch(self) -> Batch:
        return Batch._made(self.records, bytes(self.body + _CLOSE), self.sizes, self.identifiers)


def pack(records: Iterable[Record], batch_size: int) -> Iterator[Batch | Rejection]:
    """Batches of at most `batch_size` operations and under MAX_REQUEST_BYTES bytes, of any
    kinds (`operations.operation` serializes each).

    A batch holds at most one operation per identifier, and a later row of an identifier is
    always in a later batch than its earlier rows: the sender sends batches that share an
    identifier one after the other, in the order they come from here. A row whose operation
    alone is over MAX_OPERATION_BYTES is rejected at once (so a rejection may come before the
    batch that holds earlier rows), never sent."""
    records = list(records)
    keys = _order_keys(records)
    touched = list(itertools.chain.from_iterable(keys))
    if len(set(touched)) == len(touched):
        # Nobody twice (the common chunk): each batch is the next run of rows, no batch
        # having to wait for another; the same batches, found without the search below.
        yield from _pack_runs(records, batch_size, keys)
    else:
        yield from _pack_apart(records, keys, batch_size)


def _pack_apart(
    records: list[Record], keys: list[tuple[str, ...]], batch_size: int
) -> Iterator[Batch | Rejection]:
    """pack() of records among which someone comes twice (each record touching `keys`): a
    record goes to the first open batch after the last one naming the same person."""
    batches: list[_Open] = []
    for record, record_keys, op in zip(records, keys, _operations(records), strict=True):
        if len(op) > MAX_OPERATION_BYTES:
            yield _too_large(record, len(op))
            continue
        # The first batch it may join: after the last one that names the same person.
        after = len(batches)
        while after and batches[after - 1].identifiers.isdisjoint(record_keys):
            after -= 1
        for candidate in batches[after:]:
            if candidate.add(record, op, record_keys, batch_size):
                break
        else:
            batches.append(_Open())
            batches[-1].add(record, op, record_keys, batch_size)
        # Batches leave in order, the first as soon as it is full (or too many are open).
        while batches and (batches[0].full or len(batches) > MAX_OPEN_BATCHES):
            yield batches.pop(0).batch()
    for remaining in batches:
        yield remaining.batch()


def _pack_runs(
    records: list[Record], batch_size: int, keys: list[tuple[str, ...]] | None = None
) -> Iterator[Batch | Rejection]:
    """pack() of records that each touch other people (each touching `keys`): batches of
    consecutive rows, each as long as batch_size and the request's size let it be."""
    if keys is None:
        keys = _order_keys(records)
    # The operations, each followed by its comma; operation i starts at starts[i], and
    # starts[len(records)] is the end of the last comma.
    buffer, sizes, starts = _serialized(records)
    if sizes and max(sizes) > MAX_OPERATION_BYTES:
        # Rows to reject (rare): the search that takes a row at a time, whose batches are the
        # same for records that name nobody twice, and which rejects each row where it comes.
        yield from _pack_apart(records, keys, batch_size)
        return
    view = memoryview(buffer)
    first = 0
    while first < len(records):
        # The rows first..end-1 make a request of len(_OPEN) + (starts[end] - 1 - starts[first])
        # + len(_CLOSE) bytes ("- 1": the last comma is not sent), which must stay under
        # MAX_REQUEST_BYTES: `fits` is the largest end that keeps it there (one row always fits).
        under = starts[first] + 1 - len(_OPEN) - len(_CLOSE) + MAX_REQUEST_BYTES
        fits = bisect.bisect_left(starts, under, first + 1) - 1
        end = max(first + 1, min(first + batch_size, fits))
        body = b"".join((_OPEN, view[starts[first] : starts[end] - 1], _CLOSE))
        identifiers = list(itertools.chain.from_iterable(keys[first:end]))
        yield Batch._made(records[first:end], body, sizes[first:end], identifiers)
        first = end


def _serialized(records: list[Record]) -> tuple[bytes, list[int], list[int]]:
    """The records' operations, each followed by a comma, one after the other; the size of
    each; where each starts, then where the last comma ends."""
    buffer = io.BytesIO()
    with_commas = itertools.chain.from_iterable(zip(_operations(records), itertools.repeat(b",")))
    written = list(map(buffer.write, with_commas))  # the sizes, of each operation then comma
    return buffer.getvalue(), written[::2], list(itertools.accumulate(written, initial=0))[::2]


def _operations(records: list[Record]) -> Iterator[bytes]:
    """Each record's v2 operation, serialized (`operations.operation`)."""
    return map(orjson.dumps, _each(records, "operation"))


def _order_keys(records: list[Record]) -> list[tuple[str, ...]]:
    """Who each record touches (`operations.order_keys`)."""
    return list(_each(records, "touches"))


def _each(records: list[Record], method: str) -> Iterator[Any]:
    """Each record's kind's `method` applied to it, the kind looked up once per kind rather
    than once per row."""
    kinds = _kinds(records)
    if len(kinds) == 1:
        (kind,) = kinds.values()
        return map(getattr(kind, method), records)
    return (getattr(kinds[record.op], method)(record) for record in records)


def _kinds(records: list[Record]) -> dict[str, Kind]:
    """The kinds of `records`, by name."""
    return {name: KINDS[name] for name in dict.fromkeys(map(operator.attrgetter("op"), records))}


def _too_large(record: Record, size: int) -> Rejection:
    return Rejection(
        record.row,
        record.identifier,
        f"batch operation is {size:,} bytes, over the API's {MAX_OPERATION_BYTES:,}",
    )
