"""``edged.publish.paho_client``, the one module that touches paho-mqtt's internals, against the
installed paho. ``scripts/paho-compat.sh`` runs this module under every supported paho minor
version (each in a throwaway venv); a raw-socket broker here sends exactly the packets paho
mishandles on its own, so no mosquitto is needed."""

from __future__ import annotations

import inspect
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edged.publish.paho_client import LOOP_TIMEOUT_S, PRIVATE_NAMES, Client

CONNACK_V5 = bytes([0x20, 0x03, 0x00, 0x00, 0x00])
PUBLISH, PUBREL, DISCONNECT = 0x30, 0x60, 0xE0


def _read_packet(conn: socket.socket) -> tuple[int, bytes] | None:
    """(first byte, body) of the next MQTT packet; None at end of stream."""
    head = conn.recv(1)
    if not head:
        return None
    length, shift = 0, 0
    while True:
        b = conn.recv(1)
        if not b:
            return None
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return head[0], body


class RawBroker:
    """Accepts connections one after another; answers CONNECT with CONNACK and each QoS > 0
    PUBLISH with ``ack`` (packet type byte, reason code); records what the client sent."""

    def __init__(self, ack: tuple[int, int] = (0x40, 0x00), close_after_connack: bool = False):
        self.ack = ack
        self.close_after_connack = close_after_connack
        self.received: list[int] = []  # first bytes of the packets after CONNECT
        self.connects = 0
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.2)
        self.port = self._srv.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.2)
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        connected = False
        while not self._stop.is_set():
            try:
                packet = _read_packet(conn)
            except TimeoutError:
                continue
            except OSError:
                return
            if packet is None:
                return
            first, body = packet
            if not connected:
                connected = True
                self.connects += 1
                conn.sendall(CONNACK_V5)
                if self.close_after_connack:
                    return
                continue
            self.received.append(first)
            if first & 0xF0 == PUBLISH and first & 0x06:
                (topic_len,) = struct.unpack("!H", body[:2])
                mid = body[2 + topic_len : 4 + topic_len]
                kind, reason = self.ack
                conn.sendall(bytes([kind, 0x03]) + mid + bytes([reason]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._srv.close()


@pytest.fixture
def make_broker() -> Iterator[Any]:
    made: list[RawBroker] = []

    def make(**kwargs: Any) -> RawBroker:
        made.append(RawBroker(**kwargs))
        return made[-1]

    yield make
    for b in made:
        b.close()


def _client() -> Client:
    return Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=MQTTProtocolVersion.MQTTv5)


def _wait(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def test_the_private_names_exist_with_the_signatures_used() -> None:
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    for name in PRIVATE_NAMES:
        assert hasattr(plain, name), f"paho-mqtt {mqtt.__name__} has no {name}"
    params = {
        "_reconnect_wait": 0,
        "_thread_main": 0,
        "_handle_pubackcomp": 1,
        "_handle_pubrec": 0,
        "_do_on_publish": 3,
    }
    for name, count in params.items():
        sig = inspect.signature(getattr(mqtt.Client, name))
        assert len(sig.parameters) - 1 == count, (name, sig)
    assert isinstance(plain._in_packet, dict)
    assert {"MQTT_CS_DISCONNECTING", "MQTT_CS_DISCONNECTED"} <= set(
        mqtt._ConnectionState.__members__  # type: ignore[attr-defined]  # the private name checked
    )


@pytest.mark.parametrize("qos, kind", [(1, 0x40), (2, 0x50)])
def test_a_refusal_paho_does_not_know_is_a_result_not_a_dropped_connection(
    make_broker: Any, qos: int, kind: int
) -> None:
    """PUBACK/PUBREC 0x95 ("Packet too large", which MQTT 5 lists only for DISCONNECT): paho
    alone raises MalformedPacket and drops the connection; here on_publish reports it, the
    connection stays up and a refused QoS 2 flow ends (no PUBREL)."""
    broker = make_broker(ack=(kind, 0x95))
    client = _client()
    acks: list[tuple[int, ReasonCode]] = []
    drops: list[Any] = []
    client.on_publish = lambda c, u, mid, rc, props: acks.append((mid, rc))
    client.on_disconnect = lambda *args: drops.append(args)
    client.connect("127.0.0.1", broker.port, clean_start=True)
    client.loop_start()
    try:
        assert _wait(client.is_connected)
        info = client.publish("t/x", b"payload", qos=qos)
        assert _wait(lambda: bool(acks))
        mid, reason = acks[0]
        assert mid == info.mid
        assert reason.is_failure and reason.value == 0x95
        assert "0x95" in str(reason) or "too large" in str(reason).lower()
        time.sleep(4 * LOOP_TIMEOUT_S)
        assert client.is_connected() and not drops
        assert PUBREL not in broker.received  # the QoS 2 flow ended with the refusal
        info2 = client.publish("t/y", b"again", qos=qos)  # the connection still works
        assert _wait(lambda: len(acks) == 2) and acks[1][0] == info2.mid
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_success_ack_is_still_paho_s(make_broker: Any) -> None:
    broker = make_broker(ack=(0x40, 0x00))
    client = _client()
    acks: list[ReasonCode] = []
    client.on_publish = lambda c, u, mid, rc, props: acks.append(rc)
    client.connect("127.0.0.1", broker.port, clean_start=True)
    client.loop_start()
    try:
        info = client.publish("t/x", b"ok", qos=1)
        assert _wait(lambda: bool(acks))
        assert not acks[0].is_failure and info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


class _Delays:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    def next_delay(self) -> float:
        self.calls += 1
        return self.delay


def test_reconnects_wait_as_the_backoff_says_and_the_loop_wakes_often(make_broker: Any) -> None:
    broker = make_broker(close_after_connack=True)
    client = _client()
    client.backoff = delays = _Delays(0.05)
    timeouts: list[float] = []
    real_loop_forever = client.loop_forever

    def loop_forever(timeout: float = 1.0, retry_first_connection: bool = False) -> Any:
        timeouts.append(timeout)
        return real_loop_forever(timeout=timeout, retry_first_connection=retry_first_connection)

    client.loop_forever = loop_forever  # type: ignore[method-assign]
    client.connect_async("127.0.0.1", broker.port, clean_start=True)
    client.loop_start()
    try:
        assert _wait(lambda: broker.connects >= 4, 5.0), broker.connects
        assert delays.calls >= 3
        assert timeouts == [LOOP_TIMEOUT_S]
    finally:
        client.disconnect()
        client.loop_stop()


def test_drop_out_messages_empties_paho_s_resend_queue(make_broker: Any) -> None:
    broker = make_broker(ack=(0x40, 0x00))
    client = _client()
    client.max_queued_messages_set(0)
    client.connect_async("127.0.0.1", broker.port, clean_start=True)
    client.publish("t/x", b"a", qos=1)  # not connected yet: held in paho's resend queue
    client.publish("t/y", b"b", qos=2)
    dropped = client.drop_out_messages()
    assert [m.topic for m in dropped] == ["t/x", "t/y"]
    assert client.drop_out_messages() == []
    client.loop_start()
    try:
        assert _wait(client.is_connected)
        time.sleep(4 * LOOP_TIMEOUT_S)
        assert not any(b & 0xF0 == PUBLISH for b in broker.received)  # nothing resent
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_stop_during_a_long_reconnect_wait_ends_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    client = _client()
    client.backoff = _Delays(60.0)
    failures: list[OSError | None] = []
    client.on_connect_fail = lambda c, u: failures.append(client.last_connect_error)
    client.connect_async("127.0.0.1", port, clean_start=True)
    client.loop_start()
    assert _wait(lambda: bool(failures))
    assert isinstance(failures[0], ConnectionRefusedError)
    start = time.monotonic()
    client.disconnect()
    client.loop_stop()
    assert time.monotonic() - start < 4 * LOOP_TIMEOUT_S + 0.5
