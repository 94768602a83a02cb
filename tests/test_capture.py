from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edged.errors import SourceError
from edged.frames.capture import Capture, SourceHealth
from edged.sources.base import Frame, FrameSource
from tests.fakes import CountingSource


class ScriptedSource(FrameSource):
    """Plays a script shared across instances: 'f' frame, 'e' raise, 'h' hang, 'x' end."""

    def __init__(self, script: list[str], release: threading.Event) -> None:
        self.script, self.release = script, release

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        step = self.script.pop(0) if self.script else "f"
        if step == "e":
            raise SourceError("camera unplugged")
        if step == "h":
            self.release.wait(10)
        if step == "x":
            return None
        time.sleep(0.01)
        return Frame(np.zeros((2, 2, 3), np.uint8))

    def close(self) -> None:
        pass


def _capture(script: list[str], **kw: float) -> tuple[Capture, list[SourceHealth], threading.Event]:
    health: list[SourceHealth] = []
    release = threading.Event()
    cap = Capture(
        lambda: ScriptedSource(script, release),
        read_timeout_s=kw.get("timeout", 0.3),
        retry_min_s=0.05,
        retry_max_s=0.2,
        on_health=health.append,
    )
    return cap, health, release


def _drain(cap: Capture, n: int, deadline_s: float = 5.0) -> int:
    got, end = 0, time.monotonic() + deadline_s
    while got < n and time.monotonic() < end:
        cap.check_hang(time.monotonic())
        if cap.get(0.05) is not None:
            got += 1
    return got


def test_fault_is_reported_retried_and_recovers() -> None:
    cap, health, _ = _capture(["f", "e", "e", "f"])
    cap.start()
    assert _drain(cap, 5) == 5
    cap.stop()
    assert [h.ok for h in health] == [False, True]
    assert health[0].error == "camera unplugged" and health[0].faults == 1


def test_hung_read_is_abandoned_and_a_new_worker_takes_over() -> None:
    cap, health, release = _capture(["f", "h"], timeout=0.3)
    cap.start()
    assert _drain(cap, 4) == 4
    assert health[0].ok is False and "timed out" in (health[0].error or "")
    assert health[-1].ok is True
    release.set()
    cap.stop()


def test_end_of_stream_is_seen_and_only_newest_frame_kept() -> None:
    cap, _, _ = _capture(["f", "f", "f", "x"])
    cap.start()
    deadline = time.monotonic() + 5
    while not cap.ended and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cap.ended and cap.frames == 3
    assert cap.get(0.01) is not None
    assert cap.get(0.01) is None
    assert cap.dropped == 2


@pytest.mark.parametrize("watchdog", [True])
def test_hang_marks_hung_since_until_a_read_returns(watchdog: bool) -> None:
    cap, _, release = _capture(["h", "h", "h", "h"], timeout=0.1)
    cap.start()
    time.sleep(0.2)
    cap.check_hang(time.monotonic())
    assert cap.hung_since is not None
    release.set()
    assert _drain(cap, 1) == 1
    assert cap.hung_since is None
    cap.stop()


def test_frames_are_prepared_before_offered_and_replaced_ones_discarded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prepared: list[Frame] = []
    discarded: list[Frame] = []

    def prepare(frame: Frame) -> None:
        if len(prepared) == 1:
            prepared.append(frame)
            raise RuntimeError("no buffer")  # a bug here must not stop capture
        frame.name = "prepared"
        prepared.append(frame)

    release = threading.Event()
    cap = Capture(
        lambda: ScriptedSource(["f", "f", "f", "x"], release),
        read_timeout_s=5,
        retry_min_s=0.01,
        retry_max_s=0.05,
        prepare=prepare,
        discard=discarded.append,
    )
    cap.start()
    deadline = time.monotonic() + 5
    while not cap.ended and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cap.ended and len(prepared) == 3
    last = cap.get(0.01)
    assert last is prepared[2] and last.name == "prepared"
    assert discarded == prepared[:2]  # replaced before being taken: handed back
    assert caplog.text.count("preparing a frame failed: RuntimeError: no buffer") == 1
    cap.stop()


def test_on_demand_reads_and_prepares_only_the_frames_asked_for() -> None:
    src = CountingSource()
    prepared: list[Frame] = []
    cap = Capture(
        lambda: src, read_timeout_s=5, retry_min_s=0.01, retry_max_s=0.05,
        prepare=prepared.append, demand=True,
    )  # fmt: skip
    cap.start()
    try:
        time.sleep(0.3)
        assert src.reads == 0  # nobody asked: nothing read
        for i in range(1, 6):
            cap.request()
            frame = cap.get(2.0)
            assert frame is not None and frame is prepared[-1] and frame.ticket == i - 1
            time.sleep(0.05)  # a free-running capture would read many meanwhile
            assert src.reads == i and len(prepared) == i
        assert cap.get(0.1) is None  # a get() asks for nothing
        cap.request()
        cap.request()  # two asked before either is taken: both kept, in order
        time.sleep(0.1)
        first, second = cap.get(1.0), cap.get(1.0)
        assert first is not None and second is not None
        assert (first.ticket, second.ticket) == (5, 6) and first.captured <= second.captured
        assert src.reads == 7 and cap.frames == 7 and cap.dropped == 0
    finally:
        cap.stop()


def test_on_demand_requests_add_up_for_several_lanes() -> None:
    """Two lanes each asking ahead get a frame each: requests are counted, not merged, and
    no frame is read that nobody takes."""
    src = CountingSource()
    cap = Capture(lambda: src, read_timeout_s=5, retry_min_s=0.01, retry_max_s=0.05, demand=True)
    cap.start()
    taken: list[int] = []
    lock = threading.Lock()

    def lane() -> None:
        for _ in range(20):
            cap.request()
            frame = cap.get(2.0)
            assert frame is not None
            with lock:
                taken.append(frame.ticket)

    try:
        lanes = [threading.Thread(target=lane) for _ in range(2)]
        for t in lanes:
            t.start()
        for t in lanes:
            t.join(10)
        time.sleep(0.1)
        assert sorted(taken) == list(range(40))  # every frame taken once, tickets in order
        assert src.reads == 40 and cap.dropped == 0
    finally:
        cap.stop()


def test_on_demand_counts_what_the_source_let_pass() -> None:
    class Late(CountingSource):
        def read(self) -> Frame | None:
            self.dropped += 2  # two camera frames came and went undecoded meanwhile
            return super().read()

    src = Late()
    cap = Capture(lambda: src, read_timeout_s=5, retry_min_s=0.01, retry_max_s=0.05, demand=True)
    cap.start()
    try:
        for _ in range(3):
            cap.request()
            assert cap.get(2.0) is not None
        assert cap.dropped == 6
    finally:
        cap.stop()
