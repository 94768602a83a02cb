"""The daemon's logic on the fast tier: the real Daemon in this process, MQTT in memory
(tests/memory.py). The same behaviour through a real broker and a real process stays in
test_control.py, test_homeassistant.py and test_stats.py (``-m broker``)."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.app.daemon import Daemon
from edged.config import Config, FilesSource
from edged.features.homeassistant import OBJECT_IDS
from edged.features.stats import cpu_temperature
from tests.fakes import make_config
from tests.memory import MemoryBroker, Message, in_memory_daemon

TOPIC = "edged/cam-1"
DISCOVERY = "homeassistant/sensor/cam-1"


class Operator:
    """Sends control messages the way an operator's client would and reads the answers."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.n = 0

    def send(self, message: dict[str, Any] | bytes, timeout: float = 10) -> dict[str, Any]:
        self.n += 1
        if isinstance(message, dict):
            message = json.dumps({**message, "id": self.n}).encode()
        seen = len(self.broker.on(f"{TOPIC}/set/result"))
        self.broker.publish(f"{TOPIC}/set", message, qos=1)
        self.broker.wait_for(
            lambda m: m.topic == f"{TOPIC}/set/result" and len(self.broker.on(m.topic)) > seen,
            timeout,
        )
        answer: dict[str, Any] = self.broker.on(f"{TOPIC}/set/result")[-1].json()
        return answer

    def predictions(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.broker.on(f"{TOPIC}/prediction")]

    def predictions_after(self, n: int, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        self.broker.wait_for(lambda m: len(self.broker.on(f"{TOPIC}/prediction")) >= n + count,
                             timeout)  # fmt: skip
        return self.predictions()[n:]


def _config(tmp_path: Path, **sections: Any) -> Config:
    cfg = make_config(tmp_path / "state", **sections)
    assert isinstance(cfg.source, FilesSource)
    cfg.source.loop, cfg.source.fps = True, 20
    return cfg


@pytest.fixture
def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Daemon, MemoryBroker, Operator]]:
    cfg = _config(tmp_path, stats={"interval_s": 0})
    with in_memory_daemon(cfg, monkeypatch) as (d, broker):
        yield d, broker, Operator(broker)


def _quiet_after_answer(broker: MemoryBroker, op: Operator, frames: int = 8) -> int:
    """Predictions published while the daemon takes ``frames`` more frames (its stats snapshot,
    asked for by the stats command, counts them)."""
    before = len(broker.on(f"{TOPIC}/prediction"))

    def captured() -> int:
        assert op.send({"command": "stats"})["ok"]
        count: int = broker.on(f"{TOPIC}/stats")[-1].json()["frames"]["captured"]
        return count

    start, deadline = captured(), time.monotonic() + 20
    while captured() < start + frames:
        assert time.monotonic() < deadline, "the daemon took no frames"
        time.sleep(0.1)
    return len(broker.on(f"{TOPIC}/prediction")) - before


def test_each_setting_changes_what_is_published(
    running: tuple[Daemon, MemoryBroker, Operator],
) -> None:
    _d, broker, op = running
    first = op.predictions_after(0, 3)
    assert all(len(e["top"]) == 3 and e["reason"] == "every" for e in first)

    answer = op.send({"model": {"top_k": 1}})
    assert answer == {"schema": 1, "device": "cam-1", "id": op.n, "ok": True,
                      "applied": {"model": {"top_k": 1}}, "persisted": False,
                      "ts": answer["ts"]}  # fmt: skip
    n = len(op.predictions())
    assert all(len(e["top"]) == 1 for e in op.predictions_after(n + 1, 4)[1:])

    # nothing scores 1.0 (uint8 outputs top out at 0.99609)
    assert op.send({"publish": {"min_score": 1.0}})["ok"]
    assert _quiet_after_answer(broker, op) <= 1  # at most one frame already in flight
    assert _quiet_after_answer(broker, op) == 0

    bad: list[tuple[dict[str, Any] | bytes, str]] = [
        (b"{not json", "(top level): not valid JSON"),
        (b"[1, 2]", "(top level): must be a JSON object"),
        ({"publish": {"min_score": 0.0}, "model": {"top_k": "three"}},
         "model.top_k: Input should be a valid integer"),
        ({"publish": {"min_score": -0.5}},
         "publish.min_score: Input should be greater than or equal to 0"),
        ({"paused": "no"}, "paused: Input should be a valid boolean"),
    ]  # fmt: skip
    for message, reason in bad:
        answer = op.send(message)
        assert answer["ok"] is False and "applied" not in answer, answer
        assert any(e.startswith(reason) for e in answer["errors"]), (reason, answer)
    assert _quiet_after_answer(broker, op) == 0

    answer = op.send(
        {"publish": {"min_score": 0.0, "mode": "change", "agree_n": 2, "agree_m": 2,
                     "heartbeat_s": 0}}
    )  # fmt: skip
    assert answer["ok"], answer
    n = len(op.predictions())
    changes = op.predictions_after(n, 4)
    assert {e["reason"] for e in changes} == {"change"}
    assert all(a["label"] != b["label"] for a, b in itertools.pairwise(changes))

    assert op.send({"paused": True, "publish": {"mode": "every"}})["ok"]
    broker.wait_for(lambda m: m.topic == f"{TOPIC}/state" and m.payload == b"paused", 5)
    assert _quiet_after_answer(broker, op, 0) <= 1
    snapshot = broker.on(f"{TOPIC}/stats")[-1].json()
    assert snapshot["paused"] is True
    n = len(op.predictions())
    assert op.send({"paused": False})["ok"]
    assert {e["reason"] for e in op.predictions_after(n, 3)} == {"every"}
    assert broker.retained[f"{TOPIC}/availability"].payload == b"online"


