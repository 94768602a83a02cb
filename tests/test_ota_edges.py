"""Over the air at the edges, end to end (real Mosquitto, the daemon as a real process, the host
tools in-process): rollback to any model served, the boot ``.tflite`` included; a push that
fails part-way leaves nothing retained; a transfer that cannot complete is given up and
reported; push waits through probation; a flood of unauthenticated offers costs nothing; the
``status`` command."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edged.publish.topics import chunk_topic, offer_topic
from edged.update.transfer import make_offer
from tests.broker import Mosquitto, Subscriber
from tests.daemon import DaemonProcess, demo_config
from tests.realdata import MODELS, PHOTOS, realdata
from tests.update.bundles import DEMO, Keys, make_bundle, make_keys
from tools import push as push_tool
from tools import status as status_tool

Start = Callable[..., DaemonProcess]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


def _json(payload: bytes) -> dict[str, Any]:
    return dict(json.loads(payload))


def _config(
    tmp_path: Path, broker: Mosquitto, keys: Keys, device: str = "cam-1", **sections: Any
) -> dict[str, Any]:
    update = {"trusted_keys": [str(keys.public_path)], "probation_frames": 10}
    update.update(sections.pop("update", {}))
    cfg = demo_config(
        tmp_path,
        broker,
        source={"loop": True, "fps": 10},
        update=update,
        stats={"interval_s": 1.0},
        **sections,
    )
    cfg["device_id"] = device
    cfg["state_dir"] = str(tmp_path / f"state-{device}")
    return cfg


def _broker_args(broker: Mosquitto, timeout: float = 30) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port), "--timeout", str(timeout)]


def _table(capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    out = capsys.readouterr().out.splitlines()
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=3) for line in out[1:]]
    return {r[0]: r[1:] + [""] * (4 - len(r)) for r in rows if r}


def _push(
    broker: Mosquitto,
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    data: bytes,
    *args: str,
    timeout: float = 30,
) -> tuple[int, dict[str, list[str]]]:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"edged-test-{time.monotonic_ns()}.edgb"
    path.write_bytes(data)
    try:
        target = list(args) or ["--device", "cam-1"]
        rc = push_tool.main(
            [str(path), *target, "--key", str(keys.private_path), *_broker_args(broker, timeout)]
        )
    finally:
        path.unlink()
    return rc, _table(capsys)


def _rollback(
    broker: Mosquitto, keys: Keys, capsys: pytest.CaptureFixture[str], spec: str
) -> tuple[int, dict[str, list[str]]]:
    sub = _SUBS.get(broker.port)
    if sub is not None:
        sub.clear()  # what follows is the answer to this command
    rc = push_tool.main(
        [
            "--rollback-to",
            spec,
            "--device",
            "cam-1",
            "--key",
            str(keys.private_path),
            *_broker_args(broker),
        ]
    )
    return rc, _table(capsys)


_SUBS: dict[int, Subscriber] = {}  # broker port -> the test's subscriber, cleared per command


def _model_state(sub: Subscriber, device: str = "cam-1") -> dict[str, Any]:
    return [_json(m.payload) for m in sub.messages if m.topic == f"edged/{device}/model"][-1]


def _wait_model(
    sub: Subscriber, pred: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    m = sub.wait_for(lambda m: m.topic == "edged/cam-1/model" and pred(_json(m.payload)), timeout)
    return _json(m.payload)


def _wait_prediction(
    sub: Subscriber, pred: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    sub.clear()
    m = sub.wait_for(
        lambda m: m.topic == "edged/cam-1/prediction" and pred(_json(m.payload)), timeout
    )
    return _json(m.payload)


def _retained(broker: Mosquitto, topic: str = "edged/#") -> dict[str, bytes]:
    """Everything the broker keeps retained under ``topic`` (empty payloads are deletions)."""
    with Subscriber(broker.host, broker.port, topic) as sub:
        time.sleep(1.0)
        return {m.topic: m.payload for m in sub.messages if m.retain and m.payload}


# -- 1. rollback to any model served, the boot .tflite included --------------------------------


def test_rollback_to_the_boot_tflite_and_to_any_model_served_by_version_name_or_sha(
    tmp_path: Path,
    broker: Mosquitto,
    keys: Keys,
    start_daemon: Start,
    subscriber_factory: Callable[..., Subscriber],
    capsys: pytest.CaptureFixture[str],
) -> None:
    tflite, labels = tmp_path / "digits-boot.tflite", tmp_path / "labels.txt"
    tflite.write_bytes(DEMO.model_bytes)
    labels.write_text("\n".join(DEMO.labels) + "\n")
    boot_sha = hashlib.sha256(DEMO.model_bytes).hexdigest()
    model = {"path": str(tflite), "labels": str(labels), "mean": [0.0], "std": [255.0]}
    sub = _SUBS[broker.port] = subscriber_factory(broker, "edged/cam-1/#")
    start_daemon(_config(tmp_path, broker, keys, model=model))
    boot = _wait_model(sub, lambda s: s["active"] is not None)
    assert boot["active"] == {
        "name": "digits-boot", "version": 0, "sha256": boot_sha, "confirmed": True,
    }  # fmt: skip
    v2, v3 = make_bundle(2, keys), make_bundle(3, keys)
    for data, version in ((v2, 2), (v3, 3)):
        rc, table = _push(broker, keys, capsys, data)
        assert (rc, table["cam-1"][:2]) == (0, ["confirmed", str(version)]), table
    state = _model_state(sub)
    assert [(k["name"], k["version"]) for k in state["kept"]] == [("digits", 2), ("digits-boot", 0)]

    # All three models share one .tflite: its sha256 names none of them alone.
    rc, table = _rollback(broker, keys, capsys, boot_sha[:10])
    assert (rc, table["cam-1"][0]) == (1, "rejected")
    assert table["cam-1"][2].startswith(
        f"sha256 {boot_sha[:10]} is ambiguous: digits v3 (active), digits v2, digits-boot v0"
    ), table

    rc, table = _rollback(broker, keys, capsys, "0")  # the boot model, by version
    assert (rc, table["cam-1"][:2]) == (0, ["rolled_back", "0"]), table
    state = _wait_model(sub, lambda s: s["active"]["version"] == 0)
    assert state["active"]["sha256"] == boot_sha and state["active"]["name"] == "digits-boot"
    assert [k["version"] for k in state["kept"]] == [3, 2]
    event = _wait_prediction(sub, lambda e: True)
    assert event["model"] == {"name": "digits-boot", "version": None, "sha256": boot_sha}

    rc, table = _rollback(broker, keys, capsys, "digits@2")  # by name@version
    assert (rc, table["cam-1"][:2]) == (0, ["rolled_back", "2"]), table
    v3_sha = hashlib.sha256(v3).hexdigest()
    rc, table = _rollback(broker, keys, capsys, f"sha256:{v3_sha[:8]}")  # by the bundle's sha
    assert (rc, table["cam-1"][:2]) == (0, ["rolled_back", "3"]), table
    assert _wait_prediction(sub, lambda e: True)["model"]["version"] == 3
    rc, table = _rollback(broker, keys, capsys, "7")
    assert (rc, table["cam-1"][0]) == (1, "rejected")
    assert "v7 is not kept here (kept: digits v2" in table["cam-1"][2]


@pytest.mark.realdata
@realdata[1]
def test_rollback_to_a_real_boot_tflite_after_a_real_model_was_pushed(
    tmp_path: Path,
    broker: Mosquitto,
    keys: Keys,
    start_daemon: Start,
    subscriber_factory: Callable[..., Subscriber],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Boot: Coral MobileNetV2 (plain .tflite, labels embedded). Pushed: MLPerf Tiny VWW int8
    as a signed bundle. Back to the MobileNet by its sha256 prefix, and forth by name@version."""
    from tools.bundle import make_bundle as bundle_tflite
    from tools.golden import GoldenCandidate
    from tools.train.data import load_rgb

    boot_path = MODELS / "coral_mobilenet_v2_1.0_224_quant.tflite"
    boot_sha = hashlib.sha256(boot_path.read_bytes()).hexdigest()
    photo = PHOTOS / "coral" / "grace_hopper.bmp"
    vww = bundle_tflite(
        (MODELS / "mlperf_tiny_vww_96_int8.tflite").read_bytes(),
        ["no person", "person"],
        name="vww",
        version=1,
        golden=[GoldenCandidate(photo.name, load_rgb(photo))],
        signing_key=keys.private,
    ).data
    source = {"type": "files", "path": str(PHOTOS / "coral"), "loop": True, "fps": 5}
    sub = _SUBS[broker.port] = subscriber_factory(broker, "edged/cam-1/#")
    cfg = _config(tmp_path, broker, keys, model={"path": str(boot_path)})
    cfg["source"] = source
    start_daemon(cfg)
    assert _wait_model(sub, lambda s: s["active"] is not None)["active"]["version"] == 0
    rc, table = _push(broker, keys, capsys, vww, timeout=60)
    assert (rc, table["cam-1"][:2]) == (0, ["confirmed", "1"]), table
    assert _wait_prediction(sub, lambda e: True)["label"] in ("person", "no person")

    rc, table = _rollback(broker, keys, capsys, boot_sha[:12])
    assert (rc, table["cam-1"][:2]) == (0, ["rolled_back", "0"]), table
    state = _wait_model(sub, lambda s: s["active"]["version"] == 0)
    assert state["active"]["sha256"] == boot_sha
    assert [(k["name"], k["version"]) for k in state["kept"]] == [("vww", 1)]
    event = _wait_prediction(sub, lambda e: e["model"]["sha256"] == boot_sha)
    assert event["label"] not in ("person", "no person")  # an ImageNet label again

    rc, table = _rollback(broker, keys, capsys, "vww@1")
    assert (rc, table["cam-1"][:2]) == (0, ["rolled_back", "1"]), table
    _wait_prediction(sub, lambda e: e["model"]["name"] == "vww")


