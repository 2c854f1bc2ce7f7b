"""The simulator's fast paths for batches of person identifies, events and add_relationships
(fake/server.py, _fast_batch): a batch it proves valid is accepted without a parser call per
operation, and applied to the workspace only when something looks. Whatever the batch, the
answer and what a test can inspect afterwards must be what the general path (every operation
through _parse_operation) gives: the property test below sends each batch both ways and
compares."""

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
    """Wraps _fast_batch: what it proved (or not), call by call."""

    def __init__(self) -> None:
        self.real = server_module._fast_batch
        self.proven: list[bool] = []

    def __call__(self, operations: list[Any]) -> Any:
        result = self.real(operations)
        self.proven.append(result is not None)
        return result


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy()
    monkeypatch.setattr(server_module, "_fast_batch", spy)
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


def either(
    draw: st.DrawFn, bad: int, valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
) -> Any:
    """A valid value, or one in `bad` times (never if 0) an invalid one: a batch is then valid
    as a whole, or invalid in one or two ways."""
    return draw(invalid) if bad and draw(st.integers(0, bad - 1)) == 0 else draw(valid)


LEFT_OUT = object()  # a key left out of the operation


def person_identifiers(draw: st.DrawFn, bad: int) -> Any:
    key = draw(st.sampled_from(["id", "email", "cio_id"]))
    person = draw(st.sampled_from(VALID_PEOPLE))
    if key == "cio_id" and len(person.encode()) > 146:
        person = "abc"
    return either(
        draw,
        bad,
        st.just({key: person}),
        st.one_of(
            st.dictionaries(
                st.sampled_from(["id", "email", "cio_id", "object_id"]),
                st.one_of(st.sampled_from(PEOPLE), st.sampled_from(["", 42, True, None])),
                max_size=2,
            ),
            st.sampled_from(["p1", None, [], LEFT_OUT]),
        ),
    )


def put(op: dict[str, Any], key: str, value: Any) -> None:
    if value is not LEFT_OUT:
        op[key] = value


# ULIDs: E1 is held before the batch, E2 is sent after it (v1), so either, sent in a batch,
# shows whether the batch takes its place between the two.
E1, E2 = "01ARZ3NDEKTSV4RRFFQ69G5FAV", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
EVENT_IDS = [E1, E2, "0" * 26, "01HZY8Q2W3E4R5T6Y7V8J9K0PA"]
BAD_EVENT_IDS = [
    "",
    "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",  # over 128 bits
    E1.lower(),
    "01ARZ3NDEKTSV4RRFFQ69G5FAI",  # I is not Crockford
    E1[:25],
    E1 + "0",
    "é" * 26,
    "01ARZ3NDEKTSV4RRFFQ69G5FA\n",
    26,
    None,
    True,
]
EVENT_NAMES = ["purchase", "n" * 100, "é" * 50, "a b"]
BAD_EVENT_NAMES = ["", "n" * 101, "é" * 51, 5, None, ["purchase"], LEFT_OUT]
EVENT_DATA = st.dictionaries(
    st.sampled_from(NAMES), st.one_of(VALUES, st.just({"nested": [1, {"a": None}]})), max_size=4
)


