"""The hand-over of a loaded model from the update thread to the frame loop.

The update thread loads a :class:`~edged.model.classifier.Classifier` and :meth:`ModelSlot.put`
s it; the frame loop :meth:`~ModelSlot.take` s it between two frames (a pointer swap) and calls
:meth:`Swap.complete` with the model it replaced, which the update thread then releases. The
frame loop never loads, and the update thread never touches the live model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from edged.model.classifier import Classifier
from edged.update.monitor import ServiceMonitor


@dataclass(slots=True)
class Swap:
    classifier: Classifier
    monitor: ServiceMonitor | None
    old: Classifier | None = None
    swapped_at: float | None = None  # time.monotonic() of the swap
    _done: threading.Event = field(default_factory=threading.Event)

    def complete(self, old: Classifier, at: float) -> None:
        """Frame loop: the swap happened; ``old`` is no longer used."""
        self.old, self.swapped_at = old, at
        self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()


class ModelSlot:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._swap: Swap | None = None

    def put(self, classifier: Classifier, monitor: ServiceMonitor | None) -> Swap:
        swap = Swap(classifier, monitor)
        with self._lock:
            self._swap = swap
        return swap

    def take(self) -> Swap | None:
        """Frame loop, once per iteration: the waiting swap, if any (cheap when none)."""
        if self._swap is None:
            return None
        with self._lock:
            swap, self._swap = self._swap, None
        return swap

    def cancel(self, swap: Swap) -> bool:
        """Withdraw ``swap`` if the frame loop has not taken it; True if withdrawn."""
        with self._lock:
            if self._swap is swap:
                self._swap = None
                return True
        return False
