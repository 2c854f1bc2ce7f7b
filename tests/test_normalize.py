"""normalize: chunks of rows to Records and Rejections, through the public functions `plan` and
`normalize` on small hand-built chunks.

Dates are checked against an independent oracle (Python's `datetime` and `zoneinfo`, integer
arithmetic), and the email fast path against email-validator itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bulksync import normalize as nz
from bulksync.errors import UsageError
from bulksync.normalize import NormalizeOptions, Rejection
from bulksync.operations import Record
from bulksync.source import Chunk

Item = Record | Rejection
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
FIRST = datetime(1900, 1, 1)
LAST = datetime(2100, 12, 31, 23, 59, 59, 999_999)


def pandas_settings(examples: int) -> settings:
    """Each example builds DataFrames: no per-example deadline."""
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# --- helpers --------------------------------------------------------------------------------


def csv_chunk(columns: Mapping[str, Sequence[str]], first_row: int = 1) -> Chunk:
    """A chunk as the CSV reader makes it: every cell a string ("" when empty)."""
    frame = pd.DataFrame({k: list(v) for k, v in columns.items()}, dtype="str")
    return Chunk(frame, list(range(first_row, first_row + len(frame))))


def jsonl_chunk(objects: Sequence[Mapping[str, Any]], first_row: int = 1) -> Chunk:
    """A chunk as the JSONL reader makes it: JSON types kept, a missing key is NaN."""
    frame = pd.DataFrame(list(objects), dtype=object)
    return Chunk(frame, list(range(first_row, first_row + len(frame))))


def run(chunk: Chunk, **options: Any) -> list[Item]:
    return nz.normalize(
        chunk, nz.plan_columns(NormalizeOptions(**options), list(chunk.frame.columns))
    )


def run_csv(columns: Mapping[str, Sequence[str]], **options: Any) -> list[Item]:
    return run(csv_chunk(columns), **options)


def run_jsonl(objects: Sequence[Mapping[str, Any]], **options: Any) -> list[Item]:
    return run(jsonl_chunk(objects), **options)


def only(items: list[Item]) -> Item:
    assert len(items) == 1, items
    return items[0]


def payload(item: Item) -> dict[str, Any]:
    assert isinstance(item, Record), item
    return item.payload


def reason(item: Item) -> str:
    assert isinstance(item, Rejection), item
    return item.reason


def assert_json_safe(value: Any) -> None:
    """No NaN or infinity anywhere: they are not JSON."""
    if isinstance(value, float):
        assert math.isfinite(value), value
    elif isinstance(value, dict):
        for v in value.values():
            assert_json_safe(v)
    else:
        assert value is None or isinstance(value, (str, int, bool)), repr(value)


# --- dates: the oracle ----------------------------------------------------------------------


def unix(dt: datetime) -> int:
    return (dt - EPOCH) // SECOND


def wall_time_seconds(wall: datetime, zone: tzinfo | None) -> int | None:
    """A naive wall time in `zone` (UTC when None) as Unix seconds; None when a DST change
    skips or repeats it (then fold=0 and fold=1 disagree, PEP 495)."""
    if zone is None:
        return unix(wall.replace(tzinfo=UTC))
    early, late = wall.replace(tzinfo=zone, fold=0), wall.replace(tzinfo=zone, fold=1)
    if early.utcoffset() != late.utcoffset():
        return None
    return unix(early)


def convert_dates(values: Sequence[Any], *, tz: str = "UTC", jsonl: bool = False) -> list[Any]:
    """What normalize makes of each value in a `created_at` column: the integer sent, or None
    when the row is rejected for its date."""
    ids = [f"c{i}" for i in range(len(values))]
    if jsonl:
        items = run_jsonl(
            [{"id": i, "created_at": v} for i, v in zip(ids, values, strict=True)], timezone=tz
        )
    else:
        items = run_csv({"id": ids, "created_at": values}, timezone=tz)
    out: list[Any] = []
    for item in items:
        if isinstance(item, Rejection):
            assert item.reason.startswith("created_at: cannot read "), item.reason
            out.append(None)
        else:
            value = item.payload["created_at"]
            assert type(value) is int, repr(value)
            out.append(value)
    return out


TIMESPECS: dict[str, dict[str, Any]] = {
    "minutes": {"second": 0, "microsecond": 0},
    "seconds": {"microsecond": 0},
    "milliseconds": {},  # truncated to whole milliseconds below
    "microseconds": {},
}
OFFSETS = st.integers(-12 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
ODD_OFFSETS = st.sampled_from([(5, 45), (5, 30), (-9, -30), (12, 45), (-3, -30), (8, 45)]).map(
    lambda hm: timezone(timedelta(hours=hm[0], minutes=hm[1]))
)
ZONES: st.SearchStrategy[Any] = st.one_of(st.none(), st.just(UTC), OFFSETS, ODD_OFFSETS)


@st.composite
def iso_case(draw: st.DrawFn, zone: tzinfo | None = None) -> tuple[str, int | None]:
    """An ISO-8601 string in one of several styles, and its Unix seconds by the oracle."""
    dt = draw(st.datetimes(FIRST, LAST, timezones=ZONES))
    spec = draw(st.sampled_from(sorted(TIMESPECS)))
    dt = dt.replace(**TIMESPECS[spec])
    if spec == "milliseconds":
        dt = dt.replace(microsecond=dt.microsecond // 1000 * 1000)
    text = dt.isoformat(draw(st.sampled_from("T ")), spec)
    if dt.tzinfo is None:
        return text, wall_time_seconds(dt, zone)
    style = draw(st.sampled_from(["colon", "no colon", "Z"]))
    if style == "no colon":
        text = text[:-3] + text[-2:]  # +05:45 -> +0545
    elif style == "Z" and dt.utcoffset() == timedelta(0):
        text = text[:-6] + "Z"
    return text, unix(dt)


@st.composite
def date_only_case(draw: st.DrawFn, zone: tzinfo | None = None) -> tuple[str, int | None]:
    day = draw(st.dates(FIRST.date(), LAST.date()))
    return day.isoformat(), wall_time_seconds(datetime.combine(day, time()), zone)


MIN_SECONDS, MAX_SECONDS = unix(FIRST.replace(tzinfo=UTC)), unix(LAST.replace(tzinfo=UTC))
EPOCH_SECONDS = st.integers(MIN_SECONDS, MAX_SECONDS)
# Milliseconds are told apart by size: |value| >= 1e11 (so 1966-10 to 1973-03 is seconds).
EPOCH_MILLIS = st.integers(MIN_SECONDS * 1000, MAX_SECONDS * 1000 + 999).filter(
    lambda ms: abs(ms) >= 100_000_000_000
)


def epoch_case(jsonl: bool) -> st.SearchStrategy[tuple[Any, int]]:
    """Epoch seconds or milliseconds, as CSV text or (JSONL) as JSON numbers."""
    seconds = EPOCH_SECONDS.map(lambda s: (s, s))
    millis = EPOCH_MILLIS.map(lambda ms: (ms, ms // 1000))
    plain = st.one_of(seconds, millis)
    if not jsonl:
        return plain.map(lambda case: (str(case[0]), case[1]))
    fractions = st.tuples(EPOCH_SECONDS, st.sampled_from([0.0, 0.25, 0.5, 0.75]))
    return st.one_of(
        plain,
        plain.map(lambda case: (str(case[0]), case[1])),  # a JSON string holding a number
        millis.map(lambda case: (float(case[0]), case[1])),  # 1714557600123.0
        fractions.map(lambda sf: (sf[0] + sf[1], sf[0])),  # floored, like datetime
    )


def any_date_case(jsonl: bool, zone: tzinfo | None = None) -> st.SearchStrategy[Any]:
    return st.one_of(iso_case(zone), date_only_case(zone), epoch_case(jsonl))


# --- dates: tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("jsonl", [False, True], ids=["csv", "jsonl"])
@pandas_settings(60)
@given(data=st.data())
def test_dates_match_the_datetime_oracle(jsonl: bool, data: st.DataObject) -> None:
    cases = data.draw(st.lists(any_date_case(jsonl), min_size=1, max_size=25))
    assert convert_dates([c[0] for c in cases], jsonl=jsonl) == [c[1] for c in cases]


@pytest.mark.parametrize("jsonl", [False, True], ids=["csv", "jsonl"])
@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])
@pandas_settings(30)
@given(data=st.data())
def test_naive_dates_follow_timezone_and_aware_ones_keep_their_offset(
    zone: str, jsonl: bool, data: st.DataObject
) -> None:
    cases = data.draw(st.lists(any_date_case(jsonl, ZoneInfo(zone)), min_size=1, max_size=25))
    assert convert_dates([c[0] for c in cases], tz=zone, jsonl=jsonl) == [c[1] for c in cases]


def second_sunday_of_march(year: int) -> date:
    first = date(year, 3, 1)
    return first + timedelta(days=(6 - first.weekday()) % 7 + 7)


def first_sunday_of_november(year: int) -> date:
    first = date(year, 11, 1)
    return first + timedelta(days=(6 - first.weekday()) % 7)


@pandas_settings(40)
@given(
    years=st.lists(st.integers(2007, 2100), min_size=1, max_size=10),
    minutes=st.lists(st.integers(0, 4 * 60 - 1), min_size=10, max_size=10),
    spring=st.lists(st.booleans(), min_size=10, max_size=10),
)
def test_new_york_wall_times_near_dst_changes(
    years: list[int], minutes: list[int], spring: list[bool]
) -> None:
    """US rules since 2007: 02:00-02:59 on the second Sunday of March does not exist, and
    01:00-01:59 on the first Sunday of November happens twice. Both must be rejected."""
    zone = ZoneInfo("America/New_York")
    walls = [
        datetime.combine(second_sunday_of_march(y) if s else first_sunday_of_november(y), time())
        + timedelta(minutes=m)
        for y, m, s in zip(years, minutes, spring, strict=False)
    ]
    expected = [wall_time_seconds(w, zone) for w in walls]
    for wall, seconds, is_spring in zip(walls, expected, spring, strict=False):
        changing_hour = 2 if is_spring else 1  # the oracle agrees with the rules
        assert (seconds is None) == (wall.hour == changing_hour), wall
    assert convert_dates([w.isoformat() for w in walls], tz="America/New_York") == expected


@pytest.mark.parametrize(
    ("zone", "text", "expected"),
    [
        ("America/New_York", "2024-03-10T02:30:00", None),  # skipped by the spring change
        ("America/New_York", "2024-11-03 01:30", None),  # happens twice
        ("America/New_York", "2024-11-03T01:30:00-05:00", 1730615400),  # explicit offset: fine
        ("America/New_York", "2024-07-01T12:00:00", 1719849600),  # EDT, -04:00
        ("America/New_York", "2024-01-15", 1705294800),  # midnight EST
        ("Europe/Paris", "2024-03-31T02:30:00", None),
        ("Europe/Paris", "2024-10-27T02:30:00", None),
        ("Asia/Kolkata", "2024-05-01T12:00:00", 1714545000),  # +05:30, no DST
        ("Asia/Kathmandu", "2024-05-01T12:00", 1714544100),  # +05:45
        ("UTC", "2024-05-01T12:00:00", 1714564800),
        ("utc", "2024-05-01T12:00:00", 1714564800),
    ],
)
def test_timezone_examples(zone: str, text: str, expected: int | None) -> None:
    assert convert_dates([text], tz=zone) == [expected]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T12:00:00+02:00", 1714557600),
        ("2024-05-01T10:00:00Z", 1714557600),
        ("2024-05-01 10:00:00.999999+00:00", 1714557600),  # fractions are floored
        ("1969-12-31T23:59:59.5Z", -1),  # floored, not truncated towards zero
        ("2024-05-01T15:45:00+0545", 1714557600),
        ("2024-05-01", 1714521600),
        ("  2024-05-01  ", 1714521600),  # surrounding spaces are not part of a date
        ("1714557600", 1714557600),
        ("1714557600.9", 1714557600),
        ("-1.5", -2),
        ("1714557600123", 1714557600),  # >= 1e11: milliseconds
        ("99999999999", 99999999999),  # just under 1e11: still seconds (year 5138)
        ("100000000000", 100000000),  # 1e11: milliseconds (March 1973)
        ("-2208988800000", -2208988800),  # 1900-01-01 in milliseconds
        ("-2208988800", -2208988800),  # and in seconds
        ("0", 0),
        ("31/02/2023", None),
        ("2024-02-30", None),
        ("2024-05-01T25:00:00", None),
        ("yesterday", None),
        ("1e12", None),
        ("+1714557600", None),
        ("2024-05-01T12:00:00+25:00", None),
        ("99999999999999999999999", None),  # out of range, even as milliseconds
        ("10000-01-01", None),
    ],
)
def test_date_examples(value: str, expected: int | None) -> None:
    assert convert_dates([value]) == [expected]


def test_json_dates_numbers_strings_and_wrong_types() -> None:
    values = [1714557600, 1714557600123, -2208988800000, 1.5e12, "2024-05-01", True, [1], {}]
    assert convert_dates(values, jsonl=True) == [
        1714557600,
        1714557600,
        -2208988800,
        1500000000,
        1714521600,
        None,  # a boolean is not a date
        None,
        None,
    ]


def test_empty_dates_are_left_out_or_cleared() -> None:
    chunk = jsonl_chunk(
        [{"id": "a", "created_at": None}, {"id": "b"}, {"id": "c", "created_at": 0}]
    )
    assert [payload(i) for i in run(chunk)] == [
        {"id": "a"},
        {"id": "b"},
        {"id": "c", "created_at": 0},
    ]
    items = run_csv({"id": ["a"], "created_at": [""]}, empty="clear")
    assert payload(only(items)) == {"id": "a", "created_at": ""}


def test_date_rejection_names_column_and_value() -> None:
    item = only(run_csv({"id": ["a"], "signed_up": ["31/02/2023"]}, date_columns=("signed_up",)))
    assert reason(item) == (
        "signed_up: cannot read '31/02/2023' as a date (expected ISO-8601 such as"
        " 2024-05-01T12:00:00+02:00, a date 2024-05-01, or epoch seconds/milliseconds)"
    )
    assert item.identifier == "a"


# --- emails ---------------------------------------------------------------------------------


def library_accepts(address: str) -> bool:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def assert_fast_path_sound(addresses: list[str]) -> None:
    """Every address the fast path lets through, email-validator accepts; and through
    normalize (CSV and JSONL chunks), every address gets exactly the library's verdict."""
    certain = nz.certainly_valid_emails(pd.Series(addresses, dtype="str"))
    assert len(certain) == len(addresses)
    for address, sure in zip(addresses, certain.tolist(), strict=True):
        if sure:
            assert library_accepts(address), address
    ids = [f"c{i}" for i in range(len(addresses))]
    # Addresses are trimmed first; one that is all spaces is an empty cell, left out.
    verdicts = [library_accepts(a.strip()) or not a.strip() for a in addresses]
    items = run_csv({"id": ids, "email": addresses})
    assert [isinstance(i, Record) for i in items] == verdicts
    items = run_jsonl([{"id": i, "email": a} for i, a in zip(ids, addresses, strict=True)])
    assert [isinstance(i, Record) for i in items] == verdicts


