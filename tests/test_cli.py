"""``edged check`` and ``edged classify`` as a user runs them: exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.broker import Mosquitto, free_port
from tests.daemon import DEMO_MODEL, ROOT, SAMPLES, demo_config, write_config


def edged(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def _no_traceback(out: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout


def test_check_reports_config_model_and_broker(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_config(tmp_path / "ok.toml", demo_config(tmp_path, broker))
    out = edged("check", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("config: ") and lines[0].endswith("(device_id=cam-1, source=files)")
    assert "model: digits v1" in lines[1] and "32x32x1 int8 NHWC, 10 classes" in lines[1]
    assert lines[2] == f"broker: connected to 127.0.0.1:{broker.port} (MQTT 5)"


def test_check_with_the_broker_down_exits_3(tmp_path: Path, broker: Mosquitto) -> None:
    data = demo_config(tmp_path, broker, mqtt={"port": free_port(), "connect_timeout_s": 2})
    out = edged("check", "-c", str(write_config(tmp_path / "c.toml", data)))
    assert out.returncode == 3
    (line,) = out.stderr.splitlines()
    assert line.startswith("edged: error: ") and "refused" in line.lower()
    _no_traceback(out)


def test_check_lists_every_config_problem_with_its_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        'device_id = "Bad/Id"\n[source]\ntype = "files"\npath = "x"\nfps = -1\n'
        f'[model]\npath = "{DEMO_MODEL}"\n[mqtt]\nport = 70000\ncolour = "blue"\n'
    )
    out = edged("check", "-c", str(cfg))
    assert out.returncode == 2
    assert sorted(out.stderr.splitlines()) == [
        "edged: error: device_id: String should match pattern '^[a-z0-9][a-z0-9-]{0,31}$'",
        "edged: error: mqtt.colour: unknown key",
        "edged: error: mqtt.port: Input should be less than 65536",
        "edged: error: source.fps: Input should be greater than 0",
    ]
    assert out.stdout == ""


def test_check_names_missing_files(tmp_path: Path, broker: Mosquitto) -> None:
    data = demo_config(tmp_path, broker, model={"path": str(tmp_path / "nope.tflite")})
    out = edged("check", "-c", str(write_config(tmp_path / "c.toml", data)))
    assert out.returncode == 2
    assert out.stderr == f"edged: error: model.path: no such file: {tmp_path / 'nope.tflite'}\n"


def test_env_override_reaches_check(tmp_path: Path, broker: Mosquitto) -> None:
    data = demo_config(tmp_path, broker)
    cfg = write_config(tmp_path / "c.toml", data)
    out = edged("check", "-c", str(cfg), env={**os.environ, "EDGED_MQTT__PORT": "0"})
    assert out.returncode == 2
    assert out.stderr == "edged: error: EDGED_MQTT__PORT: Input should be greater than 0\n"


def test_no_config_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGED_CONFIG"}
    out = edged("run", env=env)
    assert out.returncode == 2 and out.stderr.startswith("edged: error: no config file")


def test_classify_prints_one_json_object_per_image() -> None:
    images = [str(SAMPLES / "digit-3-1.png"), str(SAMPLES / "digit-7-1.png")]
    out = edged("classify", str(DEMO_MODEL), *images, "--top-k", "2")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["image"] for r in rows] == images
    assert [r["label"] for r in rows] == ["3", "7"]
    for r in rows:
        assert len(r["top"]) == 2 and r["top"][0] == {"label": r["label"], "score": r["score"]}
        assert 0.5 < r["score"] <= 1.0


def test_classify_skips_a_bad_image_with_one_line_and_keeps_the_rest(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = str(SAMPLES / "digit-5-1.png")
    out = edged("classify", str(DEMO_MODEL), str(bad), good, str(tmp_path / "missing.jpg"))
    assert out.returncode == 2
    assert [json.loads(line)["image"] for line in out.stdout.splitlines()] == [good]
    errors = out.stderr.splitlines()
    assert len(errors) == 2 and all(e.startswith("edged: error: ") for e in errors)
    assert "broken.png: cannot read image" in errors[0]
    assert "missing.jpg: cannot read image (No such file or directory)" in errors[1]
    _no_traceback(out)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"\x00" * 64, "not a TFLite model"),
        (None, "no such model file"),
    ],
)
def test_classify_with_an_unusable_model_is_one_line(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    model = tmp_path / "m.tflite"
    if content is not None:
        model.write_bytes(content)
    out = edged("classify", str(model), str(SAMPLES / "digit-1-1.png"))
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith("edged: error: ") and expected in line, line
    _no_traceback(out)


def test_classify_rejects_a_bad_top_k() -> None:
    out = edged("classify", str(DEMO_MODEL), str(SAMPLES / "digit-1-1.png"), "--top-k", "0")
    assert out.returncode == 2 and "must be at least 1" in out.stderr
