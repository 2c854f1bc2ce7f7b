"""Pure unit tests of the send side: response classification, Retry-After, identifier encoding,
base URL checks, backoff, the rate limiter, credentials and the region check. No network."""

from __future__ import annotations

import asyncio
import math
import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict

from bulksync.api import _check_region
from bulksync.errors import CredentialsError, UsageError
from bulksync.fake import peak_in_window
from bulksync.operations import customer_path
from bulksync.ratelimit import RateLimiter
from bulksync.send import SendOptions
from bulksync.track import (
    REGIONS,
    Credentials,
    Kind,
    classify,
    parse_retry_after,
    resolve_base_url,
)

from .conftest import API_KEY, SITE_ID


def headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in values.items()})


# --- classify ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 204])
def test_classify_2xx_is_ok(status: int) -> None:
    response = classify(status, {}, headers())
    assert response.kind is Kind.OK
    assert response.status == status
    assert response.error is None


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_classify_redirect_is_fatal_and_names_the_region(status: int) -> None:
    location = "https://track-eu.customer.io/api/v1/customers/42"
    response = classify(status, None, headers(Location=location))
    assert response.kind is Kind.FATAL
    assert response.status == status
    assert response.error is not None
    assert location in response.error
    assert "--region" in response.error


def test_classify_redirect_without_location_is_still_fatal() -> None:
    response = classify(302, None, headers())
    assert response.kind is Kind.FATAL
    assert "--region" in str(response.error)


@pytest.mark.parametrize("status", [401, 403])
def test_classify_credentials_refused_is_fatal(status: int) -> None:
    response = classify(status, {"meta": {"error": "Unauthorized request"}}, headers())
    assert response.kind is Kind.FATAL
    assert response.status == status
    assert "CUSTOMERIO_API_KEY" in str(response.error)
    assert f"HTTP {status}" in str(response.error)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"meta": {"error": "id attribute cannot be an empty string"}}, "cannot be an empty"),
        ({"meta": {"errors": ["first problem", "second problem"]}}, "first problem; second"),
        ({"errors": [{"reason": "invalid", "message": "bad op"}]}, "bad op"),
    ],
)
def test_classify_400_is_terminal_with_the_api_message(body: object, message: str) -> None:
    response = classify(400, body, headers())
    assert response.kind is Kind.TERMINAL
    assert response.status == 400
    assert response.error is not None
    assert response.error.startswith("HTTP 400: ")
    assert message in response.error
    assert response.retry_after is None


@pytest.mark.parametrize("status", [400, 404, 405, 409, 413, 422])
def test_classify_other_4xx_is_terminal_even_without_a_body(status: int) -> None:
    response = classify(status, None, headers())
    assert response.kind is Kind.TERMINAL
    assert response.error == f"HTTP {status}: request refused"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_classify_transient(status: int) -> None:
    response = classify(status, None, headers())
    assert response.kind is Kind.TRANSIENT
    assert response.status == status
    assert f"HTTP {status}" in str(response.error)
    assert response.retry_after is None


def test_classify_429_reads_retry_after_case_insensitively() -> None:
    response = classify(429, {"meta": {"error": "Too Many Requests"}}, headers(retry_after="3"))
    assert response.kind is Kind.TRANSIENT
    assert response.retry_after == 3.0
    assert "rate limited" in str(response.error)
    assert "Too Many Requests" in str(response.error)


def test_classify_503_reads_retry_after_too() -> None:
    assert classify(503, None, headers(Retry_After="1.5")).retry_after == 1.5