LABEL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
LOCAL_CHARS = LABEL_CHARS + "_+-."


@st.composite
def adversarial_email(draw: st.DrawFn) -> str:
    """Addresses built to sit on the edges email-validator checks: lengths (local part 64,
    label 63, address 254), special-use TLDs, '--' in labels, Unicode, whitespace."""
    local = draw(
        st.one_of(
            st.text(LOCAL_CHARS, min_size=1, max_size=70),
            st.integers(60, 68).map(lambda n: "a" * n),
            st.sampled_from(["chloé", "用户", "a..b", ".a", "a.", "a b", '"quoted"', "a@b"]),
        )
    )
    labels = draw(
        st.lists(
            st.one_of(
                st.text(LABEL_CHARS + "-", min_size=1, max_size=12),
                st.integers(60, 66).map(lambda n: "d" * n),
                st.sampled_from(["ab--cd", "xn--bcher-kva", "xn--zz", "-a", "a-", "exémple"]),
            ),
            min_size=1,
            max_size=5,
        )
    )
    tld = draw(
        st.sampled_from(
            [
                *("com", "fr", "io", "example", "c", "123", "co1", "xn--p1ai", "рф", "com\n"),
                *("test", "TEST", "local", "localhost", "onion", "invalid", "arpa"),
            ]
        )
    )
    address = f"{local}@{'.'.join([*labels, tld])}"
    padding = draw(st.sampled_from(["", "", "", " ", "\n"]))
    return address + padding


