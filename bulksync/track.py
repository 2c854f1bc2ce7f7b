"""The Track API client: one aiohttp session per run, and one place that classifies every answer.

Every response (or network failure) becomes a `Response` whose `kind` is the only thing the
sender acts on:

    OK         accepted
    TRANSIENT  429, 408, 5xx, connection errors, timeouts: retry with backoff
    TERMINAL   400 and other 4xx: the API refused this row; never retried
    FATAL      401/403 (credentials refused) or a 3xx (wrong region): stop the whole run
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import SimpleNamespace, TracebackType
from typing import Any, Self

import aiohttp
import orjson
from yarl import URL

from .errors import CredentialsError, UsageError
from .operations import KINDS, Record

REGIONS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
DEFAULT_TIMEOUT = 10.0  # seconds per request, like the official Python client
MAX_ANSWER_BYTES = 8 * 1024 * 1024


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


class TrackClient:
    """An aiohttp session for one run: keep-alive connections, auth header built once."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connections: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{credentials.site_id}:{credentials.api_key}".encode()).decode()
        self._headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "User-Agent": "bulksync",
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_call_on_sent)
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=self._connections),
            trace_configs=[trace],
        )
        # aiohttp re-sends an idempotent request (our PUTs) once by itself when a kept-alive
        # connection turns out closed: a request the rate limiter never counted (the soak saw
        # 103 requests in a second at --rate 100), and an attempt the results never show. Our
        # retry policy re-sends instead, through the limiter. aiohttp has no public switch;
        # its own test client turns the same private one off.
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Response:
        """Send one request and classify what comes back. Never raises for network trouble.
        `on_sent` is called when the request's headers have been written."""
        assert self._session is not None, "use TrackClient as an async context manager"
        # encoded=True: the path is already percent-encoded, and yarl must not turn %40 back
        # into @ (the identifier would then be read differently by the API).
        url = URL(self.base_url + path, encoded=True)
        try:
            async with self._session.request(
                method, url, data=body, allow_redirects=False, trace_request_ctx=on_sent
            ) as resp:
                raw = await _read_capped(resp)
                if raw is None and resp.status == 207:
                    # Which operations were refused is unknown: none may be taken as accepted.
                    return Response(
                        Kind.TRANSIENT, 207, f"answer larger than {MAX_ANSWER_BYTES:,} bytes"
                    )
                return classify(resp.status, _json_or_none(raw or b""), resp.headers)
        except TimeoutError:
            return Response(Kind.TRANSIENT, None, f"no answer within {self._timeout.total:g}s")
        except aiohttp.ClientError as exc:
            return Response(Kind.TRANSIENT, None, f"network error: {exc or type(exc).__name__}")

    async def send(self, record: Record, on_sent: Callable[[], None] | None = None) -> Response:
        """The record's single request (PUT a person, POST an event...: its kind says)."""
        method, path, body = KINDS[record.op].request(record)
        return await self.request(method, path, body, on_sent)

    async def batch(self, body: bytes, on_sent: Callable[[], None] | None = None) -> Response:
        """POST /api/v2/batch. A 207 is OK for the request: its body lists refused operations."""
        return await self.request("POST", "/api/v2/batch", body, on_sent)

    async def region(self) -> Response:
        """GET /api/v1/accounts/region: the credentials check; body has region and url."""
        return await self.request("GET", "/api/v1/accounts/region")


async def _call_on_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    if context.trace_request_ctx is not None:
        context.trace_request_ctx()


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes | None:
    """The answer's body, or None past MAX_ANSWER_BYTES: a broken or hostile server must not
    fill the memory. The API's answers are small (a 207 for 1,000 operations: ~200 KB)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
