"""Defaults and choices the command line shows in --help, importable without pandas or aiohttp.

`bulksync --help` must start fast: the CLI builds its options from these (and from
`operations.KINDS`) without importing the modules that use them. Each is re-exported by the
module it belongs to (`batch.DEFAULT_BATCH_SIZE`, `source.DEFAULT_CHUNK_SIZE`,
`policy.DEFAULT_MAX_WAIT`, `mapping.PRESETS`); import it from there in library code.
"""

from __future__ import annotations

DEFAULT_BATCH_SIZE = 1000  # operations per request (--batch-size); see docs/benchmarks.md
DEFAULT_CHUNK_SIZE = 20_000  # rows read and normalized at a time (--chunk-size)
DEFAULT_MAX_WAIT = 60.0  # seconds of Retry-After honoured before the run stops instead
PRESETS = ("hubspot", "klaviyo", "mailchimp")  # the mapping files in bulksync/presets/
# What mirror mode (--missing, with --state) does to known people absent from a complete input.
MISSING = ("keep", "delete", "suppress")