@pandas_settings(50)
@given(st.lists(st.from_regex(nz._SAFE_EMAIL, fullmatch=True), min_size=1, max_size=6))
@example(["a@" + "b" * 63 + ".com", "a@" + "b" * 64 + ".com", "x" * 64 + "@ex.com"])
@example(["x" * 65 + "@ex.com", "a@b.test", "a@b.LOCAL", "a@x.onion", "a@b.localhost"])
@example(["a" * 32 + "." + "b" * 31 + "@ex.com", "a" * 32 + "." + "b" * 32 + "@ex.com"])
@example(["a@" + ".".join(["b" * 60] * 4) + ".com", "a@" + ".".join(["b" * 62] * 4) + ".co"])
def test_fast_path_only_passes_addresses_the_library_accepts(addresses: list[str]) -> None:
    assert_fast_path_sound(addresses)


@pandas_settings(150)
@given(st.lists(adversarial_email(), min_size=1, max_size=30))
def test_fast_path_on_adversarial_addresses(addresses: list[str]) -> None:
    assert_fast_path_sound(addresses)


def test_fast_path_takes_ordinary_addresses() -> None:
    """The fast path is not vacuous: plain addresses skip the library."""
    addresses = ["ann@example.com", "first.last+tag@mail.example.co.uk", "a_b-c@x-y.io"]
    assert nz.certainly_valid_emails(pd.Series(addresses, dtype="str")).tolist() == [True] * 3
    doubtful = ["a@b.test", "chloé@exemple.fr", "a@" + "b" * 64 + ".com", "a@ab--cd.com"]
    assert nz.certainly_valid_emails(pd.Series(doubtful, dtype="str")).tolist() == [False] * 4


