"""edged on a real 3-node RabbitMQ cluster (Debian ``rabbitmq-server``, MQTT plugin, MQTT
3.1.1): daemons on different nodes, predictions across nodes, and a group push that reaches
a device on every node -- one of them offline during the push, connecting later to another
node. The cluster keeps retained messages per node and sends none for wildcard
subscriptions: the device asks (``update/request``) and the push tool re-sends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.daemon import ROOT
from tests.fleet.harness import GROUP, Fleet, Watcher, device_id
from tests.rabbitmq import RabbitCluster
from tests.update.bundles import make_bundle, make_keys


def _retained_seen(host: str, port: int, topic: str, wait: float = 1.5) -> list[bytes]:
    got: list[bytes] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
    c.on_message = lambda _c, _u, m: got.append(bytes(m.payload)) if m.retain else None
    c.connect(host, port)
    c.loop_start()
    c.subscribe(topic, 1)
    time.sleep(wait)
    c.disconnect()
    c.loop_stop()
    return got


def test_the_cluster_is_what_the_protocol_must_cope_with(rabbit_cluster: RabbitCluster) -> None:
    """Three running nodes; a retained message is seen on its own node by an exact-topic
    subscriber only: not on another node, not through a wildcard (why edged asks)."""
    n1, n2, _n3 = rabbit_cluster.nodes
    assert len(rabbit_cluster.cluster_nodes()) == 3
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
    c.connect(n1.host, n1.port)
    c.loop_start()
    c.publish("probe/retained/x", b"kept", qos=1, retain=True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()
    assert _retained_seen(n1.host, n1.port, "probe/retained/x") == [b"kept"]
    assert _retained_seen(n2.host, n2.port, "probe/retained/x") == []
    assert _retained_seen(n1.host, n1.port, "probe/retained/+") == []


def test_predictions_and_a_group_push_cross_the_cluster(
    rabbit_cluster: RabbitCluster, tmp_path: Path
) -> None:
    nodes = rabbit_cluster.nodes
    keys = make_keys(tmp_path / "keys")
    endpoints = [(n.host, n.port) for n in nodes]
    fleet = Fleet(tmp_path, 4, endpoints, keys, protocol="3.1.1", fps=2.0)
    # Device 3 would go to node 1 (3 % 3 == 0); it connects to node 3 instead, later.
    late = 3
    watch = Watcher(nodes[1].host, nodes[1].port, "edged/#", protocol="3.1.1")
    try:
        fleet.start_all(skip={late})
        on = [device_id(i) for i in range(3)]

        def predicted(d: str) -> bool:
            return any(m.topic == f"edged/{d}/prediction" for m in watch.messages)

        watch.wait_until(lambda: all(predicted(d) for d in on), 90, "predictions on node 2")
        bundle = tmp_path / "v2.edgb"
        bundle.write_bytes(make_bundle(2, keys))
        ids = [device_id(i) for i in range(4)]
        cmd = [
            sys.executable, "-m", "tools", "push", str(bundle), "--key", str(keys.private_path),
            "--host", nodes[0].host, "--port", str(nodes[0].port), "--protocol", "3.1.1",
            "--group", GROUP, "--devices", *ids, "--no-wait-probation", "--timeout", "90",
            "--reoffer-s", "5", "--chunk-size", "2048",  # 18 chunks: asked 16, then 2
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def accepted(d: str) -> bool:
            for m in watch.messages:
                if m.topic == f"edged/{d}/update/result":
                    r = json.loads(m.payload)
                    if r.get("version") == 2 and r.get("status") == "accepted":
                        return True
            return False

        watch.wait_until(lambda: all(accepted(d) for d in on), 90, "the online devices accept")
        fleet.endpoints = [endpoints[2]] * 4  # the late device comes up on node 3
        fleet.start(late)
        out, err = proc.communicate(timeout=150)
        table = out.decode().splitlines()
        assert proc.returncode == 0, out.decode() + err.decode()
        rows = {line.split()[0]: line.split()[1] for line in table[1:]}
        assert rows.keys() == set(ids), out.decode()
        assert set(rows.values()) <= {"accepted", "confirmed"}, out.decode()
        assert accepted(device_id(late))
        # Devices off node 1 and the late one asked: it was needed (every one of the 18
        # chunks at least once: a re-send on the group's topics reaches every member).
        assert "re-sent the offer" in err.decode()
        resent = int(err.decode().split("to silent targets, and ")[1].split()[0])
        assert resent >= 18, err.decode()
        watch.wait_until(
            lambda: any(
                m.topic == f"edged/{device_id(late)}/prediction"
                and json.loads(m.payload)["model"]["version"] == 2
                for m in watch.messages
            ),
            30,
            "the late device predicts with v2",
        )
        assert fleet.dead() == []
    except BaseException:
        for i, p in fleet.procs.items():
            print(f"--- {device_id(i)}\n{p.log()[-3000:]}")
        raise
    finally:
        fleet.close()
        watch.close()
