"""The publisher's outbox: messages waiting for the broker to acknowledge them.

The outbox keeps every message until it is acknowledged (``ack``) or pushed out by overflow.
Messages handed to the broker but not yet acknowledged stay in it, so after a lost connection
the sender simply starts peeking from the front again: unacknowledged messages are resent first,
in their original order (at least once, duplicates possible).

``MemoryOutbox`` is the in-memory implementation. A persistent one (an sqlite spool surviving
restarts) can implement the same ``Outbox`` protocol; the publisher calls it under its own lock,
so implementations need not be thread-safe.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutMessage:
    seq: int  # position in the outbox; strictly increasing, assigned by the outbox
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox(Protocol):
    def append(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Store a message; returns how many older messages were dropped to make room."""
        ...

    def peek(self, after: int, limit: int) -> list[OutMessage]:
        """Up to ``limit`` messages with ``seq > after``, oldest first; nothing is removed."""
        ...

    def ack(self, seq: int) -> None:
        """Forget a delivered (or undeliverable) message; unknown ``seq`` is ignored."""
        ...

    def __len__(self) -> int: ...


class MemoryOutbox:
    """Bounded in-memory outbox; when full, the oldest message is dropped."""

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self._items: OrderedDict[int, OutMessage] = OrderedDict()
        self._next_seq = 1

    def append(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        dropped = 0
        while len(self._items) >= self.maxlen:
            self._items.popitem(last=False)
            dropped += 1
        seq = self._next_seq
        self._next_seq += 1
        self._items[seq] = OutMessage(seq, topic, payload, qos, retain)
        return dropped

    def peek(self, after: int, limit: int) -> list[OutMessage]:
        out: list[OutMessage] = []
        if limit <= 0:
            return out
        # Messages at or before ``after`` are the (few) in-flight ones at the front.
        for seq, msg in self._items.items():
            if seq <= after:
                continue
            out.append(msg)
            if len(out) >= limit:
                break
        return out

    def ack(self, seq: int) -> None:
        self._items.pop(seq, None)

    def __len__(self) -> int:
        return len(self._items)
