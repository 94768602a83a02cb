"""The publisher's outbox: messages waiting for the broker to acknowledge them.

The outbox keeps every message until it is acknowledged (``ack``) or pushed out by overflow.
Messages handed to the broker but not yet acknowledged stay in it, so after a lost connection
the sender simply starts peeking from the front again: unacknowledged messages are resent first,
in their original order (at least once, duplicates possible).

Both bounds, a message count and a byte count (topic + payload), are enforced by dropping the
oldest messages first; the newest message is always kept. ``dropped`` counts what was dropped.

``MemoryOutbox`` is the in-memory implementation; ``edged.publish.spool.SqliteOutbox`` keeps the
messages in an sqlite file so that they survive restarts. The publisher calls ``append``,
``peek``, ``ack`` and ``len`` under its own lock, and ``close`` once when it stops (the publisher
owns the outbox it is given); implementations that do disk I/O must keep those calls short.
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

    @property
    def dropped(self) -> int:
        """Messages dropped to make room (a persistent outbox counts across restarts)."""
        ...

    def close(self) -> None:
        """Release resources (a persistent outbox writes what it holds); idempotent."""
        ...


def message_size(topic: str, payload: bytes) -> int:
    """What a message counts against a byte bound: UTF-8 topic plus payload."""
    return len(topic.encode("utf-8")) + len(payload)


class MemoryOutbox:
    """Bounded in-memory outbox; when full, the oldest messages are dropped."""

    def __init__(self, maxlen: int, max_bytes: int | None = None) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self.dropped = 0
        self._items: OrderedDict[int, OutMessage] = OrderedDict()
        self._sizes: dict[int, int] = {}
        self._bytes = 0
        self._next_seq = 1

    def append(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        size = message_size(topic, payload)
        limit = self.max_bytes
        dropped = 0
        while self._items and (
            len(self._items) >= self.maxlen or (limit is not None and self._bytes + size > limit)
        ):
            old, _ = self._items.popitem(last=False)
            self._bytes -= self._sizes.pop(old)
            dropped += 1
        seq = self._next_seq
        self._next_seq += 1
        self._items[seq] = OutMessage(seq, topic, payload, qos, retain)
        self._sizes[seq] = size
        self._bytes += size
        self.dropped += dropped
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
        if self._items.pop(seq, None) is not None:
            self._bytes -= self._sizes.pop(seq)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        pass
