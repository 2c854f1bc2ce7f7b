"""How to reach and pace the Track API (`SendOptions`), and the credentials check (`check`).

Apart from the sender so that `bulksync check` (and `bulksync.check`) import neither pandas
(the sender imports the whole pipeline) nor aiohttp, nor asyncio: the check sends its one
request, GET /api/v1/accounts/region, with the standard library's http.client, and decides
what each answer means and when to ask again with the same code as the aiohttp client that
sync uses (`answers.py`). `send.SendOptions` is this one.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from yarl import URL

from .answers import (
    DEFAULT_TIMEOUT,
    MAX_ANSWER_BYTES,
    REGION_PATH,
    REGIONS,
    Backoff,
    CheckRetries,
    Credentials,
    Response,
    answer,
    network_error,
    request_headers,
    resolve_base_url,
    timed_out,
)
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_WAIT
from .errors import UsageError


@dataclass(frozen=True)
class SendOptions:
    """How to send. `rate=None` removes the cap (only sensible against a local simulator).
    Values are checked here, so a bad one fails before any file is touched."""

    rate: float | None = 100.0  # the ceiling: the adaptive rate slows below it on 429s
    concurrency: int | None = None  # None: enough to reach `rate` at 500 ms latency
    max_retries: int = 5
    timeout: float = DEFAULT_TIMEOUT
    region: str = "us"
    base_url: str | None = None
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    batch: bool = False  # POST /api/v2/batch instead of one PUT per row
    batch_size: int = DEFAULT_BATCH_SIZE
    max_wait: float = DEFAULT_MAX_WAIT  # longest Retry-After honoured; longer stops the run

    def __post_init__(self) -> None:
        problems = [
            f"{name} {value!r}: {rule}"
            for name, value, ok, rule in (
                ("rate", self.rate, self.rate is None or 0 < self.rate < math.inf, "must be > 0"),
                (
                    "concurrency",
                    self.concurrency,
                    self.concurrency is None or self.concurrency >= 1,
                    "must be >= 1",
                ),
                ("max_retries", self.max_retries, self.max_retries >= 0, "must be >= 0"),
                ("timeout", self.timeout, self.timeout > 0, "must be > 0"),
                ("region", self.region, self.region in REGIONS, "must be us or eu"),
                ("backoff_base", self.backoff_base, self.backoff_base >= 0, "must be >= 0"),
                ("backoff_cap", self.backoff_cap, self.backoff_cap >= 0, "must be >= 0"),
                ("batch_size", self.batch_size, self.batch_size >= 1, "must be >= 1"),
                ("max_wait", self.max_wait, 0 <= self.max_wait < math.inf, "must be >= 0"),
            )
            if not ok
        ]
        if problems:
            raise UsageError("; ".join(problems))

    @property
    def workers(self) -> int:
        if self.concurrency is not None:
            return self.concurrency
        if self.rate is None:
            return 64
        # Little's law: requests in flight = rate x latency. 500 ms of latency at the full rate.
        return max(4, min(500, math.ceil(self.rate * 0.5)))

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.backoff_base, self.backoff_cap)


def check(options: SendOptions | None = None, credentials: Credentials | None = None) -> Any:
    """Verify the credentials; return the account's region answer
    (`{"url": ..., "region": ..., "environment_id": ...}`).

    Retries as the sync's own check does (`policy.check_credentials`: the same decisions,
    `answers.CheckRetries`), without the rate limiter a single request does not need."""
    options = options or SendOptions()
    credentials = credentials or Credentials.from_env()
    base_url = resolve_base_url(options.region, options.base_url)
    region = RegionCheck(base_url, credentials, options.timeout)
    retries = CheckRetries(base_url, options.max_retries, options.backoff, options.max_wait)
    while True:
        response = region.get()
        delay = retries.after(response)
        if delay is None:
            return response.body
        time.sleep(delay)


class RegionCheck:
    """GET /api/v1/accounts/region with http.client: the one request of `check`, and of a
    sync's credentials check (`policy.check_credentials`), whose aiohttp session then comes
    with its first row sent (track.TrackClient): an unchanged night sends none, and does not
    import aiohttp."""

    def __init__(self, base_url: str, credentials: Credentials, timeout: float) -> None:
        self.base_url = base_url
        self._url = URL(base_url + REGION_PATH, encoded=True)
        self._headers = {**request_headers(credentials), "Accept": "*/*"}  # aiohttp's too
        self._timeout = timeout
        self._context = None
        if self._url.scheme == "https":
            self._context = ssl.create_default_context()  # certificates and host name verified
            self._context.set_alpn_protocols(["http/1.1"])  # as aiohttp's default context

    def get(self) -> Response:
        return _get(self._url, self._headers, self._timeout, self._context)

    async def region(self) -> Response:
        """get(), awaited in an event loop: run in a daemon thread, so that a run stopped
        while the request hangs exits without waiting for it (an executor's thread is joined
        at exit)."""
        import asyncio  # here: `bulksync check` runs without it

        loop = asyncio.get_running_loop()
        answered: asyncio.Future[Response] = loop.create_future()

        def run() -> None:
            try:
                outcome: Response | BaseException = self.get()
            except BaseException as exc:  # raised where the check is awaited, not lost here
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, answered, outcome)

        threading.Thread(target=run, name="bulksync-check", daemon=True).start()
        return await answered


def _settle(future: Any, outcome: Response | BaseException) -> None:
    if future.done():  # cancelled meanwhile
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _get(
    url: URL, headers: dict[str, str], timeout: float, context: ssl.SSLContext | None
) -> Response:
    """GET `url` on a new connection (TLS with `context` for https). As `TrackClient.request`
    does: no redirect followed, no proxy (http.client reads none from the environment; aiohttp
    does not by default), at most MAX_ANSWER_BYTES read, and at most `timeout` seconds for the
    whole of it, as aiohttp's total timeout (http.client's own is for each connect or read: a
    watchdog shuts the socket down when the time is up). Never raises for network trouble."""
    assert url.raw_host is not None  # resolve_base_url refuses a URL without a host
    connection: http.client.HTTPConnection
    if context is not None:
        connection = http.client.HTTPSConnection(
            url.raw_host, url.port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(url.raw_host, url.port, timeout=timeout)
    # The connection lets go of its socket (sock None) once an answer says "Connection: close",
    # while the answer is still read from it: the watchdog keeps its own reference.
    sockets: list[socket.socket] = []
    expired = threading.Event()

    def expire() -> None:  # in the timer's thread
        expired.set()
        for sock in (connection.sock, *sockets):  # during a TLS handshake, the TCP socket
            if sock is not None:
                with contextlib.suppress(OSError):  # closed meanwhile
                    # The plain socket's shutdown, on a TLS one too: a blocked read returns.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    resp: http.client.HTTPResponse | None = None
    watchdog.start()
    try:
        connection.connect()  # the TCP connect is bounded by the socket's own timeout
        if connection.sock is not None:
            sockets.append(connection.sock)
        if expired.is_set():
            raise TimeoutError
        connection.request("GET", url.raw_path, headers=headers)
        resp = connection.getresponse()
        raw = _read_capped(resp)
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            return timed_out(timeout)
        return network_error(exc)
    finally:
        watchdog.cancel()
        if resp is not None:
            resp.close()  # after "Connection: close", the socket is the answer's to close
        connection.close()
    if expired.is_set():  # the answer may have been cut short
        return timed_out(timeout)
    return answer(resp.status, raw, resp.headers)


def _read_capped(resp: http.client.HTTPResponse) -> bytes | None:
    """The answer's body, or None past MAX_ANSWER_BYTES (as `track._read_capped`)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := resp.read(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
