"""Send records to the Track API: a reader, a bounded queue, N workers, one rate limiter.

    items ─► reader ──► Queue(maxsize) ──► workers xN ──► limiter ──► TrackClient
             (thread)   backpressure       wait for earlier          │
             claims each job's             rows of the same    answer│
             identifiers in file order     identifiers               ▼
                                           policy (retry, rate, breaker) ─► Outcomes

The reader reads and normalizes in a thread, so pandas work does not stall the event loop; it
waits when the queue is full, so memory stays bounded however fast the file reads. A job is one
Record (PUT per row) or a Batch of them (POST /api/v2/batch).

**One identifier, one request in flight, in file order.** Before queueing a job the reader
claims its identifiers; a worker sends a job only once every earlier job naming one of them has
its final answer, retries included. Customer.io applies what arrives last, so without this two
rows of one person sent together (or a retry landing after a later row) leave the older one.
Jobs without repeated identifiers never wait. A batch naming people whose earlier rows are
still unanswered is queued in two parts, so only those rows wait, not the whole batch.

**Retries** (policy.py): 5xx, 408, timeouts and network errors are retried with backoff up to
`max_retries`; a 429 slows the adaptive rate and is retried without using up the row's retries.
A row out of retries is marked `failed` only once a request started after its last failure has
succeeded: until the API is seen to work, the failure may be an outage's, and then the row must
get no outcome, so that a re-run sends it. At the end of the input, rows still waiting for that
proof get it from the credentials check (GET /api/v1/accounts/region).

The run stops early in three ways, and in each a row not answered gets no outcome, so a re-run
sends it: a FATAL answer (401/403, a redirect); the outage breaker; `stop()` (StopHandle), which
lets requests in flight finish for a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .answers import Kind, Response
from .batch import Batch, pack
from .connection import SendOptions as SendOptions
from .errors import AbortError, BulksyncError, InputError
from .normalize import Rejection
from .operations import KINDS, Record, order_keys, state_key
from .outcomes import Outcomes
from .plan import Items, Unchanged, UnchangedRows
from .policy import AdaptiveRate, Breaker, waits_too_long
from .ratelimit import RateLimiter
from .stop import StopHandle as StopHandle

if TYPE_CHECKING:
    from .track import TrackClient

Job = Record | Batch  # what a worker sends in one request
log = logging.getLogger("bulksync")


class FatalAnswer(Exception):
    """Raised inside the sender when an answer means the whole run must stop."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Unconfirmed(NamedTuple):
    """Rows whose retries ran out, waiting for proof that the API works for others."""

    answered: float  # time.monotonic() of the last failure
    records: list[Record]
    mode: str
    http_status: int | None
    attempts: int
    error: str


class _Part(NamedTuple):
    """A job, or the part of a batch that waits (or not) for earlier rows."""

    job: Job
    earlier: list[asyncio.Future[None]]  # unanswered parts read before it, naming its people
    done: asyncio.Future[None]  # set when its rows are answered


_Queued = list[_Part]  # one job; a batch in two parts when some of its people must wait


