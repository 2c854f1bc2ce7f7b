"""bulksync: sync customer rows from CSV and JSONL files into Customer.io's Track API."""

from .api import SyncOptions, check, retry, sync
from .errors import AbortError, BulksyncError, CredentialsError, InputError, UsageError
from .job import load_job, run_job
from .mapping import load as load_mapping
from .mapping import normalize_options, preset
from .normalize import NormalizeOptions, Rejection
from .operations import KINDS, Record
from .results import Summary
from .send import SendOptions, StopHandle
from .source import SourceOptions
from .track import Credentials

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
