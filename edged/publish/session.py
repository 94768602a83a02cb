"""The MQTT session: the paho client, its connection and paho's callbacks.

``MqttSession`` is owned by the publisher facade (``edged.publish.mqtt.Publisher``) and has
one lock of its own (the connection state: connected or not, subscriptions, takeovers, its
counters). It makes the paho client (``edged.publish.connect.make_client``; the one place
that touches paho's internals is ``edged.publish.paho_client``), connects in the background
and reconnects with the jittered ``Backoff``, reads the MQTT 5 CONNACK's limits, publishes
availability ``online`` on every connect and makes the subscriptions again, and hands what
concerns the messages to its owner through ``SessionEvents`` - never while holding its lock.
paho's callbacks run on paho's network thread.

On connect, paho's own resend queue is emptied (the outbox is the only source of truth: the
publisher resends whatever was unacknowledged). On a lost connection the owner gets the
window's content back (``SessionEvents.lost``) and, unless the connection went to another
client, is told to blame the message in flight (``SessionEvents.strike``).

A connection handed to another client with our client id counts as a takeover; repeated
ones are reported once with the likely cause (``edged.publish.takeover``). The reconnect backoff grows across connections shorter than ``STABLE_S``, so neither a
takeover fight nor a refused message makes a reconnect storm.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import MqttConfig
from edged.infra.util import RateLimitedLog
from edged.publish.connect import (
    STABLE_S,
    Backoff,
    connect_kwargs,
    describe_error,
    make_client,
    shutdown_socket,
)
from edged.publish.paho_client import Client
from edged.publish.takeover import KEEPALIVE, TAKEOVER, Takeovers
from edged.publish.topics import Topics
from edged.publish.window import MAX_INFLIGHT, Limits, Lost

__all__ = ["MqttSession", "SessionEvents"]

log = logging.getLogger("edged.mqtt")

_WILL_REASON = "Disconnect with will message"


class SessionEvents(Protocol):
    """What the session tells its owner (the publisher), from paho's network thread."""

    def handover(self) -> AbstractContextManager[object]:
        """Held while a connection is set up: no hand-over of messages straddles it."""

    def reset(self, limits: Limits) -> None:
        """A new connection with these limits; nothing is in flight on it (yet)."""

    def ignore_ack(self, mid: int) -> None:
        """The session published ``mid`` itself: its ack concerns no outbox message."""

    def up(self) -> int:
        """The connection is ready for messages; returns how many wait."""

    def lost(self) -> Lost:
        """The connection is gone: what was in flight."""

    def strike(self, lost: Lost, now: float) -> None:
        """The connection was lost with ``lost.pending`` in flight, not to a takeover."""

    def acked(self, mid: int, reason: ReasonCode) -> None:
        """The broker acknowledged (or refused: ``reason.is_failure``) message ``mid``."""


