"""Stats: the retained snapshot a subscriber sees from the real daemon, the Prometheus endpoint
(text format, bound to 127.0.0.1), and the collector's parts in-process."""

from __future__ import annotations

import itertools
import json
import logging
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edged.config import Config, FilesSource, StatsConfig, parse_config
from edged.errors import ConfigError
from edged.features.stats import (
    FIRST_SNAPSHOT_S,
    SAMPLES_MAX,
    Counters,
    Stats,
    cpu_temperature,
    percentile,
    rss_bytes,
)
from tests.broker import Mosquitto, Subscriber, free_port
from tests.daemon import ROOT, DaemonProcess, demo_config
from tests.fakes import make_config
from tests.memory import in_memory_daemon

TOPIC = "edged/cam-1"
STATS_KEYS = {
    "schema", "device", "ts", "uptime_s", "interval_s", "paused", "fps", "inference_ms",
    "frames", "predictions", "queue_depth", "spool_depth", "mqtt", "rss_bytes", "cpu_temp_c",
    "model",
}  # fmt: skip
SAMPLE = re.compile(
    r"^(?P<name>edged_[a-z0-9_]+)(?P<labels>\{[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\]|\\.)*\""
    r"(?:,[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\]|\\.)*\")*\})? (?P<value>-?[0-9.e+-]+|NaN|[+-]Inf)$"
)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """Check the text format strictly enough for Prometheus; {family: {type, help, samples}}."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, doc = line[7:].split(" ", 1)
            assert name not in families, f"{name} twice"
            families[name] = {"help": doc, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name == current and kind in ("counter", "gauge", "summary", "histogram")
            families[name]["type"] = kind
        else:
            m = SAMPLE.match(line)
            assert m is not None, f"not a sample line: {line!r}"
            assert current is not None
            fam = families[current]
            base = m["name"]
            if fam["type"] == "summary":
                base = re.sub(r"_(sum|count)$", "", base)
            assert base == current, f"{line!r} outside its family {current}"
            if fam["type"] == "counter":
                assert current.endswith("_total")
            fam["samples"].append((m["name"], m["labels"] or "", float(m["value"])))
    assert all(f["type"] and f["samples"] for f in families.values())
    return families


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) listening on ``port``."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                found.append(addr)
    return found


def test_stats_are_published_retained_with_sane_numbers_and_served_to_prometheus(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    port = free_port()
    sub = subscriber_factory(broker, f"{TOPIC}/#")
    cfg = demo_config(
        tmp_path,
        broker,
        source={"loop": True, "fps": 10},
        stats={"interval_s": 1, "prometheus_port": port},
    )
    d = start_daemon(cfg)
    msgs = sub.wait_count(3, 15, lambda m: m.topic == f"{TOPIC}/stats")
    s = [json.loads(m.payload) for m in msgs]
    last = s[-1]
    assert set(last) == STATS_KEYS, set(last) ^ STATS_KEYS
    assert last["schema"] == 1 and last["device"] == "cam-1" and last["ts"].endswith("Z")
    # One per second (the uptime the payloads carry).
    assert all(0.5 < b["uptime_s"] - a["uptime_s"] < 1.6 for a, b in itertools.pairwise(s))
    assert 0.9 < last["interval_s"] < 1.5 and last["paused"] is False
    assert 3 <= last["fps"] <= 12, last  # a 10 fps source
    inf = last["inference_ms"]
    assert all(_is_number(inf[k]) for k in ("p50", "p99", "max"))
    assert 0 < inf["p50"] <= inf["p99"] <= inf["max"] < 1000 and 3 <= inf["n"] <= 12
    frames = last["frames"]
    assert set(frames) == {"captured", "processed", "dropped", "skipped"}
    assert all(isinstance(v, int) and v >= 0 for v in frames.values())
    assert frames["processed"] >= 10 and frames["captured"] >= frames["processed"]
    assert last["predictions"] == frames["processed"]  # mode every, nothing below min_score
    assert isinstance(last["queue_depth"], int) and 0 <= last["queue_depth"] < 50
    assert isinstance(last["spool_depth"], int) and last["spool_depth"] >= 0  # spool on
    mq = last["mqtt"]
    assert mq["connected"] is True and mq["failures"] == 0 and mq["dropped"] == 0
    assert all(_is_number(mq[k]) for k in ("published", "inflight", "reconnects"))
    assert 10 * 2**20 < last["rss_bytes"] < 2 * 2**30
    assert last["cpu_temp_c"] is None or 0 < last["cpu_temp_c"] < 120
    assert (last["cpu_temp_c"] is None) == (cpu_temperature() is None)  # null: unreadable
    assert last["model"]["name"] == "digits" and last["model"]["version"] == 1
    assert len(last["model"]["sha256"]) == 64
    assert len(msgs[-1].payload) < 1000
    late = subscriber_factory(broker, f"{TOPIC}/stats")
    assert late.wait_for(lambda m: m.retain, 5)

    # The endpoint: 127.0.0.1 only, valid exposition text, edged_* names.
    assert _listening(port) == ["0100007F"], _listening(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode("utf-8")
    families = parse_exposition(text)
    assert all(name.startswith("edged_") for name in families)
    value = {f"{n}{labels}": v for fam in families.values() for n, labels, v in fam["samples"]}
    assert value["edged_frames_processed_total"] >= frames["processed"]
    assert value["edged_mqtt_connected"] == 1 and value["edged_paused"] == 0
    assert value["edged_mqtt_publish_failures_total"] == 0
    assert 0 < value['edged_inference_seconds{quantile="0.5"}'] < 1
    assert value["edged_inference_seconds_count"] >= 5
    assert families["edged_inference_seconds"]["type"] == "summary"
    assert "edged_spool_depth" in families and "edged_resident_memory_bytes" in families
    info = [lab for n, lab, _ in families["edged_model_info"]["samples"]]
    assert info and 'name="digits"' in info[0] and 'version="1"' in info[0]
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    assert exc.value.code == 404
    rc, took = d.terminate()
    assert rc == 0 and took < 2.0, (rc, took)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        pass  # closed with the daemon


def _memory_config(tmp_path: Path, **sections: Any) -> Config:
    cfg = make_config(tmp_path / "state", **sections)
    assert isinstance(cfg.source, FilesSource)
    cfg.source.fps = 10
    return cfg


def test_the_first_snapshot_comes_soon_after_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first snapshot comes FIRST_SNAPSHOT_S after start, with this run's frames in it,
    though the interval is longer; the next one a whole interval later, nothing between."""
    interval = 8.0
    assert interval > FIRST_SNAPSHOT_S + 2  # else the two could not be told apart
    cfg = _memory_config(tmp_path, stats={"interval_s": interval})
    assert isinstance(cfg.source, FilesSource)
    cfg.source.loop = True
    with in_memory_daemon(cfg, monkeypatch) as (_d, broker):
        broker.wait_for(
            lambda m: len(broker.on(f"{TOPIC}/stats")) >= 2, FIRST_SNAPSHOT_S + interval + 10
        )
        first, second = (m.json() for m in broker.on(f"{TOPIC}/stats")[:2])
    assert FIRST_SNAPSHOT_S - 0.5 < first["uptime_s"] < FIRST_SNAPSHOT_S + 2, first
    assert first["frames"]["processed"] >= 10 and 3 <= first["fps"] <= 12, first
    assert interval - 1 < second["uptime_s"] - first["uptime_s"] < interval + 1.5, second
    assert broker.on(f"{TOPIC}/stats")[0].retain


