"""The one place that reaches into paho-mqtt's internals: ``Client``, a subclass of paho's.

paho-mqtt 2.x has no public API (or not in every supported version) for four things the publisher needs; everything else in
``edged.publish`` uses paho's public API only.

1. **Refusals in PUBACK/PUBREC.** Mosquitto answers an oversized QoS 1 PUBLISH with PUBACK
   0x95 "Packet too large", which MQTT 5 only lists for DISCONNECT; paho treats such a PUBACK
   as a malformed packet and drops the connection (a reconnect storm of one refused message).
   Here any MQTT 5 reason code >= 0x80 in a PUBACK/PUBREC/PUBCOMP becomes an ``on_publish``
   with that reason; a refusal in PUBREC ends the QoS 2 flow (MQTT 5, 4.3.3: no PUBREL).
2. **The reconnect wait.** paho's own backoff has no jitter and resets on every CONNACK; here
   ``backoff`` (``edged.publish.connect.Backoff``) draws each delay.
3. **Emptying paho's resend queue** on connect (the outbox is the only source of truth):
   ``drop_out_messages``, public in paho 2.2, is missing from 2.0 and 2.1.
4. **The network loop's wake-up.** ``loop_start()``'s thread runs with a shorter select()
   timeout (``LOOP_TIMEOUT_S``) than paho's 1 s: paho checks the keepalive only when its loop
   wakes, and nothing wakes it once a half-open connection has filled the in-flight window,
   so a dead broker was noticed up to 2 s late.

The private names used (``PRIVATE_NAMES``) are checked against the installed paho by
``tests/publish/test_paho_client.py``, which ``scripts/paho-compat.sh`` runs under every
supported paho minor version (the range pinned in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import struct
import time
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import (  # type: ignore[attr-defined]  # paho 2.0/2.1 define it here only
    MalformedPacket,
    Properties,
)
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["LOOP_TIMEOUT_S", "PRIVATE_NAMES", "Client"]

LOOP_TIMEOUT_S = 0.25  # paho network loop wake-up (keepalive checks); paho's default is 1 s

# paho's private names this module relies on: overridden methods, then attributes read.
PRIVATE_NAMES = (
    "_reconnect_wait",
    "_thread_main",
    "_handle_pubackcomp",
    "_handle_pubrec",
    "_do_on_publish",
    "_state",
    "_thread",
    "_thread_terminate",
    "_protocol",
    "_in_packet",
    "_out_messages",
    "_out_message_mutex",
)


# What paho raises for a reason code its table does not list for the packet: KeyError from
# ReasonCode.unpack in 2.0 and 2.1, MalformedPacket in 2.2.
_UNKNOWN_CODE = (MalformedPacket, KeyError, ValueError)


class Delays(Protocol):
    """Where the reconnect delays come from (``edged.publish.connect.Backoff``)."""

    def next_delay(self) -> float: ...


class _AnyReasonCode(ReasonCode):
    """A reason code paho's table does not allow for this packet type (see point 1)."""

    def __getName__(self, packetType: int, identifier: int) -> str:
        try:
            return super().__getName__(packetType, identifier)
        except (KeyError, ValueError):
            names = self.names.get(identifier) or {}
            return next(iter(names), f"reason code 0x{identifier:02x}")


class Client(mqtt.Client):
    """paho client that remembers why the last connection attempt failed, waits between
    reconnects as ``backoff`` says, and takes refusals in PUBACK/PUBREC as results."""

    last_connect_error: OSError | None = None
    backoff: Delays | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as err:
            self.last_connect_error = err
            raise

    def drop_out_messages(self) -> list[mqtt.MQTTMessage]:
        """Drop (and return) the unacknowledged QoS >= 1 messages, so that paho does not resend
        them on the next connect: paho 2.2's public method, which 2.0 and 2.1 lack."""
        with self._out_message_mutex:
            dropped = list(self._out_messages.values())
            self._out_messages.clear()
        return dropped

    # ---------------------------------------------------------------- 2. the reconnect wait

    def _reconnect_wait(self) -> None:
        backoff = self.backoff
        if backoff is None:
            super()._reconnect_wait()
            return
        target = time.monotonic() + backoff.next_delay()
        states = mqtt._ConnectionState  # type: ignore[attr-defined]  # paho-private, in PRIVATE_NAMES
        stopping = (states.MQTT_CS_DISCONNECTING, states.MQTT_CS_DISCONNECTED)
        while self._state not in stopping and not self._thread_terminate:
            left = target - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, LOOP_TIMEOUT_S))

    # ---------------------------------------------------------------- 3. the loop's wake-up

    def _thread_main(self) -> None:
        try:
            self.loop_forever(timeout=LOOP_TIMEOUT_S, retry_first_connection=True)
        finally:
            self._thread = None

    # ---------------------------------------------------------------- 1. refusals in acks

    def _ack_result(self, ptype: int) -> tuple[int, ReasonCode, Properties] | None:
        """A PUBACK/PUBREC/PUBCOMP whose MQTT 5 reason code is a refusal: (mid, reason,
        properties), decoded whatever the code; None otherwise."""
        packet = bytes(self._in_packet["packet"])
        if self._protocol != mqtt.MQTTv5 or len(packet) < 3 or packet[2] < 0x80:
            return None
        (mid,) = struct.unpack("!H", packet[:2])
        props = Properties(ptype)  # type: ignore[no-untyped-call]  # paho: unannotated
        if len(packet) > 3:
            with contextlib.suppress(Exception):
                props.unpack(packet[3:])  # type: ignore[no-untyped-call]  # paho: unannotated
        return mid, _AnyReasonCode(ptype, identifier=packet[2]), props

    def _report(self, result: tuple[int, ReasonCode, Properties]) -> MQTTErrorCode:
        mid, reason, props = result
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, props)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        try:
            return super()._handle_pubackcomp(cmd)
        except _UNKNOWN_CODE:
            ptype = PacketTypes.PUBACK if cmd == "PUBACK" else PacketTypes.PUBCOMP
            result = self._ack_result(ptype)
            if result is None:
                raise
            return self._report(result)

    def _handle_pubrec(self) -> MQTTErrorCode:
        result = self._ack_result(PacketTypes.PUBREC)
        if result is None:
            return super()._handle_pubrec()
        return self._report(result)
