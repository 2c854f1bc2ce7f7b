"""bulksync: sync customer rows from CSV and JSONL files into Customer.io's Track API.

The names below are imported on first use (PEP 562): `import bulksync` (and so every `bulksync`
command, whose --help needs none of them) does not load pandas or aiohttp.
"""

import importlib
import typing

if typing.TYPE_CHECKING:
    from .answers import Credentials
    from .api import SyncOptions, retry, sync
    from .connection import SendOptions, check
    from .errors import AbortError, BulksyncError, CredentialsError, InputError, UsageError
    from .job import load_job, run_job
    from .mapping import load as load_mapping
    from .mapping import normalize_options, preset
    from .normalize import NormalizeOptions, Rejection
    from .operations import KINDS, Record
    from .results import Summary
    from .source import SourceOptions
    from .stop import StopHandle

# Exported name -> (module, its name there).
_LAZY = {
    "KINDS": ("operations", "KINDS"),
    "AbortError": ("errors", "AbortError"),
    "BulksyncError": ("errors", "BulksyncError"),
    "Credentials": ("answers", "Credentials"),
    "CredentialsError": ("errors", "CredentialsError"),
    "InputError": ("errors", "InputError"),
    "NormalizeOptions": ("normalize", "NormalizeOptions"),
    "Record": ("operations", "Record"),
    "Rejection": ("normalize", "Rejection"),
    "SendOptions": ("connection", "SendOptions"),
    "SourceOptions": ("source", "SourceOptions"),
    "StopHandle": ("stop", "StopHandle"),
    "Summary": ("results", "Summary"),
    "SyncOptions": ("api", "SyncOptions"),
    "UsageError": ("errors", "UsageError"),
    "check": ("connection", "check"),
    "load_job": ("job", "load_job"),
    "load_mapping": ("mapping", "load"),
    "normalize_options": ("mapping", "normalize_options"),
    "preset": ("mapping", "preset"),
    "retry": ("api", "retry"),
    "run_job": ("job", "run_job"),
    "sync": ("api", "sync"),
}

__all__ = [
    "KINDS",
    "AbortError",
    "BulksyncError",
    "Credentials",
    "CredentialsError",
    "InputError",
    "NormalizeOptions",
    "Record",
    "Rejection",
    "SendOptions",
    "SourceOptions",
    "StopHandle",
    "Summary",
    "SyncOptions",
    "UsageError",
    "check",
    "load_job",
    "load_mapping",
    "normalize_options",
    "preset",
    "retry",
    "run_job",
    "sync",
]


def __getattr__(name: str) -> typing.Any:
    """An exported name, imported from its module the first time it is asked for."""
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # later lookups find it without calling __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
