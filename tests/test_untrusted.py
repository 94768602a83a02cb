"""Untrusted input at the daemon's own boundaries (issue 11), fast tier: control messages, Home
Assistant's status topic, the generic MQTT dispatch, outgoing JSON, config/env values and
``overrides.json`` -- each input class that stopped the daemon before, called in-process.

Property-based versions of these are in tests/test_fuzz_handlers.py; the live daemon in
tests/test_hostile_live.py."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edged.config import load_config, parse_config
from edged.errors import ConfigError
from edged.features import control as control_mod
from edged.features.control import BURST, PERSIST_INTERVAL_S, Control
from edged.features.homeassistant import BIRTH_MIN_INTERVAL_S, Discovery
from edged.features.settings import MAX_PAYLOAD, Settings
from edged.frames.policy import PublishPolicy
from edged.infra import events
from edged.infra.guard import KindLog, TokenBucket, one_line
from edged.model.classifier import ModelInfo
from edged.protocol import payloads as wire
from edged.publish.mqtt import Publisher
from edged.publish.session import MqttSession
from tests.fakes import FakePublisher, make_config

RESULT = "edged/cam-1/set/result"


def make_control(tmp_path: Path, **sections: Any) -> tuple[Control, FakePublisher, list[Settings]]:
    pub = FakePublisher()
    applied: list[Settings] = []
    ctl = Control(
        make_config(tmp_path / "state", **sections),
        pub,  # type: ignore[arg-type]
        apply=applied.append,
        commands={"stats": lambda: None},
    )
    return ctl, pub, applied


# -- the reported crashes: a ~1 KB message; valid JSON with odd strings -------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 1024,  # ~1 KB: json's decoder recursed until RecursionError
        b'{"a":' * 1000 + b"1" + b"}" * 1000,
        b'{"publish": ' + b"[" * 900 + b"]" * 900 + b"}",
    ],
    ids=["brackets-1k", "objects", "under-the-recursion-limit"],
)
def test_deeply_nested_message_is_refused_not_raised(tmp_path: Path, payload: bytes) -> None:
    ctl, pub, applied = make_control(tmp_path)
    ctl.on_message(pub.topics.control, payload)
    ctl.poll()  # raised RecursionError into the frame loop on main
    (answer,) = pub.json(RESULT)
    assert answer["ok"] is False and not applied
    assert "nested deeper than" in answer["errors"][0]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"id": "\\ud800", "paused": true}',  # echoed id with a lone surrogate
        b'{"\\udcff": 1}',  # a key that becomes part of the error line
        b'{"publish": {"\\ud800\\n\\u0000": 1}}',
    ],
)
def test_lone_surrogates_in_a_message_give_a_valid_answer(tmp_path: Path, payload: bytes) -> None:
    ctl, pub, _ = make_control(tmp_path)
    answer = ctl.handle(payload)  # UnicodeEncodeError on main
    (sent,) = pub.json(RESULT)
    assert sent["ok"] is answer["ok"]
    for line in sent.get("errors", []):
        assert "\n" not in line and "\x00" not in line


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"publish": {"heartbeat_s": Infinity}}', "Infinity is not a JSON number"),
        (b'{"publish": {"min_interval_s": NaN}}', "NaN is not a JSON number"),
        (b'{"publish": {"heartbeat_s": 1e999}}', "number out of range"),
        (b'{"paused": true, "paused": false}', "duplicate key 'paused'"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"paused": true}' + b" " * MAX_PAYLOAD, "larger than"),
    ],
)
def test_json_that_is_not_plain_json_is_refused(
    tmp_path: Path, payload: bytes, reason: str
) -> None:
    ctl, pub, applied = make_control(tmp_path)
    answer = ctl.handle(payload)
    assert answer["ok"] is False and not applied
    assert reason in answer["errors"][0]
    assert pub.json(RESULT)  # the answer itself is strict JSON (no Infinity on main)


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"publish": {"agree_m": 10**12, "agree_n": 1}}, "publish.agree_m"),
        ({"publish": {"agree_m": 101, "agree_n": 1}}, "publish.agree_m"),
        ({"publish": {"min_interval_s": 1e300}}, "publish.min_interval_s"),
        ({"publish": {"heartbeat_s": 86401}}, "publish.heartbeat_s"),
        ({"model": {"top_k": 101}}, "model.top_k"),
        ({"id": 2**64, "paused": True}, "id"),
    ],
)
def test_runtime_settings_have_upper_bounds(
    tmp_path: Path, patch: dict[str, Any], key: str
) -> None:
    ctl, _, applied = make_control(tmp_path)
    answer = ctl.handle(json.dumps(patch).encode())
    assert answer["ok"] is False and not applied, answer
    assert any(e.startswith(key) for e in answer["errors"]), answer


def test_window_cost_stays_flat_at_the_largest_setting() -> None:
    # agree_m is the policy's per-frame window: at its bound the window holds 100 labels.
    ctl_cfg = parse_config(
        {"device_id": "x", "source": {"type": "files", "path": "."}, "model": {"path": "m"},
         "publish": {"mode": "change", "agree_m": 100, "agree_n": 100}}, {}
    )  # fmt: skip
    policy = PublishPolicy(ctl_cfg.publish)
    for i in range(10_000):
        policy.decide(str(i % 7), 0.9, float(i))
    assert len(policy._window) == 100


def test_error_lines_are_bounded_in_number_and_length(tmp_path: Path) -> None:
    ctl, pub, _ = make_control(tmp_path)
    message = {"publish": {("k" * 5000) + str(i): i for i in range(50)}}
    answer = ctl.handle(json.dumps(message).encode())
    assert answer["ok"] is False
    assert len(answer["errors"]) <= 11 and all(len(e) <= 300 for e in answer["errors"])
    assert len(pub.on(RESULT)[0]) < 5000


def test_echoed_id_is_bounded(tmp_path: Path) -> None:
    ctl, _, _ = make_control(tmp_path)
    assert "id" not in ctl.handle(json.dumps({"id": "x" * 129, "paused": True}).encode())
    assert ctl.handle(json.dumps({"id": "\u00e9", "paused": True}).encode())["id"] == "\u00e9"


# -- rate limit and coalesced persistence ------------------------------------------------------


def test_control_flood_is_rate_limited_and_answered_once(tmp_path: Path) -> None:
    ctl, pub, _ = make_control(tmp_path)
    for i in range(500):  # one burst, far above the rate
        ctl.on_message(pub.topics.control, json.dumps({"paused": i % 2 == 0}).encode())
    for _ in range(100):
        ctl.poll()
    assert ctl.counts["rate_limited"] >= 500 - BURST - 5
    assert ctl.counts["handled"] <= BURST + 5
    refusals = [a for a in pub.json(RESULT) if not a["ok"]]
    assert len(refusals) == 1 and "rate limit" in refusals[0]["errors"][0]
    assert f"{ctl.counts['rate_limited']} message(s) refused" in refusals[0]["errors"][0]


def test_poll_handles_a_bounded_number_per_call(tmp_path: Path) -> None:
    ctl, pub, _ = make_control(tmp_path)
    for _ in range(30):
        ctl.on_message(pub.topics.control, b'{"paused": false}')
    ctl.poll()
    assert ctl.counts["handled"] == control_mod.MAX_PER_POLL


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(10, 5)
    t = 1000.0
    bucket._last = t
    assert sum(bucket.take(t) for _ in range(20)) == 5
    assert sum(bucket.take(t + 1.0) for _ in range(20)) == 5  # 10 refilled, capped at 5
    assert sum(bucket.take(t + 1.25) for _ in range(20)) == 2


def test_persist_writes_are_coalesced_and_the_last_state_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[dict[str, Any]] = []
    real = control_mod.write_atomically

    def counting(path: Path, data: dict[str, Any]) -> None:
        writes.append(json.loads(json.dumps(data)))
        real(path, data)

    monkeypatch.setattr(control_mod, "write_atomically", counting)
    monkeypatch.setattr(control_mod, "RATE", 1e9)
    ctl, _, _ = make_control(tmp_path)
    ctl._bucket = TokenBucket(1e9, 1e9)
    for i in range(200):
        msg = {"publish": {"min_score": round(i / 1000, 3)}, "persist": True}
        answer = ctl.handle(json.dumps(msg).encode())
        assert answer["ok"] and answer["persisted"]
    assert len(writes) == 1  # the first at once, the rest pending
    ctl.poll(now=ctl._written_at + PERSIST_INTERVAL_S)
    assert len(writes) == 2 and writes[-1] == {"publish": {"min_score": 0.199}}
    ctl.handle(b'{"paused": true, "persist": true}')
    ctl.close()  # at stop: the pending one
    assert len(writes) == 3
    saved = json.loads(ctl.path.read_text())
    assert saved == {"publish": {"min_score": 0.199}, "paused": True}
    assert [p.name for p in ctl.path.parent.iterdir()] == ["overrides.json"]


# -- overrides.json at start: never a crash loop ----------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000,
        b'{"a":' * 5000,
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"publish": {"agree_m": 1e999}}',
        b'{"publish": {"min_score": NaN}}',
        b'{"paused": "yes"}',
        b'{"publish": {"min_score": 0.5}, "publish": {}}',
        b'{"paused": true}' + b" " * (80 * 1024),
        b"",
    ],
)
def test_damaged_overrides_file_is_ignored_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    ctl, _, _ = make_control(tmp_path)
    ctl.path.parent.mkdir(parents=True)
    ctl.path.write_bytes(content)
    with caplog.at_level(logging.WARNING, "edged.features.control"):
        start = ctl.load()  # RecursionError out of the daemon's start on main (crash loop)
    assert start == ctl.base
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "ignoring" in record.getMessage() and "\n" not in record.getMessage()


def test_overrides_file_that_is_a_directory_is_ignored(tmp_path: Path) -> None:
    ctl, _, _ = make_control(tmp_path)
    ctl.path.mkdir(parents=True)
    assert ctl.load() == ctl.base


# -- Home Assistant's status topic --------------------------------------------------------------


def _info() -> ModelInfo:
    return SimpleNamespace(name="digits")  # type: ignore[return-value]


def test_birth_flood_announces_at_most_once_per_interval(tmp_path: Path) -> None:
    pub = FakePublisher()
    cfg = make_config(tmp_path)
    ha = Discovery(cfg.homeassistant, pub, diagnostics=False, cpu_temperature=False)  # type: ignore[arg-type]
    t = 100.0
    for i in range(1000):
        ha.on_message(ha.status_topic, b"online")
        ha.poll(_info(), now=t + i * 0.001)
    assert ha.announcements == 1
    ha.poll(_info(), now=t + BIRTH_MIN_INTERVAL_S + 0.1)  # the pending birth, once it may
    assert ha.announcements == 2
    ha.poll(_info(), now=t + 3 * BIRTH_MIN_INTERVAL_S)
    assert ha.announcements == 2


@pytest.mark.parametrize(
    "payload", [b"", b"offline", b"\xff" * 100, b"online" * 1000, b" online\n"]
)
def test_status_payloads_other_than_online_are_ignored(tmp_path: Path, payload: bytes) -> None:
    pub = FakePublisher()
    ha = Discovery(
        make_config(tmp_path).homeassistant,
        pub,  # type: ignore[arg-type]  # the facade's methods, not the class (as above)
        diagnostics=False,
        cpu_temperature=False,
    )
    ha.on_message(ha.status_topic, payload)
    ha.poll(_info())
    assert ha.announcements == (1 if payload.strip() == b"online" else 0)


# -- the generic dispatch: nothing raises into paho's thread ------------------------------------


class _Message:
    def __init__(self, topic: bytes, payload: bytes) -> None:
        self._topic, self.payload = topic, payload

    @property
    def topic(self) -> str:
        return self._topic.decode("utf-8")  # what paho does


@pytest.mark.parametrize("topic", [b"edged/cam-1/set", b"\xff\xfe"])
def test_a_handler_that_raises_never_reaches_paho(topic: bytes) -> None:
    from edged.config import MqttConfig

    calls = []

    def handler(topic: str, payload: bytes) -> None:
        calls.append(topic)
        raise RecursionError("boom")

    session = MqttSession(MqttConfig(), "cam-1", Publisher(MqttConfig(), "cam-1"), handler)
    for _ in range(100):
        session._handle_message(None, None, _Message(topic, b"x"))  # type: ignore[arg-type]
    assert len(calls) == (100 if topic.startswith(b"edged") else 0)


# -- outgoing JSON ------------------------------------------------------------------------------


def test_outgoing_json_encoding_is_defined_for_anything() -> None:
    event = wire.prediction(
        device="cam-1", seq=1, ts="t", reason="every", label="cat\udcff",
        score=float("nan"), top=[("\ud800", float("inf")), ("dog", 0.5)],
        model=wire.ModelRef.model_construct(name="m\udc80", version=1, sha256="x"),
        latency_ms={"total": float("-inf")}, frame="img-\udcff\udcfe.jpg",
    )  # fmt: skip
    data = event.to_bytes()  # UnicodeEncodeError on main
    decoded = json.loads(data.decode("utf-8"), parse_constant=lambda c: pytest.fail(c))
    assert decoded["label"] == "cat\ufffd" and decoded["score"] is None
    assert decoded["top"][0] == {"label": "\ufffd", "score": None}
    assert decoded["frame"] == "img-\ufffd\ufffd.jpg" and decoded["latency_ms"]["total"] is None
    assert events.utf8("a\ud800") == "a\ufffd".encode()


def test_outgoing_json_fast_path_is_unchanged() -> None:
    obj = {"a": "é", "b": [1, 2.5, None, True]}
    assert events.dumps(obj) == json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    assert events.clean(float("nan")) is None and math.isinf(events.clean(1e308 * 10) or math.inf)


def test_one_line_escapes_and_cuts() -> None:
    assert one_line("a\nb\x00c\ud800") == "a\\nb\\x00c\ufffd"
    assert len(one_line("x" * 10_000)) == 200


def test_kind_log_limits_per_kind_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    limited = KindLog(logging.getLogger("edged.test"), interval=3600)
    with caplog.at_level(logging.WARNING, "edged.test"):
        for i in range(100):
            limited.warning("a", f"distinct message {i}")
        limited.warning("b", "other")
    assert [r.getMessage() for r in caplog.records] == ["distinct message 0", "other"]
    assert len(limited._held) == 1 and limited._held["a"] == 99


# -- config files and the environment -----------------------------------------------------------

BASE_TOML = (
    'device_id = "cam-1"\n[source]\ntype = "files"\npath = "."\n[model]\npath = "m.tflite"\n'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE_TOML + "x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        (BASE_TOML + "x = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n", "nested too deeply"),
        (BASE_TOML + "[publish]\nagree_m = " + "9" * 5000 + "\n", "invalid TOML"),
        (BASE_TOML + "[publish]\nheartbeat_s = nan\n", "publish.heartbeat_s: Input should be a finite number"),
        (BASE_TOML + "[publish]\nmin_interval_s = inf\n", "publish.min_interval_s: Input should be a finite number"),
        (BASE_TOML + "[publish]\nqueue_max = 9223372036854775807\n", "publish.queue_max: Input should be less than or equal to"),
        (BASE_TOML + "[source.roi]\nx = 1\ny = 1\nwidth = 99999999\nheight = 1\n", "source.roi.width"),
        (BASE_TOML.replace('"."', '"a\\u0000b"') + 'state_dir = "x"\n', None),
        (BASE_TOML + 'state_dir = "a\\u0000b"\n', None),
        (BASE_TOML + "[source.read_timeout_s]\n", "source.read_timeout_s"),
    ],
)  # fmt: skip
def test_hostile_config_files_give_one_line_errors(
    tmp_path: Path, text: str, expected: str | None
) -> None:
    path = tmp_path / "edged.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path, environ={})
    except ConfigError as err:
        assert err.problems and all("\n" not in p for p in err.problems)
        if expected is not None:
            assert any(expected in p for p in err.problems), err.problems
    else:
        assert expected is None


def test_oversized_config_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edged.toml"
    path.write_bytes(BASE_TOML.encode() + b"#" * (2 * 1024 * 1024) + b"\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"EDGED_MQTT__PORT": "[" * 5000 + "]" * 5000}, "EDGED_MQTT__PORT: Input should be a valid integer"),
        ({"EDGED_MODEL__MEAN": "[" * 5000 + "]" * 5000}, "EDGED_MODEL__MEAN: nested deeper than"),
        ({"EDGED_MODEL__MEAN": "[" * 500 + "]" * 500}, "EDGED_MODEL__MEAN: nested deeper than"),
        ({"EDGED_PUBLISH__HEARTBEAT_S": "nan"}, "EDGED_PUBLISH__HEARTBEAT_S: Input should be a finite number"),
        ({"EDGED_PUBLISH__HEARTBEAT_S": "1e999"}, "EDGED_PUBLISH__HEARTBEAT_S: Input should be a finite number"),
        ({"EDGED_PUBLISH__AGREE_M": "9" * 4000}, "EDGED_PUBLISH__AGREE_M"),
        ({"EDGED_MQTT__TOPIC_PREFIX": "a\udcff"}, "EDGED_MQTT__TOPIC_PREFIX"),
        ({"EDGED_MQTT__HOST": "h" * 100_000}, "EDGED_MQTT__HOST: longer than"),
        ({"EDGED_" + "A__" * 100 + "B": "1"}, ": unknown key"),
    ],
)  # fmt: skip
def test_hostile_environment_gives_one_line_errors(
    tmp_path: Path, env: dict[str, str], expected: str | None
) -> None:
    path = tmp_path / "edged.toml"
    path.write_text(BASE_TOML, encoding="utf-8")
    try:
        load_config(path, environ=env)
    except ConfigError as err:
        assert err.problems and all("\n" not in p and len(p) < 400 for p in err.problems)
        if expected is not None:
            assert any(expected in p for p in err.problems), err.problems
    else:
        assert expected is None


def test_edged_check_on_a_hostile_config_exits_2_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.daemon import ROOT

    path = tmp_path / "edged.toml"
    path.write_text(BASE_TOML + "x = " + "[" * 3000 + "]" * 3000 + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "edged", "check", "-c", str(path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "nested too deeply" in proc.stderr