# -- 2. a failed push leaves nothing behind; an incomplete transfer ends ------------------------


def test_a_push_failing_part_way_clears_what_it_published_and_a_late_device_starts_nothing(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    keys: Keys,
    start_daemon: Start,
    subscriber_factory: Callable[..., Subscriber],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """MQTT 3.1.1 (no maximum packet size in the CONNACK): the broker drops the connection at
    the first chunk that does not fit -- here the second device's, whose longer topic takes
    the packet over the limit after all of the first device's chunks were stored."""
    long_id = "cam-" + "x" * 150
    chunk = 16384
    limit = chunk + 2 + len(f"edged/cam-1/update/chunk/{'0' * 16}/99") + 60
    broker = mosquitto_factory(max_packet_size=limit)
    data = make_bundle(2, keys, pad=40_000)
    path = tmp_path / "b.edgb"
    path.write_bytes(data)
    watch = subscriber_factory(broker, "edged/cam-1/update/#")
    rc = push_tool.main(
        [
            str(path),
            "--device",
            "cam-1",
            "--device",
            long_id,
            "--key",
            str(keys.private_path),
            "--chunk-size",
            str(chunk),
            "--protocol",
            "3.1.1",
            *_broker_args(broker, 10),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "dropped the connection while publishing" in err, err
    n = -(-len(data) // chunk)
    stored = [m for m in watch.messages if "/chunk/" in m.topic and m.payload]
    assert len(stored) == n  # every chunk of the first device reached the broker ...
    assert f"cleared the {2 * n} retained message(s) it published" in err
    assert _retained(broker) == {}  # ... and none is left, nor any offer
    assert not any(m.topic.endswith("/offer") and m.payload for m in watch.messages)

    sub = subscriber_factory(broker, "edged/cam-1/#")
    d = start_daemon(_config(tmp_path, broker, keys))
    state = _wait_model(sub, lambda s: s["active"] is not None)
    time.sleep(1.0)
    assert state["receiving"] is None and _model_state(sub)["receiving"] is None
    assert not [m for m in sub.messages if m.topic.endswith("/update/result")]
    assert "receiving" not in d.log()
    models = tmp_path / "state-cam-1" / "models"
    assert not models.is_dir() or [p.name for p in models.iterdir()] == []


def test_a_transfer_missing_a_chunk_is_given_up_within_its_timeout_and_reported(
    tmp_path: Path,
    broker: Mosquitto,
    keys: Keys,
    start_daemon: Start,
    subscriber_factory: Callable[..., Subscriber],
) -> None:
    sub = subscriber_factory(broker, "edged/cam-1/#")
    d = start_daemon(_config(tmp_path, broker, keys, update={"transfer_timeout_s": 3.0}))
    _wait_model(sub, lambda s: s["active"] is not None)
    offer, chunks = make_offer(
        make_bundle(2, keys, pad=30_000), transfer_id="gap", name="digits", version=2,
        chunk_size=8192, target="cam-1", key=keys.private,
    )  # fmt: skip
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for i, c in enumerate(chunks):
            if i != 2:  # chunk 2 never reaches the broker
                client.publish(chunk_topic("edged/cam-1", "gap", i), c, qos=1, retain=True)
        t0 = time.monotonic()
        client.publish(offer_topic("edged/cam-1"), offer.to_json(), qos=1, retain=True)
        receiving = _wait_model(sub, lambda s: s["receiving"] is not None, 10)["receiving"]
        n = len(chunks)
        assert receiving == {"transfer_id": "gap", "name": "digits", "version": 2, "chunks": n}
        result = sub.wait_for(lambda m: m.topic.endswith("/update/result"), 15)
        took = time.monotonic() - t0
    finally:
        client.disconnect()
        client.loop_stop()
    r = _json(result.payload)
    assert (r["status"], r["transfer_id"]) == ("rejected", "gap")
    assert r["reason"] == (
        f"transfer stalled with {n - 1} of {n} chunks (no chunk for 3 s: update.transfer_timeout_s)"
    )
    assert 2.5 <= took <= 3.0 + 4.0, took  # the timeout, plus the update thread's tick
    after = _wait_model(sub, lambda s: s["receiving"] is None and s["last_update"] is not None)
    assert after["last_update"]["status"] == "rejected"
    assert "no progress, subscribing again" in d.log()
    assert not list((tmp_path / "state-cam-1" / "models").glob(".*.part"))
    time.sleep(0.5)
    assert _model_state(sub)["active"]["version"] == 1


# -- 3. push waits through probation -----------------------------------------------------------


def test_push_waits_for_probation_unless_told_not_to(
    tmp_path: Path,
    broker: Mosquitto,
    keys: Keys,
    start_daemon: Start,
    subscriber_factory: Callable[..., Subscriber],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sub = subscriber_factory(broker, "edged/+/model")
    for device in ("cam-1", "cam-2"):
        start_daemon(_config(tmp_path, broker, keys, device, update={"monitor_frames": 5}))
    sub.wait_count(2, 20)
    devices = ["--device", "cam-1", "--device", "cam-2"]
    rc, table = _push(broker, keys, capsys, make_bundle(2, keys), *devices, "--no-wait-probation")
    assert (rc, {d: r[0] for d, r in table.items()}) == (
        0,
        {"cam-1": "accepted", "cam-2": "accepted"},
    )
    time.sleep(3)  # 10 probation frames at 10 fps
    stuck = make_bundle(3, keys, input_patch={"mean": [300.0], "std": [1.0]})
    t0 = time.monotonic()
    rc, table = _push(broker, keys, capsys, stuck, *devices)
    took = time.monotonic() - t0
    assert rc == 1
    for device in ("cam-1", "cam-2"):
        status, version, reason = table[device]
        assert (status, version) == ("rolled_back", "3"), table
        assert reason.startswith("digits v3 failed in service: 5 consecutive identical outputs")
    assert took < 20
    rc, table = _push(broker, keys, capsys, make_bundle(4, keys), *devices)
    assert rc == 0 and {r[0] for r in table.values()} == {"confirmed"}, table


# -- 5 (issue 11). Authenticated before committed ----------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_flood_of_unauthenticated_offers_costs_nothing_and_a_replayed_offer_is_ignored(
    tmp_path: Path,
    broker: Mosquitto,
    keys: Keys,
    start_daemon: Start,
    subscriber_factory: Callable[..., Subscriber],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sub = subscriber_factory(broker, "edged/cam-1/#")
    d = start_daemon(_config(tmp_path, broker, keys))
    _wait_model(sub, lambda s: s["active"] is not None)
    sub.wait_count(20, 20, lambda m: m.topic.endswith("/prediction"))
    other = make_keys(tmp_path / "other", "other")
    bundle = make_bundle(2, keys)
    big = 60 * 1024 * 1024
    hostile = [
        os.urandom(2000),
        b"[" * 200_000,
        make_offer(bundle, transfer_id="u", name="digits", version=9, chunk_size=4096,
                   target="cam-1")[0].to_json(),
        make_offer(bundle, transfer_id="k", name="digits", version=9, chunk_size=4096,
                   target="cam-1", key=other.private)[0].to_json(),
        make_offer(os.urandom(big), transfer_id="h", name="digits", version=9,
                   chunk_size=1 << 20, target="cam-1")[0].to_json(),  # 60 MiB, unsigned
        os.urandom(1024 * 1024),  # a 1 MiB garbage payload
    ]  # fmt: skip
    rss0 = _rss_kib(d.pid)
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    t0 = time.monotonic()
    try:
        for i in range(600):
            topic = "edged/cam-1/update/offer" if i % 3 else "edged/cam-1/update/command"
            client.publish(topic, hostile[i % len(hostile)], qos=0, retain=(i == 599))
            if i % 50 == 0:
                time.sleep(0.05)
        client.publish("edged/cam-1/flood-done", b"1", qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    sub.wait_for(lambda m: m.topic == "edged/cam-1/flood-done", 30)
    time.sleep(2.0)
    elapsed = time.monotonic() - t0
    rss1 = _rss_kib(d.pid)
    assert d.alive()
    results = [_json(m.payload) for m in sub.messages if m.topic.endswith("/update/result")]
    assert results and all(r["status"] == "rejected" for r in results)
    assert len(results) <= 5 + elapsed + 2, (len(results), elapsed)
    refused_lines = [ln for ln in d.log().splitlines() if " refused: " in ln]
    assert len(refused_lines) <= 2 + elapsed / 10, refused_lines
    assert "receiving" not in d.log()
    models = tmp_path / "state-cam-1" / "models"
    assert not models.is_dir() or sorted(p.name for p in models.iterdir()) in ([], ["state.json"])
    assert rss1 - rss0 < 40 * 1024, (rss0, rss1)  # KiB: flat, not the 60 MiB offered
    n = len([m for m in sub.messages if m.topic.endswith("/prediction")])
    sub.wait_count(n + 10, 10, lambda m: m.topic.endswith("/prediction"))  # still classifying
    with capsys.disabled():
        print(f"\nflood: 600 messages in {elapsed:.1f} s, {len(results)} results, "
              f"{len(refused_lines)} log lines, RSS {rss0} -> {rss1} KiB")  # fmt: skip

    # A legitimate push, then its recorded offer replayed: ignored (answered), no new result.
    rc, table = _push(broker, keys, capsys, bundle)
    assert (rc, table["cam-1"][0]) == (0, "confirmed")
    recorded = [m.payload for m in sub.messages if m.topic.endswith("/update/offer") and m.payload]
    sub.clear()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish("edged/cam-1/update/offer", recorded[-1], qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    time.sleep(1.5)
    assert not [m for m in sub.messages if m.topic.endswith("/update/result")]
    assert _json(recorded[-1])["signature"]


# -- 6. status ---------------------------------------------------------------------------------


def test_status_shows_every_device_from_the_retained_topics(
    tmp_path: Path,
    broker: Mosquitto,
    keys: Keys,
    start_daemon: Start,
    subscriber_factory: Callable[..., Subscriber],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sub = subscriber_factory(broker, "edged/+/stats")
    start_daemon(_config(tmp_path, broker, keys, "cam-1", update={"groups": ["lab"]}))
    d2 = start_daemon(_config(tmp_path, broker, keys, "cam-2"))
    sub.wait_for(lambda m: m.topic == "edged/cam-1/stats" and _json(m.payload)["fps"] > 0, 20)
    sub.wait_for(lambda m: m.topic == "edged/cam-2/stats" and _json(m.payload)["fps"] > 0, 20)
    rc, table = _push(broker, keys, capsys, make_bundle(2, keys), "--device", "cam-2")
    assert rc == 0, table
    d2.terminate()  # availability: stopped

    args = ["--host", broker.host, "--port", str(broker.port)]
    assert status_tool.main(args) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["device", "availability", "model", "sha256", "last", "update",
                                "fps", "last", "seen"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"cam-1", "cam-2"}
    sha = DEMO.sha256[:12]
    assert rows["cam-1"][:5] == ["cam-1", "online", "digits", "v1", sha]
    assert rows["cam-2"][:7] == ["cam-2", "stopped", "digits", "v2", sha, "confirmed", "v2"]
    assert re.match(r"status: 2 device\(s\), collected in \d\.\d\d s", err)

    assert status_tool.main([*args, "--json", "--group", "lab"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["device"] for r in data] == ["cam-1"]
    r = data[0]
    assert r["availability"] == "online" and r["groups"] == ["lab"]
    assert r["model"] == {"name": "digits", "version": 1, "sha256": DEMO.sha256, "confirmed": True}
    assert r["fps"] > 0 and re.match(r"\d{4}-\d\d-\d\dT", r["last_seen"])
    assert status_tool.main([*args, "--device", "nobody"]) == 1
    capsys.readouterr()


def test_status_collects_a_hundred_devices_in_under_a_second(
    broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = []
    for i in range(100):
        base = f"edged/dev-{i:03d}"
        model = {"active": {"name": "m", "version": i, "sha256": f"{i:064x}", "confirmed": True},
                 "last_update": None, "groups": ["g"] if i % 2 else []}  # fmt: skip
        stats = {"ts": "2026-12-03T08:00:00.000Z", "fps": float(i)}
        for t, p in (("availability", b"online"), ("model", json.dumps(model).encode()),
                     ("stats", json.dumps(stats).encode())):  # fmt: skip
            infos.append(client.publish(f"{base}/{t}", p, qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    assert status_tool.main(["--host", broker.host, "--port", str(broker.port), "--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert len(rows) == 100 and rows[7]["model"]["version"] == 7 and rows[7]["fps"] == 7.0
    assert (
        status_tool.main(["--host", broker.host, "--port", str(broker.port), "--group", "g"]) == 0
    )
    out, err = capsys.readouterr()
    took = float(re.search(r"collected in ([\d.]+) s", err).group(1))  # type: ignore[union-attr]
    assert len(out.splitlines()) == 1 + 50
    assert took < 1.0, took
    with capsys.disabled():
        print(f"\nstatus: 100 devices collected in {took:.3f} s")


def test_status_lists_every_device_beyond_the_brokers_message_queue(
    broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,500 devices x 2 retained topics: more than mosquitto queues for one QoS 1 subscriber
    (max_queued_messages 1000), which silently cut the list to ~640 of 1,000 before."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = []
    for i in range(1500):
        stats = json.dumps({"ts": "2026-12-03T08:00:00.000Z", "fps": 1.0}).encode()
        infos.append(client.publish(f"edged/d{i:04d}/availability", b"online", 1, retain=True))
        infos.append(client.publish(f"edged/d{i:04d}/stats", stats, 1, retain=True))
    for info in infos:
        info.wait_for_publish(20)
    client.disconnect()
    client.loop_stop()
    assert status_tool.main(["--host", broker.host, "--port", str(broker.port), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1500 and all(r["fps"] == 1.0 for r in rows)


def test_a_push_clears_the_chunks_it_supersedes_and_its_own_once_every_device_answered(
    tmp_path: Path,
    broker: Mosquitto,
    keys: Keys,
    start_daemon: Start,
    subscriber_factory: Callable[..., Subscriber],
    capsys: pytest.CaptureFixture[str],
) -> None:
    group = ["--group", "lab", "--devices", "cam-1"]
    first, second = make_bundle(2, keys, pad=20_000), make_bundle(3, keys, pad=20_000)
    chunk = ["--chunk-size", "16384"]
    rc, _ = _push(broker, keys, capsys, first, *group, *chunk, timeout=1)
    assert rc == 1  # nobody answered: the retained offer and chunks wait for the devices
    kept = _retained(broker)
    tid1 = _json(kept["edged/group/lab/update/offer"])["transfer_id"]
    n1 = sum(f"/chunk/{tid1}/" in t for t in kept)
    assert n1 == -(-len(first) // 16384) and len(kept) == n1 + 1
    rc, _ = _push(broker, keys, capsys, second, *group, *chunk, timeout=1)
    kept = _retained(broker)
    tid2 = _json(kept["edged/group/lab/update/offer"])["transfer_id"]
    assert not any(tid1 in t for t in kept)  # the superseded push's chunks are gone
    assert sum(f"/chunk/{tid2}/" in t for t in kept) == -(-len(second) // 16384)

    sub = subscriber_factory(broker, "edged/cam-1/#")
    start_daemon(_config(tmp_path, broker, keys, update={"groups": ["lab"]}))
    sub.wait_for(lambda m: m.topic.endswith("/update/result") and b'"confirmed"' in m.payload, 30)
    rc, table = _push(broker, keys, capsys, make_bundle(4, keys), "--device", "cam-1")
    assert (rc, table["cam-1"][0]) == (0, "confirmed")
    kept = _retained(broker, "edged/cam-1/update/#")
    assert kept == {}  # the device has it: its offer and chunks are cleared
