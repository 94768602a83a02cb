"""What a device says about updates: results (``update/result``) and its model (``model``).

:class:`Reporter` publishes them for the :class:`~edged.update.updater.Updater`; refusals of
unauthenticated or malformed input are rate limited (``REFUSALS_PER_S``), in the results and in
the log, so a flood of them costs the device nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

from edged.protocol.payloads import (
    ActiveModel,
    ModelRef,
    ModelState,
    Receiving,
    UpdateResult,
    UpdateStatus,
)
from edged.update.store import ModelRecord, State
from edged.update.wire import clip

if TYPE_CHECKING:
    from edged.publish.api import PublisherAPI
    from edged.update.transfer import Transfer

log = logging.getLogger("edged.update")

REFUSALS_PER_S, REFUSAL_BURST = 1.0, 5  # results for unauthenticated or malformed input
LOG_EVERY_S = 10.0  # log lines for them: one per this many seconds


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


class Reporter:
    """Publishes the updater's results and its retained model state (any thread)."""

    def __init__(self, publisher: PublisherAPI, device: str, groups: list[str]) -> None:
        self.publisher = publisher
        self.device = device
        self.groups = list(groups)
        self._refusals = Throttle(REFUSALS_PER_S, REFUSAL_BURST)
        self._log_throttle = Throttle(1 / LOG_EVERY_S, 1)

    def result(
        self, tid: str | None, name: str | None, version: int | None, status: UpdateStatus,
        reason: str, **extra: Any,
    ) -> None:  # fmt: skip
        payload = result_payload(self.device, tid, name, version, status, reason, **extra)
        self.publisher.publish(self.publisher.topics.update_result, payload.to_bytes(), qos=1)

    def refused(self, what: str, reason: str, **extra: Any) -> None:
        """A refused message from outside (unauthenticated or malformed): a result and a log
        line, both rate limited."""
        reason = clip(f"{what} refused: {reason}")
        if self._log_throttle.allow():
            n = self._log_throttle.take_suppressed()
            more = f" ({n} similar suppressed)" if n else ""
            log.warning("%s%s", reason, more)
        else:
            log.debug("%s", reason)
        if self._refusals.allow():
            self.result(None, None, None, "rejected", reason, **extra)

    def hello(self, state: State) -> dict[str, Any]:
        """Who this device is, for its requests on ``update/request`` (edged.update.receiver)."""
        active = state.active
        return {
            "device": self.device,
            "groups": list(self.groups),
            "active": None
            if active is None
            else {"name": active.name, "version": active.version, "sha256": active.sha256},
        }

    def model(self, state: State, current: Transfer | None) -> None:
        """The retained ``model`` topic, with ``current`` the transfer in progress."""
        receiving = (
            Receiving.model_construct(
                transfer_id=current.offer.transfer_id,
                name=current.offer.name,
                version=current.offer.version,
                chunks=len(current.offer.chunks),
            )
            if current is not None
            else None
        )
        payload = model_payload(self.device, state, groups=self.groups, receiving=receiving)
        self.publisher.publish(self.publisher.topics.model, payload.to_bytes(), qos=1, retain=True)
