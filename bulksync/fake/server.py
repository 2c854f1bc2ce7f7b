"""A local Customer.io Track API simulator for tests, benchmarks and demos.

It speaks real HTTP on a loopback socket, so the client under test runs its real aiohttp stack
(connection pool, timeouts, disconnects) instead of a mock. The behaviour follows the project's
Track API notes (track-api.md) and the `--kind` contract (design.md, "Operations: `--kind`"):
Basic auth, `GET /api/v1/accounts/region`, and every endpoint a kind sends to, each answering
the documented 400s:

    PUT    /api/v1/customers/{id}             person identify
    POST   /api/v1/customers/{id}/events      person event (dropped if its `id` was accepted)
    PUT    /api/v1/customers/{id}/devices     person add_device
    DELETE /api/v1/customers/{id}             person delete
    POST   /api/v1/customers/{id}/suppress    person suppress
    POST   /api/v1/customers/{id}/unsuppress  person unsuppress
    POST   /api/v1/merge_customers            person merge
    POST   /api/v2/entity                     one v2 operation (objects, relationships...)
    POST   /api/v2/batch                      v2 operations: 200, 207 naming the refused, or 400

Every request goes through one pipeline:

    record arrival -> _admit (auth, rate limit, faults, latency) -> route handler -> record status

A handler turns the request into a `_Change` (or a refusal) with the parsers of the v2 operation
table (`_OPERATIONS`) or the v1 route table (`_CUSTOMER_ROUTES`), so a new operation is one
parser and one table line. Accepted changes are applied to a small in-memory workspace (people,
devices, events, objects, relationships, deletions, suppressions, merges), so a test can check
what a run left behind and not only what it sent. A batch of person identifies, what bulksync
sends most, takes a fast path (`_identify_batch`), and so does one of person events
(`_event_batch`) or of person add_relationships (`_relationship_batch`): proven valid as a
whole (`_fast_batch`), it is kept as the bytes received and applied to the workspace in its turn
when something first reads it (`_settled`). The simulator's own routes, not recorded:

    GET /_fake/stats        requests, statuses, peak per second, accepted payloads and operations,
                            the simulator's CPU seconds
    GET /_fake/accepted     identifier -> attributes accepted by person identify, in order
    GET /_fake/workspace    what the workspace holds (counts)
    GET /_fake/people/{id}  one person as the workspace holds them (404 if never named)

Misbehaviour is driven by `FakeConfig`, which tests may change while the server runs
(`fake.config.fail_503 = 0`). Random faults come from `random.Random(seed)` so a run is
reproducible for a given order of requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import gc
import random
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from operator import itemgetter, methodcaller
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import hdrs, web

__all__ = [
    "FakeConfig",
    "FakeTrackAPI",
    "Recorded",
    "peak_in_window",
    "run_fake_server",
]

CUSTOMERS_PREFIX = "/api/v1/customers/"
REGION_PATH = "/api/v1/accounts/region"
MERGE_PATH = "/api/v1/merge_customers"
BATCH_PATH = "/api/v2/batch"
ENTITY_PATH = "/api/v2/entity"
STATS_PATH = "/_fake/stats"
ACCEPTED_PATH = "/_fake/accepted"  # identifier -> every payload accepted for it, in order
WORKSPACE_PATH = "/_fake/workspace"
PEOPLE_PREFIX = "/_fake/people/"  # + the percent-encoded identifier, as in a v1 path

# Limits documented by Customer.io for v1 identify (see track-api.md, "Limits").
MAX_IDENTIFIER_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
# v2 batch limits (track-api.md: "< 500 KB" a request, "<= 32 KB" an operation; whether KB is
# 1000 or 1024 is unconfirmed, so the simulator holds clients to the stricter reading).
MAX_BATCH_BYTES = 500_000
MAX_OPERATION_BYTES = 32_000
IDENTIFIER_KEYS = ("id", "email", "cio_id")
# Limits of the other kinds (design.md, "Operations: `--kind`").
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
PLATFORMS = ("ios", "android")
# Customer.io drops an event whose `id` it has already accepted; the id is a ULID: 26 Crockford
# base32 characters (no I, L, O, U), the first at most 7 so that it fits 128 bits.
EVENT_ID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
# Reserved identify keys that steer the call rather than describe the person (track-api.md).
INSTRUCTION_KEYS = ("_update", "_timestamp")
REJECTED = "rejected by test"
# aiohttp waits this long for in-flight handlers on stop() before cancelling them. Its default
# (60 s) would make every test that leaves a slow request behind hang for a minute.
SHUTDOWN_TIMEOUT = 0.5

# Status recorded for a request that got no HTTP answer (dropped, or the client left first).
NO_ANSWER = 0


@dataclass
class FakeConfig:
    """How the simulator behaves. Mutable: changes apply to the next request."""

    site_id: str = "site"
    api_key: str = "key"
    region: str = "us"
    environment_id: int = 123
    # Max requests admitted in any sliding 1-second window; the excess answers 429.
    rate_limit: float | None = None
    # A limit that changes during a run, as a workspace's does when its other traffic comes and
    # goes: (seconds after the first request, limit) pairs, each in force until the next. Before
    # the first pair's time, `rate_limit` holds. A new schedule takes effect on reset().
    limit_schedule: tuple[tuple[float, float | None], ...] = ()
    # Seconds sent in `Retry-After` on 429 answers; None sends no header (the real API's
    # behaviour here is unconfirmed, so clients must handle both).
    retry_after: float | None = None
    # Every answer waits latency + uniform(0, jitter) seconds.
    latency: float = 0.0
    jitter: float = 0.0
    # Fault injection: fractions of admitted requests. One random draw per admitted request
    # picks at most one fault, so the fractions are additive and a seed replays the same faults.
    # A new seed takes effect on FakeTrackAPI.reset().
    seed: int = 0
    fail_500: float = 0.0
    fail_503: float = 0.0
    fail_429: float = 0.0
    drop: float = 0.0  # close the connection without answering
    slow: float = 0.0  # answer normally, but only after slow_seconds
    slow_seconds: float = 30.0
    # Deterministic failures keyed by identifier: a terminal 400, or N transient 503s first.
    # They apply to every request and v2 operation naming the identifier: a person (in the path
    # or `identifiers`), a merge's primary or secondary, an object's object_id.
    reject_ids: frozenset[str] = frozenset()
    fail_first: dict[str, int] = field(default_factory=dict)
    # A batch naming any of these identifiers is refused whole (400), as a malformed one is.
    poison_ids: frozenset[str] = frozenset()
    # Bytes of spaces after each answer's JSON (still valid JSON): an API answering megabytes.
    answer_padding: int = 0


class _Unparsed:
    """Recorded._body until `body` is first read."""

    def __repr__(self) -> str:
        return "<not parsed yet>"


_UNPARSED = _Unparsed()


@dataclass
class Recorded:
    """One request as the simulator saw it."""

    method: str
    path: str  # raw (still percent-encoded) path, without the query string
    identifier: str | None  # decoded customer identifier, None for other routes
    _body: Any  # `body` once parsed, or _UNPARSED
    time: float  # time.monotonic() at arrival
    status: int = NO_ANSWER  # status answered; NO_ANSWER if the connection was dropped
    auth_ok: bool = False
    size: int = 0  # bytes of the request body, as received
    raw: bytes = field(default=b"", repr=False)  # the request body, as received

    @property
    def body(self) -> Any:
        """The body's JSON, or None if absent or not valid JSON. Parsed from `raw` when first
        read, then kept: a run's batches are kept as bytes until a test looks at them, not as
        the millions of objects their JSON makes, which the garbage collector would walk again
        and again (the batch handler parses its own copy and lets it go)."""
        if self._body is _UNPARSED:
            self._body = _parse_json(self.raw)
        return self._body


Handler = Callable[[web.Request, Recorded], Awaitable[web.Response]]


class _Drop(Exception):
    """Raised by _admit when the connection must be closed without an answer."""


def peak_in_window(times: list[float], window: float = 1.0) -> int:
    """Most timestamps that fall in any half-open window [t, t + window)."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        # Times in one window differ by less than `window`; drop the ones too old for `t`.
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"meta": {"error": message}}, headers)


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _batch_error(status: int, field_name: str, message: str) -> web.Response:
    return _json(
        status, {"errors": [{"reason": "invalid", "field": field_name, "message": message}]}
    )


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# --- the workspace ----------------------------------------------------------------------------