class Sender:
    """Sends records and writes their outcomes. `stop()` ends it gracefully."""

    def __init__(
        self,
        client: TrackClient,
        outcomes: Outcomes,
        options: SendOptions,
        *,
        limiter: RateLimiter | None = None,
        rng: random.Random | None = None,
        stop: StopHandle | None = None,
        grace: float = 10.0,
    ) -> None:
        self.client = client
        self.outcomes = outcomes
        self.options = options
        self.limiter = limiter
        self.rng = rng or random.Random()
        self.requests = 0
        self.rate_limited = 0  # 429 answers
        self.stopping = False
        self.input_error: InputError | None = None  # the input broke part-way: read no further
        self.breaker = Breaker(time.monotonic())
        self.adaptive = AdaptiveRate(limiter.ceiling, time.monotonic()) if limiter else None
        self._backoff = options.backoff
        self._stop_handle = stop
        self._grace = grace
        # Bounded in jobs: in batch mode a job holds up to batch_size rows, so keep fewer queued.
        queued = 4 if options.batch else options.workers * 2
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue(maxsize=queued)
        self._last_job: dict[str, asyncio.Future[None]] = {}  # identifier -> its latest job
        self._unconfirmed: deque[_Unconfirmed] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._in_request: set[asyncio.Task[Any] | None] = set()  # workers awaiting an answer

    async def run(self, chunks: Iterator[Items]) -> None:
        """Send every Record of `chunks` and write every outcome. Raises AbortError when an
        answer stops the run (credentials refused, the API down); returns early after stop()."""
        if self._stop_handle is not None:
            self._stop_handle._attach(asyncio.get_running_loop(), self.stop)
        try:
            async with asyncio.TaskGroup() as group:
                self._workers = [
                    group.create_task(self._work()) for _ in range(self.options.workers)
                ]
                self._reader = group.create_task(self._read(chunks))
            await self._confirm_remaining()
            if self.input_error is not None:
                raise InputError(
                    f"{self.input_error}. The rows before it were sent: their outcomes are in"
                    " the results file. Fix the file, then run it again with --fresh (its content"
                    " changed, so the results file cannot be resumed)"
                ) from None
        except* BulksyncError as group:  # an output failed (a full disk): its one line
            raise group.exceptions[0] from None
        except* FatalAnswer as fatal:
            first = fatal.exceptions[0]
            assert isinstance(first, FatalAnswer)
            raise AbortError(
                f"{first.message}; stopped. Rows not yet sent have no outcome:"
                " re-run the same command to resume"
            ) from None
        finally:
            if self._stop_handle is not None:
                self._stop_handle._detach()
            self.outcomes.flush()

    def stop(self) -> None:
        """Stop reading, let requests in flight finish for up to the grace period, then cancel.
        Rows not finished get no outcome, so a re-run sends them."""
        grace = 0.0 if self.stopping else self._grace  # a second stop: now
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

    # --- reading ------------------------------------------------------------------------------

    def _next_jobs(self, chunks: Iterator[Items]) -> Sequence[Job | Rejection | Unchanged] | None:
        """The next chunk as jobs (records, or batches of them), run in the reader's thread."""
        items = next(chunks, None)
        if items is None:
            return None
        if isinstance(items, UnchangedRows):  # nothing to send: written whole
            return items
        records = [item for item in items if isinstance(item, Record)]
        if self.outcomes.state is not None:
            keys = (state_key(record) for record in records)
            self.outcomes.state.mark_sending(key for key in keys if key is not None)
        if not self.options.batch:
            return items
        jobs: list[Job | Rejection | Unchanged] = [
            item for item in items if not isinstance(item, Record)
        ]
        jobs.extend(pack(records, self.options.batch_size))
        return jobs

    async def _read(self, chunks: Iterator[Items]) -> None:
        try:
            while (jobs := await asyncio.to_thread(self._next_jobs, chunks)) is not None:
                await self._queue_jobs(jobs)
                # Let go of the chunk before reading the next one: its rows are to live only as
                # long as their requests, for every full pass of the garbage collector walks
                # each row still alive.
                del jobs
        except InputError as exc:
            # The input breaks part-way (bytes that do not decode, quotes that cannot be
            # bounded): read no further, but let the rows already read be sent and their
            # outcomes written, rather than cancel requests in flight and lose theirs.
            self.input_error = exc
        for _ in self._workers:
            await self._queue.put(None)  # one stop signal per worker

    async def _queue_jobs(self, jobs: Sequence[Job | Rejection | Unchanged]) -> None:
        """Queue a chunk's jobs, in order, each claiming its identifiers; write the outcomes
        known without sending."""
        if isinstance(jobs, UnchangedRows):
            self.outcomes.many(jobs)
            self.outcomes.flush()
            return
        written: list[Rejection | Unchanged] = []
        for job in jobs:
            if isinstance(job, Rejection | Unchanged):
                written.append(job)
                continue
            if written:  # in row order, before the rows sent after them
                self.outcomes.many(written)
                written = []
            await self._queue.put([self._claim(part) for part in self._parts(job)])
        if written:
            self.outcomes.many(written)
        self.outcomes.flush()

    def _parts(self, job: Job) -> Iterable[Job]:
        """A batch naming people whose earlier rows are still unanswered comes in two parts:
        the rows free to go, and the rows that must wait. Waiting whole, every row of it would
        wait, and in a file where people repeat close together each batch would wait for the
        one before it, one round trip at a time."""
        if not isinstance(job, Batch) or self._last_job.keys().isdisjoint(job.identifiers):
            return [job]
        ready, held = job.split(
            lambda record: all(key not in self._last_job for key in order_keys(record))
        )
        return [part for part in (ready, held) if len(part)]

    def _claim(self, job: Job) -> _Part:
        """Make `job` the latest job of each of its identifiers; it waits for the previous."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        identifiers = _identifiers(job)
        earlier: dict[asyncio.Future[None], None] = {}  # each once, in the order first named
        if not self._last_job.keys().isdisjoint(identifiers):  # else (the common job) none
            for identifier in identifiers:
                previous = self._last_job.get(identifier)
                if previous is not None:
                    earlier[previous] = None
        self._last_job.update(dict.fromkeys(identifiers, done))
        return _Part(job, list(earlier), done)

    def _release_all(self, parts: _Queued) -> None:
        # A method, not a loop in _work: the loop's variable would keep the last part (and its
        # rows) alive in the worker while it waits for the next job.
        for part in parts:
            self._release(part)

    def _release(self, part: _Part) -> None:
        if part.done.done():
            return
        part.done.set_result(None)
        last_job, done = self._last_job, part.done
        for identifier in _identifiers(part.job):
            if last_job.get(identifier) is done:  # else a later job has claimed it since
                del last_job[identifier]

    # --- sending ------------------------------------------------------------------------------

    async def _work(self) -> None:
        while not self.stopping and (parts := await self._queue.get()) is not None:
            try:
                await self._send_in_order(parts)
            finally:
                self._release_all(parts)
            # Waiting for the next job, a worker must not keep the rows of its last one alive:
            # with 64 workers, 64 batches' rows, which every full pass of the garbage collector
            # would walk again.
            del parts

    async def _send_in_order(self, parts: _Queued) -> None:
        """Send each part once the earlier rows of its people are answered: one request for
        both parts of a batch if they were answered while it was queued."""
        if len(parts) == 2 and all(earlier.done() for earlier in parts[1].earlier):
            ready, held = parts[0].job, parts[1].job
            assert isinstance(ready, Batch) and isinstance(held, Batch)
            await self._send(ready + held)
            return
        for part in parts:
            for earlier in part.earlier:
                await earlier  # an earlier row of the same person: its answer first
            await self._send(part.job)
            self._release(part)  # its people's next rows need not wait for the other part

    async def _request(self, job: Job, on_sent: Callable[[], None] | None) -> Response:
        if isinstance(job, Batch):
            return await self.client.batch(job.body(), on_sent)
        return await self.client.send(job, on_sent)

    async def _send(self, job: Job, attempts: int = 0) -> None:
        """Send one job until it is answered for good; write the outcome of each of its rows.
        `attempts` carries over the requests already made for these rows (when a batch the API
        refused as a whole is split in two)."""
        records = _records(job)
        mode = "batch" if isinstance(job, Batch) else "single"
        tries = 0  # this job's transient failures other than 429: its retry budget
        limited = 0  # this job's 429s
        while True:
            on_sent = await self.limiter.acquire() if self.limiter is not None else None
            if self.stopping:
                return  # not started: no outcome, sent again on resume
            self.requests += 1
            attempts += 1
            started = time.monotonic()
            task = asyncio.current_task()
            self._in_request.add(task)
            try:
                response = await self._request(job, on_sent)
            finally:
                self._in_request.discard(task)
            self._judge(response, started)
            if response.kind is Kind.OK:
                # A 207 lists the operations it refused; every other one was accepted.
                refused = _refused_operations(response.body) if response.status == 207 else {}
                if not refused:
                    self.outcomes.all_ok(records, mode, response.status, attempts)
                    self.outcomes.flush()
                    return
                for index, record in enumerate(records):
                    error = refused.get(index)
                    if error is None:
                        self.outcomes.ok(record, mode, response.status, attempts)
                    else:
                        self.outcomes.failed(record, mode, response.status, attempts, error)
                self.outcomes.flush()
                return
            if response.kind is Kind.TERMINAL:
                if response.status in (400, 413) and isinstance(job, Batch) and len(job) > 1:
                    # The API refused the whole request, maybe for one bad operation: send the
                    # halves apart, so the good rows still land and the bad one is isolated.
                    for half in job.halves():
                        await self._send(half, attempts)
                    return
                error = response.error or "refused"
                if tries and not all(KINDS[record.op].idempotent for record in records):
                    # A merge refused after a timeout or a 5xx may be refused because the
                    # earlier attempt did merge: say so, rather than let it pass for a refusal.
                    error += " (an earlier attempt got no clear answer and may have been applied)"
                for record in records:
                    self.outcomes.failed(record, mode, response.status, attempts, error)
                self.outcomes.flush()
                return
            log.debug("rows %d..: attempt %d: %s", records[0].row, attempts, response.error)
            if response.status == 429:
                # Not this row's fault: the adaptive rate has slowed down, and the row is
                # retried without using up its retries. A workspace that refuses everything
                # trips the breaker instead.
                limited += 1
                if self.limiter is not None:
                    if response.retry_after:
                        self.limiter.pause(response.retry_after)  # for everyone, not one row
                    continue
                await asyncio.sleep(self._backoff.delay(limited, response.retry_after, self.rng))
                continue
            tries += 1
            if tries > self.options.max_retries:
                error = f"{response.error} (gave up after {attempts} attempts)"
                failure = _Unconfirmed(
                    time.monotonic(), records, mode, response.status, attempts, error
                )
                self._unconfirmed.append(failure)
                return
            await asyncio.sleep(self._backoff.delay(tries, response.retry_after, self.rng))

    def _judge(self, response: Response, started: float) -> None:
        """What an answer says about the run: credentials, the rate, the API's health."""
        if response.kind is Kind.FATAL:
            raise FatalAnswer(response.error or "the API refused the run")
        if (too_long := waits_too_long(response, self.options.max_wait)) is not None:
            raise FatalAnswer(too_long)
        now = time.monotonic()
        failed = response.kind is Kind.TRANSIENT
        limited = response.status == 429
        self.breaker.record(None if limited else not failed, now)
        if limited:
            if self.rate_limited == 0:
                log.warning(
                    "the API answered 429 (rate limited): slowing down; the workspace's limit"
                    " is shared with its other traffic, and may be below --rate"
                )
            self.rate_limited += 1
        if self.adaptive is not None and self.limiter is not None:
            if limited:
                self.limiter.set_rate(self.adaptive.rate_limited(started, now))
            else:
                self.limiter.set_rate(self.adaptive.accepted(now))
        if not failed:
            self._confirm(started)
        elif self.breaker.tripped(now):
            raise FatalAnswer(f"the Track API kept failing ({response.error}); {self.breaker}")

    def _confirm(self, started: float) -> None:
        """A request started at `started` got an answer: the API works, so the rows that ran
        out of retries before then failed for their own reasons."""
        written = False
        while self._unconfirmed and self._unconfirmed[0].answered < started:
            failure = self._unconfirmed.popleft()
            for record in failure.records:
                self.outcomes.failed(
                    record, failure.mode, failure.http_status, failure.attempts, failure.error
                )
            written = True
        if written:
            self.outcomes.flush()

    async def _confirm_remaining(self) -> None:
        """At the end of the input, rows out of retries that no later success has confirmed:
        ask the API whether it is up (the credentials check) until it answers or the breaker
        trips. Up: they are `failed`. Down: the run stops, and they get no outcome."""
        attempt = 0
        while self._unconfirmed and not self.stopping:
            if self.limiter is not None:
                await self.limiter.acquire()
            started = time.monotonic()
            response = await self.client.region()
            self.requests += 1
            self._judge(response, started)
            if response.kind is Kind.TRANSIENT:
                attempt += 1
                await asyncio.sleep(self._backoff.delay(attempt, response.retry_after, self.rng))


def _records(job: Job) -> list[Record]:
    return job.records if isinstance(job, Batch) else [job]


def _identifiers(job: Job) -> Collection[str]:
    """Who the job's rows touch, for the per-identifier order (a batch's, found as it was
    packed)."""
    return job.identifiers if isinstance(job, Batch) else order_keys(job)


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
