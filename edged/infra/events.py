"""The encoding of the JSON payloads edged publishes (their models: :mod:`edged.protocol`):
numbers as numbers, never image data.

Every payload goes through :func:`dumps`, whose encoding is defined for anything taken from
outside (file names, ids, labels, scores), so that encoding never fails:

- strings are UTF-8; a code point UTF-8 cannot carry -- a lone surrogate, as in a file name
  with undecodable bytes (``os.fsdecode``) or a JSON ``"\\ud800"`` escape -- becomes U+FFFD;
- a float that JSON cannot carry (NaN, +-infinity) becomes ``null``;
- a key that is not a string becomes its ``str()``; any other object its ``str()``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def iso_utc(wall: float) -> str:
    """``2026-11-22T10:15:03.123Z``"""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def wall_time(monotonic_ts: float) -> float:
    """Wall-clock time of an earlier ``time.monotonic()`` reading."""
    return time.time() - (time.monotonic() - monotonic_ts)


_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_DEPTH = 32  # deeper parts of a payload become null (nothing edged sends is this deep)


def text(value: str) -> str:
    """``value`` with every lone surrogate replaced by U+FFFD: always encodable as UTF-8."""
    return _SURROGATE.sub("\ufffd", value)


def utf8(value: str) -> bytes:
    """UTF-8 bytes of ``value`` (lone surrogates as U+FFFD); never raises."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return text(value).encode("utf-8")


def clean(obj: Any, depth: int = 0) -> Any:
    """A copy of ``obj`` that ``json.dumps(allow_nan=False)`` and UTF-8 always accept."""
    if obj is None or isinstance(obj, bool | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return text(obj)
    if depth >= MAX_DEPTH:
        return None
    if isinstance(obj, Mapping):
        return {text(str(k)): clean(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v, depth + 1) for v in obj]
    try:
        return text(str(obj))
    except Exception:  # a __str__ that raises
        return None


def dumps(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; never raises for data from outside (see the module description)."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        return json.dumps(clean(obj), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
