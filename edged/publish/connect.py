"""Connecting to the broker: paho client construction, the reconnect backoff, error
descriptions, ``edged check`` (``check_broker``).

The paho ``Client`` subclass (the one place that touches paho's internals) is in
``edged.publish.paho_client``."""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import MqttConfig
from edged.errors import BrokerError
from edged.publish.paho_client import LOOP_TIMEOUT_S, Client

__all__ = [
    "LOOP_TIMEOUT_S",
    "STABLE_S",
    "Backoff",
    "check_broker",
    "connect_kwargs",
    "describe_error",
    "make_client",
    "shutdown_socket",
]

STABLE_S = 10.0  # a connection that lasted less does not reset the reconnect backoff


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