@pytest.mark.parametrize(
    "address",
    ["maria.rossi@@example.com", "no-at-sign.example.com", "a@b.test", "a@b", "a b@example.com"],
)
def test_invalid_email_is_rejected_with_the_library_message(address: str) -> None:
    with pytest.raises(EmailNotValidError) as exc:
        validate_email(address, check_deliverability=False)
    item = only(run_csv({"id": ["c1"], "email": [address]}))
    assert reason(item) == f"email: invalid email {address!r}: {exc.value}"
    assert item.identifier == "c1"


@pytest.mark.parametrize("address", ["chloé@exemple.fr", "用户@例子.广告", "josé@bücher.de"])
def test_valid_unicode_email_is_accepted_as_written(address: str) -> None:
    assert not nz.certainly_valid_emails(pd.Series([address], dtype="str"))[0]  # library path
    assert payload(only(run_csv({"id": ["c1"], "email": [address]}))) == {
        "id": "c1",
        "email": address,
    }


def test_email_column_option_and_email_as_identifier() -> None:
    items = run_csv({"work": ["bad@", "ok@example.com"], "id": ["1", "2"]}, email_column="work")
    assert reason(items[0]).startswith("work: invalid email 'bad@': ")
    assert payload(items[1]) == {"work": "ok@example.com", "id": "2"}
    items = run_csv({"email": ["ann@example.com", "nope"]})  # no id column: email identifies
    assert items[0] == Record(1, "ann@example.com", {"email": "ann@example.com"})
    assert items[1].identifier == "nope"
    assert reason(items[1]).startswith("email: invalid email 'nope'")


