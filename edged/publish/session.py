"""The publisher's MQTT session: the state ``Publisher`` shares with paho's callbacks.

``MqttSession`` is the base class of ``Publisher`` (``edged.publish.mqtt``; the threads and
locks are described there). It holds the connection state and the in-flight bookkeeping (which
paho message id carries which outbox message), and handles paho's callbacks, which run on
paho's network thread: on connect, paho's own resend queue is emptied (the outbox is the only
source of truth: it resends whatever was unacknowledged), availability ``online`` is published
and the subscriptions are made again; ``on_publish`` takes an acknowledged message out of the
outbox; on a lost connection the in-flight messages are forgotten (the sender resends them, in
order), and a message that was the oldest unacknowledged one at ``MAX_HEAD_ATTEMPTS`` lost
connections is dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import MqttConfig
from edged.publish.connect import RateLimitedLog, describe_error
from edged.publish.outbox import Outbox
from edged.publish.topics import Topics

__all__ = ["MAX_HEAD_ATTEMPTS", "MAX_INFLIGHT", "MqttSession"]

log = logging.getLogger("edged.mqtt")

MAX_INFLIGHT = 100  # unacknowledged messages handed to paho at once
MAX_HEAD_ATTEMPTS = 5  # connections lost with the same oldest message unacknowledged -> drop it


class MqttSession:
    """Connection state, in-flight bookkeeping and paho's callbacks of a ``Publisher`` (see the
    module description); ``Publisher`` adds the public API and the sender."""

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        outbox: Outbox,
        on_message: Callable[[str, bytes], None] | None,
    ) -> None:
        self._cfg = cfg
        self.device_id = device_id
        self.topics = Topics(cfg.topic_prefix, device_id)
        self._on_message = on_message
        self._outbox = outbox
        self._where = f"{cfg.host}:{cfg.port}"
        self._warn = RateLimitedLog(log)

        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._wake = threading.Condition(lock)  # the sender waits on this one
        self._send_lock = threading.Lock()
        self._connected = False
        self._connected_event = threading.Event()
        self._ever_connected = False
        self._gen = 0  # bumped on every connect and disconnect
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
        self._stopped = False
        self._last_error: str | None = None  # paho's last error log line (e.g. a TLS alert)
        self._refused = False  # this connection's CONNACK refused it (already logged)

    # ------------------------------------------------------------------ in-flight bookkeeping

    def _inflight_limit(self) -> int:
        """``_cond`` held. After the same oldest message was unacknowledged at two lost
        connections, send one message at a time until it is acknowledged: that isolates a
        message that makes the broker drop the connection (e.g. over its packet size limit
        under MQTT 3.1.1) from the ones sent along with it."""
        return 1 if self._head[1] >= 2 else self._receive_max

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
        # Nothing may raise into paho's thread (it would end the network loop): a handler that
        # raises costs its message and one log line per WARN_INTERVAL_S at most.
        topic = "?"
        try:
            topic = message.topic  # paho decodes it as UTF-8: may raise
            self._on_message(topic, bytes(message.payload))
        except Exception as err:
            self._warn.warning(f"a message handler failed: {type(err).__name__}")
            log.debug("handler for a message on %r failed: %r", topic, err)
