"""The daemon's MQTT publisher (paho-mqtt 2.x): the facade over three parts, each with one owner
and a lock of its own; ``check_broker`` lives in ``edged.publish.connect``.

* the **outbox** (``edged.publish.outbox``: ``MemoryOutbox``, or the persistent ``SqliteOutbox``
  of ``edged.publish.spool``, the daemon's default): every message until the broker
  acknowledges it; the publisher closes the outbox it was given when it stops;
* the **in-flight window** (``edged.publish.window.InflightWindow``): which paho message id
  carries which outbox message, the window's size, what the broker showed about sizes;
* the **MQTT session** (``edged.publish.session.MqttSession``): the paho client, connecting and
  reconnecting, the CONNACK's limits, takeovers, subscriptions, paho's callbacks.

``Publisher.publish`` never waits for the network: it appends to the bounded outbox and, while
connected with room in the window, hands the message to paho itself (paho's network thread
writes it); otherwise a sender thread hands messages over once they can go. A QoS 1/2 message
leaves the outbox only when the broker acknowledges it. After a lost connection the
unacknowledged messages are sent again first, in order: QoS >= 1 messages are delivered at
least once across broker restarts (duplicates possible) - with a persistent outbox, across
restarts of edged too. What the broker will not take is dropped, counted
(``dropped_by_broker``, also in ``failures``) and logged once per cause with its size: a
refusal in PUBACK/PUBREC (a reason code >= 0x80, e.g. mosquitto's 0x95 for
``message_size_limit``, 0x87 for its ACL), a message larger than the MQTT 5 CONNACK's Maximum
Packet Size (never sent), and one that makes the broker drop the connection (see the window).

Threads: the caller(s) of ``publish``; paho's network thread (the session's callbacks); the
sender thread, woken (``_wake``) only when something waits that ``publish`` did not send: after
a connect, when acks free the window, when ``publish`` found a hand-over in progress. ``_cond``
guards the outbox and the delivery counters and is never held while calling into paho; lock
order: ``_cond``, then the window's or the session's lock (neither calls back while holding
its own). ``_send_lock`` serialises "hand a batch to paho" (by ``publish`` or the sender)
against a connect (``SessionEvents.handover``: paho's queue is reset), so no batch straddles a
reconnect; a lost connection does not take it (paho may report it while holding its own
locks) and instead changes the window's epoch, so an in-progress batch abandons itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import MqttConfig
from edged.publish.api import PublisherAPI
from edged.publish.connect import Backoff, check_broker
from edged.publish.outbox import MemoryOutbox, Outbox, OutMessage
from edged.publish.session import MqttSession
from edged.publish.window import MAX_INFLIGHT, InflightWindow, Limits, Lost, Sent, packet_size

__all__ = ["MAX_INFLIGHT", "Publisher", "check_broker"]

log = logging.getLogger("edged.mqtt")


def _check_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"invalid topic for publishing: {topic!r}")
    if len(topic.encode("utf-8")) > 65535:
        raise ValueError("topic too long")


class Publisher:
    """Non-blocking, reconnecting MQTT publisher with an at-least-once outbox (see the module
    description); implements ``edged.publish.api.PublisherAPI``.

    ``on_message(topic, payload)`` runs on paho's network thread: it must return quickly
    (hand real work to another thread), or keepalives and acknowledgements stall.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        *,
        queue_max: int = 10000,
        queue_max_bytes: int | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.device_id = device_id
        self._outbox = outbox if outbox is not None else MemoryOutbox(queue_max, queue_max_bytes)
        self._window = InflightWindow()
        self._session = MqttSession(cfg, device_id, self, on_message)
        self.topics = self._session.topics
        self._warn = self._session.warn
        self._v5 = cfg.protocol == "5"

        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # the outbox and the counters below
        self._wake = threading.Condition(lock)  # the sender waits on this one
        self._send_lock = threading.Lock()
        self._counts = {"published": 0, "failures": 0, "dropped_by_broker": 0}
        self._seen_dropped = self._outbox.dropped
        self._started = self._stopped = self._sender_exit = False
        self._sender: threading.Thread | None = None

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._session.connected

    @property
    def backoff(self) -> Backoff:
        return self._session.backoff

    @property
    def stats(self) -> dict[str, int]:
        """Counters: published (acknowledged), queued (waiting or unacknowledged), dropped
        (outbox overflow, oldest first; a spool counts across restarts), failures (messages
        rejected or undeliverable), dropped_by_broker (those of the failures the broker refused
        or could not take: a refusal in PUBACK/PUBREC, over its maximum packet size, or making
        it drop the connection), takeovers (connections another client with our client id took
        over), reconnects, connect_failures, inflight."""
        session = self._session.counts()
        with self._cond:
            out = {
                "published": self._counts["published"],
                "failures": self._counts["failures"],
                "reconnects": session["reconnects"],
                "connect_failures": session["connect_failures"],
                "dropped_by_broker": self._counts["dropped_by_broker"],
                "takeovers": session["takeovers"],
                "dropped": self._outbox.dropped,
                "queued": len(self._outbox),
                "inflight": len(self._window),
            }
        return out

    def start(self) -> None:
        """Set the will, start connecting in the background and return at once."""
        if self._started:
            raise RuntimeError("Publisher already started")
        self._started = True
        self._sender = threading.Thread(
            target=self._sender_loop, name="edged-mqtt-send", daemon=True
        )
        self._sender.start()
        self._session.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._session.wait_connected(timeout)

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Queue a message and return at once (thread-safe, never waits for the network)."""
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos}")
        _check_topic(topic)
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        with self._cond:
            self._outbox.append(topic, data, qos, retain)
            # Also drops the outbox made on its own since (a spool enforces its bounds later).
            dropped = self._outbox.dropped
            new_drops, self._seen_dropped = dropped > self._seen_dropped, dropped
            direct = self._session.connected and not self._sender_exit
        # Hand it to paho now, in this thread (one thread hop less per message); if a hand-over
        # is in progress (sender, a connect), the sender sends it after that one.
        sent = False
        if direct and self._send_lock.acquire(blocking=False):
            try:
                self._send_batch()
                sent = True
            except Exception as err:  # a bug or a broken socket pair: the sender retries
                self._warn.warning(f"handing a message to the MQTT client failed: {err!r}")
            finally:
                self._send_lock.release()
        if not sent:
            with self._cond:
                self._wake.notify()
        if new_drops:
            self._warn.warning("outbox full: dropping the oldest messages")

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        self._session.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``, now and after reconnects."""
        self._session.unsubscribe(topic)

    def stop(self, timeout: float = 1.5, availability: str | None = "stopped") -> None:
        """Flush what can be flushed within ``timeout``, publish availability ``stopped`` and
        disconnect cleanly (no will). If ``stopped`` cannot be delivered in time, the broker is
        left to publish the will (``offline``) instead of a stale ``online``.
        ``availability=None`` (a reload: the daemon is back at once) publishes nothing and
        leaves the retained ``online``."""
        with self._cond:
            first = self._started and not self._stopped
            self._stopped = True
        if not first:
            self._outbox.close()
            return
        session = self._session
        session.stopping()
        deadline = time.monotonic() + timeout
        reserve = min(0.5, timeout / 3)

        with self._cond:
            while session.connected and len(self._outbox) > 0:
                left = deadline - reserve - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._sender_exit = True
            self._wake.notify()
        if self._sender is not None:
            self._sender.join(max(0.1, deadline - time.monotonic()))

        stopped_ok = availability is None
        if session.connected and availability is not None:
            with self._send_lock:
                info = session.send(self.topics.availability, availability, 1, True)
                self._window.ignore(info.mid)
            while session.connected and not info.is_published() and time.monotonic() < deadline:
                time.sleep(0.01)
            stopped_ok = info.is_published()
        session.close(stopped_ok, deadline)
        with self._cond:
            unsent = len(self._outbox)
        if unsent:
            log.warning("stopped with %d message(s) not delivered", unsent)
        self._outbox.close()
        log.info(
            "disconnected from %s (%s)",
            session.where,
            "availability stopped" if stopped_ok else "availability not confirmed",
        )

    # ------------------------------------------------------------------ SessionEvents

    def handover(self) -> AbstractContextManager[object]:
        return self._send_lock

    def reset(self, limits: Limits) -> None:
        self._window.reset(limits)

    def ignore_ack(self, mid: int) -> None:
        self._window.ignore(mid)

    def up(self) -> int:
        with self._cond:
            self._cond.notify_all()
            self._wake.notify()
            return len(self._outbox)

    def lost(self) -> Lost:
        with self._cond:
            lost = self._window.lost()
            self._cond.notify_all()
        return lost

    def strike(self, lost: Lost, now: float) -> None:
        with self._cond:
            seq = self._window.strike(lost, now)
            found = self._outbox.peek(seq - 1, 1) if seq is not None else []
            if seq is None or not found or found[0].seq != seq:
                return
            size = lost.sizes.get(seq, len(found[0].payload))
            strikes = self._window.killed(seq, size)
            self._drop_refused(
                seq,
                size,
                found[0].topic,
                "the broker closed the connection right after receiving it, "
                f"{strikes} time(s) (larger than its packet size limit?)",
                key="kills-connection",
            )

    def acked(self, mid: int, reason: ReasonCode) -> None:
        failed = bool(reason.is_failure)
        with self._cond:
            seq = self._window.acked(mid, failed)
            if seq is None:
                return
            found = self._outbox.peek(seq - 1, 1) if failed else []
            self._delivered(seq, failed)
        if failed:
            msg = found[0] if found and found[0].seq == seq else None
            what = f" to {msg.topic} ({len(msg.payload)} bytes)" if msg is not None else ""
            self._warn.warning(
                f"broker {self._session.where} refused a message{what}: {reason}; dropped",
                key=f"refused-{getattr(reason, 'value', reason)}",
            )

    # ------------------------------------------------------------------ delivery

    def _delivered(self, seq: int, failed: bool) -> None:
        """``_cond`` held."""
        self._outbox.ack(seq)
        self._counts["failures" if failed else "published"] += 1
        if failed:
            self._counts["dropped_by_broker"] += 1
        window_was_full = self._window.done(seq, failed)
        # Some may wait for room in the window (the outbox may also have dropped in-flight
        # ones to make room, so its length alone does not tell).
        if window_was_full or len(self._outbox) > len(self._window):
            self._wake.notify()
        if self._stopped:  # stop() waits for the outbox to empty
            self._cond.notify_all()

    def _drop_refused(self, seq: int, size: int | None, topic: str, why: str, key: str) -> None:
        """A message the broker will not take: dropped and counted (``_cond`` held); logged
        once per ``key`` and interval, with its size."""
        self._outbox.ack(seq)
        self._counts["failures"] += 1
        self._counts["dropped_by_broker"] += 1
        self._window.given_up(seq)
        what = f"{size} bytes" if size is not None else "size unknown"
        self._warn.warning(f"dropping a message to {topic} ({what}): {why}", key=key)

    # ------------------------------------------------------------------ sender

    def _can_send(self) -> bool:
        """Called with ``_cond`` held."""
        if not self._session.connected or self._window.room() <= 0:
            return False
        return bool(self._outbox.peek(self._window.cursor, 1))

    def _sender_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._sender_exit and not self._can_send():
                        self._wake.wait(0.5)
                    if self._sender_exit:
                        return
                with self._send_lock:
                    self._send_batch()
        except Exception as err:  # pragma: no cover - a bug; keep one line in the log
            log.error("MQTT sender stopped: %r", err)

    def _send_batch(self) -> None:
        window = self._window
        with self._cond:
            if self._sender_exit or not self._can_send():
                return
            epoch = window.epoch
            batch = self._outbox.peek(window.cursor, window.room())
        for msg in batch:
            if not self._send_one(msg, epoch):
                return

    def _send_one(self, msg: OutMessage, epoch: int) -> bool:
        """Hand ``msg`` to paho; False: stop this batch (``_send_lock`` held)."""
        window = self._window
        size = packet_size(msg, self._v5)
        why = window.verdict(size)
        if why == "":
            return False  # larger than any the broker took: sent alone, once the window is empty
        if why is not None:
            with self._cond:
                self._drop_refused(msg.seq, size, msg.topic, why, key="oversize")
            return True
        window.handing(msg.seq, size)
        try:
            info = self._session.send(msg.topic, msg.payload, msg.qos, msg.retain)
        except ValueError as err:
            with self._cond:
                self._outbox.ack(msg.seq)
                self._counts["failures"] += 1
            self._warn.warning(f"dropping a message to {msg.topic}: {err}")
            return True
        with self._cond:
            taken = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            outcome = window.sent(epoch, msg.seq, info.mid, msg.qos, taken)
            if outcome in (Sent.STALE, Sent.BLOCKED):
                return False  # lost the connection meanwhile; resent after the reconnect
            if outcome is not Sent.TRACKED:
                self._delivered(msg.seq, failed=outcome is Sent.REFUSED)
        return True


if TYPE_CHECKING:
    _api: PublisherAPI = Publisher(MqttConfig(), "x")  # Publisher implements the protocol
