"""The simulator's fast path for batches of person identifies (fake/server.py, _identify_batch):
a batch it proves valid is accepted without a parser call per operation, and applied to the
workspace only when something looks. Whatever the batch, the answer and what a test can
inspect afterwards must be what the general path (every operation through _parse_operation)
gives: the property test below sends each batch both ways and compares."""

from __future__ import annotations

import base64
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import bulksync.fake.server as server_module
from bulksync.fake import FakeConfig, FakeTrackAPI
from bulksync.fake.process import ServerThread

AUTH = "Basic " + base64.b64encode(b"site:key").decode()


def identify_op(person: str, key: str = "id", /, **attributes: Any) -> dict[str, Any]:
    return {
        "type": "person",
        "identifiers": {key: person},
        "action": "identify",
        "attributes": attributes,
    }


def bulk_batch(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Operations as bulksync sends them for the benchmark's customers file."""
    return [
        identify_op(
            f"cust-{n}",
            id=f"cust-{n}",
            email=f"chloe.okafor{n}@shop.example.co.uk",
            first_name="Chloé",
            last_name="Okafor",
            zip="99740",
            plan="enterprise",
            created_at=1483377521 + n,
            last_login="1663383683",
            lifetime_value="3257.96",
            is_active="true",
        )
        for n in range(start, start + count)
    ]


class Spy:
    """Wraps _identify_batch: what it proved (or not), call by call."""

    def __init__(self) -> None:
        self.real = server_module._identify_batch
        self.proven: list[bool] = []

    def __call__(self, operations: list[Any]) -> Any:
        result = self.real(operations)
        self.proven.append(result is not None)
        return result


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy()
    monkeypatch.setattr(server_module, "_identify_batch", spy)
    return spy


def no_fast_path(operations: list[Any]) -> None:
    return None


# --- every batch answered and applied as the general path does ------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread(FakeConfig())
    try:
        yield thread
    finally:
        thread.close()


def send(server: ServerThread, method: str, path: str, body: bytes | None) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.url + path, data=body, method=method, headers={"Authorization": AUTH}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, orjson.loads(error.read())


# Identifiers around the limits: 150 bytes is the most, and a cio_id counts its "cio_" prefix.
PEOPLE = ["p1", "p2", "p3", "é" * 75, "é" * 75 + "x", "x" * 146, "x" * 147, "✓@example.com"]
VALID_PEOPLE = ["p1", "p2", "p3", "é" * 75, "x" * 146, "✓@example.com"]
NAMES = ["plan", "email", "id", "_update", "_timestamp", "n" * 150, "é" * 75, "n" * 151, "é" * 76]
VALID_NAMES = NAMES[:7]
SCALARS = st.one_of(
    st.text(max_size=4),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.sampled_from(["x" * 1000, "é" * 500, "\n" * 1000]),  # 1000 bytes (2000 of JSON)
)
VALUES = st.one_of(
    SCALARS,
    st.sampled_from(["", "x" * 1001, "é" * 501, {}, [], {"a": 1}, [1], "{[", "]}"]),
)


@st.composite
def valid_ops(draw: st.DrawFn) -> dict[str, Any]:
    key = draw(st.sampled_from(["id", "email", "cio_id"]))
    person = draw(st.sampled_from(VALID_PEOPLE))
    if key == "cio_id" and len(person.encode()) > 146:
        person = "abc"
    attributes = draw(st.dictionaries(st.sampled_from(VALID_NAMES), SCALARS, max_size=5))
    if attributes.get("id") == "":
        del attributes["id"]
    op = identify_op(person, key)
    op["attributes"] = attributes
    if draw(st.booleans()):
        op["timestamp"] = 1700000000  # other keys are let through
    return op


@st.composite
def any_ops(draw: st.DrawFn) -> Any:
    op: dict[str, Any] = {
        "type": draw(st.sampled_from(["person", "person", "object", 1])),
        "action": draw(st.sampled_from(["identify", "identify", "delete", None])),
        "identifiers": draw(
            st.one_of(
                st.dictionaries(
                    st.sampled_from(["id", "email", "cio_id", "object_id"]),
                    st.one_of(st.sampled_from(PEOPLE), st.sampled_from(["", 42, True, None])),
                    max_size=2,
                ),
                st.sampled_from(["p1", None, []]),
            )
        ),
        "attributes": draw(
            st.one_of(
                st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=5),
                st.sampled_from(
                    [
                        None,
                        [],
                        "x",
                        {f"a{i}": 1 for i in range(300)},
                        {f"a{i}": 1 for i in range(301)},
                        {"notes": "x" * 999, "more": "x" * 999},
                    ]
                ),
            )
        ),
    }
    for key in draw(st.sets(st.sampled_from(["type", "action", "identifiers", "attributes"]))):
        del op[key]
    if draw(st.integers(0, 9)) == 0:
        op["padding"] = "x" * 32_000  # over the operation limit
    return draw(st.one_of(st.just(op), st.sampled_from(["delete", 5, [], None])))


