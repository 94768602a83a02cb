"""The fast tier's stand-in (tests/memory.py) behaves as the facade and a broker do, for what the
logic tests rely on: subscriptions with wildcards, retained messages, availability, refusals."""

from __future__ import annotations

import pytest

from edged.config import MqttConfig
from edged.publish.outbox import MemoryOutbox
from tests.memory import MemoryBroker, MemoryPublisher


def _client(broker: MemoryBroker, got: list[tuple[str, bytes]], device: str) -> MemoryPublisher:
    return MemoryPublisher(
        MqttConfig(), device, broker=broker, on_message=lambda t, p: got.append((t, p))
    )


def test_subscriptions_match_like_mqtt_and_stop_with_unsubscribe_or_stop() -> None:
    broker, got = MemoryBroker(), list[tuple[str, bytes]]()
    pub = _client(broker, got, "cam-1")
    pub.subscribe("edged/+/set")
    pub.subscribe("homeassistant/#")
    broker.publish("edged/cam-1/set", b"x")  # before start: not connected, nothing delivered
    pub.start()
    assert pub.connected and pub.wait_connected(0.0)
    for topic in ("edged/cam-1/set", "edged/cam-1/set/result", "homeassistant/status", "other"):
        broker.publish(topic, topic)
    assert got == [
        ("edged/cam-1/set", b"edged/cam-1/set"),
        ("homeassistant/status", b"homeassistant/status"),
    ]
    pub.unsubscribe("homeassistant/#")
    broker.publish("homeassistant/status", "online")
    pub.stop()
    broker.publish("edged/cam-1/set", "late")
    assert len(got) == 2 and not pub.connected


class _Outbox(MemoryOutbox):
    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_retained_messages_availability_and_counters() -> None:
    broker, outbox = MemoryBroker(), _Outbox(10)
    pub = MemoryPublisher(MqttConfig(topic_prefix="p"), "cam-1", broker=broker, outbox=outbox)
    pub.start()
    assert broker.retained["p/cam-1/availability"].payload == b"online"
    pub.publish("p/cam-1/state", "3", qos=1, retain=True)
    pub.publish("p/cam-1/prediction", b"{}", qos=0)
    pub.publish("p/cam-1/state", b"", retain=True)  # an empty retained payload clears it
    assert "p/cam-1/state" not in broker.retained
    assert pub.stats["published"] == 4 and pub.stats["queued"] == 0
    assert [m.qos for m in broker.on("p/cam-1/prediction")] == [0]
    pub.stop(availability="stopped")
    assert broker.retained["p/cam-1/availability"].payload == b"stopped"
    assert outbox.closed == 1  # closed with the publisher, as the real one does


@pytest.mark.parametrize("topic", ["", "a/+/b", "a/#", "a\x00b"])
def test_invalid_topics_and_qos_are_refused(topic: str) -> None:
    pub = MemoryPublisher(MqttConfig(), "cam-1")
    pub.start()
    with pytest.raises(ValueError):
        pub.publish(topic, b"x")
    with pytest.raises(ValueError):
        pub.publish("a/b", b"x", qos=3)
    with pytest.raises(RuntimeError):
        pub.start()


def test_wait_for_sees_messages_from_other_threads() -> None:
    import threading

    broker = MemoryBroker()
    threading.Timer(0.05, broker.publish, args=("a/b", b"late")).start()
    assert broker.wait_for(lambda m: m.topic == "a/b", 5).payload == b"late"
    with pytest.raises(AssertionError, match="no such message"):
        broker.wait_for(lambda m: m.topic == "never", 0.05)
