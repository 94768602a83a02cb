"""The base every configuration section derives from, and the bounds on untrusted values.

Unknown keys are rejected everywhere (``extra="forbid"``); no float may be NaN or infinite;
text must be valid Unicode (no lone surrogates) of at most ``MAX_TEXT`` characters; durations
are at most ``MAX_SECONDS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

DEVICE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
MAX_SECONDS = 86400.0  # the longest duration any setting takes (one day)
MAX_TEXT = 4096  # the longest string setting


def _check_text(value: Any) -> Any:
    if isinstance(value, Path) and "\x00" in str(value):
        raise ValueError("a path must not contain a NUL character")
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ValueError(f"longer than {MAX_TEXT} characters")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ValueError("not valid Unicode (a lone surrogate: undecodable bytes?)")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            for item in value:
                _check_text(item)
        return _check_text(value)
