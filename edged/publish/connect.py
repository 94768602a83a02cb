"""Connecting to the broker: paho client construction, error descriptions, ``edged check``."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import MqttConfig
from edged.errors import BrokerError

WARN_INTERVAL_S = 60.0  # identical warnings are repeated at most this often
LOOP_TIMEOUT_S = 0.25  # paho network loop wake-up (keepalive checks); paho's default is 1 s
STABLE_S = 10.0  # a connection that lasted less does not reset the reconnect backoff


class RateLimitedLog:
    """Repeated identical warnings are logged at most once per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = WARN_INTERVAL_S) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def warning(self, msg: str, key: str | None = None) -> None:
        """Log ``msg`` unless the same ``key`` (default: the message) was logged within the
        interval."""
        now = time.monotonic()
        key = msg if key is None else key
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                return
            self._last[key] = now
        self._logger.warning("%s", msg)

    def reset(self) -> None:
        with self._lock:
            self._last.clear()


class Backoff:
    """Reconnect delays: ``min_s``, doubling up to ``max_s``, each drawn uniformly from the upper
    half of that value (jitter, so that a fleet that lost its broker at once does not come back
    at once). Only a connection that lasted ``stable_s`` resets it: a broker (or another client
    with our client id) that accepts the connection and drops it at once meets growing delays,
    not a reconnect storm. Thread-safe."""

    def __init__(
        self,
        min_s: float,
        max_s: float,
        stable_s: float = STABLE_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        self.stable_s = stable_s
        self._rand = rand
        self._lock = threading.Lock()
        self.attempt = 0  # delays drawn since the last reset
        self._since: float | None = None  # when the current connection was accepted
        self.last_delay = 0.0

    def base(self, attempt: int) -> float:
        """The delay before jitter for the ``attempt``-th reconnect (0-based)."""
        return min(self.max_s, self.min_s * 2.0 ** min(attempt, 62))

    def next_delay(self) -> float:
        with self._lock:
            base = self.base(self.attempt)
            self.attempt += 1
            self.last_delay = base * (0.5 + 0.5 * self._rand())
            return self.last_delay

    def connected(self, now: float | None = None) -> None:
        with self._lock:
            self._since = time.monotonic() if now is None else now

    def lost(self, now: float | None = None) -> float | None:
        """The connection ended; returns how long it lasted (None: it was not up)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            since, self._since = self._since, None
            if since is None:
                return None
            lasted = now - since
            if lasted >= self.stable_s:
                self.attempt = 0
            return lasted


class _AnyReasonCode(ReasonCode):
    """A reason code paho's table does not allow for this packet type (mosquitto answers an
    oversized QoS 1 PUBLISH with PUBACK 0x95 "Packet too large", which MQTT 5 only lists for
    DISCONNECT); paho 2.x treats such a PUBACK as a malformed packet and drops the connection,
    which made a reconnect storm of one refused message."""

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
    backoff: Backoff | None = None

    def _reconnect_wait(self) -> None:
        backoff = self.backoff
        if backoff is None:
            super()._reconnect_wait()
            return
        target = time.monotonic() + backoff.next_delay()
        states = mqtt._ConnectionState  # type: ignore[attr-defined]  # paho-private, see above
        stopping = (states.MQTT_CS_DISCONNECTING, states.MQTT_CS_DISCONNECTED)
        while self._state not in stopping and not self._thread_terminate:
            left = target - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, LOOP_TIMEOUT_S))

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
        except MalformedPacket:
            ptype = PacketTypes.PUBACK if cmd == "PUBACK" else PacketTypes.PUBCOMP
            result = self._ack_result(ptype)
            if result is None:
                raise
            return self._report(result)

    def _handle_pubrec(self) -> MQTTErrorCode:
        # A refusal in PUBREC ends the QoS 2 flow (MQTT 5, 4.3.3): no PUBREL; paho 2.x would
        # send one (or drop the connection, for a code it does not know for PUBREC).
        result = self._ack_result(PacketTypes.PUBREC)
        if result is None:
            return super()._handle_pubrec()
        return self._report(result)

    def _thread_main(self) -> None:
        # loop_start()'s thread, with a shorter select() timeout than paho's 1 s: paho checks the
        # keepalive only when its loop wakes, and nothing wakes it once a half-open connection
        # has filled the in-flight window, so a dead broker was noticed up to 2 s after 2 x
        # keepalive (one late PINGREQ, one late close); now within 2 x LOOP_TIMEOUT_S.
        try:
            self.loop_forever(timeout=LOOP_TIMEOUT_S, retry_first_connection=True)
        finally:
            self._thread = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as err:
            self.last_connect_error = err
            raise


def describe_error(err: BaseException) -> str:
    """One line saying why a connection attempt failed."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {err.verify_message or err}"
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake failed: {err.reason or err}"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is the broker running?)"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the host name ({err.strerror})"
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[:1].lower() + err.strerror[1:]
    return str(err) or type(err).__name__


