"""Hostile MQTT traffic against the real daemon (a process) through a real Mosquitto (issue 11):
a corpus of retained junk on every topic it subscribes to, before it starts and across a
restart, and a flood of control messages with ``persist`` -- it stays up, keeps publishing at
its configured rate, stays ``online``, and its watchdog is never starved."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.broker import Mosquitto, Subscriber
from tests.daemon import DaemonProcess, demo_config
from tests.fault.harness import NotifySocket

TOPIC = "edged/cam-1"
PREDICTION = f"{TOPIC}/prediction"

# The retained message left on each subscribed topic (one per topic): the reported crashes
# first (a ~1 KB control message; valid JSON with a lone surrogate).
RETAINED: dict[str, bytes] = {
    f"{TOPIC}/set": b"[" * 1024,
    "homeassistant/status": b"\xff\xfe" * 500,
    f"{TOPIC}/update/offer": b'{"transfer_id":' * 2000,
    f"{TOPIC}/update/command": b'{"issued": "\\ud800", "version": 1e999, "sig": [[[[]]]]}',
    "edged/group/all/update/offer": json.dumps(
        {"transfer_id": "g1", "name": "\ud800", "version": 2**70, "size": -1, "chunks": "x"}
    ).encode(),
}
# Sent (not retained) on every subscribed topic once it runs.
CORPUS: list[bytes] = [
    b"",
    b"\x00" * 10,
    b"\xff" * 1000,
    b"[" * 1024,
    b'{"a":' * 3000,
    b'{"id": "\\ud800", "paused": true}',
    b'{"id": "\\udcff", "publish": {"min_score": 0.0}}',
    b'{"\\ud800": 1}',
    b'{"publish": {"agree_m": 1000000000000, "agree_n": 1, "mode": "change"}}',
    b'{"publish": {"heartbeat_s": Infinity}}',
    b'{"publish": {"min_interval_s": NaN}}',
    b'{"publish": {"min_interval_s": 1e999}}',
    b'{"model": {"top_k": 1000000000}}',
    b'{"paused": true, "paused": false}',
    b'{"id": ' + b"9" * 5000 + b', "paused": false}',
    b'{"command": "ha_announce", "id": "\\u202e\\n"}',
    b"online",
    b" online ",
    json.dumps(
        {
            "transfer_id": "t" * 64,
            "name": "x",
            "version": 9,
            "size": 10**15,
            "chunk_size": 1024,
            "sha256": "0" * 64,
            "chunks": [],
        }
    ).encode(),
    b"x" * 200_000,
]


def _client(broker: Mosquitto) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def _rate(sub: Subscriber, seconds: float) -> float:
    n = sum(m.topic == PREDICTION for m in sub.messages)
    time.sleep(seconds)
    return (sum(m.topic == PREDICTION for m in sub.messages) - n) / seconds


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} in an answer")


def _availability(sub: Subscriber) -> list[str]:
    return [m.text for m in sub.messages if m.topic == f"{TOPIC}/availability"]


def test_hostile_retained_corpus_never_stops_the_daemon(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    pub = _client(broker)
    for topic, payload in RETAINED.items():
        pub.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    sub = subscriber_factory(broker, f"{TOPIC}/#")
    cfg = demo_config(
        tmp_path, broker, source={"loop": True, "fps": 10}, update={"groups": ["all"]}
    )

    for run in range(2):  # the second start meets the same retained corpus: no crash loop
        d = start_daemon(cfg)
        sub.wait_for(lambda m: m.topic == PREDICTION, 30)
        assert d.alive(), d.log()
        for payload in CORPUS:
            for topic in RETAINED:
                pub.publish(topic, payload, qos=0)
        time.sleep(1.0)
        rate = _rate(sub, 3.0)
        assert d.alive(), d.log()
        assert rate >= 5, (rate, d.log()[-3000:])  # 10 frames/s configured
        assert _availability(sub)[-1] == "online"
        assert "Traceback" not in d.log(), d.log()
        rc, _ = d.terminate()
        assert rc == 0, d.log()
        assert _availability(sub)[-1] == "stopped", run
    # Every answer the daemon gave is strict JSON.
    for m in sub.messages:
        if m.topic == f"{TOPIC}/set/result":
            json.loads(m.payload.decode("utf-8"), parse_constant=_refuse)
    pub.loop_stop()


def test_control_flood_with_persist_starves_neither_frames_nor_watchdog(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    notify = NotifySocket(watchdog_usec=2_000_000)
    try:
        sub = subscriber_factory(broker, f"{TOPIC}/#")
        cfg = demo_config(tmp_path, broker, source={"loop": True, "fps": 10})
        d = start_daemon(cfg, env=notify.env)
        notify.wait_for("READY=1", 30)
        sub.wait_count(5, 30, lambda m: m.topic == PREDICTION)
        before = _rate(sub, 3.0)

        pub = _client(broker)
        sent = 0
        flood_s = 7.0

        def flood() -> None:  # ~400 messages a second, each with persist
            nonlocal sent
            t = time.monotonic()
            while time.monotonic() - t < flood_s:
                msg = {"publish": {"min_score": (sent % 50) / 1000}, "paused": False,
                       "persist": True, "id": sent}  # fmt: skip
                pub.publish(f"{TOPIC}/set", json.dumps(msg), qos=0)
                sent += 1
                if sent % 20 == 0:
                    time.sleep(0.05)

        flooder = threading.Thread(target=flood)
        t0 = time.monotonic()
        flooder.start()
        time.sleep(1.5)
        during = _rate(sub, 4.0)  # predictions per second in the middle of the flood
        flooder.join()
        t1 = time.monotonic()
        gap = notify.max_gap(t0, t1)
        assert d.alive(), d.log()
        time.sleep(1.5)  # the last answers
        results = [json.loads(m.payload) for m in sub.messages if m.topic == f"{TOPIC}/set/result"]
        taken = [r for r in results if r.get("ok")]
        limited = [r for r in results if not r["ok"] and "rate limit" in r["errors"][0]]
        print(
            f"flood: {sent} messages in {t1 - t0:.1f} s ({sent / (t1 - t0):.0f}/s); answered ok "
            f"{len(taken)}, rate-limit answers {len(limited)}; predictions/s before "
            f"{before:.1f}, during {during:.1f}; longest watchdog gap {gap:.2f} s "
            f"(deadline {notify.watchdog_s:g} s)"
        )
        assert sent >= 1500
        assert len(taken) <= 20 + 10 * (t1 - t0 + 2) + 5  # the burst, then 10 a second
        assert 1 <= len(limited) <= (t1 - t0) + 5  # at most about one a second
        assert gap < notify.watchdog_s * 0.75, gap
        assert during >= 0.7 * before, (before, during)
        overrides = json.loads((Path(cfg["state_dir"]) / "overrides.json").read_text())
        assert overrides["paused"] is False and "min_score" in overrides["publish"]
        rc, _ = d.terminate()
        assert rc == 0
        pub.loop_stop()
    finally:
        notify.close()
