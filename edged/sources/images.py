"""Untrusted image files -> RGB frames, bounded before a pixel is decoded.

Every image the daemon (files source) or ``edged classify`` reads goes through
:func:`read_image`:

1. the file is opened without blocking and must be a regular file (not a FIFO, device or
   directory, whatever its name), no larger than ``max_bytes``; it is read once into memory,
   so a file that grows or vanishes meanwhile is either read as it was or refused;
2. Pillow reads the header only (formats limited to :data:`FORMATS`, whatever the file name);
   more than ``max_pixels`` declared pixels is a refusal before anything is decoded;
3. the first frame is decoded, reading the data in 64 KiB blocks; between blocks ``check()``
   may abandon the decode (a deadline, or the capture thread giving up on the read);
4. the image is converted to RGB uint8 whatever its mode (:func:`to_rgb_array`) and turned
   upright as its EXIF orientation says.

Anything wrong with the input raises :class:`edged.errors.FrameRejected` (one line), and
nothing else: the files source skips and counts it, ``edged classify`` reports it.

Conversions (:func:`to_rgb_array`):

* 16-bit (``I;16``, ``I;16B``, ...), 32-bit integer (``I``) and float (``F``) grayscale are
  stretched linearly from their real range (the smallest to the largest finite value in the
  image) to 0-255, so they are neither clipped to white nor left black; NaN and infinities
  become 0. A constant image keeps its value (16-bit scaled by 1/257, others clipped to 0-255).
* Alpha (``RGBA``, ``LA``, ``PA``, palette with a transparent index) is composited over
  **black**: a pixel with alpha ``a`` becomes ``colour * a / 255`` (Pillow's premultiplied
  ``RGBa``). A fully transparent pixel is black whatever colour it stores.
* ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX`` ... go through Pillow's
  own conversion to RGB.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, PngImagePlugin

from edged.errors import FrameRejected
from edged.sources.base import DEFAULT_MAX_PIXELS, check_pixels, one_line

# The formats the files source reads (its extensions); Pillow tries only these, so a file
# named .jpg cannot reach the decoders of PSD, EPS (Ghostscript), FITS, ... at all.
FORMATS = ("BMP", "DIB", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")  # JPEG includes MPO
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 1 << 20
_MAX_TEXT_MEMORY = 4 << 20  # all PNG text/zTXt/iTXt/iCCP chunks of one image together

# PNG text chunks are decompressed at open; Pillow's default lets one image hold 64 MiB of
# them. A truncated image is refused, never filled with grey (Pillow's default; made sure).
PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, _MAX_TEXT_MEMORY)
ImageFile.LOAD_TRUNCATED_IMAGES = False
# The pixel count is checked here (max_pixels) before decoding; Pillow's warning for images
# over its own MAX_IMAGE_PIXELS would only repeat it (its error at twice that still applies).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# EXIF orientation -> the numpy view that turns the image upright (as ImageOps.exif_transpose).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class _GuardedReader(io.BytesIO):
    """The file's bytes; ``check()`` runs before every read Pillow makes (64 KiB blocks)."""

    def __init__(self, data: bytes, check: Callable[[], None] | None) -> None:
        super().__init__(data)
        self._check = check

    def read(self, size: int | None = -1, /) -> bytes:
        if self._check is not None:
            self._check()
        return super().read(size)