def _protocol(cfg: MqttConfig) -> MQTTProtocolVersion:
    return MQTTProtocolVersion.MQTTv311 if cfg.protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5


def make_client(cfg: MqttConfig, client_id: str) -> Client:
    """A paho client with protocol, credentials and TLS set up; raises BrokerError."""
    v5 = cfg.protocol == "5"
    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=_protocol(cfg),
        clean_session=None if v5 else True,
    )
    if cfg.username is not None:
        try:
            password = cfg.read_password()
        except OSError as err:
            raise BrokerError(f"cannot read mqtt.password_file: {describe_error(err)}") from None
        client.username_pw_set(cfg.username, password)
    if cfg.tls is not None:
        tls = cfg.tls
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
        except (OSError, ValueError) as err:
            raise BrokerError(f"TLS setup failed: {describe_error(err)}") from None
        if tls.insecure:
            client.tls_insecure_set(True)
    return client


def connect_kwargs(cfg: MqttConfig) -> dict[str, Any]:
    # clean_start only exists in MQTT 5; 3.1.1 uses clean_session (set on the client).
    return {"clean_start": True} if cfg.protocol == "5" else {}


def shutdown_socket(client: mqtt.Client) -> None:
    """Abruptly end the TCP connection (no DISCONNECT packet: the broker publishes the will)."""
    shutdown = getattr(client.socket(), "shutdown", None)
    if callable(shutdown):
        with contextlib.suppress(OSError):
            shutdown(socket.SHUT_RDWR)


def check_broker(cfg: MqttConfig, device_id: str, timeout: float) -> str:
    """Connect, wait for CONNACK and disconnect; raise BrokerError with a one-line reason.

    Uses the client id ``<device_id>-check`` so that a running daemon is not kicked off.
    """
    where = f"{cfg.host}:{cfg.port}"
    client = make_client(cfg, f"{device_id}-check")
    client.connect_timeout = timeout
    result: list[ReasonCode] = []

    def on_connect(
        c: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        result.append(reason_code)

    client.on_connect = on_connect
    deadline = time.monotonic() + timeout
    try:
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s, **connect_kwargs(cfg))
    except TimeoutError:
        raise BrokerError(f"{where}: timed out after {timeout:g} s connecting") from None
    except (OSError, ValueError) as err:
        raise BrokerError(f"{where}: {describe_error(err)}") from None
    try:
        while not result:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerError(f"{where}: timed out after {timeout:g} s waiting for CONNACK")
            rc = client.loop(timeout=min(0.1, left))
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not result:
                raise BrokerError(
                    f"{where}: connection closed before CONNACK ({mqtt.error_string(rc)})"
                )
        if result[0].is_failure:
            raise BrokerError(f"{where}: broker refused the connection: {result[0]}")
        client.disconnect()
    finally:
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
    return f"connected to {where} (MQTT {cfg.protocol})"
