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
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

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


_SKIP: Any = object()  # a ticket resolved without a result (a paused or failed frame)


class PostStage(Generic[T]):
    """Runs ``finish(item)`` on submitted items, one at a time, in ticket order.

    Each item comes with its frame's ticket (:attr:`Frame.ticket`: 0, 1, 2, ... in the order
    frames were taken; ``None``: the order of submission). Results of several interpreters
    come back in any order; they are finished in ticket order, so predictions go out in
    capture order. A ticket without a result is :meth:`skip` ped.

    Thread mode (default): one thread finishes the items; ``submit`` waits while ``depth``
    items are pending (back-pressure, bounded memory), except for the ticket due next. An
    exception from ``finish`` is kept in :attr:`error`, later items are dropped and
    ``on_error`` is called: the frame loop stops and raises it. ``inline=True``: no thread;
    the ``submit`` whose ticket is due finishes its item itself, then the later items other
    threads left meanwhile (and raises what ``finish`` raises); a ``submit`` whose ticket is
    not due leaves its item and returns at once, so an interpreter never waits for another.
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
        self._depth = max(1, depth)
        self._pending: dict[int, Any] = {}  # ticket -> item or _SKIP, not yet finished
        self._next = 0  # the ticket finished next
        self._auto = 0  # tickets of items submitted without one
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._aborted = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edged-post", daemon=True)

    def start(self) -> None:
        if not self.inline:
            self._thread.start()

    def submit(self, item: T, ticket: int | None = None) -> None:
        self._put(item, ticket)

    def skip(self, ticket: int) -> None:
        """No result for this ticket (its frame was dropped or failed): later ones go on."""
        self._put(_SKIP, ticket)

    def abort(self) -> None:
        """A ticket will never come (its thread died): nobody waits for it any longer."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def _ticket(self, ticket: int | None) -> int:
        if ticket is None or ticket < 0:
            ticket = self._auto
        self._auto = max(self._auto, ticket + 1)
        return ticket

    def _put(self, item: Any, ticket: int | None) -> None:
        if self.inline:
            self._put_inline(item, ticket)
            return
        with self._cond:
            ticket = self._ticket(ticket)
            while (
                len(self._pending) >= self._depth
                and ticket != self._next
                and self.error is None
                and not self._closed
                and not self._aborted
            ):
                self._cond.wait(0.2)
            if self.error is not None or self._closed or ticket < self._next:
                return
            self._pending[ticket] = item
            if ticket == self._next:
                self._cond.notify_all()

    def _put_inline(self, item: Any, ticket: int | None) -> None:
        """Finish the item now if its ticket is due, then any later ones other lanes left
        meanwhile; else leave it for the lane whose ticket is due (no lane waits for another
        unless ``depth`` items are left)."""
        with self._cond:
            ticket = self._ticket(ticket)
            while ticket > self._next and len(self._pending) >= self._depth and not self._aborted:
                self._cond.wait(0.2)
            if ticket != self._next:
                if ticket > self._next and not self._aborted:
                    self._pending[ticket] = item
                return
        while True:
            try:
                if item is not _SKIP:
                    self._finish(item)
            except BaseException:
                with self._cond:
                    self._advance()
                raise
            with self._cond:
                self._advance()
                if self._next not in self._pending:
                    return
                item = self._pending.pop(self._next)

    def _advance(self) -> None:
        """(Lock held) The ticket due next is done: on to the next, past skipped ones."""
        self._next += 1
        while self._pending.get(self._next, None) is _SKIP:
            del self._pending[self._next]
            self._next += 1
        self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Finish what was submitted (within ``timeout`` s) and end the thread; True if all
        of it was finished. No more items come: a ticket still missing never will."""
        deadline = time.monotonic() + timeout
        if self.inline:
            return self._close_inline()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while (self._pending or self._busy) and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    break
                self._cond.wait(left)
            done = not self._pending and not self._busy
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return done

    def _close_inline(self) -> bool:
        """Finish what other lanes left behind a ticket that never came (its lane stopped)."""
        while True:
            with self._cond:
                self._closed = True
                if not self._pending or self._aborted or self.error is not None:
                    done = not self._pending
                    self._pending.clear()
                    return done
                self._next = min(self._pending)
                item = self._pending.pop(self._next)
            try:
                if item is not _SKIP:
                    self._finish(item)
            except BaseException as err:
                with self._cond:
                    self.error = err
                return False
            finally:
                with self._cond:
                    self._advance()

    def _take(self) -> Any:
        """(Post thread) The next item to finish, in ticket order; None when closed and done."""
        with self._cond:
            while True:
                if self._next in self._pending:
                    item = self._pending.pop(self._next)
                    self._advance()  # room for a waiting submitter
                    if item is _SKIP:
                        continue
                    self._busy = True
                    return item
                if self._closed and self._pending:  # a missing ticket will never come
                    self._next = min(self._pending)
                    continue
                if self._closed:
                    return None
                self._cond.wait()

    def _run(self) -> None:
        while True:
            item = self._take()
            if item is None:
                return
            try:
                self._finish(item)
            except BaseException as err:
                with self._cond:
                    self.error = err
                    self._pending.clear()
                    self._busy = False
                    self._cond.notify_all()
                self._on_error()
                return
            with self._cond:
                self._busy = False
                if not self._pending:
                    self._cond.notify_all()  # close() may be waiting for the last one
