"""Pack records into `POST /api/v2/batch` requests, within the API's size limits.

One batch request counts as one request against the workspace's rate limit, so it carries
hundreds of people where identify carries one. Limits (track-api.md): a request under 500 KB, an
operation at most 32 KB. Whether KB means 1000 or 1024 is unconfirmed, so the limits are held in
the stricter reading, measured on the exact bytes sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .defaults import DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE
from .normalize import Rejection
from .operations import MAX_OPERATION_BYTES, Record, operation, order_keys

MAX_REQUEST_BYTES = 500_000
_OPEN, _CLOSE = b'{"batch":[', b"]}"


@dataclass(frozen=True)
class Batch:
    """Records and their serialized operations, sent as one request."""

    records: list[Record]
    operations: list[bytes]

    def body(self) -> bytes:
        return _OPEN + b",".join(self.operations) + _CLOSE

    def halves(self) -> tuple[Batch, Batch]:
        middle = len(self.records) // 2
        return (
            Batch(self.records[:middle], self.operations[:middle]),
            Batch(self.records[middle:], self.operations[middle:]),
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


# Batches kept open at once while packing: a row whose identifier is already in a batch goes to
# a later one, so a file with each person a few times in a row still fills whole batches.
MAX_OPEN_BATCHES = 8


class _Open:
    """A batch being filled."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.operations: list[bytes] = []
        self.identifiers: set[str] = set()
        self.size = len(_OPEN) + len(_CLOSE)
        self.full = False

    def add(self, record: Record, op: bytes, keys: tuple[str, ...], batch_size: int) -> bool:
        """Add the operation (touching `keys`) if it fits; a batch that refuses one for its
        size is full."""
        added = len(op) + (1 if self.operations else 0)  # the comma between operations
        # "< 500 KB": a request of exactly MAX_REQUEST_BYTES is already too large.
        if self.full or (self.operations and self.size + added >= MAX_REQUEST_BYTES):
            self.full = True
            return False
        self.records.append(record)
        self.operations.append(op)
        self.identifiers.update(keys)
        self.size += added
        self.full = len(self.operations) >= batch_size
        return True

    def batch(self) -> Batch:
        return Batch(self.records, self.operations)


def pack(records: Iterable[Record], batch_size: int) -> Iterator[Batch | Rejection]:
    """Batches of at most `batch_size` operations and under MAX_REQUEST_BYTES bytes, of any
    kinds (`operations.operation` serializes each).

    A batch holds at most one operation per identifier, and a later row of an identifier is
    always in a later batch than its earlier rows: the sender sends batches that share an
    identifier one after the other, in the order they come from here. A row whose operation
    alone is over MAX_OPERATION_BYTES is rejected at once (so a rejection may come before the
    batch that holds earlier rows), never sent."""
    records = list(records)
    keys = [order_keys(record) for record in records]
    touched = [key for record_keys in keys for key in record_keys]
    if len(set(touched)) == len(touched):
        # Nobody twice (the common chunk): each batch is the next run of rows, no batch
        # having to wait for another; the same batches, found without the search below.
        yield from _pack_runs(records, batch_size)
    else:
        yield from _pack_apart(records, keys, batch_size)


def _pack_apart(
    records: list[Record], keys: list[tuple[str, ...]], batch_size: int
) -> Iterator[Batch | Rejection]:
    """pack() of records among which someone comes twice (each record touching `keys`): a
    record goes to the first open batch after the last one naming the same person."""
    batches: list[_Open] = []
    for record, record_keys in zip(records, keys, strict=True):
        op = operation(record)
        if len(op) > MAX_OPERATION_BYTES:
            yield _too_large(record, op)
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


def _pack_runs(records: list[Record], batch_size: int) -> Iterator[Batch | Rejection]:
    """pack() of records that each touch other people: batches of consecutive rows."""
    batch: list[Record] = []
    ops: list[bytes] = []
    size = len(_OPEN) + len(_CLOSE)
    for record, op in zip(records, map(operation, records), strict=True):
        if len(op) > MAX_OPERATION_BYTES:
            yield _too_large(record, op)
            continue
        if ops and size + 1 + len(op) >= MAX_REQUEST_BYTES:  # 1: the comma before it
            yield Batch(batch, ops)
            batch, ops, size = [], [], len(_OPEN) + len(_CLOSE)
        size += len(op) + (1 if ops else 0)
        batch.append(record)
        ops.append(op)
        if len(ops) >= batch_size:
            yield Batch(batch, ops)
            batch, ops, size = [], [], len(_OPEN) + len(_CLOSE)
    if ops:
        yield Batch(batch, ops)


def _too_large(record: Record, op: bytes) -> Rejection:
    return Rejection(
        record.row,
        record.identifier,
        f"batch operation is {len(op):,} bytes, over the API's {MAX_OPERATION_BYTES:,}",
    )