BATCHES = st.one_of(
    st.lists(valid_ops(), min_size=1, max_size=6),
    st.lists(st.one_of(valid_ops(), any_ops()), max_size=6),
)


def inspect(server: ServerThread, people: set[str]) -> dict[str, Any]:
    """Everything a test can read about the simulator's state, read on its loop."""

    async def take() -> dict[str, Any]:
        fake = server.fake
        return {
            "operations": fake.operations(),
            "workspace": fake.workspace(),
            "batch_accepted": list(fake.batch_accepted),
            "accepted": fake.accepted(),
            "people": {person: fake.person(person) for person in sorted(people)},
            "stats_accepted": fake.stats()["accepted"],
        }

    return server.call(take())


def run(server: ServerThread, operations: list[Any], reject: frozenset[str]) -> dict[str, Any]:
    """The state before the batch (p1 exists, p2 was deleted), the batch, what it left."""
    server.reset()
    assert send(server, "PUT", "/api/v1/customers/p1", b'{"plan":"free"}')[0] == 200
    assert send(server, "PUT", "/api/v1/customers/p2", b'{"plan":"free"}')[0] == 200
    assert send(server, "DELETE", "/api/v1/customers/p2", None)[0] == 200
    server.fake.config.reject_ids = reject
    answer = send(server, "POST", "/api/v2/batch", orjson.dumps({"batch": operations}))
    server.fake.config.reject_ids = frozenset()
    # And a change after the batch, which must come after the batch's.
    assert send(server, "PUT", "/api/v1/customers/p3", b'{"_update":true,"plan":"pro"}')[0] == 200
    people = {*PEOPLE, "cio_abc"} | {f"cio_{person}" for person in PEOPLE}
    return {"answer": answer, **inspect(server, people)}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=BATCHES, reject=st.sampled_from([frozenset(), frozenset({"p3"})]))