class _Workspace:
    """What the accepted operations left behind: the part of a Customer.io workspace a migration
    can be checked against. Identifiers are written like v1 path identifiers (cio_ids prefixed)."""

    def __init__(self) -> None:
        self.people: dict[str, dict[str, Any]] = {}  # identifier -> attributes
        self.devices: dict[str, dict[str, dict[str, Any]]] = {}  # identifier -> id -> device
        self.events: dict[str, list[dict[str, Any]]] = {}  # identifier -> events, in order
        self.event_ids: set[str] = set()  # every event id accepted: Customer.io's dedupe key
        self.duplicates = 0  # events answered 200 but dropped, their id already accepted
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}  # (type id, id) -> attributes
        # (person, object_type_id, object_id) -> relationship attributes
        self.relationships: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.deleted: set[str] = set()
        self.suppressed: set[str] = set()
        self.merged: dict[str, str] = {}  # secondary -> primary
        self.seen: set[str] = set()  # every person an accepted operation named

    def _profile(self, person: str) -> dict[str, Any]:
        """The person's attributes, making the profile if there is none. One rule for every
        operation that adds data about someone (identify, event, device, relationship, merge):
        it makes the person exist, again if they were deleted."""
        self.seen.add(person)
        self.deleted.discard(person)
        return self.people.setdefault(person, {})

    def _take(
        self, person: str
    ) -> tuple[
        dict[str, Any] | None,
        dict[str, dict[str, Any]],
        list[dict[str, Any]],
        dict[tuple[str, str], dict[str, Any]],
    ]:
        """Remove and return everything held about `person`: attributes (None without a
        profile), devices, events and relationships (keyed by object)."""
        relationships = {
            (type_id, object_id): self.relationships.pop((who, type_id, object_id))
            for who, type_id, object_id in list(self.relationships)
            if who == person
        }
        return (
            self.people.pop(person, None),
            self.devices.pop(person, {}),
            self.events.pop(person, []),
            relationships,
        )

    def identify(self, person: str, attributes: dict[str, Any]) -> None:
        if attributes.get("_update") is True and person not in self.people:
            return  # `_update: true` only updates: it never creates (nor re-creates) a person
        if any(key in attributes for key in INSTRUCTION_KEYS):
            attributes = {k: v for k, v in attributes.items() if k not in INSTRUCTION_KEYS}
        self._profile(person).update(attributes)

    def identify_all(
        self, people: list[str], attributes: Sequence[dict[str, Any]], *, instructions: bool
    ) -> None:
        """identify() each person in turn. Without an instruction key in any of the attributes,
        a profile is only made or updated, so the seen and deleted sets can be updated once for
        the whole batch: nothing in between reads them."""
        if instructions:
            for person, attrs in zip(people, attributes, strict=True):
                self.identify(person, attrs)
            return
        profiles = self.people
        for person, attrs in zip(people, attributes, strict=True):
            profile = profiles.get(person)
            if profile is None:
                profiles[person] = dict(attrs)  # a copy: the request's own dict stays as sent
            else:
                profile.update(attrs)
        self.seen.update(people)
        if self.deleted:
            self.deleted.difference_update(people)

    def event(self, person: str, event: dict[str, Any]) -> None:
        event_id = event["id"]
        if event_id is not None:
            if event_id in self.event_ids:
                self.duplicates += 1
                return
            self.event_ids.add(event_id)
        self._profile(person)
        self.events.setdefault(person, []).append(event)

    def add_device(self, person: str, device: dict[str, Any]) -> None:
        self._profile(person)
        # A device sent again replaces the one held: a device row describes the whole device.
        self.devices.setdefault(person, {})[device["id"]] = device

    def relate(self, person: str, target: tuple[str, str], attributes: dict[str, Any]) -> None:
        self._profile(person)
        self.relationships[(person, *target)] = attributes

    def identify_object(self, target: tuple[str, str], attributes: dict[str, Any]) -> None:
        self.objects.setdefault(target, {}).update(attributes)

    def delete(self, person: str) -> None:
        self._take(person)
        self.seen.add(person)
        self.deleted.add(person)

    def suppress(self, person: str) -> None:
        # Customer.io also deletes a suppressed person's profile. The simulator only marks them:
        # simpler, and a test still sees what the person had when they were suppressed.
        self.seen.add(person)
        self.suppressed.add(person)

    def unsuppress(self, person: str) -> None:
        self.seen.add(person)
        self.suppressed.discard(person)

    def merge(self, primary: str, secondary: str) -> None:
        self.seen.update((primary, secondary))
        self.merged[secondary] = primary
        attributes, devices, events, relationships = self._take(secondary)
        if attributes is None and not (devices or events or relationships):
            return  # nothing was known about the secondary: nothing moves
        target = self._profile(primary)
        for name, value in (attributes or {}).items():
            target.setdefault(name, value)  # the primary wins on conflicts
        if devices:
            held = self.devices.setdefault(primary, {})
            for device_id, device in devices.items():
                held.setdefault(device_id, device)
        if events:
            self.events.setdefault(primary, []).extend(events)
        for (type_id, object_id), relationship in relationships.items():
            self.relationships.setdefault((primary, type_id, object_id), relationship)

    def summary(self) -> dict[str, int]:
        return {
            "people": len(self.people),
            "objects": len(self.objects),
            "relationships": len(self.relationships),
            "devices": sum(len(devices) for devices in self.devices.values()),
            "events": sum(len(events) for events in self.events.values()),
            "events_deduplicated": self.duplicates,
            "deleted": len(self.deleted),
            "suppressed": len(self.suppressed),
            "merged": len(self.merged),
        }

    def person(self, person: str) -> dict[str, Any] | None:
        if person not in self.seen:
            return None
        shown = {
            "id": person,
            "attributes": self.people.get(person, {}),
            "devices": list(self.devices.get(person, {}).values()),
            "events": self.events.get(person, []),
            "relationships": [
                {"object_type_id": type_id, "object_id": object_id, "attributes": attributes}
                for (who, type_id, object_id), attributes in self.relationships.items()
                if who == person
            ],
            "suppressed": person in self.suppressed,
            "deleted": person in self.deleted,
            "merged_into": self.merged.get(person),
        }
        return copy.deepcopy(shown)  # the caller may change it; the workspace must not change