def read_bytes(
    path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, check: Callable[[], None] | None = None
) -> bytes:
    """The content of a regular file of at most ``max_bytes`` bytes, or :class:`FrameRejected`."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        try:
            fd = os.open(path, flags)  # O_NONBLOCK: a FIFO named x.jpg does not block the open
        except BlockingIOError:
            # A regular file under a lease (being written by a lease holder): wait for it as
            # any reader would; a read that takes too long is the capture thread's hang.
            fd = os.open(path, flags & ~os.O_NONBLOCK)
    except OSError as err:
        raise FrameRejected(err.strerror or str(err)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise FrameRejected(f"{kind}")
        if st.st_size > max_bytes:
            raise FrameRejected(f"file of {st.st_size} bytes is over the {max_bytes}-byte limit")
        chunks: list[bytes] = []
        total = 0
        while True:
            if check is not None:
                check()
            chunk = os.read(fd, min(_READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FrameRejected(f"file grew over the {max_bytes}-byte limit while read")
    except OSError as err:
        raise FrameRejected(f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if total == 0:
        raise FrameRejected("empty file")
    return b"".join(chunks)


def read_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    check: Callable[[], None] | None = None,
) -> np.ndarray:
    """An image file as an upright RGB uint8 array (h, w, 3), or :class:`FrameRejected`."""
    return decode_image(read_bytes(path, max_bytes, check), max_pixels=max_pixels, check=check)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, check: Callable[[], None] | None = None
) -> np.ndarray:
    """Encoded image bytes -> upright RGB uint8 (h, w, 3), C-contiguous; see the module doc."""
    try:
        with Image.open(_GuardedReader(data, check), formats=FORMATS) as im:
            w, h = im.size
            check_pixels(w, h, max_pixels, "image")
            orientation = _orientation(im)
            im.load()  # the first frame of an animation
            rgb = to_rgb_array(im)
    except FrameRejected:
        raise
    except Image.DecompressionBombError as err:
        raise FrameRejected(f"decompression bomb: {one_line(err)}") from None
    except Exception as err:  # any decoder failure (Pillow raises a dozen types)
        raise FrameRejected(f"cannot decode: {one_line(err)}") from None
    upright = _ORIENT.get(orientation)
    if upright is not None:
        rgb = upright(rgb)
    return np.ascontiguousarray(rgb)


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF: the pixels are still good
        return 1
    return value if isinstance(value, int) else 1


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """A loaded image of any mode -> RGB uint8 (h, w, 3); see the module docstring."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode == "I" or mode == "F" or mode.startswith("I;16"):
        return _gray3(stretch_to_uint8(np.asarray(im)))
    if mode in ("1", "L"):
        return _gray3(np.asarray(im.convert("L"), dtype=np.uint8))
    if (mode == "P" and "transparency" in im.info) or mode in ("PA", "RGBA", "RGBa"):
        if mode == "RGBa":
            premultiplied = im
        else:
            premultiplied = (im if mode == "RGBA" else im.convert("RGBA")).convert("RGBa")
        return np.ascontiguousarray(np.asarray(premultiplied, dtype=np.uint8)[:, :, :3])
    if mode in ("LA", "La"):
        la = np.asarray(im.convert("La") if mode == "LA" else im, dtype=np.uint8)
        return _gray3(la[:, :, 0])
    try:
        rgb = im.convert("RGB")
    except ValueError as err:
        raise FrameRejected(f"image mode {mode!r} cannot be converted: {one_line(err)}") from None
    return np.asarray(rgb, dtype=np.uint8)


def _gray3(gray: np.ndarray) -> np.ndarray:
    out = np.empty((*gray.shape, 3), dtype=np.uint8)
    out[...] = gray[:, :, None]
    return out


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Any real-valued array -> uint8, linearly from its finite min..max to 0..255.

    NaN and infinities become 0. A constant array keeps its value: clipped to 0-255, or
    divided by 257 for 16-bit unsigned data (65535 is white). Computed in float64 blocks of
    at most 1 Mi values, so the extra memory is bounded whatever the size and dtype.
    """
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * np.uint8(255)
    if values.ndim == 0 or values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    blocks = _row_blocks(values)
    lo, hi = np.inf, -np.inf
    for block in blocks:
        b = values[block].astype(np.float64)
        finite = b[np.isfinite(b)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    out = np.zeros(values.shape, dtype=np.uint8)
    if lo > hi:  # nothing finite
        return out
    if not hi > lo:  # constant
        value = lo / 257.0 if values.dtype.kind == "u" and values.dtype.itemsize == 2 else lo
        level = np.uint8(np.clip(np.rint(value), 0, 255))
        for block in blocks:
            out[block][np.isfinite(values[block].astype(np.float64))] = level
        return out
    half = not np.isfinite(hi - lo)  # e.g. -1e308..1e308: scale the halves
    shift, span = (lo / 2, hi / 2 - lo / 2) if half else (lo, hi - lo)
    for block in blocks:
        b = values[block].astype(np.float64)
        if half:
            b *= 0.5
        b -= shift
        b /= span  # 0..1; dividing (not multiplying by 255 / span) keeps subnormal spans finite
        b *= 255.0
        np.nan_to_num(b, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(b, 0.0, 255.0, out=b)
        out[block] = np.rint(b)
    return out


def _row_blocks(values: np.ndarray) -> list[slice]:
    """Slices of the first axis holding about 1 Mi values each."""
    per_row = max(1, values.size // max(1, values.shape[0]))
    rows = max(1, (1 << 20) // per_row)
    return [slice(i, i + rows) for i in range(0, values.shape[0], rows)]
