"""Decide which normalized rows to send: the plan stage, between normalize and send.

- resume: a row that already has an outcome in the results file is dropped;
- diff state (`--state`): a row whose payload Customer.io already accepted, unchanged, becomes
  `Unchanged` and is recorded as such instead of being sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .normalize import Rejection
from .operations import KINDS, PEOPLE, Record, state_key
from .results import ResultsLog
from .state import StateStore, payload_hash


class Unchanged(NamedTuple):
    """A row whose payload is the one Customer.io last accepted for its identifier."""

    row: int
    identifier: str
    op: str = PEOPLE


Item = Record | Rejection | Unchanged
Items = Sequence[Item]


def pending(items: Items, log: ResultsLog) -> list[Item]:
    """Resume: drop the rows that already have an outcome in the results file."""
    return [item for item in items if log.status(item.row) is None]


def changed(items: Items, store: StateStore) -> Items:
    """Turn the records Customer.io already accepted into `Unchanged`: for most kinds, the same
    payload accepted for the same key; for events ("once"), the event id accepted at all."""
    keys = {
        item.row: key
        for item in items
        if isinstance(item, Record) and (key := state_key(item)) is not None
    }
    if not keys:
        return items
    accepted = store.last_hashes(keys.values())
    if not accepted:
        return items
    return [
        Unchanged(item.row, item.identifier, item.op)
        if isinstance(item, Record) and _accepted(item, accepted.get(keys.get(item.row, "")))
        else item
        for item in items
    ]


def _accepted(record: Record, known: bytes | None) -> bool:
    if not known:  # unknown, or marked in flight by a run that never heard back
        return False
    if KINDS[record.op].diff == "once":
        return True
    return known == payload_hash(record.payload)  # hash only the rows the state knows