# --- validation: a request or operation becomes a _Change, or is refused ----------------------


class _Refused(Exception):
    """The API would refuse this request or operation: the field at fault and the 400 message."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class _Change:
    """What an accepted request or operation does to the workspace."""

    action: str  # "type action" of the operation (a v1 request's equivalent), e.g. "person event"
    apply: Callable[[_Workspace], None]
    # For a person identify, (identifier, attributes): what accepted() reports for v2.
    identified: tuple[str, dict[str, Any]] | None = None


def _identifier_of(identifiers: Any, *, numbers: bool = True) -> str | None:
    """The person named by a `{"id"|"email"|"cio_id": value}` object, written like a v1 path
    identifier (cio_ids prefixed), or None if it does not name exactly one person."""
    if not isinstance(identifiers, dict) or len(identifiers) != 1:
        return None
    ((key, value),) = identifiers.items()
    allowed = (str, int) if numbers else (str,)
    if key not in IDENTIFIER_KEYS or not isinstance(value, allowed) or value == "":
        return None
    return f"cio_{value}" if key == "cio_id" else str(value)


def _operation_identifier(op: Any) -> str | None:
    """The person an operation's `identifiers` names, written like a v1 path identifier."""
    return _identifier_of(op.get("identifiers")) if isinstance(op, dict) else None


def _merge_names(body: Any) -> list[str]:
    """The primary and secondary a merge names (those that are well formed)."""
    if not isinstance(body, dict):
        return []
    sides = (_identifier_of(body.get(side), numbers=False) for side in ("primary", "secondary"))
    return [name for name in sides if name is not None]


def _named(op: Any) -> list[str]:
    """Who an operation names: its person, a merge's primary and secondary, an object's
    object_id. reject_ids, poison_ids and fail_first apply to these. A relationship names its
    person only: rejecting an object must not also refuse everyone related to it."""
    if not isinstance(op, dict):
        return []
    if op.get("type") == "object":
        identifiers = op.get("identifiers")
        object_id = identifiers.get("object_id") if isinstance(identifiers, dict) else None
        return [object_id] if isinstance(object_id, str) and object_id else []
    if op.get("action") == "merge":
        return _merge_names(op)
    person = _operation_identifier(op)
    return [] if person is None else [person]


def _request_names(path: str, body: Any) -> set[str]:
    """Who a request without an identifier in its path names, read from its body."""
    if path == BATCH_PATH:
        operations = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(operations, list):
            return set()
        return {name for op in operations for name in _named(op)}
    if path == ENTITY_PATH:
        return set(_named(body))
    if path == MERGE_PATH:
        return set(_merge_names(body))
    return set()


def _identifier_error(identifier: str) -> str | None:
    if identifier == "":
        return "id attribute cannot be an empty string"
    if _utf8_len(identifier) > MAX_IDENTIFIER_BYTES:
        return f"identifier cannot be longer than {MAX_IDENTIFIER_BYTES} bytes"
    return None


def _attributes_error(attributes: dict[str, Any]) -> str | None:
    """The 400 message for attributes over the documented limits, or None if they are valid.
    Applied to people, objects, devices and relationships alike (the client checks them all)."""
    if len(attributes) > MAX_ATTRIBUTES:
        return f"cannot identify more than {MAX_ATTRIBUTES} attributes in one request"
    for name, value in attributes.items():
        # A character is at most 4 bytes of UTF-8: shorter text is measured without encoding
        # it (a batch of a thousand people has ten thousand of them).
        if len(name) * 4 > MAX_ATTRIBUTE_NAME_BYTES and _utf8_len(name) > MAX_ATTRIBUTE_NAME_BYTES:
            return f"attribute name cannot be longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes"
        if isinstance(value, dict | list):
            return f"value for attribute '{name}' must be a string, number or boolean"
        if isinstance(value, str):
            if len(value) * 4 <= MAX_VALUE_BYTES:
                continue
            size = _utf8_len(value)
        else:
            size = len(orjson.dumps(value))
        if size > MAX_VALUE_BYTES:
            return f"value for attribute '{name}' cannot be longer than {MAX_VALUE_BYTES} bytes"
    return None


def _identify_error(identifier: str, body: Any) -> str | None:
    """The 400 message the Track API gives for this identify call, or None if it is valid."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if body.get("id") == "":
        return "id attribute cannot be an empty string"
    return _identifier_error(identifier) or _attributes_error(body)


def _check(message: str | None, field_name: str) -> None:
    if message is not None:
        raise _Refused(field_name, message)


def _object(value: Any, field_name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Refused(field_name, f"{field_name} must be an object")
    return value


def _unix_seconds(value: Any, field_name: str) -> int:
    if type(value) is not int:  # bool is an int subclass, and not a time
        raise _Refused(field_name, f"{field_name} must be an integer (Unix seconds)")
    return value


def _body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Refused("body", "request body must be a JSON object")
    return body


def _check_identifier(identifier: str) -> None:
    _check(_identifier_error(identifier), "identifiers")


def _person(op: dict[str, Any]) -> str:
    """The person a v2 operation's `identifiers` names (checked as a v1 path identifier is)."""
    person = _operation_identifier(op)
    if person is None:
        raise _Refused("identifiers", "identifiers must hold exactly one of id, email or cio_id")
    _check(_identifier_error(person), "identifiers")
    return person


def _object_target(identifiers: Any, field_name: str) -> tuple[str, str]:
    """(object_type_id, object_id) of an object's `identifiers`."""
    if isinstance(identifiers, dict):
        type_id, object_id = identifiers.get("object_type_id"), identifiers.get("object_id")
        if isinstance(type_id, str) and type_id and isinstance(object_id, str) and object_id:
            return type_id, object_id
    raise _Refused(
        field_name, "identifiers must hold object_type_id and object_id, non-empty strings"
    )


def _event(fields: dict[str, Any], data_field: str) -> dict[str, Any]:
    """The event as stored, from a v1 body (data in `data`) or a v2 operation (`attributes`)."""
    name = fields.get("name")
    if not isinstance(name, str) or not name:
        raise _Refused("name", "event name must be a non-empty string")
    if _utf8_len(name) > MAX_EVENT_NAME_BYTES:
        raise _Refused("name", f"event name cannot be longer than {MAX_EVENT_NAME_BYTES} bytes")
    data = _object(fields.get(data_field, {}), data_field)
    if len(orjson.dumps(data)) > MAX_EVENT_DATA_BYTES:
        raise _Refused(data_field, f"event data cannot be larger than {MAX_EVENT_DATA_BYTES} bytes")
    timestamp = _unix_seconds(fields["timestamp"], "timestamp") if "timestamp" in fields else None
    event_id = fields.get("id")
    if "id" in fields and not (isinstance(event_id, str) and EVENT_ID.fullmatch(event_id)):
        raise _Refused("id", "event id must be a ULID (26 characters of Crockford base32)")
    return {"name": name, "id": event_id, "timestamp": timestamp, "data": data}


