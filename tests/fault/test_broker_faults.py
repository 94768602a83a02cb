"""The broker frozen (SIGSTOP) for 30 s -- a half-open connection -- and a short soak with broker
restarts.

The TCP connection stays up -- the kernel still accepts what the daemon sends -- but nothing
comes back. The daemon must notice through the MQTT keepalive (within 2 x keepalive_s),
reconnect after SIGCONT, and keep feeding the systemd watchdog all along: publishing never
blocks the frame loop. systemd is faked by a notify socket the test binds (WATCHDOG_USEC=2 s,
no WATCHDOG_PID, as systemd sets it for the main process).

The soak runs the real daemon at fps=1000 on the demo model with the broker restarted every
3,000 frames and checks that RSS, threads and fds stay flat after a warm-up; the long version is
``python -m tests.soak --frames 200000``.

Prints one line of figures per scenario (``pytest -s``) for the README's reliability table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edged.publish.connect import LOOP_TIMEOUT_S
from tests.broker import Mosquitto, Received, Subscriber
from tests.daemon import demo_config, write_config
from tests.fault.harness import LiveDaemon, NotifySocket, device_topic
from tests.soak import problems, run_soak

pytestmark = pytest.mark.fault

DEVICE = "cam-1"
KEEPALIVE_S = 5
FREEZE_S = 30.0
FPS = 10
WATCHDOG_USEC = 2_000_000


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket(WATCHDOG_USEC)
    yield sock
    sock.close()


def test_frozen_broker_is_detected_by_keepalive_and_the_watchdog_never_starves(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    notify: NotifySocket,
) -> None:
    prediction = device_topic(DEVICE, "prediction")
    cfg = demo_config(
        tmp_path,
        broker,
        source={"loop": True, "fps": FPS},
        mqtt={"keepalive_s": KEEPALIVE_S, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        publish={"mode": "every", "qos": 1, "heartbeat_s": 0},
    )
    daemon = LiveDaemon(write_config(tmp_path / "edged.toml", cfg), env=notify.env)
    try:
        ready = notify.wait_for("READY=1", 30)
        daemon.wait_line(r"edged\.mqtt: connected to", 10)
        sub = subscriber_factory(broker, prediction, qos=1)
        sub.wait_count(5, 10)

        frozen = time.monotonic()
        broker.freeze()
        lost, lost_line = daemon.wait_line(
            r"connection to \S+ lost", 2 * KEEPALIVE_S + 5, since=frozen
        )
        detect_s = lost - frozen
        time.sleep(max(0.0, frozen + FREEZE_S - time.monotonic()))
        assert daemon.alive(), daemon.log()
        thawed, thawed_wall = time.monotonic(), time.time()
        broker.thaw()
        back, back_line = daemon.wait_line(r"edged\.mqtt: reconnected to", 15, since=thawed)
        reconnect_s = back - thawed

        after = subscriber_factory(broker, prediction, qos=1)
        # Predictions flow again: the ones held during the freeze, then live ones.
        live = after.wait_for(lambda m: _captured(m) > thawed_wall + 1.0, 15)
        live_s = _captured(live) - thawed_wall
        time.sleep(1.0)
        retained = subscriber_factory(broker, device_topic(DEVICE, "availability"), qos=1)
        avail = retained.wait_for(lambda m: m.retain, 5).text
        end = time.monotonic()
        assert daemon.alive(), daemon.log()
    finally:
        rc = daemon.terminate()
        daemon.close()

    fields = [m for _, m in notify.messages()]
    pings = notify.pings(ready, end)
    gap_freeze = notify.max_gap(frozen, thawed)
    gap_all = notify.max_gap(ready, end)
    resent = int(back_line.rsplit(", ", 1)[1].split()[0]) if "waiting" in back_line else 0
    events = [json.loads(m.payload) for m in after.messages]
    held = sum(1 for m in after.messages if _captured(m) < thawed_wall)
    print(
        f"\nbroker frozen {FREEZE_S:.0f} s (keepalive {KEEPALIVE_S} s): half-open connection "
        f"detected after {detect_s:.2f} s (2 x keepalive = {2 * KEEPALIVE_S} s), reconnected "
        f"{reconnect_s:.3f} s after SIGCONT with {resent} message(s) waiting ({held} "
        f"predictions made during the freeze delivered after it); "
        f"{len(pings)} WATCHDOG=1 pings, longest gap {gap_freeze:.2f} s during the freeze, "
        f"{gap_all:.2f} s overall (WatchdogSec {notify.watchdog_s:g} s); availability {avail}"
    )
    assert fields[0] == "READY=1", fields[:5]
    assert "WATCHDOG=1" not in fields[: fields.index("READY=1")]
    # paho closes the connection 2 x keepalive after the last byte it received, checked each
    # time its loop wakes (every LOOP_TIMEOUT_S): the PINGREQ and the close can each be late by
    # that much.
    assert detect_s <= 2 * KEEPALIVE_S + 2 * LOOP_TIMEOUT_S, (detect_s, lost_line)
    assert reconnect_s <= 5.0, (reconnect_s, back_line)
    assert gap_freeze < notify.watchdog_s, gap_freeze
    assert gap_all < notify.watchdog_s, gap_all
    assert avail == "online"
    assert events[-1]["seq"] > events[0]["seq"] and live_s >= 1.0
    assert held >= FREEZE_S * FPS * 0.8, held
    assert rc == 0


def _captured(m: Received) -> float:
    """Wall-clock capture time of a prediction (its ``ts``)."""
    ts = json.loads(m.payload)["ts"]
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


# -- soak (short): the long one is `python -m tests.soak --frames 200000` ----------------------

SOAK_FRAMES = 15_000
SOAK_RESTART_EVERY = 3_000


@pytest.mark.broker  # tests/soak.py starts its own broker
def test_short_soak_with_broker_restarts_keeps_memory_threads_and_fds_flat(
    tmp_path: Path,
) -> None:
    report = run_soak(
        SOAK_FRAMES, fps=1000, restart_every=SOAK_RESTART_EVERY, warmup_s=5.0, workdir=tmp_path
    )
    rss, thr, fds = report["rss_kib"], report["threads"], report["fds"]
    print(
        f"\nsoak (short): {report['frames']} frames in {report['duration_s']} s "
        f"({report['fps']} fps, fps=1000 asked), {report['broker_restarts']} broker restarts; "
        f"after {report['warmup_s']:g} s warm-up RSS {rss['start'] / 1024:.1f} -> "
        f"{rss['end'] / 1024:.1f} MiB (max {rss['max'] / 1024:.1f}), threads "
        f"{thr['start']} -> {thr['end']} ({thr['min']}-{thr['max']}), fds {fds['start']} -> "
        f"{fds['end']} ({fds['min']}-{fds['max']})\n{json.dumps(report)}"
    )
    assert report["frames"] >= SOAK_FRAMES
    assert report["broker_restarts"] >= SOAK_FRAMES // SOAK_RESTART_EVERY - 1
    assert report["published"] == report["frames"]
    assert not problems(report), problems(report)
