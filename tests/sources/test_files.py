"""The files source: directories and globs, pacing, looping, unreadable files, conversions."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edged.config import FilesSource, Roi
from edged.errors import SourceError
from edged.sources import open_source
from edged.sources.base import Frame
from edged.sources.files import FilesFrameSource


def _png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> Path:
    Image.new("RGB", size, rgb).save(path)
    return path


def _jpeg_bytes(size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _read_all(src: FilesFrameSource, limit: int = 100) -> list[Frame]:
    frames = []
    for _ in range(limit):
        frame = src.read()
        if frame is None:
            break
        frames.append(frame)
    return frames


def _source(path: Path | str, **kw: object) -> FilesFrameSource:
    kw.setdefault("fps", 1000)
    src = FilesFrameSource(FilesSource(path=str(path), **kw))
    src.open()
    return src


@pytest.fixture
def three(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    _png(d / "b.png", (0, 255, 0))
    _png(d / "a.png", (255, 0, 0))
    Image.new("RGB", (8, 6), (0, 0, 255)).save(d / "c.JPG", "JPEG", quality=95)
    (d / "notes.txt").write_text("not an image, not an image name")
    (d / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # hidden: ignored
    (d / "sub").mkdir()
    _png(d / "sub" / "z.png", (9, 9, 9))
    return d


# -- discovery ---------------------------------------------------------------------------


def test_directory_sorted_images_only(three: Path) -> None:
    src = _source(three)
    frames = _read_all(src)
    assert src.skipped == 0
    assert [f.name for f in frames] == ["a.png", "b.png", "c.JPG"]
    assert tuple(frames[0].image[0, 0]) == (255, 0, 0)
    assert tuple(frames[1].image[0, 0]) == (0, 255, 0)
    assert np.abs(frames[2].image[0, 0].astype(int) - (0, 0, 255)).max() <= 8
    for f in frames:
        assert f.image.shape == (6, 8, 3) and f.image.dtype == np.uint8


def test_glob(three: Path) -> None:
    frames = _read_all(_source(three / "*.png"))
    assert [f.name for f in frames] == ["a.png", "b.png"]


def test_recursive_glob(three: Path) -> None:
    frames = _read_all(_source(f"{three}/**/*.png"))
    assert [f.name for f in frames] == ["a.png", "b.png", "z.png"]


def test_single_file(three: Path) -> None:
    assert [f.name for f in _read_all(_source(three / "b.png"))] == ["b.png"]


@pytest.mark.parametrize("pattern", ["empty", "empty/*.png", "imgs/*.gif", "nowhere"])
def test_no_match_is_a_one_line_source_error(three: Path, pattern: str) -> None:
    (three.parent / "empty").mkdir()
    src = FilesFrameSource(FilesSource(path=str(three.parent / pattern)))
    with pytest.raises(SourceError) as info:
        src.open()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("source.path:")


def test_read_before_open(three: Path) -> None:
    with pytest.raises(SourceError, match="not open"):
        FilesFrameSource(FilesSource(path=str(three))).read()


def test_factory(three: Path) -> None:
    src = open_source(FilesSource(path=str(three)), (224, 224))
    assert isinstance(src, FilesFrameSource)
    with src:
        frame = src.read()
    assert frame is not None and frame.name == "a.png"


# -- once / loop ---------------------------------------------------------------------------


def test_once_ends_with_none(three: Path) -> None:
    src = _source(three)
    assert len(_read_all(src)) == 3
    assert src.read() is None


def test_loop_starts_again(three: Path) -> None:
    src = _source(three, loop=True)
    names = [f.name for f in _read_all(src, limit=7)]
    assert names == ["a.png", "b.png", "c.JPG", "a.png", "b.png", "c.JPG", "a.png"]


# -- pacing ------------------------------------------------------------------------------------


def test_fps_pacing_real_clock(tmp_path: Path) -> None:
    for i in range(20):
        _png(tmp_path / f"{i:02d}.png", (i, i, i), (4, 4))
    src = _source(tmp_path, fps=50)
    t0 = time.monotonic()
    frames = _read_all(src)
    elapsed = time.monotonic() - t0
    assert len(frames) == 20
    # First frame at once, then one every 20 ms: 19 intervals = 0.38 s.
    assert 0.8 <= elapsed / 0.38 <= 2.5, elapsed
    stamps = [f.captured for f in frames]
    assert stamps == sorted(stamps)


class FakeClock:
    """Monotonic clock whose sleep always oversleeps by ``overshoot`` seconds."""

    def __init__(self, overshoot: float = 0.0) -> None:
        self.now = 100.0
        self.overshoot = overshoot
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s + self.overshoot


def _paced(tmp_path: Path, clock: FakeClock, n: int, **kw: object) -> FilesFrameSource:
    for i in range(n):
        _png(tmp_path / f"{i:02d}.png", (i, i, i), (2, 2))
    cfg = FilesSource(path=str(tmp_path), **kw)
    src = FilesFrameSource(cfg, clock=clock, sleep=clock.sleep)
    src.open()
    return src


def test_pacing_does_not_accumulate_oversleep(tmp_path: Path) -> None:
    clock = FakeClock(overshoot=0.003)
    src = _paced(tmp_path, clock, 11, fps=10)
    times = []
    for _ in range(11):
        assert src.read() is not None
        times.append(clock.now - 100.0)
    # Each frame lands at most one overshoot after its slot k/10; it never drifts further.
    for k, t in enumerate(times):
        assert k / 10 <= t + 1e-9 <= k / 10 + 0.003 + 1e-9, (k, t)


def test_slow_consumer_gets_no_burst(tmp_path: Path) -> None:
    clock = FakeClock()
    src = _paced(tmp_path, clock, 5, fps=10)
    assert src.read() is not None
    clock.now += 1.0  # the consumer stalls for 10 periods
    assert src.read() is not None  # due long ago: at once
    before = clock.now
    assert src.read() is not None
    assert clock.now - before == pytest.approx(0.1)  # then back to one every 0.1 s


# -- unreadable files --------------------------------------------------------------------------


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    d = tmp_path / "messy"
    d.mkdir()
    good = _jpeg_bytes()
    (d / "01_good.jpg").write_bytes(good)
    (d / "02_truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "03_empty.png").write_bytes(b"")
    (d / "04_text.png").write_text("this is not a PNG\n")
    (d / "05_header_only.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    _png(d / "06_good.png", (1, 2, 3))
    (d / "07_readme.txt").write_text("ignored: not an image name")
    return d


def test_unreadable_files_are_skipped_counted_and_logged_once(
    messy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edged.sources")
    src = _source(messy, loop=True)
    names = [f.name for f in _read_all(src, limit=6)]
    assert names == ["01_good.jpg", "06_good.png"] * 3
    assert src.skipped == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4  # once per file, not once per pass
    logged = " ".join(r.getMessage() for r in warnings)
    for bad in ("02_truncated", "03_empty", "04_text", "05_header_only"):
        assert bad in logged


def test_unreadable_files_once_mode(messy: Path) -> None:
    src = _source(messy)
    assert [f.name for f in _read_all(src)] == ["01_good.jpg", "06_good.png"]
    assert src.skipped == 4


def test_all_unreadable_once_ends_quietly(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"junk")
    src = _source(tmp_path)
    assert src.read() is None
    assert src.skipped == 2


def test_all_unreadable_loop_is_a_fault_not_a_spin(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"junk")
    src = _source(tmp_path, loop=True)
    with pytest.raises(SourceError, match="none of the 2"):
        src.read()


def test_file_deleted_after_open_is_skipped(three: Path) -> None:
    src = _source(three)
    (three / "b.png").unlink()
    assert [f.name for f in _read_all(src)] == ["a.png", "c.JPG"]
    assert src.skipped == 1


# -- modes ---------------------------------------------------------------------------------------


def test_image_modes_come_out_rgb(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 77).save(tmp_path / "1_gray.png")
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "2_rgba.png")
    pal = Image.new("P", (5, 4), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.save(tmp_path / "3_palette.png")
    Image.new("LA", (5, 4), (33, 128)).save(tmp_path / "4_la.png")
    Image.new("1", (5, 4), 1).save(tmp_path / "5_bilevel.bmp")
    Image.new("RGB", (5, 4), (4, 5, 6)).save(tmp_path / "6_rgb.tiff")
    Image.new("RGB", (5, 4), (7, 8, 9)).save(tmp_path / "7_lossless.webp", lossless=True)
    frames = _read_all(_source(tmp_path))
    # Alpha is composited over black (issue 11): transparent RGBA is black, LA 33 at alpha
    # 128 is 33 * 128 / 255 = 17.
    want = [(77,) * 3, (0, 0, 0), (200, 100, 50), (17,) * 3, (255,) * 3, (4, 5, 6), (7, 8, 9)]
    assert len(frames) == len(want)
    for frame, colour in zip(frames, want, strict=True):
        assert frame.image.shape == (4, 5, 3), frame.name
        assert frame.image.dtype == np.uint8
        assert frame.image.flags.c_contiguous
        assert (frame.image == colour).all(), (frame.name, frame.image[0, 0])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 clockwise to view
    img.save(tmp_path / "sideways.png", exif=exif)
    (frame,) = _read_all(_source(tmp_path))
    assert frame.image.shape == (4, 2, 3)
    assert tuple(frame.image[0, 1]) == (255, 0, 0)


def test_roi_and_rotate_exact_pixels(tmp_path: Path) -> None:
    # 3 rows x 4 columns; red channel = 10*row + col, green = 100, blue = 200.
    arr = np.zeros((3, 4, 3), np.uint8)
    for r in range(3):
        for c in range(4):
            arr[r, c] = (10 * r + c, 100, 200)
    Image.fromarray(arr).save(tmp_path / "grid.png")
    src = _source(tmp_path, roi=Roi(x=1, y=0, width=2, height=2), rotate=90)
    (frame,) = _read_all(src)
    # roi -> [[1, 2], [11, 12]]; 90 clockwise -> [[11, 1], [12, 2]]
    assert frame.image.shape == (2, 2, 3)
    assert frame.image[..., 0].tolist() == [[11, 1], [12, 2]]
    assert (frame.image[..., 1] == 100).all() and (frame.image[..., 2] == 200).all()
    assert frame.image.flags.c_contiguous


def test_rotate_180(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    Image.fromarray(arr).save(tmp_path / "a.png")
    (frame,) = _read_all(_source(tmp_path, rotate=180))
    assert (frame.image == arr[::-1, ::-1]).all()