# --- parse_retry_after -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("", None), ("0", 0.0), ("5", 5.0), ("0.25", 0.25), ("-3", 0.0), ("soon", None)],
)
def test_parse_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert later == "Wed, 01 May 2024 12:00:30 GMT"
    assert parse_retry_after(later, now=now) == pytest.approx(30.0)
    earlier = format_datetime(datetime(2024, 5, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0


@pytest.mark.parametrize("value", ["inf", "Infinity", "nan", "1e400"])
def test_parse_retry_after_refuses_non_finite_values(value: str) -> None:
    # RFC 9110: Retry-After is an HTTP date or delay-seconds (digits only). float() accepts
    # "inf", and an infinite pause would stop every worker of the run forever.
    seconds = parse_retry_after(value)
    assert seconds is None or math.isfinite(seconds)


# --- customer_path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "path"),
    [
        ("cust-1", "/api/v1/customers/cust-1"),
        ("a/b", "/api/v1/customers/a%2Fb"),
        ("user@example.com", "/api/v1/customers/user%40example.com"),
        ("a+b", "/api/v1/customers/a%2Bb"),
        ("100%", "/api/v1/customers/100%25"),
        ("%40", "/api/v1/customers/%2540"),
        ("what?", "/api/v1/customers/what%3F"),
        ("hash#tag", "/api/v1/customers/hash%23tag"),
        ("with space", "/api/v1/customers/with%20space"),
        ("josé/ü", "/api/v1/customers/jos%C3%A9%2F%C3%BC"),
        ("cio_03000001", "/api/v1/customers/cio_03000001"),
    ],
)
def test_customer_path_encodes_every_reserved_character(identifier: str, path: str) -> None:
    assert customer_path(identifier) == path


# --- resolve_base_url ------------------------------------------------------------------------


def test_resolve_base_url_regions() -> None:
    assert resolve_base_url("us") == "https://track.customer.io"
    assert resolve_base_url("eu") == "https://track-eu.customer.io"
    assert resolve_base_url() == REGIONS["us"]


def test_resolve_base_url_unknown_region() -> None:
    with pytest.raises(UsageError, match="unknown region 'ap'"):
        resolve_base_url("ap")


@pytest.mark.parametrize(
    ("base_url", "resolved"),
    [
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://127.0.0.2:8080", "http://127.0.0.2:8080"),
        ("http://localhost:9000", "http://localhost:9000"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("https://track.example.com", "https://track.example.com"),
        ("https://10.1.2.3:8443/", "https://10.1.2.3:8443"),
    ],
)
def test_resolve_base_url_accepts(base_url: str, resolved: str) -> None:
    # The override wins over the region.
    assert resolve_base_url("eu", base_url) == resolved


@pytest.mark.parametrize(
    "base_url",
    [
        "http://example.invalid",
        "http://10.0.0.1:8080",
        "http://track.customer.io",
        "http://localhost.example.com",
        "http://127.0.0.1.example.com",
    ],
)
def test_resolve_base_url_refuses_plain_http_off_loopback(base_url: str) -> None:
    with pytest.raises(UsageError, match="plain http:// is only allowed for loopback"):
        resolve_base_url("us", base_url)


@pytest.mark.parametrize("base_url", ["ftp://127.0.0.1", "127.0.0.1:8080", "not a url", "https://"])
def test_resolve_base_url_refuses_what_is_not_an_http_url(base_url: str) -> None:
    with pytest.raises(UsageError, match="expected http"):
        resolve_base_url("us", base_url)


# --- Backoff -------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30)])
def test_backoff_delay_full_jitter_under_an_exponential_ceiling(
    attempt: int, ceiling: float
) -> None:
    options = SendOptions(backoff_base=0.5, backoff_cap=30.0)
    rng = random.Random(1)
    delays = [options.backoff.delay(attempt, None, rng) for _ in range(2000)]
    assert all(0 <= d <= ceiling for d in delays)
    # Full jitter: spread over the whole range, not bunched at the ceiling.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling
    assert sum(delays) / len(delays) == pytest.approx(ceiling / 2, rel=0.1)


def test_backoff_delay_never_shorter_than_retry_after() -> None:
    options = SendOptions(backoff_base=0.01, backoff_cap=0.05)
    rng = random.Random(2)
    assert all(options.backoff.delay(a, 2.0, rng) == 2.0 for a in range(1, 10))
    # A Retry-After below the drawn delay does not shorten it.
    big = SendOptions(backoff_base=10.0, backoff_cap=10.0)
    assert all(big.backoff.delay(1, 0.0, rng) <= 10.0 for _ in range(50))
    assert max(big.backoff.delay(1, 0.001, rng) for _ in range(50)) > 1.0


def test_backoff_delay_is_reproducible_with_a_seed() -> None:
    options = SendOptions()
    first = [options.backoff.delay(3, None, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1


# --- SendOptions -----------------------------------------------------------------------------


def test_workers_follow_littles_law() -> None:
    assert SendOptions(rate=100).workers == 50
    assert SendOptions(rate=1).workers == 4
    assert SendOptions(rate=1_000_000).workers == 500
    assert SendOptions(rate=None).workers == 64
    assert SendOptions(rate=100, concurrency=3).workers == 3


# --- RateLimiter -----------------------------------------------------------------------------


async def _acquire_all(limiter: RateLimiter, n: int) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(times)


async def test_rate_limiter_never_exceeds_rate_in_any_sliding_second() -> None:
    started = time.monotonic()
    times = await _acquire_all(RateLimiter(100), 250)
    assert len(times) == 250
    assert peak_in_window(times, 1.0) <= 100
    # No first-second burst (AsyncLimiter(100, 1) lets ~200 through at once).
    assert sum(1 for t in times if t - started < 1.0) <= 100
    # Correctness bound: 250 starts with at most 100 per second need more than 1.5 s.
    elapsed = times[-1] - started
    assert elapsed >= 1.5
    # ...and it paces rather than stalls (about 2.5 s expected).
    assert elapsed < 6.0


async def test_rate_limiter_fractional_rate_counts_whole_starts() -> None:
    limiter = RateLimiter(20.5)
    assert limiter.max_starts == 20
    times = await _acquire_all(limiter, 30)
    assert peak_in_window(times, 1.0) <= 20


async def test_rate_limiter_pause_holds_every_start() -> None:
    limiter = RateLimiter(1000)
    await limiter.acquire()
    limiter.pause(0.3)
    limiter.pause(0.1)  # a shorter pause does not cut the longer one
    started = time.monotonic()
    times = await _acquire_all(limiter, 5)
    assert min(times) - started >= 0.29


async def test_rate_limiter_pause_holds_starts_already_waiting() -> None:
    """A pause (Retry-After) must also hold the workers already queued inside the limiter,
    not only those that call acquire() after it began."""
    limiter = RateLimiter(10)  # one start every ~0.1 s
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(time.monotonic())

    tasks = [asyncio.create_task(one()) for _ in range(6)]
    await asyncio.sleep(0.15)  # one or two have started; the others wait in the limiter
    assert 1 <= len(times) < 6
    limiter.pause(0.5)
    paused_at = time.monotonic()
    await asyncio.gather(*tasks)
    during = [round(t - paused_at, 3) for t in times if paused_at < t < paused_at + 0.49]
    assert during == [], "starts let through during the pause"


def test_rate_limiter_refuses_a_non_positive_rate() -> None:
    for rate in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            RateLimiter(rate)


# --- credentials -----------------------------------------------------------------------------


def test_credentials_repr_hides_the_key() -> None:
    credentials = Credentials(SITE_ID, API_KEY)
    for text in (repr(credentials), str(credentials), f"{credentials}", f"{[credentials]}"):
        assert API_KEY not in text
        assert SITE_ID in text


def test_credentials_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", f" {SITE_ID} ")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", f"{API_KEY}\n")
    assert Credentials.from_env() == Credentials(SITE_ID, API_KEY)


@pytest.mark.parametrize(
    ("site_id", "api_key", "named"),
    [
        (None, None, ["CUSTOMERIO_SITE_ID", "CUSTOMERIO_API_KEY"]),
        (SITE_ID, None, ["CUSTOMERIO_API_KEY"]),
        (SITE_ID, "  ", ["CUSTOMERIO_API_KEY"]),
        ("", API_KEY, ["CUSTOMERIO_SITE_ID"]),
    ],
)
def test_credentials_missing_are_named(
    monkeypatch: pytest.MonkeyPatch, site_id: str | None, api_key: str | None, named: list[str]
) -> None:
    for name, value in (("CUSTOMERIO_SITE_ID", site_id), ("CUSTOMERIO_API_KEY", api_key)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(CredentialsError) as info:
        Credentials.from_env()
    message = str(info.value)
    for name in ("CUSTOMERIO_SITE_ID", "CUSTOMERIO_API_KEY"):
        assert (name in message) == (name in named)
    assert API_KEY not in message


# --- region check ----------------------------------------------------------------------------


def test_check_region_mismatch_names_the_right_region() -> None:
    account = {"url": "https://track-eu.customer.io", "region": "eu", "environment_id": 1}
    with pytest.raises(UsageError, match="EU region: pass --region eu"):
        _check_region(account, SendOptions(region="us"))
    with pytest.raises(UsageError, match="US region: pass --region us"):
        _check_region({"region": "us"}, SendOptions(region="eu"))


def test_check_region_match_or_override_passes() -> None:
    _check_region({"region": "eu"}, SendOptions(region="eu"))
    _check_region({"region": "us"}, SendOptions(region="us"))
    # With --base-url (a simulator, a proxy) the region answer says nothing about the host.
    _check_region({"region": "eu"}, SendOptions(region="us", base_url="http://127.0.0.1:1"))
    # An answer without a region cannot be checked.
    _check_region({}, SendOptions(region="us"))
    _check_region(None, SendOptions(region="us"))


async def test_rate_limiter_counts_a_start_from_when_its_request_was_sent() -> None:
    # Ten starts granted at once, but their requests only leave 0.5 s later (the event loop
    # was held up): the window must count them from then, so the eleventh waits for it.
    limiter = RateLimiter(10, margin=0.0)
    stamps = [await limiter.acquire() for _ in range(10)]
    await asyncio.sleep(0.5)
    sent = time.monotonic()
    for stamp in stamps:
        stamp()
    await limiter.acquire()
    assert time.monotonic() - sent >= 0.95  # not ~0.5 s after the grants' one-second window
