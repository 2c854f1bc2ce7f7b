"""What bulksync sends: one `Record` per row, and one `Kind` per operation (`--kind`).

A Record is a row ready to send: its row number, the identifier that orders it (a person, or
an object), the name of its kind (`op`) and its `payload`, which is exactly the JSON body of
the kind's single request (`{}` for the kinds that send no body). Everything the sender needs
comes from the kind's table entry:

    kind            single request                               v2 operation (--batch)
    people          PUT    /api/v1/customers/{id}                person identify
    events          POST   /api/v1/customers/{id}/events         person event
    devices         PUT    /api/v1/customers/{id}/devices        person add_device
    objects         POST   /api/v2/entity (the operation)        object identify
    relationships   POST   /api/v2/entity (the operation)        person add_relationships
    deletions       DELETE /api/v1/customers/{id}                person delete
    suppressions    POST   /api/v1/customers/{id}/suppress       person suppress
    unsuppressions  POST   /api/v1/customers/{id}/unsuppress     person unsuppress
    merges          POST   /api/v1/merge_customers               person merge

Because the payload is the v1 body, a `failed` results line (which keeps it) can be re-sent by
`bulksync retry` in either mode without the input file. Adding a kind is one `Kind` entry: its
roles (the columns it reads), how a row's values become its payload (`build`), and how the
payload becomes a v2 operation (`operation`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

# orjson and hashlib are imported where they are used: the CLI builds its --kind options from
# KINDS, and `bulksync --help` must not pay for them (tests/test_startup.py).

PEOPLE = "people"
DELETIONS = "deletions"  # also what mirror mode sends for an absent person (--missing delete)
SUPPRESSIONS = "suppressions"  # --missing suppress

# Documented limits of the kinds (track-api.md, design.md "Operations").
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
MAX_OPERATION_BYTES = 32_000  # one v2 operation: in a batch, or alone on /api/v2/entity
PLATFORMS = ("ios", "android")


class Record(NamedTuple):
    """A row ready to send: `op` names its Kind; `payload` is the single request's JSON body."""

    row: int
    identifier: str
    payload: dict[str, Any]
    op: str = PEOPLE


class Invalid(ValueError):
    """A row's values cannot make this kind's operation. `role`: the role whose value is wrong
    (the message is then shown after its column's name); `identifier`: who the row names, for
    the results line, when the kind has no identifier column."""

    def __init__(self, message: str, role: str | None = None, identifier: str | None = None):
        super().__init__(message)
        self.role = role
        self.identifier = identifier


@dataclass(frozen=True)
class Role:
    """A column a kind reads for itself (not sent as data): `event`, `timestamp`, `device_id`...

    `option` renames its column; `constant` names the option giving one value for every row
    instead (e.g. --event-name). A `date` role is converted to Unix seconds like created_at."""

    name: str
    option: str
    help: str  # of the column option, for --help
    required: bool = True
    date: bool = False
    constant: str | None = None
    constant_help: str = "the same for every row."
    label: str | None = None  # what the value is, in messages (default: the name, spaced)

    @property
    def what(self) -> str:
        return self.label or self.name.replace("_", " ")


Values = Mapping[str, Any]  # role name -> the row's converted value (absent when empty)


