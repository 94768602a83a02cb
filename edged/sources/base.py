"""The one interface every frame source implements, and the per-source transforms."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edged.config import Roi


@dataclass(slots=True)
class Frame:
    """One captured image: RGB uint8, shape (height, width, 3)."""

    image: np.ndarray
    captured: float = field(default_factory=time.monotonic)  # time.monotonic() at capture
    name: str = ""  # e.g. the file name for the files source
    # Set by the daemon's capture thread (edged.pipeline.Preparer): the model input tensor,
    # what it was prepared with, and how long that took.
    tensor: np.ndarray | None = None
    prepared: Any = None
    prepare_ms: float = 0.0


class FrameSource(abc.ABC):
    """``open`` once, then ``read`` blocks until the next frame is due.

    ``read`` returns ``None`` at the end of a finite stream and raises
    :class:`edged.errors.SourceError` on a fault (the caller retries with backoff
    after ``close``/``open``). Frames come out already cropped and rotated.
    """

    skipped: int = 0  # unreadable inputs skipped (files source)

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def read(self) -> Frame | None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def transform(image: np.ndarray, roi: Roi | None, rotate: int) -> np.ndarray:
    """Crop to ``roi`` (clipped to the frame) and rotate clockwise by ``rotate`` degrees."""
    if roi is not None:
        h, w = image.shape[:2]
        x0, y0 = min(roi.x, w - 1), min(roi.y, h - 1)
        image = image[y0 : min(y0 + roi.height, h), x0 : min(x0 + roi.width, w)]
    if rotate:
        image = np.rot90(image, k=-(rotate // 90))
    return image