@st.composite
def event_ops(draw: st.DrawFn, bad: int = 12) -> Any:
    """A person event as bulksync sends it, or one with one of its fields wrong."""
    op: dict[str, Any] = {}
    put(op, "type", either(draw, bad, st.just("person"), st.sampled_from(["object", 1, LEFT_OUT])))
    put(op, "identifiers", person_identifiers(draw, bad))
    put(
        op,
        "action",
        either(draw, bad, st.just("event"), st.sampled_from(["Event", "identify", None])),
    )
    put(
        op,
        "name",
        either(draw, bad, st.sampled_from(EVENT_NAMES), st.sampled_from(BAD_EVENT_NAMES)),
    )
    put(
        op,
        "id",
        either(draw, bad, st.sampled_from([*EVENT_IDS, LEFT_OUT]), st.sampled_from(BAD_EVENT_IDS)),
    )
    put(
        op,
        "timestamp",
        either(
            draw,
            bad,
            st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), st.just(LEFT_OUT)),
            st.sampled_from([True, 1.5, 1e9, "1700000000", None]),
        ),
    )
    put(
        op,
        "attributes",
        either(
            draw,
            bad,
            st.one_of(EVENT_DATA, st.just(LEFT_OUT)),
            st.sampled_from([None, [], "x", [{"a": 1}]]),
        ),
    )
    if draw(st.integers(0, 11)) == 0:
        op["padding"] = draw(st.sampled_from(["x" * 32_000, "x" * 31_700]))  # around the limit
    return either(draw, bad, st.just(op), st.sampled_from(["event", 5, [], None]))


@st.composite
def relationship_items(draw: st.DrawFn, bad: int = 12) -> Any:
    item: dict[str, Any] = {}
    target = {
        "object_type_id": either(
            draw,
            bad,
            st.sampled_from(["1", "é", "t" * 200]),
            st.sampled_from(["", 1, None, LEFT_OUT]),
        ),
        "object_id": either(
            draw, bad, st.sampled_from(["c1", "c2", "✓"]), st.sampled_from(["", 2, [], LEFT_OUT])
        ),
    }
    target = {key: value for key, value in target.items() if value is not LEFT_OUT}
    if draw(st.integers(0, 5)) == 0:
        target["other"] = "kept out of the key"
    put(
        item,
        "identifiers",
        either(draw, bad, st.just(target), st.sampled_from([None, "c1", LEFT_OUT])),
    )
    put(
        item,
        "relationship_attributes",
        either(
            draw,
            bad,
            st.one_of(
                st.dictionaries(st.sampled_from(VALID_NAMES), SCALARS, max_size=4),
                st.just(LEFT_OUT),
            ),
            st.one_of(
                st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=4),
                st.sampled_from(
                    [
                        None,
                        [],
                        {f"a{i}": 1 for i in range(300)},
                        {f"a{i}": 1 for i in range(301)},
                        {"notes": "x" * 999, "more": "é" * 500},
                    ]
                ),
            ),
        ),
    )
    return either(draw, bad, st.just(item), st.sampled_from([None, "c1", []]))


@st.composite
def relationship_ops(draw: st.DrawFn, bad: int = 12) -> Any:
    """A person add_relationships as bulksync sends it (one relationship; the API takes more),
    or one with one of its fields wrong."""
    op: dict[str, Any] = {}
    put(op, "type", either(draw, bad, st.just("person"), st.sampled_from(["object", LEFT_OUT])))
    put(op, "identifiers", person_identifiers(draw, bad))
    put(
        op,
        "action",
        either(
            draw, bad, st.just("add_relationships"), st.sampled_from(["add_relationship", None])
        ),
    )
    put(
        op,
        "cio_relationships",
        either(
            draw,
            bad,
            st.lists(relationship_items(bad), min_size=1, max_size=3),
            st.sampled_from([[], None, {"identifiers": {}}, LEFT_OUT]),
        ),
    )
    if draw(st.integers(0, 11)) == 0:
        op["padding"] = draw(st.sampled_from(["x" * 32_000, "x" * 31_700]))
    return either(draw, bad, st.just(op), st.sampled_from(["add_relationships", 5, None]))


