"""The Track API without an HTTP client: where it is, who asks, what each answer means, and when
the credentials check asks again.

The pure half of `track.py` (the aiohttp client, which re-exports these names) and of
`policy.py`, shared by the sync path and by the credentials check (`connection.check`), which
sends its one request with the standard library: `bulksync check` must start fast, and
`import aiohttp` alone takes several times as long as the rest of the command. Nothing here may
import aiohttp, asyncio or pandas (tests/test_startup.py).
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
from yarl import URL

from .errors import AbortError, CredentialsError, UsageError

REGIONS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
DEFAULT_TIMEOUT = 10.0  # seconds per request, like the official Python client
MAX_ANSWER_BYTES = 8 * 1024 * 1024
REGION_PATH = "/api/v1/accounts/region"  # the credentials check
# Seconds of answers the outage breaker judges (`policy.Breaker.WINDOW`), and the longest the
# credentials check keeps trying through 429s.
OUTAGE_WINDOW = 30.0


class Kind(enum.Enum):
    OK = "ok"
    TRANSIENT = "transient"
    TERMINAL = "terminal"
    FATAL = "fatal"


@dataclass(frozen=True)
class Response:
    """What one request came to. `error` is a one-line reason; `retry_after` is in seconds."""

    kind: Kind
    status: int | None
    error: str | None = None
    retry_after: float | None = None
    body: Any = None


@dataclass(frozen=True)
class Credentials:
    site_id: str
    api_key: str

    @classmethod
    def from_env(cls) -> Credentials:
        """Read CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY: credentials never come from flags,
        which would land in shell history and process listings."""
        site_id = os.environ.get("CUSTOMERIO_SITE_ID", "").strip()
        api_key = os.environ.get("CUSTOMERIO_API_KEY", "").strip()
        missing = [
            n
            for n, v in (("CUSTOMERIO_SITE_ID", site_id), ("CUSTOMERIO_API_KEY", api_key))
            if not v
        ]
        if missing:
            raise CredentialsError(
                f"{' and '.join(missing)} not set: export your workspace's Track API credentials"
                " (Customer.io > Settings > API credentials) in the environment"
            )
        return cls(site_id, api_key)

    def __repr__(self) -> str:  # never show the key, even in a traceback or a debugger
        return f"Credentials(site_id={self.site_id!r}, api_key='***')"


def request_headers(credentials: Credentials) -> dict[str, str]:
    """The headers of every request: Basic auth, JSON, and who is asking."""
    token = base64.b64encode(f"{credentials.site_id}:{credentials.api_key}".encode()).decode()
    return {
        "Authorization": f"Basic {token}",
        "Content-Type": "application/json",
        "User-Agent": "bulksync",
    }


def resolve_base_url(region: str = "us", base_url: str | None = None) -> str:
    """The Track API base URL for `region`, or `base_url` after checking it is safe to use."""
    if base_url is None:
        if region not in REGIONS:
            raise UsageError(f"unknown region {region!r}: use us or eu")
        return REGIONS[region]
    try:
        url = URL(base_url)
    except ValueError:
        raise UsageError("--base-url: not a URL; expected http(s)://host[:port]") from None
    if url.user is not None or url.password is not None or url.query_string or url.fragment:
        # Never echoed: it may hold a password. Credentials come from the environment only.
        raise UsageError(
            "--base-url must be http(s)://host[:port][/path], without user, password, query or"
            " fragment (credentials come from CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY)"
        )
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"--base-url {base_url!r}: expected http(s)://host[:port]")
    if url.scheme == "http" and not _is_loopback(url.host):
        # Plain HTTP would send the API key in clear text across a network.
        raise UsageError(
            f"--base-url {base_url!r}: plain http:// is only allowed for loopback hosts"
        )
    return str(url).rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "inf" and "1e400" parse too: waiting for ever would hang every worker.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _api_error(body: Any) -> str | None:
    """The message in an error body: {"meta": {"error": ...}} or {"meta": {"errors": [...]}}."""
    if not isinstance(body, dict):
        return None
    meta = body.get("meta")
    if isinstance(meta, dict):
        if isinstance(meta.get("error"), str):
            return str(meta["error"])
        if isinstance(meta.get("errors"), list):
            return "; ".join(str(e) for e in meta["errors"])
    errors = body.get("errors")
    if isinstance(errors, list):
        return "; ".join(str(e.get("message", e) if isinstance(e, dict) else e) for e in errors)
    return None


def classify(status: int, body: Any, headers: Any) -> Response:
    """Decide, once, what an HTTP answer means for the row and for the run."""
    if 200 <= status < 300:
        return Response(Kind.OK, status, body=body)
    message = _api_error(body)
    if 300 <= status < 400:
        location = headers.get("Location", "?")
        return Response(
            Kind.FATAL,
            status,
            f"the API redirected to {location}: the workspace is probably in the other region"
            " (try --region eu or --region us)",
        )
    if status in (401, 403):
        return Response(
            Kind.FATAL,
            status,
            f"credentials refused (HTTP {status}): check CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY",
        )
    if status in (408, 429) or status >= 500:
        reason = "rate limited" if status == 429 else "server error"
        return Response(
            Kind.TRANSIENT,
            status,
            f"HTTP {status} {reason}" + (f": {message}" if message else ""),
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    return Response(Kind.TERMINAL, status, f"HTTP {status}: {message or 'request refused'}")


def answer(status: int, raw: bytes | None, headers: Any) -> Response:
    """What an HTTP answer means, from its status, its body (None when it was larger than
    MAX_ANSWER_BYTES and so not read) and its headers (read case-insensitively)."""
    if raw is None and status == 207:
        # Which operations were refused is unknown: none may be taken as accepted.
        return Response(Kind.TRANSIENT, 207, f"answer larger than {MAX_ANSWER_BYTES:,} bytes")
    return classify(status, _json_or_none(raw or b""), headers)


def timed_out(timeout: float) -> Response:
    """No whole answer within `timeout` seconds."""
    return Response(Kind.TRANSIENT, None, f"no answer within {timeout:g}s")


def network_error(exc: BaseException) -> Response:
    """The connection failed (refused, reset, closed before an answer, TLS...)."""
    return Response(Kind.TRANSIENT, None, f"network error: {exc or type(exc).__name__}")


def _json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


# --- when to ask again -------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^(attempt-1))]."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds before retry number `attempt` (1-based); never less than `retry_after`."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        delay = rng.uniform(0, ceiling)
        return max(delay, retry_after) if retry_after is not None else delay


def waits_too_long(response: Response, max_wait: float) -> str | None:
    """Why the run must stop when the API asks (Retry-After) to wait longer than `max_wait`
    seconds: sleeping for hours would hold the results file's lock and look like a hang."""
    wait = response.retry_after
    if wait is None or wait <= max_wait:
        return None
    until = datetime.now(UTC) + timedelta(seconds=wait)
    return (
        f"the API asked to wait {wait:,.0f} s (Retry-After), longer than --max-wait"
        f" {max_wait:g} s: run again after {until:%Y-%m-%d %H:%M} UTC"
    )


