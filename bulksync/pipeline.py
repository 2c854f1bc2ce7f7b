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
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import AbortError
from .normalize import Record, Rejection
from .ratelimit import RateLimiter
from .results import ResultsLog, Status, outcome_line
from .track import DEFAULT_TIMEOUT, Kind, Response, TrackClient

Items = list[Record | Rejection]
log = logging.getLogger("bulksync")


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


async def preflight(
    client: TrackClient, limiter: RateLimiter | None, options: SendOptions
) -> tuple[Response, int]:
    """Check the credentials (GET /api/v1/accounts/region) before any row is sent, retrying
    transient failures like any request. Returns the answer and the requests it took."""
    attempt = 0
    while True:
        if limiter is not None:
            await limiter.acquire()  # this request counts against the rate like any other
        attempt += 1
        response = await client.region()
        if response.kind is Kind.OK:
            return response, attempt
        if response.kind is not Kind.TRANSIENT:
            raise AbortError(f"{response.error}; nothing was sent")
        if attempt > options.max_retries:
            raise AbortError(
                f"cannot reach the Track API at {client.base_url}: {response.error};"
                " nothing was sent, run again later"
            )
        log.debug("credentials check: attempt %d: %s", attempt, response.error)
        await asyncio.sleep(backoff_delay(attempt, response.retry_after, options, random.Random()))


class FatalAnswer(Exception):
    """Raised inside the pipeline when an answer means the whole run must stop."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Pipeline:
    """Sends records and writes their outcomes. `stop()` (a signal) ends it gracefully."""

    def __init__(
        self,
        client: TrackClient,
        results: ResultsLog,
        options: SendOptions,
        *,
        limiter: RateLimiter | None = None,
        progress: Callable[[Status], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.results = results
        self.options = options
        self.limiter = limiter
        self.progress = progress
        self.rng = rng or random.Random()
        self.requests = 0
        self.stopping = False
        self._last_success = time.monotonic()
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=options.workers * 2)
        self._reader: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []

    async def run(self, chunks: Iterator[Items]) -> None:
        """Send every Record of `chunks` and write every outcome. Raises AbortError when an
        answer stops the run (credentials refused, the API down); returns early after stop()."""
        try:
            async with asyncio.TaskGroup() as group:
                self._workers = [
                    group.create_task(self._work()) for _ in range(self.options.workers)
                ]
                self._reader = group.create_task(self._read(chunks))
        except* FatalAnswer as fatal:
            first = fatal.exceptions[0]
            assert isinstance(first, FatalAnswer)
            raise AbortError(
                f"{first.message}; stopped. Rows not yet sent have no outcome:"
                " re-run the same command to resume"
            ) from None
        finally:
            self.results.flush()

    def stop(self, grace: float) -> None:
        """Stop reading, let requests in flight finish for up to `grace` seconds, then cancel.
        Rows not finished get no outcome, so a re-run sends them."""
        if self.stopping:
            grace = 0.0  # a second signal: stop now
        self.stopping = True
        if self._reader is not None:
            self._reader.cancel()
        while not self._queue.empty():  # queued rows were not started: leave them for resume
            self._queue.get_nowait()
        for _ in self._workers:
            self._queue.put_nowait(None)
        asyncio.get_running_loop().call_later(grace, self._cancel_workers)

    def _cancel_workers(self) -> None:
        for task in self._workers:
            task.cancel()

    async def _read(self, chunks: Iterator[Items]) -> None:
        while (items := await asyncio.to_thread(next, chunks, None)) is not None:
            for item in items:
                if isinstance(item, Rejection):
                    line = outcome_line(item.row, item.identifier, "invalid", error=item.reason)
                    self._write(item.row, "invalid", line)
                else:
                    await self._queue.put(item)
        for _ in self._workers:
            await self._queue.put(None)  # one stop signal per worker

    async def _work(self) -> None:
        while (record := await self._queue.get()) is not None:
            await self._send(record)

    async def _send(self, record: Record) -> None:
        attempts = 0
        started = time.monotonic()
        while True:
            if self.limiter is not None:
                await self.limiter.acquire()
            if self.stopping:
                return  # not started: no outcome, sent again on resume
            self.requests += 1
            attempts += 1
            response = await self.client.identify(record.identifier, record.attributes)
            if response.kind is Kind.OK:
                self._last_success = time.monotonic()
                line = outcome_line(
                    record.row,
                    record.identifier,
                    "ok",
                    http_status=response.status,
                    attempts=attempts,
                )
                self._write(record.row, "ok", line)
                return
            if response.kind is Kind.FATAL:
                raise FatalAnswer(response.error or "the API refused the run")
            if response.kind is Kind.TRANSIENT:
                log.debug("row %d: attempt %d: %s", record.row, attempts, response.error)
            out_of_retries = attempts > self.options.max_retries
            if response.kind is Kind.TRANSIENT and out_of_retries and self._last_success < started:
                # Outage breaker: nothing has succeeded since this row was first tried, so the
                # API is down, not this row. Stop rather than mark row after row failed.
                raise FatalAnswer(
                    f"the Track API kept failing ({response.error}) and nothing succeeded"
                    f" for {time.monotonic() - self._last_success:.0f}s"
                )
            if response.kind is Kind.TERMINAL or out_of_retries:
                error = response.error
                if response.kind is Kind.TRANSIENT:
                    error = f"{error} (gave up after {attempts} attempts)"
                log.error("row %d (id %s) failed: %s", record.row, record.identifier, error)
                line = outcome_line(
                    record.row,
                    record.identifier,
                    "failed",
                    http_status=response.status,
                    attempts=attempts,
                    error=error,
                    payload=record.attributes,
                )
                self._write(record.row, "failed", line)
                return
            if response.status == 429 and response.retry_after and self.limiter is not None:
                # The API asked everyone to slow down, not only this request.
                self.limiter.pause(response.retry_after)
            await asyncio.sleep(
                backoff_delay(attempts, response.retry_after, self.options, self.rng)
            )

    def _write(self, row: int, status: Status, line: bytes) -> None:
        self.results.write(row, status, line)
        self.results.flush()  # the results file is the checkpoint: a crash loses no outcome
        if self.progress is not None:
            self.progress(status)
