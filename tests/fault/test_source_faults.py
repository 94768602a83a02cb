"""Camera and stream faults with the real files source: no frames, a source that raises, a read
that hangs in the kernel.

Each time the daemon must stay up, report the fault on the retained ``health`` topic, retry
with exponential backoff (retry_min_s doubling to retry_max_s: the debug line "source: next
attempt in X s" marks each fault, timed here as it arrives), and resume when frames return.
A hang longer than ``read_timeout_s`` is reported; one longer than the watchdog interval stops
the WATCHDOG=1 pings (so that systemd restarts the service), and they resume once the read
returns. systemd is faked by a notify socket the test binds.

Prints one line of figures per scenario (``pytest -s``) for the README's reliability table.
"""

from __future__ import annotations

import itertools
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker import Mosquitto, Subscriber
from tests.daemon import SAMPLES, demo_config, write_config
from tests.fault.harness import (
    LiveDaemon,
    NotifySocket,
    device_topic,
    lease,
    sample_process,
    wait_health,
)

pytestmark = pytest.mark.fault

DEVICE = "cam-1"
PREDICTION = device_topic(DEVICE, "prediction")
FPS = 20
RETRY_MIN_S = 0.25
RETRY_MAX_S = 2.0
ATTEMPT = re.compile(r"source: next attempt in ([\d.]+) s")


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket(2_000_000)
    yield sock
    sock.close()


@pytest.fixture
def start(tmp_path: Path, notify: NotifySocket) -> Iterator[Callable[[dict[str, Any]], LiveDaemon]]:
    made: list[LiveDaemon] = []

    def run(cfg: dict[str, Any]) -> LiveDaemon:
        path = write_config(tmp_path / f"edged-{len(made)}.toml", cfg)
        made.append(LiveDaemon(path, env=notify.env))
        return made[-1]

    yield run
    for d in made:
        d.close()


def _config(tmp_path: Path, broker: Mosquitto, path: Path, **source: Any) -> dict[str, Any]:
    return demo_config(
        tmp_path,
        broker,
        log_level="debug",  # type: ignore[arg-type]
        source={
            "path": str(path),
            "loop": True,
            "fps": FPS,
            "retry_min_s": RETRY_MIN_S,
            "retry_max_s": RETRY_MAX_S,
            **source,
        },
        publish={"mode": "every", "heartbeat_s": 0},
    )


def _fill(directory: Path, n: int) -> list[Path]:
    directory.mkdir(exist_ok=True)
    samples = sorted(SAMPLES.glob("*.png"))[:n]
    out = []
    for i, src in enumerate(samples):
        out.append(directory / f"{i:03d}.png")
        shutil.copy(src, out[-1])
    return out


def _backoff(daemon: LiveDaemon, since: float, until: float) -> tuple[list[float], list[float]]:
    """(announced delays, measured intervals between consecutive faults) in [since, until]."""
    lines = daemon.lines(ATTEMPT.pattern, since)
    lines = [(t, s) for t, s in lines if t <= until]
    delays = [float(m.group(1)) for _, s in lines if (m := ATTEMPT.search(s))]
    times = [t for t, _ in lines]
    return delays, [b - a for a, b in itertools.pairwise(times)]


def _assert_backoff(delays: list[float], intervals: list[float], slack: float = 0.5) -> None:
    expected = [min(RETRY_MIN_S * 2**i, RETRY_MAX_S) for i in range(len(delays))]
    assert delays == expected, delays
    assert RETRY_MAX_S in delays, delays  # the delays grew all the way to retry_max_s
    for announced, took in zip(delays, intervals, strict=False):
        # The next fault comes one (failed) attempt after the announced delay.
        assert announced - 0.05 <= took <= announced + slack, (delays, intervals)


