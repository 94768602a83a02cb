"""Bad input everywhere: generated invalid configs, unreadable images, mutated models pushed as
over-the-air updates.

* ``edged check -c FILE`` on each generated invalid config (wrong types, unknown keys at every
  level, bad device ids, ports, enums, numbers, missing files, invalid TOML, bad environment
  overrides): exit status 2, one ``edged: error: key.path: reason`` line per problem on stderr,
  nothing on stdout, no traceback. Most run in-process through ``edged.cli.main``; a sample
  also as real ``edged check`` processes.
* Corrupt or unreadable images in a files source are skipped and counted (the ``health``
  topic's ``skipped``) while the good ones are classified.
* Randomly mutated copies of the model, each in a properly signed bundle (so that the mutation
  reaches the validator), pushed to one daemon through the real broker: each is rejected, or --
  if it still loads and reproduces the golden vector -- accepted; the daemon never crashes and
  keeps publishing.

Prints one line of figures per scenario (``pytest -s``) for the README's reliability table.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edged import cli
from tests.broker import Mosquitto, Subscriber
from tests.daemon import DEMO_MODEL, ROOT, SAMPLES, demo_config, write_config
from tests.fault.harness import LiveDaemon, device_topic, health_of, sample_process

pytestmark = pytest.mark.fault

DEVICE = "cam-1"
ERROR_LINE = re.compile(r"^edged: error: (\S[^\n]*?): (\S.*)$")

# -- generated invalid configs -----------------------------------------------------------------


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | Path):
        return json.dumps(str(v))  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(v), repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(cfg: dict[str, Any]) -> str:
    """Top-level scalars, then one ``[section]`` per table (nested tables inline)."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for name, body in cfg.items():
        if isinstance(body, dict):
            lines.append(f"[{_key(name)}]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    name: str
    keys: list[str]  # the key path each expected error line starts with ("<file>": the file)
    cfg: dict[str, Any] | None = None
    text: bytes | None = None  # the file's bytes as is (invalid TOML), instead of cfg
    env: dict[str, str] = field(default_factory=dict)


_MISSING = object()


def _base(tmp: Path) -> dict[str, Any]:
    return {
        "device_id": "cam-1",
        "state_dir": str(tmp / "state"),
        "source": {"type": "files", "path": str(SAMPLES)},
        "model": {"path": str(DEMO_MODEL)},
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "publish": {"mode": "every"},
        "update": {"enabled": True},
    }


def _with(base: dict[str, Any], *changes: tuple[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``("a.b.c", value)`` set (``_MISSING``: deleted)."""
    cfg = copy.deepcopy(base)
    for path, value in changes:
        *parents, leaf = path.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        if value is _MISSING:
            node.pop(leaf, None)
        else:
            node[leaf] = copy.deepcopy(value)
    return cfg


def generate_cases(tmp: Path) -> list[Case]:
    base = _base(tmp)
    nowhere = tmp / "does-not-exist"
    cases: list[Case] = []

    def bad(name: str, keys: list[str], *changes: tuple[str, Any]) -> None:
        cases.append(Case(name, keys, cfg=_with(base, *changes)))

    # One wrong value at a time: (key, value) -> one error line for that key.
    single: list[tuple[str, Any]] = [
        ("device_id", 5),
        ("log_level", "verbose"),
        ("log_level", 3),
        ("state_dir", 5),
        ("source.path", 7),
        ("source.fps", "fast"),
        ("source.fps", -1),
        ("source.fps", 0),
        ("source.fps", 1001),
        ("source.fps", float("nan")),
        ("source.loop", [1]),
        ("source.loop", "sometimes"),
        ("source.rotate", 45),
        ("source.rotate", "90"),
        ("source.read_timeout_s", 0),
        ("source.read_timeout_s", -1.5),
        ("source.read_timeout_s", "5 s"),
        ("source.retry_min_s", 0),
        ("source.retry_max_s", -30),
        ("source.roi", 5),
        ("model.path", 3),
        ("model.threads", -1),
        ("model.threads", 65),
        ("model.threads", 1.5),
        ("model.top_k", 0),
        ("model.top_k", 101),
        ("model.backend", "cuda"),
        ("model.softmax", "maybe"),
        ("model.softmax", True),
        ("mqtt.host", ""),
        ("mqtt.host", 42),
        ("mqtt.port", 0),
        ("mqtt.port", -1),
        ("mqtt.port", 65536),
        ("mqtt.port", "abc"),
        ("mqtt.port", 1883.5),
        ("mqtt.port", [1883]),
        ("mqtt.protocol", "3"),
        ("mqtt.protocol", 5),
        ("mqtt.keepalive_s", 4),
        ("mqtt.keepalive_s", 65536),
        ("mqtt.reconnect_min_s", 0),
        ("mqtt.reconnect_max_s", -1),
        ("mqtt.topic_prefix", "a/#"),
        ("mqtt.topic_prefix", "a+b"),
        ("mqtt.topic_prefix", ""),
        ("mqtt.topic_prefix", "a\x00b"),
        ("mqtt.connect_timeout_s", 0),
        ("mqtt.username", 12),
        ("mqtt.tls", "yes"),
        ("publish.mode", "sometimes"),
        ("publish.min_score", 1.5),
        ("publish.min_score", -0.1),
        ("publish.agree_n", 0),
        ("publish.agree_m", 0),
        ("publish.min_interval_s", -1),
        ("publish.heartbeat_s", -60),
        ("publish.qos", 3),
        ("publish.qos", "1"),
        ("publish.spool", "sometimes"),
        ("publish.spool_max_messages", 0),
        ("publish.spool_max_bytes", 100),
        ("publish.spool_sync", "off"),
        ("publish.queue_max", 0),
        ("publish.queue_max_bytes", -1),
        ("update.enabled", "sometimes"),
        ("update.trusted_keys", "key.pem"),
        ("update.allow_unsigned", [True]),
        ("update.max_bundle_bytes", 0),
        ("update.validate_timeout_s", 0),
        ("update.validate_memory_mb", 64),
        ("update.transfer_timeout_s", -1),
        ("update.monitor_frames", -1),
        ("update.probation_frames", "many"),
    ]
    for key, value in single:
        bad(f"{key}={value!r}", [key], (key, value))
    bad("tls insecure=sometimes", ["mqtt.tls.insecure"], ("mqtt.tls", {"insecure": "sometimes"}))

    # Group names follow the device-id rule; a list index is part of the key path.
    for group in ["Lab", "a/b", "a+b", "#", "", "x" * 33]:
        bad(f"update.groups=[{group!r}]", ["update.groups.0"], ("update.groups", [group]))

    # Device ids: each becomes part of every topic.
    for dev in ["a/b", "a+b", "cam#1", "cam\x00", "Cam-1", "x" * 33, "", "-cam", "cam_1", "cam 1",
                "caméra", "cam\n1", "+", "#", "/"]:  # fmt: skip
        bad(f"device_id={dev!r}", ["device_id"], ("device_id", dev))

    # The source's type decides its keys.
    bad("source.type=webcam", ["source"], ("source.type", "webcam"))
    bad("source.type missing", ["source"], ("source.type", _MISSING))
    bad("source is a string", ["source"], ("source", "files"))
    bad("opencv device list", ["source.device"], ("source", {"type": "opencv", "device": [0]}))
    bad("opencv width 0", ["source.width"], ("source", {"type": "opencv", "width": 0}))
    bad("opencv fps -5", ["source.fps"], ("source", {"type": "opencv", "fps": -5}))
    bad("picamera2 fps 121", ["source.fps"], ("source", {"type": "picamera2", "fps": 121}))
    bad("picamera2 lores NV12", ["source.lores_format"],
        ("source", {"type": "picamera2", "lores_format": "NV12"}))  # fmt: skip
    bad("picamera2 main_size", ["source.main_size.1"],
        ("source", {"type": "picamera2", "main_size": [640]}))  # fmt: skip
    bad("picamera2 camera -1", ["source.camera"], ("source", {"type": "picamera2", "camera": -1}))
    bad("files key on opencv", ["source.path"],
        ("source", {"type": "opencv", "path": "/dev/video0"}))  # fmt: skip
    bad("roi x -1", ["source.roi.x"], ("source.roi", {"x": -1, "y": 0, "width": 8, "height": 8}))
    bad("roi width 0", ["source.roi.width"],
        ("source.roi", {"x": 0, "y": 0, "width": 0, "height": 8}))  # fmt: skip
    bad("roi without size", ["source.roi.width", "source.roi.height"], ("source.roi", {"x": 1}))

    # Keys that belong together, or not.
    bad("agree_n > agree_m", ["publish"], ("publish.agree_n", 6), ("publish.agree_m", 5))
    bad("mean without std", ["model"], ("model.mean", [127.5]))
    bad("std 0", ["model"], ("model.mean", [0.0]), ("model.std", [0.0]))
    bad("mean not numbers", ["model.mean.0"], ("model.mean", ["a"]), ("model.std", [1.0]))
    bad("password and password_file", ["mqtt"],
        ("mqtt.password", "x"), ("mqtt.password_file", str(DEMO_MODEL)))  # fmt: skip

    # Required keys and sections.
    bad("no device_id", ["device_id"], ("device_id", _MISSING))
    bad("no source", ["source"], ("source", _MISSING))
    bad("no model", ["model"], ("model", _MISSING))
    bad("no model.path", ["model.path"], ("model.path", _MISSING))
    bad("no source.path", ["source.path"], ("source.path", _MISSING))
    bad("model is a list", ["model"], ("model", [str(DEMO_MODEL)]))
    bad("mqtt is a number", ["mqtt"], ("mqtt", 5))
    bad("publish is a string", ["publish"], ("publish", "every"))

    # Unknown keys at every level.
    for where in ["", "source.", "source.roi.", "model.", "mqtt.", "mqtt.tls.", "publish.",
                  "update."]:  # fmt: skip
        extra = {"source.roi.": {"x": 0, "y": 0, "width": 8, "height": 8}, "mqtt.tls.": {}}
        changes: list[tuple[str, Any]] = []
        if where in extra:
            changes.append((where[:-1], extra[where]))
        for unknown in ["colour", "Port", "path "]:
            cases.append(
                Case(
                    f"unknown key {where}{unknown!r}",
                    [f"{where}{unknown}"],
                    cfg=_with(base, *changes, (f"{where}{unknown}", 1)),
                )
            )
    bad("unknown section", ["logging"], ("logging", {"level": "debug"}))
    bad("unknown key with a newline", ["a\\nb"], ("a\nb", 1))
    bad("unknown key with NUL", ["publish.a\\x00b"], ("publish.a\x00b", 1))

    # Files that are not there (or not files).
    missing = str(nowhere / "x")
    bad("model.path missing", ["model.path"], ("model.path", missing))
    bad("model.path is a directory", ["model.path"], ("model.path", str(tmp)))
    bad("model.labels missing", ["model.labels"], ("model.labels", missing))
    bad("password_file missing", ["mqtt.password_file"],
        ("mqtt.username", "cam-1"), ("mqtt.password_file", missing))  # fmt: skip
    bad("tls ca_file missing", ["mqtt.tls.ca_file"], ("mqtt.tls", {"ca_file": missing}))
    bad("tls client pair missing", ["mqtt.tls.cert_file", "mqtt.tls.key_file"],
        ("mqtt.tls", {"cert_file": missing + ".crt", "key_file": missing + ".key"}))  # fmt: skip
    bad("trusted key missing", ["update.trusted_keys[0]"], ("update.trusted_keys", [missing]))
    bad("model.path with a newline", ["model.path"], ("model.path", missing + "\nmore"))
    bad("every file missing",
        ["model.path", "model.labels", "mqtt.tls.ca_file"],
        ("model.path", missing), ("model.labels", missing),
        ("mqtt.tls", {"ca_file": missing}))  # fmt: skip

    # Several problems at once: one line each.
    bad("three problems", ["device_id", "mqtt.port", "publish.qos"],
        ("device_id", "Bad/Id"), ("mqtt.port", 0), ("publish.qos", 7))  # fmt: skip

    # Not TOML at all.
    for name, text in [
        ("truncated assignment", b"device_id =\n"),
        ("unclosed table", b"[source\n"),
        ("duplicate key", b'device_id = "a"\ndevice_id = "b"\n'),
        ("unterminated string", b'device_id = "cam\n'),
        ("bare word value", b"device_id = cam-1\n"),
        ("invalid UTF-8", b'device_id = "cam-\xff\xfe"\n'),
        ("binary garbage", bytes(random.Random(5).randrange(256) for _ in range(200))),
        ("NUL byte", b'device_id = "cam"\x00\n'),
        ("JSON instead", b'{"device_id": "cam-1"}\n'),
        ("YAML instead", b"device_id: cam-1\nsource:\n  type: files\n"),
        ("table redefined", b"[mqtt]\nport = 1\n[mqtt]\nport = 2\n"),
    ]:
        cases.append(Case(name, ["<file>"], text=text))
    cases.append(Case("empty file", ["device_id", "source", "model"], text=b""))

    # Environment overrides with bad values (the file itself is valid).
    valid = _with(base)
    for env, keys in [
        ({"EDGED_MQTT__PORT": "abc"}, ["EDGED_MQTT__PORT"]),
        ({"EDGED_MQTT__PORT": "0"}, ["EDGED_MQTT__PORT"]),
        ({"EDGED_MQTT__PORT": "65536"}, ["EDGED_MQTT__PORT"]),
        ({"EDGED_DEVICE_ID": "Bad/Id"}, ["EDGED_DEVICE_ID"]),
        ({"EDGED_DEVICE_ID": ""}, ["EDGED_DEVICE_ID"]),
        ({"EDGED_PUBLISH__QOS": "5"}, ["EDGED_PUBLISH__QOS"]),
        ({"EDGED_SOURCE__FPS": "-3"}, ["EDGED_SOURCE__FPS"]),
        ({"EDGED_SOURCE__TYPE": "webcam"}, ["source"]),
        ({"EDGED_LOG_LEVEL": "verbose"}, ["EDGED_LOG_LEVEL"]),
        ({"EDGED_MODEL__THREADS": "many"}, ["EDGED_MODEL__THREADS"]),
        ({"EDGED_PUBLISH__AGREE_N": "9"}, ["publish"]),
        ({"EDGED_UPDATE__GROUPS": '["Lab"]'}, ["EDGED_UPDATE__GROUPS (update.groups.0)"]),
        ({"EDGED_UPDATE__GROUPS": "[1,"}, ["EDGED_UPDATE__GROUPS"]),
        ({"EDGED_MQTT": '{"port": 0}'}, ["EDGED_MQTT (mqtt.port)"]),
        ({"EDGED_MQTT": "5"}, ["EDGED_MQTT"]),
        ({"EDGED_NOPE": "1"}, ["EDGED_NOPE"]),
        ({"EDGED_MQTT__NOPE": "1"}, ["EDGED_MQTT__NOPE"]),
        ({"EDGED_MQTT__TLS__CA_FILE": missing}, ["mqtt.tls.ca_file"]),
        ({"EDGED_MODEL__PATH": missing}, ["model.path"]),
        ({"EDGED_SOURCE__ROI__X": "-1"}, ["EDGED_SOURCE__ROI__X", "source.roi.width", "source.roi.height"]),
        ({"EDGED_MQTT__PORT": "0", "EDGED_PUBLISH__MODE": "sometimes"}, ["EDGED_MQTT__PORT", "EDGED_PUBLISH__MODE"]),
    ]:  # fmt: skip
        cases.append(Case(f"env {env}", keys, cfg=valid, env=env))
    return cases


def _write_case(case: Case, path: Path) -> None:
    if case.text is not None:
        path.write_bytes(case.text)
    else:
        assert case.cfg is not None
        path.write_text(to_toml(case.cfg), encoding="utf-8")


def _check_output(case: Case, path: Path, rc: int, out: str, err: str) -> str | None:
    """What is wrong with ``edged check``'s answer to ``case`` (None: nothing)."""
    lines = err.splitlines()
    keys = [str(path) if k == "<file>" else k for k in case.keys]
    problems = []
    if rc != 2:
        problems.append(f"exit status {rc}")
    if out:
        problems.append(f"stdout {out!r}")
    if "Traceback" in err or "internal error" in err:
        problems.append("traceback/internal error")
    if len(lines) != len(keys):
        problems.append(f"{len(lines)} line(s) for {len(keys)} problem(s)")
    for line in lines:
        if not ERROR_LINE.match(line) or any(ord(c) < 32 for c in line):
            problems.append(f"not an 'edged: error: key.path: reason' line: {line!r}")
    for key in keys:
        if not any(line.startswith(f"edged: error: {key}: ") for line in lines):
            problems.append(f"no line for {key!r}")
    return f"{case.name}: {'; '.join(problems)}\n  {err!r}" if problems else None


@pytest.fixture
def cases(tmp_path: Path) -> list[Case]:
    return generate_cases(tmp_path)


def test_generated_invalid_configs_get_one_error_line_per_problem(
    tmp_path: Path,
    cases: list[Case],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for k in [k for k in os.environ if k.startswith("EDGED_")]:
        monkeypatch.delenv(k)
    valid = tmp_path / "valid.toml"
    valid.write_text(to_toml(_base(tmp_path)))
    assert cli.main(["check", "--no-broker", "-c", str(valid)]) == 0  # the base is valid
    capsys.readouterr()

    failures = []
    t0 = time.monotonic()
    for i, case in enumerate(cases):
        path = tmp_path / f"case-{i:03d}.toml"
        _write_case(case, path)
        with monkeypatch.context() as m:
            for k, v in case.env.items():
                m.setenv(k, v)
            rc = cli.main(["check", "-c", str(path)])
        out, err = capsys.readouterr()
        failure = _check_output(case, path, rc, out, err)
        if failure:
            failures.append(failure)
    took = time.monotonic() - t0

    # A sample as real processes: `edged check` exactly as a user runs it.
    sample = random.Random(7).sample(range(len(cases)), 12)
    t1 = time.monotonic()
    for i in sample:
        case, path = cases[i], tmp_path / f"case-{i:03d}.toml"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
        proc = subprocess.run(
            [sys.executable, "-m", "edged", "check", "-c", str(path)],
            capture_output=True,
            text=True,
            env={**env, **case.env},
            cwd=ROOT,
            timeout=60,
        )
        failure = _check_output(case, path, proc.returncode, proc.stdout, proc.stderr)
        if failure:
            failures.append(f"(process) {failure}")
    took_proc = time.monotonic() - t1
    lines = sum(len(c.keys) for c in cases)
    with capsys.disabled():
        print(
            f"\ninvalid configs: {len(cases)} generated ({lines} problems), each exit 2 with one "
            f"'edged: error: key.path: reason' line per problem, empty stdout, no traceback: "
            f"{len(cases) - len(failures)} of {len(cases)} in-process ({took:.1f} s) and "
            f"{len(sample)} as processes ({took_proc / len(sample):.2f} s each)"
        )
    assert len(cases) >= 100
    assert not failures, "\n".join(failures)


# -- unreadable images ---------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and has no image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def test_corrupt_and_unreadable_images_are_skipped_and_counted(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
) -> None:
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    good = sorted(SAMPLES.glob("*.png"))[:6]
    for i, src in enumerate(good):
        shutil.copy(src, frames / f"{2 * i:02d}-good.png")
    jpeg = io.BytesIO()
    Image.open(good[0]).convert("RGB").resize((64, 64)).save(jpeg, "JPEG")
    unreadable = {
        "01-truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "03-empty.png": b"",
        "05-text.png": b"this is not an image\n",
        "07-truncated.png": good[1].read_bytes()[:60],
        "09-bomb.png": _png_header_only(40000, 40000),
        "11-garbage.webp": bytes(random.Random(3).randrange(256) for _ in range(500)),
    }
    for name, data in unreadable.items():
        (frames / name).write_bytes(data)
    (frames / "13-directory.jpg").mkdir()  # not a file: never listed
    (frames / "15-dangling.png").symlink_to(tmp_path / "nowhere.png")  # neither

    sub = subscriber_factory(broker, f"edged/{DEVICE}/#", qos=1)
    cfg = demo_config(tmp_path, broker, source={"path": str(frames), "fps": 10, "loop": False})
    daemon = LiveDaemon(write_config(tmp_path / "edged.toml", cfg))
    try:
        assert daemon.proc.wait(30) == 0, daemon.log()
    finally:
        daemon.close()
    time.sleep(0.3)
    preds = [json.loads(m.payload) for m in sub.messages if m.topic.endswith("/prediction")]
    healths = [health_of(m) for m in sub.messages if m.topic == device_topic(DEVICE, "health")]
    late = subscriber_factory(broker, device_topic(DEVICE, "health"), qos=1)
    retained = health_of(late.wait_for(lambda m: m.retain, 5))
    warnings = daemon.lines(r"skipping unreadable image")
    print(
        f"\nunreadable images: {len(unreadable)} corrupt files among {len(good)} good ones (plus "
        f"a directory and a dangling link named as images, never listed): {len(preds)} "
        f"classified, {retained['skipped']} skipped and counted on the health topic "
        f"(ok={retained['ok']}), {len(warnings)} warning lines, exit 0"
    )
    assert sorted(p["frame"] for p in preds) == sorted(f"{2 * i:02d}-good.png" for i in range(6))
    assert retained == {**retained, "ok": True, "error": None, "skipped": len(unreadable)}
    assert healths and healths[-1]["skipped"] == len(unreadable)
    assert len(warnings) == len(unreadable)


# -- mutated models as OTA updates ---------------------------------------------------------------

N_MUTATIONS = 200


def _mutate(model: bytes, rng: random.Random) -> tuple[str, bytes]:
    data = bytearray(model)
    kind = rng.choice(["flip", "bytes", "range", "zero", "truncate", "insert", "delete", "swap"])
    n = len(data)
    if kind == "flip":  # single bits
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "bytes":  # random bytes at random places
        for _ in range(rng.randint(1, 32)):
            data[rng.randrange(n)] = rng.randrange(256)
    elif kind == "range":  # a run of random bytes
        start, length = rng.randrange(n), rng.randint(4, 256)
        data[start : start + length] = bytes(rng.randrange(256) for _ in range(length))[: n - start]
    elif kind == "zero":  # a run of zeros (often the header or an offset table)
        start = rng.choice([0, rng.randrange(n)])
        length = rng.randint(4, 64)
        data[start : start + length] = bytes(min(length, n - start))
    elif kind == "truncate":
        del data[rng.randrange(1, n) :]
    elif kind == "insert":
        at = rng.randrange(n)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "delete":
        at = rng.randrange(n)
        del data[at : at + rng.randint(1, 64)]
    else:  # swap two runs
        a, b, length = rng.randrange(n), rng.randrange(n), rng.randint(4, 128)
        ra, rb = bytes(data[a : a + length]), bytes(data[b : b + length])
        if len(ra) == len(rb):
            data[a : a + length], data[b : b + length] = rb, ra
    return kind, bytes(data)


@pytest.fixture
def ota_daemon(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[LiveDaemon, Any]]:
    from tests.update.bundles import make_keys

    keys = make_keys(tmp_path / "keys")
    cfg = demo_config(
        tmp_path,
        broker,
        source={"loop": True, "fps": 10},
        publish={"mode": "every", "heartbeat_s": 0},
        update={"trusted_keys": [str(keys.public_path)], "validate_timeout_s": 10},
    )
    daemon = LiveDaemon(write_config(tmp_path / "edged.toml", cfg))
    yield daemon, keys
    daemon.close()


def test_mutated_models_pushed_as_updates_never_crash_the_daemon(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    ota_daemon: tuple[LiveDaemon, Any],
) -> None:
    from tests.update.bundles import DEMO, make_bundle
    from tools import push as push_tool

    daemon, keys = ota_daemon
    prediction = device_topic(DEVICE, "prediction")
    sub = subscriber_factory(broker, f"edged/{DEVICE}/#", qos=1)
    sub.wait_count(3, 30, predicate=lambda m: m.topic == prediction)
    daemon.wait_line(r"updates: listening", 10)
    before = sample_process(daemon.pid)
    args = push_tool.build_parser().parse_args(
        ["x", "--device", DEVICE, "--host", broker.host, "--port", str(broker.port),
         "--timeout", "30", "--key", str(keys.private_path), "--no-wait-probation"]
    )  # fmt: skip
    rng = random.Random(20240601)
    outcomes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    accepted: list[int] = []
    unanswered = []
    t0 = time.monotonic()
    for i in range(N_MUTATIONS):
        version = 2 + i
        kind, model = _mutate(DEMO.model_bytes, rng)
        data = make_bundle(version, keys, model=model)
        with contextlib.redirect_stderr(io.StringIO()):
            status, _ver, reason = push_tool.send(args, data, "digits", version)[DEVICE]
        outcomes[status] = outcomes.get(status, 0) + 1
        if status == "accepted":
            accepted.append(version)
        elif status == "rejected":
            short = re.sub(r"bundle digits v\d+: ", "", reason)
            short = re.sub(r"[\d.]+", "N", short)[:60]
            reasons[short] = reasons.get(short, 0) + 1
        else:
            unanswered.append((i, kind, status, reason))
        assert daemon.alive(), f"died on mutation {i} ({kind}):\n{daemon.log()[-3000:]}"
    took = time.monotonic() - t0

    # Still classifying and publishing, with the last model it accepted (or the demo model).
    n = sum(m.topic == prediction for m in sub.messages)
    sub.wait_count(n + 10, 15, predicate=lambda m: m.topic == prediction)
    last = json.loads([m for m in sub.messages if m.topic == prediction][-1].payload)
    after = sample_process(daemon.pid)
    assert before is not None and after is not None
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:4]
    print(
        f"\nmutated models: {N_MUTATIONS} signed bundles with a mutated model pushed in "
        f"{took:.0f} s ({took / N_MUTATIONS:.2f} s each): {outcomes}; daemon alive and "
        f"publishing with v{last['model']['version']}; RSS {before.rss_kib // 1024} -> "
        f"{after.rss_kib // 1024} MiB, fds {before.fds} -> {after.fds}, threads "
        f"{before.threads} -> {after.threads}; top reasons {top}"
    )
    assert not unanswered, unanswered
    assert set(outcomes) <= {"accepted", "rejected"}, outcomes
    assert outcomes.get("rejected", 0) >= N_MUTATIONS // 4, outcomes
    assert last["model"]["version"] in [1, *accepted]
    assert after.fds <= before.fds + 2, (before, after)
    assert daemon.terminate() == 0, daemon.log()[-3000:]
