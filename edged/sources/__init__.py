"""Frame sources: image files, OpenCV captures and Raspberry Pi cameras (picamera2).

:func:`open_source` builds the source a config names; the caller then ``open()``\\s it
(with retry and backoff on :class:`edged.errors.SourceError`), ``read()``\\s frames and
``close()``\\s it. Optional dependencies (``cv2``, ``picamera2``) are imported only when
such a source is opened.
"""

from __future__ import annotations

from edged.config import FilesSource, OpenCVSource, Picamera2Source, SourceConfig
from edged.errors import SourceError
from edged.sources.base import Frame, FrameSource, transform
from edged.sources.files import FilesFrameSource
from edged.sources.opencv import OpenCVFrameSource
from edged.sources.picamera import Picamera2FrameSource

__all__ = [
    "FilesFrameSource",
    "Frame",
    "FrameSource",
    "OpenCVFrameSource",
    "Picamera2FrameSource",
    "open_source",
    "transform",
]


def open_source(cfg: SourceConfig, target_size: tuple[int, int] | None = None) -> FrameSource:
    """The (not yet opened) source for ``cfg``.

    ``target_size`` is the model input as (width, height); the picamera2 source has
    the ISP scale its lores stream to it. The other sources deliver frames at their
    native size (the model's preprocessing resizes them).
    """
    if isinstance(cfg, FilesSource):
        return FilesFrameSource(cfg)
    if isinstance(cfg, OpenCVSource):
        return OpenCVFrameSource(cfg)
    if isinstance(cfg, Picamera2Source):
        return Picamera2FrameSource(cfg, target_size)
    raise SourceError(f"unknown source type: {type(cfg).__name__}")
