"""The daemon's MQTT client (paho-mqtt 2.x); ``check_broker`` lives in ``edged.publish.connect``.

``Publisher.publish`` never waits for the network: it appends to a bounded outbox (see
``edged.publish.outbox``) and, while connected with room in the in-flight window, hands the
message to paho itself (paho's network thread writes it); otherwise a sender thread hands
messages over once they can go. At most ``MAX_INFLIGHT`` are unacknowledged; a QoS 1/2
message leaves the outbox only when paho's ``on_publish`` fires for it. After a lost
connection the unacknowledged messages are sent again first, in order: QoS >= 1 messages are
delivered at least once across broker restarts (duplicates possible). paho's own resend queue
is emptied on every connect so that the outbox is the only source of truth. With a persistent
outbox (``SqliteOutbox``, the daemon's default) that also holds across restarts; the
publisher closes the outbox it was given when it stops. The connection state and paho's
callbacks are in ``MqttSession`` (``edged.publish.session``), the base class of ``Publisher``.

Threads: the caller(s) of ``publish``; paho's network thread (callbacks); the sender thread,
woken (``_wake``) only when something waits to be sent that ``publish`` did not send: after a
connect, when acks free the window, when ``publish`` found a hand-over in progress. ``_cond``
guards all state and is never held while calling into paho. ``_send_lock`` serialises
"hand a batch to paho" (by ``publish`` or the sender) against ``on_connect`` (which resets
paho's queue), so no batch straddles a reconnect; ``on_disconnect`` does not take it (paho
may call it while holding its own locks) and instead bumps ``_gen`` so an in-progress batch
abandons itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import MqttConfig
from edged.publish.connect import (
    Client,
    check_broker,
    connect_kwargs,
    make_client,
    shutdown_socket,
)
from edged.publish.outbox import MemoryOutbox, Outbox, OutMessage
from edged.publish.session import MAX_INFLIGHT, MqttSession

__all__ = ["MAX_INFLIGHT", "Publisher", "check_broker"]

log = logging.getLogger("edged.mqtt")

_WILL_REASON = "Disconnect with will message"


def _packet_size(msg: OutMessage, v5: bool) -> int:
    """Size of the PUBLISH packet paho will send for ``msg`` (no properties)."""
    remaining = 2 + len(msg.topic.encode("utf-8")) + (2 if msg.qos else 0) + (1 if v5 else 0)
    remaining += len(msg.payload)
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


def _check_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"invalid topic for publishing: {topic!r}")
    if len(topic.encode("utf-8")) > 65535:
        raise ValueError("topic too long")


class Publisher(MqttSession):
    """Non-blocking, reconnecting MQTT publisher with an at-least-once outbox.

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
        super().__init__(
            cfg,
            device_id,
            outbox if outbox is not None else MemoryOutbox(queue_max, queue_max_bytes),
            on_message,
        )
        self._seen_dropped = self._outbox.dropped
        self._v5 = cfg.protocol == "5"
        self._blocked: tuple[int, float] = (-1, 0.0)  # (gen, until): paho refused a hand-over
        self._client: Client | None = None
        self._sender: threading.Thread | None = None
        self._sender_exit = False

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def stats(self) -> dict[str, int]:
        """Counters: published (acknowledged), queued (waiting or unacknowledged), dropped
        (outbox overflow, oldest first; a spool counts across restarts), failures (messages
        rejected or undeliverable), dropped_by_broker (those of the failures the broker refused
        or could not take: a refusal in PUBACK/PUBREC, over its maximum packet size, or making
        it drop the connection), takeovers (connections another client with our client id took
        over), reconnects, connect_failures, inflight."""
        with self._cond:
            out = dict(self._counts)
            out["dropped"] = self._outbox.dropped
            out["queued"] = len(self._outbox)
            out["inflight"] = len(self._inflight)
        return out

    def start(self) -> None:
        """Set the will, start connecting in the background and return at once."""
        if self._client is not None:
            raise RuntimeError("Publisher already started")
        cfg = self._cfg
        client = make_client(cfg, self.device_id)
        client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        client.max_inflight_messages_set(MAX_INFLIGHT + 20)
        client.max_queued_messages_set(0)
        # paho annotates the delays as int; fractions of a second work and are used in tests.
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        client.backoff = self.backoff  # jittered; grows across short connections (connect.py)
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        client.on_log = self._handle_log
        client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, **connect_kwargs(cfg))
        self._client = client
        self._sender = threading.Thread(
            target=self._sender_loop, name="edged-mqtt-send", daemon=True
        )
        self._sender.start()
        client.loop_start()
        log.info("connecting to %s (MQTT %s) as %s", self._where, cfg.protocol, self.device_id)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected_event.wait(timeout)

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
            direct = self._connected and not self._sender_exit
        # Hand it to paho now, in this thread (one thread hop less per message); if a hand-over
        # is in progress (sender, on_connect), the sender sends it after that one.
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
        with self._cond:
            self._subs[topic] = qos
            client = self._client if self._connected else None
        if client is not None:
            client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``, now and after reconnects."""
        with self._cond:
            self._subs.pop(topic, None)
            client = self._client if self._connected else None
        if client is not None:
            client.unsubscribe(topic)

    def stop(self, timeout: float = 1.5, availability: str | None = "stopped") -> None:
        """Flush what can be flushed within ``timeout``, publish availability ``stopped`` and
        disconnect cleanly (no will). If ``stopped`` cannot be delivered in time, the broker is
        left to publish the will (``offline``) instead of a stale ``online``.
        ``availability=None`` (a reload: the daemon is back at once) publishes nothing and
        leaves the retained ``online``."""
        client = self._client
        with self._cond:
            if client is None or self._stopped:
                self._stopped = True
                client = None
            else:
                self._stopped = True
        if client is None:
            self._outbox.close()
            return
        deadline = time.monotonic() + timeout
        reserve = min(0.5, timeout / 3)

        with self._cond:
            while self._connected and len(self._outbox) > 0:
                left = deadline - reserve - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._sender_exit = True
            self._wake.notify()
        if self._sender is not None:
            self._sender.join(max(0.1, deadline - time.monotonic()))

        stopped_ok = availability is None
        if self._connected and availability is not None:
            with self._send_lock:
                info = client.publish(self.topics.availability, availability, qos=1, retain=True)
                with self._cond:
                    self._forget_mid(info.mid)
            while self._connected and not info.is_published() and time.monotonic() < deadline:
                time.sleep(0.01)
            stopped_ok = info.is_published()

        if stopped_ok or not self._connected:
            client.disconnect()
        elif self._v5:
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, _WILL_REASON))
        else:  # MQTT 3.1.1 has no "disconnect with will": drop the connection instead.
            shutdown_socket(client)
            client.disconnect()
        client.drop_out_messages()
        stopper = threading.Thread(target=client.loop_stop, name="edged-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.5, deadline - time.monotonic()))
        if stopper.is_alive():  # blocked writing to an unresponsive broker
            shutdown_socket(client)
            stopper.join(1.0)
        with self._cond:
            self._connected = False
            self._connected_event.clear()
            unsent = len(self._outbox)
        if unsent:
            log.warning("stopped with %d message(s) not delivered", unsent)
        self._outbox.close()
        log.info(
            "disconnected from %s (%s)",
            self._where,
            "availability stopped" if stopped_ok else "availability not confirmed",
        )

    # ------------------------------------------------------------------ sender

    def _can_send(self) -> bool:
        """Called with ``_cond`` held."""
        if not self._connected or len(self._inflight) >= self._inflight_limit():
            return False
        gen, until = self._blocked
        if gen == self._gen and time.monotonic() < until:
            return False
        return bool(self._outbox.peek(self._cursor, 1))

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
        client = self._client
        assert client is not None
        with self._cond:
            if self._sender_exit or not self._can_send():
                return
            gen = self._gen
            batch = self._outbox.peek(self._cursor, self._inflight_limit() - len(self._inflight))
            max_packet = self._max_packet
            killer = self._killer
        for msg in batch:
            problem = None
            size = _packet_size(msg, self._v5)
            if max_packet is not None and size > max_packet:
                why = (
                    f"larger than the broker's maximum packet size ({max_packet} bytes, MQTT 5 "
                    "CONNACK); not sent"
                )
            elif killer and size > self._max_ok and not size >= killer and self._inflight:
                return  # larger than any the broker took: sent alone, once the window is empty
            elif killer and size >= killer:
                why = (
                    f"not smaller than a message ({killer} bytes) for which the broker closed "
                    "the connection; not sent"
                )
            else:
                why = ""
            if why:
                with self._cond:
                    self._drop_refused(msg.seq, size, msg.topic, why, key="oversize")
                continue
            try:
                self._last_send = time.monotonic()
                self._handed = msg.seq
                self._sizes[msg.seq] = size
                info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            except ValueError as err:
                problem = str(err)
            if problem is not None:
                with self._cond:
                    self._outbox.ack(msg.seq)
                    self._counts["failures"] += 1
                self._warn.warning(f"dropping a message to {msg.topic}: {problem}")
                continue
            with self._cond:
                if self._gen != gen:  # lost the connection meanwhile; resent after reconnect
                    return
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    # Not connected after all; wait for paho to notice (on_disconnect).
                    self._blocked = (gen, time.monotonic() + 1.0)
                    return
                self._cursor = msg.seq
                if msg.qos == 0:
                    self._forget_mid(info.mid)
                    self._delivered(msg.seq, failed=False)
                elif info.mid in self._early:
                    self._delivered(msg.seq, failed=self._early.pop(info.mid))
                else:
                    self._inflight[info.mid] = msg.seq