def _device(value: Any, id_key: str) -> dict[str, Any]:
    """The device as stored (keyed `id`, as v1 sends it; v2 calls it `token`)."""
    device = _object(value, "device")
    device_id = device.get(id_key)
    if not isinstance(device_id, str) or not device_id:
        raise _Refused("device", f"device {id_key} must be a non-empty string")
    if device.get("platform") not in PLATFORMS:
        raise _Refused("device", "device platform must be ios or android")
    stored: dict[str, Any] = {"id": device_id, "platform": device["platform"]}
    if "last_used" in device:
        stored["last_used"] = _unix_seconds(device["last_used"], "last_used")
    if "attributes" in device:
        attributes = _object(device["attributes"], "attributes")
        _check(_attributes_error(attributes), "attributes")
        stored["attributes"] = attributes
    return stored


def _merge(body: dict[str, Any]) -> _Change:
    """A merge, from the v1 body or the v2 operation (both hold `primary` and `secondary`)."""
    sides = []
    for side in ("primary", "secondary"):
        person = _identifier_of(body.get(side), numbers=False)
        if person is None:
            raise _Refused(
                side, f"{side} must hold exactly one of id, email or cio_id, a non-empty string"
            )
        _check_identifier(person)
        sides.append(person)
    primary, secondary = sides
    if primary == secondary:
        # Merged into itself, a person would be removed: refused rather than guessed at.
        raise _Refused("secondary", "primary and secondary must be different people")
    return _Change("person merge", lambda ws: ws.merge(primary, secondary))


def _identified(person: str, attributes: dict[str, Any]) -> _Change:
    return _Change(
        "person identify",
        lambda ws: ws.identify(person, attributes),
        identified=(person, attributes),
    )


def _on_person(action: str, person: str, apply: Callable[[_Workspace, str], None]) -> _Change:
    return _Change(action, lambda ws: apply(ws, person))


# v2 operations, by "type action": each parser validates one operation (a JSON object no larger
# than MAX_OPERATION_BYTES) into the change it makes, or raises _Refused.

_Parser = Callable[[dict[str, Any]], _Change]


def _identify_operation(op: dict[str, Any]) -> _Change:
    person = _person(op)
    attributes = _object(op.get("attributes", {}), "attributes")
    _check(_identify_error(person, attributes), "attributes")
    return _identified(person, attributes)


def _event_operation(op: dict[str, Any]) -> _Change:
    person = _person(op)
    event = _event(op, "attributes")
    return _Change("person event", lambda ws: ws.event(person, event))


def _add_device_operation(op: dict[str, Any]) -> _Change:
    person = _person(op)
    device = _device(op.get("device"), "token")
    return _Change("person add_device", lambda ws: ws.add_device(person, device))


def _add_relationships_operation(op: dict[str, Any]) -> _Change:
    person = _person(op)
    relationships = op.get("cio_relationships")
    if not isinstance(relationships, list) or not relationships:
        raise _Refused("cio_relationships", "cio_relationships must be a non-empty array")
    added: list[tuple[tuple[str, str], dict[str, Any]]] = []
    for item in relationships:
        relationship = _object(item, "cio_relationships")
        target = _object_target(relationship.get("identifiers"), "cio_relationships")
        attributes = _object(
            relationship.get("relationship_attributes", {}), "relationship_attributes"
        )
        _check(_attributes_error(attributes), "relationship_attributes")
        added.append((target, attributes))

    def apply(ws: _Workspace) -> None:
        for target, attributes in added:
            ws.relate(person, target, attributes)

    return _Change("person add_relationships", apply)


def _person_only_operation(action: str, apply: Callable[[_Workspace, str], None]) -> _Parser:
    return lambda op: _on_person(action, _person(op), apply)


def _object_identify_operation(op: dict[str, Any]) -> _Change:
    target = _object_target(op.get("identifiers"), "identifiers")
    attributes = _object(op.get("attributes", {}), "attributes")
    _check(_attributes_error(attributes), "attributes")
    return _Change("object identify", lambda ws: ws.identify_object(target, attributes))


_OPERATIONS: dict[str, _Parser] = {
    "person identify": _identify_operation,
    "person event": _event_operation,
    "person add_device": _add_device_operation,
    "person delete": _person_only_operation("person delete", _Workspace.delete),
    "person suppress": _person_only_operation("person suppress", _Workspace.suppress),
    "person unsuppress": _person_only_operation("person unsuppress", _Workspace.unsuppress),
    "person merge": _merge,  # names no `identifiers`: `primary` and `secondary` instead
    "person add_relationships": _add_relationships_operation,
    "object identify": _object_identify_operation,
}
OPERATIONS = tuple(_OPERATIONS)  # every "type action" simulated, as /_fake/stats lists them


def _parse_operation(op: Any, whole: str) -> _Change:
    """The change a v2 operation makes, or _Refused. `whole` is the field an error about the
    operation as a whole names: "batch" in a batch, "body" alone on /api/v2/entity."""
    if not isinstance(op, dict):
        raise _Refused(whole, "operation must be a JSON object")
    if len(orjson.dumps(op)) > MAX_OPERATION_BYTES:
        raise _Refused(whole, f"operation is larger than {MAX_OPERATION_BYTES} bytes")
    kind, action = op.get("type"), op.get("action")
    parse = _OPERATIONS.get(f"{kind} {action}") if isinstance(action, str) else None
    if parse is None:
        field_name = "action" if kind in ("person", "object") else "type"
        raise _Refused(field_name, f"unknown operation: type {kind!r}, action {action!r}")
    return parse(op)


# The fast paths of a batch of person identifies, events or add_relationships (what bulksync
# sends for --kind people, events and relationships with --batch): those batches hold a thousand
# operations, and the parsers above cost ~20 µs an operation, which made the simulator the
# bottleneck of a batch run. These checks look at all the operations of a batch at once, a few
# passes in C (map, set, chain) instead of calls per operation, and prove what _parse_operation
# would find. A batch mixing kinds, or anything not proven, takes the general path.

_FIELDS = tuple(map(itemgetter, ("type", "action", "identifiers")))
_IDENTIFIER_KEY_SET = frozenset(IDENTIFIER_KEYS)
# The values a JSON attribute may take (orjson makes no other scalars): at most 24 bytes of JSON
# for a number, so only strings can be over MAX_VALUE_BYTES.
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
# An operation's JSON holds each of its strings, quotes included, and JSON escapes only ever
# lengthen a string: an operation this short cannot hold a value over MAX_VALUE_BYTES.
_SHORT_OPERATION_BYTES = MAX_VALUE_BYTES + 2
_utf8 = methodcaller("encode", "utf-8", "surrogatepass")  # what _utf8_len measures


class _Missing:
    """dict.get's default: tells a key left out from a key set to null."""


_MISSING = _Missing()
# EVENT_ID, repeated: ids of 26 characters each, joined, match it when every one matches EVENT_ID.
_EVENT_IDS = re.compile(f"(?:{EVENT_ID.pattern})*")
_OPTIONAL_TIMESTAMP = frozenset({int, _Missing})  # bool is not int here: type() is exact


