"""One daemon per state dir: an flock on ``<state_dir>/edged.lock``, held for the process's life.

A second ``edged run`` on the same state dir would otherwise share the spool, the sequence
numbers and the client id with the first one and fight it over the broker connection. It
refuses to start instead (``InstanceError``: one line, exit status 4) and leaves the first one
untouched: the lock is taken before anything else in the state dir is opened, and the file's
content (the holder's pid) is only informative.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from edged.errors import InstanceError
from edged.infra.util import close_fd

__all__ = ["LOCK_NAME", "InstanceError", "InstanceLock"]

LOCK_NAME = "edged.lock"


class InstanceLock:
    """The state dir's lock; ``release()`` (idempotent) or process exit gives it back."""

    def __init__(self, state_dir: Path | str) -> None:
        self._fd = -1
        self.path = Path(state_dir) / LOCK_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            # Not being able to lock is not proof of a second instance: the state dir's own
            # problems are reported where it is used (spool, update store).
            self._fd = -1
            self.error: str | None = err.strerror or str(err)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise InstanceError(
                f"another edged is already running on state dir {self.path.parent}{who}"
            ) from None
        self._fd = fd
        self.error = None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        close_fd(fd)

    def __del__(self) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and len(text) < 11 else None
