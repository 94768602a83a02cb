"""Frames from OpenCV ``VideoCapture``: a V4L2 device, an rtsp/http stream or a video file.

``cv2`` is imported inside :meth:`OpenCVFrameSource.open`, so edged imports without it.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from edged.config import OpenCVSource
from edged.errors import SourceError
from edged.sources.base import Frame, PacedSource, Pacing, transform, uint8_image

log = logging.getLogger("edged.sources")

_DEVICE_PATH = re.compile(r"^/dev/video(\d+)$")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
OPENCV_MISSING = (
    "opencv is not installed: pip install opencv-python-headless "
    "(or on Raspberry Pi OS: apt install python3-opencv)"
)


def classify_device(device: int | str) -> tuple[str, int | str]:
    """``("device", index | path)``, ``("stream", url)`` or ``("file", path)``."""
    if isinstance(device, int):
        return "device", device
    text = device.strip()
    if text.isdigit():
        return "device", int(text)
    if _DEVICE_PATH.match(text):
        return "device", text
    if _URL.match(text):
        return "stream", text
    return "file", text


def _describe(device: int | str) -> str:
    return f"/dev/video{device}" if isinstance(device, int) else str(device)


class OpenCVFrameSource(PacedSource):
    """Read frames with OpenCV, converted BGR -> RGB, cropped and rotated.

    Live sources (devices, URLs) ask for a one-frame buffer and, under an ``fps``
    cap, keep grabbing (and dropping) frames until the next one is due so the frame
    handed out is fresh. A failed read of a live source raises :class:`SourceError`;
    a video file ends with ``None`` (or rewinds with ``loop``).

    ``close`` may be called from another thread while ``read`` is blocked: the
    capture is then released by the reading thread once its read returns.
    """

    def __init__(self, cfg: OpenCVSource, **pacing: Unpack[Pacing]) -> None:
        super().__init__(**pacing)
        self.cfg = cfg
        self._cv2: Any = None
        self._cap: Any = None
        self._kind, self._target = classify_device(cfg.device)
        self._frame_index = 0
        self._lock = threading.Lock()
        self._reading = False
        self._orphan: Any = None

    @property
    def live(self) -> bool:
        return self._kind != "file"

    def open(self) -> None:
        self.close()
        try:
            import cv2
        except ImportError:
            raise SourceError(OPENCV_MISSING) from None
        self._cv2 = cv2
        cap = self._make_capture(cv2)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"opencv: cannot open {self._kind} {_describe(self._target)}")
        if self.live:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fresh frames; not every backend honours it
        if self._kind == "device":
            if self.cfg.width is not None:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
            if self.cfg.height is not None:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
            if self.cfg.fps is not None:
                cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        with self._lock:
            self._cap = cap
        self._frame_index = 0
        self._next_due = None
        log.info(
            "opencv source: opened %s %s (%sx%s)",
            self._kind,
            _describe(self._target),
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )

    def _make_capture(self, cv2: Any) -> Any:
        target = self._target
        if self._kind == "file":
            if not Path(str(target)).is_file():
                raise SourceError(f"opencv: no such video file: {target}")
            return cv2.VideoCapture(str(target))
        if self._kind == "device":
            api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
            return cv2.VideoCapture(target, api)
        # Network stream: bound the time FFmpeg may block opening and reading.
        params: list[int] = []
        open_ms = getattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC", None)
        read_ms = getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", None)
        if open_ms is not None and read_ms is not None:
            timeout_ms = int(self.cfg.read_timeout_s * 1000)
            params = [open_ms, 2 * timeout_ms, read_ms, timeout_ms]
        try:
            return cv2.VideoCapture(str(target), cv2.CAP_FFMPEG, params)
        except (cv2.error, TypeError):  # an OpenCV without the params overload
            return cv2.VideoCapture(str(target))

    def close(self) -> None:
        with self._lock:
            cap, self._cap = self._cap, None
            if cap is not None and self._reading:
                self._orphan = cap  # released by the thread blocked in read()
                cap = None
        if cap is not None:
            cap.release()

    def read(self) -> Frame | None:
        with self._lock:
            cap = self._cap
            if cap is None:
                raise SourceError("opencv source is not open")
            self._reading = True
        try:
            image = self._read_image(cap)
        finally:
            with self._lock:
                self._reading = False
                orphan, self._orphan = self._orphan, None
            if orphan is not None:
                orphan.release()
        if image is None:
            return None
        name = f"{Path(str(self._target)).name}#{self._frame_index}" if not self.live else ""
        self._frame_index += 1
        return Frame(image=self._to_rgb(image), name=name)

    def _read_image(self, cap: Any) -> np.ndarray | None:
        if self.cfg.fps is None:
            return self._read_one(cap)
        due, now = self._take_due(self.cfg.fps)
        if not self.live:
            if due > now:
                self.pace(self._sleep, due - now)
            return self._read_one(cap)
        # Live: drain frames until the next one is due, so the one we keep is fresh.
        while self._clock() < due:
            if not cap.grab():
                raise SourceError(f"opencv: read failed on {_describe(self._target)}")
            self.dropped += 1  # grabbed, never decoded (retrieve) nor converted
        return self._read_one(cap)

    def _read_one(self, cap: Any) -> np.ndarray | None:
        ok, image = cap.read()
        if ok and image is not None:
            return np.asarray(image)
        if self.live:
            raise SourceError(f"opencv: read failed on {_describe(self._target)}")
        if not self.cfg.loop:
            return None
        if not cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0):
            raise SourceError(f"opencv: cannot rewind {self._target}")
        ok, image = cap.read()
        if not ok or image is None:
            raise SourceError(f"opencv: no frames in {self._target}")
        self._frame_index = 0
        return np.asarray(image)

    def _to_rgb(self, image: np.ndarray) -> np.ndarray:
        """BGR(A) or gray of any dtype -> RGB uint8; :class:`FrameRejected` if it is no image."""
        cv2 = self._cv2
        image = uint8_image(image, self.cfg.max_image_pixels)
        if image.ndim == 2:
            rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        elif image.shape[2] == 4:
            rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        else:
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(transform(rgb, self.cfg.roi, self.cfg.rotate))