def test_stats_interval_0_publishes_nothing_until_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _memory_config(tmp_path, stats={"interval_s": 0})
    with caplog.at_level(logging.INFO), in_memory_daemon(cfg, monkeypatch) as (_d, broker):
        stopped = broker.wait_for(
            lambda m: m.topic == f"{TOPIC}/availability" and m.payload == b"stopped", 30
        )  # the samples, once each, then the daemon ends by itself
    assert stopped.retain and broker.on(f"{TOPIC}/prediction")
    assert not broker.on(f"{TOPIC}/stats")
    assert "stopped after" in caplog.text and "metrics on" not in caplog.text


def test_the_documented_example_has_the_published_keys() -> None:
    page = (ROOT / "docs" / "mqtt-api.md").read_text(encoding="utf-8")
    section = page.split("\n## Stats\n", 1)[1].split("\n## ", 1)[0]
    (shown,) = re.findall(r"```json\n(.*?)```", section, re.DOTALL)
    assert set(json.loads(shown)) == STATS_KEYS


# -- in-process --------------------------------------------------------------------------------


class FakeDaemon:
    def __init__(self) -> None:
        self.processed = 0
        self.captured = 0
        self.paused = False
        self.published: list[bytes] = []

    def counters(self) -> Counters:
        return Counters(
            processed=self.processed, predictions=self.processed, captured=self.captured,
            dropped=self.captured - self.processed, skipped=0, paused=self.paused,
            model={"name": 'a "quoted"\nname', "version": None, "sha256": "0" * 64},
            mqtt={"published": 3, "failures": 1, "dropped": 0, "queued": 5, "inflight": 2,
                  "reconnects": 0, "connect_failures": 0},
            connected=False, spool_depth=None,
        )  # fmt: skip


