"""Decide which normalized rows to send: the plan stage, between normalize and send.

- resume: a row that already has an outcome in the results file is dropped;
- diff state (`--state`): a row whose payload Customer.io already accepted, unchanged, becomes
  `Unchanged` and is recorded as such instead of being sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .normalize import Record, Rejection
from .results import ResultsLog
from .state import StateStore, payload_hash


class Unchanged(NamedTuple):
    """A row whose payload is the one Customer.io last accepted for its identifier."""

    row: int
    identifier: str


Item = Record | Rejection | Unchanged
Items = Sequence[Item]


def pending(items: Items, log: ResultsLog) -> list[Item]:
    """Resume: drop the rows that already have an outcome in the results file."""
    return [item for item in items if log.status(item.row) is None]


def changed(items: Items, store: StateStore) -> Items:
    """Turn the records whose payload Customer.io already accepted into `Unchanged`."""
    records = [item for item in items if isinstance(item, Record)]
    if not records:
        return items
    accepted = store.last_hashes(record.identifier for record in records)
    if not accepted:
        return items
    return [
        Unchanged(item.row, item.identifier)
        if isinstance(item, Record)
        and item.identifier in accepted  # hash only the rows the state knows
        and accepted[item.identifier] == payload_hash(item.attributes)
        else item
        for item in items
    ]
