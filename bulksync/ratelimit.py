"""The rate limiter: never more than `rate` request starts in any sliding one-second window, and
as close to `rate` as possible.

Going over the workspace's rate may mean throttling or dropped data, so "on average" is not good
enough. aiolimiter alone cannot hold both bounds: `AsyncLimiter(rate, 1)` starts with a full
bucket and lets about 2x `rate` through in the first second; `AsyncLimiter(1, 1 / rate)` never
bursts but loses every late wake-up and sustains only ~90% of `rate`. So two layers:

1. aiolimiter paces starts at the ceiling with a small bucket (1/20 s worth), which absorbs
   late wake-ups without allowing a real burst;
2. a sliding-window log of the last starts refuses a start while `rate` of them fall within the
   last `window` seconds. That bound is exact by construction.

`window` is one second plus a small margin, because the server sees arrival times, not our start
times: a request that waits longer for its connection arrives later than it started.

`set_rate` moves the rate below the ceiling (the adaptive rate in policy.py). aiolimiter's rate
is fixed when it is made, and a second limiter would release its own waiters at its own pace
(two pacers, twice the rate, in bunches the log then cuts), so below the ceiling each start
also reserves the next free slot, `window / rate` after the previous one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

from aiolimiter import AsyncLimiter

DEFAULT_MARGIN = 0.01  # seconds; costs 1% of throughput, covers loopback and LAN jitter
BATCH_MARGIN = 0.05  # when the reader keeps the CPU busy (batch mode): see api._send


class RateLimiter:
    """Async limiter shared by all workers: `await limiter.acquire()` before each request."""

    def __init__(self, rate: float, *, margin: float = DEFAULT_MARGIN) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.ceiling = rate
        self._margin = margin
        # Start times, each in a one-item list so that sent() can move it to the moment the
        # request really left (see acquire()).
        self._starts: deque[list[float]] = deque()
        self._paused_until = 0.0
        self._next_slot = 0.0  # below the ceiling: the earliest time of the next start
        self.set_rate(rate)
        # The pacer runs at exactly the window's rate, so the log below only has to cut the
        # bunches that late wake-ups and catch-up create, and rarely makes anyone wait.
        pace = self.max_starts / self.window
        burst = max(1.0, pace / 20)
        self._pacer = AsyncLimiter(burst, burst / pace)

    def set_rate(self, rate: float) -> None:
        """Send at `rate` from now on (at most the ceiling the limiter was made with)."""
        self.rate = min(rate, self.ceiling)
        self.window = 1.0 + self._margin if self.rate >= 1 else 1.0 / self.rate + self._margin
        self.max_starts = max(1, math.floor(self.rate))

    def pause(self, seconds: float) -> None:
        """Hold every start for `seconds` (the API said Retry-After: slow down as a whole)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def acquire(self) -> Callable[[], None]:
        """Wait for a start; return a callback to call when the request has really been sent.

        Between this start and the request leaving, the event loop can be held up (a GIL-
        holding pandas call in the reader thread, a garbage collection): requests started
        apart would then leave together. Re-stamping the start when the request is sent keeps
        the window counting what the API sees. A later stamp only makes the log wait longer,
        so the bound stays safe whatever the order."""
        while True:
            while (wait := self._paused_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await self._pacer.acquire()
            if self.rate < self.ceiling:
                await self._next_free_slot()
            now = time.monotonic()
            if self._paused_until > now:
                continue  # a pause began while this start waited: wait it out, queue again
            while self._starts and self._starts[0][0] <= now - self.window:
                self._starts.popleft()
            if len(self._starts) < self.max_starts:
                start = [now]
                self._starts.append(start)
                return lambda: _restamp(start)
            # The log is full (the rate was just cut, or late wake-ups bunched starts): wait
            # for its oldest start to leave the window, then queue at the pacer again. Waiting
            # here instead would let every start held meanwhile leave together when the log
            # empties, and that bunch would come back a window later, and so on.
            await asyncio.sleep(self._starts[0][0] + self.window - now)

    async def _next_free_slot(self) -> None:
        """Reserve the next slot at the current rate and wait for it. Slots are reserved ahead,
        so a late wake-up costs its own start a little, not the rate."""
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self.window / self.max_starts
        if slot > now:
            await asyncio.sleep(slot - now)


def _restamp(start: list[float]) -> None:
    start[0] = max(start[0], time.monotonic())
