"""Every frame is checked before it goes on (issue 11): whatever a source hands over, the frame
loop gets an RGB uint8 frame it can prepare, or the frame is skipped, counted and logged."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from edged.config import FilesSource, OpenCVSource, Picamera2Source
from edged.errors import FrameRejected
from edged.frames.capture import Capture, SourceHealth
from edged.model.preprocess import InputSpec, Normalization, Preprocessor
from edged.sources.base import Frame, FrameSource
from edged.sources.files import FilesFrameSource
from edged.sources.opencv import OpenCVFrameSource
from edged.sources.picamera import Picamera2FrameSource

BAD: list[Any] = [
    np.zeros((0, 5, 3), np.uint8),  # no pixels
    np.zeros((4, 4, 2), np.uint8),  # two channels
    np.zeros((2, 2, 2, 3), np.uint8),  # a batch
    np.zeros((3000, 3000, 3), np.uint8),  # over max_pixels (1 Mpx here)
    np.zeros((4, 4, 3), np.complex64),
    np.array([["a"]]),
    "not an array",
]
CONVERTED: list[np.ndarray] = [
    np.full((4, 6, 3), np.nan, np.float32),  # NaN float frame: black
    np.arange(24, dtype=np.uint16).reshape(4, 6) * 2000,  # 16-bit gray: stretched
    np.ones((4, 6, 4), np.float64),  # float RGBA: alpha dropped
    np.zeros((6, 4, 3), np.uint8).transpose(1, 0, 2),  # non-contiguous
    np.ones((4, 6, 1), bool),
]


class ListSource(FrameSource):
    def __init__(self, images: list[Any]) -> None:
        self.images = list(images)

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        if not self.images:
            return None
        time.sleep(0.005)
        return Frame(self.images.pop(0), name="\udcff\nname")

    def close(self) -> None:
        pass


def test_capture_skips_counts_and_logs_bad_frames_and_passes_good_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edged.frames.capture")
    health: list[SourceHealth] = []
    images = [BAD[0], CONVERTED[0], *BAD[1:], *CONVERTED[1:]]
    cap = Capture(
        lambda: ListSource(images),
        read_timeout_s=5,
        retry_min_s=0.05,
        retry_max_s=0.1,
        on_health=health.append,
        max_pixels=1_000_000,
    )
    pre = Preprocessor(
        InputSpec((1, 8, 8, 3), "NHWC", 8, 8, 3, np.dtype(np.int8), 1.0, 0),
        Normalization((128.0,), (1.0,), "config"),
    )
    cap.start()
    got: list[Frame] = []
    deadline = time.monotonic() + 10
    while not cap.ended and time.monotonic() < deadline:
        frame = cap.get(0.05)
        if frame is not None:
            got.append(frame)
    while (frame := cap.get(0.2)) is not None:
        got.append(frame)
    cap.stop()
    assert cap.skipped == len(BAD) and cap.rejected == len(BAD)
    assert cap.frames == len(CONVERTED)
    assert all(h.ok for h in health) and health[-1].faults == 0  # no source fault
    for frame in got:
        assert frame.image.dtype == np.uint8 and frame.image.ndim == 3
        assert frame.image.shape[2] == 3 and frame.image.flags.c_contiguous
        assert frame.name == "\\xff\\nname"
        assert pre(frame.image).shape == (1, 8, 8, 3)
    assert [f.image.shape[:2] for f in got] == [(4, 6)] * 5
    assert int(got[0].image.max()) == 0  # NaN -> 0
    assert int(got[1].image.max()) == 255 and int(got[1].image.min()) == 0  # 16-bit stretched
    lines = [r.getMessage() for r in caplog.records if "frame skipped" in r.getMessage()]
    assert len(lines) == len(BAD)
    assert "over the 1000000-pixel limit" in " ".join(lines)
    assert all("\n" not in line for line in lines)


class FakeCapture:
    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames

    def isOpened(self) -> bool:
        return True

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return 0.0

    def grab(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self) -> None:
        pass


def test_opencv_frames_of_other_dtypes_come_out_rgb_uint8(monkeypatch: pytest.MonkeyPatch) -> None:
    bgr16 = np.zeros((4, 6, 3), np.uint16)
    bgr16[..., 2] = 60000  # red, 16-bit
    bgr16[0, 0] = 0
    frames: list[np.ndarray] = [bgr16, np.full((4, 6), 0.25), np.zeros((4, 6, 2), np.uint8)]
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a, **k: FakeCapture(frames))
    src = OpenCVFrameSource(OpenCVSource(device="/dev/video0"))
    src.open()
    first = src.read()
    assert first is not None and first.image.dtype == np.uint8
    assert tuple(first.image[1, 1]) == (255, 0, 0) and tuple(first.image[0, 0]) == (0, 0, 0)
    second = src.read()
    assert second is not None and second.image.dtype == np.uint8
    assert second.image.shape == (4, 6, 3)
    with pytest.raises(FrameRejected, match=r"shape \(4, 6, 2\)"):
        src.read()


def test_picamera2_frame_of_another_dtype_is_rejected_not_a_fault(
    fake_picamera2: ModuleType,
) -> None:
    fake_picamera2.Picamera2.platform = fake_picamera2.Platform.PISP
    src = Picamera2FrameSource(Picamera2Source(), (16, 12))
    src.open()
    try:
        w, h = src.stream_size  # what the (strict) camera granted, not what was asked
        src._cam.capture_array = lambda *a, **k: np.zeros((h, w, 3), np.complex64)
        with pytest.raises(FrameRejected, match="picamera2: unusable frame"):
            src.read()
    finally:
        src.close()


def test_a_slow_frame_rate_is_no_hang(tmp_path: Path) -> None:
    """fps pacing inside read() does not count against read_timeout_s (main: a files source at
    1 fps with read_timeout_s 0.3 faulted on every read and only ever gave its first image)."""
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    cfg = FilesSource(path=str(tmp_path), fps=1.0, loop=True, read_timeout_s=0.3)
    health: list[SourceHealth] = []
    cap = Capture(
        lambda: FilesFrameSource(cfg),
        read_timeout_s=0.3,
        retry_min_s=0.05,
        retry_max_s=0.1,
        on_health=health.append,
    )
    cap.start()
    names = []
    try:
        end = time.monotonic() + 3.6
        while time.monotonic() < end:
            cap.check_hang(time.monotonic())
            frame = cap.get(0.05)
            if frame is not None:
                names.append(frame.name)
    finally:
        cap.stop()
    assert names[:3] == ["a.png", "b.png", "c.png"], names
    assert cap.health.faults == 0 and cap.hung_since is None, health
