"""Parsing what arrives on the update topics: bounded, strict JSON that never raises anything
but :class:`WireError` (one line, safe to publish), and the canonical encoding signatures use.

Strict means: UTF-8, no NaN/Infinity, no lone surrogates, nesting at most ``MAX_DEPTH`` deep
(the parser's recursion is never reached), and a JSON object at the top.
"""

from __future__ import annotations

import json
from typing import Any

from edged.errors import WireError
from edged.infra.guard import json_depth

MAX_DEPTH = 8


def _constant(name: str) -> Any:
    raise WireError(f"{name} is not allowed")


def loads_object(payload: bytes, what: str, max_bytes: int) -> dict[str, Any]:
    """``payload`` as a JSON object, or :class:`WireError` saying why not."""
    if len(payload) > max_bytes:
        raise WireError(f"{what} is {len(payload)} bytes, over the {max_bytes}-byte limit")
    if json_depth(payload) > MAX_DEPTH:
        raise WireError(f"{what} is nested more than {MAX_DEPTH} levels deep")
    try:
        text = payload.decode("utf-8")
        raw = json.loads(text, parse_constant=_constant)
    except WireError as err:
        raise WireError(f"{what} is not valid JSON ({err})") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WireError(f"{what} is not valid JSON") from None
    if not isinstance(raw, dict):
        raise WireError(f"{what} is not a JSON object")
    try:
        canonical(raw)  # lone surrogates cannot be encoded (nor signed, nor echoed)
    except (UnicodeEncodeError, ValueError, RecursionError):
        raise WireError(f"{what} contains text that is not valid Unicode") from None
    return raw


def canonical(fields: dict[str, Any]) -> bytes:
    """The bytes a signature covers: keys sorted, no spaces, UTF-8, no NaN."""
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def integer(raw: dict[str, Any], key: str, what: str, lo: int, hi: int) -> int:
    """``raw[key]`` as an int in ``lo..hi`` (bools and floats refused)."""
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise WireError(f"{what} {key} must be an integer in {lo}..{hi}")
    return value


def clip(text: str, limit: int = 200) -> str:
    """One line of at most ``limit`` characters, for reasons that quote outside data."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
