"""The publisher's MQTT session: the state ``Publisher`` shares with paho's callbacks.

``MqttSession`` is the base class of ``Publisher`` (``edged.publish.mqtt``; the threads and
locks are described there). It holds the connection state and the in-flight bookkeeping (which
paho message id carries which outbox message), and handles paho's callbacks, which run on
paho's network thread: on connect, paho's own resend queue is emptied (the outbox is the only
source of truth: it resends whatever was unacknowledged), availability ``online`` is published
and the subscriptions are made again; ``on_publish`` takes an acknowledged message out of the
outbox; on a lost connection the in-flight messages are forgotten (the sender resends them, in
order).

What the broker will not take is dropped, counted (``dropped_by_broker``, also in
``failures``) and logged once per cause with its size: a refusal in PUBACK/PUBREC (a reason
code >= 0x80, e.g. mosquitto's 0x95 for ``message_size_limit``, 0x87 for its ACL) - a result,
not a protocol error; a message larger than the MQTT 5 CONNACK's Maximum Packet Size (never
sent); and a message that makes the broker drop the connection (MQTT 3.1.1 brokers do that for
an oversized packet): after a connection is lost with messages in flight, the ones that were in
flight are sent one at a time (probing), and one that was alone in flight, within
``SUSPECT_S`` of being sent, at ``MAX_HEAD_ATTEMPTS`` (2) lost connections is dropped.

A connection the broker hands to another client with our client id (MQTT 5 reason 0x8E
"Session taken over"; without a reason - MQTT 3.1.1, and mosquitto 2.0 under MQTT 5 too - a
connection the broker closes within ``STABLE_S`` of accepting it with nothing in flight, not
a keepalive timeout) counts as a takeover; repeated ones are reported once
with the likely cause. The reconnect backoff (``edged.publish.connect.Backoff``) grows across
connections shorter than ``STABLE_S``, so neither a takeover fight nor a refused message makes
a reconnect storm.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import MqttConfig
from edged.publish.connect import STABLE_S, Backoff, RateLimitedLog, describe_error
from edged.publish.outbox import Outbox
from edged.publish.topics import Topics

__all__ = ["MAX_HEAD_ATTEMPTS", "MAX_INFLIGHT", "MqttSession"]

log = logging.getLogger("edged.mqtt")

MAX_INFLIGHT = 100  # unacknowledged messages handed to paho at once
MAX_HEAD_ATTEMPTS = 2  # connections lost with a message alone in flight -> drop it
SUSPECT_S = 3.0  # ... lost within this long of sending it
TAKEOVERS_REPORTED = 2  # takeovers in a row (connections shorter than STABLE_S) -> one warning
TAKEOVER = 0x8E  # MQTT 5 DISCONNECT reason: Session taken over
_KEEPALIVE = 0x8D  # paho's reason for a connection it closed itself: Keep alive timeout


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
        self._probe_upto = 0  # probing (one in flight at a time) until a seq > this is acked
        self._strikes: dict[int, int] = {}  # seq -> connections lost with it alone in flight
        self._last_send = 0.0  # when the sender last handed a message to paho (monotonic)
        self._handed = 0  # the last seq handed to paho on this connection (registered or not)
        self._sizes: dict[int, int] = {}  # seq -> packet size, of the messages in flight
        self._max_ok = 0  # the largest packet the broker acknowledged
        self._killer = 0  # the smallest packet given up for dropping the connection (0: none)
        self._takeovers_in_row = 0  # since the last connection that lasted STABLE_S
        self._takeover_reported = False
        self._suspect_takeover = False  # a quick close without a reason, to be confirmed
        self.backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self._max_packet: int | None = None  # MQTT 5 CONNACK: Maximum Packet Size
        self._receive_max = MAX_INFLIGHT  # lowered by the MQTT 5 CONNACK's Receive Maximum
        self._subs: dict[str, int] = {}
        self._counts = {
            "published": 0,
            "failures": 0,
            "reconnects": 0,
            "connect_failures": 0,
            "dropped_by_broker": 0,
            "takeovers": 0,
        }
        self._stopped = False
        self._last_error: str | None = None  # paho's last error log line (e.g. a TLS alert)
        self._refused = False  # this connection's CONNACK refused it (already logged)

    # ------------------------------------------------------------------ in-flight bookkeeping

    def _inflight_limit(self) -> int:
        """``_cond`` held. After a connection was lost with messages in flight, those are sent
        one at a time until the last of them is acknowledged: that isolates a message that
        makes the broker drop the connection (e.g. over its packet size limit under MQTT
        3.1.1) from the ones sent along with it."""
        return 1 if self._probe_upto else self._receive_max

    def _drop_refused(self, seq: int, size: int | None, topic: str, why: str, key: str) -> None:
        """A message the broker will not take: dropped and counted (``_cond`` held); logged
        once per ``key`` and interval, with its size."""
        self._outbox.ack(seq)
        self._counts["failures"] += 1
        self._counts["dropped_by_broker"] += 1
        self._strikes.pop(seq, None)
        if seq >= self._probe_upto:
            self._probe_upto = 0
        what = f"{size} bytes" if size is not None else "size unknown"
        self._warn.warning(f"dropping a message to {topic} ({what}): {why}", key=key)

    def _forget_mid(self, mid: int) -> None:
        """Ignore the ack of ``mid`` (QoS 0 or internal message); ``_cond`` held."""
        if self._early.pop(mid, None) is None:
            self._ignore.add(mid)

    def _delivered(self, seq: int, failed: bool) -> None:
        """``_cond`` held."""
        self._outbox.ack(seq)
        self._counts["failures" if failed else "published"] += 1
        size = self._sizes.pop(seq, 0)
        if failed:
            self._counts["dropped_by_broker"] += 1
        elif size > self._max_ok:
            self._max_ok = size
            if self._killer and size >= self._killer:
                self._killer = 0  # not a size limit after all
        self._strikes.pop(seq, None)
        if seq >= self._probe_upto:
            self._probe_upto = 0
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
                self._suspect_takeover = False
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
                self._handed = 0
                self._inflight.clear()
                self._sizes.clear()
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
                report = self._suspect_takeover and self._count_takeover()
                self._suspect_takeover = False
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
        self.backoff.connected()
        self._connected_event.set()
        if report:
            self._report_takeovers(False)
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
            self._suspect_takeover = False
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
        now = time.monotonic()
        lasted = self.backoff.lost(now)
        code = getattr(reason_code, "value", None)
        gave_up: tuple[int, int, str] | None = None
        takeover = report = False
        with self._cond:
            was_connected = self._connected
            self._connected = False
            self._connected_event.clear()
            self._gen += 1
            unacked = len(self._inflight)
            # In flight: the registered ones, and one handed to paho but lost before it was
            # registered (the connection went in between).
            pending = sorted(self._inflight.values())
            if self._handed > self._cursor:
                pending.append(self._handed)
            stopping = self._stopped
            if was_connected and not stopping:
                if lasted is not None and lasted >= STABLE_S:
                    self._takeovers_in_row = 0
                    self._takeover_reported = False
                    self._warn.reset()
                if code == TAKEOVER:
                    takeover = True
                    report = self._count_takeover()
                elif not pending and lasted is not None and lasted < STABLE_S:
                    # No reason given (MQTT 3.1.1; mosquitto 2.0 also just closes an MQTT 5
                    # connection it hands over): closed soon after being accepted, by the
                    # broker (not a keepalive timeout), with no message to blame - a takeover
                    # if the broker accepts us again at once (a broker that went away does
                    # not: confirmed in _handle_connect).
                    takeover = self._suspect_takeover = code != _KEEPALIVE
                if not takeover and pending:
                    gave_up = self._strike(pending, now)
                    self._takeovers_in_row = 0
            self._inflight.clear()
            self._sizes.clear()
            self._early.clear()
            self._ignore.clear()
            self._cursor = 0
            self._handed = 0
            refused, self._refused = self._refused, False
            self._cond.notify_all()
        if gave_up is not None:
            seq, size, topic = gave_up
            with self._cond:
                self._refused_msg(seq, size, topic)
        if not was_connected:
            # Closed before a CONNACK: e.g. a TLS 1.3 broker refusing our client certificate
            # (the alert arrives after the handshake) or one that never answers.
            self._suspect_takeover = False
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
        if report:
            self._report_takeovers(code == TAKEOVER)
        line = (
            f"connection to {self._where} lost ({reason_code}); {unacked} unacknowledged "
            "message(s) will be resent"
        )
        if lasted is not None and lasted < STABLE_S:
            self._warn.warning(line, key="lost-quickly")  # a storm is not a flood of lines
        else:
            log.warning("%s", line)

    def _count_takeover(self) -> bool:
        """``_cond`` held; True when the takeovers in a row are to be reported now."""
        self._counts["takeovers"] += 1
        self._takeovers_in_row += 1
        if self._takeovers_in_row >= TAKEOVERS_REPORTED and not self._takeover_reported:
            self._takeover_reported = True
            return True
        return False

    def _report_takeovers(self, by_reason: bool) -> None:
        log.warning(
            "another client probably uses client id %s: the broker %s %d times in a row; "
            "reconnecting with growing delays (up to %g s) instead of fighting over it",
            self.device_id,
            'handed our session to it ("Session taken over")'
            if by_reason
            else "closed our connection within seconds of accepting it",
            self._takeovers_in_row,
            self.backoff.max_s,
        )

    def _strike(self, seqs: list[int], now: float) -> tuple[int, int, str] | None:
        """A connection was lost with messages ``seqs`` in flight (``_cond`` held): probe them
        one at a time from now on; a message that was alone in flight, sent just before, gets
        a strike, and at ``MAX_HEAD_ATTEMPTS`` strikes it is given up: (seq, size, topic)."""
        self._probe_upto = max(self._probe_upto, seqs[-1])
        if len(seqs) != 1 or now - self._last_send > SUSPECT_S:
            return None
        seq = seqs[0]
        if self._sizes.get(seq, 0) <= self._max_ok:
            return None  # the broker took larger ones: not its size
        strikes = self._strikes.get(seq, 0) + 1
        self._strikes[seq] = strikes
        # Once the broker has shown a size limit, one such loss is enough for a message larger
        # than any it took (those are sent alone: see Publisher._send_batch).
        if strikes < (1 if self._killer else MAX_HEAD_ATTEMPTS):
            return None
        found = self._outbox.peek(seq - 1, 1)
        if not found or found[0].seq != seq:
            return None
        return seq, self._sizes.get(seq, len(found[0].payload)), found[0].topic

    def _refused_msg(self, seq: int, size: int, topic: str) -> None:
        if size > self._max_ok and (not self._killer or size < self._killer):
            self._killer = size  # a size limit, as far as can be told: larger ones go unsent
        self._drop_refused(
            seq,
            size,
            topic,
            "the broker closed the connection right after receiving it, "
            f"{self._strikes.get(seq, 1)} time(s) (larger than its packet size limit?)",
            key="kills-connection",
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
            found = self._outbox.peek(seq - 1, 1) if failed else []
            self._delivered(seq, failed)
        if failed:
            msg = found[0] if found and found[0].seq == seq else None
            what = f" to {msg.topic} ({len(msg.payload)} bytes)" if msg is not None else ""
            self._warn.warning(
                f"broker {self._where} refused a message{what}: {reason_code}; dropped",
                key=f"refused-{getattr(reason_code, 'value', reason_code)}",
            )

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
