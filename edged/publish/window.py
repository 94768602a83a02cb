"""The in-flight window: the QoS > 0 messages handed to paho and not yet acknowledged.

``InflightWindow`` is owned by the publisher facade (``edged.publish.mqtt.Publisher``) and has
one lock of its own; it knows nothing of paho or of the outbox, only sequence numbers (the
outbox's ``seq``), paho message ids and packet sizes. It holds:

* which paho message id carries which outbox message (``mid -> seq``), acks that beat their
  registration (``early``) and message ids whose acks are not tracked (QoS 0, internal);
* the connection's limits from the MQTT 5 CONNACK (Receive Maximum, Maximum Packet Size), and
  the window's size: ``MAX_INFLIGHT``, or 1 while probing;
* what the broker showed about sizes: the largest packet it acknowledged (``max_ok``) and the
  smallest one given up for making it drop the connection (``killer``).

A message that makes the broker drop the connection (MQTT 3.1.1 brokers do that for an
oversized packet): after a connection is lost with messages in flight, those are sent one at
a time (probing) until the last of them is acknowledged, and one that was alone in flight,
lost within ``SUSPECT_S`` of being sent, at ``MAX_HEAD_ATTEMPTS`` (2) lost connections is given
up (``strike``). Once the broker has shown such a limit, larger messages are not sent at all.

``epoch`` changes on every connect and every lost connection, so that a hand-over that
straddles one abandons itself (``sent`` answers ``STALE``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import Enum

from edged.publish.outbox import OutMessage

__all__ = [
    "MAX_HEAD_ATTEMPTS",
    "MAX_INFLIGHT",
    "SUSPECT_S",
    "InflightWindow",
    "Limits",
    "Lost",
    "Sent",
    "packet_size",
]

MAX_INFLIGHT = 100  # unacknowledged messages handed to paho at once
MAX_HEAD_ATTEMPTS = 2  # connections lost with a message alone in flight -> drop it
SUSPECT_S = 3.0  # ... lost within this long of sending it
BLOCKED_S = 1.0  # paho refused a hand-over: wait this long (or for the next connection)


def packet_size(msg: OutMessage, v5: bool) -> int:
    """Size of the PUBLISH packet paho will send for ``msg`` (no properties)."""
    remaining = 2 + len(msg.topic.encode("utf-8")) + (2 if msg.qos else 0) + (1 if v5 else 0)
    remaining += len(msg.payload)
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


@dataclass(frozen=True, slots=True)
class Limits:
    """What the broker's CONNACK allows (MQTT 5; 3.1.1 says nothing: the defaults)."""

    max_packet: int | None = None  # Maximum Packet Size
    receive_max: int = MAX_INFLIGHT  # messages in flight (one slot kept for availability)

    @classmethod
    def from_connack(cls, max_packet: object, receive_max: object) -> Limits:
        return cls(
            max_packet if isinstance(max_packet, int) else None,
            # One slot of the broker's Receive Maximum stays free for availability.
            max(1, min(MAX_INFLIGHT, receive_max - 1))
            if isinstance(receive_max, int)
            else MAX_INFLIGHT,
        )


@dataclass(frozen=True, slots=True)
class Lost:
    """The window at the moment a connection was lost."""

    pending: list[int]  # seqs in flight, oldest first (incl. one handed over, not registered)
    unacked: int  # registered and unacknowledged
    sizes: dict[int, int] = field(default_factory=dict)  # seq -> packet size
    last_send: float = 0.0  # when the last message was handed to paho (monotonic)


class Sent(Enum):
    """What became of a message handed to paho (``InflightWindow.sent``)."""

    TRACKED = "tracked"  # in flight: its ack will come
    DELIVERED = "delivered"  # done (QoS 0, or its ack came first)
    REFUSED = "refused"  # done: its ack, which came first, was a refusal
    STALE = "stale"  # the connection changed meanwhile: resent after the reconnect
    BLOCKED = "blocked"  # paho did not take it (not connected after all)


