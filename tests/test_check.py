"""The credentials check (`bulksync.check`, `bulksync check`), which sends its one request with the
standard library, not aiohttp: against the simulator with injected faults over loopback, each
case run through it, through the retry loop over the aiohttp `TrackClient`
(`policy.check_credentials`), and through the sync's own check (that loop in an event loop, each
request sent with http.client from a thread), which must come to the same answer and message.
A few cases the simulator cannot play (a redirect, an answer that trickles in, the headers sent)
use a one-shot server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bulksync import AbortError, Credentials, SendOptions, UsageError, check
from bulksync.connection import RegionCheck
from bulksync.policy import check_credentials
from bulksync.track import TrackClient, resolve_base_url

from .conftest import API_KEY, SITE_ID, ServerThread, after_requests
from .test_send import FAST, REGION_PATH, closed_port_url, invoke

CREDENTIALS = Credentials(SITE_ID, API_KEY)
ACCOUNT = {"url": "https://track.customer.io", "region": "us", "environment_id": 123}
Check = Callable[[SendOptions, Credentials], Any]


def aiohttp_check(options: SendOptions, credentials: Credentials) -> Any:
    """The retry loop over the aiohttp client (what `sync` ran before its first row until its
    check went through http.client too): the reference the standard-library check must match."""

    async def run() -> Any:
        base_url = resolve_base_url(options.region, options.base_url)
        async with TrackClient(base_url, credentials, timeout=options.timeout) as client:
            account, _ = await check_credentials(
                client, None, options.max_retries, options.backoff, options.max_wait
            )
            return account.body

    return asyncio.run(run())


def sync_check(options: SendOptions, credentials: Credentials) -> Any:
    """What `sync` runs before its first row: the retry loop in the event loop, each request
    sent with http.client from a thread (connection.RegionCheck)."""

    async def run() -> Any:
        base_url = resolve_base_url(options.region, options.base_url)
        region = RegionCheck(base_url, credentials, options.timeout)
        account, _ = await check_credentials(
            region, None, options.max_retries, options.backoff, options.max_wait
        )
        return account.body

    return asyncio.run(run())


BOTH = pytest.mark.parametrize(
    "checker", [check, aiohttp_check, sync_check], ids=["stdlib", "aiohttp", "sync"]
)


def options(fake: ServerThread | str, **values: Any) -> SendOptions:
    url = fake if isinstance(fake, str) else fake.url
    return SendOptions(base_url=url, **{**FAST, **values})


def statuses(fake: ServerThread) -> list[int]:
    requests, _ = fake.snapshot()
    assert {r.path for r in requests} <= {REGION_PATH}
    return [r.status for r in requests]


# --- against the simulator --------------------------------------------------------------------


@BOTH
def test_accepted_returns_the_region_answer(fake: ServerThread, checker: Check) -> None:
    assert checker(options(fake), CREDENTIALS) == ACCOUNT
    requests, _ = fake.snapshot()
    assert [(r.method, r.path, r.auth_ok) for r in requests] == [("GET", REGION_PATH, True)]


@BOTH
def test_refused_credentials_stop_at_once(fake: ServerThread, checker: Check) -> None:
    with pytest.raises(AbortError) as info:
        checker(options(fake), Credentials(SITE_ID, "not-the-key"))
    assert str(info.value) == (
        "credentials refused (HTTP 401): check CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY;"
        " nothing was sent"
    )
    assert statuses(fake) == [401]  # never retried


@BOTH
def test_429_is_retried_after_retry_after_without_using_up_retries(
    fake: ServerThread, checker: Check
) -> None:
    fake.fake.config.fail_429 = 1.0
    fake.fake.config.retry_after = 0.2  # longer than any FAST backoff: the wait is Retry-After
    with after_requests(fake, 2, lambda config: setattr(config, "fail_429", 0.0)):
        assert checker(options(fake, max_retries=0), CREDENTIALS) == ACCOUNT
    requests, _ = fake.snapshot()
    assert [r.status for r in requests] == [429, 429, 200]
    gaps = [later.time - earlier.time for earlier, later in itertools.pairwise(requests)]
    assert all(gap >= 0.2 for gap in gaps), gaps


@BOTH
def test_retry_after_longer_than_max_wait_stops_at_once(fake: ServerThread, checker: Check) -> None:
    fake.fake.config.fail_429 = 1.0
    fake.fake.config.retry_after = 120
    with pytest.raises(AbortError, match=r"^the API asked to wait 120 s \(Retry-After\)") as info:
        checker(options(fake, max_wait=60), CREDENTIALS)
    assert "longer than --max-wait 60 s: run again after" in str(info.value)
    assert str(info.value).endswith(" UTC; nothing was sent")
    assert statuses(fake) == [429]


@BOTH
def test_server_errors_are_retried_then_given_up(fake: ServerThread, checker: Check) -> None:
    fake.fake.config.fail_503 = 1.0
    with pytest.raises(AbortError) as info:
        checker(options(fake, max_retries=2), CREDENTIALS)
    assert str(info.value) == (
        f"cannot reach the Track API at {fake.url}: HTTP 503 server error: Service Unavailable"
        " (injected); nothing was sent, run again later"
    )
    assert statuses(fake) == [503, 503, 503]


@BOTH
def test_a_server_error_then_success(fake: ServerThread, checker: Check) -> None:
    fake.fake.config.fail_500 = 1.0
    with after_requests(fake, 1, lambda config: setattr(config, "fail_500", 0.0)):
        assert checker(options(fake, backoff_base=0.1, backoff_cap=0.1), CREDENTIALS) == ACCOUNT
    assert statuses(fake)[-1] == 200


@BOTH
def test_no_answer_within_the_timeout_is_retried_then_given_up(
    fake: ServerThread, checker: Check
) -> None:
    fake.fake.config.latency = 3.0
    started = time.monotonic()
    with pytest.raises(AbortError) as info:
        checker(options(fake, timeout=0.3, max_retries=1), CREDENTIALS)
    assert str(info.value) == (
        f"cannot reach the Track API at {fake.url}: no answer within 0.3s;"
        " nothing was sent, run again later"
    )
    assert time.monotonic() - started < 2.5
    requests, _ = fake.snapshot()
    assert len(requests) == 2


@BOTH
def test_a_dropped_connection_is_a_network_error(fake: ServerThread, checker: Check) -> None:
    fake.fake.config.drop = 1.0
    with pytest.raises(AbortError, match=r"^cannot reach the Track API at .*: network error: "):
        checker(options(fake, max_retries=1), CREDENTIALS)
    assert len(fake.snapshot()[0]) == 2


@BOTH
def test_nothing_listening_is_a_network_error(checker: Check) -> None:
    url = closed_port_url()
    with pytest.raises(AbortError, match=f"^cannot reach the Track API at {url}: network error: "):
        checker(options(url, max_retries=1), CREDENTIALS)


@BOTH
def test_no_proxy_from_the_environment(
    fake: ServerThread, checker: Check, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp ignores HTTP(S)_PROXY unless asked (trust_env); the check must too: it would send
    the credentials to the proxy (here, nothing listening)."""
    proxy = closed_port_url()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
        monkeypatch.setenv(name.lower(), proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert checker(options(fake, max_retries=0), CREDENTIALS) == ACCOUNT


def test_plain_http_to_a_remote_host_is_refused_before_sending() -> None:
    with pytest.raises(UsageError, match="plain http:// is only allowed for loopback hosts"):
        check(SendOptions(base_url="http://example.invalid"), CREDENTIALS)


def test_cli_check_retries_a_429(api_env: ServerThread) -> None:
    api_env.fake.config.fail_429 = 1.0
    api_env.fake.config.retry_after = 0.1
    with after_requests(api_env, 1, lambda config: setattr(config, "fail_429", 0.0)):
        result = invoke("check")
    assert result.exit_code == 0, result.output
    assert "credentials accepted: region us" in result.stdout
    assert statuses(api_env) == [429, 200]


# --- what the simulator cannot play: one-shot answers from a loopback socket -----------------


@contextlib.contextmanager
def one_shot_server(
    answer: Callable[[socket.socket], None],
) -> Iterator[tuple[str, list[bytes]]]:
    """A server on 127.0.0.1 that reads each request's head, then lets `answer` write to the
    connection. Yields its URL and the request heads it read."""
    heads: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(4096)
                    if not data:
                        break
                    head += data
                heads.append(head)
                with contextlib.suppress(OSError):
                    answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", heads
    finally:
        done.set()
        thread.join(5)
        listener.close()


def header_lines(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


def ok_answer(conn: socket.socket) -> None:
    body = b'{"url": "https://track.customer.io", "region": "us", "environment_id": 123}'
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def test_the_same_request_line_and_headers_as_the_aiohttp_client() -> None:
    with one_shot_server(ok_answer) as (url, heads):
        for checker in (check, aiohttp_check):
            assert checker(options(url), CREDENTIALS) == ACCOUNT
    stdlib, reference = heads
    assert (
        stdlib.split(b"\r\n")[0]
        == reference.split(b"\r\n")[0]
        == b"GET " + REGION_PATH.encode() + b" HTTP/1.1"
    )
    ours, theirs = header_lines(stdlib), header_lines(reference)
    for name in ("host", "authorization", "user-agent", "content-type"):
        assert ours[name] == theirs[name], name
    assert ours["user-agent"] == "bulksync"
    assert ours["authorization"].startswith("Basic ")


@BOTH
def test_a_redirect_is_not_followed(checker: Check) -> None:
    def redirect(conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://track-eu.customer.io/api/v1/"
            b"accounts/region\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )

    with one_shot_server(redirect) as (url, heads), pytest.raises(AbortError) as info:
        checker(options(url), CREDENTIALS)
    assert str(info.value) == (
        "the API redirected to https://track-eu.customer.io/api/v1/accounts/region: the workspace"
        " is probably in the other region (try --region eu or --region us); nothing was sent"
    )
    assert len(heads) == 1


@BOTH
@pytest.mark.parametrize("part", ["head", "body"])
def test_the_timeout_is_for_the_whole_answer_not_each_read(checker: Check, part: str) -> None:
    """An answer that trickles in, a byte every 0.1 s (its head, or its body after a whole
    head), never waits 0.1 s for one read: the timeout (0.5 s) still ends it, as aiohttp's
    total timeout does."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"

    def trickle(conn: socket.socket) -> None:
        slow = head + b" " * 100
        if part == "body":
            conn.sendall(head)
            slow = b" " * 100
        for byte in slow:
            conn.sendall(bytes([byte]))
            time.sleep(0.1)

    started = time.monotonic()
    with one_shot_server(trickle) as (url, _), pytest.raises(AbortError) as info:
        checker(options(url, timeout=0.5, max_retries=0), CREDENTIALS)
    assert time.monotonic() - started < 3
    assert str(info.value) == (
        f"cannot reach the Track API at {url}: no answer within 0.5s;"
        " nothing was sent, run again later"
    )


def test_an_error_in_the_check_thread_is_raised_where_the_check_is_awaited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not a network error (those are answers): a bug or an odd value in the request. The
    sync's check must raise it, not wait forever for a thread that died."""
    import bulksync.connection

    def broken(*_: Any) -> Any:
        raise ValueError("Invalid header value")

    monkeypatch.setattr(bulksync.connection, "_get", broken)
    with pytest.raises(ValueError, match="Invalid header value"):
        sync_check(options("http://127.0.0.1:9"), CREDENTIALS)
