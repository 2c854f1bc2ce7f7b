"""Files bulksync writes (results, lock, state, log, rejects) hold personal data and may live in a
shared directory a cron job runs in: each is opened private (mode 0600) and never through a
link or onto something that is not a regular file. A symlink planted where an output goes would
otherwise make the run truncate, chmod or append to whatever it points to.

`open_private` refuses a symbolic link at the path itself (`O_NOFOLLOW`, so no race between a
check and the open) and anything that is not a regular file (a FIFO, a device), before opening
it; directories on the way are the user's to choose, and are followed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from .errors import UsageError


def check_output(path: Path, what: str) -> None:
    """Refuse `path` as an output if it exists and is a link or not a regular file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot use {path} as the {what}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise UsageError(
            f"{path} is a symbolic link: bulksync does not write its {what} through a link;"
            " remove it or choose another path"
        )
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{path} is not a regular file: choose another path for the {what}")


def open_private(path: Path, flags: int, what: str) -> int:
    """Open (creating if needed) `path` with `flags` | O_CREAT | O_NOFOLLOW, mode 0600; return
    the descriptor. Raises UsageError naming the path for a link, a non-regular file, or an
    error of the system (a missing directory, no permission)."""
    check_output(path, what)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link appeared since the check
            check_output(path, what)
        raise UsageError(f"cannot write the {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the check
        os.close(fd)
        raise UsageError(f"{path} is not a regular file: choose another path for the {what}")
    os.set_blocking(fd, True)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    return fd


def take_lock(path: Path, busy: str) -> int:
    """Lock PATH.lock for this process (the lock sits beside the resolved path, so two paths to
    one file share one lock); if another process holds it, refuse with `busy` and its pid. The
    kernel releases the lock when its process dies: a killed run leaves no stale lock."""
    resolved = path.resolve()
    fd = open_private(resolved.with_name(resolved.name + ".lock"), os.O_RDWR, "lock file")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(f"{busy} (pid {holder}); wait for it to finish") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
