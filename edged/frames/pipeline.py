"""The frame path in three overlapped stages, so the interpreter never waits on Python.

=================  =====================================================================
capture thread     read a frame, then :class:`Preparer`: resize, normalise and quantise it
                   into a pooled input buffer, while the interpreter runs the previous one
frame loop         ``set_tensor`` + ``invoke`` + ``get_tensor``, nothing else per frame
post thread        :class:`PostStage`: top-k, policy, event, publish, while the interpreter
                   runs the next frame
=================  =====================================================================

Measured on a 2-core x86 machine (MobileNetV2 224 uint8, 1 interpreter thread): the same
Python work costs 4-10x more when it runs on the interpreter's core right after ``invoke``
(caches refilled by the model) than on the other core, where it stays warm; done serially it
cost ~10 % of the frame rate, overlapped it costs almost nothing. ``invoke`` releases the GIL,
so the other stages run while it computes.

When the interpreter's threads take every core, there is no core for the post stage to run
on beside ``invoke``; work there then stalls the interpreter's threads (they wait for each
other at every layer), so the daemon finishes results inline in the frame loop instead
(``PostStage(inline=True)``) and only preparation stays in the capture thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

import numpy as np

from edged.model.classifier import Classifier
from edged.model.preprocess import Preprocessor
from edged.sources.base import Frame

log = logging.getLogger("edged")

T = TypeVar("T")


class _Lease(NamedTuple):
    """A pooled :class:`Preprocessor` a prepared frame holds (its buffer is the tensor)."""

    model: Classifier
    pre: Preprocessor
    owner: Preparer

    def release(self) -> None:
        self.owner.give_back(self)


class Preparer:
    """Prepares each captured frame's input tensor for the current model (capture thread).

    Each prepared frame holds a :class:`Preprocessor` (whose buffer is the tensor) until it is
    :meth:`release` d; the free ones are reused, so the steady state allocates nothing. A frame
    prepared for a model that has since been replaced is prepared again by :meth:`tensor_for`.
    """

    def __init__(self, current: Callable[[], Classifier]) -> None:
        self._current = current
        self._lock = threading.Lock()
        self._model: Classifier | None = None
        self._free: list[Preprocessor] = []
        self.active = True  # False (paused): frames are passed on unprepared

    def __call__(self, frame: Frame) -> None:
        if not self.active:
            return
        clf = self._current()
        with self._lock:
            if clf is not self._model:
                self._model, self._free = clf, []
            pre = self._free.pop() if self._free else None
        lease = _Lease(clf, pre if pre is not None else clf.new_preprocessor(), self)
        t0 = time.perf_counter_ns()
        try:
            frame.tensor = lease.pre(frame.image)
        except Exception:  # the frame loop prepares it again and reports the error
            self.give_back(lease)
            return
        frame.prepare_ms = (time.perf_counter_ns() - t0) / 1e6
        frame.prepared = lease

    def release(self, frame: Frame) -> None:
        """The frame's tensor is no longer needed (fed to the interpreter, or dropped)."""
        held, frame.prepared, frame.tensor = frame.prepared, None, None
        if held is not None:
            held.release()

    def give_back(self, lease: _Lease) -> None:
        with self._lock:
            if lease.model is self._model:
                self._free.append(lease.pre)

    @staticmethod
    def tensor_for(frame: Frame, clf: Classifier) -> np.ndarray:
        """The frame's input tensor for ``clf``: as prepared, or prepared now (frame loop)."""
        held = frame.prepared
        if held is not None and held.model is clf and frame.tensor is not None:
            return frame.tensor
        t0 = time.perf_counter_ns()
        tensor = clf.preprocessor(frame.image)
        frame.prepare_ms = (time.perf_counter_ns() - t0) / 1e6
        return tensor


class PostStage(Generic[T]):
    """One thread that runs ``finish(item)`` on submitted items, in order.

    ``submit`` waits while ``depth`` items are queued (back-pressure, bounded memory). An
    exception from ``finish`` is kept in :attr:`error`, later items are dropped and
    ``on_error`` is called: the frame loop stops and raises it. ``inline=True``: no thread,
    ``submit`` finishes the item itself (and raises what ``finish`` raises).
    """

    def __init__(
        self,
        finish: Callable[[T], None],
        on_error: Callable[[], None],
        depth: int = 4,
        inline: bool = False,
    ) -> None:
        self.inline = inline
        self._finish = finish
        self._on_error = on_error
        self._depth = depth
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edged-post", daemon=True)

    def start(self) -> None:
        if not self.inline:
            self._thread.start()

    def submit(self, item: T) -> None:
        if self.inline:
            self._finish(item)
            return
        with self._cond:
            while len(self._items) >= self._depth and self.error is None and not self._closed:
                self._cond.wait(0.2)
            if self.error is not None or self._closed:
                return
            self._items.append(item)
            if len(self._items) == 1:
                self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Finish what was submitted (within ``timeout`` s) and end the thread; True if all
        of it was finished."""
        if self.inline:
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while (self._items or self._busy) and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    break
                self._cond.wait(left)
            done = not self._items and not self._busy
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
                self._busy = True
                if len(self._items) == self._depth - 1:
                    self._cond.notify_all()  # a submitter may be waiting for room
            try:
                self._finish(item)
            except BaseException as err:
                with self._cond:
                    self.error = err
                    self._items.clear()
                    self._busy = False
                    self._cond.notify_all()
                self._on_error()
                return
            with self._cond:
                self._busy = False
                if not self._items:
                    self._cond.notify_all()  # close() may be waiting for the last one