@dataclass(frozen=True)
class Kind:
    """One operation kind: what it reads from a row, and how it is sent."""

    name: str
    summary: str  # what one row does, for --help and messages
    method: str  # HTTP method of the single request
    path: Callable[[Record], str]
    action: str  # "type action" of the v2 operation, e.g. "person identify"
    build: Callable[[str | None, Values, dict[str, Any]], tuple[str, dict[str, Any]]]
    operation: Callable[[Record], dict[str, Any]]
    roles: tuple[Role, ...] = ()
    person: bool = True  # rows name a person through the identifier column
    data: bool = True  # other columns are sent (attributes, event data...); else ignored
    body: bool = True  # the single request has a JSON body (the payload)
    idempotent: bool = True  # sending a row twice leaves the workspace as sending it once
    diff: str | None = "payload"  # --state: "payload" skips a payload accepted as is,
    #                                "once" skips a key accepted at all, None: never skips
    key: Callable[[Record], str] = lambda record: record.identifier  # the state's key
    touches: Callable[[Record], tuple[str, ...]] = lambda record: (record.identifier,)
    irreversible: bool = False  # needs --yes
    attribute_limits: bool = True  # the person attribute limits apply to the data columns
    last_wins: bool = False  # a later row of an identifier replaces its earlier rows' effect

    def request(self, record: Record) -> tuple[str, str, bytes | None]:
        """(method, path, body) of the record's single request."""
        import orjson

        body = orjson.dumps(record.payload) if self.body else None
        return self.method, self.path(record), body


def role_keys() -> dict[str, tuple[str, bool]]:
    """Name (an option's without "--", "_" for "-": click's parameter name, a mapping file's
    key) -> (role, is a constant), for the options every kind reads its own columns with:
    event_column, event_name, platform..."""
    keys: dict[str, tuple[str, bool]] = {}
    for kind in KINDS.values():
        for role in kind.roles:
            keys[role.option.removeprefix("--").replace("-", "_")] = (role.name, False)
            if role.constant:
                keys[role.constant.removeprefix("--").replace("-", "_")] = (role.name, True)
    return keys


def state_key(record: Record) -> str | None:
    """The diff state's key for this record (what "already accepted" is about: a person, an
    event id, a person's device...), or None when the diff state does not apply to its kind."""
    kind = KINDS[record.op]
    return kind.key(record) if kind.diff is not None else None


def order_keys(record: Record) -> tuple[str, ...]:
    """Who the record's operation touches, for the sender's per-identifier order: its
    identifier, and for a merge the secondary too (a later row may name the person it removes)."""
    return KINDS[record.op].touches(record)


# --- identifiers and paths -------------------------------------------------------------------


def customer_path(identifier: str) -> str:
    # Exactly the official Python client's encoding: every reserved character, "/" included.
    return "/api/v1/customers/" + quote(identifier, safe="")


def identifiers(identifier: str) -> dict[str, str]:
    """A person's v2 `identifiers`, read from the value's shape as Customer.io reads a v1 path
    identifier: `cio_...` is a cio_id (sent without its prefix), a value with an @ is an email,
    anything else an id."""
    if identifier.startswith("cio_"):
        return {"cio_id": identifier.removeprefix("cio_")}
    if "@" in identifier:
        return {"email": identifier}
    return {"id": identifier}


def _person(action: str) -> Callable[[Record], dict[str, Any]]:
    def operation(record: Record) -> dict[str, Any]:
        return {"type": "person", "identifiers": identifiers(record.identifier), "action": action}

    return operation


def _text(role: str, value: Any) -> str:
    """A role's value as the string sent: JSON integers are written as in the file."""
    if type(value) is str:
        text = value.strip()
    elif type(value) is int or (type(value) is float and value.is_integer()):
        text = str(int(value))
    else:
        raise Invalid(f"{_what(role)} {value!r} must be a string", role)
    if not text:
        raise Invalid(f"empty {_what(role)}", role)
    return text


def _required(values: Values, role: str) -> str:
    if role not in values:
        raise Invalid(f"empty {_what(role)}", role)
    return _text(role, values[role])


def _what(role: str) -> str:
    return ROLES[role].what


# --- people ----------------------------------------------------------------------------------


def _build_people(
    identifier: str | None, values: Values, data: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    assert identifier is not None
    return identifier, data


def _operation_people(record: Record) -> dict[str, Any]:
    # Written out rather than built from _person: a batch serializes one per row.
    return {
        "type": "person",
        "identifiers": identifiers(record.identifier),
        "action": "identify",
        "attributes": record.payload,
    }


# --- events: sent once, whatever happens ------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every two digits (10 bits): a ULID's 26 digits are 13 lookups, half the work of a digit each.
_DIGIT_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}")
_MAX_ULID_MS = 2**48 - 1


