"""Home Assistant MQTT discovery: the daemon as a real process -> real Mosquitto -> a subscriber
that checks each config against the keys Home Assistant documents for MQTT sensors."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edged.features.homeassistant import AVAILABILITY_TEMPLATE, OBJECT_IDS, entity_configs
from edged.features.stats import cpu_temperature
from edged.publish.topics import Topics
from tests.broker import Mosquitto, Received, Subscriber
from tests.daemon import DaemonProcess, demo_config

TOPIC = "edged/cam-1"
DISCOVERY = "homeassistant/sensor/cam-1"

# https://www.home-assistant.io/integrations/sensor.mqtt/ (configuration variables), plus the
# discovery payload's "origin" (https://www.home-assistant.io/integrations/mqtt/): long keys.
SENSOR_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "default_entity_id", "device", "device_class", "enabled_by_default", "encoding",
    "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "last_reset_value_template", "name",
    "object_id", "options", "origin", "payload_available", "payload_not_available", "platform",
    "suggested_display_precision", "qos", "state_class", "state_topic", "unique_id",
    "unit_of_measurement", "value_template",
}  # fmt: skip
AVAILABILITY_KEYS = {"payload_available", "payload_not_available", "topic", "value_template"}
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
REQUIRED = {"state_topic", "unique_id", "name", "device", "availability", "origin"}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}


class _Attr(dict[str, Any]):
    """``value_json.a.b`` as Jinja resolves it, for the templates edged uses."""

    def __getattr__(self, name: str) -> Any:
        value = self[name]
        return _Attr(value) if isinstance(value, dict) else value


def render(template: str, payload: bytes) -> str:
    """A minimal Jinja stand-in for edged's one-expression templates (``{{ expr [| tojson] }}``):
    a Python expression once the braces and ``| tojson`` are taken off."""
    m = re.fullmatch(r"\{\{ (.*?)( \| tojson)? \}\}", template)
    assert m is not None, template
    text = payload.decode()
    try:
        value_json: Any = _Attr(json.loads(text))
    except ValueError:
        value_json = None
    result = eval(m.group(1), {}, {"value": text, "value_json": value_json})
    return json.dumps(result) if m.group(2) else str(result)


def check_config(oid: str, cfg: dict[str, Any]) -> None:
    assert set(cfg) <= SENSOR_KEYS, (oid, set(cfg) - SENSOR_KEYS)
    assert set(cfg) >= REQUIRED, (oid, REQUIRED - set(cfg))
    assert cfg["unique_id"] == f"edged_cam-1_{oid}"
    assert set(cfg["device"]) <= DEVICE_KEYS and set(cfg["origin"]) <= ORIGIN_KEYS
    assert "availability_topic" not in cfg  # one or the other, never both
    (avail,) = cfg["availability"]
    assert set(avail) <= AVAILABILITY_KEYS
    assert avail["topic"] == f"{TOPIC}/availability"
    assert (avail["payload_available"], avail["payload_not_available"]) == ("online", "offline")
    assert cfg.get("state_class", "measurement") in STATE_CLASSES
    assert cfg.get("entity_category", "diagnostic") == "diagnostic"  # sensors: diagnostic only
    for key in ("state_topic", "json_attributes_topic"):
        if key in cfg:
            assert cfg[key].startswith(f"{TOPIC}/") and "+" not in cfg[key]


def _publish(broker: Mosquitto, topic: str, payload: str | bytes, retain: bool = False) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def _configs(sub: Subscriber, n: int, timeout: float = 15) -> dict[str, Received]:
    def is_config(m: Received) -> bool:
        return m.topic.startswith(DISCOVERY) and m.topic.endswith("/config") and bool(m.payload)

    msgs = sub.wait_count(n, timeout, is_config)
    return {m.topic.split("/")[3]: m for m in msgs}


def test_entity_configs_use_only_documented_keys() -> None:
    topics = Topics("edged", "cam-1")
    full = entity_configs(topics, "digits", diagnostics=True, cpu_temperature=True, hw_version="Pi")
    assert set(full) == set(OBJECT_IDS)
    for oid, cfg in full.items():
        check_config(oid, cfg)
    temp = full["cpu_temperature"]
    assert (temp["device_class"], temp["unit_of_measurement"]) == ("temperature", "°C")
    assert render(temp["value_template"], b'{"cpu_temp_c": 51.2}') == "51.2"
    assert render(temp["value_template"], b'{"cpu_temp_c": null}') == "None"  # HA: unknown
    assert full["label"]["device"]["hw_version"] == "Pi"
    # Without stats (interval_s = 0), only what the prediction/state topics feed.
    bare = entity_configs(topics, "digits", diagnostics=False, cpu_temperature=True)
    assert set(bare) == {"label", "score"}
    # "stopped" (clean stop) and "offline" (last will) are both unavailable.
    assert {render(AVAILABILITY_TEMPLATE, v.encode()) for v in ("offline", "stopped")} == {
        "offline"
    }
    assert render(AVAILABILITY_TEMPLATE, b"online") == "online"


def test_discovery_announces_reannounces_on_birth_and_removes_on_request(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    sub = subscriber_factory(broker, "#")
    cfg = demo_config(tmp_path, broker, source={"loop": True, "fps": 10}, stats={"interval_s": 1})
    d = start_daemon(cfg)
    # The CPU temperature sensor only where the thermal zone is readable.
    expected = set(OBJECT_IDS) - (set() if cpu_temperature() is not None else {"cpu_temperature"})
    configs = _configs(sub, len(expected))
    assert set(configs) == expected
    payloads = {oid: json.loads(m.payload) for oid, m in configs.items()}
    for oid, c in payloads.items():
        check_config(oid, c)
        assert configs[oid].qos == 1
    assert len({c["unique_id"] for c in payloads.values()}) == len(payloads)
    devices = [c["device"] for c in payloads.values()]
    assert all(dev == devices[0] for dev in devices)
    dev = devices[0]
    assert dev["identifiers"] == ["edged_cam-1"] and dev["name"] == "cam-1"
    assert dev["manufacturer"] == "edged" and "digits" in dev["model"] and dev["sw_version"]
    diagnostics = {oid for oid, c in payloads.items() if c.get("entity_category") == "diagnostic"}
    assert diagnostics == set(payloads) - {"label", "score"}

    # Retained: a subscriber that comes later gets them all.
    late = subscriber_factory(broker, f"{DISCOVERY}/+/config")
    assert all(m.retain for m in _configs(late, len(configs)).values())

    # Each template reads a field the daemon really publishes on its state topic.
    last: dict[str, Received] = {}
    for topic in (f"{TOPIC}/prediction", f"{TOPIC}/stats", f"{TOPIC}/state"):

        def on_topic(m: Received, t: str = topic) -> bool:
            return m.topic == t

        last[topic] = sub.wait_for(on_topic, 10)
    assert render(payloads["score"]["value_template"], last[f"{TOPIC}/prediction"].payload)
    attrs = json.loads(
        render(payloads["label"]["json_attributes_template"], last[f"{TOPIC}/prediction"].payload)
    )
    assert set(attrs) == {"score", "top"} and attrs["top"][0]["score"] == attrs["score"]
    assert last[f"{TOPIC}/state"].text in [str(i) for i in range(10)]
    stats = last[f"{TOPIC}/stats"].payload
    assert float(render(payloads["fps"]["value_template"], stats)) > 0
    assert float(render(payloads["inference_ms"]["value_template"], stats)) > 0
    assert render(payloads["model_version"]["value_template"], stats) == "1"
    assert (
        json.loads(render(payloads["model_version"]["json_attributes_template"], stats))["name"]
        == "digits"
    )

    # Home Assistant's birth message: everything announced again.
    sub.clear()
    _publish(broker, "homeassistant/status", "online")
    again = _configs(sub, len(configs), 5)
    assert {oid: json.loads(m.payload) for oid, m in again.items()} == payloads

    # Removal on request: an empty retained payload on every config topic.
    sub.clear()
    _publish(broker, f"{TOPIC}/set", json.dumps({"command": "ha_remove", "id": "rm"}))
    result = sub.wait_for(lambda m: m.topic == f"{TOPIC}/set/result", 5)
    assert json.loads(result.payload)["ok"] is True
    removed = sub.wait_count(
        len(OBJECT_IDS), 5, lambda m: m.topic.startswith(DISCOVERY) and m.payload == b""
    )
    assert {m.topic for m in removed} >= {f"{DISCOVERY}/{oid}/config" for oid in configs}
    gone = subscriber_factory(broker, f"{DISCOVERY}/+/config")
    _publish(broker, "homeassistant/status", "online")  # ignored while removed
    time.sleep(0.7)
    assert gone.messages == [] and not [m for m in sub.messages if m.payload and
                                         m.topic.startswith(DISCOVERY)]  # fmt: skip

    # And back on request.
    _publish(broker, f"{TOPIC}/set", json.dumps({"command": "ha_announce"}))
    _configs(gone, len(configs), 5)
    assert d.alive(), d.log()

    # A clean stop leaves "stopped", which the availability template makes unavailable.
    rc, _ = d.terminate()
    assert rc == 0
    avail = sub.wait_for(lambda m: m.topic == f"{TOPIC}/availability" and m.text == "stopped", 3)
    template = payloads["label"]["availability"][0]["value_template"]
    assert render(template, avail.payload) == "offline"


def test_discovery_off_publishes_nothing_under_the_prefix(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    sub = subscriber_factory(broker, "#")
    cfg = demo_config(tmp_path, broker, homeassistant={"enabled": False})
    d = start_daemon(cfg)
    assert d.wait(30) == 0, d.log()
    assert sub.wait_for(lambda m: m.topic == f"{TOPIC}/prediction")
    assert not [m.topic for m in sub.messages if m.topic.startswith("homeassistant/")]