BATCHES = st.one_of(
    st.lists(valid_ops(), min_size=1, max_size=6),
    st.lists(st.one_of(valid_ops(), any_ops()), max_size=6),
    st.lists(event_ops(bad=0), min_size=1, max_size=6),
    st.lists(event_ops(), min_size=1, max_size=6),
    st.lists(relationship_ops(bad=0), min_size=1, max_size=6),
    st.lists(relationship_ops(), min_size=1, max_size=6),
    # Valid operations and one that may be wrong in one field.
    st.tuples(st.lists(event_ops(bad=0), max_size=3), event_ops(bad=6)).map(
        lambda ops: [*ops[0], ops[1]]
    ),
    st.tuples(st.lists(relationship_ops(bad=0), max_size=3), relationship_ops(bad=6)).map(
        lambda ops: [*ops[0], ops[1]]
    ),
    st.lists(st.one_of(valid_ops(), event_ops(), relationship_ops()), min_size=1, max_size=4),
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
            # And what it holds, in the order it holds it.
            "held": {
                name: list(value.items()) if isinstance(value, dict) else value
                for name, value in vars(fake._settled()).items()
            },
            "stats_accepted": fake.stats()["accepted"],
        }

    return server.call(take())


def run(server: ServerThread, operations: list[Any], reject: frozenset[str]) -> dict[str, Any]:
    """The state before the batch (p1 exists, with event E1 and a relationship to c1, p2 was
    deleted), the batch, what it left."""
    server.reset()
    assert send(server, "PUT", "/api/v1/customers/p1", b'{"plan":"free"}')[0] == 200
    assert send(server, "PUT", "/api/v1/customers/p2", b'{"plan":"free"}')[0] == 200
    assert send(server, "DELETE", "/api/v1/customers/p2", None)[0] == 200
    event = orjson.dumps({"name": "signup", "id": E1})
    assert send(server, "POST", "/api/v1/customers/p1/events", event)[0] == 200
    related = {
        "type": "person",
        "identifiers": {"id": "p1"},
        "action": "add_relationships",
        "cio_relationships": [{"identifiers": {"object_type_id": "1", "object_id": "c1"}}],
    }
    assert send(server, "POST", "/api/v2/entity", orjson.dumps(related))[0] == 200
    server.fake.config.reject_ids = reject
    answer = send(server, "POST", "/api/v2/batch", orjson.dumps({"batch": operations}))
    server.fake.config.reject_ids = frozenset()
    # And changes after the batch, which must come after the batch's.
    assert send(server, "PUT", "/api/v1/customers/p3", b'{"_update":true,"plan":"pro"}')[0] == 200
    event = orjson.dumps({"name": "later", "id": E2})
    assert send(server, "POST", "/api/v1/customers/p3/events", event)[0] == 200
    people = {*PEOPLE, "cio_abc"} | {f"cio_{person}" for person in PEOPLE}
    return {"answer": answer, **inspect(server, people)}


def both_ways(
    server: ServerThread, operations: list[Any], reject: frozenset[str] = frozenset()
) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    """run() through the fast path, then through the general path: (whether the fast path
    proved the batch, what each left)."""
    spy = Spy()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server_module, "_fast_batch", spy)
        fast = run(server, operations, reject)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server_module, "_fast_batch", no_fast_path)
        general = run(server, operations, reject)
    return bool(spy.proven and spy.proven[0]), fast, general  # [0]: the batch, as received


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=BATCHES, reject=st.sampled_from([frozenset(), frozenset({"p3"})]))
def test_any_batch_is_answered_and_applied_as_by_the_general_path(
    server: ServerThread, operations: list[Any], reject: frozenset[str]
) -> None:
    proven, fast, general = both_ways(server, operations, reject)
    first = operations[0].get("action") if operations and isinstance(operations[0], dict) else None
    event(f"fast path proved the batch: {proven} (first action: {first!r})")
    assert fast == general
    # stats() counts what accepted() lists without building it.
    assert fast["stats_accepted"] == sum(map(len, fast["accepted"].values()))


def event_op(person: str = "p1", **fields: Any) -> dict[str, Any]:
    """A person event as bulksync sends it (`fields` replace or add; LEFT_OUT removes)."""
    op = {
        "type": "person",
        "identifiers": {"id": person},
        "action": "event",
        "name": "purchase",
        "id": E2,
        "timestamp": 1_700_000_000,
        "attributes": {"sku": "sku-1", "total": "1.99"},
    }
    op.update(fields)
    return {key: value for key, value in op.items() if value is not LEFT_OUT}


