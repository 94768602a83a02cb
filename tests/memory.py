"""The fast tier's broker and publisher: MQTT in memory, no process, no socket.

:class:`MemoryPublisher` has the daemon's publisher facade (``edged.publish``'s ``Publisher``:
``start``, ``stop``, ``publish``, ``subscribe``, ``unsubscribe``, ``wait_connected``,
``connected``, ``stats``, ``topics``, and ``on_message`` for what arrives); every instance
shares a :class:`MemoryBroker`, which keeps retained messages, matches subscriptions with
paho's own ``topic_matches_sub`` and delivers synchronously on the publishing thread. Logic that
needs only "what was published, and what arrives" runs against it in milliseconds;
:func:`in_memory_daemon` runs the real :class:`~edged.app.daemon.Daemon` in-process on one.
Delivery, reconnects, QoS and the spool stay with the real-broker tier (``-m broker``).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import topic_matches_sub

from edged.app.daemon import Daemon
from edged.app.parts import Features, OnMessage, Parts
from edged.config import Config, FilesSource, ModelConfig, MqttConfig, PublishConfig
from edged.infra.sdnotify import Notifier
from edged.model.classifier import Classifier
from edged.publish.outbox import Outbox
from edged.publish.topics import Topics
from tests.daemon import DEMO_MODEL, SAMPLES


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    sender: str  # client id ("operator" for what a test sends)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        """The payload decoded strictly: UTF-8, JSON without NaN or Infinity."""

        def refuse(name: str) -> Any:
            raise ValueError(f"{name} in a payload")

        return json.loads(self.payload.decode("utf-8"), parse_constant=refuse)


class MemoryBroker:
    """Retained messages, subscriptions and a log of everything published."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self.messages: list[Message] = []
        self.retained: dict[str, Message] = {}
        self._clients: list[MemoryPublisher] = []

    def attach(self, client: MemoryPublisher) -> None:
        with self._cond:
            self._clients.append(client)

    def detach(self, client: MemoryPublisher) -> None:
        with self._cond:
            if client in self._clients:
                self._clients.remove(client)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        sender: str = "operator",
    ) -> None:
        """Route a message to every subscribed client (the sender's own included, as MQTT)."""
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            raise ValueError(f"invalid topic to publish: {topic!r}")
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        msg = Message(topic, data, qos, retain, sender)
        with self._cond:
            self.messages.append(msg)
            if retain and data:
                self.retained[topic] = msg
            elif retain:
                self.retained.pop(topic, None)
            targets = [c for c in self._clients if c.subscribed_to(topic)]
            self._cond.notify_all()
        for client in targets:
            client.deliver(topic, data)

    def on(self, topic: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, pred: Callable[[Message], bool], timeout: float = 10.0) -> Message:
        """The first message (from the start of the log) that ``pred`` accepts."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for m in self.messages[seen:]:
                    if pred(m):
                        return m
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such message within {timeout} s")
                self._cond.wait(left)

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()


class MemoryPublisher:
    """The publisher facade over a :class:`MemoryBroker`; the constructor takes the real
    ``Publisher``'s arguments (the outbox, when given, is closed on ``stop`` as the real one
    does, and otherwise unused: nothing here is ever queued)."""

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        *,
        queue_max: int = 10000,
        queue_max_bytes: int | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        outbox: Outbox | None = None,
        broker: MemoryBroker | None = None,
    ) -> None:
        self.topics = Topics(cfg.topic_prefix, device_id)
        self.device_id = device_id
        self.broker = broker if broker is not None else MemoryBroker()
        self._on_message = on_message
        self._outbox = outbox
        self._subs: dict[str, int] = {}
        self._connected = False
        self._started = False
        self._counts = {
            "published": 0, "failures": 0, "dropped_by_broker": 0, "takeovers": 0,
            "reconnects": 0, "connect_failures": 0,
        }  # fmt: skip

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def stats(self) -> dict[str, int]:
        return {**self._counts, "dropped": 0, "queued": 0, "inflight": 0}

    def start(self) -> None:
        if self._started:
            raise RuntimeError("Publisher already started")
        self._started = self._connected = True
        self.broker.attach(self)
        self.publish(self.topics.availability, "online", qos=1, retain=True)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos}")
        self.broker.publish(topic, payload, qos=qos, retain=retain, sender=self.device_id)
        self._counts["published"] += 1

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subs[topic] = qos

    def unsubscribe(self, topic: str) -> None:
        self._subs.pop(topic, None)

    def stop(self, timeout: float = 1.5, availability: str | None = "stopped") -> None:
        if self._connected and availability is not None:
            self.publish(self.topics.availability, availability, qos=1, retain=True)
        self._connected = False
        self.broker.detach(self)
        if self._outbox is not None:
            self._outbox.close()

    # -- the broker's side ---------------------------------------------------------------------

    def subscribed_to(self, topic: str) -> bool:
        return self._connected and any(topic_matches_sub(s, topic) for s in list(self._subs))

    def deliver(self, topic: str, payload: bytes) -> None:
        if self._on_message is not None:
            self._on_message(topic, payload)


def memory_parts(broker: MemoryBroker, classifier: Classifier | None = None) -> Parts:
    """The production parts (or ``classifier`` already loaded), the publisher a
    :class:`MemoryPublisher` on ``broker``: the daemon's one publisher seam
    (``Parts.make_publisher``)."""
    parts = Parts.with_classifier(classifier) if classifier is not None else Parts()

    def publisher(cfg: Config, outbox: Outbox, on_message: OnMessage) -> MemoryPublisher:
        return MemoryPublisher(
            cfg.mqtt, cfg.device_id, broker=broker, outbox=outbox, on_message=on_message
        )

    return dataclasses.replace(parts, make_publisher=publisher)


@contextmanager
def in_memory_daemon(
    cfg: Config, monkeypatch: pytest.MonkeyPatch, broker: MemoryBroker | None = None
) -> Iterator[tuple[Daemon, MemoryBroker]]:
    """The real daemon in this process, its publisher a :class:`MemoryPublisher` on ``broker``;
    running in a thread until the block ends (then stopped and joined)."""
    broker = broker if broker is not None else MemoryBroker()
    d = Daemon(cfg, parts=memory_parts(broker), features=Features.from_config(cfg))
    result: list[BaseException] = []

    def run() -> None:
        try:
            d.run()
        except BaseException as err:  # re-raised in the test's thread
            result.append(err)

    thread = threading.Thread(target=run, name="in-memory-daemon", daemon=True)
    thread.start()
    try:
        yield d, broker
    finally:
        d.request_stop()
        thread.join(30)
        assert not thread.is_alive(), "the daemon did not stop within 30 s"
        if result:
            raise result[0]


def files_daemon(tmp_path: Path, clf: Classifier, **source: Any) -> tuple[Daemon, MemoryBroker]:
    """A daemon (not started) on the sample images with ``clf``, every prediction published,
    MQTT in memory; ``source``: more files-source settings (fps, loop)."""
    broker = MemoryBroker()
    cfg = Config(
        device_id="cam-1",
        state_dir=tmp_path / "state",
        source=FilesSource(path=str(SAMPLES), **source),
        model=ModelConfig(path=DEMO_MODEL),
        publish=PublishConfig(mode="every", spool=False),
    )
    return Daemon(cfg, parts=memory_parts(broker, clf), notifier=Notifier({})), broker


def predictions(broker: MemoryBroker) -> list[dict[str, Any]]:
    """cam-1's prediction events so far, decoded."""
    return [json.loads(m.payload) for m in broker.on("edged/cam-1/prediction")]


def assert_in_capture_order(events: list[dict[str, Any]]) -> None:
    """seq rises by one from 1, and the frames are the sample files in order (looping)."""
    names = sorted(p.name for p in SAMPLES.iterdir())
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    frames = [str(e["frame"]) for e in events]
    start = names.index(frames[0])
    assert frames == [names[(start + i) % len(names)] for i in range(len(frames))]
