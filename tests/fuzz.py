"""One knob for every fuzz test's size: CI's short runs by default; a local campaign with
``HYPOTHESIS_PROFILE=deep HYPOTHESIS_EXAMPLES=100000 pytest <tests>`` (see tests/conftest.py)."""

from __future__ import annotations

import os


def examples(ci: int) -> int:
    """``ci`` examples per property, or ``HYPOTHESIS_EXAMPLES`` (default 20000) under the deep
    profile."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "deep":
        return int(os.environ.get("HYPOTHESIS_EXAMPLES", "20000"))
    return ci