def test_json_email_must_be_a_string() -> None:
    items = run_jsonl([{"id": "1", "email": 42}, {"id": "2", "email": None}, {"id": "3"}])
    assert reason(items[0]) == "email: an email must be a string"
    assert payload(items[1]) == {"id": "2"}
    assert payload(items[2]) == {"id": "3"}


# --- shaping: rename, exclude, types, empty, update-only --------------------------------------


def test_rename_and_exclude() -> None:
    chunk = csv_chunk({"id": ["1"], "name": ["Ann"], "secret": ["x"], "zip": ["01234"]})
    items = run(chunk, rename={"name": "full_name"}, exclude=frozenset({"secret"}))
    assert payload(only(items)) == {"id": "1", "full_name": "Ann", "zip": "01234"}


def test_excluded_identifier_still_identifies() -> None:
    items = run_csv({"id": ["1"], "email": ["a@example.com"]}, exclude=frozenset({"id"}))
    assert only(items) == Record(1, "1", {"email": "a@example.com"})


def test_renamed_identifier_column() -> None:
    items = run_csv({"customer_id": ["7"], "n": ["x"]}, id_column="customer_id")
    assert only(items) == Record(1, "7", {"customer_id": "7", "n": "x"})
    items = run_csv({"customer_id": ["7"]}, id_column="customer_id", rename={"customer_id": "id"})
    assert only(items) == Record(1, "7", {"id": "7"})


@pytest.mark.parametrize(
    ("kind", "cell", "expected"),
    [
        ("int", "42", 42),
        ("int", "-7", -7),
        ("int", " 8 ", 8),
        ("int", "007", 7),
        ("int", "18446744073709551615", 18446744073709551615),  # the largest orjson writes
        ("float", "1.5", 1.5),
        ("float", "-2", -2.0),
        ("float", "1e3", 1000.0),
        ("bool", "true", True),
        ("bool", "Yes", True),
        ("bool", "y", True),
        ("bool", "1", True),
        ("bool", "FALSE", False),
        ("bool", "no", False),
        ("bool", "0", False),
        ("str", "01234", "01234"),
    ],
)
def test_type_converts_csv_cells(kind: str, cell: str, expected: Any) -> None:
    value = payload(only(run_csv({"id": ["1"], "v": [cell]}, types={"v": kind})))["v"]
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("kind", "cell"),
    [
        ("int", "4.2"),
        ("int", "abc"),
        ("int", "1e3"),
        ("int", "18446744073709551616"),  # past 64 bits: orjson could not write it
        ("int", "-9223372036854775809"),
        ("int", "9" * 5000),  # past Python's int() digit limit: a reason, not a crash
        ("float", "nan"),
        ("float", "NaN"),
        ("float", "inf"),
        ("float", "-Infinity"),
        ("float", "1e400"),
        ("float", "one"),
        ("bool", "maybe"),
        ("bool", "2"),
    ],
)
def test_type_rejects_what_does_not_convert(kind: str, cell: str) -> None:
    item = only(run_csv({"id": ["1"], "v": [cell]}, types={"v": kind}))
    shown = repr(cell) if len(repr(cell)) <= 60 else repr(cell)[:57] + "..."
    assert reason(item) == f"v: {shown} is not a valid {kind}"


def test_type_converts_json_values() -> None:
    objects: list[dict[str, Any]] = [
        {"id": "1", "i": 3.0, "f": 2, "b": 1, "s": 42},
        {"id": "2", "i": 3.5},
        {"id": "3", "f": True},
        {"id": "4", "b": "no", "s": True},
        {"id": "5", "s": 1.5},
        {"id": "6", "s": {"a": 1}},
        {"id": "7", "i": "12"},
    ]
    items = run_jsonl(objects, types={"i": "int", "f": "float", "b": "bool", "s": "str"})
    assert payload(items[0]) == {"id": "1", "i": 3, "f": 2.0, "b": True, "s": "42"}
    assert type(payload(items[0])["i"]) is int and type(payload(items[0])["f"]) is float
    assert reason(items[1]) == "i: 3.5 is not a valid int"
    assert reason(items[2]) == "f: True is not a valid float"
    assert payload(items[3]) == {"id": "4", "b": False, "s": "true"}
    assert payload(items[4]) == {"id": "5", "s": "1.5"}
    assert reason(items[5]) == "s: {'a': 1} is not a valid str"
    assert payload(items[6]) == {"id": "7", "i": 12}


