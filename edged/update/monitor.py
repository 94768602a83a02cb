"""In-service checks of a newly installed model, run by the frame loop after a swap.

A new model is rolled back when its inference raises (at any time), or when, within its first
``probation`` frames, ``window`` consecutive results are non-finite or identical for frames
that differ (a model stuck on one output). A result identical to the previous one for an
identical frame (a paused or looping source showing the same picture) is no evidence either
way. Caveat: a healthy quantized model looking at a static scene through a noisy camera can
give identical scores too; keep ``window`` comfortably above what the scene can produce, or
0 to turn the output checks off.

The frame loop reports failures, the post thread results. The monitor only decides; ``on_fail(reason)`` and ``on_pass()`` are called at most once each
and must return at once (the updater queues the work for its own thread).
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Callable

import numpy as np


def fingerprint(image: np.ndarray) -> int:
    """A cheap checksum of a subsample of the frame (every 8th pixel in each direction)."""
    return zlib.crc32(np.ascontiguousarray(image[::8, ::8]).data)


class ServiceMonitor:
    def __init__(
        self,
        *,
        window: int,
        probation: int,
        on_fail: Callable[[str], None],
        on_pass: Callable[[], None],
        description: str = "the new model",
    ) -> None:
        self.window = window
        self.probation = probation
        self._on_fail = on_fail
        self._on_pass = on_pass
        self.description = description
        self.frames = 0
        self.failed = False
        self.passed = probation == 0 or window == 0
        self._last: tuple[tuple[str, float], ...] | None = None
        self._last_fp: int | None = None
        self._same = 0
        self._nonfinite = 0
        self._lock = threading.Lock()  # failure() from the frame loop and the post thread
        if self.passed:
            self._on_pass()

    def failure(self, reason: str) -> bool:
        """Inference raised; True when a rollback is (already) under way."""
        with self._lock:
            first, self.failed = not self.failed, True
        if first:
            self._on_fail(f"{self.description} failed in service: {reason}")
        return True

    def observe(self, top: list[tuple[str, float]], image: np.ndarray) -> None:
        """One result (the prediction's top-k list) for one frame."""
        if self.failed or self.passed:
            return
        self.frames += 1
        scores = tuple(top)
        if not all(math.isfinite(s) for _, s in scores):
            self._nonfinite += 1
        else:
            self._nonfinite = 0
        fp = fingerprint(image)
        if scores == self._last:
            if fp != self._last_fp:
                self._same += 1
        else:
            self._same = 0
        self._last, self._last_fp = scores, fp
        if self._nonfinite >= self.window:
            self.failure(f"{self._nonfinite} consecutive non-finite outputs")
        elif self._same and self._same + 1 >= self.window:
            self.failure(f"{self._same + 1} consecutive identical outputs for different frames")
        elif self.frames >= self.probation:
            self.passed = True
            self._on_pass()