def test_discovery_announces_reannounces_on_birth_and_removes_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, stats={"interval_s": 1})
    expected = set(OBJECT_IDS) - (set() if cpu_temperature() is not None else {"cpu_temperature"})

    def configs(broker: MemoryBroker) -> dict[str, Message]:
        return {
            t.split("/")[-2]: m
            for t, m in broker.retained.items()
            if t.startswith(DISCOVERY) and t.endswith("/config")
        }

    with in_memory_daemon(cfg, monkeypatch) as (_d, broker):
        op = Operator(broker)
        broker.wait_for(lambda m: m.topic == f"{TOPIC}/prediction", 20)
        announced = configs(broker)
        assert set(announced) == expected
        payloads = {oid: m.json() for oid, m in announced.items()}
        assert all(m.qos == 1 and m.retain for m in announced.values())
        assert len({c["unique_id"] for c in payloads.values()}) == len(payloads)
        dev = payloads["label"]["device"]
        assert dev["identifiers"] == ["edged_cam-1"] and "digits" in dev["model"]

        # Home Assistant's birth message: everything announced again (between two frames).
        broker.clear()
        broker.publish("homeassistant/status", "online")
        broker.wait_for(lambda m: m.topic == f"{DISCOVERY}/label/config", 10)
        again = {m.topic.split("/")[-2]: m.json() for m in broker.messages if
                 m.topic.startswith(DISCOVERY)}  # fmt: skip
        assert again == payloads

        # Removal on request: empty retained payloads; a birth is then ignored.
        assert op.send({"command": "ha_remove"})["ok"] is True
        assert configs(broker) == {}
        broker.clear()
        broker.publish("homeassistant/status", "online")
        op.send({"command": "stats"})  # a few frames later
        op.send({"command": "stats"})
        assert not [m for m in broker.messages if m.topic.startswith(DISCOVERY)]

        assert op.send({"command": "ha_announce"})["ok"] is True
        assert set(configs(broker)) == expected
    assert broker.retained[f"{TOPIC}/availability"].payload == b"stopped"


def test_discovery_off_and_control_off_publish_and_subscribe_nothing_of_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, homeassistant={"enabled": False}, control={"enabled": False})
    with in_memory_daemon(cfg, monkeypatch) as (_d, broker):
        broker.wait_for(lambda m: m.topic == f"{TOPIC}/prediction", 20)
        broker.publish(f"{TOPIC}/set", json.dumps({"command": "stats", "id": 1}))
        broker.publish("homeassistant/status", "online")
        broker.wait_for(lambda m: len(broker.on(f"{TOPIC}/prediction")) >= 5, 20)
    topics = {m.topic for m in broker.messages}
    assert not [t for t in topics if t.startswith("homeassistant/sensor")]
    assert f"{TOPIC}/set/result" not in topics


def test_persist_survives_a_restart_and_reset_forgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(tmp_path, stats={"interval_s": 0})
    overrides = cfg.state_dir / "overrides.json"
    with in_memory_daemon(cfg.model_copy(deep=True), monkeypatch) as (_d, broker):
        op = Operator(broker)
        op.predictions_after(0, 1)
        answer = op.send({"model": {"top_k": 1}, "persist": True})
        assert (answer["ok"], answer["persisted"]) == (True, True)
        assert json.loads(overrides.read_text()) == {"model": {"top_k": 1}}
        # Not persisted: lost at the restart.
        answer = op.send({"publish": {"mode": "change", "agree_n": 2, "agree_m": 2}})
        assert (answer["ok"], answer["persisted"]) == (True, False)
        assert json.loads(overrides.read_text()) == {"model": {"top_k": 1}}

    # A new daemon on the same state directory: the persisted setting only.
    restarted = MemoryBroker()
    with (
        caplog.at_level(logging.INFO),
        in_memory_daemon(cfg.model_copy(deep=True), monkeypatch, restarted) as (_d, broker),
    ):
        op = Operator(broker)
        events = op.predictions_after(0, 4)
        assert all(len(e["top"]) == 1 and e["reason"] == "every" for e in events), events
        assert f"settings from {overrides}" in caplog.text

        answer = op.send({"command": "reset"})
        assert answer["ok"] and answer["applied"] == {"command": "reset"}
        assert not overrides.exists()
        n = len(op.predictions())
        assert all(len(e["top"]) == 3 for e in op.predictions_after(n + 1, 3)[1:])