def test_type_on_a_date_column_is_refused() -> None:
    with pytest.raises(UsageError, match="'created_at' is a date column"):
        run_csv({"id": ["1"], "created_at": ["2024-05-01"]}, types={"created_at": "int"})


def test_empty_cells_skip_and_clear() -> None:
    columns = {"id": ["1", "2"], "a": ["", "x"], "b": ["y", ""]}
    assert [payload(i) for i in run_csv(columns)] == [{"id": "1", "b": "y"}, {"id": "2", "a": "x"}]
    assert [payload(i) for i in run_csv(columns, empty="clear")] == [
        {"id": "1", "a": "", "b": "y"},
        {"id": "2", "a": "x", "b": ""},
    ]
    objects: list[dict[str, Any]] = [{"id": "1", "a": None}, {"id": "2", "b": 5}]
    assert [payload(i) for i in run_jsonl(objects, empty="clear")] == [
        {"id": "1", "a": "", "b": ""},
        {"id": "2", "a": "", "b": 5},
    ]


def test_empty_typed_cell_is_not_a_conversion_error() -> None:
    items = run_csv({"id": ["1"], "n": [""]}, types={"n": "int"})
    assert payload(only(items)) == {"id": "1"}


def test_update_only_adds_update_flag() -> None:
    items = run_csv({"id": ["1"], "a": ["x"]}, update_only=True)
    assert payload(only(items)) == {"id": "1", "a": "x", "_update": True}


def test_csv_values_stay_strings() -> None:
    items = run_csv({"id": ["1"], "zip": ["01234"], "n": ["42"], "flag": ["true"]})
    assert payload(only(items)) == {"id": "1", "zip": "01234", "n": "42", "flag": "true"}


def test_json_types_are_kept() -> None:
    objects: list[dict[str, Any]] = [
        {"id": 1, "n": 42, "x": 1.5, "ok": True, "zip": "01234"},
        {"id": 2, "ok": False},
    ]
    items = run_jsonl(objects)
    assert items[0] == Record(1, "1", {"id": 1, "n": 42, "x": 1.5, "ok": True, "zip": "01234"})
    assert type(payload(items[0])["n"]) is int  # not 42.0, though row 2 has no "n"
    assert items[1] == Record(2, "2", {"id": 2, "ok": False})


def test_nan_never_reaches_a_payload() -> None:
    nan = float("nan")
    objects: list[dict[str, Any]] = [
        {"id": "1", "a": nan, "n": 1, "created_at": nan, "email": nan},
        {"id": "2", "a": "x", "n": nan, "created_at": 0, "email": "a@example.com"},
    ]
    for options in ({}, {"types": {"n": "float"}}, {"empty": "clear"}):
        items = run_jsonl(objects, **options)
        for item in items:
            assert_json_safe(payload(item))
    assert payload(run_jsonl(objects)[0]) == {"id": "1", "n": 1}
    assert payload(run_jsonl(objects, empty="clear")[0]) == {
        "id": "1",
        "a": "",
        "n": 1,
        "created_at": "",
        "email": "",
    }


# --- identifiers and the API's limits ---------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "ok"),
    [
        ("a" * 150, True),
        ("a" * 151, False),
        ("é" * 75, True),  # 150 bytes in 75 characters
        ("é" * 75 + "a", False),  # 151 bytes
        ("€" * 50, True),  # 3 bytes each
        ("€" * 49 + "ab", True),  # 149 bytes
        ("€" * 49 + "éa", True),  # 147 + 2 + 1 = 150 bytes
        ("€" * 49 + "éab", False),  # 151 bytes
        ("😀" * 37, True),  # 148 bytes in 37 characters
        ("😀" * 37 + "ab", True),  # 150 bytes
        ("😀" * 37 + "abc", False),  # 151 bytes
        ("😀" * 38, False),  # 152 bytes in 38 characters
    ],
)
def test_identifier_limit_is_150_bytes(identifier: str, ok: bool) -> None:
    assert ok == (len(identifier.encode()) <= 150)  # the table is right about the bytes
    item = only(run_csv({"id": [identifier]}))
    if ok:
        assert item == Record(1, identifier, {"id": identifier})
    else:
        assert reason(item) == "id: identifier is longer than 150 bytes"


def test_identifier_from_json_numbers_and_bad_types() -> None:
    objects: list[dict[str, Any]] = [
        {"id": 42},
        {"id": 42.0},
        {"id": 1.5},
        {"id": True},
        {"id": None},
        {"id": ""},
        {},
    ]
    items = run_jsonl(objects)
    assert items[0] == Record(1, "42", {"id": 42})
    assert items[1] == Record(2, "42", {"id": 42.0})
    assert items[2] == Rejection(3, None, "id: identifier 1.5 must be a string or an integer")
    assert items[3] == Rejection(4, None, "id: identifier True must be a string or an integer")
    assert items[4:] == [Rejection(r, None, "id: empty identifier") for r in (5, 6, 7)]