class CheckRetries:
    """The credentials check's decisions (GET /api/v1/accounts/region, before any row is sent),
    whichever client sends it: transient failures are retried like any request, 429s without
    using up `max_retries`, for at most `window` seconds from the first request."""

    def __init__(
        self,
        base_url: str,
        max_retries: int,
        backoff: Backoff,
        max_wait: float,
        window: float = OUTAGE_WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url
        self.requests = 0
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_wait = max_wait
        self._window = window
        self._clock = clock
        self._rng = random.Random()
        self._began = clock()
        self._failures = 0
        self._limited = 0

    def after(self, response: Response) -> float | None:
        """The answer to one more request: None when the credentials were accepted, else the
        seconds to wait before the next request. Raises AbortError when the check must stop."""
        self.requests += 1
        if response.kind is Kind.OK:
            return None
        if response.kind is not Kind.TRANSIENT:
            raise AbortError(f"{response.error}; nothing was sent")
        import logging  # here: `bulksync check` has no other use for it, and starts faster

        logging.getLogger("bulksync").debug(
            "credentials check: attempt %d: %s", self.requests, response.error
        )
        if (too_long := waits_too_long(response, self._max_wait)) is not None:
            raise AbortError(f"{too_long}; nothing was sent")
        if response.status == 429:
            self._limited += 1
            gave_up = self._clock() - self._began >= self._window
            delay = self._backoff.delay(self._limited, response.retry_after, self._rng)
        else:
            self._failures += 1
            gave_up = self._failures > self._max_retries
            delay = self._backoff.delay(self._failures, response.retry_after, self._rng)
        if gave_up:
            raise AbortError(
                f"cannot reach the Track API at {self.base_url}: {response.error};"
                " nothing was sent, run again later"
            )
        return delay
