"""Connecting to the broker: paho client construction, error descriptions, ``edged check``."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import MqttConfig
from edged.errors import BrokerError

WARN_INTERVAL_S = 60.0  # identical warnings are repeated at most this often
LOOP_TIMEOUT_S = 0.25  # paho network loop wake-up (keepalive checks); paho's default is 1 s


class RateLimitedLog:
    """Repeated identical warnings are logged at most once per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = WARN_INTERVAL_S) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def warning(self, msg: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(msg)
            if last is not None and now - last < self._interval:
                return
            self._last[msg] = now
        self._logger.warning("%s", msg)

    def reset(self) -> None:
        with self._lock:
            self._last.clear()


class Client(mqtt.Client):
    """paho client that remembers why the last connection attempt failed."""

    last_connect_error: OSError | None = None

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
