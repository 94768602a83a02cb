"""The one interface every frame source implements, and the per-source transforms."""

from __future__ import annotations

import abc
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

import numpy as np

from edged.config import Roi
from edged.errors import FrameRejected

DEFAULT_MAX_PIXELS = 4096 * 4096  # source.max_image_pixels
MAX_NAME_CHARS = 1024
_OTHER_SURROGATES = re.compile("[\ud800-\udc7f\udd00-\udfff]")


class Lease(Protocol):
    """A prepared input buffer a frame holds (edged.frames.pipeline.Preparer): for ``model``,
    handed back by ``release()`` once the tensor was fed to the interpreter or dropped."""

    @property
    def model(self) -> object: ...

    def release(self) -> None: ...


@dataclass(slots=True)
class Frame:
    """One captured image: RGB uint8, shape (height, width, 3)."""

    image: np.ndarray
    captured: float = field(default_factory=time.monotonic)  # time.monotonic() at capture
    name: str = ""  # e.g. the file name for the files source
    # Set by the daemon's capture thread (edged.frames.pipeline.Preparer): the model input tensor,
    # the buffer it lives in, and how long preparing it took.
    tensor: np.ndarray | None = None
    prepared: Lease | None = None
    prepare_ms: float = 0.0
    ticket: int = -1  # taken as the ticket-th frame (Capture.get); results go out in this order


class FrameSource(abc.ABC):
    """``open`` once, then ``read`` blocks until the next frame is due.

    ``read`` returns ``None`` at the end of a finite stream and raises
    :class:`edged.errors.SourceError` on a fault (the caller retries with backoff
    after ``close``/``open``). Frames come out already cropped and rotated.
    """

    skipped: int = 0  # unreadable inputs skipped (files source)
    dropped: int = 0  # frames the source let pass undecoded (a live camera read late)
    # While ``read`` waits for the next frame to be due (fps pacing, :meth:`pace`), and until
    # ``paced_at`` (time.monotonic() when that wait ended), the read does not count against
    # ``read_timeout_s``: a files source at 0.1 fps is not hung.
    pacing: bool = False
    paced_at: float = float("-inf")

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def read(self) -> Frame | None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def pace(self, sleep: Callable[[float], None], delay: float) -> None:
        """``sleep(delay)`` as a pacing wait (see :attr:`pacing`)."""
        self.pacing = True
        try:
            sleep(delay)
        finally:
            self.pacing = False
            self.paced_at = time.monotonic()

    def cancel(self) -> None:
        """Called from another thread when a read has taken too long and is abandoned: a source
        that can, makes the pending read return (raise) soon. Default: nothing."""
        return None

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Clock = Callable[[], float]
Sleep = Callable[[float], None]


class Pacing(TypedDict, total=False):
    """:class:`PacedSource`'s keyword arguments, for a subclass's ``**pacing``."""

    clock: Clock
    sleep: Sleep


class PacedSource(FrameSource):
    """A source that paces its own reads to ``fps`` on a monotonic deadline schedule: sleep
    overshoot does not accumulate, and a consumer slower than ``fps`` restarts the schedule
    instead of getting a burst of catch-up frames. ``clock`` and ``sleep`` are for tests."""

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        self.skipped = 0
        self._clock = clock
        self._sleep = sleep
        self._next_due: float | None = None

    def _take_due(self, fps: float) -> tuple[float, float]:
        """When the next frame is due, and now; advances the schedule by one period."""
        period = 1.0 / fps
        now = self._clock()
        if self._next_due is None or now - self._next_due > period:
            self._next_due = now  # first frame, or the consumer fell behind: restart
        due = self._next_due
        self._next_due += period
        return due, now


