"""How to reach and pace the Track API (`SendOptions`), and the credentials check (`check`).

Apart from the sender so that `bulksync check` (and `bulksync.check`) need aiohttp but not
pandas: the sender imports the whole pipeline. `send.SendOptions` is this one.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_WAIT
from .errors import UsageError
from .policy import Backoff, check_credentials
from .track import DEFAULT_TIMEOUT, REGIONS, Credentials, TrackClient, resolve_base_url


@dataclass(frozen=True)
class SendOptions:
    """How to send. `rate=None` removes the cap (only sensible against a local simulator).
    Values are checked here, so a bad one fails before any file is touched."""

    rate: float | None = 100.0  # the ceiling: the adaptive rate slows below it on 429s
    concurrency: int | None = None  # None: enough to reach `rate` at 500 ms latency
    max_retries: int = 5
    timeout: float = DEFAULT_TIMEOUT
    region: str = "us"
    base_url: str | None = None
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    batch: bool = False  # POST /api/v2/batch instead of one PUT per row
    batch_size: int = DEFAULT_BATCH_SIZE
    max_wait: float = DEFAULT_MAX_WAIT  # longest Retry-After honoured; longer stops the run

    def __post_init__(self) -> None:
        problems = [
            f"{name} {value!r}: {rule}"
            for name, value, ok, rule in (
                ("rate", self.rate, self.rate is None or 0 < self.rate < math.inf, "must be > 0"),
                (
                    "concurrency",
                    self.concurrency,
                    self.concurrency is None or self.concurrency >= 1,
                    "must be >= 1",
                ),
                ("max_retries", self.max_retries, self.max_retries >= 0, "must be >= 0"),
                ("timeout", self.timeout, self.timeout > 0, "must be > 0"),
                ("region", self.region, self.region in REGIONS, "must be us or eu"),
                ("backoff_base", self.backoff_base, self.backoff_base >= 0, "must be >= 0"),
                ("backoff_cap", self.backoff_cap, self.backoff_cap >= 0, "must be >= 0"),
                ("batch_size", self.batch_size, self.batch_size >= 1, "must be >= 1"),
                ("max_wait", self.max_wait, 0 <= self.max_wait < math.inf, "must be >= 0"),
            )
            if not ok
        ]
        if problems:
            raise UsageError("; ".join(problems))

    @property
    def workers(self) -> int:
        if self.concurrency is not None:
            return self.concurrency
        if self.rate is None:
            return 64
        # Little's law: requests in flight = rate x latency. 500 ms of latency at the full rate.
        return max(4, min(500, math.ceil(self.rate * 0.5)))

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.backoff_base, self.backoff_cap)


def check(options: SendOptions | None = None, credentials: Credentials | None = None) -> Any:
    """Verify the credentials; return the account's region answer
    (`{"url": ..., "region": ..., "environment_id": ...}`)."""
    options = options or SendOptions()
    credentials = credentials or Credentials.from_env()
    base_url = resolve_base_url(options.region, options.base_url)

    async def run() -> Any:
        async with TrackClient(base_url, credentials, timeout=options.timeout) as client:
            account, _ = await check_credentials(
                client, None, options.max_retries, options.backoff, options.max_wait
            )
            return account.body

    return asyncio.run(run())
