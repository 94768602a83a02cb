"""In-service checks of a new model (the frame loop's side of automatic rollback)."""

from __future__ import annotations

import numpy as np

from edged.update.monitor import ServiceMonitor


class Calls:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def monitor(self, window: int = 5, probation: int = 50) -> ServiceMonitor:
        return ServiceMonitor(
            window=window,
            probation=probation,
            on_fail=self.failed.append,
            on_pass=self._pass,
            description="digits v2",
        )

    def _pass(self) -> None:
        self.passed += 1


def frame(i: int) -> np.ndarray:
    img = np.zeros((32, 32, 3), np.uint8)
    img[:8, :8] = i % 256
    return img


TOP_A = [("3", 0.99609375), ("1", 0.0), ("2", 0.0)]


def test_constant_outputs_for_different_frames_fail_after_window_frames() -> None:
    c = Calls()
    m = c.monitor(window=5)
    for i in range(4):
        m.observe(TOP_A, frame(i))
    assert c.failed == []
    m.observe(TOP_A, frame(4))
    assert c.failed == [
        "digits v2 failed in service: 5 consecutive identical outputs for different frames"
    ]
    for i in range(20):  # reported once
        m.observe(TOP_A, frame(i))
    assert len(c.failed) == 1 and c.passed == 0


def test_identical_frames_are_no_evidence() -> None:
    c = Calls()
    m = c.monitor(window=3)
    for _ in range(30):  # a paused source: the same picture, the same answer
        m.observe(TOP_A, frame(0))
    assert c.failed == []


def test_varying_outputs_pass_probation_once() -> None:
    c = Calls()
    m = c.monitor(window=3, probation=10)
    for i in range(30):
        m.observe([(str(i % 10), 0.5 + i / 100)], frame(i))
    assert c.failed == [] and c.passed == 1


def test_non_finite_outputs_fail() -> None:
    c = Calls()
    m = c.monitor(window=3)
    for i in range(3):
        m.observe([("3", float("nan")), ("1", 0.1)], frame(i))
    assert c.failed and "3 consecutive non-finite outputs" in c.failed[0]


def test_a_good_frame_resets_the_count() -> None:
    c = Calls()
    m = c.monitor(window=3, probation=100)
    for i in range(40):
        top = TOP_A if i % 2 else [("7", 0.8)]
        m.observe(top, frame(i))
        m.observe(top, frame(i + 1000))  # pairs of identical outputs only
    assert c.failed == []


def test_an_exception_fails_at_once_and_output_checks_can_be_off() -> None:
    c = Calls()
    m = c.monitor(window=0)
    assert c.passed == 1  # nothing to watch: proven at once
    assert m.failure("RuntimeError: boom") is True
    assert m.failure("RuntimeError: boom") is True
    assert c.failed == ["digits v2 failed in service: RuntimeError: boom"]