def transform(image: np.ndarray, roi: Roi | None, rotate: int) -> np.ndarray:
    """Crop to ``roi`` (clipped to the frame) and rotate clockwise by ``rotate`` degrees."""
    if roi is not None:
        h, w = image.shape[:2]
        x0, y0 = min(roi.x, w - 1), min(roi.y, h - 1)
        image = image[y0 : min(y0 + roi.height, h), x0 : min(x0 + roi.width, w)]
    if rotate:
        image = np.rot90(image, k=-(rotate // 90))
    return image


def one_line(err: BaseException | str) -> str:
    """An exception (or text) as one printable line: its message, else its type's name."""
    text = str(err) if not isinstance(err, str) else err
    if not text and isinstance(err, BaseException):
        text = type(err).__name__
    first = text.splitlines()[0] if text.splitlines() else text
    return safe_name(first, limit=300)


def safe_name(name: object, limit: int = MAX_NAME_CHARS) -> str:
    """A name taken from outside (a file name) as one printable line that encodes as UTF-8.

    Bytes that are not UTF-8 (Python's surrogate escapes of a file name) become ``\\xNN``,
    lone surrogates ``\\udNNN``; control characters and line/paragraph separators are
    escaped as Python writes them (``\\n``, ``\\x1b``, ``\\u2028``), so a name is one line in the log and in
    the event; longer than ``limit`` characters, it is cut and ends in ``...``.
    """
    text = name if isinstance(name, str) else str(name)
    if not (text.isascii() and text.isprintable()):
        # A surrogate that is no escaped byte (U+DC80..U+DCFF) is written out as \\udNNN.
        text = _OTHER_SURROGATES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        raw = text.encode("utf-8", "surrogateescape")
        text = "".join(
            c
            if unicodedata.category(c) not in ("Cc", "Zl", "Zp", "Cs")
            else c.encode("unicode_escape").decode("ascii")
            for c in raw.decode("utf-8", "backslashreplace")
        )
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class RateLimitedLog:
    """At most ``burst`` lines per ``window_s``; the next line says how many were left out."""

    def __init__(self, logger: logging.Logger, burst: int = 10, window_s: float = 60.0) -> None:
        self._log = logger
        self._burst = burst
        self._window = window_s
        self._start = float("-inf")
        self._count = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._start >= self._window:
                self._start, self._count = now, 0
            if self._count >= self._burst:
                self._suppressed += 1
                return
            self._count += 1
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            msg += " (%d more not logged)"
            args = (*args, suppressed)
        self._log.warning(msg, *args)


def check_pixels(w: int, h: int, max_pixels: int, what: str) -> None:
    """:class:`FrameRejected` unless a ``what`` of ``w`` x ``h`` has pixels, at most
    ``max_pixels`` of them (``source.max_image_pixels``)."""
    if w < 1 or h < 1:
        raise FrameRejected(f"{what} of {w}x{h} pixels")
    if w * h > max_pixels:
        raise FrameRejected(
            f"{what} of {w}x{h} pixels is over the {max_pixels}-pixel limit "
            "(source.max_image_pixels)"
        )


def uint8_image(image: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A frame array from a camera or decoder as uint8 (h, w), (h, w, 3) or (h, w, 4).

    Any real dtype is accepted (bool as 0/255; other than uint8, stretched from its real range
    to 0-255, NaN as 0); (h, w, 1) becomes (h, w). Anything else (0 pixels, more than
    ``max_pixels``, other shapes or channel counts, non-numeric dtypes) is
    :class:`FrameRejected`.
    """
    if not isinstance(image, np.ndarray):
        raise FrameRejected(f"frame is a {type(image).__name__}, not an array")
    if image.dtype.kind not in "biuf":
        raise FrameRejected(f"frame of dtype {image.dtype} is not an image")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise FrameRejected(f"frame of shape {image.shape} is not an image (h, w[, 1|3|4])")
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise FrameRejected(f"frame of shape {image.shape} has no pixels")
    check_pixels(w, h, max_pixels, "frame")
    if image.dtype != np.uint8:
        from edged.sources.images import stretch_to_uint8

        image = stretch_to_uint8(image)
    frame: np.ndarray = image  # an ndarray (checked above), whatever indexing it returned
    return frame


def rgb_frame(image: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """What every frame is made before it goes on: C-contiguous RGB uint8 (h, w, 3).

    See :func:`uint8_image` for what is converted and what is :class:`FrameRejected`; a
    4th channel (alpha, X) is dropped, grayscale repeated into three channels.
    """
    image = uint8_image(image, max_pixels)
    if image.ndim == 2:
        out = np.empty((*image.shape, 3), dtype=np.uint8)
        out[...] = image[:, :, None]
        return out
    if image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)
