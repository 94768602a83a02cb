"""The daemon as a real process → real Mosquitto → a subscriber, as a user would see it."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.broker import Mosquitto, Subscriber
from tests.daemon import SAMPLES, DaemonProcess, demo_config

TOPIC = "edged/cam-1"


def _events(sub: Subscriber, n: int, timeout: float = 20) -> list[dict[str, Any]]:
    msgs = sub.wait_count(n, timeout, predicate=lambda m: m.topic == f"{TOPIC}/prediction")
    return [json.loads(m.payload) for m in msgs]


def test_every_sample_is_published_with_the_documented_event(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    sub = subscriber_factory(broker, f"{TOPIC}/#")
    d = start_daemon(demo_config(tmp_path, broker))
    assert d.wait(30) == 0, d.log()
    events = _events(sub, 20)
    assert [e["seq"] for e in events] == list(range(1, 21))
    first = events[0]
    assert set(first) >= {"schema", "device", "seq", "ts", "label", "score", "top", "model"}
    assert first["schema"] == 1 and first["device"] == "cam-1" and first["reason"] == "every"
    assert first["ts"].endswith("Z") and first["ts"][:2] == "20"
    assert isinstance(first["score"], float) and 0.0 <= first["score"] <= 1.0
    assert first["top"][0] == {"label": first["label"], "score": first["score"]}
    assert len(first["top"]) == 3
    assert first["model"]["name"] == "digits" and first["model"]["version"] == 1
    assert len(first["model"]["sha256"]) == 64
    assert set(first["latency_ms"]) >= {"preprocess", "invoke", "postprocess", "total"}
    assert all(isinstance(v, float | int) for v in first["latency_ms"].values())
    # Held-out samples: the file name carries the truth (digit-<label>-<n>.png).
    correct = sum(e["label"] == e["frame"].split("-")[1] for e in events)
    assert correct >= 18, [(e["frame"], e["label"]) for e in events]
    # No image data anywhere in the event.
    assert max(len(m.payload) for m in sub.messages) < 1000
    # Retained state is the last label; availability ends "stopped".
    assert sub.texts(f"{TOPIC}/state")[-1] == events[-1]["label"]
    assert sub.texts(f"{TOPIC}/availability") == ["online", "stopped"]


def test_late_subscriber_sees_retained_state_and_availability(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    d = start_daemon(demo_config(tmp_path, broker))
    assert d.wait(30) == 0, d.log()
    late = subscriber_factory(broker, f"{TOPIC}/#")
    want = {f"{TOPIC}/availability", f"{TOPIC}/state"}
    late.wait_count(2, 5, predicate=lambda m: m.retain and m.topic in want)
    retained = {m.topic: m.text for m in late.messages if m.retain}
    assert retained[f"{TOPIC}/availability"] == "stopped"
    assert retained[f"{TOPIC}/state"] in [str(i) for i in range(10)]


def test_kill_9_leaves_offline_by_last_will(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    sub = subscriber_factory(broker, f"{TOPIC}/availability")
    cfg = demo_config(tmp_path, broker, source={"loop": True, "fps": 5})
    d = start_daemon(cfg)
    sub.wait_for(lambda m: m.text == "online", 15)
    d.kill()
    t0 = time.monotonic()
    sub.wait_for(lambda m: m.text == "offline", 5 * 1.5 + 2)
    assert time.monotonic() - t0 < 5 * 1.5 + 2


def test_sigterm_finishes_publishes_stopped_and_exits_0_within_2s(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    sub = subscriber_factory(broker, f"{TOPIC}/#")
    d = start_daemon(demo_config(tmp_path, broker, source={"loop": True, "fps": 10}))
    _events(sub, 3)
    rc, took = d.terminate()
    assert rc == 0 and took < 2.0, (rc, took, d.log())
    assert sub.wait_for(lambda m: m.topic.endswith("availability") and m.text == "stopped", 2)
    assert "received SIGTERM" in d.log()


def test_change_mode_publishes_only_stable_changes(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    # 6 x "1", one flicker "7", 6 x "4": exactly two stable labels.
    order = ["digit-1-1.png"] * 6 + ["digit-7-1.png"] + ["digit-4-1.png"] * 6
    for i, name in enumerate(order):
        shutil.copy(SAMPLES / name, frames / f"{i:03d}.png")
    sub = subscriber_factory(broker, f"{TOPIC}/prediction")
    cfg = demo_config(
        tmp_path,
        broker,
        source={"path": str(frames)},
        publish={"mode": "change", "agree_n": 3, "agree_m": 5, "heartbeat_s": 0},
    )
    d = start_daemon(cfg)
    assert d.wait(30) == 0, d.log()
    time.sleep(0.3)
    events = [json.loads(m.payload) for m in sub.messages]
    assert [(e["label"], e["reason"]) for e in events] == [("1", "change"), ("4", "change")]


def test_source_fault_is_reported_and_the_daemon_recovers(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    empty = tmp_path / "incoming"
    empty.mkdir()
    sub = subscriber_factory(broker, f"{TOPIC}/#")
    cfg = demo_config(
        tmp_path,
        broker,
        source={"path": str(empty), "loop": True, "retry_min_s": 0.2, "retry_max_s": 0.5},
    )
    d = start_daemon(cfg)
    fault = sub.wait_for(lambda m: m.topic == f"{TOPIC}/health", 15)
    health = json.loads(fault.payload)
    assert health["source"]["ok"] is False and "source.path" in health["source"]["error"]
    time.sleep(1.0)
    assert d.alive(), d.log()
    shutil.copy(SAMPLES / "digit-5-1.png", empty / "a.png")
    _events(sub, 1)
    ok = sub.wait_for(
        lambda m: m.topic == f"{TOPIC}/health" and json.loads(m.payload)["source"]["ok"], 5
    )
    assert json.loads(ok.payload)["source"]["faults"] == 1


def test_publishing_continues_across_a_broker_restart(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    cfg = demo_config(tmp_path, broker, source={"loop": True, "fps": 10})
    d = start_daemon(cfg)
    sub = subscriber_factory(broker, f"{TOPIC}/prediction")
    _events(sub, 2)
    broker.restart()
    sub2 = subscriber_factory(broker, f"{TOPIC}/prediction")
    _events(sub2, 3)
    assert d.alive()
