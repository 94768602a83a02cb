"""Fixtures for the frame-source tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

FAKE_PICAMERA2_ROOT = Path(__file__).parent / "fake_picamera2"
_FAKE_MODULES = ("picamera2", "libcamera")


def _forget_fake_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _FAKE_MODULES:
            del sys.modules[name]


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The stand-in picamera2 package, importable as ``picamera2`` for this test only."""
    _forget_fake_modules()
    monkeypatch.syspath_prepend(str(FAKE_PICAMERA2_ROOT))
    import picamera2

    picamera2.reset()
    yield picamera2
    _forget_fake_modules()
