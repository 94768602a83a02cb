from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from edged.config import Config, FilesSource, env_overrides, load_config, parse_config
from edged.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MIN = {"device_id": "cam-1", "source": {"type": "files", "path": "x"}, "model": {"path": "m"}}


def _problems(data: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, environ or {})
    return exc.value.problems


def test_minimal_config_gets_documented_defaults() -> None:
    cfg = parse_config(MIN, {})
    assert cfg.mqtt.port == 1883 and cfg.mqtt.protocol == "5" and cfg.mqtt.topic_prefix == "edged"
    assert cfg.publish.mode == "every" and cfg.publish.qos == 1
    assert cfg.model.threads == "auto" and cfg.model.top_k == 3


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"mqtt": {"port": 70000}}, "mqtt.port: Input should be less than 65536"),
        ({"mqtt": {"port": "abc"}}, "mqtt.port: Input should be a valid integer"),
        ({"mqtt": {"hots": "x"}}, "mqtt.hots: unknown key; did you mean mqtt.host?"),
        (
            {"mqtt": {"tls": {"ca": "x"}}},
            "mqtt.tls.ca: unknown key; did you mean mqtt.tls.ca_file?",
        ),
        (
            {"source": {"type": "files", "path": "x", "fsp": 1}},
            "source.fsp: unknown key; did you mean source.fps?",
        ),
        ({"colour": 1}, "colour: unknown key"),
        ({"device_id": "Cam/1"}, "device_id: String should match pattern"),
        ({"device_id": "a+b"}, "device_id: String should match pattern"),
        ({"device_id": "a#"}, "device_id: String should match pattern"),
        ({"device_id": "x" * 33}, "device_id: String should match pattern"),
        ({"source": {"type": "webcam"}}, "source: Input tag 'webcam' found using 'type'"),
        ({"source": {"type": "files", "path": "x", "fps": 0}}, "source.fps: Input should be"),
        ({"source": {"type": "files", "path": "x", "rotate": 45}}, "source.rotate: Input should"),
        ({"publish": {"agree_n": 4, "agree_m": 2}}, "publish: agree_n must not exceed agree_m"),
        ({"publish": {"mode": "sometimes"}}, "publish.mode: Input should be 'every' or 'change'"),
        ({"model": {"path": "m", "mean": [1.0]}}, "model: mean and std must be given together"),
        ({"mqtt": {"topic_prefix": "a/#"}}, "mqtt.topic_prefix: String should match pattern"),
    ],
)
def test_invalid_values_name_the_key_path(patch: dict[str, Any], expected: str) -> None:
    data = {**MIN, **patch}
    problems = _problems(data)
    assert any(p.startswith(expected) for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_missing_required_keys_are_each_reported() -> None:
    problems = _problems({})
    assert {p.split(":")[0] for p in problems} == {"device_id", "source", "model"}


def test_env_overrides_nested_keys_and_decode_lists() -> None:
    env = {
        "EDGED_MQTT__HOST": "broker.lan",
        "EDGED_MQTT__PORT": "8883",
        "EDGED_MODEL__MEAN": "[127.5, 127.5, 127.5]",
        "EDGED_MODEL__STD": "[127.5, 127.5, 127.5]",
        "EDGED_PUBLISH__MODE": "change",
        "OTHER": "ignored",
    }
    cfg = parse_config(MIN, env)
    assert cfg.mqtt.host == "broker.lan" and cfg.mqtt.port == 8883
    assert cfg.model.mean == [127.5] * 3 and cfg.publish.mode == "change"


def test_env_override_is_validated_like_the_file() -> None:
    assert _problems(MIN, {"EDGED_MQTT__PORT": "0"}) == [
        "EDGED_MQTT__PORT: Input should be greater than 0"
    ]
    assert env_overrides({"EDGED_SOURCE__TYPE": "opencv"}) == {"source": {"type": "opencv"}}


def test_load_config_resolves_paths_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        'device_id = "a"\n[source]\ntype = "files"\npath = "imgs"\n[model]\npath = "m.tflite"\n'
    )
    cfg = load_config(tmp_path / "c.toml", {})
    assert cfg.model.path == tmp_path / "m.tflite"
    assert isinstance(cfg.source, FilesSource) and cfg.source.path == str(tmp_path / "imgs")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("device_id = [", "invalid TOML"), (None, "no such config file")],
)
def test_unreadable_config_files(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "c.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, {})
    assert expected in exc.value.problems[0]


def _fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        out.add(prefix + name)
        assert field.description, f"{prefix}{name} has no description"
    return out


def test_example_config_parses_and_documents_every_key() -> None:
    text = (ROOT / "config" / "edged.example.toml").read_text()
    cfg = parse_config(tomllib.loads(text), {})
    assert isinstance(cfg, Config)
    from edged import config as c

    models: list[type[BaseModel]] = [
        c.Config, c.FilesSource, c.OpenCVSource, c.Picamera2Source, c.ModelConfig,
        c.MqttConfig, c.TlsConfig, c.PublishConfig, c.Roi,
    ]  # fmt: skip
    for model in models:
        for key in _fields(model):
            assert re.search(rf"(^#?\s*|[{{,]\s*)({key}\s*=|\[([a-z]+\.)?{key}\])", text, re.M), (
                f"example lacks {model.__name__}.{key}"
            )


def test_demo_config_is_valid() -> None:
    cfg = load_config(ROOT / "config" / "demo.toml", {})
    assert cfg.device_id == "demo" and cfg.model.path.name == "digits.edgb"
