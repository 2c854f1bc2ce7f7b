"""`StopHandle`: ask a running sync to stop, from any thread.

Apart from the sender so that a run that sends nothing (a dry run) need not import it, nor aiohttp.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


class StopHandle:
    """Ask a running `sync()` or `retry()` to stop, from any thread (a signal handler, a GUI,
    a supervisor). The first `stop()` stops reading and lets requests in flight finish for the
    run's grace period; a second stops at once. Rows not finished get no outcome, so running
    the same command again sends them. A stop asked before sending began takes effect then."""

    def __init__(self) -> None:
        # Re-entrant: a signal handler calling stop() may interrupt this very thread inside
        # _attach or _detach.
        self._lock = threading.RLock()
        self._target: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None
        self.requested = False

    def stop(self) -> bool:
        """Stop the run; True if a send was running to be told, False if none is (yet)."""
        with self._lock:
            self.requested = True
            target = self._target
        if target is None:
            return False
        loop, callback = target
        loop.call_soon_threadsafe(callback)
        return True

    def _attach(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        with self._lock:
            self._target = (loop, callback)
            requested = self.requested
        if requested:
            loop.call_soon(callback)

    def _detach(self) -> None:
        with self._lock:
            self._target = None
