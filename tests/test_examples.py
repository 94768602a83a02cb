"""examples/: the paho subscriber and the ``mosquitto_sub`` one-liner as real processes against a
real broker and the real daemon; the Node-RED flow's structure and rules."""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edged.publish.topics import Topics
from tests.broker import Mosquitto, Subscriber
from tests.daemon import ROOT, DaemonProcess, demo_config, write_config

EXAMPLES = ROOT / "examples"
SUBSCRIBER = EXAMPLES / "subscriber.py"
FLOW = EXAMPLES / "node-red-flow.json"
PREDICTION_TOPIC = Topics("edged", "+").prediction  # what the docs and the examples use
MQTT_API = ROOT / "docs" / "mqtt-api.md"  # where the README sends subscribers
AVAILABILITY_TOPIC = Topics("edged", "+").availability

# The docs' prediction event, as the daemon serialises it (compact JSON).
EVENT = {
    "schema": 1,
    "device": "kitchen-cam",
    "seq": 42,
    "ts": "2026-11-22T10:15:03.123Z",
    "reason": "change",
    "label": "cat",
    "score": 0.91406,
    "top": [{"label": "cat", "score": 0.91406}, {"label": "dog", "score": 0.05078}],
    "model": {"name": "pets", "version": 3, "sha256": "9f2c"},
    "latency_ms": {"preprocess": 0.21, "invoke": 11.8, "postprocess": 0.03, "total": 14.2},
    "frame": "img_0042.jpg",
}


class LineReader:
    """The lines a process prints, read on a thread so a test can wait with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))

    def next(self, timeout: float, *, while_waiting: Callable[[], object] | None = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if while_waiting is not None:
                while_waiting()
            try:
                return self._lines.get(timeout=0.2)
            except queue.Empty:
                continue
        raise AssertionError(f"no output line within {timeout} s")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def start_subscriber(
    broker: Mosquitto, processes: list[subprocess.Popen[str]]
) -> tuple[subprocess.Popen[str], LineReader]:
    proc = subprocess.Popen(
        [sys.executable, str(SUBSCRIBER), broker.host, str(broker.port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    processes.append(proc)
    assert proc.stdout is not None
    return proc, LineReader(proc.stdout)


# -- examples/subscriber.py ----------------------------------------------------------------


def test_subscriber_prints_the_daemons_predictions(
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    proc, lines = start_subscriber(broker, processes)
    published = subscriber_factory(broker, PREDICTION_TOPIC, qos=1)
    # The daemon loops over the sample images, so predictions keep coming however long the
    # example takes to connect and subscribe.
    cfg = demo_config(tmp_path, broker, source={"loop": True, "fps": 20})
    daemon = DaemonProcess(write_config(tmp_path / "edged.toml", cfg))
    try:
        line = lines.next(30)
        events = [json.loads(m.payload) for m in published.wait_count(1, timeout=10)]
    finally:
        daemon.close()
    assert proc.poll() is None, "the subscriber exited"
    device, label, score = line.split(" ")
    assert device == "cam-1"
    assert label in {str(d) for d in range(10)}, line
    assert 0.0 <= float(score) <= 1.0
    # What it printed is what the daemon published.
    assert (device, label, float(score)) in {(e["device"], e["label"], e["score"]) for e in events}


def test_subscriber_prints_device_label_score_of_an_event(
    broker: Mosquitto, processes: list[subprocess.Popen[str]]
) -> None:
    proc, lines = start_subscriber(broker, processes)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        # Non-retained, like the daemon's: publish until the example (subscribing meanwhile)
        # prints the first one.
        line = lines.next(
            20,
            while_waiting=lambda: pub.publish(
                Topics("edged", "kitchen-cam").prediction,
                json.dumps(EVENT, separators=(",", ":")),
                qos=1,
            ),
        )
    finally:
        pub.loop_stop()
        pub.disconnect()
    assert line == "kitchen-cam cat 0.91406"
    assert proc.poll() is None


def test_docs_show_the_subscriber_as_shipped() -> None:
    page = MQTT_API.read_text(encoding="utf-8")
    section = page.split("\n## Consume it\n", 1)[1].split("\n## ", 1)[0]
    (shown,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    shipped = SUBSCRIBER.read_text(encoding="utf-8")
    body = shipped.split('"""', 2)[2].lstrip("\n")  # without the module docstring
    assert shown == body


