"""Containment helpers for outside input: token buckets, logs limited per kind, one-line text.

Every boundary where outside data enters (MQTT handlers, state files, config values) refuses
what it cannot take with a one-line reason. These helpers keep those reasons short and their
log lines rate limited, keyed by a fixed *kind* (never by the input itself, so a flood of
distinct inputs cannot grow memory).
"""

from __future__ import annotations

import logging
import re
import threading
import time

import numpy as np

MAX_LINE = 200  # characters of outside text quoted in a reason


def one_line(value: object, limit: int = MAX_LINE) -> str:
    """``value`` as one printable line of at most ``limit`` characters: control characters
    escaped, lone surrogates as U+FFFD, the rest cut with an ellipsis."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # a __str__ that raises
        text = f"<{type(value).__name__}>"
    if len(text) > limit * 4:  # never escape more than a bounded prefix
        text = text[: limit * 4]
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or code == 0x7F:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 1] + "…"


# A JSON string, possessive so that it never backtracks: from any '"' it runs to its closing
# quote or, unterminated, to the end (with a trailing lone backslash). Each byte is looked at
# once, so the scan is linear in the payload's size whatever it holds.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth(payload: bytes) -> int:
    """The deepest nesting of ``[``/``{`` outside strings in ``payload`` (JSON text, before it
    is parsed: json's decoder recurses, and a deep enough message would raise
    ``RecursionError``). Linear time: ~10 ms a MB, whatever the bytes are."""
    if b"[" not in payload and b"{" not in payload:
        return 0
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", payload))
    if not brackets:
        return 0
    steps = np.frombuffer(brackets, np.uint8)
    depth = np.cumsum(np.where((steps == 0x5B) | (steps == 0x7B), 1, -1))
    return max(0, int(depth.max()))


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` is thread-safe."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            elapsed = max(0.0, now - self._last)
            self._last = now
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class KindLog:
    """At most one log line per ``kind`` every ``interval`` seconds; the lines held back are
    counted and the count is added to the next line of that kind."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, level: int, kind: str, msg: str) -> bool:
        """Log ``msg`` (already one line) unless a ``kind`` line was logged lately."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        suffix = f" ({held} more like this since the last line)" if held else ""
        self._logger.log(level, "%s%s", msg, suffix)
        return True

    def warning(self, kind: str, msg: str) -> bool:
        return self.log(logging.WARNING, kind, msg)

    def error(self, kind: str, msg: str) -> bool:
        return self.log(logging.ERROR, kind, msg)
