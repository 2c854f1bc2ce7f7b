"""The simulator in a child process, for benchmarks and demos: it then shares neither the GIL nor
the event loop with the client it measures."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def fake_server_process(
    *options: str, site_id: str = "site", api_key: str = "key"
) -> Iterator[str]:
    """Run `bulksync fake-server --port 0 OPTIONS...`; yield its base URL; stop it on exit."""
    command = [sys.executable, "-m", "bulksync", "fake-server", "--port", "0"]
    command += ["--site-id", site_id, "--api-key", api_key, *options]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        if " listening on " not in banner:
            raise RuntimeError(f"bulksync fake-server did not start: {banner!r}")
        yield banner.split(" listening on ")[1].split()[0]
    finally:
        server.terminate()
        server.wait(timeout=10)
