"""Turn a chunk of input rows into `Record`s to send and `Rejection`s to report.

Pure functions: no files, no network, no clock. Work is vectorised per column: a CSV column's
strings are checked whole in pyarrow (no Python object per cell for a check), a JSONL column's
with pandas and numpy. Only the assembly of each row's attribute dict is a Python loop, because
the output is one dict per row; it fills the dicts a column at a time.

What a row becomes:
- its identifier comes from the identifier column (`id`, else `email`, or `--id-column`);
- the email column is checked with the `email-validator` library (syntax only, no DNS);
- date columns (`created_at` and every `--date-column`) become integer Unix seconds in UTC;
- empty cells (CSV "", JSON null or a missing key) are left out, or sent as "" with `--empty clear`;
- any row that breaks one of the Track API's documented limits is rejected, never sent.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import UsageError
from .operations import KINDS, PEOPLE, Invalid, Kind, Record, Role
from .source import Chunk

ColumnType = Literal["int", "float", "bool", "str"]
EmptyPolicy = Literal["skip", "clear"]
Objects = npt.NDArray[np.object_]
Mask = npt.NDArray[np.bool_]

# The columns `bulksync rejects` adds to a file of rows for a person to fix: the fixed file is
# synced as it is, and these are never sent.
BULKSYNC_COLUMNS = frozenset({"bulksync_row", "bulksync_line", "bulksync_error"})

# The Track API's documented limits; it answers 400 past them (see docs/track-api.md).
MAX_ID_BYTES = 150
MAX_NAME_BYTES = 150
MAX_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300


class Rejection(NamedTuple):
    """A row that must not be sent, and why; `line`: the input line where it starts, if known."""

    row: int
    identifier: str | None
    reason: str
    line: int | None = None


@dataclass(frozen=True)
class NormalizeOptions:
    """How rows become payloads. Column options name columns as they appear in the input."""

    id_column: str | None = None
    email_column: str | None = None
    date_columns: tuple[str, ...] = ()
    timezone: str = "UTC"
    rename: Mapping[str, str] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()
    types: Mapping[str, ColumnType] = field(default_factory=dict)
    empty: EmptyPolicy = "skip"
    update_only: bool = False
    kind: str = PEOPLE  # the operation each row becomes: a key of operations.KINDS
    role_columns: Mapping[str, str] = field(default_factory=dict)  # role -> column (--event-column)
    constants: Mapping[str, str] = field(default_factory=dict)  # role -> value (--event-name)
    attributes: Mapping[str, Any] = field(default_factory=dict)  # --set: sent with every row
    snake_case: bool = False  # names not renamed are sent in snake_case ("First Name": first_name)
    # A mapping file's: column -> attributes added to each row whose cell is not empty.
    when_filled: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # A mapping file's columns that an input may lack (a preset's: exports vary), and where each
    # column is named, for messages ("mailchimp.toml line 12").
    optional_columns: frozenset[str] = frozenset()
    origins: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here, where the options are built: a bad value must fail before the results
        # file is created, with a message rather than a KeyError deep in a chunk.
        if self.kind not in KINDS:
            raise UsageError(f"--kind {self.kind!r}: must be one of {', '.join(KINDS)}")
        kind = KINDS[self.kind]
        roles = {role.name: role for role in kind.roles}
        for name, option in (
            *((name, _role_option(name, False)) for name in self.role_columns),
            *((name, _role_option(name, True)) for name in self.constants),
        ):
            role = roles.get(name)
            if role is None or (name in self.constants and role.constant is None):
                raise UsageError(f"{option} does not apply to --kind {kind.name}")
            if name in self.constants and name in self.role_columns:
                raise UsageError(f"{role.option} and {role.constant}: give one or the other")
        if self.update_only and kind.name != PEOPLE:
            raise UsageError(f"--update-only applies to --kind people, not {kind.name}")
        if not kind.person and self.id_column is not None:
            raise UsageError(
                f"--id-column does not apply to --kind {kind.name}: its rows name no person"
            )
        for column, type_name in self.types.items():
            if type_name not in get_args(ColumnType):
                raise UsageError(
                    f"--type {column}={type_name}: the type must be one of"
                    f" {', '.join(get_args(ColumnType))}"
                )
        if self.empty not in get_args(EmptyPolicy):
            raise UsageError(f"--empty {self.empty!r}: must be skip or clear")
        # Each attribute given for every row (--set, a mapping's [set]) or for the rows that
        # fill a column (when_filled), with where it was given, for messages.
        added = [(f"--set {name}", name, value) for name, value in self.attributes.items()]
        for column, flags in self.when_filled.items():
            where = f"{self.origins.get(column, 'the mapping')}: {column}: when_filled"
            added += [(f"{where} {name}", name, value) for name, value in flags.items()]
        if added and not kind.data:
            raise UsageError(f"{added[0][0]}: --kind {kind.name} sends no attributes")
        for label, name, value in added:
            problem = _constant_problem(name, value, kind.attribute_limits)
            if problem is None and kind.name == PEOPLE:
                problem = _person_attribute_problem(name, value)
            if problem:
                raise UsageError(f"{label}: {problem}")


def _constant_problem(name: str, value: Any, limits: bool) -> str | None:
    """Why an attribute given for every row (--set, when_filled) cannot be sent, or None."""
    if not name:
        return "the attribute name is empty"
    if limits and len(name.encode()) > MAX_NAME_BYTES:
        return f"the name is longer than {MAX_NAME_BYTES} bytes"
    if type(value) is str:
        if "\x00" in value:
            return "the value contains a NUL character"
        if limits and len(value.encode()) > MAX_VALUE_BYTES:
            return f"the value is longer than {MAX_VALUE_BYTES} bytes"
    elif type(value) is float:
        if not np.isfinite(value):
            return "the value is not a finite number"
    elif type(value) is int:
        if value not in _INT_RANGE:
            return "the value is an integer too large to send"
    elif type(value) is not bool:
        return "the value must be a string, a number or a boolean"
    return None


def _person_attribute_problem(name: str, value: Any) -> str | None:
    """What Customer.io would take amiss in a person's attribute given for every row: an `id`
    (it must be the row's identifier, which differs from row to row: Customer.io logs a failure
    while still answering 200), or an `email` that is not an address (as an email column's
    cells are checked)."""
    if name == "id":
        return (
            "an 'id' attribute must be each row's identifier; name the identifier column"
            " with --id-column instead"
        )
    if name == "email" and type(value) is str and (problem := email_problem(value)):
        return f"invalid email {_short(value)}: {problem}"
    return None


def _role_option(name: str, constant: bool) -> str:
    """The option that sets role `name` (for messages), whichever kind has it."""
    for kind in KINDS.values():
        for role in kind.roles:
            if role.name == name:
                return (role.constant if constant else None) or role.option
    return f"role {name!r}"


@dataclass(frozen=True)
class ColumnPlan:
    """The options resolved against the input's columns: which column plays which part."""

    id_column: str | None  # None: the kind's rows name no person (objects, merges)
    email_column: str | None  # --email-column; columns named like one are checked too
    date_columns: frozenset[str]
    tz: ZoneInfo | None  # None: naive times are UTC
    options: NormalizeOptions
    kind: Kind = KINDS[PEOPLE]
    roles: Mapping[str, str] = field(default_factory=dict)  # column -> the kind's role it plays

    def output_name(self, column: str) -> str:
        return _output_name(self.options, column)

    def is_email(self, column: str) -> bool:
        """Is `column` checked as email addresses: named by --email-column, or called like an
        email column (email, E-mail, Email Address, email_address...: Mailchimp's, HubSpot's)."""
        if column == self.email_column:
            return True
        return re.sub(r"[\s_-]", "", column.lower()) in ("email", "emailaddress")

    def role_source(self, role: str | None) -> str | None:
        """Where a role's value comes from, for messages: its column, or its option."""
        if role is None:
            return None
        for column, name in self.roles.items():
            if name == role:
                return column
        return next((r.constant for r in self.kind.roles if r.name == role), None)

    @property
    def value_limit(self) -> int | None:
        return MAX_VALUE_BYTES if self.kind.attribute_limits else None


