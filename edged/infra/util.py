"""Small utilities used across edged: rate-limited logging, atomic file writes, deep merge."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "WARN_INTERVAL_S",
    "RateLimitedLog",
    "atomic_write",
    "close_fd",
    "deep_merge",
    "fsync_dir",
    "write_all",
]

WARN_INTERVAL_S = 60.0  # identical warnings are repeated at most this often


class RateLimitedLog:
    """Repeated identical warnings are logged at most once per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = WARN_INTERVAL_S) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def warning(self, msg: str, key: str | None = None) -> None:
        """Log ``msg`` unless the same ``key`` (default: the message) was logged within the
        interval."""
        now = time.monotonic()
        key = msg if key is None else key
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                return
            self._last[key] = now
        self._logger.warning("%s", msg)

    def reset(self) -> None:
        with self._lock:
            self._last.clear()


# ---------------------------------------------------------------------- files


def close_fd(fd: int) -> None:
    """Close ``fd`` unless it is negative (not open), ignoring errors."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file + fsync + rename + fsync(dir): ``path`` holds the old or the new bytes, never a
    mix, after a crash or a power cut. The temporary file (mode 0600, a unique name next to
    ``path``) is removed when any step fails (the error is raised)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


# ---------------------------------------------------------------------- data


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``, nested mappings merged key by key (neither is changed)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
