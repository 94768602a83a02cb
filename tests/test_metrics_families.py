"""The Prometheus exposition, now rendered by prometheus-client, keeps the families the hand-written
one served (edged 8cde6eb): names, types, HELP texts, sample names, labels and values."""

from __future__ import annotations

import math
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from edged.config import StatsConfig
from edged.features.stats import Counters, Stats
from tests.broker import free_port

# What the hand-written exposition served for the counters of ``_counters`` below, with three
# records (1, 2 and 3 ms) in the last interval; the values that change from run to run are
# ``<volatile>``.
BEFORE = """\
# HELP edged_uptime_seconds Seconds since the daemon started.
# TYPE edged_uptime_seconds gauge
edged_uptime_seconds <volatile>
# HELP edged_paused 1 while classification is paused.
# TYPE edged_paused gauge
edged_paused 0
# HELP edged_frames_captured_total Frames the source delivered.
# TYPE edged_frames_captured_total counter
edged_frames_captured_total 9
# HELP edged_frames_processed_total Frames classified.
# TYPE edged_frames_processed_total counter
edged_frames_processed_total 7
# HELP edged_frames_dropped_total Frames replaced by a newer one before they were classified.
# TYPE edged_frames_dropped_total counter
edged_frames_dropped_total 2
# HELP edged_frames_skipped_total Unreadable inputs skipped.
# TYPE edged_frames_skipped_total counter
edged_frames_skipped_total 1
# HELP edged_predictions_published_total Prediction events published.
# TYPE edged_predictions_published_total counter
edged_predictions_published_total 5
# HELP edged_fps Frames classified per second over the last interval.
# TYPE edged_fps gauge
edged_fps <volatile>
# HELP edged_inference_seconds Time to classify one frame (preprocess, invoke, postprocess); quantiles over the last interval.
# TYPE edged_inference_seconds summary
edged_inference_seconds{quantile="0.5"} 0.002
edged_inference_seconds{quantile="0.99"} 0.003
edged_inference_seconds_sum 0.006
edged_inference_seconds_count 3
# HELP edged_mqtt_connected 1 while connected to the broker.
# TYPE edged_mqtt_connected gauge
edged_mqtt_connected 1
# HELP edged_mqtt_messages_published_total Messages the broker acknowledged (QoS 0: sent).
# TYPE edged_mqtt_messages_published_total counter
edged_mqtt_messages_published_total 4
# HELP edged_mqtt_publish_failures_total Messages rejected by the broker or undeliverable.
# TYPE edged_mqtt_publish_failures_total counter
edged_mqtt_publish_failures_total 1
# HELP edged_mqtt_messages_dropped_total Messages dropped because the outbox was full (oldest first).
# TYPE edged_mqtt_messages_dropped_total counter
edged_mqtt_messages_dropped_total 0
# HELP edged_mqtt_reconnects_total Reconnections to the broker.
# TYPE edged_mqtt_reconnects_total counter
edged_mqtt_reconnects_total 0
# HELP edged_mqtt_messages_dropped_by_broker_total Messages the broker refused or could not take (refusal in PUBACK/PUBREC, over its packet size limit), dropped.
# TYPE edged_mqtt_messages_dropped_by_broker_total counter
edged_mqtt_messages_dropped_by_broker_total 0
# HELP edged_mqtt_takeovers_total Connections taken over by another client with the same client id.
# TYPE edged_mqtt_takeovers_total counter
edged_mqtt_takeovers_total 4
# HELP edged_mqtt_queue_depth Messages waiting to be sent.
# TYPE edged_mqtt_queue_depth gauge
edged_mqtt_queue_depth 3
# HELP edged_mqtt_inflight Messages sent and not yet acknowledged.
# TYPE edged_mqtt_inflight gauge
edged_mqtt_inflight 2
# HELP edged_spool_depth Messages held in the on-disk outbox.
# TYPE edged_spool_depth gauge
edged_spool_depth 6
# HELP edged_resident_memory_bytes Resident memory of the daemon.
# TYPE edged_resident_memory_bytes gauge
edged_resident_memory_bytes <volatile>
# HELP edged_cpu_temperature_celsius CPU temperature.
# TYPE edged_cpu_temperature_celsius gauge
edged_cpu_temperature_celsius 48.3
# HELP edged_model_info The model classifying frames (always 1).
# TYPE edged_model_info gauge
edged_model_info{name="a \\"q\\"\\nn\\\\",version="3",sha256="0000000000000000000000000000000000000000000000000000000000000000"} 1
"""
VOLATILE = {"edged_uptime_seconds", "edged_fps", "edged_resident_memory_bytes"}


