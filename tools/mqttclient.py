"""A small synchronous MQTT client for the host tools (``push``, ``status``): connect, subscribe,
wait for retained messages, publish at QoS 1 and wait for every acknowledgement; errors are one
line for the user (:class:`PushError`, with the exit status).
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edged.infra.guard import json_depth

USAGE_ERROR, FAILED, OK = 2, 1, 0


class PushError(Exception):
    """One line for the user; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Received:
    topic: str
    payload: bytes


class Broker:
    """A small synchronous wrapper around a paho client (VERSION2 callbacks)."""

    def __init__(self, args: argparse.Namespace) -> None:
        v5 = args.protocol == "5"
        self.client_id = f"edged-push-{secrets.token_hex(4)}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        if args.username is not None:
            password = None
            if args.password_file is not None:
                password = read_text(args.password_file).rstrip("\r\n")
            self.client.username_pw_set(args.username, password)
        if args.ca_file is not None:
            self.client.tls_set(ca_certs=str(args.ca_file))
        self.where = f"{args.host}:{args.port}"
        self.max_packet: int | None = None
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._subacks: set[int] = set()
        self._connected: bool | None = None
        self._refused = ""
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        try:
            self.client.connect(args.host, args.port, keepalive=30)
        except OSError as err:
            raise PushError(f"cannot connect to {self.where}: {err.strerror or err}") from None
        self.client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._connected is not None, timeout=15)
            if not self._connected:
                self.close()
                raise PushError(f"broker {self.where} refused the connection: {self._refused}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._connected = not rc.is_failure
            self._refused = str(rc)
            size = getattr(props, "MaximumPacketSize", None)
            self.max_packet = size if isinstance(size, int) else None
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._connected = False
            self._refused = str(rc)
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._messages.append(Received(msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def subscribe(self, topics: list[str], timeout: float = 10.0, qos: int = 1) -> None:
        _rc, mid = self.client.subscribe([(t, qos) for t in topics])
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, timeout):
                raise PushError(f"broker {self.where} did not confirm the subscriptions")

    def settle(self, topic: str, timeout: float = 3.0, qos: int = 1) -> None:
        """Wait until the retained messages of earlier subscriptions have arrived: they come
        before our own probe message on the same connection (skipped after ``timeout``)."""
        token = secrets.token_hex(8).encode()
        self.subscribe([topic], qos=qos)
        self.client.publish(topic, token, qos=0)
        self.wait(
            lambda: any(m.topic == topic and m.payload == token for m in self._messages), timeout
        )

    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def wait(self, done: Callable[[], bool], timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(done, timeout)

    def publish_all(self, items: list[tuple[str, bytes, bool]], timeout: float) -> None:
        """Publish at QoS 1 and wait for every acknowledgement."""
        infos = [self.client.publish(t, p, qos=1, retain=r) for t, p, r in items]
        deadline = time.monotonic() + timeout
        for info in infos:
            while not info.is_published():
                if not self._connected:
                    raise PushError(
                        f"broker {self.where} dropped the connection while publishing "
                        f"({self._refused}); is a chunk over its max_packet_size? "
                        "(try a smaller --chunk-size)"
                    )
                if time.monotonic() > deadline:
                    raise PushError(f"broker {self.where} did not acknowledge the messages")
                time.sleep(0.01)

    @property
    def connected(self) -> bool:
        with self._cond:
            return bool(self._connected)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise PushError(f"{path}: cannot read ({err.strerror or err})", USAGE_ERROR) from None


MAX_ANSWER_BYTES = 1 << 20  # a device's result, model or request is far smaller
MAX_ANSWER_DEPTH = 16


def json_object(payload: bytes) -> dict[str, Any] | None:
    """A JSON object from the broker (anyone may have published it), or None: never raises."""
    if len(payload) > MAX_ANSWER_BYTES or json_depth(payload) > MAX_ANSWER_DEPTH:
        return None
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