def ulid(milliseconds: int, entropy: bytes) -> str:
    """A ULID: 48 bits of Unix milliseconds, then 80 bits of `entropy`, in Crockford base32."""
    ms = min(max(milliseconds, 0), _MAX_ULID_MS)  # before 1970 or past 10889: clamp, not crash
    value = (ms << 80) | int.from_bytes(entropy[:10].rjust(10, b"\0"), "big")
    return "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in range(120, -1, -10)])


def event_id(
    identifier: str, name: str, timestamp: int | None, data: bytes, given: str | None
) -> str:
    """The event's ULID. A given ULID is kept (upper-cased); any other given id (a UUID, a
    number from the old platform) is turned into a ULID derived from it; without one, the ULID
    is derived from the row's content (`data`: its data as JSON, keys sorted). Derived, the
    same input always gives the same id, so Customer.io drops the copies a resume, a retry or
    a re-run sends. The time part is the event's timestamp (0 without one)."""
    import hashlib

    import orjson

    if given is not None and _ULID.fullmatch(given):
        return given.upper()
    if given is not None:
        seed = orjson.dumps(["id", given])
    else:  # orjson.dumps([identifier, name, timestamp, data], option=OPT_SORT_KEYS), as ever
        head = orjson.dumps([identifier, name, timestamp])
        seed = b"%b,%b]" % (head[:-1], data)
    digest = hashlib.blake2b(seed, digest_size=10)
    return ulid((timestamp or 0) * 1000, digest.digest())


def _build_events(
    identifier: str | None, values: Values, data: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    import orjson

    assert identifier is not None
    name = _required(values, "event")
    if len(name.encode()) > MAX_EVENT_NAME_BYTES:
        raise Invalid(f"event name is longer than {MAX_EVENT_NAME_BYTES} bytes", "event")
    body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)  # as long as unsorted
    if len(body) > MAX_EVENT_DATA_BYTES:
        raise Invalid(f"event data is {len(body):,} bytes, over the API's {MAX_EVENT_DATA_BYTES:,}")
    timestamp = values.get("timestamp")
    given = _text("event_id", values["event_id"]) if "event_id" in values else None
    payload: dict[str, Any] = {"name": name, "data": data}
    if timestamp is not None:
        payload["timestamp"] = timestamp
    payload["id"] = event_id(identifier, name, timestamp, body, given)
    return identifier, payload


def _operation_events(record: Record) -> dict[str, Any]:
    payload = record.payload
    op = {**_person("event")(record), "name": payload["name"], "id": payload["id"]}
    if "timestamp" in payload:
        op["timestamp"] = payload["timestamp"]
    op["attributes"] = payload["data"]
    return op


# --- devices ---------------------------------------------------------------------------------


