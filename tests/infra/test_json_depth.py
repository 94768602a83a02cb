"""``json_depth``: the nesting pre-check every MQTT handler runs before parsing: exact against a
reference scanner, and linear in time whatever the bytes (a regex that backtracked made one
unterminated string of escaped quotes cost seconds per 20 KB, minutes per 100 KB)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.errors import ControlError, WireError
from edged.features.settings import parse
from edged.infra.guard import json_depth
from edged.update.wire import loads_object


def _reference(payload: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in payload:
        ch = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


@given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b"\n", b"\xff"])))
def test_depth_is_the_reference_scanners(parts: list[bytes]) -> None:
    payload = b"".join(parts)
    assert json_depth(payload) == _reference(payload)


@given(st.binary(max_size=300))
def test_depth_of_any_bytes_is_the_reference_scanners(payload: bytes) -> None:
    assert json_depth(payload) == _reference(payload)


HOSTILE = [
    b'["' + b'\\"' * 2_000_000,  # an unterminated string of escaped quotes
    b'"' + b'\\"' * 2_000_000 + b"\\",  # the same ending in a lone backslash
    b"[" * 4_000_000,
    b"[" + b"[]" * 2_000_000,
    b'{"a":"' + b"\\\n" * 2_000_000,
]


@pytest.mark.parametrize("payload", HOSTILE, ids=["quotes", "backslash", "open", "pairs", "nl"])
def test_four_megabytes_of_anything_take_well_under_a_second(payload: bytes) -> None:
    started = time.monotonic()
    json_depth(payload)
    assert time.monotonic() - started < 1.5


def test_the_handlers_refuse_the_attack_payload_at_once() -> None:
    """The outsider's 200 KB offer held the daemon for > 90 s; a 16 KB /set 1.2 s each."""
    offer = b'["' + b'\\"' * 100_000
    started = time.monotonic()
    with pytest.raises(WireError):
        loads_object(offer, "offer", 1 << 26)
    with pytest.raises(ControlError):
        parse(b'["' + b'\\"' * 8_000)
    assert time.monotonic() - started < 0.5
