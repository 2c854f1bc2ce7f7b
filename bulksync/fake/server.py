"""A local Customer.io Track API simulator for tests, benchmarks and demos.

It speaks real HTTP on a loopback socket, so the client under test runs its real aiohttp stack
(connection pool, timeouts, disconnects) instead of a mock. The behaviour follows the project's
Track API notes (track-api.md): Basic auth, `GET /api/v1/accounts/region` and
`PUT /api/v1/customers/{identifier}` with the documented 400 messages.

Every request goes through one pipeline:

    record arrival -> _admit (auth, rate limit, faults, latency) -> route handler -> record status

so a new endpoint (e.g. `POST /api/v2/batch`) only needs a handler and a line in `_route`.

Misbehaviour is driven by `FakeConfig`, which tests may change while the server runs
(`fake.config.fail_503 = 0`). Random faults come from `random.Random(seed)` so a run is
reproducible for a given order of requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import random
import signal
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import hdrs, web

__all__ = [
    "FakeConfig",
    "FakeTrackAPI",
    "Recorded",
    "peak_in_window",
    "run_fake_server",
]

CUSTOMERS_PREFIX = "/api/v1/customers/"
REGION_PATH = "/api/v1/accounts/region"
BATCH_PATH = "/api/v2/batch"
STATS_PATH = "/_fake/stats"
ACCEPTED_PATH = "/_fake/accepted"  # identifier -> every payload accepted for it, in order

# Limits documented by Customer.io for v1 identify (see track-api.md, "Limits").
MAX_IDENTIFIER_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
# v2 batch limits (track-api.md: "< 500 KB" a request, "<= 32 KB" an operation; whether KB is
# 1000 or 1024 is unconfirmed, so the simulator holds clients to the stricter reading).
MAX_BATCH_BYTES = 500_000
MAX_OPERATION_BYTES = 32_000
IDENTIFIER_KEYS = ("id", "email", "cio_id")

# aiohttp waits this long for in-flight handlers on stop() before cancelling them. Its default
# (60 s) would make every test that leaves a slow request behind hang for a minute.
SHUTDOWN_TIMEOUT = 0.5

# Status recorded for a request that got no HTTP answer (dropped, or the client left first).
NO_ANSWER = 0


@dataclass
class FakeConfig:
    """How the simulator behaves. Mutable: changes apply to the next request."""

    site_id: str = "site"
    api_key: str = "key"
    region: str = "us"
    environment_id: int = 123
    # Max requests admitted in any sliding 1-second window; the excess answers 429.
    rate_limit: float | None = None
    # A limit that changes during a run, as a workspace's does when its other traffic comes and
    # goes: (seconds after the first request, limit) pairs, each in force until the next. Before
    # the first pair's time, `rate_limit` holds. A new schedule takes effect on reset().
    limit_schedule: tuple[tuple[float, float | None], ...] = ()
    # Seconds sent in `Retry-After` on 429 answers; None sends no header (the real API's
    # behaviour here is unconfirmed, so clients must handle both).
    retry_after: float | None = None
    # Every answer waits latency + uniform(0, jitter) seconds.
    latency: float = 0.0
    jitter: float = 0.0
    # Fault injection: fractions of admitted requests. One random draw per admitted request
    # picks at most one fault, so the fractions are additive and a seed replays the same faults.
    # A new seed takes effect on FakeTrackAPI.reset().
    seed: int = 0
    fail_500: float = 0.0
    fail_503: float = 0.0
    fail_429: float = 0.0
    drop: float = 0.0  # close the connection without answering
    slow: float = 0.0  # answer normally, but only after slow_seconds
    slow_seconds: float = 30.0
    # Deterministic failures keyed by identifier: a terminal 400, or N transient 503s first.
    reject_ids: frozenset[str] = frozenset()
    fail_first: dict[str, int] = field(default_factory=dict)
    # A batch naming any of these identifiers is refused whole (400), as a malformed one is.
    poison_ids: frozenset[str] = frozenset()


@dataclass
class Recorded:
    """One request as the simulator saw it."""

    method: str
    path: str  # raw (still percent-encoded) path, without the query string
    identifier: str | None  # decoded customer identifier, None for other routes
    body: Any  # parsed JSON, or None if absent or not valid JSON
    time: float  # time.monotonic() at arrival
    status: int = NO_ANSWER  # status answered; NO_ANSWER if the connection was dropped
    auth_ok: bool = False
    size: int = 0  # bytes of the request body, as received


Handler = Callable[[web.Request, Recorded], Awaitable[web.Response]]


class _Drop(Exception):
    """Raised by _admit when the connection must be closed without an answer."""


def peak_in_window(times: list[float], window: float = 1.0) -> int:
    """Most timestamps that fall in any half-open window [t, t + window)."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        # Times in one window differ by less than `window`; drop the ones too old for `t`.
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"meta": {"error": message}}, headers)


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _batch_error(status: int, field_name: str, message: str) -> web.Response:
    return _json(
        status, {"errors": [{"reason": "invalid", "field": field_name, "message": message}]}
    )


