"""The [update] section: documented in the example, validated, paths resolved."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edged.config import UpdateConfig, check_files, load_config, parse_config
from edged.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MIN = {"device_id": "cam-1", "source": {"type": "files", "path": "x"}, "model": {"path": "m"}}


def test_every_update_key_is_described_and_in_the_example() -> None:
    text = (ROOT / "config" / "edged.example.toml").read_text()
    section = text[text.index("[update]") :]
    for name, field in UpdateConfig.model_fields.items():
        assert field.description, name
        assert re.search(rf"^#?\s*{name}\s*=", section, re.M), f"example lacks update.{name}"
    example = parse_config(tomllib.loads(text), {}).update
    assert example == UpdateConfig()  # the example shows the defaults


def test_defaults_are_safe() -> None:
    u = parse_config(MIN, {}).update
    assert u.enabled and not u.allow_unsigned and u.require_golden and u.trusted_keys == []
    assert u.max_bundle_bytes == 64 * 1024 * 1024 and u.monitor_frames == 10


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"groups": ["Lab/1"]}, "update.groups.0: String should match pattern"),
        ({"validate_memory_mb": 16}, "update.validate_memory_mb: Input should be greater"),
        ({"max_bundle_bytes": 0}, "update.max_bundle_bytes: Input should be greater than 0"),
        ({"trusted_key": []}, "update.trusted_key: unknown key; did you mean update.trusted_keys?"),
    ],
)
def test_invalid_update_values_name_the_key(patch: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({**MIN, "update": patch}, {})
    assert any(p.startswith(expected) for p in exc.value.problems), exc.value.problems


def test_trusted_keys_resolve_against_the_config_file_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        'device_id = "a"\n[source]\ntype = "files"\npath = "i"\n[model]\npath = "m.tflite"\n'
        '[update]\ntrusted_keys = ["keys/release.pub"]\n'
    )
    cfg = load_config(tmp_path / "c.toml", {})
    assert cfg.update.trusted_keys == [tmp_path / "keys" / "release.pub"]
    assert "update.trusted_keys[0]: no such file" in " ".join(check_files(cfg))
    env = parse_config(MIN, {"EDGED_UPDATE__GROUPS": '["lab", "hall"]'}).update
    assert env.groups == ["lab", "hall"]
