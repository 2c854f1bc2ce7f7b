"""The simulator's `--kind` endpoints and v2 operations (design.md, "Operations: `--kind`"): each
accepted and refused with the documented validation, and what the accepted ones leave in its
in-memory workspace. A real aiohttp client over loopback, as in test_fake.py."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from yarl import URL

from bulksync.fake import FakeConfig, FakeTrackAPI
from bulksync.fake.process import ServerThread, fake_server_process

NO_BODY = object()  # send no body at all (DELETE, suppress, unsuppress)
EVENT_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"  # a ULID
ULID_ERROR = "event id must be a ULID (26 characters of Crockford base32)"
VALUE_ERROR = "value for attribute '{}' cannot be longer than 1000 bytes"
REJECTED = {"meta": {"error": "rejected by test"}}
EMPTY_WORKSPACE = {
    "people": 0,
    "objects": 0,
    "relationships": 0,
    "devices": 0,
    "events": 0,
    "events_deduplicated": 0,
    "deleted": 0,
    "suppressed": 0,
    "merged": 0,
}


def ulid(n: int) -> str:
    return f"01J{n:023d}"  # digits are Crockford base32: a valid ULID per n


def auth_headers() -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth("site", "key")}


@pytest.fixture
async def fake() -> AsyncIterator[FakeTrackAPI]:
    async with FakeTrackAPI() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=auth_headers()) as client:
        yield client


def customer(identifier: str, sub: str = "") -> str:
    """A v1 customer path, the identifier encoded like the official client."""
    return f"/api/v1/customers/{quote(identifier, safe='')}{sub}"


async def call(
    session: aiohttp.ClientSession,
    fake: FakeTrackAPI,
    method: str,
    path: str,
    body: Any = NO_BODY,
) -> tuple[int, Any]:
    """(status, parsed JSON answer) of one request; `body` is JSON-encoded unless bytes."""
    data = None if body is NO_BODY else body if isinstance(body, bytes) else orjson.dumps(body)
    # encoded=True: yarl would otherwise turn %40 back into @ (and %2F into /).
    async with session.request(
        method, URL(f"{fake.url}{path}", encoded=True), data=data, allow_redirects=False
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def identify(
    session: aiohttp.ClientSession, fake: FakeTrackAPI, person: str, attributes: dict[str, Any]
) -> None:
    assert await call(session, fake, "PUT", customer(person), attributes) == (200, {})


async def entity(
    session: aiohttp.ClientSession, fake: FakeTrackAPI, op: dict[str, Any]
) -> tuple[int, Any]:
    return await call(session, fake, "POST", "/api/v2/entity", op)


async def batch(
    session: aiohttp.ClientSession, fake: FakeTrackAPI, *ops: dict[str, Any]
) -> tuple[int, Any]:
    return await call(session, fake, "POST", "/api/v2/batch", {"batch": list(ops)})


def person_op(action: str, person: str = "42", **fields: Any) -> dict[str, Any]:
    return {"type": "person", "identifiers": {"id": person}, "action": action, **fields}


def object_op(object_id: str = "acme", **attributes: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "identifiers": {"object_type_id": "1", "object_id": object_id},
        "action": "identify",
        "attributes": attributes,
    }


def relationship_op(
    person: str = "42", object_id: str = "acme", **attributes: Any
) -> dict[str, Any]:
    relationship: dict[str, Any] = {"identifiers": {"object_type_id": "1", "object_id": object_id}}
    if attributes:
        relationship["relationship_attributes"] = attributes
    return person_op("add_relationships", person, cio_relationships=[relationship])


def refusal(field: str, message: str) -> dict[str, Any]:
    """The v2 answer body of /api/v2/entity for one refused operation."""
    return {"errors": [{"reason": "invalid", "field": field, "message": message}]}


# --- events ---------------------------------------------------------------------------------


async def test_event_is_accepted_and_kept(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    purchase = {"name": "purchase", "data": {"sku": "a1"}, "timestamp": 1700000000, "id": EVENT_ID}
    assert await call(session, fake, "POST", customer("42", "/events"), purchase) == (200, {})
    bare = {"name": "signup"}  # data, timestamp and id are optional
    assert await call(session, fake, "POST", customer("42", "/events"), bare) == (200, {})

    [first, _] = fake.requests
    assert first.identifier == "42"  # the person of a sub-resource path, for fail_first too
    person = fake.person("42")
    assert person is not None
    assert person["events"] == [
        {"name": "purchase", "id": EVENT_ID, "timestamp": 1700000000, "data": {"sku": "a1"}},
        {"name": "signup", "id": None, "timestamp": None, "data": {}},
    ]
    assert fake.workspace() == {**EMPTY_WORKSPACE, "people": 1, "events": 2}
    assert fake.operations() == Counter({"person event": 2})
    assert fake.accepted() == {}  # accepted() is about person identify only


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1]", "request body must be a JSON object"),
        (b"", "request body must be a JSON object"),
        ({}, "event name must be a non-empty string"),
        ({"name": ""}, "event name must be a non-empty string"),
        ({"name": 5}, "event name must be a non-empty string"),
        ({"name": "x" * 101}, "event name cannot be longer than 100 bytes"),
        ({"name": "é" * 51}, "event name cannot be longer than 100 bytes"),  # 102 bytes
        ({"name": "n", "data": [1]}, "data must be an object"),
        ({"name": "n", "data": None}, "data must be an object"),
        (
            {"name": "n", "data": {"k": "x" * 99_993}},
            "event data cannot be larger than 100000 bytes",
        ),
        ({"name": "n", "timestamp": "2024-01-01"}, "timestamp must be an integer (Unix seconds)"),
        ({"name": "n", "timestamp": 1.5}, "timestamp must be an integer (Unix seconds)"),
        ({"name": "n", "timestamp": True}, "timestamp must be an integer (Unix seconds)"),
        ({"name": "n", "id": EVENT_ID.lower()}, ULID_ERROR),
        ({"name": "n", "id": EVENT_ID[:-1]}, ULID_ERROR),  # 25 characters
        ({"name": "n", "id": EVENT_ID + "A"}, ULID_ERROR),
        ({"name": "n", "id": "01ARZ3NDEKTSV4RRFFQ69G5FAU"}, ULID_ERROR),  # U is not Crockford
        ({"name": "n", "id": "81ARZ3NDEKTSV4RRFFQ69G5FAV"}, ULID_ERROR),  # over 128 bits
        ({"name": "n", "id": 123}, ULID_ERROR),
        ({"name": "n", "id": "a1b2c3d4-0000-4000-8000-000000000000"}, ULID_ERROR),  # a UUID
    ],
)
async def test_event_validation(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, body: Any, message: str
) -> None:
    status, answer = await call(session, fake, "POST", customer("42", "/events"), body)
    assert (status, answer) == (400, {"meta": {"error": message}})
    assert fake.workspace() == EMPTY_WORKSPACE
    assert fake.person("42") is None
    assert fake.operations() == Counter()


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x" * 100},
        {"name": "é" * 50},  # exactly 100 bytes
        {"name": "n", "data": {"k": "x" * 99_992}},  # exactly 100,000 bytes of JSON
        {"name": "n", "timestamp": 0, "id": "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"},  # the largest ULID
        {"name": "n", "data": {"nested": {"list": [1, 2]}}},  # event data may nest
    ],
)
async def test_event_accepts_values_at_the_limits(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    if "data" in body and "k" in body["data"]:
        assert len(orjson.dumps(body["data"])) == 100_000
    assert await call(session, fake, "POST", customer("42", "/events"), body) == (200, {})
    assert fake.workspace()["events"] == 1


async def test_events_are_deduplicated_by_id(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    first = {"name": "purchase", "data": {"n": 1}, "id": ulid(1)}
    again = {
        "name": "purchase",
        "data": {"n": 2},
        "id": ulid(1),
    }  # same id: a copy, whatever it says
    for body in (first, again, {"name": "purchase", "id": ulid(2)}):
        assert await call(session, fake, "POST", customer("42", "/events"), body) == (200, {})
    # A v2 event with an id already accepted is dropped too, for any person.
    status, _ = await batch(
        session,
        fake,
        person_op("event", "42", name="purchase", id=ulid(2)),
        person_op("event", "7", name="purchase", id=ulid(1)),
        person_op("event", "7", name="refund", id=ulid(3), timestamp=5, attributes={"n": 3}),
    )
    assert status == 200

    person = fake.person("42")
    assert person is not None
    assert [(event["id"], event["data"]) for event in person["events"]] == [
        (ulid(1), {"n": 1}),
        (ulid(2), {}),
    ]
    seven = fake.person("7")
    assert seven is not None
    assert seven["events"] == [{"name": "refund", "id": ulid(3), "timestamp": 5, "data": {"n": 3}}]
    assert fake.workspace() == {
        **EMPTY_WORKSPACE,
        "people": 2,
        "events": 3,
        "events_deduplicated": 3,
    }
    # A dropped copy is still an accepted operation (answered 200).
    assert fake.operations() == Counter({"person event": 6})


# --- devices --------------------------------------------------------------------------------


async def test_device_is_added_and_replaced(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    path = customer("42", "/devices")
    phone = {"id": "tok1", "platform": "ios", "last_used": 1700000000, "attributes": {"v": "1.2"}}
    assert await call(session, fake, "PUT", path, {"device": phone}) == (200, {})
    replaced = {"id": "tok1", "platform": "android"}
    assert await call(session, fake, "PUT", path, {"device": replaced}) == (200, {})
    tablet = {"id": "tok2", "platform": "ios"}
    assert await call(session, fake, "PUT", path, {"device": tablet}) == (200, {})

    person = fake.person("42")
    assert person is not None
    assert person["devices"] == [replaced, tablet]
    assert fake.workspace() == {**EMPTY_WORKSPACE, "people": 1, "devices": 2}
    assert fake.operations() == Counter({"person add_device": 3})
    assert fake.accepted() == {}  # a PUT of devices is not an identify


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "request body must be a JSON object"),
        ({}, "device must be an object"),
        ({"device": "tok1"}, "device must be an object"),
        ({"device": {"platform": "ios"}}, "device id must be a non-empty string"),
        ({"device": {"id": "", "platform": "ios"}}, "device id must be a non-empty string"),
        ({"device": {"id": 7, "platform": "ios"}}, "device id must be a non-empty string"),
        ({"device": {"id": "t"}}, "device platform must be ios or android"),
        ({"device": {"id": "t", "platform": "web"}}, "device platform must be ios or android"),
        ({"device": {"id": "t", "platform": "iOS"}}, "device platform must be ios or android"),
        (
            {"device": {"id": "t", "platform": "ios", "last_used": "2024-01-01"}},
            "last_used must be an integer (Unix seconds)",
        ),
        (
            {"device": {"id": "t", "platform": "ios", "attributes": ["a"]}},
            "attributes must be an object",
        ),
        (
            {"device": {"id": "t", "platform": "ios", "attributes": {"bio": "x" * 1001}}},
            VALUE_ERROR.format("bio"),
        ),
    ],
)
async def test_device_validation(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, body: Any, message: str
) -> None:
    status, answer = await call(session, fake, "PUT", customer("42", "/devices"), body)
    assert (status, answer) == (400, {"meta": {"error": message}})
    assert fake.workspace() == EMPTY_WORKSPACE


# --- deletions, suppressions ----------------------------------------------------------------


async def test_delete_removes_the_person_and_identify_recreates_them(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    await identify(session, fake, "42", {"plan": "pro"})
    await call(session, fake, "POST", customer("42", "/events"), {"name": "n", "id": ulid(1)})
    await call(
        session, fake, "PUT", customer("42", "/devices"), {"device": {"id": "t", "platform": "ios"}}
    )
    assert (await entity(session, fake, relationship_op("42")))[0] == 200

    assert await call(session, fake, "DELETE", customer("42")) == (200, {})
    assert fake.person("42") == {
        "id": "42",
        "attributes": {},
        "devices": [],
        "events": [],
        "relationships": [],
        "suppressed": False,
        "deleted": True,
        "merged_into": None,
    }
    assert fake.workspace() == {**EMPTY_WORKSPACE, "deleted": 1}

    await identify(session, fake, "42", {"plan": "team"})
    person = fake.person("42")
    assert person is not None
    assert (person["attributes"], person["deleted"]) == ({"plan": "team"}, False)
    assert fake.workspace() == {**EMPTY_WORKSPACE, "people": 1}
    # The event's id stays known: the same event sent again is still a copy.
    await call(session, fake, "POST", customer("42", "/events"), {"name": "n", "id": ulid(1)})
    assert fake.workspace()["events_deduplicated"] == 1


async def test_delete_of_an_unknown_person_is_accepted_and_recorded(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    assert await call(session, fake, "DELETE", customer("ghost@example.com")) == (200, {})
    ghost = fake.person("ghost@example.com")
    assert ghost is not None
    assert ghost["deleted"] is True
    assert fake.operations() == Counter({"person delete": 1})


async def test_suppress_and_unsuppress(fake: FakeTrackAPI, session: aiohttp.ClientSession) -> None:
    await identify(session, fake, "42", {"plan": "pro"})
    assert await call(session, fake, "POST", customer("42", "/suppress")) == (200, {})
    assert await call(session, fake, "POST", customer("7", "/suppress")) == (200, {})
    person = fake.person("42")
    assert person is not None
    assert (person["suppressed"], person["attributes"]) == (True, {"plan": "pro"})  # marked only
    assert fake.workspace() == {**EMPTY_WORKSPACE, "people": 1, "suppressed": 2}

    assert await call(session, fake, "POST", customer("42", "/unsuppress")) == (200, {})
    assert (fake.person("42") or {})["suppressed"] is False
    assert fake.workspace()["suppressed"] == 1
    assert fake.operations() == Counter(
        {"person identify": 1, "person suppress": 2, "person unsuppress": 1}
    )


@pytest.mark.parametrize(("method", "sub"), [("DELETE", ""), ("POST", "/suppress")])
async def test_identifier_limits_apply_to_every_customer_path(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, method: str, sub: str
) -> None:
    status, answer = await call(session, fake, method, customer("x" * 151, sub))
    assert (status, answer) == (
        400,
        {"meta": {"error": "identifier cannot be longer than 150 bytes"}},
    )
    assert (await call(session, fake, method, customer("x" * 150, sub)))[0] == 200


# --- merges ---------------------------------------------------------------------------------


async def test_merge_moves_the_secondary_into_the_primary(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    await identify(session, fake, "1", {"plan": "pro", "name": "Ann"})
    await identify(session, fake, "ann@example.com", {"plan": "free", "city": "Oslo"})
    await call(
        session, fake, "PUT", customer("1", "/devices"), {"device": {"id": "a", "platform": "ios"}}
    )
    for device in ({"id": "a", "platform": "android"}, {"id": "b", "platform": "ios"}):
        path = customer("ann@example.com", "/devices")
        await call(session, fake, "PUT", path, {"device": device})
    event = {"name": "purchase", "id": ulid(1)}
    await call(session, fake, "POST", customer("ann@example.com", "/events"), event)
    await entity(session, fake, relationship_op("ann@example.com", "acme", role="admin"))

    body = {"primary": {"id": "1"}, "secondary": {"email": "ann@example.com"}}
    assert await call(session, fake, "POST", "/api/v1/merge_customers", body) == (200, {})

    assert fake.person("1") == {
        "id": "1",
        "attributes": {"plan": "pro", "name": "Ann", "city": "Oslo"},  # the primary wins
        "devices": [
            {"id": "a", "platform": "ios"},  # the primary's device of the same id is kept
            {"id": "b", "platform": "ios"},
        ],
        "events": [{"name": "purchase", "id": ulid(1), "timestamp": None, "data": {}}],
        "relationships": [
            {"object_type_id": "1", "object_id": "acme", "attributes": {"role": "admin"}}
        ],
        "suppressed": False,
        "deleted": False,
        "merged_into": None,
    }
    secondary = fake.person("ann@example.com")
    assert secondary is not None
    assert secondary["merged_into"] == "1"
    assert (secondary["attributes"], secondary["devices"], secondary["events"]) == ({}, [], [])
    assert fake.workspace() == {
        **EMPTY_WORKSPACE,
        "people": 1,
        "devices": 2,
        "events": 1,
        "relationships": 1,
        "merged": 1,
    }
    assert fake.operations()["person merge"] == 1


async def test_merge_writes_cio_ids_like_path_identifiers(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    await identify(session, fake, "7", {"plan": "free"})
    body = {"primary": {"cio_id": "abc"}, "secondary": {"id": "7"}}
    assert await call(session, fake, "POST", "/api/v1/merge_customers", body) == (200, {})
    assert (fake.person("7") or {})["merged_into"] == "cio_abc"
    assert (fake.person("cio_abc") or {})["attributes"] == {"plan": "free"}


async def test_merge_of_unknown_people_moves_nothing(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    body = {"primary": {"id": "1"}, "secondary": {"id": "2"}}
    assert await call(session, fake, "POST", "/api/v1/merge_customers", body) == (200, {})
    assert fake.workspace() == {**EMPTY_WORKSPACE, "merged": 1}
    assert (fake.person("2") or {})["merged_into"] == "1"


SIDE_ERROR = "{} must hold exactly one of id, email or cio_id, a non-empty string"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "request body must be a JSON object"),
        (b"", "request body must be a JSON object"),
        ({}, SIDE_ERROR.format("primary")),
        ({"primary": {"id": "1"}}, SIDE_ERROR.format("secondary")),
        (
            {"primary": {"id": "1", "email": "a@b.c"}, "secondary": {"id": "2"}},
            SIDE_ERROR.format("primary"),
        ),
        ({"primary": {"id": ""}, "secondary": {"id": "2"}}, SIDE_ERROR.format("primary")),
        ({"primary": {"id": 1}, "secondary": {"id": "2"}}, SIDE_ERROR.format("primary")),
        ({"primary": {"phone": "1"}, "secondary": {"id": "2"}}, SIDE_ERROR.format("primary")),
        ({"primary": "1", "secondary": {"id": "2"}}, SIDE_ERROR.format("primary")),
        ({"primary": {"id": "1"}, "secondary": {}}, SIDE_ERROR.format("secondary")),
        (
            {"primary": {"id": "1"}, "secondary": {"id": "x" * 151}},
            "identifier cannot be longer than 150 bytes",
        ),
        (
            {"primary": {"id": "1"}, "secondary": {"id": "1"}},
            "primary and secondary must be different people",
        ),
    ],
)
async def test_merge_validation(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, body: Any, message: str
) -> None:
    status, answer = await call(session, fake, "POST", "/api/v1/merge_customers", body)
    assert (status, answer) == (400, {"meta": {"error": message}})
    assert fake.workspace() == EMPTY_WORKSPACE


# --- objects and relationships: POST /api/v2/entity ------------------------------------------


async def test_entity_identifies_objects(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    assert await entity(session, fake, object_op("acme", name="Acme", plan="silver")) == (200, {})
    assert await entity(session, fake, object_op("acme", plan="gold")) == (200, {})
    assert await entity(session, fake, object_op("globex")) == (200, {})
    assert fake.object_attributes("1", "acme") == {"name": "Acme", "plan": "gold"}
    assert fake.object_attributes("1", "globex") == {}
    assert fake.object_attributes("2", "acme") is None
    assert fake.workspace() == {**EMPTY_WORKSPACE, "objects": 2}
    assert fake.operations() == Counter({"object identify": 3})


async def test_entity_relates_people_to_objects(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    assert await entity(session, fake, relationship_op("42", "acme", role="admin")) == (200, {})
    assert await entity(session, fake, relationship_op("42", "acme", role="owner")) == (200, {})
    assert await entity(session, fake, relationship_op("42", "globex")) == (200, {})
    person = fake.person("42")
    assert person is not None
    assert person["relationships"] == [
        {"object_type_id": "1", "object_id": "acme", "attributes": {"role": "owner"}},
        {"object_type_id": "1", "object_id": "globex", "attributes": {}},
    ]
    assert fake.workspace() == {**EMPTY_WORKSPACE, "people": 1, "relationships": 2}
    assert fake.operations() == Counter({"person add_relationships": 3})


async def test_entity_accepts_any_operation_and_person_identify_counts_as_accepted(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    op = person_op("identify", "42", attributes={"plan": "pro"})
    assert await entity(session, fake, op) == (200, {})
    assert fake.accepted() == {"42": [{"plan": "pro"}]}
    assert await entity(session, fake, person_op("delete", "42")) == (200, {})
    assert (fake.person("42") or {})["deleted"] is True


UNKNOWN_TARGET = "identifiers must hold object_type_id and object_id, non-empty strings"


@pytest.mark.parametrize(
    ("op", "field", "message"),
    [
        ([], "body", "operation must be a JSON object"),
        (None, "body", "operation must be a JSON object"),  # no body at all
        (object_op(notes="x" * 32_000), "body", "operation is larger than 32000 bytes"),
        (
            {**object_op(), "type": "company"},
            "type",
            "unknown operation: type 'company', action 'identify'",
        ),
        (
            {**object_op(), "action": "delete"},
            "action",
            "unknown operation: type 'object', action 'delete'",
        ),
        (person_op("fly"), "action", "unknown operation: type 'person', action 'fly'"),
        (
            {"type": "person", "identifiers": {"id": "42"}},
            "action",
            "unknown operation: type 'person', action None",
        ),
        (
            {**object_op(), "identifiers": {"object_type_id": "1", "object_id": ""}},
            "identifiers",
            UNKNOWN_TARGET,
        ),
        ({**object_op(), "identifiers": {"object_id": "acme"}}, "identifiers", UNKNOWN_TARGET),
        (
            {**object_op(), "identifiers": {"object_type_id": 1, "object_id": "acme"}},
            "identifiers",
            UNKNOWN_TARGET,
        ),
        ({**object_op(), "attributes": ["a"]}, "attributes", "attributes must be an object"),
        (object_op(bio="x" * 1001), "attributes", VALUE_ERROR.format("bio")),
        (
            person_op("add_relationships", cio_relationships=[]),
            "cio_relationships",
            "cio_relationships must be a non-empty array",
        ),
        (
            person_op("add_relationships"),
            "cio_relationships",
            "cio_relationships must be a non-empty array",
        ),
        (
            person_op("add_relationships", cio_relationships=[{"identifiers": {"object_id": "a"}}]),
            "cio_relationships",
            UNKNOWN_TARGET,
        ),
        (
            person_op("add_relationships", cio_relationships=["acme"]),
            "cio_relationships",
            "cio_relationships must be an object",
        ),
        (
            {**relationship_op(), "identifiers": {"id": "42", "email": "a@b.c"}},
            "identifiers",
            "identifiers must hold exactly one of id, email or cio_id",
        ),
        (
            person_op(
                "add_relationships",
                cio_relationships=[
                    {
                        "identifiers": {"object_type_id": "1", "object_id": "a"},
                        "relationship_attributes": "admin",
                    }
                ],
            ),
            "relationship_attributes",
            "relationship_attributes must be an object",
        ),
    ],
)
async def test_entity_validation(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, op: Any, field: str, message: str
) -> None:
    body = NO_BODY if op is None else op
    assert await call(session, fake, "POST", "/api/v2/entity", body) == (
        400,
        refusal(field, message),
    )
    assert fake.workspace() == EMPTY_WORKSPACE
    assert fake.operations() == Counter()


# --- v2 batch: every operation --------------------------------------------------------------


async def test_batch_applies_mixed_operations_and_lists_the_refused_one(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    await identify(session, fake, "4", {"city": "Oslo"})
    ops = [
        person_op("identify", "1", attributes={"plan": "pro"}),
        person_op("event", "1", name="purchase", id=ulid(1), timestamp=10, attributes={"sku": "a"}),
        person_op(
            "add_device", "1", device={"token": "tok", "platform": "android", "last_used": 9}
        ),
        relationship_op("1", "acme"),
        object_op("acme", name="Acme"),
        person_op("suppress", "2"),
        person_op("unsuppress", "3"),
        person_op("delete", "5"),
        {"type": "person", "action": "merge", "primary": {"id": "1"}, "secondary": {"id": "4"}},
        person_op("add_device", "1", device={"token": "tok2", "platform": "web"}),
    ]
    status, body = await batch(session, fake, *ops)
    assert (status, body) == (
        207,
        {
            "errors": [
                {
                    "batch_index": 9,
                    "reason": "invalid",
                    "field": "device",
                    "message": "device platform must be ios or android",
                }
            ]
        },
    )
    assert fake.person("1") == {
        "id": "1",
        "attributes": {"plan": "pro", "city": "Oslo"},
        "devices": [{"id": "tok", "platform": "android", "last_used": 9}],  # v2's token is the id
        "events": [{"name": "purchase", "id": ulid(1), "timestamp": 10, "data": {"sku": "a"}}],
        "relationships": [{"object_type_id": "1", "object_id": "acme", "attributes": {}}],
        "suppressed": False,
        "deleted": False,
        "merged_into": None,
    }
    assert fake.operations() == Counter(
        {
            "person identify": 2,  # the v1 identify of "4" counts too
            "person event": 1,
            "person add_device": 1,
            "person add_relationships": 1,
            "object identify": 1,
            "person suppress": 1,
            "person unsuppress": 1,
            "person delete": 1,
            "person merge": 1,
        }
    )
    assert fake.accepted() == {"4": [{"city": "Oslo"}], "1": [{"plan": "pro"}]}
    assert fake.workspace() == {
        "people": 1,
        "objects": 1,
        "relationships": 1,
        "devices": 1,
        "events": 1,
        "events_deduplicated": 0,
        "deleted": 1,
        "suppressed": 1,
        "merged": 1,
    }


@pytest.mark.parametrize(
    ("op", "field", "message"),
    [
        (person_op("event"), "name", "event name must be a non-empty string"),
        (person_op("event", name="n" * 101), "name", "event name cannot be longer than 100 bytes"),
        (person_op("event", name="n", id="nope"), "id", ULID_ERROR),
        (
            person_op("event", name="n", timestamp="1"),
            "timestamp",
            "timestamp must be an integer (Unix seconds)",
        ),
        (
            person_op("event", name="n", attributes=[1]),
            "attributes",
            "attributes must be an object",
        ),
        (
            person_op("event", name="n", data={"k": 1}, attributes="x"),
            "attributes",
            "attributes must be an object",
        ),
        (person_op("add_device"), "device", "device must be an object"),
        (
            person_op("add_device", device={"id": "tok", "platform": "ios"}),  # v1's key, not v2's
            "device",
            "device token must be a non-empty string",
        ),
        (
            person_op("add_device", device={"token": "t", "platform": "ios", "last_used": "x"}),
            "last_used",
            "last_used must be an integer (Unix seconds)",
        ),
        (
            {"type": "person", "action": "merge", "primary": {"id": "1"}},
            "secondary",
            SIDE_ERROR.format("secondary"),
        ),
        (
            {"type": "person", "identifiers": {"id": "1", "email": "a@b.c"}, "action": "delete"},
            "identifiers",
            "identifiers must hold exactly one of id, email or cio_id",
        ),
        (
            {"type": "person", "action": "suppress"},
            "identifiers",
            "identifiers must hold exactly one of id, email or cio_id",
        ),
        (
            person_op("unsuppress", "x" * 151),
            "identifiers",
            "identifier cannot be longer than 150 bytes",
        ),
        (
            person_op("identify", "x" * 151),
            "identifiers",
            "identifier cannot be longer than 150 bytes",
        ),
        (
            person_op("identify", attributes={"tags": ["a"]}),
            "attributes",
            "value for attribute 'tags' must be a string, number or boolean",
        ),
        (
            {"type": "account", "action": "identify"},
            "type",
            "unknown operation: type 'account', action 'identify'",
        ),
        ("delete", "batch", "operation must be a JSON object"),
    ],
)
async def test_batch_refuses_invalid_operations_one_by_one(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, op: Any, field: str, message: str
) -> None:
    good = person_op("event", "7", name="n", id=ulid(1))
    status, body = await call(session, fake, "POST", "/api/v2/batch", {"batch": [good, op]})
    assert (status, body) == (
        207,
        {"errors": [{"batch_index": 1, "reason": "invalid", "field": field, "message": message}]},
    )
    assert fake.operations() == Counter({"person event": 1})  # the other operation is applied
    assert fake.workspace() == {**EMPTY_WORKSPACE, "people": 1, "events": 1}


async def test_batch_poison_ids_cover_objects_and_merges(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.poison_ids = frozenset({"acme", "sec"})
    merge = {
        "type": "person",
        "action": "merge",
        "primary": {"id": "1"},
        "secondary": {"id": "sec"},
    }
    for op in (object_op("acme"), merge):
        status, body = await batch(session, fake, person_op("delete", "7"), op)
        assert status == 400
        assert body["errors"][0]["message"] == "poisoned operation (test)"
    assert fake.workspace() == EMPTY_WORKSPACE


# --- reject_ids and fail_first on every endpoint --------------------------------------------


@pytest.mark.parametrize(
    ("method", "sub", "body"),
    [
        ("POST", "/events", {"name": "n"}),
        ("PUT", "/devices", {"device": {"id": "t", "platform": "ios"}}),
        ("DELETE", "", NO_BODY),
        ("POST", "/suppress", NO_BODY),
        ("POST", "/unsuppress", NO_BODY),
        ("POST", "/events", {}),  # rejected before validation, as identify is
    ],
)
async def test_reject_ids_on_every_customer_path(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, method: str, sub: str, body: Any
) -> None:
    fake.config.reject_ids = frozenset({"bad@example.com"})
    for _ in range(2):
        status, answer = await call(session, fake, method, customer("bad@example.com", sub), body)
        assert (status, answer) == (400, REJECTED)
    assert fake.person("bad@example.com") is None
    assert fake.operations() == Counter()


@pytest.mark.parametrize("side", ["primary", "secondary"])
async def test_reject_ids_on_merges(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, side: str
) -> None:
    fake.config.reject_ids = frozenset({"bad"})
    body = {"primary": {"id": "good"}, "secondary": {"id": "other"}, side: {"id": "bad"}}
    assert await call(session, fake, "POST", "/api/v1/merge_customers", body) == (400, REJECTED)
    op = {"type": "person", "action": "merge", **body}
    assert await entity(session, fake, op) == (400, refusal("identifiers", "rejected by test"))
    assert fake.workspace() == EMPTY_WORKSPACE


async def test_reject_ids_on_entity_and_batch_operations(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.reject_ids = frozenset({"bad", "acme"})
    rejected = refusal("identifiers", "rejected by test")
    assert await entity(session, fake, object_op("acme")) == (400, rejected)
    assert await entity(session, fake, relationship_op("bad", "globex")) == (400, rejected)
    # A relationship names its person only: relating someone to a rejected object is accepted.
    assert await entity(session, fake, relationship_op("good", "acme")) == (200, {})

    status, body = await batch(
        session,
        fake,
        person_op("event", "bad", name="n"),
        person_op("event", "good", name="n"),
        object_op("acme"),
        person_op("delete", "bad"),
        object_op("globex"),
    )
    assert status == 207
    assert [error["batch_index"] for error in body["errors"]] == [0, 2, 3]
    assert {error["message"] for error in body["errors"]} == {"rejected by test"}
    assert fake.operations() == Counter(
        {"person add_relationships": 1, "person event": 1, "object identify": 1}
    )
    assert fake.person("bad") is None


async def test_fail_first_counts_by_person_on_customer_sub_paths(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    fake.config.fail_first = {"x": 2}
    statuses = []
    for method, sub, body in [
        ("POST", "/events", {"name": "n"}),
        ("PUT", "/devices", {"device": {"id": "t", "platform": "ios"}}),
        ("POST", "/suppress", NO_BODY),
    ]:
        statuses.append((await call(session, fake, method, customer("x", sub), body))[0])
    assert statuses == [503, 503, 200]
    assert [record.identifier for record in fake.requests] == ["x", "x", "x"]
    assert fake.operations() == Counter({"person suppress": 1})


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/api/v1/merge_customers", {"primary": {"id": "1"}, "secondary": {"id": "x"}}, "x"),
        ("/api/v2/entity", object_op("acme"), "acme"),
        ("/api/v2/entity", relationship_op("x", "acme"), "x"),
    ],
)
async def test_fail_first_applies_to_who_a_body_names(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, path: str, body: Any, named: str
) -> None:
    fake.config.fail_first = {named: 1}
    assert (await call(session, fake, "POST", path, body))[0] == 503
    assert (await call(session, fake, "POST", path, body))[0] == 200
    assert sum(fake.operations().values()) == 1


# --- routes, inspection, reset --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/customers/42/events"),
        ("POST", "/api/v1/customers/42"),  # identify is PUT, delete is DELETE
        ("PUT", "/api/v1/customers/42/"),
        ("POST", "/api/v1/customers/42/events/"),
        ("POST", "/api/v1/customers/42/events/x"),
        ("DELETE", "/api/v1/customers/42/devices"),
        ("PUT", "/api/v1/customers/42/suppress"),
        ("PUT", "/api/v1/merge_customers"),
        ("GET", "/api/v2/entity"),
        ("POST", "/api/v2/entity/"),
    ],
)
async def test_other_methods_and_paths_answer_404(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, method: str, path: str
) -> None:
    status, _ = await call(session, fake, method, path, {"name": "n"})
    assert status == 404
    assert fake.workspace() == EMPTY_WORKSPACE


async def test_new_endpoints_check_credentials(fake: FakeTrackAPI) -> None:
    async with aiohttp.ClientSession() as anonymous:
        for method, path in [
            ("POST", customer("42", "/events")),
            ("DELETE", customer("42")),
            ("POST", "/api/v1/merge_customers"),
            ("POST", "/api/v2/entity"),
        ]:
            assert (await call(anonymous, fake, method, path, {"name": "n"}))[0] == 401
    assert fake.workspace() == EMPTY_WORKSPACE


async def test_update_only_identify_never_creates(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    await identify(session, fake, "9", {"_update": True, "plan": "a"})
    assert fake.person("9") is None
    await identify(session, fake, "9", {"plan": "a", "_timestamp": 1700000000})
    await identify(session, fake, "9", {"_update": True, "plan": "b"})
    assert (fake.person("9") or {})["attributes"] == {"plan": "b"}  # instructions are not kept
    assert len(fake.accepted()["9"]) == 3  # accepted() still lists the bodies as sent


@pytest.mark.parametrize("identifier", ["a/b@example.com", "%40", "✓", "cio_abc"])
async def test_people_route_decodes_the_identifier_once(
    fake: FakeTrackAPI, session: aiohttp.ClientSession, identifier: str
) -> None:
    await identify(session, fake, identifier, {"plan": "pro"})
    await call(session, fake, "POST", customer(identifier, "/suppress"))
    recorded = len(fake.requests)

    status, body = await call(session, fake, "GET", f"/_fake/people/{quote(identifier, safe='')}")
    assert (status, body) == (
        200,
        {
            "id": identifier,
            "attributes": {"plan": "pro"},
            "devices": [],
            "events": [],
            "relationships": [],
            "suppressed": True,
            "deleted": False,
            "merged_into": None,
        },
    )
    assert body == fake.person(identifier)
    assert await call(session, fake, "GET", "/_fake/people/nobody") == (
        404,
        {"meta": {"error": "Not Found"}},
    )
    assert await call(session, fake, "GET", "/_fake/people/") == (
        404,
        {"meta": {"error": "Not Found"}},
    )
    assert len(fake.requests) == recorded  # inspection is not traffic


async def test_workspace_and_stats_routes(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    await identify(session, fake, "1", {"plan": "pro"})
    await call(session, fake, "POST", customer("1", "/events"), {"name": "n", "id": ulid(1)})
    await call(session, fake, "POST", customer("1", "/events"), {"name": "n", "id": ulid(1)})
    await entity(session, fake, object_op("acme"))
    recorded = len(fake.requests)

    status, workspace = await call(session, fake, "GET", "/_fake/workspace")
    assert (status, workspace) == (
        200,
        {**EMPTY_WORKSPACE, "people": 1, "events": 1, "events_deduplicated": 1, "objects": 1},
    )
    assert workspace == fake.workspace()
    status, stats = await call(session, fake, "GET", "/_fake/stats")
    assert status == 200
    assert stats["requests"] == 4
    assert stats["accepted"] == 1  # identify payloads, as before
    assert stats["operations"] == {
        "person identify": 1,
        "person event": 2,
        "person add_device": 0,
        "person delete": 0,
        "person suppress": 0,
        "person unsuppress": 0,
        "person merge": 0,
        "person add_relationships": 0,
        "object identify": 1,
    }
    assert len(fake.requests) == recorded


async def test_reset_forgets_the_workspace(
    fake: FakeTrackAPI, session: aiohttp.ClientSession
) -> None:
    await identify(session, fake, "1", {"plan": "pro"})
    await call(session, fake, "POST", customer("1", "/events"), {"name": "n", "id": ulid(1)})
    await entity(session, fake, object_op("acme"))
    fake.reset()
    assert fake.workspace() == EMPTY_WORKSPACE
    assert fake.person("1") is None
    assert fake.operations() == Counter()
    # Event ids are forgotten too: the same event is new again.
    await call(session, fake, "POST", customer("1", "/events"), {"name": "n", "id": ulid(1)})
    assert fake.workspace()["events"] == 1


async def test_person_is_a_copy(fake: FakeTrackAPI, session: aiohttp.ClientSession) -> None:
    await identify(session, fake, "1", {"plan": "pro"})
    shown = fake.person("1")
    assert shown is not None
    shown["attributes"]["plan"] = "changed"
    assert (fake.person("1") or {})["attributes"] == {"plan": "pro"}


# --- the simulator in a thread and in a process ---------------------------------------------


def put_json(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, data=orjson.dumps(body), method="PUT", headers=auth_headers()
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_server_thread_reads_the_workspace_on_its_loop() -> None:
    server = ServerThread(FakeConfig())
    try:
        url = f"{server.url}{customer('42', '/devices')}"
        assert put_json(url, {"device": {"id": "t", "platform": "ios"}}) == 200
        assert server.workspace() == {**EMPTY_WORKSPACE, "people": 1, "devices": 1}
        assert (server.person("42") or {})["devices"] == [{"id": "t", "platform": "ios"}]
        assert server.operations() == Counter({"person add_device": 1})
    finally:
        server.close()


def test_fake_server_command_rejects_the_given_identifiers() -> None:
    with fake_server_process("--reject", "bad", "--reject", "worse@example.com") as url:
        assert put_json(f"{url}{customer('bad')}", {"plan": "pro"}) == 400
        device = {"device": {"id": "t", "platform": "ios"}}
        assert put_json(f"{url}{customer('worse@example.com', '/devices')}", device) == 400
        assert put_json(f"{url}{customer('good')}", {"plan": "pro"}) == 200
        with urllib.request.urlopen(f"{url}/_fake/workspace", timeout=5) as resp:
            assert orjson.loads(resp.read())["people"] == 1
