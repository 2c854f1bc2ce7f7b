"""Mapping files: a sync's column options in one reviewable TOML file (`--mapping`), the presets
shipped for common exports (`--preset`), and a starting mapping written from an input's header
(`bulksync mapping INPUT`).

A mapping is read whole and every key checked (an unknown key, a wrong type: a UsageError naming
the file, the line and the key) before anything is read or sent; its columns are checked against
the input's header by normalize.plan_columns, which names the line too. Options given on the
command line override the mapping's, column by column.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import itertools
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .defaults import PRESETS as PRESETS
from .errors import UsageError
from .normalize import ColumnType, NormalizeOptions, share_of_dates, snake_case
from .operations import KINDS, PEOPLE, PLATFORMS, role_keys
from .source import SourceOptions, input_name, read_chunks

COLUMN_TYPES = (*get_args(ColumnType), "date", "email")


# The top-level keys of a mapping and their types; the kinds' column keys are added below.
SETTINGS: dict[str, type] = {
    "kind": str,
    "id_column": str,
    "email_column": str,
    "timezone": str,
    "empty": str,
    "update_only": bool,
    "snake_case": bool,
    "skip_missing_columns": bool,
    "format": str,
    "encoding": str,
    "delimiter": str,
    **dict.fromkeys(role_keys(), str),
}
SOURCE_SETTINGS = ("format", "encoding", "delimiter")
COLUMN_KEYS: dict[str, type] = {"name": str, "type": str, "exclude": bool, "when_filled": dict}


@dataclass(frozen=True)
class Column:
    """What a mapping says of one input column."""

    name: str | None = None  # sent under this name
    type: str | None = None  # one of COLUMN_TYPES
    exclude: bool = False
    when_filled: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ColumnMapping:
    """A mapping file, checked: its settings, its columns, and the attributes it sets."""

    origin: str  # the file's path, or "preset NAME", for messages
    settings: Mapping[str, Any] = field(default_factory=dict)
    columns: Mapping[str, Column] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    places: Mapping[str, str] = field(default_factory=dict)  # column -> "FILE line N"
    setting_places: Mapping[str, str] = field(default_factory=dict)  # key -> "FILE line N"

    def where(self, column: str) -> str:
        return self.places.get(column, self.origin)

    def under(self, other: ColumnMapping) -> ColumnMapping:
        """This mapping with `other`'s settings, columns and attributes over its own (a job
        step's keys over its mapping file's)."""
        return ColumnMapping(
            other.origin,
            {**self.settings, **other.settings},
            {**self.columns, **other.columns},
            {**self.attributes, **other.attributes},
            {**self.places, **other.places},
            {**self.setting_places, **other.setting_places},
        )

    @property
    def source(self) -> dict[str, str]:
        """The input's format, encoding and delimiter, as far as the mapping says."""
        return {k: self.settings[k] for k in SOURCE_SETTINGS if k in self.settings}


def load(path: str | Path) -> ColumnMapping:
    """Read and check a mapping file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--mapping {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--mapping {path} is a directory, not a mapping file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--mapping {path}: not UTF-8 text; is it a mapping file?") from None
    except OSError as exc:
        raise UsageError(f"--mapping {path}: cannot read: {exc.strerror}") from None
    return parse(text, str(path))


def preset_text(name: str) -> str:
    if name not in PRESETS:
        raise UsageError(f"--preset {name!r}: must be one of {', '.join(PRESETS)}")
    return resources.files("bulksync.presets").joinpath(f"{name}.toml").read_text("utf-8")


def preset(name: str) -> ColumnMapping:
    return parse(preset_text(name), f"preset {name}")


def parse(text: str, origin: str) -> ColumnMapping:
    """Check a mapping's text; `origin` names it in messages."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{origin}: not a valid TOML file: {exc}") from None
    return from_table(table, origin, text)