def _counters() -> Counters:
    return Counters(
        processed=7, predictions=5, captured=9, dropped=2, skipped=1, paused=False,
        model={"name": 'a "q"\nn\\', "version": 3, "sha256": "0" * 64},
        mqtt={"published": 4, "failures": 1, "queued": 5, "inflight": 2, "takeovers": 4},
        connected=True, spool_depth=6,
    )  # fmt: skip


Family = tuple[str, str, str, list[tuple[str, dict[str, str], float | None]]]


def _families(text: str) -> list[Family]:
    text = "\n".join(line.replace("<volatile>", "0") for line in text.splitlines() if line) + "\n"
    out: list[Family] = []
    for fam in text_string_to_metric_families(text):
        samples = [
            (s.name, dict(s.labels), None if s.name in VOLATILE else s.value) for s in fam.samples
        ]
        out.append((fam.name, fam.type, fam.documentation, samples))
    return out


def _stats(tmp_path: Path, **cfg: Any) -> Stats:
    thermal = tmp_path / "temp"
    thermal.write_text("48312\n")
    stats = Stats(StatsConfig(interval_s=0, **cfg), "cam-1", _counters, lambda b: None,
                  thermal_path=thermal)  # fmt: skip
    for ms in (1.0, 2.0, 3.0):
        stats.record(ms)
    stats.snapshot()
    return stats


def test_the_families_are_those_served_before(tmp_path: Path) -> None:
    before, after = _families(BEFORE), _families(_stats(tmp_path).metrics_text())
    assert [f[0] for f in after] == [f[0] for f in before]  # same families, same order
    for old, new in zip(before, after, strict=True):
        assert new == old
    assert len(after) == 22


def test_an_empty_interval_has_nan_quantiles_and_the_daemon_its_own_registry(
    tmp_path: Path,
) -> None:
    thermal = tmp_path / "none"
    stats = Stats(StatsConfig(interval_s=0), "cam-1", _counters, lambda b: None,
                  thermal_path=thermal)  # fmt: skip
    fams = {f[0]: f for f in _families(stats.metrics_text())}
    quantiles = [
        v for name, labels, v in fams["edged_inference_seconds"][3] if "quantile" in labels
    ]
    assert len(quantiles) == 2 and all(v is not None and math.isnan(v) for v in quantiles)
    assert "edged_cpu_temperature_celsius" not in fams
    # Nothing of edged's in prometheus-client's global registry; two daemons' stats apart.
    assert not [m for m in REGISTRY.collect() if m.name.startswith("edged_")]
    assert stats.registry is not _stats(tmp_path).registry


def test_the_endpoint_serves_only_metrics_on_loopback_and_survives_a_failing_probe(
    tmp_path: Path,
) -> None:
    port = free_port()
    fail = threading.Event()

    def probe() -> Counters:
        if fail.is_set():
            raise RuntimeError("probe broke")
        return _counters()

    stats = Stats(StatsConfig(interval_s=0, prometheus_port=port), "cam-1", probe, lambda b: None)
    stats.start()
    try:
        assert stats.endpoint == ("127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/metrics?x=1", timeout=5) as resp:
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert "edged_frames_processed_total 7.0" in resp.read().decode()
        for path in ("/", "/metrics/x", "/favicon.ico"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(url + path, timeout=5)
            assert exc.value.code == 404
        fail.set()
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"{url}/metrics", timeout=5)
        assert exc.value.code == 500
        fail.clear()
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            assert resp.status == 200
    finally:
        stats.stop()
