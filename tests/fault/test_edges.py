"""Delivery at the edges (issue 12): the real daemon process against real Mosquitto brokers.

* ``seq`` continues over a spool that was damaged, replaced by a folder, or written by
  another schema (whose undelivered messages are delivered);
* a broker whose size limit is below some of the daemon's messages (MQTT 3.1.1: it drops the
  connection; MQTT 5: PUBACK 0x95 or the CONNACK's maximum packet size): no reconnect storm,
  availability does not flap, predictions keep arriving, the drops are counted;
* a second daemon on the same state dir exits with status 4 and one line, the first one is
  untouched;
* another client with the daemon's client id: recognised, reported once, met with growing
  reconnect delays instead of a fight.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edged.publish.spool_file import SPOOL_NAME
from tests.broker import Mosquitto, free_port
from tests.daemon import DaemonProcess, demo_config

pytestmark = pytest.mark.fault

DEVICE = "cam-1"
PREDICTION = f"edged/{DEVICE}/prediction"
AVAILABILITY = f"edged/{DEVICE}/availability"

StartDaemon = Callable[..., DaemonProcess]
MakeBroker = Callable[..., Mosquitto]


class Recorder:
    """A subscriber that keeps each message with its arrival time (monotonic)."""

    def __init__(self, broker: Mosquitto, topic: str = f"edged/{DEVICE}/#") -> None:
        self._lock = threading.Lock()
        self.got: list[tuple[float, str, bytes]] = []
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{id(self):x}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert ready.wait(5), "recorder: no SUBACK"

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((time.monotonic(), msg.topic, bytes(msg.payload)))

    def times(self, topic: str, payload: bytes | None = None, since: float = 0.0) -> list[float]:
        with self._lock:
            return [
                t
                for t, tp, p in self.got
                if tp == topic and (payload is None or p == payload) and t >= since
            ]

    def seqs(self, since: float = 0.0) -> list[int]:
        with self._lock:
            items = [(t, p) for t, tp, p in self.got if tp == PREDICTION and t >= since]
        return [int(json.loads(p)["seq"]) for _, p in items]

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for _, tp, p in self.got if tp == topic]

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def recorder() -> Any:
    made: list[Recorder] = []

    def make(broker: Mosquitto, topic: str = f"edged/{DEVICE}/#") -> Recorder:
        made.append(Recorder(broker, topic))
        return made[-1]

    yield make
    for r in made:
        r.close()


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(edged_[a-z_]+) ([0-9.e+-]+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def first_occurrences(seqs: list[int]) -> list[int]:
    return list(dict.fromkeys(seqs))


# -- seq over a broken spool ----------------------------------------------------------------


def _random(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 256)


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _newer_schema(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    db.executescript(
        "PRAGMA user_version=9;"
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY, topic TEXT, payload BLOB, qos INT,"
        " retain INT, size INT, priority INT);"
    )
    db.executemany(
        "INSERT INTO messages (topic, payload, qos, retain, size, priority) "
        "VALUES (?, ?, 1, 0, 0, 0)",
        [(f"edged/{DEVICE}/legacy", f"undelivered {i}".encode()) for i in range(5)],
    )
    db.commit()
    db.close()


@pytest.mark.parametrize(
    "damage", [_random, _directory, _newer_schema], ids=["random", "directory", "newer-schema"]
)
def test_seq_continues_over_a_broken_spool(
    tmp_path: Path,
    broker: Mosquitto,
    recorder: Callable[..., Recorder],
    start_daemon: StartDaemon,
    damage: Callable[[Path], None],
) -> None:
    rec = recorder(broker)
    cfg = demo_config(tmp_path, broker, source={"loop": True, "fps": 20})
    first = start_daemon(cfg)
    rec.wait(lambda: len(rec.seqs()) >= 10, 30, "predictions")
    assert first.terminate()[0] == 0
    before = max(rec.seqs())
    spool = Path(cfg["state_dir"]) / SPOOL_NAME
    damage(spool)
    t0 = time.monotonic()
    second = start_daemon(cfg)
    rec.wait(lambda: len(rec.seqs(since=t0)) >= 5, 30, "predictions after the restart")
    assert second.terminate()[0] == 0
    after = first_occurrences(rec.seqs(since=t0))
    print(f"\n{damage.__name__}: seq {before} before, {after[0]} after the restart")
    assert after[0] > before, f"seq went back: {after[0]} after {before}"
    assert after == list(range(after[0], after[0] + len(after)))
    log = second.log()
    assert len(re.findall(r"set aside as spool\.sqlite3\.broken-\d{8}T\d{6}Z", log)) == 1, log
    assert len(list(spool.parent.glob(SPOOL_NAME + ".broken-*"))) >= 1
    if damage is _newer_schema:  # its undelivered messages were carried over and delivered
        legacy = rec.payloads(f"edged/{DEVICE}/legacy")
        assert legacy == [f"undelivered {i}".encode() for i in range(5)], legacy


# -- broker limits ----------------------------------------------------------------------------

# The demo's predictions are PUBLISH packets of ~460 bytes, its stats ~570 and its Home
# Assistant discovery messages 630-850: a limit of 520 bytes lets the predictions through and
# refuses the others.
LIMITS: dict[str, tuple[str, dict[str, Any]]] = {
    "3.1.1-max_packet_size": ("3.1.1", {"max_packet_size": 520}),
    "5-message_size_limit": ("5", {"extra_conf": ["message_size_limit 480"]}),
    "5-max_packet_size": ("5", {"max_packet_size": 520}),
}


@pytest.mark.parametrize("case", list(LIMITS))
def test_broker_size_limit_no_reconnect_storm(
    tmp_path: Path,
    mosquitto_factory: MakeBroker,
    recorder: Callable[..., Recorder],
    start_daemon: StartDaemon,
    case: str,
) -> None:
    protocol, options = LIMITS[case]
    broker = mosquitto_factory(**options)
    rec = recorder(broker)
    port = free_port()
    cfg = demo_config(
        tmp_path,
        broker,
        source={"loop": True, "fps": 10},
        mqtt={"protocol": protocol, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        stats={"interval_s": 2, "prometheus_port": port},
    )
    t0 = time.monotonic()
    daemon = start_daemon(cfg)
    time.sleep(20)  # learning what the broker refuses may cost a few connections
    settled = time.monotonic()
    connects_before = len(rec.times(AVAILABILITY, b"online"))
    time.sleep(10)
    connects = rec.times(AVAILABILITY, b"online")
    window = first_occurrences(rec.seqs(since=settled + 1))
    m = metrics(port)
    assert daemon.alive(), daemon.log()
    print(
        f"\n{case}: {len(connects)} connection(s) in {time.monotonic() - t0:.0f} s, "
        f"{len(connects) - connects_before} in the last 10 s; {len(window)} predictions in "
        f"the last 9 s; dropped_by_broker {m.get('edged_mqtt_messages_dropped_by_broker_total')}"
    )
    assert len(connects) == connects_before, "availability flapped after settling"
    assert len(connects) <= 12, f"{len(connects)} connections: a reconnect storm"
    assert not [t for t in connects if t > t0 + 15], "still reconnecting 15 s after start"
    assert len(window) >= 60 and window == list(range(window[0], window[0] + len(window)))
    assert m["edged_mqtt_messages_dropped_by_broker_total"] >= 3  # HA config, stats, ...
    drops = [line for line in daemon.log().splitlines() if "dropping a message" in line]
    drops += [line for line in daemon.log().splitlines() if "refused a message" in line]
    assert 1 <= len(drops) <= 3, drops  # once per cause, with the size
    assert all(re.search(r"\(\d+ bytes\)", line) for line in drops), drops


# -- one instance per state dir ----------------------------------------------------------------


def test_second_daemon_on_the_same_state_dir_refuses_to_start(
    tmp_path: Path,
    broker: Mosquitto,
    recorder: Callable[..., Recorder],
    start_daemon: StartDaemon,
) -> None:
    rec = recorder(broker)
    cfg = demo_config(tmp_path, broker, source={"loop": True, "fps": 10})
    first = start_daemon(cfg)
    rec.wait(lambda: len(rec.seqs()) >= 5, 30, "predictions")
    t0 = time.monotonic()
    second = start_daemon(cfg)
    rc = second.wait(30)
    refused_s = time.monotonic() - t0
    out = second.log().strip().splitlines()
    time.sleep(3)
    print(f"\nsecond daemon: exit {rc} after {refused_s:.1f} s: {out}")
    assert rc == 4
    errors = [line for line in out if line.startswith("edged: error:")]
    assert errors == [
        f"edged: error: another edged is already running on state dir {cfg['state_dir']} "
        f"(pid {first.pid})"
    ], out
    assert "Traceback" not in second.log()
    # The first one is untouched: one connection, its predictions continue without a gap.
    assert first.alive()
    assert len(rec.times(AVAILABILITY, b"online")) == 1
    seqs = rec.seqs()
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 5 + 30
    assert "connection to" not in first.log()
    assert first.terminate()[0] == 0


# -- client id takeover ----------------------------------------------------------------------


def _thief(broker: Mosquitto, protocol: str, stop: threading.Event) -> None:
    """Another client with the daemon's client id that keeps reconnecting."""
    version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
    while not stop.is_set():
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=version)
        try:
            c.connect(broker.host, broker.port, keepalive=30)
            c.loop_start()
            stop.wait(0.7)
            c.disconnect()
            c.loop_stop()
        except OSError:
            pass
        stop.wait(0.3)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_client_id_takeover_is_reported_once_and_backed_off(
    tmp_path: Path,
    broker: Mosquitto,
    recorder: Callable[..., Recorder],
    start_daemon: StartDaemon,
    protocol: str,
) -> None:
    rec = recorder(broker)
    port = free_port()
    cfg = demo_config(
        tmp_path,
        broker,
        source={"loop": True, "fps": 10},
        mqtt={"protocol": protocol, "reconnect_min_s": 0.2, "reconnect_max_s": 6.0},
        stats={"interval_s": 0, "prometheus_port": port},
    )
    daemon = start_daemon(cfg)
    rec.wait(lambda: len(rec.seqs()) >= 3, 30, "predictions")
    stop = threading.Event()
    thief = threading.Thread(target=_thief, args=(broker, protocol, stop), daemon=True)
    t0 = time.monotonic()
    thief.start()
    time.sleep(30)
    stop.set()
    thief.join(5)
    fight = rec.times(AVAILABILITY, b"online", since=t0)
    gaps = [b - a for a, b in itertools.pairwise(fight)]
    t1 = time.monotonic()
    rec.wait(lambda: len(rec.seqs(since=t1)) >= 10, 30, "predictions after the fight")
    m = metrics(port)
    reports = [ln for ln in daemon.log().splitlines() if "another client probably uses" in ln]
    print(
        f"\ntakeover fight (MQTT {protocol}), 30 s: {len(fight)} reconnection(s), gaps "
        f"{[round(g, 1) for g in gaps]}; takeovers counted {m['edged_mqtt_takeovers_total']}"
    )
    assert len(reports) == 1 and f"client id {DEVICE}" in reports[0], reports
    assert m["edged_mqtt_takeovers_total"] >= 3
    # Without backoff the daemon took the connection back within 0.2-0.4 s, ~30 times.
    assert len(fight) <= 16, gaps
    assert len(gaps) >= 3 and max(gaps[-3:]) >= 2.0 and max(gaps[-3:]) >= 3 * min(gaps[:2])
    seqs = first_occurrences(rec.seqs())
    assert seqs == list(range(1, len(seqs) + 1))  # nothing lost in the fight