class MqttSession:
    """See the module description.

    ``on_message(topic, payload)`` runs on paho's network thread: it must return quickly, and
    whatever it raises costs only its message (and one log line per interval at most)."""

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        events: SessionEvents,
        on_message: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self.device_id = device_id
        self.topics = Topics(cfg.topic_prefix, device_id)
        self.where = f"{cfg.host}:{cfg.port}"
        self.backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self.warn = RateLimitedLog(log)
        self._events = events
        self._on_message = on_message
        self._client: Client | None = None

        self._lock = threading.Lock()  # everything below
        self._connected = False
        self._connected_event = threading.Event()
        self._ever_connected = False
        self._stopping = False
        self._subs: dict[str, int] = {}
        self._counts = {"reconnects": 0, "connect_failures": 0}
        self._takeovers = Takeovers()
        self._last_error: str | None = None  # paho's last error log line (e.g. a TLS alert)
        self._refused = False  # this connection's CONNACK refused it (already logged)

    # ------------------------------------------------------------------ for the owner

    @property
    def client(self) -> Client | None:
        return self._client

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def wait_connected(self, timeout: float) -> bool:
        return self._connected_event.wait(timeout)

    def counts(self) -> dict[str, int]:
        """reconnects, connect_failures, takeovers."""
        with self._lock:
            return {**self._counts, "takeovers": self._takeovers.total}

    def start(self) -> None:
        """Set the will, start connecting in the background and return at once."""
        if self._client is not None:
            raise RuntimeError("MQTT session already started")
        cfg = self._cfg
        client = make_client(cfg, self.device_id)
        client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        client.max_inflight_messages_set(MAX_INFLIGHT + 20)
        client.max_queued_messages_set(0)
        # paho annotates the delays as int; fractions of a second work and are used in tests.
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        client.backoff = self.backoff  # jittered; grows across short connections
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        client.on_log = self._handle_log
        client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, **connect_kwargs(cfg))
        self._client = client
        client.loop_start()
        log.info("connecting to %s (MQTT %s) as %s", self.where, cfg.protocol, self.device_id)

    def send(
        self, topic: str, payload: bytes | str, qos: int, retain: bool
    ) -> mqtt.MQTTMessageInfo:
        """Hand a message to paho (never blocks on the network); raises ValueError for what
        paho rejects."""
        client = self._client
        if client is None:
            raise RuntimeError("MQTT session not started")
        return client.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect."""
        with self._lock:
            self._subs[topic] = qos
            client = self._client if self._connected else None
        if client is not None:
            client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._subs.pop(topic, None)
            client = self._client if self._connected else None
        if client is not None:
            client.unsubscribe(topic)

    def stopping(self) -> None:
        """A stop has begun: a lost connection is no longer news."""
        with self._lock:
            self._stopping = True

    def close(self, clean: bool, deadline: float) -> None:
        """Disconnect and stop paho's thread by ``deadline``. ``clean``: a plain DISCONNECT
        (no will); else the broker is made to publish the will (``offline``)."""
        client = self._client
        if client is None:
            return
        self.stopping()
        if clean or not self.connected:
            client.disconnect()
        elif self._cfg.protocol == "5":
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
        with self._lock:
            self._connected = False
            self._connected_event.clear()

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
            with self._lock:
                self._counts["connect_failures"] += 1
                self._refused = True
                self._takeovers.suspect = False
            self.warn.warning(f"broker {self.where} refused the connection: {reason_code}")
            return
        self._last_error = None
        limits = Limits.from_connack(
            getattr(properties, "MaximumPacketSize", None),
            getattr(properties, "ReceiveMaximum", None),
        )
        with self._events.handover():
            # The outbox resends whatever was unacknowledged; paho must not resend it too.
            client.drop_out_messages()
            self._events.reset(limits)
            info = client.publish(self.topics.availability, "online", qos=1, retain=True)
            self._events.ignore_ack(info.mid)
            with self._lock:
                subs = list(self._subs.items())
                reconnect = self._ever_connected
                self._ever_connected = True
                if reconnect:
                    self._counts["reconnects"] += 1
                report = self._takeovers.confirm()
                self._connected = True
            waiting = self._events.up()
            if subs:
                client.subscribe(subs)
        self.backoff.connected()
        self._connected_event.set()
        if report:
            self._takeovers.report(self.device_id, False, self.backoff.max_s)
        log.info(
            "%s to %s (MQTT %s)%s",
            "reconnected" if reconnect else "connected",
            self.where,
            self._cfg.protocol,
            f", {waiting} message(s) waiting" if waiting else "",
        )

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        err = getattr(client, "last_connect_error", None)
        with self._lock:
            self._counts["connect_failures"] += 1
            self._takeovers.suspect = False
        reason = describe_error(err) if err is not None else "connection failed"
        self.warn.warning(f"cannot connect to {self.where}: {reason}")

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        now = time.monotonic()
        lasted = self.backoff.lost(now)
        code = getattr(reason_code, "value", None)
        with self._lock:
            was_connected, self._connected = self._connected, False
            self._connected_event.clear()
            stopping = self._stopping
            refused, self._refused = self._refused, False
        lost = self._events.lost()
        takeover = report = blame = False
        if was_connected and not stopping:
            with self._lock:
                if lasted is not None and lasted >= STABLE_S:
                    self._takeovers.stable()
                    self.warn.reset()
                if code == TAKEOVER:
                    takeover = True
                    report = self._takeovers.count()
                elif not lost.pending and lasted is not None and lasted < STABLE_S:
                    # No reason given (MQTT 3.1.1; mosquitto 2.0 also just closes an MQTT 5
                    # connection it hands over): closed soon after being accepted, by the
                    # broker (not a keepalive timeout), with no message to blame - a takeover
                    # if the broker accepts us again at once (a broker that went away does
                    # not: confirmed in _handle_connect).
                    takeover = self._takeovers.suspect = code != KEEPALIVE
                if not takeover and lost.pending:
                    blame = True
                    self._takeovers.in_row = 0
        if blame:
            self._events.strike(lost, now)
        if not was_connected:
            # Closed before a CONNACK: e.g. a TLS 1.3 broker refusing our client certificate
            # (the alert arrives after the handshake) or one that never answers.
            with self._lock:
                self._takeovers.suspect = False
            why, self._last_error = self._last_error, None
            if not stopping and not refused:
                self.warn.warning(
                    f"cannot connect to {self.where}: the connection was closed before the "
                    f"broker accepted it ({why or reason_code})"
                )
            return
        if stopping:
            log.debug("disconnected from %s", self.where)
            return
        if report:
            self._takeovers.report(self.device_id, code == TAKEOVER, self.backoff.max_s)
        line = (
            f"connection to {self.where} lost ({reason_code}); {lost.unacked} unacknowledged "
            "message(s) will be resent"
        )
        if lasted is not None and lasted < STABLE_S:
            self.warn.warning(line, key="lost-quickly")  # a storm is not a flood of lines
        else:
            log.warning("%s", line)

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
        self._events.acked(mid, reason_code)

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
                self.warn.warning(f"broker {self.where} refused a subscription: {rc}")

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
            self.warn.warning(f"a message handler failed: {type(err).__name__}")
            log.debug("handler for a message on %r failed: %r", topic, err)
