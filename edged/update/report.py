"""What a device says about updates: results (``update/result``) and its model (``model``)."""

from __future__ import annotations

import threading
import time
from typing import Literal

from edged.protocol.payloads import (
    ActiveModel,
    ModelRef,
    ModelState,
    Receiving,
    UpdateResult,
    UpdateStatus,
)
from edged.update.store import ModelRecord, State


def result_payload(
    device: str,
    transfer_id: str | None,
    name: str | None,
    version: int | None,
    status: UpdateStatus,
    reason: str,
    *,
    command: Literal["rollback"] | None = None,
    issued: float | None = None,
) -> UpdateResult:
    """``status``: accepted | rejected | rolled_back | confirmed (passed probation). Command
    results add ``command`` and ``issued`` (the command's own), with ``transfer_id`` null."""
    return UpdateResult.model_construct(
        device=device,
        transfer_id=transfer_id,
        name=name,
        version=version,
        status=status,
        reason=reason,
        command=command,
        issued=issued,
    )


def model_payload(
    device: str,
    state: State,
    *,
    groups: list[str] | None = None,
    receiving: Receiving | None = None,
) -> ModelState:
    """The retained model topic: what runs now (``confirmed`` false while on probation), what
    a rollback returns to (``previous``, and every model kept in ``kept``), the last update,
    the transfer in progress (``receiving``, null when none) and the device's update groups."""
    active = state.active
    return ModelState.model_construct(
        device=device,
        active=(
            ActiveModel.model_construct(**active.ref(), confirmed=active.confirmed)
            if active is not None
            else None
        ),
        previous=_ref(state.previous) if state.previous is not None else None,
        kept=[_ref(r) for r in state.kept()],
        # as saved in state.json (LastUpdate's keys, edged.update.store.State.note)
        last_update=state.last_update,  # type: ignore[arg-type]
        receiving=receiving,
        groups=list(groups or []),
    )


def _ref(record: ModelRecord) -> ModelRef:
    return ModelRef.model_construct(**record.ref())


class Throttle:
    """At most ``burst`` events at once and ``rate`` a second on average (a token bucket);
    :meth:`allow` is thread-safe and counts what it refused (``suppressed``, reset by
    :meth:`take_suppressed`)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()
        self.suppressed = 0

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            self.suppressed += 1
            return False

    def take_suppressed(self) -> int:
        with self._lock:
            n, self.suppressed = self.suppressed, 0
            return n