def _batch_persons(
    operations: list[Any], action: str, key: str
) -> tuple[list[str], list[Any]] | None:
    """The person each operation names and its `key`'s value, if the batch is not empty and
    every operation is a person `action` naming one as _person accepts (_batch_people) and
    holding `key`, else None (not proven)."""
    if not operations:
        return None
    try:
        # TypeError: an operation that is not an object; KeyError: one without these keys.
        kinds, actions, identifiers, values = (
            list(map(get, operations)) for get in (*_FIELDS, itemgetter(key))
        )
    except (TypeError, KeyError):
        return None
    count = len(operations)
    if kinds.count("person") != count or actions.count(action) != count:
        return None
    people = _batch_people(identifiers)
    return None if people is None else (people, values)


def _batch_people(identifiers: list[Any]) -> list[str] | None:
    """The person each `identifiers` names, written like a v1 path identifier, if every one
    holds one key of IDENTIFIER_KEYS, a non-empty string no longer than MAX_IDENTIFIER_BYTES
    (what _person accepts), else None (an identifier given as a number is not proven)."""
    # Each object has exactly one value, so `values` lines up with `identifiers`.
    if set(map(type, identifiers)) != {dict} or set(map(len, identifiers)) != {1}:
        return None
    keys = set().union(*identifiers)
    values = list(chain.from_iterable(map(dict.values, identifiers)))
    if not keys <= _IDENTIFIER_KEY_SET or set(map(type, values)) != {str} or "" in values:
        return None
    people = values
    if "cio_id" in keys:
        people = [
            f"cio_{value}" if key == "cio_id" else value
            for key, value in zip(chain.from_iterable(identifiers), values, strict=True)
        ]
    # ASCII text has as many bytes as characters (and CPython knows whether a str is ASCII).
    encoded = people if all(map(str.isascii, people)) else list(map(_utf8, people))
    if max(map(len, encoded)) > MAX_IDENTIFIER_BYTES:
        return None
    return people


def _batch_attribute_names(attributes: list[Any]) -> set[str] | None:
    """The attribute names used, if every one of `attributes` is an object _attributes_error
    accepts, except for the value limit (MAX_VALUE_BYTES) that _batch_sizes_valid checks;
    else None. Each name is measured once."""
    if set(map(type, attributes)) != {dict} or max(map(len, attributes)) > MAX_ATTRIBUTES:
        return None
    names: set[str] = set().union(*attributes)
    if any(_utf8_len(name) > MAX_ATTRIBUTE_NAME_BYTES for name in names):
        return None
    if not _SCALAR_TYPES.issuperset(map(type, chain.from_iterable(map(dict.values, attributes)))):
        return None
    return names


def _batch_sizes_valid(operations: list[Any], attributes: list[list[dict[str, Any]]]) -> bool:
    """The operation limit, and the value limit of each operation's `attributes` (objects whose
    other rules were proven) where the operation is long enough to hold a value over it."""
    sizes = list(map(len, map(orjson.dumps, operations)))
    longest = max(sizes)
    if longest > MAX_OPERATION_BYTES:
        return False
    if longest > _SHORT_OPERATION_BYTES:
        for size, held in zip(sizes, attributes, strict=True):
            if size > _SHORT_OPERATION_BYTES and any(map(_attributes_error, held)):
                return False
    return True


@dataclass(frozen=True)
class _Identifies:
    """A batch of person identifies, every one valid."""

    people: list[str]  # the person each operation names, written like a v1 path identifier
    attributes: list[dict[str, Any]]  # each operation's attributes, as sent
    instructions: bool  # some attributes hold `_update` or `_timestamp`
    action = "person identify"

    def apply(self, ws: _Workspace, accepted: list[tuple[str, dict[str, Any]]]) -> None:
        ws.identify_all(self.people, self.attributes, instructions=self.instructions)
        accepted.extend(zip(self.people, self.attributes, strict=True))


def _identify_batch(operations: list[Any]) -> _Identifies | None:
    """The people and attributes of a batch whose every operation is a person identify that
    _parse_operation accepts, else None: then the batch takes the general path, operation by
    operation, which finds what is wrong (or what is not an identify). None means only "not
    proven": an identifier given as a number, or attributes left out, take the general path
    too."""
    found = _batch_persons(operations, "identify", "attributes")
    if found is None:
        return None
    people, attributes = found
    # attributes: _identify_error's rules.
    names = _batch_attribute_names(attributes)
    if names is None or "" in map(dict.get, attributes, repeat("id")):
        return None
    if not _batch_sizes_valid(operations, [[attrs] for attrs in attributes]):
        return None
    return _Identifies(people, attributes, instructions=not names.isdisjoint(INSTRUCTION_KEYS))


@dataclass(frozen=True)
class _Events:
    """A batch of person events, every one valid."""

    people: list[str]
    # Each operation's fields, _MISSING where left out: the events are only made when applied.
    names: list[str]
    ids: list[Any]
    timestamps: list[Any]
    data: list[Any]
    action = "person event"

    def apply(self, ws: _Workspace, accepted: list[tuple[str, dict[str, Any]]]) -> None:
        for person, name, event_id, timestamp, data in zip(
            self.people, self.names, self.ids, self.timestamps, self.data, strict=True
        ):
            # As _event stores it.
            event = {
                "name": name,
                "id": None if event_id is _MISSING else event_id,
                "timestamp": None if timestamp is _MISSING else timestamp,
                "data": {} if data is _MISSING else data,
            }
            ws.event(person, event)


def _event_batch(operations: list[Any]) -> _Events | None:
    """The people and events of a batch whose every operation is a person event that
    _parse_operation accepts (_person, then _event's rules), else None (not proven): as
    _identify_batch, for the batches of `--kind events`. Its `attributes` (the event's data)
    may be left out, as _event allows."""
    found = _batch_persons(operations, "event", "name")
    if found is None:
        return None
    people, names = found
    ids = list(map(dict.get, operations, repeat("id"), repeat(_MISSING)))
    timestamps = list(map(dict.get, operations, repeat("timestamp"), repeat(_MISSING)))
    data = list(map(dict.get, operations, repeat("attributes"), repeat(_MISSING)))
    # name: a non-empty string of at most MAX_EVENT_NAME_BYTES.
    if set(map(type, names)) != {str} or "" in names:
        return None
    if any(_utf8_len(name) > MAX_EVENT_NAME_BYTES for name in set(names)):
        return None
    # timestamp: an integer, if given. id: a ULID, if given (not null).
    if not _OPTIONAL_TIMESTAMP.issuperset(map(type, timestamps)):
        return None
    given = [event_id for event_id in ids if event_id is not _MISSING]
    if given:
        if set(map(type, given)) != {str} or set(map(len, given)) != {26}:
            return None
        if _EVENT_IDS.fullmatch("".join(given)) is None:
            return None
    # data: an object, or left out ({}). Its JSON is part of the operation's, so the operation
    # limit keeps it far below MAX_EVENT_DATA_BYTES.
    if not {dict, _Missing}.issuperset(map(type, data)):
        return None
    if max(map(len, map(orjson.dumps, operations))) > MAX_OPERATION_BYTES:
        return None
    return _Events(people, names, ids, timestamps, data)


@dataclass(frozen=True)
class _Relationships:
    """A batch of person add_relationships, every one valid."""

    people: list[str]
    # Each operation's relationships: ((object_type_id, object_id), attributes), in order.
    related: list[list[tuple[tuple[str, str], dict[str, Any]]]]
    action = "person add_relationships"

    def apply(self, ws: _Workspace, accepted: list[tuple[str, dict[str, Any]]]) -> None:
        for person, related in zip(self.people, self.related, strict=True):
            for target, attributes in related:
                ws.relate(person, target, attributes)


