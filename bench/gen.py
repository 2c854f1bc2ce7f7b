"""Generate realistic customer CSV / JSONL files for benchmarks.

    python bench/gen.py OUT.csv ROWS [--seed N]

Columns: id, email, first_name, last_name, zip (zero-padded), plan, created_at (ISO-8601 with
an offset), last_login (epoch seconds), lifetime_value, is_active. The extension picks the format.
"""

from __future__ import annotations

import argparse
import random
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson

FIRST = ["Ana", "Ben", "Chloé", "Dmitri", "Eve", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"]
LAST = ["Silva", "Okafor", "Müller", "Nguyen", "Smith", "Kowalski", "Rossi", "Tanaka", "Haddad"]
PLANS = ["free", "pro", "team", "enterprise"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "shop.example.co.uk"]
COLUMNS = [
    "id",
    "email",
    "first_name",
    "last_name",
    "zip",
    "plan",
    "created_at",
    "last_login",
    "lifetime_value",
    "is_active",
]


def _ascii(name: str) -> str:
    # Most real addresses are ASCII even when names are not (chloe.muller@, not chloé.müller@).
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


def rows(n: int, seed: int) -> list[list[str]]:
    rnd = random.Random(seed)
    base = datetime(2015, 1, 1, tzinfo=UTC)
    out = []
    for i in range(1, n + 1):
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        tz = timezone(timedelta(minutes=rnd.choice([-480, -300, 0, 60, 120, 330, 540])))
        created = (base + timedelta(seconds=rnd.randrange(300_000_000))).astimezone(tz)
        out.append(
            [
                f"cust-{i}",
                f"{_ascii(first)}.{_ascii(last)}{i}@{rnd.choice(DOMAINS)}",
                first,
                last,
                f"{rnd.randrange(100_000):05d}",
                rnd.choice(PLANS),
                created.isoformat(),
                str(1_600_000_000 + rnd.randrange(100_000_000)),
                f"{rnd.random() * 5000:.2f}",
                rnd.choice(["true", "false"]),
            ]
        )
    return out


def write(path: Path, n: int, seed: int = 1) -> None:
    """Write `n` rows to `path` as CSV or JSONL (by extension), in blocks to bound memory."""
    block = 100_000
    with path.open("wb") as f:
        if path.suffix == ".csv":
            f.write((",".join(COLUMNS) + "\n").encode())
        for start in range(0, n, block):
            part = rows(min(block, n - start), seed + start)
            for k, r in enumerate(part):
                r[0] = f"cust-{start + k + 1}"
            if path.suffix == ".csv":
                # No value holds a comma or a quote, so plain joining is valid CSV.
                f.write("".join(",".join(r) + "\n" for r in part).encode())
            else:
                for r in part:
                    f.write(orjson.dumps(dict(zip(COLUMNS, r, strict=True))) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("rows", type=int)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    write(args.out, args.rows, args.seed)


if __name__ == "__main__":
    main()
