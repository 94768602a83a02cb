"""The multi-tenant ACL of docs/fleets.md, read from the page, on a real Mosquitto: a real
daemon of tenant acme publishes and takes a group push from acme's operator; tenant globex
sees none of it and acme's device cannot write into globex's topics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.broker import Mosquitto, Subscriber
from tests.daemon import DEMO_MODEL, ROOT, SAMPLES, DaemonProcess, write_config
from tests.update.bundles import make_bundle, make_keys

DOC = ROOT / "docs" / "fleets.md"
USERS = ("acme-cam-1", "acme-ops", "globex-cam-1", "globex-ops")
PW = "s3cret-pw"


def doc_acl() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- acl example[^>]*-->\n```text\n(.*?)```", text, re.S)
    assert m, "docs/fleets.md has no ACL example block"
    return m.group(1)


def test_the_documented_tenant_acl_isolates_tenants(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = mosquitto_factory(users={u: PW for u in USERS}, acl=doc_acl())
    keys = make_keys(tmp_path / "keys")
    pw = tmp_path / "pw"
    pw.write_text(PW)
    acme = Subscriber(broker.host, broker.port, "#", username="acme-ops", password=PW, qos=1)
    globex = Subscriber(broker.host, broker.port, "#", username="globex-ops", password=PW)
    cfg = {
        "device_id": "acme-cam-1",
        "state_dir": str(tmp_path / "state"),
        "source": {"type": "files", "path": str(SAMPLES), "fps": 4, "loop": True},
        "model": {"path": str(DEMO_MODEL)},
        "mqtt": {
            "host": broker.host, "port": broker.port, "topic_prefix": "acme",
            "username": "acme-cam-1", "password_file": str(pw),
        },
        "update": {"trusted_keys": [str(keys.public_path)], "groups": ["lab"]},
        "homeassistant": {"enabled": True, "discovery_prefix": "acme-ha"},
        "stats": {"interval_s": 2},
    }  # fmt: skip
    daemon = DaemonProcess(write_config(tmp_path / "acme.toml", cfg))
    try:
        acme.wait_for(lambda m: m.topic == "acme/acme-cam-1/prediction", 30)
        acme.wait_for(lambda m: m.topic == "acme/acme-cam-1/update/request", 10)
        acme.wait_for(lambda m: m.topic.startswith("acme-ha/sensor/acme-cam-1/"), 10)
        acme.wait_for(lambda m: m.topic == "acme/acme-cam-1/stats", 10)
        bundle = tmp_path / "v2.edgb"
        bundle.write_bytes(make_bundle(2, keys))
        out = subprocess.run(
            [
                sys.executable, "-m", "tools", "push", str(bundle), "--key",
                str(keys.private_path), "--group", "lab", "--devices", "acme-cam-1",
                "--prefix", "acme", "--host", broker.host, "--port", str(broker.port),
                "--username", "acme-ops", "--password-file", str(pw), "--timeout", "60",
                "--no-wait-probation",
            ],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.split("\n")[1].split()[:2] == ["acme-cam-1", "accepted"]
        # acme's device cannot write into globex's topics, nor another acme device's.
        intruder = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        intruder.username_pw_set("acme-cam-1", PW)
        intruder.connect(broker.host, broker.port)
        intruder.loop_start()
        infos = [
            intruder.publish("globex/globex-cam-1/prediction", b"{}", qos=1),
            intruder.publish("acme/acme-cam-2/prediction", b"{}", qos=1),
            intruder.publish("acme/acme-cam-1/update/offer", b"{}", qos=1, retain=True),
        ]
        for info in infos:
            info.wait_for_publish(5)
        intruder.disconnect()
        intruder.loop_stop()
        ok = acme.wait_for(lambda m: m.topic == "acme/acme-cam-1/update/result", 5)
        assert json.loads(ok.payload)["status"] == "accepted"
        assert not [m for m in globex.messages if not m.topic.startswith("globex")]
        assert not [m for m in acme.messages if m.topic.startswith("globex")]
        assert not [m for m in acme.messages if m.topic == "acme/acme-cam-2/prediction"]
        assert not [m for m in acme.messages if m.topic.endswith("/offer") and m.payload == b"{}"]
        assert daemon.alive()
        assert "not authorized" not in daemon.log().lower(), daemon.log()[-2000:]
    finally:
        daemon.close()
        acme.close()
        globex.close()