def _operation_identifier(op: Any) -> str | None:
    """The person an operation names, written like a v1 path identifier (cio_ids prefixed)."""
    identifiers = op.get("identifiers") if isinstance(op, dict) else None
    if not isinstance(identifiers, dict) or len(identifiers) != 1:
        return None
    ((key, value),) = identifiers.items()
    if key not in IDENTIFIER_KEYS or not isinstance(value, str | int) or value == "":
        return None
    return f"cio_{value}" if key == "cio_id" else str(value)


def _operation_error(op: Any) -> tuple[str, str] | None:
    """(field, message) for an operation the API would refuse, or None if it is valid."""
    if not isinstance(op, dict):
        return "batch", "operation must be a JSON object"
    if len(orjson.dumps(op)) > MAX_OPERATION_BYTES:
        return "batch", f"operation is larger than {MAX_OPERATION_BYTES} bytes"
    if op.get("type") != "person" or op.get("action") != "identify":
        return "type", "only person identify operations are simulated"
    if _operation_identifier(op) is None:
        return "identifiers", "identifiers must hold exactly one of id, email or cio_id"
    attributes = op.get("attributes", {})
    if not isinstance(attributes, dict):
        return "attributes", "attributes must be an object"
    identifier = _operation_identifier(op) or ""
    message = _identify_error(identifier, attributes)
    return ("attributes", message) if message else None


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _identify_error(identifier: str, body: Any) -> str | None:
    """The 400 message the Track API gives for this identify call, or None if it is valid."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if identifier == "" or body.get("id") == "":
        return "id attribute cannot be an empty string"
    if _utf8_len(identifier) > MAX_IDENTIFIER_BYTES:
        return f"identifier cannot be longer than {MAX_IDENTIFIER_BYTES} bytes"
    if len(body) > MAX_ATTRIBUTES:
        return f"cannot identify more than {MAX_ATTRIBUTES} attributes in one request"
    for name, value in body.items():
        if _utf8_len(name) > MAX_ATTRIBUTE_NAME_BYTES:
            return f"attribute name cannot be longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes"
        if isinstance(value, dict | list):
            return f"value for attribute '{name}' must be a string, number or boolean"
        size = _utf8_len(value) if isinstance(value, str) else len(orjson.dumps(value))
        if size > MAX_VALUE_BYTES:
            return f"value for attribute '{name}' cannot be longer than {MAX_VALUE_BYTES} bytes"
    return None


class FakeTrackAPI:
    """The simulator: an aiohttp application plus the records of what it received."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config if config is not None else FakeConfig()
        self.requests: list[Recorded] = []
        # (identifier, attributes) of every batch operation accepted, in order.
        self.batch_accepted: list[tuple[str, dict[str, Any]]] = []
        # One catch-all route: aiohttp's router matches on a decoded path, but identifiers must
        # be decoded exactly once from the raw path (an id "a/b" arrives as "a%2Fb").
        self._app = web.Application()
        self._app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._faults = random.Random(self.config.seed)
        # A separate generator, so turning jitter on does not change which requests fail.
        self._jitter = random.Random(self.config.seed)
        self._admitted: deque[float] = deque()  # arrival times of requests the limiter let in
        self._seen: Counter[str] = Counter()  # admitted requests per identifier, for fail_first
        self._first: float | None = None  # arrival time of the first request: limit_schedule's 0

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. http://127.0.0.1:54321."""
        if self._url is None:
            raise RuntimeError("FakeTrackAPI is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("FakeTrackAPI is already started")
        # handler_cancellation: when a client gives up (timeout), stop its slow handler too,
        # instead of leaving a task sleeping past the end of the test.
        runner = web.AppRunner(
            self._app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            handler_cancellation=True,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        self._url = f"http://{shown_host}:{bound_port}"
        return self._url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            self._url = None
            await runner.cleanup()

    async def __aenter__(self) -> FakeTrackAPI:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- inspection helpers for tests ---------------------------------------------------------

    def accepted(self) -> dict[str, list[dict[str, Any]]]:
        """Identifier -> attributes accepted for it: bodies of the PUTs answered 200, then the
        accepted batch operations' attributes, each in arrival order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for rec in self.requests:
            if rec.method == "PUT" and rec.status == 200 and rec.identifier is not None:
                out.setdefault(rec.identifier, []).append(rec.body)
        for identifier, attributes in self.batch_accepted:
            out.setdefault(identifier, []).append(attributes)
        return out

    def requests_per_identifier(self) -> Counter[str]:
        return Counter(rec.identifier for rec in self.requests if rec.identifier is not None)

    def peak_per_second(self) -> int:
        """Most requests the client started in any one-second window, refused ones included."""
        return peak_in_window([rec.time for rec in self.requests])

    def reset(self) -> None:
        """Forget the records, and restart the limiter, fail_first counts and random faults."""
        self.requests.clear()
        self.batch_accepted.clear()
        self._reset_state()

    # --- request pipeline ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What the simulator saw, for a simulator in another process (GET /_fake/stats)."""
        times = [rec.time for rec in self.requests]
        return {
            "requests": len(self.requests),
            "statuses": dict(Counter(str(rec.status) for rec in self.requests)),
            "peak_per_second": self.peak_per_second(),
            "accepted": sum(len(bodies) for bodies in self.accepted().values()),
            "span_seconds": max(times) - min(times) if times else 0.0,
        }

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path  # keeps %2F and %25 exactly as the client sent them
        if raw_path == STATS_PATH:  # the simulator's own inspection routes: not recorded
            return _json(200, self.stats())
        if raw_path == ACCEPTED_PATH:
            return _json(200, self.accepted())
        identifier = None
        if raw_path.startswith(CUSTOMERS_PREFIX):
            # Decode exactly once: the client sent quote(id, safe=""), so "%2540" means "%40".
            raw_identifier = raw_path.removeprefix(CUSTOMERS_PREFIX).split("/", 1)[0]
            identifier = unquote(raw_identifier)
        record = Recorded(
            method=request.method,
            path=raw_path,
            identifier=identifier,
            body=None,
            time=time.monotonic(),
            auth_ok=self._auth_ok(request),
        )
        self.requests.append(record)
        try:
            response = await self._admit(request, record)
            if response is None:
                response = await self._route(request.method, raw_path)(request, record)
        except _Drop:
            # Closing the transport (FIN) makes the client raise ServerDisconnectedError. The
            # returned response is never sent: aiohttp swallows the write error on a closed socket.
            if request.transport is not None:
                request.transport.close()
            return web.Response()
        record.status = response.status
        return response

    async def _admit(self, request: web.Request, record: Recorded) -> web.Response | None:
        """Auth, rate limit, faults and latency. Returns a refusal, or None to run the route."""
        cfg = self.config
        # Decide everything before the first await, so the limiter sees arrival order.
        refusal: web.Response | None = None
        fault: str | None = None
        delay = cfg.latency + (self._jitter.uniform(0, cfg.jitter) if cfg.jitter > 0 else 0.0)
        if not record.auth_ok:
            refusal = _error(401, "Unauthorized request")
        elif not self._within_rate_limit(record.time):
            refusal = self._too_many()
        else:
            # Drawn for every admitted request, so the fault sequence depends only on the seed.
            fault = self._pick_fault(self._faults.random())
            if record.identifier is not None and self._fails_first([record.identifier]):
                fault = "fail_first"

        match fault:
            case "fail_first":
                refusal = _error(503, "Service Unavailable (fail_first)")
            case "fail_500":
                refusal = _error(500, "Internal Server Error (injected)")
            case "fail_503":
                refusal = _error(503, "Service Unavailable (injected)")
            case "fail_429":
                refusal = self._too_many()
            case "slow":
                delay += cfg.slow_seconds

        raw = await request.read()
        record.size = len(raw)
        record.body = _parse_json(raw)
        if record.path == BATCH_PATH and record.auth_ok and refusal is None and fault is None:
            # A batch fails first as long as one of the people it names does.
            operations = record.body.get("batch") if isinstance(record.body, dict) else None
            named = {_operation_identifier(op) for op in operations or []} - {None}
            if self._fails_first(sorted(str(name) for name in named)):
                fault = "fail_first"
                refusal = _error(503, "Service Unavailable (fail_first)")
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "drop":
            raise _Drop
        return refusal

    def _fails_first(self, identifiers: list[str]) -> bool:
        """Count a request naming `identifiers`; True while one has fail_first answers left."""
        fail = False
        for ident in identifiers:
            self._seen[ident] += 1
            fail |= self._seen[ident] <= self.config.fail_first.get(ident, 0)
        return fail

    def _pick_fault(self, draw: float) -> str | None:
        """Map a uniform draw in [0, 1) to at most one fault, each band as wide as its fraction."""
        cfg = self.config
        edge = 0.0
        for fault, fraction in (
            ("drop", cfg.drop),
            ("slow", cfg.slow),
            ("fail_500", cfg.fail_500),
            ("fail_503", cfg.fail_503),
            ("fail_429", cfg.fail_429),
        ):
            edge += fraction
            if draw < edge:
                return fault
        return None

    def _auth_ok(self, request: web.Request) -> bool:
        # Decoded by hand: aiohttp 3.14 deprecates BasicAuth (gone in 4.0).
        scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            credentials = base64.b64decode(token, validate=True).decode("latin-1")
        except binascii.Error:
            return False
        return credentials == f"{self.config.site_id}:{self.config.api_key}"

    def _within_rate_limit(self, now: float) -> bool:
        # Only admitted requests enter the window: a client that backs off after a 429 must not
        # be punished for the refused attempts.
        window = self._admitted
        while window and window[0] <= now - 1.0:
            window.popleft()
        limit = self.limit_at(now)
        if limit is not None and len(window) >= limit:
            return False
        window.append(now)
        return True

    def limit_at(self, now: float) -> float | None:
        """The rate limit in force at time.monotonic() `now` (limit_schedule, else rate_limit)."""
        if self._first is None:
            self._first = now
        limit = self.config.rate_limit
        for after, scheduled in self.config.limit_schedule:
            if now - self._first >= after:
                limit = scheduled
        return limit

    def _too_many(self) -> web.Response:
        retry_after = self.config.retry_after
        headers = None
        if retry_after is not None:
            text = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
            headers = {"Retry-After": text}
        return _error(429, "Too Many Requests", headers)

    def _route(self, method: str, raw_path: str) -> Handler:
        if raw_path == REGION_PATH and method == "GET":
            return self._region
        is_customer = raw_path.startswith(CUSTOMERS_PREFIX)
        # A raw "/" after the identifier is a sub-resource (events, suppress...), not identify.
        if method == "PUT" and is_customer and "/" not in raw_path.removeprefix(CUSTOMERS_PREFIX):
            return self._identify
        if method == "POST" and raw_path == BATCH_PATH:
            return self._batch
        return self._not_found

    # --- route handlers -----------------------------------------------------------------------

    async def _region(self, request: web.Request, record: Recorded) -> web.Response:
        cfg = self.config
        host = "track-eu" if cfg.region == "eu" else "track"
        return _json(
            200,
            {
                "url": f"https://{host}.customer.io",
                "region": cfg.region,
                "environment_id": cfg.environment_id,
            },
        )

    async def _identify(self, request: web.Request, record: Recorded) -> web.Response:
        identifier = record.identifier
        assert identifier is not None  # _route only sends customer paths here
        if identifier in self.config.reject_ids:
            return _error(400, "rejected by test")
        message = _identify_error(identifier, record.body)
        if message is not None:
            return _error(400, message)
        return _json(200, {})

    async def _batch(self, request: web.Request, record: Recorded) -> web.Response:
        """POST /api/v2/batch: 200 when every operation is accepted, 207 listing the refused
        ones by `batch_index` (all others accepted), 400 when the request as a whole is bad."""
        body = record.body
        if record.size >= MAX_BATCH_BYTES:  # the API's "< 500 KB"
            return _batch_error(
                400, "batch", f"request body is larger than {MAX_BATCH_BYTES} bytes"
            )
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            return _batch_error(400, "batch", "body must be a JSON object with a 'batch' array")
        operations = body["batch"]
        if any(_operation_identifier(op) in self.config.poison_ids for op in operations):
            return _batch_error(400, "batch", "poisoned operation (test)")
        errors = []
        for index, op in enumerate(operations):
            problem = _operation_error(op)
            identifier = _operation_identifier(op)
            if problem is None and identifier in self.config.reject_ids:
                problem = ("identifiers", "rejected by test")
            if problem is None:
                assert identifier is not None
                self.batch_accepted.append((identifier, op.get("attributes") or {}))
            else:
                field_name, message = problem
                errors.append(
                    {
                        "batch_index": index,
                        "reason": "invalid",
                        "field": field_name,
                        "message": message,
                    }
                )
        return _json(207, {"errors": errors}) if errors else _json(200, {})

    async def _not_found(self, request: web.Request, record: Recorded) -> web.Response:
        return _error(404, "Not Found")


async def _serve(config: FakeConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        # Not available on Windows; Ctrl-C then still ends the run through KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    fake = FakeTrackAPI(config)
    try:
        url = await fake.start(host, port)
        # The credentials are the simulator's own, not a real workspace's: printing them is what
        # lets a user point bulksync at it.
        print(
            f"bulksync fake Track API listening on {url} "
            f"(site id: {config.site_id}, api key: {config.api_key})",
            flush=True,
        )
        await stop.wait()
    finally:
        await fake.stop()
        for sig in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


def run_fake_server(
    config: FakeConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> None:
    """Serve the simulator until SIGINT or SIGTERM (blocking; for `bulksync fake-server`)."""
    asyncio.run(_serve(config if config is not None else FakeConfig(), host, port))