def from_table(table: Mapping[str, Any], origin: str, text: str = "") -> ColumnMapping:
    """Check a mapping already read as a TOML table (a mapping file, or a job step's keys);
    `text` is the file's, to find the line of a key in messages."""

    def fail(key: str, message: str, table: str | None = None) -> UsageError:
        line = line_of(text, key, table)
        return UsageError(f"{origin}{f' line {line}' if line else ''}: {key}: {message}")

    settings: dict[str, Any] = {}
    columns: dict[str, Column] = {}
    attributes: dict[str, Any] = {}
    for key, value in table.items():
        if key == "columns":
            if not isinstance(value, dict):
                raise fail(key, "must be a table: [columns]")
            for column, spec in value.items():
                columns[column] = _column(column, spec, fail)
        elif key == "set":
            if not isinstance(value, dict):
                raise fail(key, "must be a table: [set]")
            for name, v in value.items():
                if (problem := _value_problem(v)) is not None:
                    raise fail(name, problem, "set")
            attributes = dict(value)
        elif key in SETTINGS:
            if type(value) is not SETTINGS[key]:
                raise fail(key, f"must be a {_type_name(SETTINGS[key])}, not {value!r}")
            settings[key] = value
        elif key in ("site_id", "api_key", "credentials"):
            raise fail(
                key,
                "credentials stay in the environment (CUSTOMERIO_SITE_ID and"
                " CUSTOMERIO_API_KEY), never in a file",
            )
        elif key.replace("-", "_") in SETTINGS:  # an option's name, copied from a command line
            raise fail(key, f"unknown key; write {key.replace('-', '_')} (with _, not -)")
        else:
            raise fail(
                key, f"unknown key; a mapping's keys are {', '.join(SETTINGS)}, [set] and [columns]"
            )
    kind = settings.get("kind", PEOPLE)
    if kind not in KINDS:
        raise fail("kind", f"{kind!r} must be one of {', '.join(KINDS)}")
    flagged: dict[str, tuple[str, Any]] = {}  # attribute -> the first column setting it
    for column, spec in columns.items():
        for name, value in spec.when_filled.items():
            first, earlier = flagged.setdefault(name, (column, value))
            if (type(earlier), earlier) != (type(value), value):
                # A row filling both columns would get whichever comes last in the file.
                raise fail(
                    column,
                    f"when_filled: {name} = {_shown(value)}, but column {first!r} sets it to"
                    f" {_shown(earlier)}; a row filling both would get one or the other",
                    "columns",
                )
    emails = [c for c, spec in columns.items() if spec.type == "email"]
    if len(emails) > 1:
        raise fail(emails[1], 'only one column can have type = "email"', "columns")
    if "platform" in settings and settings["platform"].lower() not in PLATFORMS:
        raise fail("platform", f"must be one of {', '.join(PLATFORMS)}")
    if settings.get("format", "csv") not in ("csv", "jsonl"):
        raise fail("format", f"{settings['format']!r} must be csv or jsonl")
    if settings.get("empty", "skip") not in ("skip", "clear"):
        raise fail("empty", f"{settings['empty']!r} must be skip or clear")
    # Checked here, to name the line: sync would otherwise say --delimiter, or --encoding.
    delimiter = settings.get("delimiter")
    if delimiter is not None and len(delimiter) != 1 and delimiter.lower() not in ("tab", "\\t"):
        raise fail("delimiter", f'{delimiter!r} must be a single character, or "tab"')
    if "encoding" in settings:
        try:
            codecs.lookup(settings["encoding"])
        except LookupError:
            raise fail("encoding", f"{settings['encoding']!r} is not a known encoding") from None
    for name in ("timezone",):
        if name in settings and settings[name].upper() != "UTC":
            try:
                ZoneInfo(settings[name])
            except (ZoneInfoNotFoundError, ValueError, OSError):
                raise fail(name, f"{settings[name]!r} is not a known time zone") from None
    places = {
        column: f"{origin} line {line}" if (line := line_of(text, column, "columns")) else origin
        for column in columns
    }
    setting_places = {
        key: f"{origin} line {line}" if (line := line_of(text, key)) else origin for key in settings
    }
    return ColumnMapping(origin, settings, columns, attributes, places, setting_places)


def _column(column: str, spec: Any, fail: Any) -> Column:
    if isinstance(spec, str):
        if not spec:
            raise fail(column, "the name to send it as is empty", "columns")
        return Column(name=spec)
    if not isinstance(spec, dict):
        raise fail(
            column,
            "must be the name to send the column as (a string), or a table such as"
            ' { name = "...", type = "date" } or { exclude = true }',
            "columns",
        )
    for key, value in spec.items():
        if key not in COLUMN_KEYS:
            raise fail(
                column,
                f"unknown key {key!r}; a column's keys are {', '.join(COLUMN_KEYS)}",
                "columns",
            )
        if type(value) is not COLUMN_KEYS[key]:
            raise fail(
                column, f"{key} must be a {_type_name(COLUMN_KEYS[key])}, not {value!r}", "columns"
            )
    if "type" in spec and spec["type"] not in COLUMN_TYPES:
        raise fail(
            column, f"type {spec['type']!r} must be one of {', '.join(COLUMN_TYPES)}", "columns"
        )
    if spec.get("name") == "":
        raise fail(column, "the name to send it as is empty", "columns")
    if spec.get("exclude") and set(spec) - {"exclude", "when_filled"}:
        raise fail(column, "an excluded column is not sent: give it no name or type", "columns")
    flags = spec.get("when_filled", {})
    for name, value in flags.items():
        if (problem := _value_problem(value)) is not None:
            raise fail(column, f"when_filled: {name}: {problem}", "columns")
    return Column(spec.get("name"), spec.get("type"), spec.get("exclude", False), flags)


