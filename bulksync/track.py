"""The Track API client: one aiohttp session per run. Every response (or network failure)
becomes a `Response`, classified once by `answers.classify`, whose `kind` is the only thing the
sender acts on:

    OK         accepted
    TRANSIENT  429, 408, 5xx, connection errors, timeouts: retry with backoff
    TERMINAL   400 and other 4xx: the API refused this row; never retried
    FATAL      401/403 (credentials refused) or a 3xx (wrong region): stop the whole run
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Self

from yarl import URL

# The pure half lives in answers.py, which the credentials check uses without aiohttp; its names
# are this module's too.
from .answers import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from .answers import MAX_ANSWER_BYTES as MAX_ANSWER_BYTES
from .answers import REGION_PATH, answer, network_error, request_headers, timed_out
from .answers import REGIONS as REGIONS
from .answers import Credentials as Credentials
from .answers import Kind as Kind
from .answers import Response as Response
from .answers import classify as classify
from .answers import parse_retry_after as parse_retry_after
from .answers import resolve_base_url as resolve_base_url
from .operations import KINDS, Record

if TYPE_CHECKING:
    import aiohttp


class TrackClient:
    """An aiohttp session for one run: keep-alive connections, auth header built once.

    The session (and aiohttp, a fifth of a second to import) comes with the first request: a
    nightly run that finds every row unchanged sends none."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connections: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = request_headers(credentials)
        self._seconds = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_call_on_sent)
        session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self._seconds),
            connector=aiohttp.TCPConnector(limit=self._connections),
            trace_configs=[trace],
        )
        # aiohttp re-sends an idempotent request (our PUTs) once by itself when a kept-alive
        # connection turns out closed: a request the rate limiter never counted (the soak saw
        # 103 requests in a second at --rate 100), and an attempt the results never show. Our
        # retry policy re-sends instead, through the limiter. aiohttp has no public switch;
        # its own test client turns the same private one off.
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
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
        import aiohttp  # a lookup once imported: for its exceptions below

        assert not self._closed, "use TrackClient as an async context manager"
        if self._session is None:
            self._session = self._open()  # no await before it: made once, whatever the workers
        # encoded=True: the path is already percent-encoded, and yarl must not turn %40 back
        # into @ (the identifier would then be read differently by the API).
        url = URL(self.base_url + path, encoded=True)
        try:
            async with self._session.request(
                method, url, data=body, allow_redirects=False, trace_request_ctx=on_sent
            ) as resp:
                return answer(resp.status, await _read_capped(resp), resp.headers)
        except TimeoutError:
            return timed_out(self._seconds)
        except aiohttp.ClientError as exc:
            return network_error(exc)

    async def send(self, record: Record, on_sent: Callable[[], None] | None = None) -> Response:
        """The record's single request (PUT a person, POST an event...: its kind says)."""
        method, path, body = KINDS[record.op].request(record)
        return await self.request(method, path, body, on_sent)

    async def batch(self, body: bytes, on_sent: Callable[[], None] | None = None) -> Response:
        """POST /api/v2/batch. A 207 is OK for the request: its body lists refused operations."""
        return await self.request("POST", "/api/v2/batch", body, on_sent)

    async def region(self) -> Response:
        """GET /api/v1/accounts/region: the credentials check; body has region and url."""
        return await self.request("GET", REGION_PATH)


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
