"""What a device says about updates: results (``update/result``) and its model (``model``)."""

from __future__ import annotations

import time
from typing import Any

from edged.events import SCHEMA, iso_utc
from edged.update.store import State


def result_payload(
    device: str,
    transfer_id: str | None,
    name: str | None,
    version: int | None,
    status: str,
    reason: str,
    **extra: Any,
) -> dict[str, Any]:
    """``status``: accepted | rejected | rolled_back. Command results add ``command`` and
    ``issued`` (the command's own), with ``transfer_id`` null."""
    return {
        "schema": SCHEMA,
        "device": device,
        "transfer_id": transfer_id,
        "name": name,
        "version": version,
        "status": status,
        "reason": reason,
        "ts": iso_utc(time.time()),
        **extra,
    }


def model_payload(device: str, state: State) -> dict[str, Any]:
    """The retained model topic: what runs now, what a rollback returns to, the last update."""
    return {
        "schema": SCHEMA,
        "device": device,
        "active": state.active.ref() if state.active is not None else None,
        "previous": state.previous.ref() if state.previous is not None else None,
        "last_update": state.last_update,
    }