def test_value_limit_is_1000_bytes() -> None:
    cells = ["a" * 1000, "a" * 1001, "é" * 500, "é" * 500 + "a", "😀" * 250, "😀" * 251]
    items = run_csv({"id": [str(i) for i in range(len(cells))], "notes": cells})
    verdicts = [isinstance(i, Record) for i in items]
    assert verdicts == [True, False, True, False, True, False]
    for item in items:
        if isinstance(item, Rejection):
            assert item.reason == "notes: value is longer than 1000 bytes"


def test_attribute_name_limit_is_150_bytes() -> None:
    ok, long = "n" * 150, "é" * 75 + "n"
    items = run_csv({"id": ["1", "2"], ok: ["x", "y"], long: ["x", ""]})
    assert reason(items[0]).startswith("attribute name 'éééé")
    assert reason(items[0]).endswith("is longer than 150 bytes")
    assert payload(items[1]) == {"id": "2", ok: "y"}  # the long name is not sent for row 2
    items = run_csv({"id": ["2"], long: [""]}, empty="clear")  # ... unless "" is sent
    assert reason(only(items)).endswith("is longer than 150 bytes")
    items = run_csv({"id": ["1"], "x": ["v"]}, rename={"x": long})
    assert reason(only(items)).endswith("is longer than 150 bytes")


def test_at_most_300_attributes() -> None:
    names = [f"c{i}" for i in range(300)]
    full = {"id": ["1", "2"]} | {n: ["v", "v"] for n in names[:299]}
    items = run_csv(full)
    assert all(isinstance(i, Record) and len(i.payload) == 300 for i in items)
    items = run_csv(full, update_only=True)  # _update is the 301st
    assert reason(items[0]) == "more than 300 attributes in one row"
    over = full | {"extra": ["v", ""]}  # 301 columns, but row 2 sends only 300
    items = run_csv(over)
    assert reason(items[0]) == "more than 300 attributes in one row"
    assert len(payload(items[1])) == 300


def test_json_objects_arrays_and_nul_are_refused() -> None:
    objects: list[dict[str, Any]] = [
        {"id": "1", "v": {"a": 1}},
        {"id": "2", "v": [1, 2]},
        {"id": "3", "v": "a\x00b"},
        {"id": "4", "v": "fine"},
        {"id": "5", "v": True},
    ]
    items = run_jsonl(objects)
    message = "v: a JSON object or array cannot be sent; use a string, number or boolean"
    assert [reason(i) for i in items[:2]] == [message, message]
    assert reason(items[2]) == "v: contains a NUL character"
    assert payload(items[3]) == {"id": "4", "v": "fine"}
    assert payload(items[4]) == {"id": "5", "v": True}
    item = only(run_csv({"id": ["1"], "v": ["a\x00b"]}))
    assert reason(item) == "v: contains a NUL character"


def test_first_problem_is_the_reason_and_rows_keep_their_order() -> None:
    frame = pd.DataFrame(
        {"id": ["", "b", "c"], "email": ["x", "bad", "c@example.com"]}, dtype="str"
    )
    chunk = Chunk(
        frame, [4, 6, 7], [(5, "row has 3 fields but the header has 2"), (8, "malformed")]
    )
    items = nz.normalize(chunk, nz.plan_columns(NormalizeOptions(), ["id", "email"]))
    assert [i.row for i in items] == [4, 5, 6, 7, 8]
    assert items[0] == Rejection(4, None, reason(items[0]))
    assert reason(items[0]).startswith("email: invalid email 'x'")  # columns in order
    assert items[1] == Rejection(5, None, "row has 3 fields but the header has 2")
    assert reason(items[2]).startswith("email: invalid email 'bad'")
    assert items[3] == Record(7, "c", {"id": "c", "email": "c@example.com"})
    assert items[4] == Rejection(8, None, "malformed")


# --- later JSONL chunks: keys the first chunk did not have ------------------------------------


def test_keys_first_seen_in_a_later_chunk_get_the_same_treatment() -> None:
    """The plan is made from the first chunk's columns; a JSONL key that first appears later
    must still be converted (created_at), validated (email), and never sent as a second id."""
    first = jsonl_chunk([{"email": "a@example.com"}])
    column_plan = nz.plan_columns(NormalizeOptions(), list(first.frame.columns))
    later = jsonl_chunk(
        [
            {"email": "b@example.com", "created_at": "2024-05-01"},
            {"email": "not-an-email"},
            {"email": "c@example.com", "id": "other"},
        ],
        first_row=2,
    )
    items = nz.normalize(later, column_plan)
    assert items[0] == Record(
        2, "b@example.com", {"email": "b@example.com", "created_at": 1714521600}
    )
    assert reason(items[1]).startswith("email: invalid email 'not-an-email'")
    assert reason(items[2]).startswith("id: an 'id' attribute would differ from the identifier")


# --- plan: options checked against the columns ----------------------------------------------