def snake_case(name: str) -> str:
    """`First Name` -> first_name, `OPTIN_TIME` -> optin_time, `lastName` -> last_name,
    `State / Region` -> state_region. A name with no letter or digit is kept as it is."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    snake = re.sub(r"[\W_]+", "_", spaced).strip("_").lower()
    return snake or name


def _output_name(options: NormalizeOptions, column: str) -> str:
    """The attribute name a column is sent as: its --rename, else itself (in snake_case with
    --snake-case)."""
    name = options.rename.get(column)
    if name is not None:
        return name
    return snake_case(column) if options.snake_case else column


def plan_columns(options: NormalizeOptions, columns: list[str]) -> ColumnPlan:
    """Check the options against the input's columns; raise UsageError naming what is wrong."""
    found = f"columns found: {', '.join(columns) or '(none)'}"
    present = set(columns)
    absent = options.optional_columns - present
    if absent:  # a preset's column this export lacks: nothing to do with it
        options = replace(
            options,
            date_columns=tuple(c for c in options.date_columns if c not in absent),
            rename={k: v for k, v in options.rename.items() if k not in absent},
            exclude=options.exclude - absent,
            types={k: v for k, v in options.types.items() if k not in absent},
            when_filled={k: v for k, v in options.when_filled.items() if k not in absent},
            email_column=None if options.email_column in absent else options.email_column,
        )

    def require(name: str, option: str) -> None:
        if name in present:
            return
        origin = options.origins.get(name)
        if origin is not None:
            hint = "; name the identifier with --id-column" if option == "--id-column" else ""
            raise UsageError(f"{origin}: column {name!r} is not in the input{hint} ({found})")
        raise UsageError(f"{option} {name!r}: no such column in the input ({found})")

    kind = KINDS[options.kind]
    roles = _plan_roles(kind, options, present, found)
    id_column: str | None
    if not kind.person:
        id_column = None
    elif options.id_column is not None:
        require(options.id_column, "--id-column")
        id_column = options.id_column
    elif "id" in present:
        id_column = "id"
    elif "email" in present:
        id_column = "email"
    else:
        raise UsageError(
            f"no identifier column: the input has neither 'id' nor 'email'; name one with"
            f" --id-column ({found})"
        )
    if options.email_column is not None:
        require(options.email_column, "--email-column")
    for name in options.date_columns:
        require(name, "--date-column")
    for name in options.types:
        require(name, "--type")
    for name in options.rename:
        require(name, "--rename")
    for name in options.exclude:
        require(name, "--exclude")
    for name in options.when_filled:
        require(name, "when_filled")
    if id_column is not None and id_column in roles:
        raise UsageError(
            f"column {id_column!r} cannot be both the identifier and the {roles[id_column]}"
        )
    # `created_at` is a date as sent: the column renamed to it, or the one of that name left as
    # is, even when absent here (a JSONL key may first appear in a later chunk).
    dates = set(options.date_columns)
    dates |= {c for c in columns if _output_name(options, c) == "created_at"}
    if "created_at" not in options.rename:
        dates.add("created_at")
    dates |= {column for column, role in roles.items() if _role(kind, role).date}
    for name in dates & set(options.types):
        raise UsageError(f"column {name!r} is a date column; it cannot also have --type")

    sent = [
        c
        for c in columns
        if c not in options.exclude and c not in roles and c not in BULKSYNC_COLUMNS
    ]
    if kind.name != PEOPLE:
        sent = [c for c in sent if c != id_column] if kind.data else []
    outputs = [_output_name(options, c) for c in sent]
    clashes = sorted({o for o in outputs if outputs.count(o) > 1})
    if clashes:
        both = [c for c in sent if _output_name(options, c) == clashes[0]]
        raise UsageError(
            f"columns {both[0]!r} and {both[1]!r} would both be sent as {clashes[0]!r};"
            " --rename or --exclude one of them"
        )
    for name in options.attributes:
        if name in outputs:
            column = sent[outputs.index(name)]
            raise UsageError(
                f"--set {name}: column {column!r} is also sent as {name!r}; pass --exclude"
                f" {column} to send the --set value, or leave --set {name} out"
            )
    for flagged, flags in options.when_filled.items():
        # The cell would be overwritten in the rows filling `flagged`, and sent in the others.
        for name in flags:
            if name in outputs:
                column = sent[outputs.index(name)]
                where = options.origins.get(flagged, "the mapping")
                raise UsageError(
                    f"{where}: {flagged}: when_filled {name}: column {column!r} is also sent as"
                    f" {name!r}; exclude or rename one of them"
                )
    id_output = _output_name(options, id_column) if id_column else None
    if kind.name == PEOPLE and "id" in outputs and id_output != "id":
        # An `id` attribute that differs from the path identifier makes Customer.io log a
        # failure while still answering 200: never send one unless it is the identifier.
        column = sent[outputs.index("id")]
        if column != "id":  # renamed to id, or "ID" in snake_case: --exclude id would not do
            raise UsageError(
                f"the identifier is column {id_column!r} but column {column!r} would be sent as"
                " 'id'; to identify people by it, name it with --id-column (id_column in a"
                " mapping), or send it under another name"
            )
        raise UsageError(
            f"the identifier is column {id_column!r} but an 'id' column would also be sent;"
            " pass --exclude id, or --rename id=OTHER_NAME"
        )
    if options.timezone.upper() == "UTC":
        tz = None
    else:
        try:
            tz = ZoneInfo(options.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory
            raise UsageError(f"--timezone {options.timezone!r}: unknown time zone") from None
    return ColumnPlan(id_column, options.email_column, frozenset(dates), tz, options, kind, roles)


def _role(kind: Kind, name: str) -> Role:
    return next(role for role in kind.roles if role.name == name)


def _plan_roles(
    kind: Kind, options: NormalizeOptions, present: set[str], found: str
) -> dict[str, str]:
    """column -> role, for the roles of `kind` read from a column (not given as a constant)."""
    roles: dict[str, str] = {}
    for role in kind.roles:
        if role.name in options.constants:
            if role.name in present and role.name not in options.exclude:
                raise UsageError(
                    f"{role.constant} {options.constants[role.name]!r}: the input also has a"
                    f" {role.name!r} column, which would then be sent as data; pass --exclude"
                    f" {role.name} to use {role.constant}, or leave {role.constant} out to read"
                    " the column"
                )
            continue
        column = options.role_columns.get(role.name)
        if column is not None and column not in present:
            if column in options.origins:  # named by a mapping file: its line, not the option
                raise UsageError(
                    f"{options.origins[column]}: column {column!r} is not in the input ({found})"
                )
            raise UsageError(f"{role.option} {column!r}: no such column in the input ({found})")
        if column is None:
            column = role.name
            if role.required and column not in present:
                given = f", or {role.constant} VALUE for every row" if role.constant else ""
                raise UsageError(
                    f"--kind {kind.name} needs a {role.name}: no column {column!r} in the input;"
                    f" name one with {role.option} COL{given} ({found})"
                )
        # An optional role keeps its default name even when absent here: a JSONL key may first
        # appear in a later chunk, and must be read as the role there too.
        if column in roles:
            raise UsageError(
                f"column {column!r} cannot be both the {roles[column]} and {role.name}"
            )
        roles[column] = role.name
    return roles


def normalize(chunk: Chunk, plan: ColumnPlan) -> list[Record | Rejection]:
    """Every row of `chunk` as a Record or a Rejection, in row order."""
    frame, opts, kind = chunk.frame, plan.options, plan.kind
    n = len(chunk.rows)
    reasons: Objects = np.full(n, None, dtype=object)
    outputs: dict[str, Objects] = {}
    role_values: dict[str, Objects] = {}
    identified: tuple[Objects, Objects] | None = None  # the identifier column's (ids, reasons)
    filled: dict[str, Mask] = {}
    for column in frame.columns:
        if column in BULKSYNC_COLUMNS:
            continue  # a rejects file's own columns, fixed and synced: never data
        role = plan.roles.get(column)
        if role is None and column != plan.id_column and not kind.data:
            continue  # a deletion sends the identifier alone: other columns are not checked
        s = frame[column]
        missing = _missing(s)
        if column in opts.when_filled:
            filled[column] = ~(missing | _blank(s))
        if column in opts.exclude and role is None and column != plan.id_column:
            # Never sent, so never checked: a column is excluded for holding what cannot be
            # sent as often as not (long notes, a JSON array), and must not reject its rows.
            continue
        values, errors = _convert(column, s, missing, plan)
        _first_reason(reasons, errors)
        if column == plan.id_column:
            strings = _string_array(values)  # made once for both checks
            if not plan.is_email(column):
                _first_reason(reasons, _addresses(column, values, strings))
            # Its reasons come after every column's, as the first problem found is reported.
            identified = _identifiers(column, values, strings)
            if kind.name != PEOPLE:
                continue  # it names the person; only people send it as an attribute
        if role is not None:
            role_values[role] = values
            continue
        if column in opts.exclude:
            continue
        name = plan.output_name(column)
        if opts.empty == "clear":
            values[missing] = ""
        if kind.attribute_limits and len(name.encode()) > MAX_NAME_BYTES:
            message = f"attribute name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes"
            _first_reason(reasons, _where(cast(Mask, pd.notna(values)), message))
        if name == "id" and column != plan.id_column and kind.name == PEOPLE:
            # plan_columns() refuses this up front; a JSONL key first seen later gets here.
            message = (
                f"{column}: an 'id' attribute would differ from the identifier"
                f" (column {plan.id_column!r}); pass --exclude id, or --rename id=OTHER_NAME"
            )
            _first_reason(reasons, _where(cast(Mask, pd.notna(values)), message))
        outputs[name] = values

    ids: Objects = np.full(n, None, dtype=object)
    if plan.id_column is not None:
        if identified is None:  # a JSONL chunk without the key: every row lacks it
            identified = _identifiers(plan.id_column, np.full(n, None, dtype=object), None)
        ids, id_errors = identified
        _first_reason(reasons, id_errors)
    extra = (1 if opts.update_only else 0) + len(opts.attributes)
    extra += sum(len(flags) for flags in opts.when_filled.values())
    if kind.attribute_limits and len(outputs) + extra > MAX_ATTRIBUTES:
        counts = sum((pd.notna(v) for v in outputs.values()), np.zeros(n, dtype=np.int64)) + extra
        message = f"more than {MAX_ATTRIBUTES} attributes in one row"
        _first_reason(reasons, _where(counts > MAX_ATTRIBUTES, message))

    identifiers = ids.tolist()
    data = _dicts(outputs, n)
    _add(data, opts.attributes, opts.when_filled, filled)
    if kind.name == PEOPLE:  # the common case: the payload is the row's data
        if opts.update_only:
            for attributes in data:
                attributes["_update"] = True
        result = _people(chunk, reasons, identifiers, data)
    else:
        result = _built(chunk, plan, reasons, identifiers, data, _dicts(role_values, n))
    if chunk.bad_rows:
        lines = chunk.lines
        result.extend(
            Rejection(row, None, reason, lines.get(row)) for row, reason in chunk.bad_rows
        )
        result.sort(key=lambda item: item.row)
    return result


def identifiers(frame: pd.DataFrame, plan: ColumnPlan) -> list[str | None]:
    """The identifier normalize() gives each row of `frame`, for rows known to be valid (a
    person's accepted row, found by its rowhash: plan.KnownRows): read from the identifier
    column as normalize() reads it, without the other columns; None where there is none."""
    column = plan.id_column
    if column is None or column not in frame.columns:
        return [None] * len(frame)
    s = frame[column]
    values, _ = _convert(column, s, _missing(s), plan)
    ids, _ = _identifiers(column, values, _string_array(values))
    return cast(list[str | None], ids.tolist())


def _people(
    chunk: Chunk, reasons: Objects, identifiers: list[str | None], data: list[dict[str, Any]]
) -> list[Record | Rejection]:
    """People's rows: a Record of each row's data, or a Rejection for a row with a reason."""
    rows = chunk.rows
    if not len(rows) == len(identifiers) == len(data):  # as zip(..., strict=True) would
        raise ValueError("normalize: a chunk's rows and values differ in length")
    # Record(row, identifier, data), as Record._make builds it: tuple.__new__, run from C for
    # the whole chunk rather than the namedtuple's Python __new__ once per row.
    records = zip(rows, identifiers, data, itertools.repeat(PEOPLE))
    result: list[Record | Rejection] = list(map(tuple.__new__, itertools.repeat(Record), records))
    for i in np.flatnonzero(reasons).tolist():  # a reason is never empty: truthy
        result[i] = Rejection(rows[i], identifiers[i], reasons[i], chunk.lines.get(rows[i]))
    return result


def _built(
    chunk: Chunk,
    plan: ColumnPlan,
    reasons: Objects,
    identifiers: list[str | None],
    data: list[dict[str, Any]],
    given: list[dict[str, Any]],
) -> list[Record | Rejection]:
    """The rows of a kind other than people, each built by its kind from its role values
    (`given`) and its `data`; a Rejection for a row with a reason, or that its kind refuses."""
    kind, constants, lines = plan.kind, plan.options.constants, chunk.lines
    result: list[Record | Rejection] = []
    for row, reason, identifier, values, attributes in zip(
        chunk.rows, reasons.tolist(), identifiers, given, data, strict=True
    ):
        if reason is not None:
            result.append(Rejection(row, identifier, reason, lines.get(row)))
            continue
        values.update(constants)
        try:
            key, payload = kind.build(identifier, values, attributes)
        except Invalid as exc:
            where = plan.role_source(exc.role)
            reason = f"{where}: {exc}" if where else str(exc)
            result.append(Rejection(row, identifier or exc.identifier, reason, lines.get(row)))
        else:
            result.append(Record(row, key, payload, kind.name))
    return result


def _dicts(columns: dict[str, Objects], n: int) -> list[dict[str, Any]]:
    """Each row's cells that are not None, by name, in the order of `columns`.

    Filled a column at a time: a plain loop per column costs less than a dict made per row
    from a zip of its cells, and leaves out a None cell without a second pass."""
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, values in columns.items():
        for row, value in zip(rows, values.tolist(), strict=True):
            if value is not None:
                row[name] = value
    return rows


def _add(
    data: list[dict[str, Any]],
    attributes: Mapping[str, Any],
    when_filled: Mapping[str, Mapping[str, Any]],
    filled: dict[str, Mask],
) -> None:
    """Add to each row's data the attributes sent besides its cells: a mapping's `when_filled`
    attributes of the columns it fills, then --set's (which win). Added in that order to each
    row, a key already there keeps its place and takes the new value, as a dict update does."""
    for column, flags in when_filled.items():
        if column in filled:
            for i in np.flatnonzero(filled[column]).tolist():
                data[i].update(flags)
    for name, value in attributes.items():
        for row in data:
            row[name] = value


# --- per-column conversion -------------------------------------------------------------------
# Each converter takes a column and its missing mask, and returns (values, errors): an object
# array of what to send (None where nothing is sent) and one of reasons (None where the cell is
# fine). Reasons name the column and the value, so a person can find and fix the cell.

Converter = Callable[[str, pd.Series, Mask, int | None], tuple[Objects, Objects]]


def _convert(column: str, s: pd.Series, missing: Mask, plan: ColumnPlan) -> tuple[Objects, Objects]:
    if column in plan.date_columns:
        return _dates(column, s, missing, plan.tz)
    limit = plan.value_limit
    if plan.is_email(column):
        return _emails(column, s, missing, limit)
    kind = plan.options.types.get(column)
    if kind is not None:
        return _TYPED[kind](column, s, missing, limit)
    return _text(column, s, missing, limit)


def _missing(s: pd.Series) -> Mask:
    strings = _arrow_strings(s)
    if strings is not None:  # in pyarrow: pandas would wrap each step and convert the result
        return _mask(pc.equal(pc.binary_length(strings), 0), null=True)
    if s.dtype == object:  # JSONL: numpy's comparison, without pandas' null checks per cell
        cells = s.to_numpy()
        return cast(Mask, pd.isna(cells) | (cells == ""))
    return cast(Mask, (s.isna() | (s == "")).to_numpy(dtype=bool))


def _blank(s: pd.Series) -> Mask:
    """Cells of spaces only: for `when_filled`, as empty as "" (an export pads its cells; a
    padded empty UNSUB_TIME must not mark its person unsubscribed)."""
    if s.dtype == object:  # JSONL: strings among other JSON values
        return np.fromiter((type(v) is str and not v.strip() for v in s.tolist()), bool, len(s))
    return cast(Mask, (s.str.strip() == "").to_numpy(dtype=bool, na_value=False))


def _first_reason(reasons: Objects, new: Objects) -> None:
    """Record `new` reasons for rows that have none yet (the first problem found is reported)."""
    # A reason is never empty, so a column with no truthy cell has none: most columns, found
    # without the slower null checks.
    if not np.count_nonzero(new):
        return
    take = pd.isna(reasons) & pd.notna(new)
    reasons[take] = new[take]


def _objects(s: pd.Series, missing: Mask) -> Objects:
    values: Objects = s.to_numpy(dtype=object, copy=True)
    values[missing] = None  # `missing` covers NaN too: no NaN ever reaches a payload
    return values


def _where(mask: Mask, message: str) -> Objects:
    errors: Objects = np.full(len(mask), None, dtype=object)
    errors[mask] = message
    return errors


def _kinds(s: pd.Series, values: Objects, present: Mask) -> tuple[Mask, Mask]:
    """Which cells hold strings, and which hold JSON numbers (not booleans). `present`: the
    cells that are not None (`~missing` for `_objects(s, missing)`)."""
    none = np.zeros(len(values), dtype=bool)
    if s.dtype != object:  # a CSV column: every present cell is a string
        return present, none
    # infer_dtype scans in C: most JSONL columns hold one type, and need no per-cell Python.
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    if inferred == "string":
        return present, none
    if inferred in ("integer", "floating", "mixed-integer-float"):
        return none, present
    if inferred in ("boolean", "empty"):
        return none, none
    is_str = np.fromiter((type(v) is str for v in values), dtype=bool, count=len(values))
    is_number = np.fromiter(
        (type(v) is int or type(v) is float for v in values), dtype=bool, count=len(values)
    )
    return is_str, is_number


def _strings(s: pd.Series, values: Objects, is_str: Mask) -> pd.Series:
    """The string cells as a string Series, for vectorised checks."""
    if s.dtype != object:
        return s[is_str]
    return pd.Series(values[is_str], dtype="str")


def _reasons_at(n: int, where: Mask, message: Callable[[Any], str], values: Objects) -> Objects:
    errors: Objects = np.full(n, None, dtype=object)
    for i in np.flatnonzero(where):
        errors[i] = message(values[i])
    return errors


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(
    column: str, s: pd.Series, missing: Mask, limit: int | None = MAX_VALUE_BYTES
) -> tuple[Objects, Objects]:
    """A plain attribute: strings as they are, JSON numbers and booleans as they are. `limit`:
    the most bytes of a value; None for event data, which has no limit per value and may hold
    JSON objects and arrays (a JSONL event's properties), sent as they are."""
    values = _objects(s, missing)
    present = ~missing  # what pd.notna(values) is: `missing` covers every null of `s`
    is_str, is_number = _kinds(s, values, present)
    bad = np.zeros(len(values), dtype=bool)
    wrong_type = present & ~is_str & ~is_number
    if limit is None:
        wrong_type[:] = False
    elif wrong_type.any():
        wrong_type &= np.fromiter((type(v) is not bool for v in values), bool, len(values))
    nul, long = _bad_strings(s, values, is_str, limit)
    errors: Objects = np.full(len(values), None, dtype=object)
    for mask, message in (
        (
            wrong_type,
            f"{column}: a JSON object or array cannot be sent; use a string, number or boolean",
        ),
        (nul, f"{column}: contains a NUL character"),
        (long, f"{column}: value is longer than {limit} bytes"),
    ):
        errors[mask & ~bad] = message
        bad |= mask
    return values, errors


def _bad_strings(
    s: pd.Series, values: Objects, is_str: Mask, limit: int | None
) -> tuple[Mask, Mask]:
    """Which cells are strings holding a NUL, and which strings are longer than `limit` bytes
    in UTF-8 (none when `limit` is None). Most columns can fail neither check, which the whole
    column shows at once: cell by cell only when one may."""
    n = len(values)
    nul = np.zeros(n, dtype=bool)
    long = np.zeros(n, dtype=bool)
    strings = _arrow_strings(s)
    if strings is not None:  # its strings are its present cells
        nul = _containing(strings, "\x00")
        if limit is not None:
            lengths = pc.binary_length(strings)  # bytes in UTF-8
            if (pc.max(lengths).as_py() or 0) > limit:
                long = _mask(pc.greater(lengths, limit))
        return nul, long
    cells: list[str] = values[is_str].tolist()
    if cells and "\x00" in "".join(cells):
        nul[is_str] = ["\x00" in cell for cell in cells]
    # A character takes at most 4 bytes: a string of at most limit // 4 is never too long.
    if cells and limit is not None and max(map(len, cells)) > limit // 4:
        long[is_str] = [
            len(cell) > limit or (len(cell) > limit // 4 and len(cell.encode()) > limit)
            for cell in cells
        ]
    return nul, long


def _arrow_strings(s: pd.Series) -> Any:
    """The pyarrow array behind a column of pandas' pyarrow-backed strings (a CSV column), for
    checks that pyarrow runs on the whole column without a Python object per cell; None for
    any other column (JSONL's objects)."""
    if isinstance(s.dtype, pd.StringDtype) and s.dtype.storage == "pyarrow":
        return pa.array(s.array)
    return None


def _string_array(values: Objects) -> Any:
    """`values` as a pyarrow string array (None as null) when each is a string or None, as a
    CSV column's are; else None (JSONL identifiers may be numbers)."""
    try:
        return pa.array(values, type=pa.large_string(), from_pandas=True)
    except (pa.ArrowException, UnicodeError):
        return None


def _mask(booleans: Any, null: bool = False) -> Mask:
    """A pyarrow boolean array as a numpy mask, nulls (None cells) counted as `null`."""
    filled = pc.fill_null(booleans, null)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=bool)


def _containing(strings: Any, needle: str) -> Mask:
    """Which of `strings` (a pyarrow string array) contain `needle`. The bytes of all of them
    are searched at once first, which is all most columns need (no NUL; identifiers without
    an @): a slice's buffer may hold more than its strings, but never less."""
    chunks = strings.chunks if isinstance(strings, pa.ChunkedArray) else [strings]
    if all(pa.types.is_string(c.type) or pa.types.is_large_string(c.type) for c in chunks):
        data = [c.buffers()[2] for c in chunks]
        if not any(b is not None and needle.encode() in b.to_pybytes() for b in data):
            return np.zeros(len(strings), dtype=bool)
    return _mask(pc.match_substring(strings, needle))


# An address this pattern matches is certainly valid for email-validator (a property test
# checks it): plain ASCII dot-atoms, hostname labels without "--", an alphabetic TLD. Everything
# else — Unicode, quoted local parts, odd lengths — goes to the library, which is the judge.
# email-validator costs ~22 µs a call; the pattern ~0.1 µs a row.
_SAFE_EMAIL = (
    r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
    r"@(?:[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\.)+[A-Za-z]{2,63}"
)
_SPECIAL_USE_TLD = r"(?i)\.(?:arpa|invalid|local|localhost|onion|test)$"
_LONG_LABEL = r"[A-Za-z0-9-]{64}"


def certainly_valid_emails(strings: pd.Series) -> Mask:
    """Addresses that need no call to email-validator (a conservative, vectorised pre-check)."""
    arrow = _arrow_strings(strings)
    if arrow is None:
        arrow = pa.array(strings.tolist(), type=pa.large_string())
    return _certainly_valid(arrow)


def _certainly_valid(strings: Any) -> Mask:
    """certainly_valid_emails() of a pyarrow string array, in pyarrow (RE2: `$` is the end of
    the text)."""
    ok = pc.match_substring_regex(strings, f"^(?:{_SAFE_EMAIL})$")
    # The other conditions matter only for the strings the pattern matches, all ASCII: their
    # bytes are their characters.
    lengths = pc.binary_length(strings)
    ok = pc.and_(ok, pc.less_equal(lengths, 254))
    ok = pc.and_(ok, pc.less_equal(pc.find_substring(strings, "@"), 64))
    if (pc.max(lengths).as_py() or 0) >= 64:  # a shorter string holds no 64-character label
        ok = pc.and_not(ok, pc.match_substring_regex(strings, _LONG_LABEL))
    ok = pc.and_not(ok, pc.match_substring_regex(strings, _SPECIAL_USE_TLD))
    return _mask(ok)


def _over_bytes(strings: pd.Series, limit: int) -> Mask:
    """Which strings are longer than `limit` bytes in UTF-8, encoding only the doubtful ones."""
    chars = strings.str.len().to_numpy()
    over = chars > limit
    doubtful = np.flatnonzero((chars > limit // 4) & ~over)
    for i in doubtful:
        over[i] = len(str(strings.iat[int(i)]).encode()) > limit
    return over


def email_problem(address: str) -> str | None:
    """Why email-validator refuses `address`, or None when it is a valid address."""
    # Imported here, once needed: it compiles its patterns on import, a tenth of a second that
    # a file of plain addresses (certainly_valid_emails) or an unchanged night never needs.
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def _emails(column: str, s: pd.Series, missing: Mask, limit: int | None) -> tuple[Objects, Objects]:
    # Spaces around an address are an export's accident, not part of it: trimmed, so that
    # neither the check nor Customer.io sees them.
    if isinstance(s.dtype, pd.StringDtype):
        s = s.str.strip()
    elif s.dtype == object:  # JSONL: keep the other JSON types as they are, and the dtype
        cells = [v.strip() if type(v) is str else v for v in s.tolist()]
        s = pd.Series(cells, index=s.index, dtype=object)
    missing = missing | _missing(s)
    values, errors = _text(column, s, missing, limit)
    present = ~missing  # as in _text: the cells of `values` that are not None
    is_str, _ = _kinds(s, values, present)
    not_str = present & ~is_str
    if not_str.any():
        errors[not_str & pd.isna(errors)] = f"{column}: an email must be a string"
    idx = np.flatnonzero(is_str)
    strings = _arrow_strings(s)
    if strings is not None:  # checked whole: its strings are its present cells
        safe = _certainly_valid(strings)[idx]
    else:
        safe = certainly_valid_emails(_strings(s, values, is_str))
    for i in idx[~safe]:
        problem = email_problem(values[i])
        if problem is not None and errors[i] is None:
            errors[i] = f"{column}: invalid email {_short(values[i])}: {problem}"
    return values, errors


def _addresses(column: str, values: Objects, strings: Any) -> Objects:
    """Reasons for the identifiers holding an invalid address: Customer.io reads a value with
    an @ as an email, whatever its column is called. `strings`: `values` as a pyarrow string
    array, or None when some are not strings."""
    errors: Objects = np.full(len(values), None, dtype=object)
    if strings is not None:
        at = np.flatnonzero(_containing(strings, "@"))
        safe = _certainly_valid(strings.take(at)) if len(at) else np.zeros(0, dtype=bool)
    else:
        at = np.flatnonzero([type(v) is str and "@" in v for v in values.tolist()])
        safe = certainly_valid_emails(pd.Series(values[at], dtype="str"))
    for i in at[~safe]:
        if (problem := email_problem(values[i])) is not None:
            errors[i] = f"{column}: invalid email {_short(values[i])}: {problem}"
    return errors


# --- dates -----------------------------------------------------------------------------------

EPOCH = pd.Timestamp(0, tz="UTC").as_unit("s")  # in seconds: year 1 is in range
SECOND = pd.Timedelta(1, "s").as_unit("s")
# Epoch values at or above 1e11 are milliseconds: 1e11 seconds is the year 5138, while 1e11 ms
# is March 1973, so real-world timestamps are never ambiguous.
MS_THRESHOLD = 1e11
# Years 1 to 9999, the range every ISO-8601 parser agrees on.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799
_NUMERIC = r"-?\d+(?:\.\d+)?"
_HAS_OFFSET = r"[Tt ]\d.*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"


def _dates(
    column: str, s: pd.Series, missing: Mask, tz: ZoneInfo | None
) -> tuple[Objects, Objects]:
    """Dates in any accepted form become integer Unix seconds (UTC)."""
    values = _objects(s, missing)
    present = ~missing  # as in _text: the cells of `values` that are not None
    n = len(values)
    out: Objects = np.full(n, None, dtype=object)
    is_str, numbers = _kinds(s, values, present)
    seconds = np.full(n, np.nan)

    if numbers.any():
        seconds[numbers] = _epoch_seconds(pd.Series(values[numbers], dtype="float64"))
    if is_str.any():
        idx = np.flatnonzero(is_str)
        text = _strings(s, values, is_str).str.strip()
        numeric = text.str.fullmatch(_NUMERIC).to_numpy(dtype=bool, na_value=False)
        if numeric.any():
            as_float = pd.to_numeric(text[numeric], errors="coerce").astype("float64")
            seconds[idx[numeric]] = _epoch_seconds(as_float)
        if (~numeric).any():
            seconds[idx[~numeric]] = _iso_seconds(text[~numeric], tz)

    in_range = (seconds >= MIN_SECONDS) & (seconds <= MAX_SECONDS)
    out[in_range] = seconds[in_range].astype(np.int64).astype(object)
    bad = present & ~in_range
    errors = _reasons_at(
        n,
        bad,
        lambda v: (
            f"{column}: cannot read {_short(v)} as a date (expected ISO-8601 such as"
            " 2024-05-01T12:00:00+02:00, a date 2024-05-01, or epoch seconds/milliseconds)"
        ),
        values,
    )
    return out, errors


def share_of_dates(cells: list[str]) -> float:
    """The share of these cells that read as dates (for guessing a column's type)."""
    s = pd.Series(cells, dtype="str")
    _, errors = _dates("", s, _missing(s), None)
    return float(pd.isna(errors).mean()) if len(cells) else 0.0


def _epoch_seconds(numbers: pd.Series) -> npt.NDArray[np.float64]:
    values = numbers.to_numpy(dtype="float64")
    millis = np.abs(values) >= MS_THRESHOLD
    return cast(npt.NDArray[np.float64], np.floor(np.where(millis, values / 1000, values)))


def _iso_seconds(text: pd.Series, tz: ZoneInfo | None) -> npt.NDArray[np.float64]:
    """ISO-8601 strings to Unix seconds (NaN where unparseable). Offsets are converted to UTC;
    times without an offset are in `tz` (UTC when None)."""
    if tz is None:
        parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    else:
        aware = text.str.contains(_HAS_OFFSET).to_numpy(dtype=bool, na_value=False)
        parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
        if aware.any():
            parsed[aware] = pd.to_datetime(text[aware], format="ISO8601", utc=True, errors="coerce")
        if (~aware).any():
            local = pd.to_datetime(text[~aware], format="ISO8601", errors="coerce")
            if isinstance(local.dtype, pd.DatetimeTZDtype):  # an offset the pattern missed
                parsed[~aware] = local.dt.tz_convert("UTC")
            else:
                # A wall time that a DST change skips or repeats has no single instant: NaT,
                # so the row is rejected rather than shifted by an hour.
                localized = local.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
                parsed[~aware] = localized.dt.tz_convert("UTC")
    seconds = np.full(len(text), np.nan)
    ok = parsed.notna().to_numpy(dtype=bool)
    seconds[ok] = ((parsed[ok] - EPOCH) // SECOND).to_numpy(dtype="float64")
    return seconds


# --- explicit types (--type COL=int|float|bool|str) ------------------------------------------

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_INT = re.compile(r"[+-]?\d+")
# The integers a payload can carry: orjson serializes 64-bit integers only.
_INT_RANGE = range(-(2**63), 2**64)


def _to_int(v: Any) -> int | None:
    if type(v) is int:
        i = v
    elif type(v) is float and v.is_integer():
        i = int(v)
    elif type(v) is str and _INT.fullmatch(v.strip()):
        try:
            i = int(v)
        except ValueError:  # more digits than Python converts (4300)
            return None
    else:
        return None
    return i if i in _INT_RANGE else None


def _to_float(v: Any) -> float | None:
    if type(v) in (int, float):
        return float(v)
    if type(v) is str:
        try:
            f = float(v)
        except ValueError:
            return None
        return f if np.isfinite(f) else None  # "nan" and "inf" parse, but are never sent
    return None


def _to_bool(v: Any) -> bool | None:
    if type(v) is bool:
        return v
    text = str(v).strip().lower() if type(v) in (str, int) else None
    return True if text in _TRUE else False if text in _FALSE else None


def _to_str(v: Any) -> str | None:
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) in (str, int, float):
        return str(v)
    return None


def _typed_converter(kind: str, convert: Callable[[Any], Any]) -> Converter:
    def converter(
        column: str, s: pd.Series, missing: Mask, limit: int | None
    ) -> tuple[Objects, Objects]:
        values = _objects(s, missing)
        present = np.flatnonzero(pd.notna(values))
        out: Objects = np.full(len(values), None, dtype=object)
        errors: Objects = np.full(len(values), None, dtype=object)
        for i in present:
            converted = convert(values[i])
            if converted is None:
                errors[i] = f"{column}: {_short(values[i])} is not a valid {kind}"
            else:
                out[i] = converted
        if kind == "str":
            _, text_errors = _text(column, pd.Series(out, dtype=object), pd.isna(out), limit)
            _first_reason(errors, text_errors)
        return out, errors

    return converter


_TYPED: dict[str, Converter] = {
    "int": _typed_converter("int", _to_int),
    "float": _typed_converter("float", _to_float),
    "bool": _typed_converter("bool", _to_bool),
    "str": _typed_converter("str", _to_str),
}


# --- identifiers -----------------------------------------------------------------------------


def _identifiers(column: str, values: Objects, strings: Any) -> tuple[Objects, Objects]:
    """The identifier of each row as the string sent in the URL, and why a row has none.
    `strings`: `values` as a pyarrow string array (a CSV column's), checked whole; None when
    some are not strings (JSONL), then checked one by one."""
    if strings is None:
        return _identifiers_of_any(column, values)
    ids = values.copy()
    errors: Objects = np.full(len(values), None, dtype=object)
    lengths = pc.binary_length(strings)  # bytes in UTF-8
    errors[_mask(pc.greater(lengths, MAX_ID_BYTES))] = (
        f"{column}: identifier is longer than {MAX_ID_BYTES} bytes"
    )
    empty = _mask(pc.equal(lengths, 0), null=True)
    errors[empty] = f"{column}: empty identifier"
    ids[empty] = None
    for i in np.flatnonzero(_mask(pc.starts_with(strings, "."))).tolist():
        if values[i].strip(".") == "":
            errors[i] = _only_dots(column, values[i])
            ids[i] = None
    return ids, errors


def _only_dots(column: str, value: str) -> str:
    # "." and ".." are path segments: /customers/.. would reach another endpoint.
    return f"{column}: identifier {_short(value)} is only dots, which a URL path cannot carry"


def _identifiers_of_any(column: str, values: Objects) -> tuple[Objects, Objects]:
    """_identifiers() of values of any JSON type, one by one."""
    n = len(values)
    ids: Objects = np.full(n, None, dtype=object)
    errors: Objects = np.full(n, None, dtype=object)
    for i, v in enumerate(values.tolist()):
        if v is None or v == "":
            errors[i] = f"{column}: empty identifier"
        elif type(v) is str and v.strip(".") == "":
            errors[i] = _only_dots(column, v)
        elif type(v) is str:
            ids[i] = v
        elif type(v) is float and v.is_integer() and abs(v) > 2**53:
            # 1e20 would be "100000000000000000000" in the path and 1e20 in the body: a JSON
            # number this large is not exact, so neither is the person it names.
            errors[i] = (
                f"{column}: identifier {_short(v)} is a number too large to be exact;"
                " write it as a string"
            )
        elif type(v) is int or (type(v) is float and v.is_integer()):
            ids[i] = str(int(v))
        else:
            errors[i] = f"{column}: identifier {_short(v)} must be a string or an integer"
    present = np.flatnonzero(pd.notna(ids))
    if len(present):
        over = _over_bytes(pd.Series(ids[present], dtype="str"), MAX_ID_BYTES)
        for i in present[over]:
            errors[i] = f"{column}: identifier is longer than {MAX_ID_BYTES} bytes"
    return ids, errors
