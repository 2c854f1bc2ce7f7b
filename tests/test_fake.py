"""Tests of the local Track API simulator, driven by a real aiohttp client over loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDictProxy
from yarl import URL

from bulksync.fake import FakeConfig, FakeTrackAPI, Recorded, peak_in_window


def auth_headers(site_id: str = "site", api_key: str = "key") -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(site_id, api_key)}


@pytest.fixture
async def fake() -> AsyncIterator[FakeTrackAPI]:
    async with FakeTrackAPI() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=auth_headers()) as client:
        yield client


def customer_url(fake: FakeTrackAPI, identifier: str) -> URL:
    # Encoded like the official client; encoded=True stops yarl from turning %40 back into @.
    return URL(f"{fake.url}/api/v1/customers/{quote(identifier, safe='')}", encoded=True)


async def put(
    session: aiohttp.ClientSession,
    fake: FakeTrackAPI,
    identifier: str,
    body: Any = None,
    **kwargs: Any,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    data = orjson.dumps({"email": "a@example.com"} if body is None else body)
    async with session.put(
        customer_url(fake, identifier),
        data=data,
        headers={"Content-Type": "application/json"},
        allow_redirects=False,
        **kwargs,
    ) as resp:
        return resp.status, await resp.json(), resp.headers


# --- auth and routes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth_headers("site", "wrong"),
        auth_headers("other", "key"),
        {"Authorization": "Bearer key"},
        {"Authorization": "Basic not-base64!"},
    ],
)
async def test_bad_credentials_answer_401(fake: FakeTrackAPI, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession(headers=headers) as client:
        status, body, _ = await put(client, fake, "42")
    assert status == 401
    assert body == {"meta": {"error": "Unauthorized request"}}
    [record] = fake.requests
    assert record.auth_ok is False
    assert record.status == 401
    assert fake.accepted() == {}


@pytest.mark.parametrize(
    ("region", "url"), [("us", "https://track.customer.io"), ("eu", "https://track-eu.customer.io")]
)
async def test_region_route(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, region: str, url: str
) -> None:
    fake.config.region = region
    fake.config.environment_id = 987
    async with session.get(f"{fake.url}/api/v1/accounts/region") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {"url": url, "region": region, "environment_id": 987}


async def test_region_route_checks_credentials(fake: FakeTrackAPI) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{fake.url}/api/v1/accounts/region") as resp,
    ):
        assert resp.status == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/api/v1/customers/42"),  # identify is PUT only
        ("PUT", "/api/v1/customers/42/events"),
        ("PUT", "/api/v1/accounts/region"),
        ("GET", "/api/v1/accounts/region/"),  # no trailing-slash redirect
        ("GET", "/api/v2/batch"),
    ],
)
async def test_unknown_routes_answer_404_without_redirect(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with session.request(method, f"{fake.url}{path}", allow_redirects=False) as resp:
        assert resp.status == 404


async def test_identify_accepts_and_records(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    before = time.monotonic()
    status, body, _ = await put(session, fake, "42", {"email": "x@example.com", "plan": "pro"})
    assert (status, body) == (200, {})
    await put(session, fake, "42", {"plan": "team"})
    await put(session, fake, "7")

    assert fake.accepted() == {
        "42": [{"email": "x@example.com", "plan": "pro"}, {"plan": "team"}],
        "7": [{"email": "a@example.com"}],
    }
    assert fake.requests_per_identifier() == Counter({"42": 2, "7": 1})
    first = fake.requests[0]
    assert first.method == "PUT"
    assert first.path == "/api/v1/customers/42"
    assert first.auth_ok is True
    assert before <= first.time <= time.monotonic()

    fake.reset()
    assert fake.requests == []
    assert fake.accepted() == {}


@pytest.mark.parametrize(
    ("identifier", "raw"),
    [
        ("a/b", "a%2Fb"),
        ("%40", "%2540"),  # decoded once only: a literal "%40" must not become "@"
        ("✓", "%E2%9C%93"),
        ("cio_abc", "cio_abc"),
        ("Ann.Lee+tag@example.com", "Ann.Lee%2Btag%40example.com"),
        ("a b?c#d", "a%20b%3Fc%23d"),
    ],
)
async def test_identifier_is_percent_decoded_once_from_the_raw_path(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, identifier: str, raw: str
) -> None:
    assert customer_url(fake, identifier).raw_path == f"/api/v1/customers/{raw}"
    status, _, _ = await put(session, fake, identifier)
    assert status == 200
    [record] = fake.requests
    assert record.path == f"/api/v1/customers/{raw}"
    assert record.identifier == identifier
    assert list(fake.accepted()) == [identifier]


# --- validation -----------------------------------------------------------------------------

VALUE_ERROR = "value for attribute '{}' cannot be longer than 1000 bytes"
TYPE_ERROR = "value for attribute '{}' must be a string, number or boolean"


@pytest.mark.parametrize(
    ("identifier", "body", "message"),
    [
        ("42", b"[1, 2]", "request body must be a JSON object"),
        ("42", b'"text"', "request body must be a JSON object"),
        ("42", b"{not json", "request body must be a JSON object"),
        ("42", b"", "request body must be a JSON object"),
        ("", b"{}", "id attribute cannot be an empty string"),
        ("42", b'{"id": ""}', "id attribute cannot be an empty string"),
        ("x" * 151, b"{}", "identifier cannot be longer than 150 bytes"),
        ("é" * 76, b"{}", "identifier cannot be longer than 150 bytes"),  # 152 bytes, 76 chars
        ("42", orjson.dumps({"n" * 151: 1}), "attribute name cannot be longer than 150 bytes"),
        ("42", orjson.dumps({"bio": "x" * 1001}), VALUE_ERROR.format("bio")),
        ("42", orjson.dumps({"bio": "é" * 501}), VALUE_ERROR.format("bio")),  # 1002 bytes
        ("42", orjson.dumps({"bio": "😀" * 251}), VALUE_ERROR.format("bio")),  # 1004 bytes
        # 38 characters, 152 bytes
        ("42", orjson.dumps({"😀" * 38: 1}), "attribute name cannot be longer than 150 bytes"),
        (
            "42",
            orjson.dumps({f"a{i}": i for i in range(301)}),
            "cannot identify more than 300 attributes in one request",
        ),
        ("42", orjson.dumps({"tags": ["a"]}), TYPE_ERROR.format("tags")),
        ("42", orjson.dumps({"address": {"zip": "01234"}}), TYPE_ERROR.format("address")),
    ],
)
async def test_identify_validation_errors(
    fake: FakeTrackAPI,
    session: aiohttp.ClientSession,
    identifier: str,
    body: bytes,
    message: str,
) -> None:
    async with session.put(customer_url(fake, identifier), data=body) as resp:
        assert resp.status == 400
        assert await resp.json() == {"meta": {"error": message}}
    assert fake.accepted() == {}


@pytest.mark.parametrize(
    ("identifier", "body"),
    [
        ("x" * 150, {}),
        ("é" * 75, {}),  # exactly 150 bytes
        ("42", {"n" * 150: 1}),
        ("42", {"bio": "x" * 1000}),
        ("42", {"bio": "😀" * 250}),  # exactly 1000 bytes
        ("42", {"😀" * 37 + "ab": 1}),  # 150 bytes
        ("42", {f"a{i}": i for i in range(300)}),
        ("42", {"s": "v", "i": 1, "f": 1.5, "b": True, "created_at": 1700000000}),
    ],
)
async def test_identify_accepts_values_at_the_limits(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, identifier: str, body: dict[str, Any]
) -> None:
    status, _, _ = await put(session, fake, identifier, body)
    assert status == 200
    assert fake.accepted() == {identifier: [body]}


async def test_reject_ids_answer_400_every_time(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.reject_ids = frozenset({"bad"})
    for _ in range(3):
        status, body, _ = await put(session, fake, "bad")
        assert (status, body) == (400, {"meta": {"error": "rejected by test"}})
    assert (await put(session, fake, "good"))[0] == 200
    assert list(fake.accepted()) == ["good"]


async def test_fail_first_answers_503_then_succeeds(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.fail_first = {"flaky": 2}
    statuses = [(await put(session, fake, "flaky"))[0] for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert (await put(session, fake, "steady"))[0] == 200
    assert fake.requests_per_identifier()["flaky"] == 4
    assert len(fake.accepted()["flaky"]) == 2

    fake.reset()  # the failures count again from the start
    assert (await put(session, fake, "flaky"))[0] == 503


# --- rate limit -----------------------------------------------------------------------------


async def test_rate_limit_admits_exactly_the_limit_per_second(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.rate_limit = 10
    fake.config.retry_after = 2
    results = await asyncio.gather(*(put(session, fake, str(i)) for i in range(30)))
    statuses = Counter(status for status, _, _ in results)
    assert statuses == Counter({200: 10, 429: 20})
    for status, _, headers in results:
        if status == 429:
            assert headers["Retry-After"] == "2"
    assert len(fake.accepted()) == 10
    assert fake.peak_per_second() == 30  # the peak counts what the client sent, refused included


async def test_rate_limit_window_slides_and_ignores_refused_requests(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.rate_limit = 5
    first = await asyncio.gather(*(put(session, fake, str(i)) for i in range(5)))
    assert [status for status, _, _ in first] == [200] * 5
    last_admitted = max(record.time for record in fake.requests)
    # Refused mid-window: if these counted, the next second would be refused too.
    await asyncio.sleep(0.3)
    refused = await asyncio.gather(*(put(session, fake, str(i)) for i in range(5)))
    assert [status for status, _, _ in refused] == [429] * 5
    await asyncio.sleep(max(0.0, last_admitted + 1.05 - time.monotonic()))
    again = await asyncio.gather(*(put(session, fake, str(i)) for i in range(5)))
    assert [status for status, _, _ in again] == [200] * 5


@pytest.mark.parametrize(("retry_after", "header"), [(None, None), (1.5, "1.5"), (3.0, "3")])
async def test_retry_after_header_format(
    fake: FakeTrackAPI,
    session: aiohttp.ClientSession,
    retry_after: float | None,
    header: str | None,
) -> None:
    fake.config.fail_429 = 1.0
    fake.config.retry_after = retry_after
    status, body, headers = await put(session, fake, "42")
    assert status == 429
    assert "error" in body["meta"]
    assert headers.get("Retry-After") == header


# --- fault injection ------------------------------------------------------------------------


async def statuses_of(session: aiohttp.ClientSession, fake: FakeTrackAPI, count: int) -> list[int]:
    # Sequential, so the random draws happen in a known order.
    return [(await put(session, fake, str(i)))[0] for i in range(count)]


async def test_random_faults_are_seeded_and_proportional(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.fail_500 = 0.2
    fake.config.fail_503 = 0.1
    fake.config.fail_429 = 0.1
    fake.config.seed = 7
    fake.reset()  # reseeds from config.seed
    first = await statuses_of(session, fake, 300)
    fake.reset()
    assert await statuses_of(session, fake, 300) == first

    counts = Counter(first)
    assert 35 <= counts[500] <= 85
    assert 12 <= counts[503] <= 50
    assert 12 <= counts[429] <= 50
    assert counts[200] == 300 - counts[500] - counts[503] - counts[429]

    fake.config.seed = 8
    fake.reset()
    assert await statuses_of(session, fake, 300) != first


async def test_config_changes_apply_while_running(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.fail_503 = 1.0
    assert await statuses_of(session, fake, 3) == [503, 503, 503]
    fake.config.fail_503 = 0
    assert await statuses_of(session, fake, 3) == [200, 200, 200]


async def test_drop_closes_the_connection_without_answer(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.drop = 1.0
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await put(session, fake, "42")
    # aiohttp itself re-sends an idempotent PUT once after a disconnect, so expect 1 or 2.
    assert 1 <= len(fake.requests) <= 2
    assert all(record.status == 0 for record in fake.requests)
    assert fake.accepted() == {}

    fake.config.drop = 0
    assert (await put(session, fake, "42"))[0] == 200


async def test_aiohttp_resends_a_dropped_put_but_not_a_post(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    # A canary for the client code: aiohttp (3.10+) silently re-sends idempotent methods (PUT)
    # once after a disconnect, so one identify call can reach the API twice; POST is not resent.
    fake.config.drop = 1.0
    for method, sent in (("PUT", 2), ("POST", 1)):
        fake.reset()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.request(method, customer_url(fake, "42"), data=b"{}"):
                pass
        assert len(fake.requests) == sent


async def test_slow_answers_exceed_a_client_timeout(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.slow = 1.0
    fake.config.slow_seconds = 2.0
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await put(session, fake, "42", timeout=aiohttp.ClientTimeout(total=0.2))
    assert time.monotonic() - started < 1.0
    assert fake.accepted() == {}

    fake.config.slow = 0
    assert (await put(session, fake, "42"))[0] == 200


async def test_latency_delays_every_answer(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.latency = 0.2
    started = time.monotonic()
    assert (await put(session, fake, "42"))[0] == 200
    assert time.monotonic() - started >= 0.2

    fake.config.latency = 0.05
    fake.config.jitter = 0.1
    started = time.monotonic()
    async with aiohttp.ClientSession() as anonymous:  # refusals are delayed too
        assert (await put(anonymous, fake, "42"))[0] == 401
    assert 0.05 <= time.monotonic() - started < 1.0


# --- peak per second ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "window", "peak"),
    [
        ([], 1.0, 0),
        ([5.0], 1.0, 1),
        ([0.0, 0.5, 0.99, 1.0], 1.0, 3),  # [t, t + 1) is half-open: 0.0 and 1.0 never share one
        ([0.0, 1.0, 2.0, 3.0], 1.0, 1),
        ([0.0, 0.0, 0.0], 1.0, 3),
        ([3.2, 0.1, 2.5, 0.2, 2.9, 3.1], 1.0, 4),  # unsorted input; 2.5..3.2
        ([0.0, 0.1, 0.2, 0.3], 0.25, 3),
    ],
)
def test_peak_in_window(times: list[float], window: float, peak: int) -> None:
    assert peak_in_window(times, window) == peak


@given(st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=40))
def test_peak_in_window_matches_brute_force(times: list[float]) -> None:
    brute = max((sum(t <= u < t + 1.0 for u in times) for t in times), default=0)
    assert peak_in_window(times) == brute


def test_peak_per_second_counts_every_recorded_request() -> None:
    fake = FakeTrackAPI()
    statuses = [200, 401, 429, 200, 0]
    fake.requests = [
        Recorded("PUT", "/p", "p", None, t, status, auth_ok=status != 401)
        for t, status in zip([10.0, 10.2, 10.4, 10.9, 12.0], statuses, strict=True)
    ]
    assert fake.peak_per_second() == 4


# --- lifecycle ------------------------------------------------------------------------------


async def test_start_stop_and_url() -> None:
    fake = FakeTrackAPI(FakeConfig(site_id="s1", api_key="k1"))
    with pytest.raises(RuntimeError):
        _ = fake.url
    url = await fake.start()
    try:
        assert url == fake.url
        assert url.startswith("http://127.0.0.1:")
        assert int(url.rsplit(":", 1)[1]) > 0
        async with (
            aiohttp.ClientSession(headers=auth_headers("s1", "k1")) as client,
            client.get(f"{url}/api/v1/accounts/region") as resp,
        ):
            assert resp.status == 200
    finally:
        await fake.stop()
    await fake.stop()  # idempotent
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as client, client.get(url):
            pass


def test_app_is_an_aiohttp_application() -> None:
    assert isinstance(FakeTrackAPI().app, aiohttp.web.Application)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_fake_server_prints_its_url_and_stops_on_signal(sig: signal.Signals) -> None:
    root = Path(__file__).resolve().parents[1]
    code = (
        "from bulksync.fake import FakeConfig, run_fake_server; "
        "run_fake_server(FakeConfig(site_id='s9', api_key='k9'), '127.0.0.1', 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=root
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            prefix = "bulksync fake Track API listening on "
            assert line.startswith(prefix)
            assert line.endswith(" (site id: s9, api key: k9)")
            url = line.removeprefix(prefix).split(" ")[0]
            assert url.startswith("http://127.0.0.1:")
            assert not url.endswith(":0")

            request = urllib.request.Request(
                f"{url}/api/v1/accounts/region", headers=auth_headers("s9", "k9")
            )
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert orjson.loads(resp.read())["region"] == "us"

            proc.send_signal(sig)
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
