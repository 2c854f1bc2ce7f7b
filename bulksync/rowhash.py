"""Raw-row hashes, for the diff state's fast path: a nightly row that did not change is known
from its cells, before it is normalized.

Normalizing is a pure function of a row's cells, the chunk's column names and the resolved
options (and of the code that normalizes). A row's hash is keyed by all of those but the cells,
so a row whose hash is the one the state keeps beside the payload Customer.io accepted for a
person normalizes to that person and that payload: it is unchanged, and neither normalizing it
nor hashing its payload can tell more.

The hash is 128 bits (two int64s): a false match would skip a changed row without a word, so a
collision must be out of reach, not merely rare (unlike plan.Repeats' 64-bit hashes, where a
collision costs a full check). Each half is keyed SipHash-2-4 of the row's bytes, with its own
key, as pandas computes it for a whole array in C (`pd.util.hash_array`): a quarter of the time
of a blake2s call per row, and a pseudo-random function of the row like it.

A cell is hashed as the text the reader gave: only string columns qualify (every CSV column; a
JSONL chunk of strings only), since JSON's 1 and "1" are different payloads that look alike as
text.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import normalize, operations
from .normalize import ColumnPlan

Hashes = npt.NDArray[np.int64]  # shape (rows, 2): a row's hash in two halves

_NOTHING = pa.scalar(b"", pa.large_binary())  # what the cells are joined with


@functools.cache
def _code() -> bytes:
    """What normalizing also depends on: its code, and the versions of the libraries that parse
    and check cells. Another version may normalize a row otherwise: its first run takes the
    slow path, once. Found when first needed, so that a run without the state never looks."""
    modules = (normalize, operations, sys.modules[__name__])  # this one: how rows are hashed
    sources = b"".join(Path(m.__file__ or "").read_bytes() for m in modules)
    libraries = [version(name) for name in ("pandas", "pyarrow", "email-validator")]
    return hashlib.blake2b(sources + orjson.dumps(libraries)).digest()


def _canonical(value: Any) -> Any:
    """`value` as JSON the same in every process (a frozenset's order is not)."""
    if isinstance(value, Mapping):
        return sorted([str(k), _canonical(v)] for k, v in value.items())
    if isinstance(value, set | frozenset):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def hash_key(plan: ColumnPlan, columns: list[str]) -> bytes:
    """The key a chunk's rows are hashed with: the code, the resolved options and the chunk's
    columns, in order (a JSONL chunk's columns are the keys its rows hold), with their types
    ("dtype: name", as the CSV and JSONL readers give them: a format's strings could one day be
    read otherwise than another's)."""
    options = {
        "options": _canonical(vars(plan.options)),
        "plan": [plan.id_column, plan.email_column, _canonical(plan.date_columns), str(plan.tz)],
        "kind": plan.kind.name,
        "roles": _canonical(plan.roles),
        "columns": columns,
    }
    # 32 hexadecimal digits: two SipHash keys of 16 bytes (row_hashes).
    return hashlib.blake2b(_code() + orjson.dumps(options), digest_size=16).hexdigest().encode()


def row_hashes(frame: pd.DataFrame, key: bytes) -> Hashes | None:
    """Each row's hash, from its cells as text; None when a column holds anything but strings
    (or the frame has no column)."""
    n, width = frame.shape
    if not width:
        return None
    cells = []
    # Each cell's length in bytes (-1: a missing cell), after the row's cells: with them, no two
    # different rows make the same bytes, whatever their cells hold.
    lengths = np.empty((n, width), dtype="<i4")
    for i in range(width):
        s = frame.iloc[:, i]
        if isinstance(s.dtype, pd.StringDtype):
            strings = pa.array(s.array, type=pa.large_string())
        elif s.dtype == object and pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
            # JSONL: strings and nulls (a null and a missing key are alike to normalize()).
            strings = pa.array(s.to_numpy(), type=pa.large_string(), from_pandas=True)
        else:
            return None
        lengths[:, i] = pc.fill_null(pc.binary_length(strings), -1).to_numpy()
        cells.append(strings.cast(pa.large_binary()))
    sizes = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(lengths.itemsize * width), n, [None, pa.py_buffer(lengths.tobytes())]
    )
    rows = pc.binary_join_element_wise(
        *cells, sizes.cast(pa.large_binary()), _NOTHING, null_handling="replace"
    )
    blobs = rows.to_numpy(zero_copy_only=False)  # a bytes object per row, hashed as it is
    halves = [
        pd.util.hash_array(blobs, hash_key=half, categorize=False)
        for half in (key[:16].decode(), key[16:].decode())
    ]
    return np.stack(halves, axis=1).view(np.int64)