def test_mosquitto_sub_one_liner_shows_predictions(broker: Mosquitto, tmp_path: Path) -> None:
    mosquitto_sub = shutil.which("mosquitto_sub")
    if mosquitto_sub is None:
        pytest.skip("mosquitto_sub is not installed (apt-get install mosquitto-clients)")
    # docs/mqtt-api.md's `mosquitto_sub -h localhost -t 'edged/+/prediction' -v`, on the test port.
    argv = [mosquitto_sub, "-h", broker.host, "-p", str(broker.port), "-t", PREDICTION_TOPIC, "-v"]
    sub = subprocess.Popen(
        [*argv, "-C", "1", "-W", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cfg = demo_config(tmp_path, broker, source={"loop": True, "fps": 20})
    daemon = DaemonProcess(write_config(tmp_path / "edged.toml", cfg))
    try:
        out, err = sub.communicate(timeout=40)
    finally:
        daemon.close()
        if sub.poll() is None:
            sub.kill()
    assert sub.returncode == 0, err
    topic, _, payload = out.strip().partition(" ")
    assert topic == Topics("edged", "cam-1").prediction
    assert json.loads(payload)["device"] == "cam-1"


# -- examples/node-red-flow.json -----------------------------------------------------------

# Node types that ship with Node-RED itself (@node-red/nodes), so the flow imports without
# installing anything from the palette.
NODE_RED_CORE_TYPES = {
    # flow structure and config
    "tab", "group", "subflow", "junction", "comment", "global-config",
    "mqtt-broker", "tls-config", "http proxy", "websocket-listener", "websocket-client",
    # common
    "inject", "debug", "complete", "catch", "status", "link in", "link out", "link call",
    # function
    "function", "switch", "change", "range", "template", "delay", "trigger", "exec", "rbe",
    # network
    "mqtt in", "mqtt out", "http in", "http response", "http request", "websocket in",
    "websocket out", "tcp in", "tcp out", "tcp request", "udp in", "udp out",
    # parsers, sequence, storage
    "csv", "html", "json", "xml", "yaml", "split", "join", "sort", "batch",
    "file", "file in", "watch",
}  # fmt: skip
CONFIG_TYPES = {"mqtt-broker", "tls-config", "http proxy", "websocket-listener", "global-config"}


@pytest.fixture(scope="module")
def flow() -> list[dict[str, Any]]:
    nodes = json.loads(FLOW.read_text(encoding="utf-8"))
    assert isinstance(nodes, list) and nodes, "a flow export is a JSON array of nodes"
    assert all(isinstance(n, dict) for n in nodes)
    return nodes


def by_id(flow: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in flow}


def test_flow_nodes_have_unique_ids_and_core_types(flow: list[dict[str, Any]]) -> None:
    ids = [n.get("id") for n in flow]
    assert all(isinstance(i, str) and i for i in ids)
    assert len(set(ids)) == len(ids), "duplicate node ids"
    unknown = {n["type"] for n in flow} - NODE_RED_CORE_TYPES
    assert not unknown, f"not Node-RED core node types: {unknown}"


def test_flow_wires_and_tabs_point_at_existing_nodes(flow: list[dict[str, Any]]) -> None:
    nodes = by_id(flow)
    tabs = {i for i, n in nodes.items() if n["type"] == "tab"}
    assert tabs, "the flow has its own tab"
    for n in flow:
        if n["type"] == "tab":
            continue
        if n["type"] in CONFIG_TYPES:
            # Config nodes have no position or wires (Node-RED's flow format).
            assert not {"x", "y", "wires"} & n.keys(), n["id"]
            continue
        assert n.get("z") in tabs, f"{n['id']}: z must name a tab of this flow"
        assert isinstance(n["wires"], list), n["id"]
        for port in n["wires"]:
            for target in port:
                assert target in nodes, f"{n['id']} is wired to missing node {target}"
                assert nodes[target]["type"] not in CONFIG_TYPES | {"tab"}, target
                assert nodes[target]["z"] == n["z"], "wires stay on one tab"
        if "outputs" in n:
            assert len(n["wires"]) == int(n["outputs"]), f"{n['id']}: one wire list per output"


def test_flow_subscribes_to_the_documented_topics(flow: list[dict[str, Any]]) -> None:
    nodes = by_id(flow)
    mqtt_in = [n for n in flow if n["type"] == "mqtt in"]
    assert {n["topic"] for n in mqtt_in} == {PREDICTION_TOPIC, AVAILABILITY_TOPIC}
    for n in mqtt_in:
        assert nodes[n["broker"]]["type"] == "mqtt-broker"
        assert n["qos"] in {"1", "2"}, "the daemon publishes at QoS 1"
    assert PREDICTION_TOPIC in MQTT_API.read_text(encoding="utf-8")
    assert PREDICTION_TOPIC in (ROOT / "README.md").read_text(encoding="utf-8")


def downstream(flow: list[dict[str, Any]], start: str) -> list[str]:
    """Node types along the first output of each node from ``start`` (a straight pipeline)."""
    nodes = by_id(flow)
    types, node = [], nodes[start]
    while True:
        types.append(node["type"])
        if not node.get("wires") or not node["wires"][0]:
            return types
        node = nodes[node["wires"][0][0]]


def switch_passes(switch: dict[str, Any], payload: dict[str, Any]) -> bool:
    """Node-RED's switch rules used here (gte/gt/lt/lte on a msg property) on one message."""
    value: Any = {"payload": payload}
    for key in switch["property"].split("."):
        value = value[key]
    ops: dict[str, Callable[[float, float], bool]] = {
        "gte": lambda a, b: a >= b,
        "gt": lambda a, b: a > b,
        "lte": lambda a, b: a <= b,
        "lt": lambda a, b: a < b,
    }
    rule = switch["rules"][0]
    assert switch["propertyType"] == "msg" and rule["vt"] == "num" and rule["t"] in ops
    return ops[rule["t"]](float(value), float(rule["v"]))


def test_flow_parses_predictions_and_passes_scores_from_0_8(flow: list[dict[str, Any]]) -> None:
    (pred_in,) = [n for n in flow if n["type"] == "mqtt in" and n["topic"] == PREDICTION_TOPIC]
    assert pred_in["datatype"] == "utf8"
    assert downstream(flow, pred_in["id"]) == ["mqtt in", "json", "switch", "debug"]
    nodes = by_id(flow)
    json_node = nodes[pred_in["wires"][0][0]]
    assert json_node["property"] == "payload" and json_node["action"] == "obj"
    switch = nodes[json_node["wires"][0][0]]
    assert switch["property"] == "payload.score"
    assert switch_passes(switch, EVENT)  # 0.91406
    assert switch_passes(switch, {**EVENT, "score": 0.8})
    assert not switch_passes(switch, {**EVENT, "score": 0.79})


def test_flow_shows_availability(flow: list[dict[str, Any]]) -> None:
    (avail_in,) = [n for n in flow if n["type"] == "mqtt in" and n["topic"] == AVAILABILITY_TOPIC]
    assert downstream(flow, avail_in["id"]) == ["mqtt in", "debug"]