def _value_problem(value: Any) -> str | None:
    """Why a [set] or when_filled value cannot be sent (checked here to name its line; the
    limits that depend on the kind are normalize's), or None."""
    if isinstance(value, float) and not math.isfinite(value):  # TOML has nan and inf
        return f"{_shown(value)}: not a finite number"
    if isinstance(value, dt.time):
        return f"{_shown(value)}: a time of day alone is not a date; write a date and time"
    if isinstance(value, str | bool | int | float | dt.date):
        return None
    return f"{_shown(value)}: a value to send must be a string, number, boolean or date"


def _shown(value: Any) -> str:
    """A value as the mapping file writes it (true, not True), for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return repr(value)


def _in_seconds(values: Mapping[str, Any], tz: str, origin: str) -> dict[str, Any]:
    """TOML dates and times become Unix seconds, like a date column's cells. One without an
    offset is in the sync's time zone: converted here, not when the file is read, so that
    --timezone applies to it as to the cells; a wall time that a DST change skips or repeats
    is refused, as such a cell is."""
    if not any(isinstance(value, dt.date) for value in values.values()):
        return dict(values)
    try:
        zone = dt.UTC if tz.upper() == "UTC" else ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UsageError(f"--timezone {tz!r}: unknown time zone") from None
    converted = {}
    for name, value in values.items():
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            value = dt.datetime.combine(value, dt.time())
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                early, late = value.replace(tzinfo=zone), value.replace(tzinfo=zone, fold=1)
                if early.utcoffset() != late.utcoffset():
                    raise UsageError(
                        f"{origin}: {name}: {value} is skipped or repeated by a DST change in"
                        f" {tz}; write it with an offset"
                    )
                value = early
            value = int(value.timestamp())
        converted[name] = value
    return converted


def _type_name(kind: type) -> str:
    return {str: "string", bool: "boolean (true or false)", dict: "table"}[kind]


def line_of(text: str, key: str, table: str | None = None) -> int | None:
    """The first line where `key` is written as a key (bare or quoted), for messages. With a
    `table` ("columns", "set"): the first after that table opens, at the start of a line or as
    its own [table.key] header, so that a [set] key, or a column's `name = ...`, is not taken
    for a column of that name. Comment lines never count: a starter mapping's comments show
    keys (`# source = "import"`)."""
    spellings = {f'"{key}"', f"'{key}'", _toml_string(key)}
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        spellings.add(key)
    quoted = "|".join(re.escape(q) for q in spellings)
    lines = text.split("\n")  # TOML's lines: str.splitlines() also splits at \f, \x85, \u2028...
    found = None
    if table is not None:
        opens = re.compile(rf"\s*(?:\[(?:[^\]]*\.)?\s*{table}\s*[\].]|{table}\s*=)")
        start = next((i for i, line in enumerate(lines) if opens.match(line)), None)
        if start is not None:
            own = re.compile(
                rf"^\s*(?:(?:{quoted})\s*=|\[(?:[^\]]*\.)?\s*{table}\s*\.\s*(?:{quoted})\s*\])"
            )
            found = _first(lines, own, start)
    if found is None:  # no such table, or a key written inline: { "A" = "a" }
        found = _first(lines, re.compile(rf"(?:^|[{{,\s])(?:{quoted})\s*="), 0)
    return found


def _first(lines: list[str], pattern: re.Pattern[str], start: int) -> int | None:
    for number in range(start, len(lines)):
        if not lines[number].lstrip().startswith("#") and pattern.search(lines[number]):
            return number + 1
    return None


def normalize_options(mapping: ColumnMapping | None, given: Mapping[str, Any]) -> NormalizeOptions:
    """The options of a sync: the mapping's, overridden by those `given` on the command line
    (NormalizeOptions' field names; only the options actually given), column by column."""
    if mapping is None:
        return NormalizeOptions(**given)
    settings, columns = mapping.settings, mapping.columns
    roles = role_keys()
    emails = [c for c, spec in columns.items() if spec.type == "email"]
    email_column = emails[0] if emails else settings.get("email_column")
    given_types = given.get("types", {})
    tz = given.get("timezone", settings.get("timezone", "UTC"))
    given_dates = given.get("date_columns", ())
    dates = [c for c, spec in columns.items() if spec.type == "date" and c not in given_types]
    types = {
        c: spec.type
        for c, spec in columns.items()
        if spec.type in get_args(ColumnType) and c not in given_dates
    }
    options: dict[str, Any] = {
        **{k: settings[k] for k in _NORMALIZE_SETTINGS if k in settings},
        **({"email_column": email_column} if email_column else {}),
        **given,
        "date_columns": tuple(dict.fromkeys([*dates, *given_dates])),
        "types": {**types, **given_types},
        "rename": {
            **{c: spec.name for c, spec in columns.items() if spec.name is not None},
            **given.get("rename", {}),
        },
        "exclude": frozenset(c for c, spec in columns.items() if spec.exclude)
        | frozenset(given.get("exclude", ())),
        "attributes": {
            **_in_seconds(mapping.attributes, tz, mapping.origin),
            **given.get("attributes", {}),
        },
        "when_filled": {
            c: _in_seconds(spec.when_filled, tz, mapping.where(c))
            for c, spec in columns.items()
            if spec.when_filled
        },
        # Where the file names each column, for messages: in [columns], or as a setting's
        # value (id_column = "Customer ID", event_column = ...) when the input lacks it.
        "origins": {
            **{
                settings[key]: mapping.setting_places.get(key, mapping.origin)
                for key in ("id_column", "email_column", *roles)
                if key in settings and not roles.get(key, ("", False))[1]
            },
            **{column: mapping.where(column) for column in columns},
        },
    }
    kind = KINDS.get(options.get("kind", PEOPLE))
    for key in settings:
        # A key of another kind's (event_name with kind = "people"): named here with its line,
        # where NormalizeOptions could only name the option (--event-name).
        if key in roles and kind is not None:
            role = next((r for r in kind.roles if r.name == roles[key][0]), None)
            if role is None or (roles[key][1] and role.constant is None):
                raise UsageError(
                    f"{mapping.setting_places.get(key, mapping.origin)}: {key}: does not apply"
                    f" to --kind {kind.name}"
                )
    for field_name, constant in (("role_columns", False), ("constants", True)):
        from_file = {
            roles[k][0]: v for k, v in settings.items() if roles.get(k, ("", None))[1] is constant
        }
        options[field_name] = {**from_file, **given.get(field_name, {})}
    if settings.get("skip_missing_columns"):
        options["optional_columns"] = frozenset(columns)
    return NormalizeOptions(**options)


_NORMALIZE_SETTINGS = ("kind", "id_column", "timezone", "empty", "update_only", "snake_case")


# --- a starting mapping from an input's header --------------------------------------------------

# Words of a column's name (in snake_case) that say it holds dates or times.
_DATE_WORDS = {"at", "on", "date", "time", "timestamp", "created", "updated", "birthday", "dob"}


SAMPLE_ROWS = 200  # rows read to guess the date and email columns


def starter_for(input_path: str, source: SourceOptions) -> str:
    """A starting mapping for an input, from its header and first rows."""
    chunks = read_chunks(input_path, replace(source, chunk_size=SAMPLE_ROWS, limit=SAMPLE_ROWS))
    with contextlib.closing(chunks):
        frame = next(chunks).frame
    samples = {str(c): frame[c].dropna().tolist() for c in frame.columns}
    # How the input was read, written into the mapping: a sync with it, unedited, reads the
    # input the same way (a cp1252 file, a .txt of JSON lines, a ';' file).
    reading = {
        "format": source.format,
        "encoding": None if codecs.lookup(source.encoding).name == "utf-8" else source.encoding,
        "delimiter": source.delimiter,
    }
    settings = {k: v for k, v in reading.items() if v is not None}
    return starter([str(c) for c in frame.columns], samples, input_name(input_path), settings)


def starter(
    columns: list[str],
    samples: Mapping[str, list[Any]],
    origin: str,
    source: Mapping[str, str] | None = None,
) -> str:
    """A mapping for an input with these columns (and some of their values), for a person to
    edit: every column listed, sent in snake_case, date and email columns guessed. Unedited,
    it must work: one email column (sent as `email`, Customer.io's), distinct names, the
    identifier named."""

    def guess(column: str) -> str | None:
        if any(isinstance(v, list | dict) for v in samples.get(column, [])):
            return "exclude"  # a JSONL key holding arrays or objects: no attribute can
        values = [
            v
            for v in samples.get(column, [])
            if (isinstance(v, str) and v.strip()) or type(v) in (int, float)
        ]
        texts = [v.strip() for v in values if isinstance(v, str)]
        if re.sub(r"[\s_-]", "", column.lower()) in ("email", "emailaddress") or (
            texts and len(texts) == len(values) and all(map(_ADDRESS.fullmatch, texts))
        ):
            return "email"
        words = set(snake_case(column).split("_"))
        if values and words & _DATE_WORDS and _share_of_dates(values) >= 0.9:
            return "date"
        return None

    kinds = {column: guess(column) for column in columns}
    emails = [c for c in columns if kinds[c] == "email"]
    ids = [c for c in columns if snake_case(c) == "id"]
    identifier = "id" if "id" in columns else next(iter(ids + emails), None)
    names: dict[str, str] = {}
    notes: dict[str, str] = {}
    for column in columns:
        name = snake_case(column)
        if column == (emails[0] if emails else None) and not any(
            snake_case(c) == "email" for c in columns if c != column
        ):
            name = "email"  # the address Customer.io sends to: its `email` attribute
        taken = set(names.values())
        if name in taken:  # "Plan" and "plan": both plan; sent as they are, the sync refuses
            first = next(c for c, n in names.items() if n == name)
            name = next(f"{name}_{i}" for i in itertools.count(2) if f"{name}_{i}" not in taken)
            notes[column] = f"  # {_toml_string(first)} is sent as {names[first]}: rename one"
        names[column] = name
    settings = "".join(f"{k} = {_toml_string(v)}\n" for k, v in (source or {}).items())
    origin = re.sub(r"[\x00-\x1f\x7f]", "?", origin)  # in a comment: one line
    out = [
        f"# bulksync mapping for {origin}, written by `bulksync mapping`: edit it, then",
        f"#   bulksync sync {origin} --mapping THIS_FILE.toml --dry-run",
        "# The keys: README, 'Mapping a real export'. Options given on the command line",
        "# override this file's.",
        "",
        'kind = "people"',
        f"id_column = {_toml_string(identifier)}"
        if identifier
        else '# id_column = "..."  # no id or email column found: name the identifier column',
        'timezone = "UTC"         # zone of dates written without an offset (an IANA name)',
        'empty = "skip"           # empty cells: "skip" leaves the attribute, "clear" sends ""',
        *([settings.rstrip("\n")] if settings else []),
        "",
        "# [set]                  # attributes sent with every row",
        '# source = "import"',
        "",
        "# One entry per column: the name to send it as, or a table:",
        '#   { name = "...", type = "int|float|bool|str|date|email" }  or  { exclude = true }',
        "[columns]",
    ]
    for column in columns:
        name, kind, key = names[column], kinds[column], _toml_string(column)
        if kind == "email" and column != emails[0]:
            kind = None  # one email column only; a column called like one is checked anyway
            notes.setdefault(column, f"  # addresses too; {_toml_string(emails[0])} is the email")
        if kind == "exclude":
            out.append(f"{key} = {{ exclude = true }}  # JSON arrays or objects: not attributes")
        elif kind is None:
            out.append(f"{key} = {_toml_string(name)}{notes.get(column, '')}")
        else:
            entry = f'{{ name = {_toml_string(name)}, type = "{kind}" }}'
            out.append(f"{key} = {entry}{notes.get(column, '')}")
    return "\n".join(out) + "\n"


# An address, as far as a guess goes: something@domain.tld (a "@handle" is not one).
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# A plain number: a date only as epoch seconds or milliseconds after 1973 (1e8); a smaller one
# in a column called "Time on Site" or "Count at Signup" is a duration or a count.
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _share_of_dates(values: list[Any]) -> float:
    numbers = [
        str(v).strip() for v in values if type(v) is not str or _PLAIN_NUMBER.fullmatch(v.strip())
    ]
    texts = [v for v in values if type(v) is str and not _PLAIN_NUMBER.fullmatch(v.strip())]
    dated = sum(abs(float(n)) >= 1e8 for n in numbers) + share_of_dates(texts) * len(texts)
    return dated / len(values)


def _toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's (but for \\/, which json never writes);
    DEL, which JSON leaves as it is, TOML allows only escaped."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