@pytest.mark.parametrize(
    ("columns", "options", "message"),
    [
        (["name", "zip"], {}, "no identifier column: .*columns found: name, zip"),
        (["id"], {"id_column": "cid"}, "--id-column 'cid': no such column .*columns found: id"),
        (["id", "cid"], {"id_column": "cid"}, "an 'id' column would also be sent"),
        (["id"], {"email_column": "mail"}, "--email-column 'mail': no such column"),
        (["id"], {"date_columns": ("d",)}, "--date-column 'd': no such column"),
        (["id"], {"types": {"n": "int"}}, "--type 'n': no such column"),
        (["id"], {"rename": {"a": "b"}}, "--rename 'a': no such column"),
        (["id"], {"exclude": frozenset({"a"})}, "--exclude 'a': no such column"),
        (["id", "a", "b"], {"rename": {"a": "b"}}, "columns 'a' and 'b' would both be sent as 'b'"),
        (["id"], {"timezone": "Mars/Olympus"}, "--timezone 'Mars/Olympus': unknown time zone"),
        (["id"], {"timezone": "America"}, "--timezone 'America': unknown time zone"),
        (["id"], {"timezone": "../../etc/passwd"}, "unknown time zone"),
    ],
)
def test_plan_refuses_bad_options(columns: list[str], options: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        nz.plan_columns(NormalizeOptions(**options), columns)


def test_plan_accepts_id_with_exclude_or_rename() -> None:
    for options in (
        {"id_column": "cid", "exclude": frozenset({"id"})},
        {"id_column": "cid", "rename": {"id": "legacy_id"}},
    ):
        chunk = csv_chunk({"id": ["1"], "cid": ["c1"]})
        item = only(run(chunk, **options))
        assert isinstance(item, Record) and item.identifier == "c1"
        assert "id" not in item.payload


# --- CSV columns checked whole in pyarrow ----------------------------------------------------
# A CSV column is pandas' pyarrow-backed strings: its cells are checked in pyarrow without a
# Python object each (normalize._arrow_strings); a JSONL column's strings one by one. Both must
# say the same of the same strings, whatever the arrow layout the reader made.

CELL = st.one_of(
    st.text(alphabet="a.é😀@ \x00-1", max_size=8),
    st.sampled_from(
        [
            *("", " ", ".", "..", " . ", "a@b.com", " c@d.org ", "bad@@x.com", "2024-05-01"),
            *("1700000000", "x" * 151, "é" * 75, "é" * 76, "😀" * 250, "😀" * 251, "y" * 1001),
        ]
    ),
)
COLUMNS = ("id", "email", "notes", "created_at")


def arrow_chunk(columns: Mapping[str, Sequence[str]]) -> Chunk:
    """A chunk as the reader makes it from blocks parsed by pyarrow, at its least tidy: each
    column two chunks, sliced out of arrays that hold more (a NUL, a long string) around it."""
    n = len(next(iter(columns.values())))
    padded = pa.table(
        {k: pa.array(["pad\x00", *v, "z" * 2000], pa.large_string()) for k, v in columns.items()}
    )
    rows = padded.slice(1, n)
    frame = pa.concat_tables([rows.slice(0, n // 2), rows.slice(n // 2)]).to_pandas()
    assert all(isinstance(dtype, pd.StringDtype) for dtype in frame.dtypes)
    return Chunk(frame, list(range(1, n + 1)))


def comparable(items: list[Item]) -> list[tuple[Any, ...]]:
    """Items with their payloads' key order (what a results line shows)."""
    return [
        (item.row, item.identifier, list(item.payload.items()))
        if isinstance(item, Record)
        else (item.row, item.identifier, item.reason)
        for item in items
    ]


@pandas_settings(100)
@given(st.lists(st.tuples(*(CELL for _ in COLUMNS)), min_size=1, max_size=8))
@example([("a", "a@b.com", "\x00", "2024-05-01"), ("..", " c@d.org ", "é" * 501, "")])
@example([("é" * 75, "", "😀" * 250, ""), ("é" * 76, "a@b.test", "y" * 1001, "1700000000")])
def test_csv_columns_in_pyarrow_read_as_jsonl_strings(rows: list[tuple[str, ...]]) -> None:
    columns = {name: [row[i] for row in rows] for i, name in enumerate(COLUMNS)}
    objects = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
    expected = comparable(run(jsonl_chunk(objects)))
    assert comparable(run(csv_chunk(columns))) == expected
    assert comparable(run(arrow_chunk(columns))) == expected


@pandas_settings(100)
@given(st.lists(st.one_of(st.none(), CELL), max_size=10))
def test_identifiers_checked_whole_as_one_by_one(cells: list[str | None]) -> None:
    values = np.array(cells, dtype=object)
    whole = nz._identifiers("id", values, nz._string_array(values))
    alone = nz._identifiers("id", values, None)
    assert [a.tolist() for a in whole] == [a.tolist() for a in alone]
