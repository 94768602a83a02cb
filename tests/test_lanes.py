"""Several interpreters at once (a plan such as ``3x1``): one lane per interpreter, results in
the order their frames were taken, seq rising by one, nothing lost; a lane that fails stops
the daemon instead of hanging it; a model swap to more or fewer interpreters."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edged.model.classifier import Classifier
from tests.broker import Mosquitto, Subscriber
from tests.daemon import DEMO_MODEL, SAMPLES, DaemonProcess, demo_config
from tests.memory import assert_in_capture_order, files_daemon, predictions

TOPIC = "edged/cam-1"
NAMES = sorted(p.name for p in SAMPLES.iterdir())


def test_three_interpreters_publish_every_frame_once_in_capture_order(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """A real daemon process on 3 single-threaded interpreters, a files source faster than
    the model, looping: seq rises by one, frames come out in file order, capture times never
    go backwards; a restart goes on from the last seq."""
    sub = subscriber_factory(broker, f"{TOPIC}/prediction")
    cfg = demo_config(
        tmp_path,
        broker,
        source={"type": "files", "path": str(SAMPLES), "fps": 1000, "loop": True},
        model={"path": str(DEMO_MODEL), "threads": 1, "interpreters": 3},
    )
    d = start_daemon(cfg)
    msgs = sub.wait_count(300, 60)
    rc, _ = d.terminate()
    assert rc == 0, d.log()
    assert "3x1 interpreters x threads" in d.log()
    events = [json.loads(m.payload) for m in sub.messages]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= len(msgs)
    frames = [e["frame"] for e in events]
    start = NAMES.index(frames[0])
    assert frames == [NAMES[(start + i) % len(NAMES)] for i in range(len(frames))]
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps)
    # Again, with 2: seq goes on where it stopped.
    cfg["model"]["interpreters"] = 2
    d2 = start_daemon(cfg)
    more = sub.wait_count(len(seqs) + 50, 60)
    assert d2.terminate()[0] == 0, d2.log()
    later = [json.loads(m.payload)["seq"] for m in more]
    assert later == list(range(1, len(later) + 1))


@pytest.mark.parametrize("failing_lane", ["MainThread", "edged-lane-1"])
def test_a_lane_that_fails_stops_the_daemon_and_every_lane_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_lane: str
) -> None:
    """Whichever lane's interpreter breaks (lane 0 is the main thread), run() raises its error
    within 3 s, no lane is left running, and what was published is in order."""
    clf = Classifier.load(DEMO_MODEL, threads=1, interpreters=3)
    daemon, broker = files_daemon(tmp_path, clf, fps=200, loop=True)
    real = clf.infer
    calls = [0]

    def failing(tensor: np.ndarray) -> tuple[np.ndarray, float]:
        calls[0] += 1
        if threading.current_thread().name == failing_lane and calls[0] > 20:
            raise RuntimeError(f"the interpreter of {failing_lane} broke")
        return real(tensor)

    monkeypatch.setattr(clf, "infer", failing)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=f"the interpreter of {failing_lane} broke"):
        daemon.run()
    took = time.monotonic() - t0
    alive = [t.name for t in threading.enumerate() if t.name.startswith("edged-lane-")]
    assert took < 3.0 and alive == [], (took, alive)
    seqs = [e["seq"] for e in predictions(broker)]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 10


@pytest.mark.parametrize(("before", "after"), [(1, 3), (3, 1)])
def test_a_new_model_with_more_or_fewer_interpreters_takes_over_in_order(
    tmp_path: Path, before: int, after: int
) -> None:
    """The swap is a pointer swap between frames (as an update's); lanes are added for more
    interpreters and left idle for fewer; seq and frame order go on unbroken."""
    old = Classifier.load(DEMO_MODEL, threads=1, interpreters=before)
    new = Classifier.load(DEMO_MODEL, threads=1, interpreters=after)
    daemon, broker = files_daemon(tmp_path, old, fps=300, loop=True)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while len(predictions(broker)) < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        daemon.classifier = new
        n = len(predictions(broker))
        while len(predictions(broker)) < n + 150 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        daemon.request_stop()
        runner.join(10)
    assert not runner.is_alive()
    assert len(daemon._lanes) + 1 == max(before, after)
    events = predictions(broker)
    assert_in_capture_order(events)
    assert len(events) >= 250
