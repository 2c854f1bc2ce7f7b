"""Send records to the Track API: a reader, a bounded queue, N workers, one rate limiter.

    chunks ─► reader ─► Queue(maxsize) ─► workers xN ─► limiter ─► TrackClient ─► results file
              (thread)   backpressure      retry loop     shared

The reader reads and normalizes in a thread, so pandas work does not stall the event loop; it
waits when the queue is full, so memory stays bounded however fast the file reads. Each worker
sends one record at a time and retries transient failures with exponential backoff and full
jitter; the limiter is acquired before every attempt, retries included. A FATAL answer (401/403,
a redirect) stops the whole run at once: in-flight rows get no outcome and are re-sent on resume.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import AbortError
from .normalize import Record, Rejection
from .ratelimit import RateLimiter
from .results import ResultsWriter, Status, outcome_line
from .track import DEFAULT_TIMEOUT, Kind, Response, TrackClient

Items = list[Record | Rejection]


@dataclass(frozen=True)
class SendOptions:
    """How to send. `rate=None` removes the cap (only sensible against a local simulator)."""

    rate: float | None = 100.0
    concurrency: int | None = None  # None: enough to reach `rate` at 500 ms latency
    max_retries: int = 5
    timeout: float = DEFAULT_TIMEOUT
    region: str = "us"
    base_url: str | None = None
    backoff_base: float = 0.5
    backoff_cap: float = 30.0

    @property
    def workers(self) -> int:
        if self.concurrency is not None:
            return self.concurrency
        if self.rate is None:
            return 64
        # Little's law: requests in flight = rate x latency. 500 ms of latency at the full rate.
        return max(4, min(500, math.ceil(self.rate * 0.5)))


def backoff_delay(
    attempt: int, retry_after: float | None, options: SendOptions, rng: random.Random
) -> float:
    """Seconds to wait before retry number `attempt` (1-based): "full jitter", i.e. uniform in
    [0, min(cap, base * 2^(attempt-1))], and never less than the server's Retry-After."""
    ceiling = min(options.backoff_cap, options.backoff_base * 2 ** (attempt - 1))
    delay = rng.uniform(0, ceiling)
    return max(delay, retry_after) if retry_after is not None else delay


async def preflight(client: TrackClient, limiter: RateLimiter | None) -> Response:
    """Check the credentials (GET /api/v1/accounts/region) before any row is sent."""
    if limiter is not None:
        await limiter.acquire()  # this request counts against the rate like any other
    response = await client.region()
    if response.kind is Kind.FATAL:
        raise AbortError(f"{response.error}; nothing was sent")
    if response.kind is not Kind.OK:
        raise AbortError(
            f"cannot reach the Track API at {client.base_url}: {response.error};"
            " nothing was sent, run again later"
        )
    return response


class FatalAnswer(Exception):
    """Raised inside the pipeline when an answer means the whole run must stop."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.error)
        self.response = response


class Pipeline:
    def __init__(
        self,
        client: TrackClient,
        results: ResultsWriter,
        options: SendOptions,
        *,
        limiter: RateLimiter | None = None,
        progress: Callable[[int], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.results = results
        self.options = options
        self.limiter = limiter
        self.progress = progress
        self.rng = rng or random.Random()
        self.requests = 0

    async def run(self, chunks: Iterator[Items]) -> None:
        """Send every Record of `chunks` and write every outcome; AbortError on a FATAL answer."""
        queue: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=self.options.workers * 2)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.options.workers):
                    group.create_task(self._work(queue))
                await self._read(chunks, queue)
        except* FatalAnswer as fatal:
            first = fatal.exceptions[0]
            assert isinstance(first, FatalAnswer)
            raise AbortError(
                f"{first.response.error}; stopped, rows not yet sent have no outcome:"
                " re-run the same command to resume"
            ) from None
        finally:
            self.results.flush()

    async def _read(self, chunks: Iterator[Items], queue: asyncio.Queue[Record | None]) -> None:
        while (items := await asyncio.to_thread(next, chunks, None)) is not None:
            for item in items:
                if isinstance(item, Rejection):
                    self._write_rejection(item)
                else:
                    await queue.put(item)
        for _ in range(self.options.workers):
            await queue.put(None)  # one stop signal per worker

    async def _work(self, queue: asyncio.Queue[Record | None]) -> None:
        while (record := await queue.get()) is not None:
            await self._send(record)

    async def _acquire(self) -> None:
        if self.limiter is not None:
            await self.limiter.acquire()
        self.requests += 1

    async def _send(self, record: Record) -> None:
        attempts = 0
        while True:
            await self._acquire()
            attempts += 1
            response = await self.client.identify(record.identifier, record.attributes)
            if response.kind is Kind.OK:
                line = outcome_line(
                    record.row,
                    record.identifier,
                    "ok",
                    http_status=response.status,
                    attempts=attempts,
                )
                self._write("ok", line)
                return
            if response.kind is Kind.FATAL:
                raise FatalAnswer(response)
            if response.kind is Kind.TERMINAL or attempts > self.options.max_retries:
                error = response.error
                if response.kind is Kind.TRANSIENT:
                    error = f"{error} (gave up after {attempts} attempts)"
                line = outcome_line(
                    record.row,
                    record.identifier,
                    "failed",
                    http_status=response.status,
                    attempts=attempts,
                    error=error,
                    payload=record.attributes,
                )
                self._write("failed", line)
                return
            if response.status == 429 and response.retry_after and self.limiter is not None:
                # The API asked everyone to slow down, not only this request.
                self.limiter.pause(response.retry_after)
            await asyncio.sleep(
                backoff_delay(attempts, response.retry_after, self.options, self.rng)
            )

    def _write_rejection(self, item: Rejection) -> None:
        line = outcome_line(item.row, item.identifier, "invalid", error=item.reason)
        self._write("invalid", line)

    def _write(self, status: Status, line: bytes) -> None:
        self.results.write(status, line)
        self.results.flush()  # the results file is the checkpoint: a crash loses no outcome
        if self.progress is not None:
            self.progress(1)
