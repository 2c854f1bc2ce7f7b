"""Retry policy: when to try again, how fast to send, and when the API is down for everyone.

Three small pieces, each a pure object with the clock passed in (so tests drive them without
sleeping), and the credentials check's retry loop that uses them:

- `Backoff`: exponential backoff with full jitter, never sooner than `Retry-After`.
- `AdaptiveRate`: the request rate as AIMD (additive increase, multiplicative decrease, as TCP
  does). `--rate` is the ceiling, not the speed: a workspace's 100 requests/s are shared with
  its live traffic, and Customer.io sends no `Retry-After` on its 429s, so a 429 is the only
  sign that the real limit is lower. Each 429 cuts the rate to `DECREASE` of itself; every
  second without one adds `INCREASE` of the ceiling back.
- `Breaker`: judges the API over a sliding window of answers, as resilience4j and Polly do: it
  trips when at least `MIN_FAILURES` transient failures make up half or more of the last
  `WINDOW` seconds of answers, or when nothing succeeded for `WINDOW` seconds. 429s are no
  failures to it. One unlucky row, or 20% of random 503s, never trips it.

See docs/track-api.md for the API facts behind these numbers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

# Backoff, waits_too_long and the credentials check's decisions are pure and shared with the
# check that sends without aiohttp (connection.check): they live in answers.py.
from .answers import OUTAGE_WINDOW, CheckRetries, Response
from .answers import Backoff as Backoff
from .answers import waits_too_long as waits_too_long
from .defaults import DEFAULT_MAX_WAIT as DEFAULT_MAX_WAIT
from .ratelimit import RateLimiter


class RegionClient(Protocol):
    """What the credentials check sends with: `TrackClient`, or `connection.RegionCheck`."""

    base_url: str

    async def region(self) -> Response: ...


class AdaptiveRate:
    """AIMD rate control under a ceiling. Feed it every answer; read `rate`.

    A 429 cuts the rate only for a request started at least `HOLD` seconds after the last cut:
    the answers to requests sent at the old rate say nothing about the new one, and the API's
    window still remembers them (TCP, likewise, cuts once per round trip)."""

    DECREASE = 0.85  # x rate on a 429; tuned with the "adaptive rate" benchmark
    INCREASE = 0.1  # x ceiling added back per second without a 429
    HOLD = 0.3  # seconds after a cut during which further 429s are answers to the old rate

    def __init__(self, ceiling: float, now: float) -> None:
        self.ceiling = ceiling
        self.floor = min(ceiling, max(1.0, ceiling / 100))
        self.rate = ceiling
        self.cuts = 0
        self._last_cut = float("-inf")
        self._last_update = now

    def accepted(self, now: float) -> float:
        """An answer that was not a 429: grow back towards the ceiling."""
        if self.rate < self.ceiling:
            grown = self.rate + self.INCREASE * self.ceiling * (now - self._last_update)
            self.rate = min(self.ceiling, grown)
        self._last_update = now
        return self.rate

    def rate_limited(self, started: float, now: float) -> float:
        """A 429 for a request started at `started`: cut the rate, unless already cut for it."""
        if started >= self._last_cut + self.HOLD:
            self.rate = max(self.floor, self.rate * self.DECREASE)
            self._last_cut = now
            self.cuts += 1
        self._last_update = now
        return self.rate


class Breaker:
    """Is the API down? Judged from a sliding window of answers, never from one row.

    It trips when the last `WINDOW` seconds hold at least `MIN_FAILURES` transient failures
    and they are at least `RATIO` of the answers, or when nothing has succeeded for `WINDOW`
    seconds while requests kept failing (a slow run that never gathers `MIN_FAILURES`). A 429
    is no failure here: the API is up and the adaptive rate answers it; only a workspace that
    answers nothing but 429 for `WINDOW` seconds trips it."""

    WINDOW = OUTAGE_WINDOW  # seconds of answers it judges (30)
    MIN_FAILURES = 20  # fewer failures than this trip it only after WINDOW without success
    RATIO = 0.5  # never trips while most answers are successes

    def __init__(self, now: float) -> None:
        self._answers: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._failures = 0
        self._last_success = now

    def record(self, ok: bool | None, now: float) -> None:
        """An answer: True accepted (or refused for the row's own fault), False a transient
        failure, None rate limited (429)."""
        if ok is None:
            return
        self._answers.append((now, not ok))
        self._failures += not ok
        if ok:
            self._last_success = now
        while self._answers[0][0] < now - self.WINDOW:
            self._failures -= self._answers.popleft()[1]

    def tripped(self, now: float) -> bool:
        """True when the answers say the API is down (call after an answer that was no
        success)."""
        failures = self._failures
        if failures >= self.MIN_FAILURES and failures >= self.RATIO * len(self._answers):
            return True
        return now - self._last_success >= self.WINDOW

    def __str__(self) -> str:
        return (
            f"{self._failures} of the last {len(self._answers)} answers in {self.WINDOW:g}s failed"
        )


async def check_credentials(
    client: RegionClient,
    limiter: RateLimiter | None,
    max_retries: int,
    backoff: Backoff,
    max_wait: float = DEFAULT_MAX_WAIT,
) -> tuple[Response, int]:
    """Check the credentials (GET /api/v1/accounts/region) before any row is sent, retrying
    transient failures like any request: 429s without using up `max_retries`, for at most the
    breaker's window. Returns the answer and the requests it took."""
    retries = CheckRetries(client.base_url, max_retries, backoff, max_wait, Breaker.WINDOW)
    while True:
        if limiter is not None:
            await limiter.acquire()  # this request counts against the rate like any other
        response = await client.region()
        delay = retries.after(response)
        if delay is None:
            return response, retries.requests
        await asyncio.sleep(delay)
