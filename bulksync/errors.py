"""The exceptions bulksync raises, and what each one means for a run.

    BulksyncError                 base class; str(exc) is a one-line message for a person
    ├── UsageError                bad option or configuration; nothing was sent (exit 2)
    │   ├── InputError            the input cannot be read: missing, empty, bad encoding, bad header
    │   └── CredentialsError      CUSTOMERIO_SITE_ID / CUSTOMERIO_API_KEY missing
    └── AbortError                the run stopped part-way; progress is saved (exit 3)

Row-level problems (a bad email, an unparseable date, a malformed JSONL line) are not exceptions:
they become `Rejection`s and `invalid` lines in the results file, and the run goes on.
"""

from __future__ import annotations


class BulksyncError(Exception):
    """Base class of every error bulksync reports to a person."""

    exit_code = 2


class UsageError(BulksyncError):
    """A bad option or configuration: the run did not start, nothing was sent."""


class InputError(UsageError):
    """The input file cannot be read as the options describe."""


class CredentialsError(UsageError):
    """The Track API credentials are missing from the environment."""


class AbortError(BulksyncError):
    """The run stopped part-way (credentials refused, API down, interrupted); re-run to resume."""

    exit_code = 3
