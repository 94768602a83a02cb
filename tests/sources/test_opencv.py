"""The OpenCV source: a real MJPG video written into tmp_path, and a stand-in capture for
live-stream behaviour (buffer size, failed reads, dropping stale frames, close during read)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest

from edged.config import OpenCVSource, Roi
from edged.errors import SourceError
from edged.sources import open_source
from edged.sources.base import Frame
from edged.sources.opencv import OPENCV_MISSING, OpenCVFrameSource, classify_device

W, H, N = 64, 48, 10
JPEG_TOL = 12


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "this OpenCV cannot write MJPG .avi"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture
def red_video(tmp_path: Path) -> Path:
    bgr_red = np.zeros((H, W, 3), np.uint8)
    bgr_red[:] = (0, 0, 255)  # OpenCV frames are BGR
    return _write_video(tmp_path / "red.avi", [bgr_red] * N)


def _read_all(src: OpenCVFrameSource, limit: int = 1000) -> list[Frame]:
    out = []
    for _ in range(limit):
        f = src.read()
        if f is None:
            break
        out.append(f)
    return out


# -- video files ----------------------------------------------------------------------------


def test_video_file_frames_shape_and_colour(red_video: Path) -> None:
    src = OpenCVFrameSource(OpenCVSource(device=str(red_video)))
    src.open()
    frames = _read_all(src)
    assert len(frames) == N
    assert src.read() is None  # stays ended
    src.close()
    for f in frames:
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
        assert f.image.flags.c_contiguous
        mean = f.image.reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - (255, 0, 0)).max() <= JPEG_TOL, mean  # RGB, not BGR
    assert [f.name for f in frames[:2]] == ["red.avi#0", "red.avi#1"]


def test_loop_rewinds(red_video: Path) -> None:
    src = OpenCVFrameSource(OpenCVSource(device=str(red_video), loop=True))
    with src:
        frames = _read_all(src, limit=2 * N + 3)
    assert len(frames) == 2 * N + 3
    names = [f.name for f in frames]
    assert names[N] == "red.avi#0" and names[2 * N] == "red.avi#0"


def test_frame_content_follows_the_file(tmp_path: Path) -> None:
    frames = []
    for i in range(6):
        f = np.zeros((H, W, 3), np.uint8)
        f[:] = (0, 40 * i, 0)
        frames.append(f)
    path = _write_video(tmp_path / "ramp.avi", frames)
    src = OpenCVFrameSource(OpenCVSource(device=str(path), loop=True))
    with src:
        got = _read_all(src, limit=8)
    greens = [round(float(f.image[..., 1].mean())) for f in got]
    want = [0, 40, 80, 120, 160, 200, 0, 40]
    assert all(abs(g - w) <= JPEG_TOL for g, w in zip(greens, want, strict=True)), greens


def test_fps_cap_paces_a_file(red_video: Path) -> None:
    src = OpenCVFrameSource(OpenCVSource(device=str(red_video), fps=50))
    with src:
        t0 = time.monotonic()
        frames = _read_all(src)
        elapsed = time.monotonic() - t0
    assert len(frames) == N
    assert 0.8 <= elapsed / ((N - 1) / 50) <= 3.0, elapsed


def test_roi_and_rotate(tmp_path: Path) -> None:
    f = np.zeros((H, W, 3), np.uint8)
    f[:, : W // 2] = (0, 0, 255)  # left half red (BGR), right half black
    path = _write_video(tmp_path / "half.avi", [f] * 2)
    cfg = OpenCVSource(device=str(path), roi=Roi(x=0, y=0, width=W // 2, height=H), rotate=90)
    with OpenCVFrameSource(cfg) as src:
        frame = src.read()
    assert frame is not None
    assert frame.image.shape == (W // 2, H, 3)
    mean = frame.image[4:-4, 4:-4].reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - (255, 0, 0)).max() <= JPEG_TOL


def test_missing_file(tmp_path: Path) -> None:
    src = OpenCVFrameSource(OpenCVSource(device=str(tmp_path / "nope.mp4")))
    with pytest.raises(SourceError, match="no such video file"):
        src.open()


def test_not_a_video(tmp_path: Path) -> None:
    p = tmp_path / "junk.avi"
    p.write_bytes(b"definitely not a video" * 10)
    src = OpenCVFrameSource(OpenCVSource(device=str(p)))
    try:
        src.open()
    except SourceError:
        return
    assert src.read() is None  # some backends open it and then have nothing to read
    src.close()


@pytest.mark.parametrize("device", [99, "99", "/dev/video99"])
def test_bad_device(device: int | str) -> None:
    src = OpenCVFrameSource(OpenCVSource(device=device))
    with pytest.raises(SourceError, match="cannot open device"):
        src.open()


def test_read_before_open(red_video: Path) -> None:
    with pytest.raises(SourceError, match="not open"):
        OpenCVFrameSource(OpenCVSource(device=str(red_video))).read()


def test_close_is_idempotent(red_video: Path) -> None:
    src = OpenCVFrameSource(OpenCVSource(device=str(red_video)))
    src.close()
    src.open()
    src.close()
    src.close()
    with pytest.raises(SourceError):
        src.read()


def test_cv2_missing(monkeypatch: pytest.MonkeyPatch, red_video: Path) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(SourceError) as info:
        OpenCVFrameSource(OpenCVSource(device=str(red_video))).open()
    assert str(info.value) == OPENCV_MISSING


def test_factory(red_video: Path) -> None:
    assert isinstance(open_source(OpenCVSource(device=str(red_video))), OpenCVFrameSource)


@pytest.mark.parametrize(
    ("device", "want"),
    [
        (0, ("device", 0)),
        ("2", ("device", 2)),
        ("/dev/video1", ("device", "/dev/video1")),
        ("rtsp://cam.local:554/stream1", ("stream", "rtsp://cam.local:554/stream1")),
        ("http://cam/mjpg", ("stream", "http://cam/mjpg")),
        ("clips/a.mp4", ("file", "clips/a.mp4")),
    ],
)
def test_classify_device(device: int | str, want: tuple[str, int | str]) -> None:
    assert classify_device(device) == want


# -- live sources, with a stand-in VideoCapture ------------------------------------------------


class FakeCapture:
    """Imitates cv2.VideoCapture for a live camera: frame k is filled with the value k."""

    instances: ClassVar[list[FakeCapture]] = []

    def __init__(self, target: Any, api: Any = None, params: Any = None) -> None:
        self.target, self.api, self.params = target, api, params
        self.props: dict[int, float] = {}
        self.count = 0
        self.fail_after: int | None = None
        self.released = False
        self.block: threading.Event | None = None
        self.entered = threading.Event()
        FakeCapture.instances.append(self)

    def isOpened(self) -> bool:
        return True

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def grab(self) -> bool:
        if self.fail_after is not None and self.count >= self.fail_after:
            return False
        time.sleep(0.01)  # a 100 fps camera
        self.count += 1
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.entered.set()
        if self.block is not None:
            self.block.wait(5)
        if not self.grab():
            return False, None
        return True, np.full((4, 6, 3), self.count % 256, np.uint8)

    def release(self) -> None:
        self.released = True


@pytest.fixture
def fake_capture(monkeypatch: pytest.MonkeyPatch) -> type[FakeCapture]:
    FakeCapture.instances = []
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    return FakeCapture


def test_live_device_requests_small_buffer_and_size(fake_capture: type[FakeCapture]) -> None:
    src = OpenCVFrameSource(OpenCVSource(device="/dev/video0", width=640, height=480, fps=15))
    src.open()
    cap = fake_capture.instances[0]
    assert cap.target == "/dev/video0"
    if sys.platform.startswith("linux"):
        assert cap.api == cv2.CAP_V4L2
    assert cap.props[cv2.CAP_PROP_BUFFERSIZE] == 1
    assert cap.props[cv2.CAP_PROP_FRAME_WIDTH] == 640
    assert cap.props[cv2.CAP_PROP_FRAME_HEIGHT] == 480
    assert cap.props[cv2.CAP_PROP_FPS] == 15
    frame = src.read()
    assert frame is not None and frame.image.shape == (4, 6, 3) and frame.name == ""
    src.close()
    assert cap.released


def test_stream_url_uses_ffmpeg_with_timeouts(fake_capture: type[FakeCapture]) -> None:
    src = OpenCVFrameSource(OpenCVSource(device="rtsp://cam/stream", read_timeout_s=3))
    src.open()
    cap = fake_capture.instances[0]
    assert cap.api == cv2.CAP_FFMPEG
    params = dict(zip(cap.params[::2], cap.params[1::2], strict=True))
    assert params[cv2.CAP_PROP_READ_TIMEOUT_MSEC] == 3000
    assert params[cv2.CAP_PROP_OPEN_TIMEOUT_MSEC] >= 3000
    assert cap.props[cv2.CAP_PROP_BUFFERSIZE] == 1
    src.close()


def test_live_read_failure_raises(fake_capture: type[FakeCapture]) -> None:
    src = OpenCVFrameSource(OpenCVSource(device=0, loop=True))
    src.open()
    fake_capture.instances[0].fail_after = 2
    assert src.read() is not None
    assert src.read() is not None
    with pytest.raises(SourceError, match="read failed"):
        src.read()  # a live source never "ends", even with loop set


def test_live_fps_cap_drops_stale_frames(fake_capture: type[FakeCapture]) -> None:
    src = OpenCVFrameSource(OpenCVSource(device=0, fps=10))
    src.open()
    cap = fake_capture.instances[0]
    t0 = time.monotonic()
    got = [src.read() for _ in range(3)]
    elapsed = time.monotonic() - t0
    assert all(f is not None for f in got)
    assert 0.15 <= elapsed <= 0.6, elapsed
    # ~10 camera frames pass per 0.1 s period; the ones in between were grabbed and dropped.
    assert cap.count >= 12
    assert src.dropped == cap.count - 3  # counted: every grab but the three frames read


def test_close_during_read_releases_after_the_read(fake_capture: type[FakeCapture]) -> None:
    src = OpenCVFrameSource(OpenCVSource(device=0))
    src.open()
    cap = fake_capture.instances[0]
    cap.block = threading.Event()
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(src.read()))
    t.start()
    assert cap.entered.wait(2)
    src.close()  # from another thread while read() is blocked in the capture
    assert not cap.released  # releasing under a running read could crash the backend
    cap.block.set()
    t.join(2)
    assert cap.released
    with pytest.raises(SourceError):
        src.read()