def relationship_op(person: str = "p1", **fields: Any) -> dict[str, Any]:
    """A person add_relationships as bulksync sends it, its relationship's fields replaced."""
    item: dict[str, Any] = {
        "identifiers": {"object_type_id": "1", "object_id": "c2"},
        "relationship_attributes": {"role": "member"},
    }
    target = {**item["identifiers"], **fields.pop("target", {})}
    item["identifiers"] = {key: value for key, value in target.items() if value is not LEFT_OUT}
    item.update(fields.pop("item", {}))
    op = {
        "type": "person",
        "identifiers": {"id": person},
        "action": "add_relationships",
        "cio_relationships": [{key: value for key, value in item.items() if value is not LEFT_OUT}],
    }
    op.update(fields)
    return {key: value for key, value in op.items() if value is not LEFT_OUT}


ONE_FIELD_WRONG = [
    *(event_op(type=value) for value in ["object", 1, LEFT_OUT]),
    *(event_op(action=value) for value in ["Event", "add_device", None, LEFT_OUT]),
    *(event_op(identifiers=value) for value in [{"id": ""}, {"id": 1.5}, {"id": "x" * 151}, {}]),
    *(event_op(name=value) for value in BAD_EVENT_NAMES),
    *(event_op(id=value) for value in BAD_EVENT_IDS),
    *(event_op(timestamp=value) for value in [True, 1.5, 1e9, "1700000000", None]),
    *(event_op(attributes=value) for value in [None, [], "x", [{"a": 1}]]),
    event_op(padding="x" * 32_000),
    *(relationship_op(cio_relationships=value) for value in [[], None, {}, "c1", LEFT_OUT]),
    *(relationship_op(cio_relationships=[value]) for value in [None, "c1", [], {}]),
    *(relationship_op(target={"object_type_id": value}) for value in ["", 1, None, LEFT_OUT]),
    *(relationship_op(target={"object_id": value}) for value in ["", 2, [], LEFT_OUT]),
    *(
        relationship_op(item={"relationship_attributes": value})
        for value in [
            None,
            [],
            {"a": {}},
            {"a": [1]},
            {"n" * 151: 1},
            {"a": "x" * 1001},
            {f"a{i}": 1 for i in range(301)},
        ]
    ),
    *(relationship_op(item={"identifiers": value}) for value in [None, "c1", []]),
    relationship_op(padding="x" * 32_000),
]


@pytest.mark.parametrize("wrong", ONE_FIELD_WRONG)
@pytest.mark.parametrize("position", [0, 1])
def test_a_batch_with_one_field_wrong_is_answered_as_by_the_general_path(
    server: ServerThread, wrong: dict[str, Any], position: int
) -> None:
    """Every rule, one at a time: a batch of valid operations and one operation wrong in one
    field is refused that operation (207), as the general path refuses it."""
    valid = event_op if wrong.get("action") != "add_relationships" else relationship_op
    operations = [valid("p3"), valid("p4")]
    operations.insert(position, wrong)
    proven, fast, general = both_ways(server, operations)
    assert not proven
    assert fast == general
    assert fast["answer"][0] == 207


@pytest.mark.parametrize(
    "operations",
    [
        [event_op(), event_op("p3", id=LEFT_OUT, timestamp=LEFT_OUT, attributes=LEFT_OUT)],
        [event_op(id=E1), event_op("p2", id=E2), event_op("p3", id=E2)],  # dropped: held, sent
        [relationship_op(), relationship_op("p2", item={"relationship_attributes": LEFT_OUT})],
        [relationship_op(target={"object_id": "c1"}), relationship_op(target={"other": "x"})],
    ],
)
def test_valid_event_and_relationship_batches_take_the_fast_path(
    server: ServerThread, operations: list[dict[str, Any]]
) -> None:
    proven, fast, general = both_ways(server, operations)
    assert proven
    assert fast == general
    assert fast["answer"] == (200, {})


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
