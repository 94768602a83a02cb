"""Image files as they come (issue 11): bounded before decoding, every mode converted, odd files
refused with one line, and a decode that timed out abandoned instead of left running."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from edged.config import FilesSource
from edged.errors import FrameRejected
from edged.frames.capture import Capture
from edged.sources.base import safe_name
from edged.sources.files import FilesFrameSource, find_images, load_rgb
from edged.sources.images import decode_image, read_bytes, stretch_to_uint8, to_rgb_array

ROOT = Path(__file__).resolve().parents[2]


def _encode(im: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(w: int = 48, h: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1).astype(np.uint8)


# -- bounds before decoding ------------------------------------------------------------------

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec from the (big) test process.
_DECODE_RSS = """
import sys
from pathlib import Path
from edged.sources.files import load_rgb
try:
    image = load_rgb(Path(sys.argv[1]))
    print("decoded", image.shape)
except Exception as err:
    print("refused", type(err).__name__, err)
status = Path("/proc/self/status").read_text().splitlines()
print(next(int(s.split()[1]) for s in status if s.startswith("VmHWM:")) // 1024)
"""


def _bomb(path: Path, kind: str) -> Path:
    """Small files that declare 169 Mpx: Pillow only warns below 179 Mpx (2 x its limit)."""
    if kind == "png-1bit":
        Image.new("1", (13000, 13000), 0).save(path, optimize=True)
    elif kind == "png-gray":
        Image.new("L", (13000, 13000), 0).save(path, compress_level=9)
    elif kind == "gif":  # a 6x6 GIF whose screen and image descriptor declare 13000x13000
        small = _encode(Image.new("P", (6, 6), 0), "GIF")
        big = struct.pack("<HH", 13000, 13000)
        i = small.index(b"\x2c")  # the image descriptor: ',' left top width height
        path.write_bytes(small[:6] + big + small[10:i] + b"\x2c" + small[i + 1 : i + 5] + big
                         + small[i + 9 :])  # fmt: skip
    return path


@pytest.mark.parametrize("kind", ["png-1bit", "png-gray", "gif"])
def test_small_file_declaring_huge_pixels_is_refused_before_decoding(
    tmp_path: Path, kind: str
) -> None:
    """The reported bug: a ~20 KB PNG made the process grow past 2 GiB (main: 1.9 GiB peak)."""
    bomb = _bomb(tmp_path / f"bomb.{'gif' if kind == 'gif' else 'png'}", kind)
    assert bomb.stat().st_size < 1_000_000
    out = subprocess.run(
        [sys.executable, "-c", _DECODE_RSS, str(bomb)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = out.stdout.split("\n")
    assert lines[0].startswith("refused FrameRejected image of 13000x13000 pixels is over"), out
    peak_mib = int(lines[1])
    assert peak_mib < 250, f"decoding peaked at {peak_mib} MiB"


def test_pixel_limit_is_configurable_and_exact() -> None:
    data = _encode(Image.new("RGB", (100, 50)))
    assert decode_image(data, max_pixels=5000).shape == (50, 100, 3)
    with pytest.raises(FrameRejected, match="100x50 pixels is over the 4999-pixel limit"):
        decode_image(data, max_pixels=4999)


def test_files_source_uses_the_configured_limits(tmp_path: Path) -> None:
    Image.new("RGB", (100, 50)).save(tmp_path / "a.png")
    Image.new("RGB", (10, 5)).save(tmp_path / "b.png")
    src = FilesFrameSource(FilesSource(path=str(tmp_path), fps=1000, max_image_pixels=4999))
    src.open()
    frame = src.read()
    assert frame is not None and frame.name == "b.png" and src.skipped == 1
    big = (tmp_path / "a.png").stat().st_size
    src = FilesFrameSource(FilesSource(path=str(tmp_path), fps=1000, max_image_bytes=big - 1))
    src.open()
    frame = src.read()
    assert frame is not None and frame.name == "b.png" and src.skipped == 1


def test_file_size_is_bounded_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_encode(Image.new("RGB", (8, 8))) + b"\0" * 5000)
    with pytest.raises(FrameRejected, match="over the 1000-byte limit"):
        read_bytes(path, max_bytes=1000)
    assert len(read_bytes(path, max_bytes=10_000)) == path.stat().st_size


def test_png_text_chunks_are_bounded() -> None:
    info = PngImagePlugin.PngInfo()
    for i in range(8):  # 8 x 1 MiB of text, ~8 KB compressed: Pillow's default allows 64 MiB
        info.add_text(f"k{i}", "x" * (1 << 20), zip=True)
    data = _encode(Image.new("RGB", (4, 4)), pnginfo=info)
    assert len(data) < 100_000
    assert PngImagePlugin.MAX_TEXT_MEMORY <= 4 << 20
    with pytest.raises(FrameRejected, match="cannot decode"):
        decode_image(data)


# -- odd files -------------------------------------------------------------------------------


def test_fifo_directory_and_device_named_like_images(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(good)
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "link.png").symlink_to(good)
    assert [p.name for p in find_images(str(tmp_path))] == ["good.png", "link.png"]
    # Read anyway (a file replaced after listing): refused at once, never blocking on a FIFO.
    t0 = time.monotonic()
    with pytest.raises(FrameRejected, match="not a regular file"):
        load_rgb(tmp_path / "fifo.png")
    with pytest.raises(FrameRejected, match="directory"):
        load_rgb(tmp_path / "dir.jpg")
    with pytest.raises(FrameRejected, match="not a regular file"):
        load_rgb(tmp_path / "zero.jpg")
    with pytest.raises(FrameRejected, match="No such file"):
        load_rgb(tmp_path / "dangling.jpg")
    with pytest.raises(FrameRejected, match="empty file"):
        (tmp_path / "empty.png").write_bytes(b"")
        load_rgb(tmp_path / "empty.png")
    assert time.monotonic() - t0 < 2.0
    assert tuple(load_rgb(tmp_path / "link.png")[0, 0]) == (1, 2, 3)


def test_file_that_vanishes_or_is_replaced_by_a_fifo_after_listing(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / name)
    src = FilesFrameSource(FilesSource(path=str(tmp_path), fps=1000))
    src.open()
    (tmp_path / "a.png").unlink()
    (tmp_path / "b.png").unlink()
    os.mkfifo(tmp_path / "b.png")
    done: list[Any] = []
    reader = threading.Thread(target=lambda: done.append(src.read()), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "read blocked on a FIFO"
    assert done[0] is not None and done[0].name == "c.png" and src.skipped == 2


def test_names_of_any_kind_come_out_as_one_encodable_line(tmp_path: Path) -> None:
    names = [
        os.fsdecode(b"caf\xe9-\xff.png"),  # not UTF-8: surrogate escapes in Python
        "new\nline\r.png",
        "tab\tand\x1bescape.png",
        "sep\u2028line.png",
        "é✓🙂.png",
        "x" * 251 + ".png",  # the longest name Linux allows (255 bytes)
    ]
    for name in names:
        Image.new("RGB", (4, 4), (5, 6, 7)).save(tmp_path / name)
    src = FilesFrameSource(FilesSource(path=str(tmp_path), fps=1000))
    src.open()
    got = []
    while (frame := src.read()) is not None:
        got.append(frame.name)
    assert src.skipped == 0 and len(got) == len(names)
    for name in got:
        name.encode("utf-8")  # strict: never raises
        assert name.isprintable() or "🙂" in name, repr(name)
        assert "\n" not in name and "\r" not in name and "\u2028" not in name
    assert "caf\\xe9-\\xff.png" in got
    assert "new\\nline\\r.png" in got
    assert "é✓🙂.png" in got
    assert "x" * 251 + ".png" in got
    assert safe_name("\udc80\ud800") == "\\x80\\ud800"
    assert len(safe_name("y" * 5000)) == 1024


# -- images as they come ---------------------------------------------------------------------


def _modes(rgb: np.ndarray) -> dict[str, Image.Image]:
    """The same picture in every mode Pillow opens (alpha fully opaque)."""
    im = Image.fromarray(rgb)
    gray = np.asarray(im.convert("L"))
    opaque = np.full(gray.shape, 255, np.uint8)
    out = {
        "RGB": im,
        "L": im.convert("L"),
        "LA": Image.fromarray(np.stack([gray, opaque], -1), "LA"),
        "P": im.convert("P", palette=Image.Palette.ADAPTIVE, colors=256),
        "RGBA": im.convert("RGBA"),
        "CMYK": im.convert("CMYK"),
        "YCbCr": im.convert("YCbCr"),
        "LAB": im.convert("LAB"),
        "HSV": im.convert("HSV"),
        "I": Image.fromarray(gray.astype(np.int32) * 1000 - 7, "I"),
        "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
        "I;16B": Image.frombytes(  # (Pillow's convert("I;16B") clips to 255)
            "I;16B", im.size, (gray.astype(np.uint16) * 257).astype(">u2").tobytes()
        ),
        "F": Image.fromarray(gray.astype(np.float32) / 255.0),
    }
    out["PA"] = out["P"].convert("PA")
    return out


@pytest.mark.parametrize("mode", list(_modes(_photo())))
def test_every_mode_comes_out_as_its_rgb_or_gray_copy(mode: str) -> None:
    rgb = _photo()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    im = _modes(rgb)[mode]
    assert im.mode == mode
    out = to_rgb_array(im)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    if mode in ("L", "LA", "I", "I;16", "I;16B", "F"):
        assert (out[:, :, 0] == out[:, :, 2]).all()
        if mode not in ("L", "LA"):  # deeper than 8 bits: the real range stretched to 0..255
            lo, hi = int(gray.min()), int(gray.max())
            gray = np.rint((gray.astype(float) - lo) * 255 / (hi - lo)).astype(np.uint8)
        assert np.abs(out[:, :, 0].astype(int) - gray).max() <= 1, mode
    else:
        # (max, mean) error of Pillow's own conversions; P is a 256-colour palette.
        tol = {"RGB": (0, 0), "RGBA": (0, 0), "CMYK": (0, 0), "HSV": (8, 1), "YCbCr": (3, 2)}
        most, mean = tol.get(mode, (40, 4))
        err = np.abs(out.astype(int) - rgb)
        assert err.max() <= most and err.mean() <= mean, (mode, err.max(), err.mean())


def test_sixteen_bit_and_float_gray_are_stretched_not_clipped() -> None:
    # 12-bit data in a 16-bit container, and floats far outside 0..255: not white, not black.
    ramp = np.linspace(0, 4095, 64).astype(np.uint16).reshape(8, 8)
    out = to_rgb_array(Image.fromarray(ramp))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and 120 <= out[4, 0, 0] <= 135
    f = np.linspace(-1e6, 3e6, 64, dtype=np.float32).reshape(8, 8)
    f[0, 1], f[0, 2] = np.nan, np.inf
    out = to_rgb_array(Image.fromarray(f, "F"))
    assert out[-1, -1, 0] == 255 and out[0, 0, 0] == 0 and out[0, 1, 0] == 0 and out[0, 2, 0] == 0
    assert 120 <= out[4, 0, 0] <= 135
    # A constant 16-bit image keeps its level.
    assert to_rgb_array(Image.fromarray(np.full((2, 2), 65535, np.uint16)))[0, 0, 0] == 255
    assert stretch_to_uint8(np.array([[np.nan]], np.float32))[0, 0] == 0


def test_alpha_and_palette_transparency_are_composited_over_black() -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[255, 128, 0], [255, 255, 255]]
    out = to_rgb_array(Image.fromarray(rgba, "RGBA"))
    assert tuple(out[0, 0]) == (200, 100, 50)
    assert tuple(out[0, 1]) == (100, 50, 25)
    assert tuple(out[0, 2]) == (0, 0, 0)
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([250, 250, 250, 10, 20, 30] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    out = decode_image(_encode(pal))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[0, 1]) == (10, 20, 30)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_exif_transpose(orientation: int) -> None:
    im = Image.fromarray(_photo(6, 4))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(im, "PNG", exif=exif)
    with Image.open(io.BytesIO(data)) as ref:
        want = np.asarray(ImageOps.exif_transpose(ref).convert("RGB"))
    got = decode_image(data)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def test_broken_exif_does_not_lose_the_image() -> None:
    data = _encode(Image.new("RGB", (4, 4), (3, 4, 5)), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert decode_image(data).shape == (4, 4, 3)


def test_first_frame_of_an_animation() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    for fmt in ("GIF", "PNG", "WEBP"):
        data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
        out = decode_image(data)
        assert np.abs(out.astype(int) - (255, 0, 0)).max() <= 4, fmt


def test_formats_other_than_the_image_extensions_are_refused(tmp_path: Path) -> None:
    # Pillow would open these; a file named .jpg must not reach their decoders.
    for fmt, ext in (("ICO", "ico"), ("PCX", "pcx"), ("TGA", "tga")):
        data = _encode(Image.new("RGB", (16, 16)), fmt)
        with pytest.raises(FrameRejected, match="cannot decode"):
            decode_image(data)
        assert Image.open(io.BytesIO(data)).format == fmt, ext
    # A wrong extension among the allowed formats is read correctly.
    (tmp_path / "really_a.jpg").write_bytes(_encode(Image.new("RGB", (4, 4), (7, 7, 7))))
    assert tuple(load_rgb(tmp_path / "really_a.jpg")[0, 0]) == (7, 7, 7)


# -- a read that timed out leaves nothing decoding ---------------------------------------------


class _SlowDecoders:
    """Every Pillow decoder call (one per 64 KiB block) sleeps: a decode that takes seconds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
        self.calls: list[tuple[float, str]] = []
        real = Image._getdecoder
        outer = self

        class Slow:
            def __init__(self, inner: Any) -> None:
                self._inner = inner

            def decode(self, data: bytes) -> Any:
                outer.calls.append((time.monotonic(), threading.current_thread().name))
                time.sleep(delay)
                return self._inner.decode(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._inner, name)

        monkeypatch.setattr(Image, "_getdecoder", lambda *a, **k: Slow(real(*a, **k)))


def _noise_png(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, compress_level=1)  # ~1.5 MB: ~23 blocks of 64 KiB
    return path


def test_a_read_that_timed_out_leaves_no_worker_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _noise_png(tmp_path / "slow.png")
    slow = _SlowDecoders(monkeypatch, delay=0.15)  # ~3.5 s for the whole image
    cfg = FilesSource(path=str(tmp_path), fps=1000, loop=True, read_timeout_s=0.5)
    # A frozen clock: the source's own decode deadline never fires; only the capture's does.
    cap = Capture(
        lambda: FilesFrameSource(cfg, clock=lambda: 0.0),
        read_timeout_s=0.5,
        retry_min_s=30.0,
        retry_max_s=30.0,
    )
    cap.start()
    try:
        deadline = time.monotonic() + 10
        while cap.hung_since is None and time.monotonic() < deadline:
            time.sleep(0.05)
            cap.check_hang(time.monotonic())
        assert cap.hung_since is not None, "the read never timed out"
        hung_at = time.monotonic()
        time.sleep(1.5)
        first = [t for t, name in slow.calls if name == "capture-1"]
        assert first, "the first worker never decoded"
        late = [t - hung_at for t in first if t > hung_at + 0.4]
        assert not late, f"the abandoned worker kept decoding: {len(late)} blocks after"
        alive = [t.name for t in threading.enumerate() if t.name == "capture-1"]
        assert not alive, "the abandoned worker is still running"
    finally:
        cap.stop()


def test_a_decode_past_its_deadline_is_skipped_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _noise_png(tmp_path / "a_slow.png")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "b_fast.bmp")
    _SlowDecoders(monkeypatch, delay=0.15)
    src = FilesFrameSource(FilesSource(path=str(tmp_path), fps=1000, read_timeout_s=1.0))
    src.open()
    t0 = time.monotonic()
    frame = src.read()
    took = time.monotonic() - t0
    assert frame is not None and frame.name == "b_fast.bmp" and src.skipped == 1
    assert took < 1.0 + 0.5, f"the read took {took:.2f} s, past read_timeout_s"