class InflightWindow:
    """See the module description. Thread-safe; every method takes the window's own lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.epoch = 0  # bumped on every connect and lost connection
        self._cursor = 0  # highest seq handed to paho on this connection
        self._handed = 0  # the last seq handed to paho (registered or not)
        self._last_send = 0.0
        self._inflight: dict[int, int] = {}  # mid -> seq, QoS >= 1, awaiting the ack
        self._early: dict[int, bool] = {}  # mid -> failed: acks that beat their registration
        self._ignore: set[int] = set()  # mids whose acks are not tracked (QoS 0, internal)
        self._sizes: dict[int, int] = {}  # seq -> packet size, of the messages in flight
        self._probe_upto = 0  # probing (one in flight at a time) until a seq > this is acked
        self._strikes: dict[int, int] = {}  # seq -> connections lost with it alone in flight
        self._max_ok = 0  # the largest packet the broker acknowledged
        self._killer = 0  # the smallest packet given up for dropping the connection (0: none)
        self._limits = Limits()
        self._blocked: tuple[int, float] = (-1, 0.0)  # (epoch, until)

    # ------------------------------------------------------------------ reading

    @property
    def cursor(self) -> int:
        with self._lock:
            return self._cursor

    def __len__(self) -> int:
        with self._lock:
            return len(self._inflight)

    def _limit(self) -> int:
        return 1 if self._probe_upto else self._limits.receive_max

    def limit(self) -> int:
        """The window's size now: 1 while probing, else the broker's Receive Maximum (at
        most ``MAX_INFLIGHT``)."""
        with self._lock:
            return self._limit()

    def room(self, now: float | None = None) -> int:
        """How many more messages may be handed over now (0 while paho refuses them)."""
        with self._lock:
            epoch, until = self._blocked
            if epoch == self.epoch and (time.monotonic() if now is None else now) < until:
                return 0
            return max(0, self._limit() - len(self._inflight))

    def verdict(self, size: int) -> str | None:
        """Whether a packet of ``size`` bytes may go now: None (send it), ``""`` (hold it:
        larger than any the broker took, it is sent alone once the window is empty) or why it
        is not sent at all."""
        with self._lock:
            max_packet, killer = self._limits.max_packet, self._killer
            if max_packet is not None and size > max_packet:
                return (
                    f"larger than the broker's maximum packet size ({max_packet} bytes, MQTT 5 "
                    "CONNACK); not sent"
                )
            if killer and size >= killer:
                return (
                    f"not smaller than a message ({killer} bytes) for which the broker closed "
                    "the connection; not sent"
                )
            if killer and size > self._max_ok and self._inflight:
                return ""
            return None

    # ------------------------------------------------------------------ the connection

    def reset(self, limits: Limits) -> None:
        """A new connection with ``limits``: nothing is in flight on it."""
        with self._lock:
            self.epoch += 1
            self._limits = limits
            self._clear()

    def lost(self) -> Lost:
        """The connection is gone: what was in flight (the outbox resends it, in order)."""
        with self._lock:
            self.epoch += 1
            pending = sorted(self._inflight.values())
            if self._handed > self._cursor:  # handed over, lost before it was registered
                pending.append(self._handed)
            lost = Lost(pending, len(self._inflight), dict(self._sizes), self._last_send)
            self._clear()
            return lost

    def _clear(self) -> None:
        self._cursor = self._handed = 0
        self._inflight.clear()
        self._sizes.clear()
        self._early.clear()
        self._ignore.clear()

    # ------------------------------------------------------------------ handing over, acks

    def handing(self, seq: int, size: int) -> None:
        """``seq`` (``size`` bytes) is about to be handed to paho."""
        with self._lock:
            self._last_send = time.monotonic()
            self._handed = seq
            self._sizes[seq] = size

    def sent(self, epoch: int, seq: int, mid: int, qos: int, taken: bool) -> Sent:
        """paho took (``taken``) or refused message ``seq`` as ``mid``, on the connection of
        ``epoch``."""
        with self._lock:
            if epoch != self.epoch:
                return Sent.STALE
            if not taken:  # wait for paho to notice (on_disconnect)
                self._blocked = (epoch, time.monotonic() + BLOCKED_S)
                return Sent.BLOCKED
            self._cursor = seq
            if qos == 0:
                self._forget(mid)
                return Sent.DELIVERED
            if mid in self._early:
                return Sent.REFUSED if self._early.pop(mid) else Sent.DELIVERED
            self._inflight[mid] = seq
            return Sent.TRACKED

    def ignore(self, mid: int) -> None:
        """Do not track the ack of ``mid`` (QoS 0 or an internal message)."""
        with self._lock:
            self._forget(mid)

    def _forget(self, mid: int) -> None:
        if self._early.pop(mid, None) is None:
            self._ignore.add(mid)

    def acked(self, mid: int, failed: bool) -> int | None:
        """The broker acknowledged ``mid``: the seq it carried (None: not tracked, or not
        registered yet - then ``sent`` reports it)."""
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                if mid in self._ignore:
                    self._ignore.discard(mid)
                else:
                    self._early[mid] = failed
            return seq

    def done(self, seq: int, failed: bool) -> bool:
        """``seq`` is delivered (or refused by the broker); True if the window was full (someone
        may wait for room)."""
        with self._lock:
            size = self._sizes.pop(seq, 0)
            if not failed and size > self._max_ok:
                self._max_ok = size
                if self._killer and size >= self._killer:
                    self._killer = 0  # not a size limit after all
            self._end_probe(seq)
            return len(self._inflight) + 1 >= self._limit()

    def given_up(self, seq: int) -> None:
        """``seq`` was dropped as one the broker will not take."""
        with self._lock:
            self._end_probe(seq)

    def _end_probe(self, seq: int) -> None:
        self._strikes.pop(seq, None)
        if seq >= self._probe_upto:
            self._probe_upto = 0

    # ------------------------------------------------------------------ a message that kills

    def strike(self, lost: Lost, now: float) -> int | None:
        """The connection was lost with ``lost.pending`` in flight, and not to a takeover:
        probe them one at a time from now on. A message that was alone in flight, sent just
        before, gets a strike; at ``MAX_HEAD_ATTEMPTS`` strikes (1 once the broker has shown
        a size limit) it is given up: returns its seq."""
        seqs = lost.pending
        with self._lock:
            self._probe_upto = max(self._probe_upto, seqs[-1])
            if len(seqs) != 1 or now - lost.last_send > SUSPECT_S:
                return None
            seq = seqs[0]
            if lost.sizes.get(seq, 0) <= self._max_ok:
                return None  # the broker took larger ones: not its size
            strikes = self._strikes.get(seq, 0) + 1
            self._strikes[seq] = strikes
            return seq if strikes >= (1 if self._killer else MAX_HEAD_ATTEMPTS) else None

    def killed(self, seq: int, size: int) -> int:
        """``seq`` (``size`` bytes) is given up for dropping the connection: larger ones are
        not sent from now on. Returns its strikes."""
        with self._lock:
            if size > self._max_ok and (not self._killer or size < self._killer):
                self._killer = size  # a size limit, as far as can be told
            return self._strikes.get(seq, 1)
