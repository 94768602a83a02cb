"""The update thread's inbox: what paho's network thread hands to the :class:`Updater`.

:meth:`Inbox.sort` runs on the network thread and only sorts a message into a bounded queue:
chunks go in as they come (the receiver drops those of anything but the current transfer),
offers are coalesced to the newest per scope, commands are limited in size and number. Nothing
here parses more than a size; everything else happens on the update thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from edged.errors import WireError
from edged.protocol.inbound import MAX_COMMAND_BYTES, UnixTime
from edged.update.wire import loads_object

MAX_QUEUED_COMMANDS = 8

_ISSUED: TypeAdapter[int | float] = TypeAdapter(UnixTime)


def issued_of(payload: bytes) -> float | None:
    """A refused command's own ``issued`` (for the sender to match the answer), if sane."""
    try:
        issued = loads_object(payload, "command", MAX_COMMAND_BYTES).get("issued")
        return float(_ISSUED.validate_python(issued))
    except (WireError, ValidationError):
        return None


class Inbox:
    """A bounded queue of ``(kind, *args)`` items for the update thread.

    ``match(topic)``: the receiver's ``("offer", scope)`` / ``("chunk", prefix, index)`` for
    a transfer topic, else None; ``refused(what, reason)``: reports a message dropped here.
    """

    def __init__(
        self,
        *,
        command_topic: str,
        match: Callable[[str], tuple[str, ...] | None],
        max_offer: int,
        refused: Callable[[str, str], None],
    ) -> None:
        self.queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.max_offer = max_offer
        self._command_topic = command_topic
        self._match = match
        self._refused = refused
        self._lock = threading.Lock()
        self.offers: dict[str, bytes] = {}  # scope -> newest offer payload not yet handled
        self.commands = 0  # commands queued

    def sort(self, topic: str, payload: bytes) -> None:
        """paho's network thread: queue ``payload`` (or refuse it) by its topic."""
        if topic == self._command_topic:
            self._command(payload)
            return
        match = self._match(topic)
        if match is None:
            return
        if match[0] == "offer":
            if len(payload) > self.max_offer:
                self._refused(
                    "offer", f"{len(payload)} bytes, over the {self.max_offer}-byte limit"
                )
                return
            with self._lock:
                waiting = match[1] in self.offers
                self.offers[match[1]] = payload
            if not waiting:
                self.queue.put(match)
            return
        self.queue.put((*match, payload))

    def _command(self, payload: bytes) -> None:
        if len(payload) > MAX_COMMAND_BYTES:
            self._refused(
                "command", f"{len(payload)} bytes, over the {MAX_COMMAND_BYTES}-byte limit"
            )
            return
        with self._lock:
            if self.commands >= MAX_QUEUED_COMMANDS:
                full = True
            else:
                full, self.commands = False, self.commands + 1
        if full:
            self._refused("command", "too many commands waiting")
            return
        self.queue.put(("command", payload))

    def take_offer(self, scope: str) -> bytes:
        """The update thread: the newest offer waiting for ``scope`` (b"" if none)."""
        with self._lock:
            return self.offers.pop(scope, b"")

    def command_taken(self) -> None:
        """The update thread: one queued command was taken off the queue."""
        with self._lock:
            self.commands -= 1
