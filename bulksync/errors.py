"""The exceptions bulksync raises, and what each one means for a run.

    BulksyncError                 base class; str(exc) is a one-line message for a person
    ├── UsageError                bad option or configuration; nothing was sent (exit 2)
    │   ├── InputError            the input cannot be read: missing, empty, bad encoding, bad header
    │   └── CredentialsError      CUSTOMERIO_SITE_ID / CUSTOMERIO_API_KEY missing
    └── AbortError                the run stopped part-way; progress is saved (exit 3)
        └── OutputError           an output (results, state, log) cannot be written: a full disk

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


class OutputError(AbortError):
    """An output file cannot be written (a full disk, most often): the run stops; what was
    written before is valid, so the same command resumes once there is room."""

    @classmethod
    def of(cls, exc: OSError | Exception, path: object, what: str) -> OutputError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return cls(
            f"cannot write the {what} {path}: {reason}; stopped. Every outcome written so far"
            " is kept: free some space, then run the same command again to resume"
        )