def _relationship_batch(operations: list[Any]) -> _Relationships | None:
    """The people and relationships of a batch whose every operation is a person
    add_relationships that _parse_operation accepts, else None (not proven): as
    _identify_batch, for the batches of `--kind relationships`."""
    found = _batch_persons(operations, "add_relationships", "cio_relationships")
    if found is None:
        return None
    people, lists = found
    # cio_relationships: a non-empty array of objects, each naming an object by
    # object_type_id and object_id (non-empty strings), its attributes valid if given.
    if set(map(type, lists)) != {list} or 0 in map(len, lists):
        return None
    items = list(chain.from_iterable(lists))
    if set(map(type, items)) != {dict}:
        return None
    try:
        targets = list(map(itemgetter("identifiers"), items))
    except KeyError:
        return None
    if set(map(type, targets)) != {dict}:
        return None
    type_ids: list[Any] = list(map(dict.get, targets, repeat("object_type_id")))
    object_ids: list[Any] = list(map(dict.get, targets, repeat("object_id")))
    if set(map(type, type_ids)) != {str} or set(map(type, object_ids)) != {str}:
        return None
    if "" in type_ids or "" in object_ids:
        return None
    given = list(map(dict.get, items, repeat("relationship_attributes"), repeat(_MISSING)))
    attributes = [{} if attrs is _MISSING else attrs for attrs in given]
    if _batch_attribute_names(attributes) is None:
        return None
    pairs = iter(list(zip(zip(type_ids, object_ids, strict=True), attributes, strict=True)))
    related = [list(islice(pairs, len(held))) for held in lists]
    held_attributes = [[attrs for _, attrs in held] for held in related]
    if not _batch_sizes_valid(operations, held_attributes):
        return None
    return _Relationships(people, related)


_Proven = _Identifies | _Events | _Relationships
# The fast paths, by the first operation's action (a batch proven takes one kind only).
_FAST_PATHS: dict[str, Callable[[list[Any]], _Proven | None]] = {
    "identify": lambda operations: _identify_batch(operations),
    "event": lambda operations: _event_batch(operations),
    "add_relationships": lambda operations: _relationship_batch(operations),
}


def _fast_batch(operations: list[Any]) -> _Proven | None:
    """What a batch does, proven valid as a whole by the fast path of its kind (the kind of
    its first operation), else None: the batch takes the general path."""
    if not operations or type(operations[0]) is not dict:
        return None
    action = operations[0].get("action")
    prove = _FAST_PATHS.get(action) if type(action) is str else None
    return None if prove is None else prove(operations)


# v1 requests on /api/v1/customers/{id}[/SUB], by (method, SUB or None): each parser validates
# (path identifier, body) into the change of the equivalent v2 operation, or raises _Refused.

_CustomerParser = Callable[[str, Any], _Change]


def _identify_request(person: str, body: Any) -> _Change:
    _check(_identify_error(person, body), "attributes")
    return _identified(person, body)


def _event_request(person: str, body: Any) -> _Change:
    _check_identifier(person)
    event = _event(_body(body), "data")
    return _Change("person event", lambda ws: ws.event(person, event))


def _device_request(person: str, body: Any) -> _Change:
    _check_identifier(person)
    device = _device(_body(body).get("device"), "id")
    return _Change("person add_device", lambda ws: ws.add_device(person, device))


def _person_only_request(action: str, apply: Callable[[_Workspace, str], None]) -> _CustomerParser:
    def parse(person: str, body: Any) -> _Change:
        # These calls send no body: whatever arrives is ignored.
        _check_identifier(person)
        return _on_person(action, person, apply)

    return parse


_CUSTOMER_ROUTES: dict[tuple[str, str | None], _CustomerParser] = {
    ("PUT", None): _identify_request,
    ("POST", "events"): _event_request,
    ("PUT", "devices"): _device_request,
    ("DELETE", None): _person_only_request("person delete", _Workspace.delete),
    ("POST", "suppress"): _person_only_request("person suppress", _Workspace.suppress),
    ("POST", "unsuppress"): _person_only_request("person unsuppress", _Workspace.unsuppress),
}


def _is_identify_path(path: str) -> bool:
    return path.startswith(CUSTOMERS_PREFIX) and "/" not in path.removeprefix(CUSTOMERS_PREFIX)