def test_any_batch_is_answered_and_applied_as_by_the_general_path(
    server: ServerThread, operations: list[Any], reject: frozenset[str]
) -> None:
    spy = Spy()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server_module, "_identify_batch", spy)
        fast = run(server, operations, reject)
    event(f"fast path proved the batch: {any(spy.proven)}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server_module, "_identify_batch", no_fast_path)
        general = run(server, operations, reject)
    assert fast == general
    # stats() counts what accepted() lists without building it.
    assert fast["stats_accepted"] == sum(map(len, fast["accepted"].values()))


# --- what the fast path takes, and what it leaves for later ---------------------------------


@pytest.mark.parametrize(
    "operations",
    [
        bulk_batch(1000),
        [identify_op("p", "email"), identify_op("abc", "cio_id"), identify_op("é" * 75)],
        [identify_op("p", _update=True, plan="a"), identify_op("q", _timestamp=1, plan="b")],
        [identify_op("p", notes="é" * 500, more="x" * 1000, n=1.5, b=True, z=None)],
        [identify_op("p", **{f"a{i}": i for i in range(300)})],
        [identify_op("p", plan="a"), identify_op("p", plan="b")],  # the same person twice
    ],
)
async def test_valid_identify_batches_take_the_fast_path(
    spy: Spy, operations: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[Any] = []  # operations that went through the general path's parser
    parse = server_module._parse_operation

    def counted(op: Any, whole: str) -> Any:
        parsed.append(op)
        return parse(op, whole)

    monkeypatch.setattr(server_module, "_parse_operation", counted)
    async with (
        FakeTrackAPI() as fake,
        aiohttp.ClientSession(headers={"Authorization": AUTH}) as session,
        session.post(f"{fake.url}/api/v2/batch", data=orjson.dumps({"batch": operations})) as resp,
    ):
        assert (resp.status, await resp.json()) == (200, {})
    assert spy.proven == [True]
    assert parsed == []
    assert fake.operations() == {"person identify": len(operations)}
    assert [attributes for _, attributes in fake.batch_accepted] == [
        op["attributes"] for op in operations
    ]
    # The request's body is kept as sent, parsed when read.
    (record,) = fake.requests
    assert record.body == {"batch": operations}
    assert record.size == len(record.raw)


async def test_a_lazy_batch_takes_its_place_among_later_changes() -> None:
    async with (
        FakeTrackAPI() as fake,
        aiohttp.ClientSession(headers={"Authorization": AUTH}) as session,
    ):

        async def call(method: str, path: str, body: Any = None) -> int:
            data = None if body is None else orjson.dumps(body)
            async with session.request(method, f"{fake.url}{path}", data=data) as resp:
                return resp.status

        batch = [identify_op("a", plan="1"), identify_op("b", plan="1")]
        assert await call("POST", "/api/v2/batch", {"batch": batch}) == 200
        assert await call("DELETE", "/api/v1/customers/a") == 200
        # `_update` only updates: "a" was deleted after the batch made them.
        again = [identify_op("a", _update=True, plan="2"), identify_op("b", _update=True, plan="2")]
        assert await call("POST", "/api/v2/batch", {"batch": again}) == 200
        entity = identify_op("b", plan="3")
        assert await call("POST", "/api/v2/entity", entity) == 200
        assert await call("PUT", "/api/v1/customers/c", {"plan": "4"}) == 200
        status = await call("POST", "/api/v2/batch", {"batch": [identify_op("c", plan="5")]})
        assert status == 200

    a, b = fake.person("a"), fake.person("b")
    assert a is not None and b is not None
    assert (a["deleted"], a["attributes"]) == (True, {})
    assert b["attributes"] == {"plan": "3"}
    assert [(person, attrs.get("plan")) for person, attrs in fake.batch_accepted] == [
        ("a", "1"),
        ("b", "1"),
        ("a", "2"),
        ("b", "2"),
        ("b", "3"),
        ("c", "5"),
    ]
    assert fake.accepted()["c"] == [{"plan": "4"}, {"plan": "5"}]
    assert fake.stats()["accepted"] == 7
    assert fake.operations() == {"person identify": 7, "person delete": 1}


def test_batch_accepted_can_be_read_from_another_thread(server: ServerThread) -> None:
    """A test reads batch_accepted in its own thread while the server's loop may still apply
    batches: each batch comes whole and in order."""
    server.reset()
    batches = [bulk_batch(200, start) for start in range(0, 2000, 200)]
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(len(server.fake.batch_accepted))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for batch in batches:
            assert send(server, "POST", "/api/v2/batch", orjson.dumps({"batch": batch}))[0] == 200
    finally:
        done.set()
        reader.join()
    assert all(count % 200 == 0 for count in seen)
    people = [person for person, _ in server.fake.batch_accepted]
    assert people == [f"cust-{n}" for n in range(2000)]
    assert server.workspace()["people"] == 2000
