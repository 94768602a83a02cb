"""Over-the-air updates end to end: ``python -m tools push`` (in-process) -> real Mosquitto ->
the daemon as a real process, watched by a subscriber like an operator would."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.broker import Mosquitto, Received, Subscriber
from tests.daemon import SAMPLES, DaemonProcess, demo_config, write_config
from tests.update.bundles import Keys, make_bundle, make_keys, replace_member
from tools import push as push_tool

TOPIC = "edged/cam-1"
FRAMES = sorted(p.name for p in SAMPLES.glob("*.png"))


def _json(m: Received) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(m.payload)
    return data


class Ota:
    """One broker, one signing key, a subscriber to everything the device says."""

    def __init__(
        self,
        tmp_path: Path,
        broker: Mosquitto,
        sub: Subscriber,
        keys: Keys,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self.tmp_path, self.broker, self.sub, self.keys = tmp_path, broker, sub, keys
        self.capsys = capsys
        self.procs: list[DaemonProcess] = []

    def start_daemon(self, **update: Any) -> DaemonProcess:
        cfg = demo_config(
            self.tmp_path,
            self.broker,
            source={"loop": True, "fps": 10},
            update={
                "trusted_keys": [str(self.keys.public_path)],
                "probation_frames": 20,
                **update,
            },
        )
        path = write_config(self.tmp_path / f"edged-{len(self.procs)}.toml", cfg)
        self.procs.append(DaemonProcess(path))
        return self.procs[-1]

    def broker_args(self, timeout: float = 30) -> list[str]:
        return [
            "--host",
            self.broker.host,
            "--port",
            str(self.broker.port),
            "--timeout",
            str(timeout),
            "--probation-timeout",
            "30",
        ]

    def push(
        self, data: bytes, *args: str, timeout: float = 30
    ) -> tuple[int, dict[str, list[str]]]:
        """Run the push tool on ``data``; (exit status, {device: [status, version, reason]})."""
        path = self.tmp_path / f"bundle-{time.monotonic_ns()}.edgb"
        path.write_bytes(data)
        target = list(args) or ["--device", "cam-1"]
        key = ["--key", str(self.keys.private_path)]
        rc = push_tool.main([str(path), *target, *key, *self.broker_args(timeout)])
        return rc, self.table()

    def send(self, data: bytes, version: int = 2) -> dict[str, list[str]]:
        """Publish ``data`` as is (the tool's own checks of the bundle skipped: what a
        corrupted transfer or a hostile publisher would deliver)."""
        args = push_tool.build_parser().parse_args(
            ["x", "--device", "cam-1", "--key", str(self.keys.private_path), *self.broker_args()]
        )
        return {d: list(row) for d, row in push_tool.send(args, data, "digits", version).items()}

    def table(self) -> dict[str, list[str]]:
        out = self.capsys.readouterr().out.splitlines()
        rows = [re.split(r"\s{2,}", line.strip(), maxsplit=3) for line in out[1:]]
        return {r[0]: r[1:] + [""] * (4 - len(r)) for r in rows if r}

    def predictions(self) -> list[dict[str, Any]]:
        return [_json(m) for m in self.sub.messages if m.topic == f"{TOPIC}/prediction"]

    def wait_version(self, version: int, n: int = 1, timeout: float = 20) -> None:
        self.sub.wait_count(
            n,
            timeout,
            lambda m: m.topic == f"{TOPIC}/prediction" and _json(m)["model"]["version"] == version,
        )

    def result(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        m = self.sub.wait_for(
            lambda m: m.topic == f"{TOPIC}/update/result" and pred(_json(m)), timeout
        )
        return _json(m)

    def results(self) -> list[dict[str, Any]]:
        return [_json(m) for m in self.sub.messages if m.topic == f"{TOPIC}/update/result"]

    def model_state(self) -> dict[str, Any]:
        return [_json(m) for m in self.sub.messages if m.topic == f"{TOPIC}/model"][-1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def ota_factory(
    tmp_path: Path,
    subscriber_factory: Callable[..., Subscriber],
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[[Mosquitto], Ota]]:
    made: list[Ota] = []

    def make(broker: Mosquitto) -> Ota:
        made.append(Ota(tmp_path, broker, subscriber_factory(broker, f"{TOPIC}/#"), keys, capsys))
        return made[-1]

    yield make
    for o in made:
        for p in o.procs:
            p.close()


@pytest.fixture
def ota(ota_factory: Callable[[Mosquitto], Ota], broker: Mosquitto) -> Ota:
    return ota_factory(broker)


def _assert_no_frame_lost(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for a, b in itertools.pairwise(events):  # the looping source's order, no gaps
        assert FRAMES.index(b["frame"]) == (FRAMES.index(a["frame"]) + 1) % len(FRAMES), (a, b)


def test_push_swaps_the_model_between_frames_without_losing_one_and_survives_a_restart(
    ota: Ota, keys: Keys
) -> None:
    d = ota.start_daemon()
    ota.wait_version(1, n=5)
    rc, table = ota.push(make_bundle(2, keys))
    assert (rc, table) == (0, {"cam-1": ["confirmed", "2", "passed its probation"]})
    ota.wait_version(2, n=10)
    state = ota.model_state()
    assert state["active"]["version"] == 2 and state["previous"]["version"] == 1
    assert state["last_update"]["status"] == "confirmed" and state["active"]["confirmed"]
    rc, _took = d.terminate()
    assert rc == 0
    log = d.log()
    processed, published = map(
        int, re.findall(r"stopped after (\d+) frames \((\d+) published\)", log)[0]
    )
    time.sleep(0.3)
    events = ota.predictions()
    assert processed == published == len(events)
    _assert_no_frame_lost(events)
    versions = [e["model"]["version"] for e in events]
    switch = versions.index(2)
    assert versions == [1] * switch + [2] * (len(versions) - switch) and switch >= 5
    assert events[switch]["model"]["sha256"] == events[0]["model"]["sha256"]  # same tflite
    timing = re.search(r"validated in ([\d.]+) s.*swapped (\d+) ms after", log)
    assert timing is not None, log
    print(f"\nswap: {timing.group(0)}; {len(events)} frames, 0 lost")

    ota.sub.clear()
    d2 = ota.start_daemon()
    ota.sub.wait_for(lambda m: m.topic == f"{TOPIC}/prediction", 20)
    assert {e["model"]["version"] for e in ota.predictions()} == {2}
    assert "starting with stored model digits v2" in d2.log()
    time.sleep(0.5)
    assert ota.results() == []  # the retained offer again: answered already, no result


def test_a_bundle_over_the_brokers_packet_limit_arrives_in_chunks(
    ota_factory: Callable[[Mosquitto], Ota],
    mosquitto_factory: Callable[..., Mosquitto],
    keys: Keys,
) -> None:
    ota = ota_factory(mosquitto_factory(max_packet_size=262144))
    big = make_bundle(2, keys, pad=400_000)
    assert len(big) > 262144
    ota.start_daemon()
    ota.wait_version(1)
    rc, _ = ota.push(big, "--device", "cam-1", "--chunk-size", "300000")
    assert rc == 2  # refused up front: the broker's CONNACK says 262144
    rc, table = ota.push(big)
    assert (rc, table["cam-1"][:2]) == (0, ["confirmed", "2"])
    ota.wait_version(2, n=3)


def test_a_device_offline_during_a_group_push_gets_it_when_it_comes_back(
    ota: Ota, keys: Keys
) -> None:
    rc, table = ota.push(make_bundle(2, keys), "--group", "lab", "--devices", "cam-1", timeout=1)
    assert (rc, table) == (1, {"cam-1": ["no answer", "-", ""]})
    ota.start_daemon(groups=["lab"])  # the push tool is gone; the retained messages remain
    ota.wait_version(2, n=3)
    result = ota.result(lambda r: r["status"] == "accepted")
    assert result["version"] == 2 and result["device"] == "cam-1"
    assert ota.result(lambda r: r["status"] == "confirmed")["transfer_id"] == result["transfer_id"]
    assert ota.model_state()["active"]["version"] == 2


def _resign(data: bytes, key_id: str, signer: Keys) -> bytes:
    """Claim ``key_id`` but sign with another key: a bad signature."""
    manifest = zipfile.ZipFile(io.BytesIO(data)).read("manifest.json")
    sig = base64.b64encode(signer.private.sign(manifest)).decode()
    return replace_member(
        data, "signature.json", json.dumps({"key_id": key_id, "signature": sig}).encode()
    )


def test_refused_bundles_leave_the_old_model_serving_and_say_why(
    ota: Ota, keys: Keys, tmp_path: Path
) -> None:
    ota.start_daemon(max_bundle_bytes=200_000)
    ota.wait_version(1, n=3)
    other = make_keys(tmp_path / "other", "other")
    good = make_bundle(2, keys)
    cases = {
        "bad signature": (_resign(good, keys.key_id, other), f"bad signature (key {keys.key_id})"),
        "unknown key": (make_bundle(2, other), f"signed by unknown key {other.key_id}"),
        "unsigned": (make_bundle(2, None), "bundle is not signed"),
        "garbage model": (
            make_bundle(2, keys, model=os.urandom(40_000)),
            "validation failed: bundle digits v2: not a TFLite model",
        ),
        "wrong input shape": (
            make_bundle(2, keys, input_patch={"shape": [1, 28, 28, 1]}),
            "validation failed: bundle digits v2: manifest input shape [1, 28, 28, 1]",
        ),
        "no golden vector": (
            make_bundle(2, keys, golden=False),
            "validation failed: bundle has no golden test vector",
        ),
        "oversized": (make_bundle(2, keys, pad=250_000), "over the 200000-byte limit"),
    }
    for what, (data, reason) in cases.items():
        rc, table = ota.push(data)
        assert rc == 1 and table["cam-1"][:2] == ["rejected", "2"], (what, table)
        assert reason in table["cam-1"][2], (what, table)
    # The tool refuses to send a broken bundle; sent anyway, the device refuses it too.
    broken = {
        "tampered member": (
            replace_member(good, "labels.txt", b"9\n8\n7\n6\n5\n4\n3\n2\n1\n0\n"),
            "member labels.txt does not match its sha256",
        ),
        "truncated": (good[: len(good) // 2], "not a readable bundle"),
    }
    for what, (data, reason) in broken.items():
        rc, _ = ota.push(data)
        assert rc == 2, what
        row = ota.send(data)["cam-1"]
        assert row[0] == "rejected" and reason in row[2], (what, row)
    # The tool's own subscriber may see the last result before this one does: wait for it.
    ota.sub.wait_count(len(cases) + len(broken), 5, lambda m: m.topic == f"{TOPIC}/update/result")
    time.sleep(0.3)  # and no extra result follows
    assert len(ota.results()) == len(cases) + len(broken), ota.results()
    n = len(ota.predictions())
    ota.wait_version(1, n=n + 3)
    assert {e["model"]["version"] for e in ota.predictions()} == {1}
    state = ota.model_state()
    assert state["active"]["version"] == 1 and state["previous"] is None
    assert state["last_update"]["status"] == "rejected"


def test_signed_rollback_command_and_replays_are_refused(
    ota: Ota, keys: Keys, tmp_path: Path
) -> None:
    d = ota.start_daemon()
    rc, _ = ota.push(make_bundle(2, keys))
    assert rc == 0
    ota.wait_version(2)
    # The old version again (e.g. a recorded offer re-published): refused.
    rc, table = ota.push(make_bundle(1, keys))
    assert (rc, table["cam-1"][:2]) == (1, ["rejected", "1"])
    assert "not above the highest accepted version 2" in table["cam-1"][2]

    rollback = ["--rollback", "1", "--device", "cam-1", "--key", str(keys.private_path)]
    rc = push_tool.main([*rollback, *ota.broker_args()])
    assert (rc, ota.table()["cam-1"][:2]) == (0, ["rolled_back", "1"])
    n = len(ota.predictions())
    ota.wait_version(1, n=3 + sum(e["model"]["version"] == 1 for e in ota.predictions()[:n]))
    state = ota.model_state()
    assert state["active"]["version"] == 1 and state["previous"]["version"] == 2

    # Replaying the recorded command: refused.
    recorded = ota.sub.wait_for(lambda m: m.topic == f"{TOPIC}/update/command").payload
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(ota.broker.host, ota.broker.port)
    client.loop_start()
    client.publish(f"{TOPIC}/update/command", recorded, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    replay = ota.result(lambda r: r.get("command") == "rollback" and r["status"] == "rejected")
    assert "replayed or out-of-order command" in replay["reason"]
    # A command signed by a key the device does not trust: refused.
    other = make_keys(tmp_path / "other", "other")
    rc = push_tool.main([*rollback[:-1], str(other.private_path), *ota.broker_args()])
    assert (
        rc == 1
        and f"command refused: command signed by unknown key {other.key_id}"
        == ota.table()["cam-1"][2]
    )
    assert ota.model_state()["active"]["version"] == 1

    d.terminate()  # back on the rolled-back model after a restart, with no result spam
    ota.sub.clear()
    d2 = ota.start_daemon()
    ota.wait_version(1, n=3)
    assert "starting with stored model" not in d2.log()  # v1 is model.path itself
    state = ota.model_state()
    assert (state["active"]["version"], state["previous"]["version"]) == (1, 2)
    assert ota.results() == []


def test_a_model_failing_in_service_is_rolled_back_automatically(ota: Ota, keys: Keys) -> None:
    ota.start_daemon(monitor_frames=5)
    ota.wait_version(1, n=3)
    # Passes every check (its golden vector is a raw tensor), but its normalisation saturates
    # every camera frame: the same output whatever the picture.
    stuck = make_bundle(2, keys, input_patch={"mean": [300.0], "std": [1.0]})
    rc, table = ota.push(stuck)
    assert (rc, table["cam-1"][:2]) == (1, ["rolled_back", "2"])  # push waited for the verdict
    assert "digits v2 failed in service: 5 consecutive identical outputs" in table["cam-1"][2]
    result = ota.result(lambda r: r["status"] == "rolled_back")
    assert result["version"] == 2 and result["transfer_id"]
    assert "digits v2 failed in service: 5 consecutive identical outputs" in result["reason"]
    n = len(ota.predictions())
    ota.wait_version(1, n=3 + sum(e["model"]["version"] == 1 for e in ota.predictions()[:n]))
    versions = [e["model"]["version"] for e in ota.predictions()]
    assert versions[-1] == 1 and 2 in versions
    state = ota.model_state()
    assert (state["active"]["version"], state["previous"]["version"]) == (1, 2)
    assert state["last_update"]["status"] == "rolled_back"
