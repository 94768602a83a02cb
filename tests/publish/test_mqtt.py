"""Publisher and check_broker against real Mosquitto brokers (tests/broker.py)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.config import MqttConfig, TlsConfig
from edged.errors import BrokerError
from edged.publish import window as window_mod
from edged.publish.mqtt import Publisher, check_broker
from tests.broker import Mosquitto, Received, Subscriber, TlsListener, make_pki

KEEPALIVE = 5
REFUSED = re.compile(r"not authori[sz]ed|bad user name or password", re.IGNORECASE)

MakeBroker = Callable[..., Mosquitto]
MakeSub = Callable[..., Subscriber]


def config(broker: Mosquitto, **overrides: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": KEEPALIVE,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "connect_timeout_s": 3.0,
    }
    values.update(overrides)
    return MqttConfig(**values)


@pytest.fixture
def make_publisher() -> Iterator[Callable[..., Publisher]]:
    made: list[Publisher] = []

    def make(cfg: MqttConfig, device_id: str = "dev1", start: bool = True, **kw: Any) -> Publisher:
        pub = Publisher(cfg, device_id, **kw)
        made.append(pub)
        if start:
            pub.start()
        return pub

    yield make
    for pub in made:
        pub.stop(timeout=0.5)


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def on(topic: str, text: str | None = None) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic and (text is None or m.text == text)


def numbers(sub: Subscriber, topic: str) -> list[int]:
    return [int(m.text) for m in sub.messages if m.topic == topic]


def first_occurrences(seq: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for x in seq:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


# -- availability ----------------------------------------------------------------------------


def test_online_is_retained_for_late_subscribers(
    broker: Mosquitto, make_publisher: Callable[..., Publisher], subscriber_factory: MakeSub
) -> None:
    pub = make_publisher(config(broker))
    assert pub.wait_connected(5)
    assert pub.connected
    assert pub.topics.availability == "edged/dev1/availability"
    late = subscriber_factory(broker, pub.topics.availability)
    msg = late.wait_for(on(pub.topics.availability, "online"))
    assert msg.retain and msg.qos == 1


def test_stop_publishes_stopped_and_flushes(
    broker: Mosquitto, make_publisher: Callable[..., Publisher], subscriber_factory: MakeSub
) -> None:
    pub = make_publisher(config(broker))
    sub = subscriber_factory(broker, "edged/dev1/#")
    assert pub.wait_connected(5)
    for i in range(200):
        pub.publish(pub.topics.prediction, str(i))
    t0 = time.monotonic()
    pub.stop(timeout=3.0)
    assert time.monotonic() - t0 < 3.5
    assert not pub.connected
    sub.wait_for(on(pub.topics.availability, "stopped"))
    assert numbers(sub, pub.topics.prediction) == list(range(200))
    # "stopped" comes after everything that was flushed
    assert sub.messages[-1].text == "stopped"
    assert pub.stats["published"] == 200 and pub.stats["queued"] == 0
    late = subscriber_factory(broker, pub.topics.availability)
    assert late.wait_for(on(pub.topics.availability)).text == "stopped"
    pub.stop()  # idempotent


CHILD = """
import sys, time
from edged.config import MqttConfig
from edged.publish.mqtt import Publisher
cfg = MqttConfig(host=sys.argv[1], port=int(sys.argv[2]), keepalive_s=int(sys.argv[4]))
pub = Publisher(cfg, sys.argv[3])
pub.start()
pub.wait_connected(10)
time.sleep(120)
"""


@pytest.mark.fault
def test_will_offline_when_process_is_killed(
    broker: Mosquitto, subscriber_factory: MakeSub
) -> None:
    topic = "edged/child1/availability"
    sub = subscriber_factory(broker, topic)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, broker.host, str(broker.port), "child1", str(KEEPALIVE)]
    )
    try:
        sub.wait_for(on(topic, "online"), timeout=15)
        os.kill(child.pid, signal.SIGKILL)
        t0 = time.monotonic()
        sub.wait_for(on(topic, "offline"), timeout=KEEPALIVE * 1.5)
        assert time.monotonic() - t0 < KEEPALIVE * 1.5
    finally:
        child.kill()
        child.wait()
    late = subscriber_factory(broker, topic)
    msg = late.wait_for(on(topic))
    assert (msg.text, msg.retain) == ("offline", True)


# -- delivery ----------------------------------------------------------------------------------


def test_publish_order_and_qos(
    broker: Mosquitto, make_publisher: Callable[..., Publisher], subscriber_factory: MakeSub
) -> None:
    pub = make_publisher(config(broker))
    sub = subscriber_factory(broker, "edged/dev1/#", qos=2)
    assert pub.wait_connected(5)
    for i in range(300):
        pub.publish("edged/dev1/q1", str(i), qos=1)
        if i % 3 == 0:
            pub.publish("edged/dev1/q0", str(i), qos=0)
    pub.publish("edged/dev1/q2", b"exactly once", qos=2)
    pub.publish(pub.topics.state, "cat", retain=True)
    sub.wait_count(300, predicate=on("edged/dev1/q1"))
    sub.wait_for(on("edged/dev1/q2"))
    sub.wait_for(on(pub.topics.state))
    assert numbers(sub, "edged/dev1/q1") == list(range(300))
    assert {m.qos for m in sub.messages if m.topic == "edged/dev1/q1"} == {1}
    assert {m.qos for m in sub.messages if m.topic == "edged/dev1/q2"} == {2}
    q0 = numbers(sub, "edged/dev1/q0")
    assert q0 == sorted(q0) and len(q0) == 100  # QoS 0 on a healthy local link: all, in order
    assert {m.qos for m in sub.messages if m.topic == "edged/dev1/q0"} == {0}
    wait_until(lambda: pub.stats["queued"] == 0, 5, "outbox to drain")
    stats = pub.stats
    assert stats["published"] == 300 + 100 + 2
    assert stats["dropped"] == stats["failures"] == stats["reconnects"] == 0
    late = subscriber_factory(broker, pub.topics.state)
    assert late.wait_for(on(pub.topics.state)).retain


def test_connected_publish_hands_over_in_the_callers_thread(
    broker: Mosquitto, make_publisher: Callable[..., Publisher], subscriber_factory: MakeSub
) -> None:
    """While connected with room in the window, publish() gives the message to paho itself
    (no wait for the sender thread); publishers in several threads race for the hand-over,
    and every message still arrives, each thread's in its order."""
    pub = make_publisher(config(broker))
    sub = subscriber_factory(broker, "edged/dev1/t/#")
    assert pub.wait_connected(5)
    client = pub._session.client
    assert client is not None
    real, callers = client.publish, []

    def publish(*args: Any, **kwargs: Any) -> Any:
        callers.append(threading.current_thread().name)
        return real(*args, **kwargs)

    client.publish = publish  # type: ignore[method-assign]
    pub.publish("edged/dev1/t/main", "0")
    assert pub.stats["inflight"] + pub.stats["published"] == 1  # handed over on return
    assert callers == [threading.current_thread().name]

    def burst(name: str) -> None:
        for i in range(200):
            pub.publish(f"edged/dev1/t/{name}", str(i))

    threads = [threading.Thread(target=burst, args=(f"w{n}",), name=f"w{n}") for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sub.wait_count(601)
    for n in range(3):
        assert numbers(sub, f"edged/dev1/t/w{n}") == list(range(200))
    # A burst fills the window (mosquitto's Receive Maximum): the sender sends the rest as
    # acks come back.
    assert "edged-mqtt-send" in callers

    # A hand-over that raises does not raise in the caller; the sender delivers the message.
    fail = [True]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if fail and threading.current_thread().name == "main-thread-test":
            fail.clear()
            raise OSError("socket pair closed")
        return publish(*args, **kwargs)

    client.publish = flaky  # type: ignore[method-assign]
    raised: list[BaseException] = []

    def call() -> None:
        try:
            pub.publish("edged/dev1/t/late", "x")
        except BaseException as err:
            raised.append(err)

    caller = threading.Thread(target=call, name="main-thread-test")
    caller.start()
    caller.join()
    assert raised == []
    assert not fail  # it did raise inside
    assert sub.wait_for(on("edged/dev1/t/late", "x"))


def test_publish_rejects_bad_arguments(
    broker: Mosquitto, make_publisher: Callable[..., Publisher]
) -> None:
    pub = make_publisher(config(broker), start=False)
    for topic in ("", "a/+/b", "a/#"):
        with pytest.raises(ValueError):
            pub.publish(topic, "x")
    with pytest.raises(ValueError):
        pub.publish("a/b", "x", qos=3)


@pytest.mark.fault
def test_messages_published_while_broker_down_arrive_in_order(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
) -> None:
    broker = mosquitto_factory(persistence=True)
    sub = subscriber_factory(
        broker, "edged/dev1/prediction", client_id="sub-restart", persistent=True
    )
    pub = make_publisher(config(broker))
    assert pub.wait_connected(5)
    pub.publish(pub.topics.prediction, "0")
    sub.wait_count(1)

    broker.stop()  # SIGTERM: the subscriber's session is saved
    wait_until(lambda: not pub.connected, 5, "publisher to notice the broker is gone")
    t0 = time.perf_counter()
    for i in range(1, 501):
        pub.publish(pub.topics.prediction, str(i))
    assert time.perf_counter() - t0 < 0.5
    assert pub.stats["queued"] == 500
    broker.start()

    assert pub.wait_connected(5)
    got = sub.wait_count(501, timeout=15)
    assert first_occurrences([int(m.text) for m in got]) == list(range(501))
    wait_until(lambda: pub.stats["queued"] == 0, 5, "outbox to drain")
    assert pub.stats["reconnects"] == 1
    assert pub.stats["published"] >= 501


@pytest.mark.fault
def test_unacknowledged_messages_are_resent_after_broker_crash(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
) -> None:
    """Messages handed to a broker that dies before acknowledging them are sent again."""
    broker = mosquitto_factory(persistence=True)
    sub = subscriber_factory(
        broker, "edged/dev1/prediction", client_id="sub-crash", persistent=True
    )
    pub = make_publisher(config(broker))
    assert pub.wait_connected(5)
    pub.publish(pub.topics.prediction, "0")
    sub.wait_count(1)
    time.sleep(1.5)  # autosave_interval 1: the subscriber's session is on disk

    broker.freeze()
    for i in range(1, 51):
        pub.publish(pub.topics.prediction, str(i))
    # mosquitto's CONNACK says Receive Maximum 20; one slot is kept for availability messages
    wait_until(lambda: pub.stats["inflight"] == 19, 5, "messages in flight to the frozen broker")
    broker.kill()
    wait_until(lambda: not pub.connected, 5, "publisher to notice the crash")
    assert pub.stats["queued"] == 50
    broker.start()

    got = sub.wait_count(51, timeout=15)
    assert first_occurrences([int(m.text) for m in got]) == list(range(51))
    wait_until(lambda: pub.stats["queued"] == 0, 5, "outbox to drain")


def test_outbox_overflow_drops_oldest(
    broker: Mosquitto,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sub = subscriber_factory(broker, "edged/dev1/prediction")
    pub = make_publisher(config(broker), start=False, queue_max=10)
    with caplog.at_level(logging.WARNING, logger="edged.mqtt"):
        for i in range(25):
            pub.publish(pub.topics.prediction, str(i))
    assert pub.stats["dropped"] == 15
    assert pub.stats["queued"] == 10
    assert len([r for r in caplog.records if "outbox full" in r.getMessage()]) == 1
    pub.start()
    got = sub.wait_count(10)
    assert [int(m.text) for m in got] == list(range(15, 25))


@pytest.mark.fault
def test_publish_does_not_block_when_broker_is_frozen(
    broker: Mosquitto, make_publisher: Callable[..., Publisher], subscriber_factory: MakeSub
) -> None:
    sub = subscriber_factory(broker, "edged/dev1/prediction")
    pub = make_publisher(config(broker))
    assert pub.wait_connected(5)
    broker.freeze()
    payload = b"x" * 2000
    t0 = time.perf_counter()
    for _ in range(1000):
        pub.publish(pub.topics.prediction, payload)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"1000 publish() calls took {elapsed:.3f} s"
    assert pub.stats["queued"] == 1000
    # mosquitto's CONNACK says Receive Maximum 20; one slot is kept for availability messages
    wait_until(lambda: pub.stats["inflight"] == 19, 5, "the broker's Receive Maximum in flight")
    time.sleep(0.2)
    assert pub.stats["inflight"] == 19 and pub.stats["queued"] == 1000
    broker.thaw()
    sub.wait_count(1000, timeout=10)
    wait_until(lambda: pub.stats["queued"] == 0, 5, "outbox to drain")


@pytest.mark.fault
def test_stop_is_bounded_when_broker_is_frozen(
    broker: Mosquitto, make_publisher: Callable[..., Publisher]
) -> None:
    pub = make_publisher(config(broker))
    assert pub.wait_connected(5)
    broker.freeze()
    for i in range(100):
        pub.publish(pub.topics.prediction, str(i))
    t0 = time.monotonic()
    pub.stop(timeout=1.0)
    assert time.monotonic() - t0 < 2.5
    assert not pub.connected
    broker.thaw()


@pytest.mark.fault
def test_subscriptions_survive_reconnects(
    broker: Mosquitto, make_publisher: Callable[..., Publisher]
) -> None:
    received: list[tuple[str, bytes]] = []
    got = threading.Event()

    def on_message(topic: str, payload: bytes) -> None:
        received.append((topic, payload))
        got.set()

    pub = make_publisher(config(broker), on_message=on_message)
    pub.subscribe(pub.topics.update)
    assert pub.wait_connected(5)

    def deliver(payload: bytes) -> None:
        """Publish from another client until the handler sees it (the SUBACK may lag)."""
        got.clear()
        with Subscriber(broker.host, broker.port, "unused/topic") as other:
            deadline = time.monotonic() + 5
            while not got.is_set():
                assert time.monotonic() < deadline, f"{payload!r} never reached on_message"
                other.client.publish(pub.topics.update, payload, qos=1).wait_for_publish(5)
                got.wait(0.2)

    deliver(b"bundle-1")
    broker.restart()
    wait_until(lambda: pub.stats["reconnects"] == 1 and pub.connected, 10, "reconnect")
    deliver(b"bundle-2")
    assert (pub.topics.update, b"bundle-1") in received
    assert (pub.topics.update, b"bundle-2") in received


def test_message_larger_than_broker_limit_is_dropped_mqtt5(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
) -> None:
    broker = mosquitto_factory(max_packet_size=256 * 1024)
    sub = subscriber_factory(broker, "edged/dev1/prediction")
    pub = make_publisher(config(broker))
    assert pub.wait_connected(5)
    pub.publish(pub.topics.prediction, b"x" * (300 * 1024))
    pub.publish(pub.topics.prediction, b"small")
    assert sub.wait_count(1)[0].payload == b"small"
    wait_until(lambda: pub.stats["queued"] == 0, 5, "outbox to drain")
    assert pub.stats["failures"] == 1
    assert pub.stats["reconnects"] == 0


@pytest.mark.fault
def test_message_that_kills_the_connection_is_dropped_mqtt311(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """3.1.1 has no maximum-packet-size negotiation: the broker just drops the connection."""
    monkeypatch.setattr(window_mod, "MAX_HEAD_ATTEMPTS", 3)
    broker = mosquitto_factory(max_packet_size=256 * 1024)
    sub = subscriber_factory(broker, "edged/dev1/prediction")
    pub = make_publisher(config(broker, protocol="3.1.1"))
    assert pub.wait_connected(5)
    pub.publish(pub.topics.prediction, b"before")
    pub.publish(pub.topics.prediction, b"x" * (300 * 1024))
    pub.publish(pub.topics.prediction, b"after")
    sub.wait_for(lambda m: m.payload == b"after", timeout=15)
    got = [m.payload for m in sub.messages]
    assert first_occurrences([1 if p == b"before" else 2 for p in got]) == [1, 2]
    assert b"x" * (300 * 1024) not in got
    wait_until(lambda: pub.stats["queued"] == 0, 5, "outbox to drain")
    assert pub.stats["failures"] == 1


def test_message_refused_by_acl_is_counted_as_failure_mqtt5(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    acl = "user edge\ntopic write edged/dev1/availability\ntopic write edged/dev1/prediction\n"
    acl += "user reader\ntopic read #\n"
    broker = mosquitto_factory(users={"edge": "pw", "reader": "pw"}, acl=acl)
    sub = subscriber_factory(broker, "edged/#", username="reader", password="pw")
    pub = make_publisher(config(broker, username="edge", password="pw"))
    assert pub.wait_connected(5)
    with caplog.at_level(logging.WARNING, logger="edged.mqtt"):
        pub.publish("edged/dev1/forbidden", "no")
        pub.publish(pub.topics.prediction, "yes")
        sub.wait_for(on(pub.topics.prediction, "yes"))
        wait_until(lambda: pub.stats["queued"] == 0, 5, "outbox to drain")
    assert pub.stats["failures"] == 1 and pub.stats["published"] == 1
    assert "not authorized" in caplog.text.lower()
    assert not [m for m in sub.messages if m.topic == "edged/dev1/forbidden"]


# -- authentication, protocol versions, TLS -----------------------------------------------------


def test_refused_connection_is_not_connected_and_logged_once(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    broker = mosquitto_factory(users={"edge": "right-password"})
    pw = tmp_path / "pw"
    pw.write_text("wrong-password\n")
    cfg = config(broker, username="edge", password_file=pw)
    with caplog.at_level(logging.DEBUG, logger="edged.mqtt"):
        pub = make_publisher(cfg)
        assert not pub.wait_connected(1.5)
        wait_until(lambda: pub.stats["connect_failures"] >= 2, 5, "a second attempt")
        assert not pub.connected
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert REFUSED.search(refusals[0].getMessage())
    assert "wrong-password" not in caplog.text

    with pytest.raises(BrokerError) as exc:
        check_broker(cfg, "dev1", timeout=3)
    assert REFUSED.search(str(exc.value)), str(exc.value)
    assert "\n" not in str(exc.value)

    pw.write_text("right-password\n")
    assert (
        check_broker(cfg, "dev1", timeout=3) == f"connected to {broker.host}:{broker.port} (MQTT 5)"
    )
    good = make_publisher(cfg, device_id="dev2")
    assert good.wait_connected(5)


def test_mqtt311(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
) -> None:
    broker = mosquitto_factory(users={"edge": "pw"})
    cfg = config(broker, protocol="3.1.1", username="edge", password="pw")
    assert check_broker(cfg, "dev1", 3).endswith("(MQTT 3.1.1)")
    sub = subscriber_factory(
        broker, "edged/dev1/#", protocol="3.1.1", username="edge", password="pw"
    )
    pub = make_publisher(cfg)
    assert pub.wait_connected(5)
    for i in range(50):
        pub.publish(pub.topics.prediction, str(i))
    sub.wait_count(50, predicate=on(pub.topics.prediction))
    assert numbers(sub, pub.topics.prediction) == list(range(50))
    sub.wait_for(on(pub.topics.availability, "online"))
    pub.stop()
    sub.wait_for(on(pub.topics.availability, "stopped"))

    bad = config(broker, protocol="3.1.1", username="edge", password="nope")
    with pytest.raises(BrokerError, match=REFUSED):
        check_broker(bad, "dev1", 3)


def test_tls_verifies_the_server_certificate(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pki = make_pki(tmp_path / "pki", "good")
    other = make_pki(tmp_path / "other", "other")
    broker = mosquitto_factory(tls=TlsListener(pki.cert_file, pki.key_file, pki.ca_file))

    cfg = config(broker, tls=TlsConfig(ca_file=pki.ca_file))
    assert check_broker(cfg, "dev1", 3).startswith("connected to 127.0.0.1:")
    sub = subscriber_factory(broker, "edged/dev1/prediction", ca_file=pki.ca_file)
    pub = make_publisher(cfg)
    assert pub.wait_connected(5)
    pub.publish(pub.topics.prediction, "over tls")
    assert sub.wait_count(1)[0].text == "over tls"

    wrong = config(broker, tls=TlsConfig(ca_file=other.ca_file))
    with pytest.raises(BrokerError, match="certificate verification failed"):
        check_broker(wrong, "dev1", 3)
    with caplog.at_level(logging.WARNING, logger="edged.mqtt"):
        bad = make_publisher(wrong, device_id="dev2")
        assert not bad.wait_connected(1.0)
    assert "certificate verification failed" in caplog.text


def test_tls_hostname_check_and_insecure(mosquitto_factory: MakeBroker, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", "named", hosts=("broker.example",))
    broker = mosquitto_factory(tls=TlsListener(pki.cert_file, pki.key_file))
    with pytest.raises(BrokerError, match=r"certificate verification failed: .*mismatch"):
        check_broker(config(broker, tls=TlsConfig(ca_file=pki.ca_file)), "dev1", 3)
    insecure = config(broker, tls=TlsConfig(ca_file=pki.ca_file, insecure=True))
    assert check_broker(insecure, "dev1", 3).startswith("connected")


# -- check_broker failures ----------------------------------------------------------------------


def test_check_broker_connection_refused() -> None:
    from tests.broker import free_port

    cfg = MqttConfig(host="127.0.0.1", port=free_port())
    with pytest.raises(BrokerError, match="connection refused"):
        check_broker(cfg, "dev1", 2)


@pytest.mark.fault
def test_check_broker_times_out_on_a_frozen_broker(broker: Mosquitto) -> None:
    broker.freeze()
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match="timed out"):
        check_broker(config(broker), "dev1", 1.0)
    assert time.monotonic() - t0 < 2.0
    broker.thaw()


def test_unsubscribe_stops_delivery_also_after_reconnect(broker: Mosquitto) -> None:
    got: list[str] = []
    pub = Publisher(
        MqttConfig(host=broker.host, port=broker.port),
        "dev-u",
        on_message=lambda t, p: got.append(t),
    )
    pub.start()
    assert pub.wait_connected(5)
    pub.subscribe("in/a")
    pub.subscribe("in/b")
    time.sleep(0.3)
    pub.unsubscribe("in/a")
    time.sleep(0.3)
    other = Publisher(MqttConfig(host=broker.host, port=broker.port), "dev-v")
    other.start()
    assert other.wait_connected(5)
    other.publish("in/a", "x")
    other.publish("in/b", "y")
    deadline = time.monotonic() + 5
    while "in/b" not in got and time.monotonic() < deadline:
        time.sleep(0.05)
    other.stop()
    pub.stop()
    assert got == ["in/b"]