def test_no_frames_then_files_appear(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    notify: NotifySocket,
    start: Callable[[dict[str, Any]], LiveDaemon],
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    sub = subscriber_factory(broker, f"edged/{DEVICE}/#", qos=1)
    daemon = start(_config(tmp_path, broker, incoming))
    ready = notify.wait_for("READY=1", 30)
    _, health = wait_health(sub, DEVICE, lambda h: not h["ok"], 15)
    assert "matches no images" in health["error"], health
    first, _ = daemon.wait_line(ATTEMPT.pattern, 5)
    window = 8.0
    time.sleep(max(0.0, first + window - time.monotonic()))
    delays, intervals = _backoff(daemon, first, first + window)
    assert daemon.alive(), daemon.log()

    _fill(incoming, 5)
    appeared = time.monotonic()
    sub.wait_count(3, RETRY_MAX_S + 5, predicate=lambda m: m.topic == PREDICTION)
    resumed_s = time.monotonic() - appeared
    _, ok = wait_health(sub, DEVICE, lambda h: h["ok"], 5)
    end = time.monotonic()
    gap = notify.max_gap(ready, end)
    print(
        f"\nno frames (empty directory): health ok=false '{health['error'][:40]}...'; "
        f"{len(delays)} retries in {window:g} s, delays {delays} s, measured "
        f"{[round(i, 2) for i in intervals]} s; predictions {resumed_s:.2f} s after files "
        f"appeared; health ok=true, faults={ok['faults']}; longest watchdog gap {gap:.2f} s"
    )
    _assert_backoff(delays, intervals)
    assert resumed_s <= RETRY_MAX_S + 1.5, resumed_s
    assert ok["faults"] == 1 and ok["error"] is None
    assert gap < notify.watchdog_s, gap  # retrying is not a hang: the watchdog is fed
    assert daemon.terminate() == 0


def test_source_that_raises_when_its_directory_vanishes(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    notify: NotifySocket,
    start: Callable[[dict[str, Any]], LiveDaemon],
) -> None:
    frames = tmp_path / "frames"
    _fill(frames, 5)
    sub = subscriber_factory(broker, f"edged/{DEVICE}/#", qos=1)
    daemon = start(_config(tmp_path, broker, frames))
    ready = notify.wait_for("READY=1", 30)
    sub.wait_count(5, 15, predicate=lambda m: m.topic == PREDICTION)

    removed = time.monotonic()
    shutil.rmtree(frames)  # the files vanish under the open source: reads raise
    seen, h1 = wait_health(sub, DEVICE, lambda h: not h["ok"], 5)
    _, h2 = wait_health(sub, DEVICE, lambda h: "no such file or directory" in str(h["error"]), 5)
    window = 8.0
    time.sleep(max(0.0, removed + window - time.monotonic()))
    delays, intervals = _backoff(daemon, removed, removed + window)
    assert daemon.alive(), daemon.log()
    before = sum(m.topic == PREDICTION for m in sub.messages)

    _fill(frames, 5)
    back = time.monotonic()
    sub.wait_count(before + 3, RETRY_MAX_S + 5, predicate=lambda m: m.topic == PREDICTION)
    resumed_s = time.monotonic() - back
    _, ok = wait_health(sub, DEVICE, lambda h: h["ok"], 5)
    end = time.monotonic()
    gap = notify.max_gap(ready, end)
    print(
        f"\nsource raises (directory removed): fault reported after {seen - removed:.2f} s "
        f"('{h1['error'][:50]}...', then '{h2['error'][:45]}...'); {len(delays)} retries in "
        f"{window:g} s, delays {delays} s; predictions {resumed_s:.2f} s after the files "
        f"returned; health ok=true, faults={ok['faults']}; longest watchdog gap {gap:.2f} s"
    )
    assert "can be read" in h1["error"], h1
    _assert_backoff(delays, intervals)
    assert resumed_s <= RETRY_MAX_S + 1.5, resumed_s
    assert ok["faults"] == 2 and ok["error"] is None
    assert gap < notify.watchdog_s, gap
    assert daemon.terminate() == 0


def test_hung_read_is_reported_and_starves_the_watchdog_until_it_returns(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    notify: NotifySocket,
    start: Callable[[dict[str, Any]], LiveDaemon],
) -> None:
    read_timeout_s, retry_max_s, hang_s = 1.0, 1.0, 6.0
    frames = tmp_path / "frames"
    paths = _fill(frames, 3)
    sub = subscriber_factory(broker, f"edged/{DEVICE}/#", qos=1)
    daemon = start(
        _config(tmp_path, broker, frames, read_timeout_s=read_timeout_s, retry_max_s=retry_max_s)
    )
    notify.wait_for("READY=1", 30)
    sub.wait_count(5, 15, predicate=lambda m: m.topic == PREDICTION)
    baseline = sample_process(daemon.pid)
    assert baseline is not None

    # The first file (where every fresh source starts) is leased: open() blocks in the kernel.
    with lease(paths[0]) as held:
        hung = held.taken
        seen, health = wait_health(sub, DEVICE, lambda h: not h["ok"], read_timeout_s + 3)
        time.sleep(max(0.0, hung + hang_s - time.monotonic()))
        during = sample_process(daemon.pid)
        assert daemon.alive(), daemon.log()
        released = held.release()
    before = sum(m.topic == PREDICTION for m in sub.messages)
    resumed = notify.wait_for("WATCHDOG=1", 5, since=released)
    sub.wait_count(before + 3, 5, predicate=lambda m: m.topic == PREDICTION)
    _, ok = wait_health(sub, DEVICE, lambda h: h["ok"], 5)
    time.sleep(1.0)
    after = sample_process(daemon.pid)
    assert during is not None and after is not None

    in_hang = notify.pings(hung, released)
    last = in_hang[-1] if in_hang else hung
    silence = resumed - last
    retries = len(daemon.lines(ATTEMPT.pattern, hung))
    print(
        f"\nhung read ({hang_s:g} s, read_timeout_s {read_timeout_s:g}, WatchdogSec "
        f"{notify.watchdog_s:g}): reported after {seen - hung:.2f} s ('{health['error']}'), "
        f"{retries} retries; last WATCHDOG=1 {last - hung:.2f} s into the hang, then none for "
        f"{silence:.2f} s (systemd restarts after {notify.watchdog_s:g} s); pings resumed "
        f"{resumed - released:.2f} s after the read returned; threads {baseline.threads} -> "
        f"{during.threads} (hung readers) -> {after.threads}; health ok again after the hang"
    )
    assert health["error"] == f"read timed out after {read_timeout_s:g} s", health
    assert retries >= 2  # each fresh source hangs too, after a growing delay
    assert seen - hung <= read_timeout_s + 3 / FPS + 0.5, seen - hung
    # Pings go on while the hang is shorter than WatchdogSec, and stop once it is longer.
    frame_slack = 3 / FPS + 0.25
    assert last - hung <= notify.watchdog_s + frame_slack, last - hung
    assert silence > notify.watchdog_s + 1.0, silence  # long enough for systemd to act
    assert not notify.pings(last + 0.01, released)
    assert resumed - released <= retry_max_s + 1.0, resumed - released
    assert ok["ok"] and ok["error"] is None
    assert after.threads <= baseline.threads + 1, (baseline, after)  # hung readers exited
    assert daemon.terminate() == 0
