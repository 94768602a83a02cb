"""A minimal validated config for the spool and seq tests (device ``dev1``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edged.config import parse_config


def spool_config(state_dir: Path, **publish: Any) -> Any:
    return parse_config(
        {
            "device_id": "dev1",
            "state_dir": str(state_dir),
            "source": {"type": "files", "path": "x"},
            "model": {"path": "m"},
            "publish": publish,
        },
        {},
    )
