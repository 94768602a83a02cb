"""Control over MQTT: settings and commands on edged/<id>/set, answers on .../set/result, seen
by a subscriber of the real daemon (a process) through a real Mosquitto."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edged.config import ModelConfig, PublishConfig
from edged.features.control import ControlError, write_atomically
from edged.features.settings import Settings, validate
from tests.broker import Mosquitto, Subscriber
from tests.daemon import ROOT, DaemonProcess, demo_config

TOPIC = "edged/cam-1"
PREDICTION = f"{TOPIC}/prediction"


class Operator:
    """Sends control messages and waits for each answer, like a script or Node-RED would."""

    def __init__(self, broker: Mosquitto, sub: Subscriber) -> None:
        self.sub = sub
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.n = 0

    def send(self, message: dict[str, Any] | bytes, timeout: float = 5) -> dict[str, Any]:
        self.n += 1
        if isinstance(message, dict):
            message = json.dumps({**message, "id": self.n}).encode()
        seen = len(self.results())
        self.client.publish(f"{TOPIC}/set", message, qos=1).wait_for_publish(5)
        self.sub.wait_count(seen + 1, timeout, lambda m: m.topic == f"{TOPIC}/set/result")
        return self.results()[seen]

    def results(self) -> list[dict[str, Any]]:
        return [
            json.loads(m.payload) for m in self.sub.messages if m.topic == f"{TOPIC}/set/result"
        ]

    def predictions_after(self, n: int, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """``count`` predictions after the first ``n`` (waits for them)."""
        msgs = self.sub.wait_count(n + count, timeout, lambda m: m.topic == PREDICTION)
        return [json.loads(m.payload) for m in msgs[n:]]

    def n_predictions(self) -> int:
        return sum(m.topic == PREDICTION for m in self.sub.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def operator(
    broker: Mosquitto, subscriber_factory: Callable[..., Subscriber]
) -> Iterator[Operator]:
    op = Operator(broker, subscriber_factory(broker, f"{TOPIC}/#"))
    yield op
    op.close()


def _looping(tmp_path: Path, broker: Mosquitto, **overrides: Any) -> dict[str, Any]:
    return demo_config(tmp_path, broker, source={"loop": True, "fps": 20}, **overrides)


def _quiet(op: Operator, seconds: float = 0.6) -> int:
    """Predictions published during ``seconds`` after the last answer."""
    n = op.n_predictions()
    time.sleep(seconds)
    return op.n_predictions() - n


# -- validation (no broker) --------------------------------------------------------------------

BASE = Settings(PublishConfig(), ModelConfig(path=Path("m.tflite")), False)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            {"publish": {"min_score": 2}},
            "publish.min_score: Input should be less than or equal to 1",
        ),
        ({"publish": {"min_score": "high"}}, "publish.min_score: Input should be a valid number"),
        ({"publish": {"mode": "sometimes"}}, "publish.mode: Input should be 'every' or 'change'"),
        ({"publish": {"agree_n": 9}}, "publish: agree_n must not exceed agree_m"),
        ({"publish": {"min_scor": 0.5}}, "publish.min_scor: Extra inputs are not permitted"),
        ({"publish": {"spool": False}}, "publish.spool: cannot be changed at runtime"),
        ({"model": {"path": "/x.tflite"}}, "model.path: cannot be changed at runtime"),
        ({"model": {"top_k": 0}}, "model.top_k: Input should be greater than or equal to 1"),
        ({"model": {"top_k": "three"}}, "model.top_k: Input should be a valid integer"),
        ({"publish": 0.5}, "publish: Input should be a valid dictionary"),
        ({"paused": "yes"}, "paused: Input should be a valid boolean"),
        ({"persist": 1, "paused": True}, "persist: Input should be a valid boolean"),
        ({"command": "reboot"}, "command: Input should be 'stats', 'ha_remove', 'ha_announce'"),
        ({"colour": 1}, "colour: Extra inputs are not permitted"),
        ({"command": "reset", "paused": False}, "command: reset cannot be combined"),
        ({}, "(top level): nothing to do"),
        ({"persist": True}, "(top level): nothing to do"),
    ],
)
def test_invalid_messages_name_the_key_path(message: dict[str, Any], expected: str) -> None:
    with pytest.raises(ControlError) as exc:
        validate(BASE, message)
    assert any(p.startswith(expected) for p in exc.value.problems), exc.value.problems


def test_valid_messages_are_coerced_like_the_config_file() -> None:
    settings, applied, command, persist = validate(
        BASE, {"publish": {"min_score": "0.5", "agree_n": 2}, "model": {"top_k": 1}, "paused": True}
    )
    assert settings.publish.min_score == 0.5 and settings.publish.agree_n == 2
    assert settings.model.top_k == 1 and settings.paused is True
    assert settings.publish.heartbeat_s == BASE.publish.heartbeat_s  # the rest as it was
    assert applied == {"publish": {"min_score": 0.5, "agree_n": 2}, "model": {"top_k": 1},
                       "paused": True}  # fmt: skip
    assert (command, persist) == (None, False)
    assert validate(BASE, {"command": "stats"})[1:3] == ({}, "stats")


def test_overrides_are_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state" / "overrides.json"
    write_atomically(path, {"model": {"top_k": 1}})
    write_atomically(path, {"model": {"top_k": 2}})
    assert json.loads(path.read_text()) == {"model": {"top_k": 2}}
    assert [p.name for p in path.parent.iterdir()] == ["overrides.json"]  # no temp files left


def test_new_sections_are_documented_in_the_example_config() -> None:
    from edged.config import ControlConfig, HomeAssistantConfig, StatsConfig

    text = (ROOT / "config" / "edged.example.toml").read_text()
    for section, model in (("homeassistant", HomeAssistantConfig), ("control", ControlConfig),
                           ("stats", StatsConfig)):  # fmt: skip
        block = text.split(f"\n[{section}]\n", 1)[1].split("\n[", 1)[0]
        for key, field in model.model_fields.items():
            assert field.description, key
            assert re.search(rf"^{key} = ", block, re.M), f"[{section}] {key} not in the example"


# -- the real daemon ---------------------------------------------------------------------------


def test_each_setting_changes_what_a_subscriber_sees(
    tmp_path: Path,
    broker: Mosquitto,
    operator: Operator,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    op = operator
    d = start_daemon(_looping(tmp_path, broker, stats={"interval_s": 0}))
    first = op.predictions_after(0, 3, 20)
    assert all(len(e["top"]) == 3 and e["reason"] == "every" for e in first)

    # top_k
    answer = op.send({"model": {"top_k": 1}})
    assert answer == {"schema": 1, "device": "cam-1", "id": op.n, "ok": True,
                      "applied": {"model": {"top_k": 1}}, "persisted": False,
                      "ts": answer["ts"]}  # fmt: skip
    after = op.predictions_after(op.n_predictions(), 5)
    assert all(len(e["top"]) == 1 for e in after)

    # threshold: nothing scores 1.0 (uint8 outputs top out at 0.99609)
    assert op.send({"publish": {"min_score": 1.0}})["ok"]
    assert _quiet(op) <= 1  # at most one frame already in flight
    assert _quiet(op) == 0

    # invalid messages: refused with reasons, and nothing changes (still silent, top_k 1)
    bad: list[tuple[dict[str, Any] | bytes, str]] = [
        (b"{not json", "(top level): not valid JSON"),
        (b"[1, 2]", "(top level): must be a JSON object"),
        ({"publish": {"min_score": 0.0}, "model": {"top_k": "three"}},
         "model.top_k: Input should be a valid integer"),
        ({"publish": {"min_score": 0.0, "threshold": 0.5}},
         "publish.threshold: Extra inputs are not permitted"),
        ({"publish": {"min_score": -0.5}},
         "publish.min_score: Input should be greater than or equal to 0"),
        ({"paused": "no"}, "paused: Input should be a valid boolean"),
    ]  # fmt: skip
    for message, reason in bad:
        answer = op.send(message)
        assert answer["ok"] is False and "applied" not in answer, answer
        assert any(e.startswith(reason) for e in answer["errors"]), (reason, answer)
    assert _quiet(op) == 0

    # mode (and the threshold back): change mode with 2 of 2 -> one event per pair of samples
    answer = op.send(
        {"publish": {"min_score": 0.0, "mode": "change", "agree_n": 2, "agree_m": 2,
                     "heartbeat_s": 0}}
    )  # fmt: skip
    assert answer["ok"], answer
    n = op.n_predictions()
    changes = op.predictions_after(n, 4)
    assert {e["reason"] for e in changes} == {"change"}
    assert all(a["label"] != b["label"] for a, b in itertools.pairwise(changes))
    assert all(len(e["top"]) == 1 for e in changes)  # top_k survived the bad messages

    # pause: no predictions, the retained state says so; resume: they continue
    assert op.send({"paused": True, "publish": {"mode": "every"}})["ok"]
    op.sub.wait_for(lambda m: m.topic == f"{TOPIC}/state" and m.text == "paused", 3)
    assert _quiet(op) <= 1
    assert _quiet(op, 1.0) == 0
    # Two snapshots: the second covers only the paused time.
    for _ in range(2):
        stats = op.send({"command": "stats"})
        assert stats["ok"] and stats["applied"] == {"command": "stats"}
        time.sleep(0.5)
    snapshot = json.loads([m for m in op.sub.messages if m.topic == f"{TOPIC}/stats"][-1].payload)
    assert snapshot["paused"] is True and snapshot["fps"] == 0.0
    assert snapshot["inference_ms"] == {"p50": None, "p99": None, "max": None, "n": 0}
    assert snapshot["frames"]["captured"] > snapshot["frames"]["processed"]  # taken, dropped
    n = op.n_predictions()  # counted while paused: a prediction right after resuming is in
    assert op.send({"paused": False})["ok"]
    resumed = op.predictions_after(n, 3)
    assert {e["reason"] for e in resumed} == {"every"}
    states = [m.text for m in op.sub.messages if m.topic == f"{TOPIC}/state"]
    after_pause = states[len(states) - states[::-1].index("paused") :]
    assert after_pause and after_pause[0] == resumed[0]["label"]
    assert d.alive(), d.log()
    assert "control message refused" in d.log()


# test_persist_survives_a_restart_and_reset_forgets: on the fast tier, tests/test_fast_daemon.py
