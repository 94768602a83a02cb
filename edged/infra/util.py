"""Small utilities used across edged: rate-limited logging."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["WARN_INTERVAL_S", "RateLimitedLog"]

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
