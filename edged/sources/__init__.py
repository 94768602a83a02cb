"""Frame sources: image files, OpenCV captures and Raspberry Pi cameras (picamera2).

:func:`open_source` builds the source a config names; the caller then ``open()``\\s it
(with retry and backoff on :class:`edged.errors.SourceError`), ``read()``\\s frames and
``close()``\\s it. Each source module is imported only when a config names it, and its
dependencies (Pillow, ``cv2``, ``picamera2``) with it.
"""

from __future__ import annotations

from edged.config import FilesSource, OpenCVSource, Picamera2Source, SourceConfig
from edged.errors import SourceError
from edged.sources.base import Frame, FrameSource, transform

__all__ = ["Frame", "FrameSource", "open_source", "transform"]


def open_source(cfg: SourceConfig, target_size: tuple[int, int] | None = None) -> FrameSource:
    """The (not yet opened) source for ``cfg``.

    ``target_size`` is the model input as (width, height); the picamera2 source has
    the ISP scale its lores stream to it. The other sources deliver frames at their
    native size (the model's preprocessing resizes them).
    """
    if isinstance(cfg, FilesSource):
        from edged.sources.files import FilesFrameSource

        return FilesFrameSource(cfg)
    if isinstance(cfg, OpenCVSource):
        from edged.sources.opencv import OpenCVFrameSource

        return OpenCVFrameSource(cfg)
    if isinstance(cfg, Picamera2Source):
        from edged.sources.picamera import Picamera2FrameSource

        return Picamera2FrameSource(cfg, target_size)
    raise SourceError(f"unknown source type: {type(cfg).__name__}")