def _build_devices(
    identifier: str | None, values: Values, data: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    assert identifier is not None
    # Exports write "iOS" and "Android": the platform is a name, not data to keep verbatim.
    platform = _required(values, "platform").lower()
    if platform not in PLATFORMS:
        raise Invalid(f"{values['platform']!r} is not a platform: use ios or android", "platform")
    device: dict[str, Any] = {"id": _required(values, "device_id"), "platform": platform}
    if "last_used" in values:
        device["last_used"] = values["last_used"]
    if data:
        device["attributes"] = data
    return identifier, {"device": device}


def _operation_devices(record: Record) -> dict[str, Any]:
    device = dict(record.payload["device"])
    device = {"token": device.pop("id"), **device}  # v2 calls the device id its token
    return {**_person("add_device")(record), "device": device}


# --- objects and relationships ---------------------------------------------------------------


def _object_identifiers(values: Values) -> dict[str, str]:
    return {
        "object_type_id": _required(values, "object_type_id"),
        "object_id": _required(values, "object_id"),
    }


def _checked_size(payload: dict[str, Any]) -> dict[str, Any]:
    import orjson

    # Sent alone to /api/v2/entity, the operation has the same 32,000-byte limit as in a batch.
    size = len(orjson.dumps(payload))
    if size > MAX_OPERATION_BYTES:
        raise Invalid(f"operation is {size:,} bytes, over the API's {MAX_OPERATION_BYTES:,}")
    return payload


def _build_objects(
    identifier: str | None, values: Values, data: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    target = _object_identifiers(values)
    payload = {"type": "object", "identifiers": target, "action": "identify", "attributes": data}
    # The object is what rows are ordered by, as a person is for the person kinds.
    return f"{target['object_type_id']}:{target['object_id']}", _checked_size(payload)


def _build_relationships(
    identifier: str | None, values: Values, data: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    assert identifier is not None
    relationship: dict[str, Any] = {"identifiers": _object_identifiers(values)}
    if data:
        relationship["relationship_attributes"] = data
    payload = {
        "type": "person",
        "identifiers": identifiers(identifier),
        "action": "add_relationships",
        "cio_relationships": [relationship],
    }
    return identifier, _checked_size(payload)


def _relationship_key(record: Record) -> str:
    target = record.payload["cio_relationships"][0]["identifiers"]
    return f"relationships:{record.identifier}\n{target['object_type_id']}\n{target['object_id']}"


def _as_sent(record: Record) -> dict[str, Any]:
    return record.payload  # the payload is the operation itself


def _entity_path(record: Record) -> str:
    return "/api/v2/entity"


# --- deletions, suppressions, unsuppressions: the identifier alone ----------------------------


def _build_identifier_only(
    identifier: str | None, values: Values, data: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    assert identifier is not None
    return identifier, {}


def _customer(suffix: str = "") -> Callable[[Record], str]:
    def path(record: Record) -> str:
        return customer_path(record.identifier) + suffix

    return path


# --- merges ----------------------------------------------------------------------------------


def _build_merges(
    identifier: str | None, values: Values, data: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    primary = _required(values, "primary")
    try:
        secondary = _required(values, "secondary")
    except Invalid as exc:
        raise Invalid(str(exc), exc.role, primary) from None
    if primary == secondary:
        raise Invalid(f"primary and secondary are the same person ({primary!r})", None, primary)
    # The row is ordered (and reported) by the primary, the person that remains.
    return primary, {"primary": identifiers(primary), "secondary": identifiers(secondary)}


def _operation_merges(record: Record) -> dict[str, Any]:
    return {"type": "person", "action": "merge", **record.payload}


def _merged(record: Record) -> tuple[str, ...]:
    ((key, value),) = record.payload["secondary"].items()
    return record.identifier, f"cio_{value}" if key == "cio_id" else value


# --- the table -------------------------------------------------------------------------------

_OBJECT_ROLES = (
    Role(
        "object_type_id",
        "--object-type-id-column",
        "column of the object type id (default 'object_type_id').",
        constant="--object-type-id",
        constant_help="the object type id of every row (e.g. 1 for Companies).",
    ),
    Role("object_id", "--object-id-column", "column of the object id (default 'object_id')."),
)

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "people",
            "create or update a person (other columns: attributes)",
            "PUT",
            _customer(),
            "person identify",
            _build_people,
            _operation_people,
            last_wins=True,
        ),
        Kind(
            "events",
            "record an event for a person (other columns: event data)",
            "POST",
            _customer("/events"),
            "person event",
            _build_events,
            _operation_events,
            roles=(
                Role(
                    "event",
                    "--event-column",
                    "column of the event name (default 'event').",
                    constant="--event-name",
                    constant_help="the event name of every row.",
                    label="event name",
                ),
                Role(
                    "timestamp",
                    "--timestamp-column",
                    "column of the event's time, read like dates (default 'timestamp').",
                    required=False,
                    date=True,
                ),
                Role(
                    "event_id",
                    "--event-id-column",
                    "column of an event id (default 'event_id'). A ULID is sent as is; any other"
                    " id becomes a ULID derived from it. Without one, the ULID is derived from"
                    " the row.",
                    required=False,
                ),
            ),
            idempotent=True,  # by its id: Customer.io drops an event whose id it has seen
            diff="once",
            key=lambda record: f"events:{record.payload['id']}",
            attribute_limits=False,  # event data has its own limit: 100,000 bytes in all
        ),
        Kind(
            "devices",
            "add or update a person's push device (other columns: device attributes)",
            "PUT",
            _customer("/devices"),
            "person add_device",
            _build_devices,
            _operation_devices,
            roles=(
                Role(
                    "device_id",
                    "--device-id-column",
                    "column of the device token (default 'device_id').",
                ),
                Role(
                    "platform",
                    "--platform-column",
                    "column of the platform, ios or android in any case (default 'platform').",
                    constant="--platform",
                ),
                Role(
                    "last_used",
                    "--last-used-column",
                    "column of the device's last use, read like dates (default 'last_used').",
                    required=False,
                    date=True,
                ),
            ),
            key=lambda record: f"devices:{record.identifier}\n{record.payload['device']['id']}",
        ),
        Kind(
            "objects",
            "create or update an object, e.g. a company (other columns: attributes)",
            "POST",
            _entity_path,
            "object identify",
            _build_objects,
            _as_sent,
            roles=_OBJECT_ROLES,
            person=False,
            key=lambda record: f"objects:{record.identifier}",
            last_wins=True,
        ),
        Kind(
            "relationships",
            "relate a person to an object (other columns: relationship attributes)",
            "POST",
            _entity_path,
            "person add_relationships",
            _build_relationships,
            _as_sent,
            roles=_OBJECT_ROLES,
            key=_relationship_key,
        ),
        Kind(
            DELETIONS,
            "delete a person and their data (other columns ignored)",
            "DELETE",
            _customer(),
            "person delete",
            _build_identifier_only,
            _person("delete"),
            data=False,
            body=False,
            diff=None,
            irreversible=True,
        ),
        Kind(
            SUPPRESSIONS,
            "delete a person and suppress their identifier (other columns ignored)",
            "POST",
            _customer("/suppress"),
            "person suppress",
            _build_identifier_only,
            _person("suppress"),
            data=False,
            body=False,
            diff=None,
            irreversible=True,
        ),
        Kind(
            "unsuppressions",
            "lift a suppression, so the identifier can be added again (other columns ignored)",
            "POST",
            _customer("/unsuppress"),
            "person unsuppress",
            _build_identifier_only,
            _person("unsuppress"),
            data=False,
            body=False,
            diff=None,
        ),
        Kind(
            "merges",
            "merge the secondary person into the primary (other columns ignored)",
            "POST",
            lambda record: "/api/v1/merge_customers",
            "person merge",
            _build_merges,
            _operation_merges,
            roles=(
                Role(
                    "primary",
                    "--primary-column",
                    "column of the person who remains (default 'primary').",
                    label="primary person",
                ),
                Role(
                    "secondary",
                    "--secondary-column",
                    "column of the person merged into the primary (default 'secondary').",
                    label="secondary person",
                ),
            ),
            person=False,
            data=False,
            idempotent=False,  # once merged, the secondary is gone: a repeat is refused
            diff=None,
            touches=_merged,
            irreversible=True,
        ),
    )
}


ROLES: dict[str, Role] = {role.name: role for kind in KINDS.values() for role in kind.roles}


def operation(record: Record) -> bytes:
    """The record's v2 operation, serialized as it is sent in a batch."""
    import orjson

    return orjson.dumps(KINDS[record.op].operation(record))
