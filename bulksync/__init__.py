"""bulksync: sync customer rows from CSV and JSONL files into Customer.io's Track API."""

from .api import SyncOptions, sync
from .errors import AbortError, BulksyncError, CredentialsError, InputError, UsageError
from .normalize import NormalizeOptions, Record, Rejection
from .results import Summary
from .source import SourceOptions

__all__ = [
    "AbortError",
    "BulksyncError",
    "CredentialsError",
    "InputError",
    "NormalizeOptions",
    "Record",
    "Rejection",
    "SourceOptions",
    "Summary",
    "SyncOptions",
    "UsageError",
    "sync",
]
