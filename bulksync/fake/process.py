"""The simulator outside the caller's event loop: in a child process, for benchmarks and demos (it
then shares neither the GIL nor the event loop with the client it measures), or in a thread, for
tests and the soak (which change its config while a client talks to it)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from .server import FakeConfig, FakeTrackAPI, Recorded

T = TypeVar("T")


class ServerThread:
    """FakeTrackAPI on its own event loop in a background thread, so the code under test can run
    its own `asyncio.run()` (as the CLI does) against a real loopback socket, and the caller can
    change `fake.config` while it runs."""

    def __init__(self, config: FakeConfig) -> None:
        self.fake = FakeTrackAPI(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = self.call(self.fake.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def snapshot(self) -> tuple[list[Recorded], dict[str, list[dict[str, Any]]]]:
        """Copies of the requests seen and the payloads accepted, taken on the server's loop."""

        async def take() -> tuple[list[Recorded], dict[str, list[dict[str, Any]]]]:
            return list(self.fake.requests), self.fake.accepted()

        return self.call(take())

    def workspace(self) -> dict[str, int]:
        """FakeTrackAPI.workspace(), taken on the server's loop."""
        return self._read(self.fake.workspace)

    def person(self, identifier: str) -> dict[str, Any] | None:
        """FakeTrackAPI.person(identifier), taken on the server's loop."""
        return self._read(lambda: self.fake.person(identifier))

    def operations(self) -> Counter[str]:
        """FakeTrackAPI.operations(), taken on the server's loop."""
        return self._read(self.fake.operations)

    def _read(self, read: Callable[[], T]) -> T:
        # On the loop, so a handler cannot change the workspace halfway through the read.
        async def take() -> T:
            return read()

        return self.call(take())

    def reset(self) -> None:
        """FakeTrackAPI.reset(), on the server's loop."""

        async def reset() -> None:
            self.fake.reset()

        self.call(reset())

    def close(self) -> None:
        self.call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


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
        if server.stdout is not None:
            server.stdout.close()  # else a ResourceWarning, an error under -W error
