"""``edged bench`` end to end: a real broker, the real daemon loop, the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edged.model.runtime import available_backends
from tests.daemon import DEMO_MODEL, ROOT
from tests.realdata import MODELS, requires_realdata

pytestmark = pytest.mark.broker  # edged bench starts its own broker


def _bench(model: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "edged", "bench", str(model), "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "bare fps" in out.stderr  # the readable table
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def test_report_has_every_figure() -> None:
    report = _bench(DEMO_MODEL, "--seconds", "0.5")
    # One row per installed backend (and thread count: here 1).
    assert [r["backend"] for r in report["results"]] == available_backends()
    for row in report["results"]:
        assert row["threads"] == 1 and row["bare_fps"] > 0 and row["invoke_ms_p50"] > 0
        for tag in ("model_size", "640x480"):
            p = row[tag]
            assert p["fps"] > 0 and 0 < p["ratio"] < 1.5
            # Every published prediction reached the subscriber and was timed.
            assert p["received"] > 10
            assert 0 < p["latency_ms_p50"] <= p["latency_ms_p99"]
            # What edged adds: the latency less each frame's own invoke.
            assert 0 < p["latency_added_ms_p50"] < p["latency_ms_p50"]
            assert p["latency_invoke_ms_p50"] > 0
            assert p["spool"] == 1  # through the on-disk spool, as the daemon runs by default
            assert 0 <= p["outside_invoke_ms_p50"] <= p["outside_invoke_ms_p99"]
    assert report["peak_rss_mib"] > 0 and report["idle_cpu_percent"] >= 0
    anon, file = report["rss_anon_mib_model_size"], report["rss_file_mib_model_size"]
    assert anon > 0 and file > 0 and anon + file <= report["peak_rss_mib_model_size"] + 1


@requires_realdata
@pytest.mark.realdata
def test_pipeline_keeps_up_with_the_bare_interpreter() -> None:
    """CI guard: a generous floor, a ratio, so machine noise does not flake it."""
    model = MODELS / "coral_mobilenet_v2_1.0_224_quant.tflite"
    report = _bench(model, "--seconds", "2", "--backend", "ai-edge-litert")
    ratio = report["results"][0]["model_size"]["ratio"]
    assert ratio >= 0.8, json.dumps(report["results"][0], indent=1)
