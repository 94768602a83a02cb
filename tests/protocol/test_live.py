"""What a really running daemon publishes is what docs/mqtt-api.yaml documents.

One daemon (the demo model, a real Mosquitto) is driven through predictions, a health change,
stats, control messages (applied and refused, pause, Home Assistant removal and re-announcement,
Home Assistant's birth message), an update offer (accepted), a malformed offer and a refused
rollback command (rejected), and a clean stop. A subscriber to every topic of the broker
collects it all: each message must belong to a channel of the document (an undocumented topic
fails) and its payload must validate against that channel's JSON Schema (docs/schemas/)."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edged.protocol.channels import CHANNELS
from edged.publish.topics import chunk_topic, offer_topic
from edged.update.command import sign_command
from edged.update.transfer import make_offer
from tests.broker import Mosquitto, Received, Subscriber
from tests.daemon import SAMPLES, DaemonProcess, demo_config
from tests.update.bundles import make_bundle, make_keys

DOCS = Path(__file__).resolve().parents[2] / "docs"
KNOWN = {"prefix": "edged", "device_id": "cam-1", "discovery_prefix": "homeassistant"}
BASE = "edged/cam-1"
CLEARABLE = {c.id for c in CHANNELS if c.clearable}
MALFORMED = b'{"transfer_id": "x"}'  # an offer the test sends to be refused


class Documented:
    """The committed document: topic -> (channel id, message name, JSON Schema or None)."""

    def __init__(self) -> None:
        doc = yaml.safe_load((DOCS / "mqtt-api.yaml").read_text(encoding="utf-8"))
        self.channels: list[tuple[str, re.Pattern[str], str, str]] = []
        for cid, channel in doc["channels"].items():
            (ref,) = [m["$ref"] for m in channel["messages"].values()]
            name = ref.rsplit("/", 1)[1]
            content = doc["components"]["messages"][name]["contentType"]
            self.channels.append((cid, _pattern(channel["address"]), name, content))
        self.schemas = {
            p.stem: json.loads(p.read_text(encoding="utf-8"))
            for p in (DOCS / "schemas").glob("*.json")
        }

    def problems(self, m: Received) -> list[str]:
        found = [c for c in self.channels if c[1].match(m.topic)]
        if not found:
            return [f"{m.topic}: not in docs/mqtt-api.yaml"]
        cid, _, name, content = found[0]
        if not m.payload:
            return [] if cid in CLEARABLE else [f"{m.topic}: empty payload on {cid}"]
        if content == "application/octet-stream":
            return []
        try:
            text = m.payload.decode("utf-8")
            value = json.loads(text) if content == "application/json" else text
        except ValueError as err:
            return [f"{m.topic}: not {content}: {err}"]
        validator = jsonschema.Draft202012Validator(self.schemas[name])
        return [
            f"{m.topic} ({name}): {'/'.join(map(str, e.absolute_path))}: {e.message[:160]}"
            for e in validator.iter_errors(value)
        ]


def _pattern(address: str) -> re.Pattern[str]:
    out = []
    for part in re.split(r"(\{[a-z_]+\})", address):
        if part.startswith("{"):
            out.append(re.escape(KNOWN[part[1:-1]]) if part[1:-1] in KNOWN else "[^/]+")
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$")


class Client:
    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _json(m: Received) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(m.payload)
    return value


def test_everything_a_running_daemon_publishes_is_documented(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    documented = Documented()
    keys = make_keys(tmp_path / "keys")
    frames = tmp_path / "frames"
    frames.mkdir()
    for png in sorted(SAMPLES.glob("*.png"))[:4]:
        shutil.copy(png, frames / png.name)
    (frames / "digit-9-broken.png").write_bytes(b"not a png")  # skipped: a health message
    sub = subscriber_factory(broker, "#")
    client = Client(broker)
    cfg = demo_config(
        tmp_path,
        broker,
        source={"path": str(frames), "loop": True, "fps": 10},
        update={"trusted_keys": [str(keys.public_path)], "probation_frames": 20},
        stats={"interval_s": 1},
        homeassistant={"enabled": True},
        control={"enabled": True},
    )
    d = start_daemon(cfg)
    try:

        def on(suffix: str) -> Callable[[Received], bool]:
            return lambda m: m.topic == f"{BASE}/{suffix}"

        for suffix in ("prediction", "state", "health", "stats", "model", "availability"):
            sub.wait_for(on(suffix), 30)
        sub.wait_for(lambda m: m.topic.startswith("homeassistant/sensor/cam-1/"), 10)

        def answer(msg_id: str) -> dict[str, Any]:
            got = sub.wait_for(
                lambda m: m.topic == f"{BASE}/set/result" and _json(m).get("id") == msg_id, 15
            )
            return _json(got)

        requests: list[tuple[str, dict[str, Any], bool]] = [
            ("apply", {"publish": {"min_score": 0.0}, "model": {"top_k": 2}}, True),
            ("refuse", {"publish": {"min_score": 5}}, False),
            ("stats", {"command": "stats"}, True),
            ("pause", {"paused": True}, True),
            ("resume", {"paused": False}, True),
            ("remove", {"command": "ha_remove"}, True),
            ("announce", {"command": "ha_announce"}, True),
        ]
        for msg_id, body, ok in requests:
            client.publish(f"{BASE}/set", json.dumps({**body, "id": msg_id}))
            assert answer(msg_id)["ok"] is ok, msg_id
        sub.wait_for(lambda m: m.topic == f"{BASE}/state" and m.payload == b"paused", 5)
        sub.wait_for(lambda m: m.topic.startswith("homeassistant/") and not m.payload, 5)
        client.publish("homeassistant/status", "online")

        # An offer, accepted; a malformed offer and a refused command, rejected.
        offer, chunks = make_offer(
            make_bundle(2, keys), transfer_id="live2", name="digits", version=2,
            chunk_size=64 * 1024, target="cam-1", key=keys.private,
        )  # fmt: skip
        for i, chunk in enumerate(chunks):
            client.publish(chunk_topic(BASE, "live2", i), chunk, retain=True)
        client.publish(offer_topic(BASE), offer.to_json(), retain=True)

        def result(status: str) -> Callable[[Received], bool]:
            return lambda m: m.topic == f"{BASE}/update/result" and _json(m)["status"] == status

        accepted = _json(sub.wait_for(result("accepted"), 90))
        assert accepted["transfer_id"] == "live2"
        client.publish(f"{BASE}/update/offer", MALFORMED)
        cmd = sign_command(
            keys.private, command="rollback", device="cam-1", version=99, issued=time.time()
        )
        client.publish(f"{BASE}/update/command", json.dumps(cmd))
        sub.wait_for(lambda m: result("rejected")(m) and "command" in _json(m), 15)
        sub.wait_for(lambda m: result("rejected")(m) and "offer refused" in _json(m)["reason"], 15)
        assert d.terminate()[0] == 0
        sub.wait_for(lambda m: m.topic == f"{BASE}/availability" and m.payload == b"stopped", 5)
    finally:
        client.close()
    received = sub.messages
    problems = [p for m in received for p in documented.problems(m) if m.payload != MALFORMED]
    assert not problems, "\n".join(problems[:20])
    seen = {c[0] for m in received for c in documented.channels[:] if c[1].match(m.topic)}
    expected = {c[0] for c in documented.channels} - {"groupUpdateOffer", "groupUpdateChunk"}
    assert seen >= expected, f"not exercised: {sorted(expected - seen)}"


def test_an_undocumented_topic_or_a_wrong_payload_is_caught() -> None:
    documented = Documented()
    assert documented.problems(Received(f"{BASE}/secret", b"{}", False, 1))
    assert documented.problems(Received(f"{BASE}/availability", b"maybe", True, 1))
    assert documented.problems(Received(f"{BASE}/health", b'{"schema": 1}', True, 1))
    assert documented.problems(Received(f"{BASE}/prediction", b"", False, 1))  # not clearable
    assert not documented.problems(Received(f"{BASE}/availability", b"online", True, 1))
    assert not documented.problems(Received("homeassistant/sensor/cam-1/fps/config", b"", True, 1))
