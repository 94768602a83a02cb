"""The broker's limits and the reconnect backoff (edged.publish.session, mqtt, connect), against
real Mosquitto brokers; ``Backoff`` itself as a property.

* MQTT 5 PUBACK/PUBREC reason codes >= 0x80 are results: mosquitto answers a QoS 1/2 message
  over its ``message_size_limit`` with 0x95, which paho 2.x cannot decode for those packets and
  used to turn into a "protocol error" disconnect - a reconnect storm over one message.
* MQTT 3.1.1 brokers just drop the connection on an oversized packet: the message is isolated,
  dropped, and messages at least that large are not sent again.
* The CONNACK's Receive Maximum bounds the in-flight window.
* Reconnect delays grow across connections that the broker accepts and drops at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged.config import MqttConfig
from edged.publish.connect import STABLE_S, Backoff
from edged.publish.mqtt import Publisher
from tests.broker import Mosquitto, Received, Subscriber, free_port
from tests.fuzz import examples

EXAMPLES = examples(50)
MakeBroker = Callable[..., Mosquitto]
MakeSub = Callable[..., Subscriber]
TOPIC = "edged/dev1/prediction"


def config(host: str, port: int, **overrides: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "host": host,
        "port": port,
        "keepalive_s": 5,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "connect_timeout_s": 3.0,
    }
    values.update(overrides)
    return MqttConfig(**values)


@pytest.fixture
def make_publisher() -> Iterator[Callable[..., Publisher]]:
    made: list[Publisher] = []

    def make(cfg: MqttConfig, device_id: str = "dev1") -> Publisher:
        pub = Publisher(cfg, device_id)
        made.append(pub)
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


def texts(sub: Subscriber) -> list[str]:
    return [m.text for m in sub.messages if m.topic == TOPIC]


def on(text: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == TOPIC and m.text == text


# -- refusals in PUBACK / PUBREC ----------------------------------------------------------------


@pytest.mark.parametrize("qos", [1, 2])
def test_refusal_in_puback_is_a_result_not_a_protocol_error(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
    caplog: pytest.LogCaptureFixture,
    qos: int,
) -> None:
    broker = mosquitto_factory(extra_conf=["message_size_limit 1000"])
    sub = subscriber_factory(broker, TOPIC)
    pub = make_publisher(config(broker.host, broker.port))
    assert pub.wait_connected(5)
    with caplog.at_level(logging.WARNING, logger="edged.mqtt"):
        pub.publish(TOPIC, "before", qos=qos)
        for _ in range(3):
            pub.publish(TOPIC, b"x" * 5000, qos=qos)
        pub.publish(TOPIC, "after", qos=qos)
        sub.wait_for(on("after"), timeout=10)
        wait_until(lambda: pub.stats["queued"] == 0, 5, "outbox to drain")
    stats = pub.stats
    assert texts(sub) == ["before", "after"]
    assert stats["dropped_by_broker"] == 3 and stats["failures"] == 3
    assert stats["reconnects"] == 0 and pub.connected, caplog.text
    refusals = [r.getMessage() for r in caplog.records if "refused a message" in r.getMessage()]
    assert len(refusals) == 1, refusals  # logged once, with the size and the reason
    assert "(5000 bytes)" in refusals[0] and "Packet too large" in refusals[0]
    assert "lost" not in caplog.text


# -- MQTT 3.1.1: a message that makes the broker drop the connection ---------------------------


def test_oversized_messages_mqtt311_cost_few_reconnects(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = mosquitto_factory(max_packet_size=1024)
    sub = subscriber_factory(broker, TOPIC, protocol="3.1.1")
    pub = make_publisher(config(broker.host, broker.port, protocol="3.1.1"))
    assert pub.wait_connected(5)
    sizes = [10, 10, 3000, 10, 10, 2500, 4000, 10, 1500, 10, 3000, 10]
    with caplog.at_level(logging.WARNING, logger="edged.mqtt"):
        for i, n in enumerate(sizes):
            pub.publish(TOPIC, f"{i:02d}".encode().ljust(n, b"."))
        wait_until(lambda: pub.stats["queued"] == 0, 30, "outbox to drain")
    small = [f"{i:02d}".ljust(10, ".") for i, n in enumerate(sizes) if n == 10]
    got = list(dict.fromkeys(texts(sub)))
    stats = pub.stats
    print(f"\n3.1.1, 5 oversized among 12: {stats['reconnects']} reconnects")
    assert got == small  # every small one, in order, none of the large ones
    assert stats["dropped_by_broker"] == 5
    # The first costs up to 3 lost connections (found, then 2 tries alone); a smaller one
    # later costs 1; those at least as large as one refused are not sent at all.
    assert stats["reconnects"] <= 5, stats  # here: 3 + 1 (2500) + 1 (1500)
    pub.publish(TOPIC, b"y" * 5000)
    pub.publish(TOPIC, "last")
    sub.wait_for(on("last"), timeout=10)
    assert pub.stats["reconnects"] == stats["reconnects"]  # learnt: not sent, no reconnect


# -- Receive Maximum -----------------------------------------------------------------------------


def test_inflight_window_honours_receive_maximum(
    mosquitto_factory: MakeBroker,
    make_publisher: Callable[..., Publisher],
    subscriber_factory: MakeSub,
) -> None:
    broker = mosquitto_factory(extra_conf=["max_inflight_messages 3"])
    sub = subscriber_factory(broker, TOPIC)
    pub = make_publisher(config(broker.host, broker.port, keepalive_s=30))
    assert pub.wait_connected(5)
    broker.freeze()  # nothing is acknowledged
    try:
        for i in range(30):
            pub.publish(TOPIC, str(i))
        time.sleep(1.0)
        inflight = pub.stats["inflight"]
    finally:
        broker.thaw()
    sub.wait_count(30, timeout=10, predicate=lambda m: m.topic == TOPIC)
    assert inflight == 2  # Receive Maximum 3, one slot kept for availability
    assert list(dict.fromkeys(texts(sub))) == [str(i) for i in range(30)]


# -- backoff ------------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    min_s=st.floats(0.01, 10),
    factor=st.floats(1, 100),
    draws=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=40),
)
def test_backoff_grows_with_jitter_and_is_capped(
    min_s: float, factor: float, draws: list[float]
) -> None:
    it = iter(draws)
    b = Backoff(min_s, min_s * factor, rand=lambda: next(it))
    bases = []
    for k in range(len(draws)):
        base = b.base(k)
        delay = b.next_delay()
        assert base / 2 <= delay <= base <= b.max_s * (1 + 1e-9)
        bases.append(base)
    assert bases == sorted(bases) and bases[0] == pytest.approx(min_s)


def test_backoff_only_a_stable_connection_resets_it() -> None:
    b = Backoff(1.0, 64.0, rand=lambda: 0.999)
    for _ in range(4):
        b.next_delay()
        b.connected(now=100.0)
        assert b.lost(now=100.0 + STABLE_S / 2) == STABLE_S / 2  # accepted, dropped at once
    assert b.next_delay() == pytest.approx(16.0, rel=0.01)
    b.connected(now=200.0)
    b.lost(now=200.0 + STABLE_S)
    assert b.next_delay() == pytest.approx(1.0, rel=0.01)


class CuttingProxy:
    """TCP proxy to a broker that cuts every connection ``cut_s`` after it was opened (the
    CONNACK has passed by then); records when each connection was opened."""

    def __init__(self, broker: Mosquitto, cut_s: float) -> None:
        self.port = free_port()
        self.opened: list[float] = []
        self._broker = broker
        self._cut_s = cut_s
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._srv.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.opened.append(time.monotonic())
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        up = socket.create_connection((self._broker.host, self._broker.port))
        end = time.monotonic() + self._cut_s

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass

        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()
        time.sleep(max(0.0, end - time.monotonic()))
        for s in (conn, up):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop.set()
        self._srv.close()


def test_reconnect_delays_grow_when_every_connection_is_cut_at_once(
    broker: Mosquitto, make_publisher: Callable[..., Publisher]
) -> None:
    proxy = CuttingProxy(broker, cut_s=0.3)
    try:
        pub = make_publisher(
            config("127.0.0.1", proxy.port, reconnect_min_s=0.1, reconnect_max_s=3.2)
        )
        assert pub.wait_connected(5)
        time.sleep(14)
        opened = list(proxy.opened)
    finally:
        proxy.close()
    gaps = [b - a - 0.3 for a, b in itertools.pairwise(opened)]  # minus the 0.3 s up
    print(
        f"\ncut after 0.3 s: {len(opened)} connections in 14 s, waits {[round(g, 2) for g in gaps]}"
    )
    assert pub.stats["reconnects"] >= 3
    # Without growth (each CONNACK resetting the delay) the waits stay at 0.05-0.1 s: ~35
    # connections; with it they double up to 3.2 s (jitter: each in [d/2, d]).
    assert len(opened) <= 14, gaps
    assert max(gaps[-3:]) >= 1.2 and max(gaps[-3:]) > 4 * max(gaps[:2]), gaps
    assert len({round(g, 3) for g in gaps}) == len(gaps)  # jittered, not a fixed schedule


def test_stats_report_dropped_by_broker_and_takeovers() -> None:
    from edged.config import StatsConfig
    from edged.features.stats import Counters, Stats

    mqtt = {"published": 5, "failures": 3, "dropped_by_broker": 2, "takeovers": 4}
    counters = Counters(
        processed=1, predictions=1, captured=1, dropped=0, skipped=0, paused=False,
        model={"name": "m", "version": 1, "sha256": "0" * 64}, mqtt=mqtt, connected=True,
        spool_depth=0,
    )  # fmt: skip
    stats = Stats(StatsConfig(interval_s=0), "dev1", lambda: counters, lambda b: None)
    snap = stats.snapshot()["mqtt"]
    assert (snap["dropped_by_broker"], snap["takeovers"]) == (2, 4)
    text = stats.metrics_text()
    assert "edged_mqtt_messages_dropped_by_broker_total 2.0\n" in text
    assert "edged_mqtt_takeovers_total 4.0\n" in text