def test_intervals_percentiles_and_exposition(tmp_path: Path) -> None:
    fake = FakeDaemon()
    thermal = tmp_path / "temp"
    thermal.write_text("48312\n")
    stats = Stats(StatsConfig(interval_s=0), "cam-1", fake.counters, fake.published.append,
                  thermal_path=thermal)  # fmt: skip
    for ms in range(1, 101):  # the frame loop's only cost: one append to a bounded deque
        stats.record(float(ms))
    fake.processed, fake.captured = 100, 120
    time.sleep(0.05)
    snap = stats.publish_now()
    assert json.loads(fake.published[-1]) == snap
    assert snap["inference_ms"] == {"p50": 50.0, "p99": 99.0, "max": 100.0, "n": 100}
    assert snap["fps"] > 0 and snap["cpu_temp_c"] == 48.3
    assert snap["queue_depth"] == 3 and snap["spool_depth"] is None
    assert snap["frames"]["dropped"] == 20
    # The next interval starts empty.
    nxt = stats.snapshot()
    assert (
        nxt["inference_ms"]["n"] == 0 and nxt["fps"] == 0.0 and nxt["inference_ms"]["p50"] is None
    )

    families = parse_exposition(stats.metrics_text())
    assert "edged_spool_depth" not in families  # no spool
    assert families["edged_cpu_temperature_celsius"]["samples"][0][2] == 48.3
    (summary,) = [families["edged_inference_seconds"]]
    values = {n + lab: v for n, lab, v in summary["samples"]}
    assert values["edged_inference_seconds_count"] == 100
    assert values["edged_inference_seconds_sum"] == pytest.approx(5.05)
    info = families["edged_model_info"]["samples"][0][1]
    assert info == '{name="a \\"quoted\\"\\nname",sha256="' + "0" * 64 + '",version=""}'

    thermal.write_text("garbage")
    assert cpu_temperature(thermal) is None
    assert cpu_temperature(tmp_path / "missing") is None
    assert "edged_cpu_temperature_celsius" not in parse_exposition(stats.metrics_text())


def test_buffer_is_bounded_and_percentiles_are_nearest_rank() -> None:
    fake = FakeDaemon()
    stats = Stats(StatsConfig(), "cam-1", fake.counters, fake.published.append)
    for _ in range(SAMPLES_MAX + 500):
        stats.record(1.0)
    assert stats.snapshot()["inference_ms"]["n"] == SAMPLES_MAX
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 1001)], 99) == 990.0
    rss = rss_bytes()
    assert rss is None or rss > 2**20


def test_prometheus_binds_where_told_and_reports_a_busy_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeDaemon()
    port = free_port()
    stats = Stats(StatsConfig(interval_s=0, prometheus_port=port), "cam-1", fake.counters,
                  fake.published.append)  # fmt: skip
    stats.start()
    try:
        assert stats.endpoint == ("127.0.0.1", port)
        busy = Stats(StatsConfig(prometheus_port=port), "x", fake.counters, fake.published.append)
        busy.start()  # the daemon keeps running without the endpoint
        assert busy.endpoint is None and "cannot listen" in caplog.text
        busy.stop()
    finally:
        stats.stop()


def test_stats_config_is_validated() -> None:
    base = {"device_id": "a", "source": {"type": "files", "path": "x"}, "model": {"path": "m"}}
    cfg = parse_config(base, {})
    assert (cfg.stats.interval_s, cfg.stats.prometheus_port) == (60.0, 0)
    assert cfg.stats.prometheus_host == "127.0.0.1"
    assert cfg.homeassistant.enabled and cfg.homeassistant.discovery_prefix == "homeassistant"
    assert cfg.control.enabled
    for patch, problem in [
        ({"interval_s": 0.1}, "stats.interval_s: must be 0 (off) or at least 0.5"),
        ({"interval_s": -1}, "stats.interval_s: Input should be greater than or equal to 0"),
        ({"prometheus_port": 70000}, "stats.prometheus_port: Input should be less than 65536"),
        ({"listen": "0.0.0.0"}, "stats.listen: unknown key"),
    ]:
        with pytest.raises(ConfigError) as exc:
            parse_config({**base, "stats": patch}, {})
        assert any(p.startswith(problem) for p in exc.value.problems), exc.value.problems
    with pytest.raises(ConfigError) as exc:
        parse_config({**base, "homeassistant": {"discovery_prefix": "ha/#"}}, {})
    assert exc.value.problems[0].startswith("homeassistant.discovery_prefix: String should match")
