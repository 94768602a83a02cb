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
publisher closes the outbox it was given when it stops.

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
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import MqttConfig
from edged.publish.connect import (
    Client,
    RateLimitedLog,
    check_broker,
    connect_kwargs,
    describe_error,
    make_client,
    shutdown_socket,
)
from edged.publish.outbox import MemoryOutbox, Outbox, OutMessage
from edged.publish.topics import Topics

__all__ = ["MAX_INFLIGHT", "Publisher", "check_broker"]

log = logging.getLogger("edged.mqtt")

MAX_INFLIGHT = 100  # unacknowledged messages handed to paho at once
MAX_HEAD_ATTEMPTS = 5  # connections lost with the same oldest message unacknowledged -> drop it

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


class Publisher:
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
        self._cfg = cfg
        self.device_id = device_id
        self.topics = Topics(cfg.topic_prefix, device_id)
        self._on_message = on_message
        self._outbox: Outbox = (
            outbox if outbox is not None else MemoryOutbox(queue_max, queue_max_bytes)
        )
        self._seen_dropped = self._outbox.dropped
        self._where = f"{cfg.host}:{cfg.port}"
        self._v5 = cfg.protocol == "5"
        self._warn = RateLimitedLog(log)

        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._wake = threading.Condition(lock)  # the sender waits on this one
        self._send_lock = threading.Lock()
        self._connected = False
        self._connected_event = threading.Event()
        self._ever_connected = False
        self._gen = 0  # bumped on every connect and disconnect
        self._blocked: tuple[int, float] = (-1, 0.0)  # (gen, until): paho refused a hand-over
        self._cursor = 0  # highest seq handed to paho on this connection
        self._inflight: dict[int, int] = {}  # mid -> seq, QoS >= 1, awaiting on_publish
        self._early: dict[int, bool] = {}  # mid -> failed: acks that beat their registration
        self._ignore: set[int] = set()  # mids whose acks are not tracked (QoS 0, internal)
        self._head: tuple[int, int] = (0, 0)  # (seq, connections lost with it unacked)
        self._max_packet: int | None = None  # MQTT 5 CONNACK: Maximum Packet Size
        self._receive_max = MAX_INFLIGHT  # lowered by the MQTT 5 CONNACK's Receive Maximum
        self._subs: dict[str, int] = {}
        self._counts = {
            "published": 0,
            "failures": 0,
            "reconnects": 0,
            "connect_failures": 0,
        }
        self._client: Client | None = None
        self._sender: threading.Thread | None = None
        self._sender_exit = False
        self._stopped = False
        self._last_error: str | None = None  # paho's last error log line (e.g. a TLS alert)
        self._refused = False  # this connection's CONNACK refused it (already logged)

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def stats(self) -> dict[str, int]:
        """Counters: published (acknowledged), queued (waiting or unacknowledged), dropped
        (outbox overflow, oldest first; a spool counts across restarts), failures (messages
        rejected or undeliverable), reconnects, connect_failures, inflight."""
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

    def stop(self, timeout: float = 1.5) -> None:
        """Flush what can be flushed within ``timeout``, publish availability ``stopped`` and
        disconnect cleanly (no will). If ``stopped`` cannot be delivered in time, the broker is
        left to publish the will (``offline``) instead of a stale ``online``."""
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

        stopped_ok = False
        if self._connected:
            with self._send_lock:
                info = client.publish(self.topics.availability, "stopped", qos=1, retain=True)
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

    def _inflight_limit(self) -> int:
        """``_cond`` held. After the same oldest message was unacknowledged at two lost
        connections, send one message at a time until it is acknowledged: that isolates a
        message that makes the broker drop the connection (e.g. over its packet size limit
        under MQTT 3.1.1) from the ones sent along with it."""
        return 1 if self._head[1] >= 2 else self._receive_max

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
        for msg in batch:
            problem = None
            if max_packet is not None and _packet_size(msg, self._v5) > max_packet:
                problem = f"larger than the broker's maximum packet size ({max_packet} bytes)"
            else:
                try:
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

    def _forget_mid(self, mid: int) -> None:
        """Ignore the ack of ``mid`` (QoS 0 or internal message); ``_cond`` held."""
        if self._early.pop(mid, None) is None:
            self._ignore.add(mid)

    def _delivered(self, seq: int, failed: bool) -> None:
        """``_cond`` held."""
        self._outbox.ack(seq)
        self._counts["failures" if failed else "published"] += 1
        if self._head[0] == seq or self._head[1] >= 2:
            self._head = (0, 0)
        # Some may wait for room in the window (the outbox may also have dropped in-flight
        # ones to make room, so its length alone does not tell).
        window_was_full = len(self._inflight) + 1 >= self._inflight_limit()
        if window_was_full or len(self._outbox) > len(self._inflight):
            self._wake.notify()
        if self._stopped:  # stop() waits for the outbox to empty
            self._cond.notify_all()

    # ------------------------------------------------------------------ paho callbacks

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            with self._cond:
                self._counts["connect_failures"] += 1
                self._refused = True
            self._warn.warning(f"broker {self._where} refused the connection: {reason_code}")
            return
        self._last_error = None
        max_packet = getattr(properties, "MaximumPacketSize", None)
        receive_max = getattr(properties, "ReceiveMaximum", None)
        with self._send_lock:
            # The outbox resends whatever was unacknowledged; paho must not resend it too.
            client.drop_out_messages()
            with self._cond:
                self._gen += 1
                self._cursor = 0
                self._inflight.clear()
                self._early.clear()
                self._ignore.clear()
            info = client.publish(self.topics.availability, "online", qos=1, retain=True)
            with self._cond:
                self._forget_mid(info.mid)
                subs = list(self._subs.items())
                reconnect = self._ever_connected
                self._ever_connected = True
                if reconnect:
                    self._counts["reconnects"] += 1
                self._max_packet = max_packet if isinstance(max_packet, int) else None
                # One slot of the broker's Receive Maximum stays free for availability.
                self._receive_max = (
                    max(1, min(MAX_INFLIGHT, receive_max - 1))
                    if isinstance(receive_max, int)
                    else MAX_INFLIGHT
                )
                self._connected = True
                waiting = len(self._outbox)
                self._cond.notify_all()
                self._wake.notify()
            if subs:
                client.subscribe(subs)
        self._connected_event.set()
        self._warn.reset()
        log.info(
            "%s to %s (MQTT %s)%s",
            "reconnected" if reconnect else "connected",
            self._where,
            self._cfg.protocol,
            f", {waiting} message(s) waiting" if waiting else "",
        )

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        err = getattr(client, "last_connect_error", None)
        with self._cond:
            self._counts["connect_failures"] += 1
        reason = describe_error(err) if err is not None else "connection failed"
        self._warn.warning(f"cannot connect to {self._where}: {reason}")

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        gave_up = ""
        with self._cond:
            was_connected = self._connected
            self._connected = False
            self._connected_event.clear()
            self._gen += 1
            unacked = len(self._inflight)
            if self._inflight:
                head = min(self._inflight.values())
                tries = self._head[1] + 1 if self._head[0] == head else 1
                self._head = (head, tries)
                if tries >= MAX_HEAD_ATTEMPTS:
                    found = self._outbox.peek(head - 1, 1)
                    if found and found[0].seq == head:
                        gave_up = f"{found[0].topic}, {len(found[0].payload)} bytes"
                        self._outbox.ack(head)
                        self._counts["failures"] += 1
                    self._head = (0, 0)
            self._inflight.clear()
            self._early.clear()
            self._ignore.clear()
            self._cursor = 0
            stopping = self._stopped
            refused, self._refused = self._refused, False
            self._cond.notify_all()
        if gave_up:
            log.warning(
                "dropping a message (%s): the connection was lost %d times while it was "
                "unacknowledged",
                gave_up,
                MAX_HEAD_ATTEMPTS,
            )
        if not was_connected:
            # Closed before a CONNACK: e.g. a TLS 1.3 broker refusing our client certificate
            # (the alert arrives after the handshake) or one that never answers.
            why, self._last_error = self._last_error, None
            if not stopping and not refused:
                self._warn.warning(
                    f"cannot connect to {self._where}: the connection was closed before the "
                    f"broker accepted it ({why or reason_code})"
                )
            return
        if stopping:
            log.debug("disconnected from %s", self._where)
            return
        log.warning(
            "connection to %s lost (%s); %d unacknowledged message(s) will be resent",
            self._where,
            reason_code,
            unacked,
        )

    def _handle_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._last_error = buf

    def _handle_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        failed = bool(reason_code.is_failure)
        with self._cond:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                if mid in self._ignore:
                    self._ignore.discard(mid)
                else:
                    self._early[mid] = failed
                return
            self._delivered(seq, failed)
        if failed:
            self._warn.warning(f"broker {self._where} rejected a message: {reason_code}")

    def _handle_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                self._warn.warning(f"broker {self._where} refused a subscription: {rc}")

    def _handle_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        if self._on_message is None:
            return
        try:
            self._on_message(message.topic, bytes(message.payload))
        except Exception as err:
            log.error("handler for a message on %s failed: %r", message.topic, err)