class FakeTrackAPI:
    """The simulator: an aiohttp application plus the records of what it received."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config if config is not None else FakeConfig()
        self.requests: list[Recorded] = []
        self._batch_accepted: list[tuple[str, dict[str, Any]]] = []  # see batch_accepted
        # Guards the batches accepted whole but not applied yet (see _settled): a test may read
        # batch_accepted from its own thread while the server's loop runs.
        self._lock = threading.Lock()
        # One catch-all route: aiohttp's router matches on a decoded path, but identifiers must
        # be decoded exactly once from the raw path (an id "a/b" arrives as "a%2Fb").
        self._app = web.Application()
        self._app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._faults = random.Random(self.config.seed)
        # A separate generator, so turning jitter on does not change which requests fail.
        self._jitter = random.Random(self.config.seed)
        self._admitted: deque[float] = deque()  # arrival times of requests the limiter let in
        self._seen: Counter[str] = Counter()  # admitted requests per identifier, for fail_first
        self._first: float | None = None  # arrival time of the first request: limit_schedule's 0
        self._workspace = _Workspace()  # read and changed through _settled() only
        self._operations: Counter[str] = Counter()  # accepted operations per "type action"
        # Raw bodies of the batches accepted whole by a fast path (see _batch), in order,
        # not yet applied to the workspace nor listed in batch_accepted.
        self._unapplied: list[bytes] = []

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. http://127.0.0.1:54321."""
        if self._url is None:
            raise RuntimeError("FakeTrackAPI is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("FakeTrackAPI is already started")
        # handler_cancellation: when a client gives up (timeout), stop its slow handler too,
        # instead of leaving a task sleeping past the end of the test.
        runner = web.AppRunner(
            self._app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            handler_cancellation=True,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        self._url = f"http://{shown_host}:{bound_port}"
        return self._url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            self._url = None
            await runner.cleanup()

    async def __aenter__(self) -> FakeTrackAPI:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- inspection helpers for tests ---------------------------------------------------------

    @property
    def batch_accepted(self) -> list[tuple[str, dict[str, Any]]]:
        """(identifier, attributes) of every v2 person identify accepted (in a batch or alone on
        /api/v2/entity), in order."""
        self._settled()
        return self._batch_accepted

    def accepted(self) -> dict[str, list[dict[str, Any]]]:
        """Identifier -> attributes accepted for it by person identify: bodies of the identify
        PUTs answered 200, then the accepted v2 operations' attributes, each in arrival order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for rec in self.requests:
            # An identify path only: a PUT of the person's devices is not an identify.
            if rec.method == "PUT" and rec.status == 200 and _is_identify_path(rec.path):
                assert rec.identifier is not None  # set for every customer path
                out.setdefault(rec.identifier, []).append(rec.body)
        for identifier, attributes in self.batch_accepted:
            out.setdefault(identifier, []).append(attributes)
        return out

    def requests_per_identifier(self) -> Counter[str]:
        return Counter(rec.identifier for rec in self.requests if rec.identifier is not None)

    def peak_per_second(self) -> int:
        """Most requests the client started in any one-second window, refused ones included."""
        return peak_in_window([rec.time for rec in self.requests])

    def workspace(self) -> dict[str, int]:
        """What the workspace holds: counts of people (profiles), objects, relationships,
        devices, events, events_deduplicated (answered 200 but dropped: their id was already
        accepted), deleted, suppressed and merged (secondaries) people."""
        return self._settled().summary()

    def person(self, identifier: str) -> dict[str, Any] | None:
        """One person as the workspace holds them, or None if no accepted operation named them:
        {"id", "attributes", "devices", "events", "relationships", "suppressed", "deleted",
        "merged_into"}. A copy: changing it changes nothing here."""
        return self._settled().person(identifier)

    def object_attributes(self, object_type_id: str, object_id: str) -> dict[str, Any] | None:
        """The attributes an object holds (a copy), or None if no object identify named it."""
        attributes = self._settled().objects.get((object_type_id, object_id))
        return None if attributes is None else copy.deepcopy(attributes)

    def operations(self) -> Counter[str]:
        """Accepted operations per "type action" (a v1 request counts as its v2 equivalent)."""
        return +self._operations  # unary plus: a copy, without zero counts

    def reset(self) -> None:
        """Forget the records and the workspace, and restart the limiter, fail_first counts and
        random faults."""
        self.requests.clear()
        self._batch_accepted.clear()
        self._reset_state()

    # --- request pipeline ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What the simulator saw, for a simulator in another process (GET /_fake/stats)."""
        times = [rec.time for rec in self.requests]
        return {
            "requests": len(self.requests),
            "statuses": dict(Counter(str(rec.status) for rec in self.requests)),
            "peak_per_second": self.peak_per_second(),
            # What accepted() lists, counted without building it: every identify accepted.
            "accepted": self._operations["person identify"],
            "span_seconds": max(times) - min(times) if times else 0.0,
            "operations": {name: self._operations[name] for name in OPERATIONS},
            # The CPU the simulator's process has spent: in a process of its own, what
            # answering cost it (benchmarks compare it with what the client spent).
            "cpu_seconds": time.process_time(),
        }

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path  # keeps %2F and %25 exactly as the client sent them
        inspection = self._inspect(raw_path)
        if inspection is not None:
            return inspection
        identifier = None
        if raw_path.startswith(CUSTOMERS_PREFIX):
            # Decode exactly once: the client sent quote(id, safe=""), so "%2540" means "%40".
            raw_identifier = raw_path.removeprefix(CUSTOMERS_PREFIX).split("/", 1)[0]
            identifier = unquote(raw_identifier)
        record = Recorded(
            method=request.method,
            path=raw_path,
            identifier=identifier,
            _body=_UNPARSED,
            time=time.monotonic(),
            auth_ok=self._auth_ok(request),
        )
        self.requests.append(record)
        try:
            response = await self._admit(request, record)
            if response is None:
                response = await self._route(request.method, raw_path)(request, record)
        except _Drop:
            # Closing the transport (FIN) makes the client raise ServerDisconnectedError. The
            # returned response is never sent: aiohttp swallows the write error on a closed socket.
            if request.transport is not None:
                request.transport.close()
            return web.Response()
        record.status = response.status
        if self.config.answer_padding and isinstance(response.body, bytes):
            response.body = response.body + b" " * self.config.answer_padding
        return response

    def _inspect(self, raw_path: str) -> web.Response | None:
        """The simulator's own inspection routes, or None. Not recorded: they are not traffic."""
        if raw_path == STATS_PATH:
            return _json(200, self.stats())
        if raw_path == ACCEPTED_PATH:
            return _json(200, self.accepted())
        if raw_path == WORKSPACE_PATH:
            return _json(200, self.workspace())
        if raw_path.startswith(PEOPLE_PREFIX):
            # Encoded like a v1 path identifier, and decoded exactly once for the same reason.
            person = self.person(unquote(raw_path.removeprefix(PEOPLE_PREFIX)))
            return _error(404, "Not Found") if person is None else _json(200, person)
        return None

    async def _admit(self, request: web.Request, record: Recorded) -> web.Response | None:
        """Auth, rate limit, faults and latency. Returns a refusal, or None to run the route."""
        cfg = self.config
        # Decide everything before the first await, so the limiter sees arrival order.
        refusal: web.Response | None = None
        fault: str | None = None
        delay = cfg.latency + (self._jitter.uniform(0, cfg.jitter) if cfg.jitter > 0 else 0.0)
        if not record.auth_ok:
            refusal = _error(401, "Unauthorized request")
        elif not self._within_rate_limit(record.time):
            refusal = self._too_many()
        else:
            # Drawn for every admitted request, so the fault sequence depends only on the seed.
            fault = self._pick_fault(self._faults.random())
            if record.identifier is not None and self._fails_first([record.identifier]):
                fault = "fail_first"

        match fault:
            case "fail_first":
                refusal = _error(503, "Service Unavailable (fail_first)")
            case "fail_500":
                refusal = _error(500, "Internal Server Error (injected)")
            case "fail_503":
                refusal = _error(503, "Service Unavailable (injected)")
            case "fail_429":
                refusal = self._too_many()
            case "slow":
                delay += cfg.slow_seconds

        record.raw = await request.read()
        record.size = len(record.raw)
        if record.auth_ok and refusal is None and fault is None and cfg.fail_first:
            # A batch, a merge or an entity call fails first as long as one of the people (or
            # objects) its body names does. (Counted only while fail_first is set: naming the
            # people of every batch would cost more than validating them.)
            named = _request_names(record.path, record.body)
            if named and self._fails_first(sorted(named)):
                fault = "fail_first"
                refusal = _error(503, "Service Unavailable (fail_first)")
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "drop":
            raise _Drop
        return refusal

    def _fails_first(self, identifiers: list[str]) -> bool:
        """Count a request naming `identifiers`; True while one has fail_first answers left."""
        fail = False
        for ident in identifiers:
            self._seen[ident] += 1
            fail |= self._seen[ident] <= self.config.fail_first.get(ident, 0)
        return fail

    def _pick_fault(self, draw: float) -> str | None:
        """Map a uniform draw in [0, 1) to at most one fault, each band as wide as its fraction."""
        cfg = self.config
        edge = 0.0
        for fault, fraction in (
            ("drop", cfg.drop),
            ("slow", cfg.slow),
            ("fail_500", cfg.fail_500),
            ("fail_503", cfg.fail_503),
            ("fail_429", cfg.fail_429),
        ):
            edge += fraction
            if draw < edge:
                return fault
        return None

    def _auth_ok(self, request: web.Request) -> bool:
        # Decoded by hand: aiohttp 3.14 deprecates BasicAuth (gone in 4.0).
        scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            credentials = base64.b64decode(token, validate=True).decode("latin-1")
        except binascii.Error:
            return False
        return credentials == f"{self.config.site_id}:{self.config.api_key}"

    def _within_rate_limit(self, now: float) -> bool:
        # Only admitted requests enter the window: a client that backs off after a 429 must not
        # be punished for the refused attempts.
        window = self._admitted
        while window and window[0] <= now - 1.0:
            window.popleft()
        limit = self.limit_at(now)
        if limit is not None and len(window) >= limit:
            return False
        window.append(now)
        return True

    def limit_at(self, now: float) -> float | None:
        """The rate limit in force at time.monotonic() `now` (limit_schedule, else rate_limit)."""
        if self._first is None:
            self._first = now
        limit = self.config.rate_limit
        for after, scheduled in self.config.limit_schedule:
            if now - self._first >= after:
                limit = scheduled
        return limit

    def _too_many(self) -> web.Response:
        retry_after = self.config.retry_after
        headers = None
        if retry_after is not None:
            text = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
            headers = {"Retry-After": text}
        return _error(429, "Too Many Requests", headers)

    def _route(self, method: str, raw_path: str) -> Handler:
        if raw_path.startswith(CUSTOMERS_PREFIX):
            # A raw "/" ends the identifier (an id "a/b" arrives as "a%2Fb"); what follows names
            # a sub-resource: events, devices, suppress...
            _, slash, sub = raw_path.removeprefix(CUSTOMERS_PREFIX).partition("/")
            parse = _CUSTOMER_ROUTES.get((method, sub if slash else None))
            return self._not_found if parse is None else self._customer(parse)
        routes: dict[tuple[str, str], Handler] = {
            ("GET", REGION_PATH): self._region,
            ("POST", MERGE_PATH): self._merge,
            ("POST", BATCH_PATH): self._batch,
            ("POST", ENTITY_PATH): self._entity,
        }
        return routes.get((method, raw_path), self._not_found)

    def _commit(self, change: _Change) -> None:
        change.apply(self._settled())
        self._operations[change.action] += 1

    def _settled(self) -> _Workspace:
        """The workspace, once the batches accepted whole so far are applied to it and listed in
        batch_accepted, in the order they came. Everything that reads or changes the workspace
        or batch_accepted comes here first, so a lazy batch takes its place among the other
        changes; in a run nobody inspects, no batch is ever applied."""
        with self._lock:
            for raw in self._unapplied:
                # Parsed again: the same bytes, so the same operations, proven valid before.
                proven = _fast_batch(orjson.loads(raw)["batch"])
                assert proven is not None, "a batch accepted whole was proven valid"
                proven.apply(self._workspace, self._batch_accepted)
            self._unapplied.clear()
        return self._workspace

    def _answer_v1(self, names: list[str], parse: Callable[[], _Change]) -> web.Response:
        """A v1 call naming `names`: 400 if one is rejected by the test (checked first, as for
        identify), 400 with the API's message if invalid, else applied and answered 200."""
        if not self.config.reject_ids.isdisjoint(names):
            return _error(400, REJECTED)
        try:
            change = parse()
        except _Refused as refused:
            return _error(400, refused.message)
        self._commit(change)
        return _json(200, {})

    def _accept_operation(self, op: Any, whole: str) -> None:
        """Validate a v2 operation and apply it, or raise _Refused. reject_ids are checked after
        validation, so an invalid operation naming a rejected person reports what is wrong."""
        change = _parse_operation(op, whole)
        if self.config.reject_ids and not self.config.reject_ids.isdisjoint(_named(op)):
            raise _Refused("identifiers", REJECTED)
        self._commit(change)  # settles: this comes after every batch accepted before
        if change.identified is not None:
            self._batch_accepted.append(change.identified)

    # --- route handlers -----------------------------------------------------------------------

    async def _region(self, request: web.Request, record: Recorded) -> web.Response:
        cfg = self.config
        host = "track-eu" if cfg.region == "eu" else "track"
        return _json(
            200,
            {
                "url": f"https://{host}.customer.io",
                "region": cfg.region,
                "environment_id": cfg.environment_id,
            },
        )

    def _customer(self, parse: _CustomerParser) -> Handler:
        """The handler of a /api/v1/customers/{id}[/SUB] route."""

        async def handle(request: web.Request, record: Recorded) -> web.Response:
            person = record.identifier
            assert person is not None  # _route only sends customer paths here
            return self._answer_v1([person], lambda: parse(person, record.body))

        return handle

    async def _merge(self, request: web.Request, record: Recorded) -> web.Response:
        body = record.body
        return self._answer_v1(_merge_names(body), lambda: _merge(_body(body)))

    async def _entity(self, request: web.Request, record: Recorded) -> web.Response:
        """POST /api/v2/entity: one v2 operation as the body; 200 `{}`, or 400 with the v2
        `errors` list (one entry, no batch_index)."""
        try:
            self._accept_operation(record.body, "body")
        except _Refused as refused:
            return _batch_error(400, refused.field, refused.message)
        return _json(200, {})

    async def _batch(self, request: web.Request, record: Recorded) -> web.Response:
        """POST /api/v2/batch: 200 when every operation is accepted, 207 listing the refused
        ones by `batch_index` (all others accepted), 400 when the request as a whole is bad."""
        if record.size >= MAX_BATCH_BYTES:  # the API's "< 500 KB"
            return _batch_error(
                400, "batch", f"request body is larger than {MAX_BATCH_BYTES} bytes"
            )
        # Not record.body: a batch's JSON is let go with this request (see Recorded.body).
        body = _parse_json(record.raw)
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            return _batch_error(400, "batch", "body must be a JSON object with a 'batch' array")
        operations = body["batch"]
        poison = self.config.poison_ids
        if poison and any(not poison.isdisjoint(_named(op)) for op in operations):
            return _batch_error(400, "batch", "poisoned operation (test)")
        proven = _fast_batch(operations)
        if proven is not None and self.config.reject_ids.isdisjoint(proven.people):
            # Every operation is accepted. What they change is applied when someone looks
            # (_settled): until then the batch costs its bytes, which the record holds anyway.
            with self._lock:
                self._unapplied.append(record.raw)
            self._operations[proven.action] += len(proven.people)
            return _json(200, {})
        errors = []
        for index, op in enumerate(operations):
            try:
                self._accept_operation(op, "batch")
            except _Refused as refused:
                errors.append(
                    {
                        "batch_index": index,
                        "reason": "invalid",
                        "field": refused.field,
                        "message": refused.message,
                    }
                )
        return _json(207, {"errors": errors}) if errors else _json(200, {})

    async def _not_found(self, request: web.Request, record: Recorded) -> web.Response:
        return _error(404, "Not Found")


async def _serve(config: FakeConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        # Not available on Windows; Ctrl-C then still ends the run through KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    fake = FakeTrackAPI(config)
    try:
        url = await fake.start(host, port)
        # This process is the simulator's alone: leave the objects of its modules (aiohttp,
        # asyncio...) out of the garbage collector's full passes, which the thousands of objects
        # each batch's JSON makes would otherwise trigger again and again (as cli.py does for
        # a run).
        gc.freeze()
        # The credentials are the simulator's own, not a real workspace's: printing them is what
        # lets a user point bulksync at it.
        print(
            f"bulksync fake Track API listening on {url} "
            f"(site id: {config.site_id}, api key: {config.api_key})",
            flush=True,
        )
        await stop.wait()
    finally:
        await fake.stop()
        for sig in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


def run_fake_server(
    config: FakeConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> None:
    """Serve the simulator until SIGINT or SIGTERM (blocking; for `bulksync fake-server`)."""
    asyncio.run(_serve(config if config is not None else FakeConfig(), host, port))
