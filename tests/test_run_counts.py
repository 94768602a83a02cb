"""The last log line of ``edged run``, "stopped after N frames (M published)", counts this run:
M is the predictions this process published, not the device's running ``seq`` (which goes on
across restarts, and jumps after a crash)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from tests.broker import Mosquitto, Subscriber
from tests.daemon import SAMPLES, DaemonProcess, demo_config

N_SAMPLES = len(list(SAMPLES.glob("*.png")))
STOPPED = re.compile(r"stopped after (\d+) frames \((\d+) published\)")


def _run(start_daemon: Callable[..., DaemonProcess], cfg: dict[str, Any]) -> tuple[int, int]:
    daemon = start_daemon(cfg)
    assert daemon.wait(60) == 0, daemon.log()
    found = STOPPED.findall(daemon.log())
    assert len(found) == 1, daemon.log()
    frames, published = found[0]
    return int(frames), int(published)


def test_published_counts_this_run_not_the_running_seq(
    tmp_path: Any,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    sub = subscriber_factory(broker, "edged/cam-1/prediction")
    cfg = demo_config(tmp_path, broker, source={"fps": 40})
    assert _run(start_daemon, cfg) == (N_SAMPLES, N_SAMPLES)
    sub.wait_count(N_SAMPLES, timeout=30)

    # The same state dir again: seq goes on after the first run's last number ...
    assert _run(start_daemon, cfg) == (N_SAMPLES, N_SAMPLES)
    got = sub.wait_count(2 * N_SAMPLES, timeout=30)
    seqs = [json.loads(m.payload)["seq"] for m in got]
    assert seqs == list(range(1, 2 * N_SAMPLES + 1))

    # ... and a run that publishes fewer than it classifies says so (change mode: one per
    # label change; the samples come in label order, two of each).
    changed = demo_config(
        tmp_path, broker, source={"fps": 40}, publish={"mode": "change", "agree_n": 1, "agree_m": 1}
    )
    frames, published = _run(start_daemon, changed)
    got = sub.wait_count(2 * N_SAMPLES + published, timeout=30)
    assert frames == N_SAMPLES
    assert 0 < published < N_SAMPLES
    assert len(got) == 2 * N_SAMPLES + published
