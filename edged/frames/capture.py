"""Capture frames in their own thread; keep only the newest; survive faults and hung reads.

Each frame can be prepared (its model input computed) in this thread, before it is offered.

``demand=True`` (the daemon): the thread reads a frame only for a :meth:`Capture.request`
(the frame loop asks for its next frame ahead, e.g. as the interpreter starts on the one
before; each lane asks once per frame it takes). Requests add up (two interpreters each asking
get two frames, kept in order until taken), so the only frames read, decoded and prepared are
those the interpreters take next; what a camera delivered in between is left to the source (a
live OpenCV capture grabs and drops it undecoded, picamera2 recycles its buffers) and counted
in :attr:`Capture.dropped` where the source can tell. Without it, the thread reads
continuously and a frame not taken in time is replaced.

Each frame taken gets the next :attr:`Frame.ticket` (0, 1, 2, ...), in the order frames were
taken, so that results made on several interpreters at once can be put back in that order.

A worker thread owns one source instance. A read that raises is a fault: the worker closes the
source, waits (exponential backoff) and opens a fresh one. A read that does not return within
``read_timeout_s`` is a hang: the worker is abandoned (it exits if the read ever returns) and a
new worker with a new source instance takes over after the backoff delay; the abandoned
source is told (:meth:`FrameSource.cancel`), so one that can (the files source: between two
64 KiB blocks of a decode) stops working at once instead of decoding in the background.

Every frame is checked before it goes on (:func:`edged.sources.base.rgb_frame`): one that is
no image, or larger than ``max_pixels``, is rejected (:class:`edged.errors.FrameRejected`):
skipped, counted in :attr:`Capture.skipped`, logged at most 10 lines a minute; so is a read that
raises ``FrameRejected``. Neither is a source fault.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edged.errors import EdgedError, FrameRejected
from edged.sources.base import (
    DEFAULT_MAX_PIXELS,
    Frame,
    FrameSource,
    RateLimitedLog,
    one_line,
    rgb_frame,
    safe_name,
)

log = logging.getLogger("edged.capture")

MAX_QUEUED = 8  # (``demand``) frames read and not yet taken, at most


@dataclass(slots=True)
class SourceHealth:
    ok: bool = True
    error: str | None = None
    faults: int = 0
    since: float = 0.0  # monotonic time of the last change


class Capture:
    """``get(timeout)`` returns the newest frame not yet taken, or ``None``."""

    def __init__(
        self,
        make_source: Callable[[], FrameSource],
        *,
        read_timeout_s: float,
        retry_min_s: float,
        retry_max_s: float,
        on_health: Callable[[SourceHealth], None] | None = None,
        prepare: Callable[[Frame], None] | None = None,
        discard: Callable[[Frame], None] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        demand: bool = False,
    ) -> None:
        """``prepare(frame)`` runs in the capture thread on each frame before it is offered;
        ``discard(frame)`` on each frame replaced by a newer one before it was taken.
        ``demand``: read only when :meth:`request` asked for a frame."""
        self._make_source = make_source
        self._prepare = prepare
        self._discard = discard
        self._read_timeout = read_timeout_s
        self._max_pixels = max_pixels
        self.rejected = 0  # frames refused by the check (or a read raising FrameRejected)
        self._reject_log = RateLimitedLog(log)
        self._retry_min, self._retry_max = retry_min_s, retry_max_s
        self._on_health = on_health
        self._cond = threading.Condition()
        self._frames: deque[Frame] = deque()  # read, not yet taken (one unless ``demand``)
        self._generation = 0
        self._stop = threading.Event()
        self._read_started: float | None = None  # a read in progress since (monotonic)
        self._thread: threading.Thread | None = None
        self._delay = retry_min_s
        self.health = SourceHealth(since=time.monotonic())
        self.ended = False  # a finite source reached its end
        self.frames = 0  # frames captured
        self._replaced = 0  # frames replaced before inference took them
        self._dropped_done = 0  # frames the retired sources let pass
        self._demand = demand
        self._wanted = 0  # frames asked for and not yet read (under _cond)
        self._tickets = 0  # frames taken by get()
        self.hung_since: float | None = None  # a hang detected and not yet over
        self._skipped_done = 0
        self._skipped_reported = 0  # ``skipped`` as of the last on_health call
        self._source: FrameSource | None = None
        self._prepare_warned = float("-inf")

    @property
    def dropped(self) -> int:
        """Frames not classified: replaced before taken, or let pass by the source."""
        src = self._source
        return self._replaced + self._dropped_done + (src.dropped if src is not None else 0)

    def request(self) -> None:
        """(``demand``) Read one more frame now: the frame loop is about to want it."""
        with self._cond:
            self._wanted += 1
            self._cond.notify_all()

    def _await_request(self, gen: int) -> bool:
        """(``demand``, capture thread) Wait up to 0.2 s for a request; True: read one."""
        with self._cond:
            if self._wanted <= 0:
                self._cond.wait(0.2)
            return self._wanted > 0 and self._current(gen)

    @property
    def skipped(self) -> int:
        """Unreadable inputs the source skipped (corrupt files)."""
        src = self._source
        return self.rejected + self._skipped_done + (src.skipped if src is not None else 0)

    def start(self) -> None:
        self._spawn(delay=0.0)

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _spawn(self, delay: float) -> None:
        with self._cond:
            self._generation += 1
            gen = self._generation
        self._thread = threading.Thread(
            target=self._run, args=(gen, delay), name=f"capture-{gen}", daemon=True
        )
        self._thread.start()

    def _current(self, gen: int) -> bool:
        return gen == self._generation and not self._stop.is_set()

    def _set_health(self, ok: bool, error: str | None) -> None:
        if ok == self.health.ok and error == self.health.error:
            return
        faults = self.health.faults + (0 if ok else 1)
        self.health = SourceHealth(ok=ok, error=error, faults=faults, since=time.monotonic())
        if ok:
            log.info("source recovered")
        else:
            log.warning("source fault: %s", error)
        self._notify_health()

    def _notify_health(self) -> None:
        self._skipped_reported = self.skipped
        if self._on_health is not None:
            self._on_health(self.health)

    def _report_skipped(self) -> None:
        """Newly skipped inputs are reported too (the health event carries ``skipped``)."""
        if self.skipped != self._skipped_reported:
            self._notify_health()

    def _backoff(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self._retry_max)
        log.debug("source: next attempt in %g s", delay)
        return delay

    def _run(self, gen: int, delay: float) -> None:
        source: FrameSource | None = None
        try:
            while self._current(gen):
                if delay and self._stop.wait(delay):
                    return
                delay = 0.0
                if self._demand and not self._await_request(gen):
                    continue  # not asked for a frame yet (stop and generation checks)
                if source is None:
                    try:
                        source = self._make_source()
                        source.open()
                        self._source = source
                    except Exception as err:  # any failure to open is a fault, retried
                        source = None
                        self._set_health(False, _describe(err))
                        delay = self._backoff()
                        continue
                self._read_started = time.monotonic()
                try:
                    frame = source.read()
                    if frame is not None:
                        frame.image = rgb_frame(frame.image, self._max_pixels)
                        frame.name = safe_name(frame.name)
                except FrameRejected as err:  # one bad frame: skipped and counted, no fault
                    if not self._current(gen):
                        return
                    self._read_started = None
                    self.hung_since = None
                    self._reject(err)
                    continue
                except Exception as err:
                    if not self._current(gen):
                        return
                    self._read_started = None
                    self.hung_since = None
                    self._set_health(False, _describe(err))
                    self._retire(source)
                    source = None
                    delay = self._backoff()
                    continue
                if not self._current(gen):
                    return
                self._read_started = None
                self.hung_since = None
                if frame is None:
                    self._report_skipped()
                    self.ended = True
                    with self._cond:
                        self._cond.notify_all()
                    return
                self._delay = self._retry_min
                self._set_health(True, None)
                self._report_skipped()
                if self._prepare is not None:
                    try:
                        self._prepare(frame)
                    except Exception as err:  # never stall capture: the frame goes on as is
                        self._warn_prepare(err)
                with self._cond:
                    replaced = None
                    if self._demand:  # asked for: kept until taken (a few at most)
                        self._wanted = max(0, self._wanted - 1)
                        if len(self._frames) >= MAX_QUEUED:
                            replaced = self._frames.popleft()
                    elif self._frames:
                        replaced = self._frames.popleft()
                    self._frames.append(frame)
                    if replaced is not None:
                        self._replaced += 1
                    self.frames += 1
                    self._cond.notify_all()
                if replaced is not None and self._discard is not None:
                    self._discard(replaced)
        finally:
            if source is not None:
                self._retire(source)

    def _reject(self, err: FrameRejected) -> None:
        self.rejected += 1
        self._reject_log.warning("frame skipped: %s", one_line(err))
        self._report_skipped()

    def _warn_prepare(self, err: Exception) -> None:
        now = time.monotonic()
        if now - self._prepare_warned >= 60.0:  # at most one line a minute
            self._prepare_warned = now
            log.warning("preparing a frame failed: %s", _describe(err))

    def _retire(self, source: FrameSource) -> None:
        self._skipped_done += source.skipped
        self._dropped_done += source.dropped
        if self._source is source:
            self._source = None
        try:
            source.close()
        except Exception as err:
            log.debug("closing source: %s", err)

    def check_hang(self, now: float) -> None:
        """Called by the frame loop: abandon a worker whose read exceeded the timeout."""
        started = self._read_started
        if started is None or now - started < self._read_timeout:
            return
        src = self._source
        if src is not None and (src.pacing or now - src.paced_at < self._read_timeout):
            return  # waiting for the next frame to be due (fps pacing) is no hang
        self.hung_since = self.hung_since or started
        self._read_started = None
        hung = self._source
        if hung is not None:
            try:
                hung.cancel()  # stop its work if it can; its worker exits when the read returns
            except Exception as err:
                log.debug("cancelling the hung read: %s", err)
        self._set_health(False, f"read timed out after {self._read_timeout:g} s")
        self._spawn(delay=self._backoff())

    def get(self, timeout: float) -> Frame | None:
        """The next frame not yet taken (the newest, unless ``demand``: the oldest asked for),
        waiting up to ``timeout`` s; None if none came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._frames and not self.ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)  # woken by a frame, a request or the end
            frame = self._frames.popleft() if self._frames else None
            if frame is not None:
                frame.ticket = self._tickets
                self._tickets += 1
            return frame


def _describe(err: BaseException) -> str:
    if isinstance(err, EdgedError):
        return str(err)
    return f"{type(err).__name__}: {err}"
