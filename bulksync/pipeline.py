"""Send records to the Track API: a reader, a bounded queue, N workers, one rate limiter.

    chunks ─► reader ─► Queue(maxsize) ─► workers xN ─► limiter ─► TrackClient ─► results file
              (thread)   backpressure      retry loop     shared

The reader reads and normalizes in a thread, so pandas work does not stall the event loop; it
waits when the queue is full, so memory stays bounded however fast the file reads. Each worker
sends one record at a time and retries transient failures with exponential backoff and full
jitter; the limiter is acquired before every attempt, retries included. In batch mode a job is
a Batch of records (one POST /api/v2/batch); a whole-request 400 splits it in halves.

The run stops early in three ways, and in each a row not answered gets no outcome, so a re-run
sends it: a FATAL answer (401/403, a redirect); the outage breaker (a job out of retries while
nothing has succeeded since it first failed); stop() on SIGINT/SIGTERM, which lets requests in
flight finish for a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .batch import DEFAULT_BATCH_SIZE, Batch, pack
from .errors import AbortError
from .normalize import Record, Rejection
from .plan import Items, Unchanged
from .ratelimit import RateLimiter
from .results import ResultsLog, Status, outcome_line
from .state import StateStore
from .track import DEFAULT_TIMEOUT, Kind, Response, TrackClient

Job = Record | Batch  # what a worker sends in one request
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
    batch: bool = False  # POST /api/v2/batch instead of one PUT per row
    batch_size: int = DEFAULT_BATCH_SIZE

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
        state: StateStore | None = None,
    ) -> None:
        self.client = client
        self.state = state
        self.results = results
        self.options = options
        self.limiter = limiter
        self.progress = progress
        self.rng = rng or random.Random()
        self.requests = 0
        self.stopping = False
        self._last_success = time.monotonic()
        self._failures_since_success = 0  # transient answers since the last success
        # Bounded in jobs: in batch mode a job holds up to batch_size rows, so keep fewer queued.
        queued = 4 if options.batch else options.workers * 2
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=queued)
        self._reader: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._in_request: set[asyncio.Task[Any] | None] = set()  # workers awaiting an answer

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
        for task in self._workers:  # waiting for work, the limiter or a backoff: nothing sent
            if task not in self._in_request:
                task.cancel()
        asyncio.get_running_loop().call_later(grace, self._cancel_workers)

    def _cancel_workers(self) -> None:
        for task in self._workers:
            task.cancel()

    def _next_jobs(self, chunks: Iterator[Items]) -> Sequence[Job | Rejection | Unchanged] | None:
        """The next chunk as jobs (records, or batches of them), run in the reader's thread."""
        items = next(chunks, None)
        if items is None:
            return None
        records = [item for item in items if isinstance(item, Record)]
        if self.state is not None:
            self.state.mark_sending(record.identifier for record in records)
        if not self.options.batch:
            return items
        jobs: list[Job | Rejection | Unchanged] = [
            item for item in items if not isinstance(item, Record)
        ]
        jobs.extend(pack(records, self.options.batch_size))
        return jobs

    async def _read(self, chunks: Iterator[Items]) -> None:
        while (jobs := await asyncio.to_thread(self._next_jobs, chunks)) is not None:
            for job in jobs:
                if isinstance(job, Rejection):
                    line = outcome_line(job.row, job.identifier, "invalid", error=job.reason)
                    self._write(job.row, "invalid", line)
                elif isinstance(job, Unchanged):
                    self._write(
                        job.row, "unchanged", outcome_line(job.row, job.identifier, "unchanged")
                    )
                else:
                    await self._queue.put(job)
            self.results.flush()
        for _ in self._workers:
            await self._queue.put(None)  # one stop signal per worker

    async def _work(self) -> None:
        while not self.stopping and (job := await self._queue.get()) is not None:
            await self._send(job)

    async def _request(self, job: Job, on_sent: Callable[[], None] | None) -> Response:
        if isinstance(job, Batch):
            return await self.client.batch(job.body(), on_sent)
        return await self.client.identify(job.identifier, job.attributes, on_sent)

    async def _send(self, job: Job, attempts: int = 0) -> None:
        """Send one job until it is answered for good; write the outcome of each of its rows.
        `attempts` carries over the requests already made for these rows (when a batch the API
        refused as a whole is split in two)."""
        records = job.records if isinstance(job, Batch) else [job]
        mode = "batch" if isinstance(job, Batch) else "single"
        first_failure: float | None = None
        tries = 0  # this job's own requests: its retry budget (a split's 400s do not count)
        while True:
            on_sent = await self.limiter.acquire() if self.limiter is not None else None
            if self.stopping:
                return  # not started: no outcome, sent again on resume
            self.requests += 1
            attempts += 1
            tries += 1
            task = asyncio.current_task()
            self._in_request.add(task)
            try:
                response = await self._request(job, on_sent)
            finally:
                self._in_request.discard(task)
            if response.kind is Kind.OK:
                self._last_success = time.monotonic()
                self._failures_since_success = 0
                # A 207 lists the operations it refused; every other one was accepted.
                refused = _refused_operations(response.body) if response.status == 207 else {}
                for index, record in enumerate(records):
                    error = refused.get(index)
                    self._outcome(record, mode, response.status, attempts, error)
                self._flush()
                return
            if response.kind is Kind.FATAL:
                raise FatalAnswer(response.error or "the API refused the run")
            if response.kind is Kind.TRANSIENT:
                self._failures_since_success += 1
                first_failure = first_failure or time.monotonic()
                log.debug("rows %d..: attempt %d: %s", records[0].row, attempts, response.error)
            out_of_retries = tries > self.options.max_retries
            outage = (
                first_failure is not None
                and self._last_success < first_failure
                and self._failures_since_success > tries
            )
            if response.kind is Kind.TRANSIENT and out_of_retries and outage:
                # Outage breaker: nothing has succeeded since this job first failed, and other
                # jobs failed too, so the API is down, not these rows. Stop rather than mark
                # row after row failed.
                raise FatalAnswer(
                    f"the Track API kept failing ({response.error}) and nothing succeeded"
                    f" for {time.monotonic() - self._last_success:.0f}s"
                )
            whole_request_refused = response.status in (400, 413)
            if whole_request_refused and isinstance(job, Batch) and len(job) > 1:
                # The API refused the whole request, maybe for one bad operation: send the
                # halves apart, so the good rows still land and the bad one is isolated.
                for half in job.halves():
                    await self._send(half, attempts)
                return
            if response.kind is Kind.TERMINAL or out_of_retries:
                error = response.error or "refused"
                if response.kind is Kind.TRANSIENT:
                    error = f"{error} (gave up after {attempts} attempts)"
                for record in records:
                    self._outcome(record, mode, response.status, attempts, error)
                self._flush()
                return
            if response.status == 429 and response.retry_after and self.limiter is not None:
                # The API asked everyone to slow down, not only this request.
                self.limiter.pause(response.retry_after)
            await asyncio.sleep(backoff_delay(tries, response.retry_after, self.options, self.rng))

    def _outcome(
        self, record: Record, mode: str, http_status: int | None, attempts: int, error: str | None
    ) -> None:
        """Write a sent row's outcome: ok when `error` is None, else failed with its payload."""
        if error is None:
            line = outcome_line(
                record.row,
                record.identifier,
                "ok",
                http_status=http_status,
                attempts=attempts,
                mode=mode,
            )
            self._write(record.row, "ok", line)
            if self.state is not None:
                self.state.record_accepted(record.identifier, record.attributes)
            return
        log.error("row %d (id %s) failed: %s", record.row, record.identifier, error)
        line = outcome_line(
            record.row,
            record.identifier,
            "failed",
            http_status=http_status,
            attempts=attempts,
            error=error,
            payload=record.attributes,
            mode=mode,
        )
        self._write(record.row, "failed", line)

    def _flush(self) -> None:
        """Make a request's outcomes durable: the results file, then the state's acceptances."""
        self.results.flush()
        if self.state is not None:
            self.state.flush()

    def _write(self, row: int, status: Status, line: bytes) -> None:
        # Flushed by the caller once per job or chunk: the results file is the checkpoint, so
        # an outcome is on disk as soon as its request is answered.
        self.results.write(row, status, line)
        if self.progress is not None:
            self.progress(status)


def _refused_operations(body: object) -> dict[int, str]:
    """batch_index -> reason, from a 207 answer's {"errors": [{"batch_index", "reason",
    "field", "message"}]}."""
    refused: dict[int, str] = {}
    errors = body.get("errors") if isinstance(body, dict) else None
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict) and isinstance(error.get("batch_index"), int):
            field = f" ({error['field']})" if error.get("field") else ""
            refused[error["batch_index"]] = (
                f"HTTP 207{field}: {error.get('message') or error.get('reason') or 'refused'}"
            )
    return refused
