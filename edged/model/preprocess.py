"""Frame -> input tensor: resize, colour, normalisation, quantisation, layout.

Normalisation is per channel ``real = (pixel - mean) / std`` on 0-255 pixels; a quantised
input then gets ``q = round(real / scale + zero_point)``, clipped to its dtype. Because the
pixels are uint8, the whole chain is a 256-entry lookup table per channel, computed once;
each frame costs one table lookup (``cv2.LUT`` when OpenCV is installed). Where the chain is
the identity within one quantisation step (uint8 pixels fed as they are, or ``pixel - 128``
for int8), the table is skipped for a plain copy.

When nothing says how to normalise (no explicit mean/std, bundle spec or metadata),
:func:`infer_normalization` reads it off the input's quantisation: the real range the dtype
covers, ``scale * (q - zero_point)``, is matched against the usual conventions:

==============  ===================================  =========================================
real range      meaning                              mean / std
==============  ===================================  =========================================
[0, 1]          x / 255                              0 / 255
[-1, 1]         (x - 127.5) / 127.5                  127.5 / 127.5
[0, 255]        x                                    0 / 1
[-128, 127]     x - 128                              128 / 1
[-2.1, 2.6]     ImageNet mean/std (PyTorch exports)  (123.7, 116.3, 103.5) / (58.4, 57.1, 57.4)
==============  ===================================  =========================================

A quantised input that matches none is fed the raw pixels (``q = pixel + dtype min``). An
unquantised uint8 input gets the pixels as they are; an unquantised float32 input with nothing
known gets [-1, 1] (the most common convention of Keras/TF image models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.errors import ModelError

_UNLOADED: Any = object()
_cv2: Any = _UNLOADED


def opencv() -> Any:
    """OpenCV, imported on first use (it costs ~16 MB of RSS, and frames that arrive at the
    model's size with an identity normalisation never need it); None when not installed."""
    global _cv2
    if _cv2 is _UNLOADED:
        try:
            import cv2

            # One thread: a frame's resize is too small to share out, and OpenCV's pool
            # would wake a thread on a core the interpreters are using (0.38 against 0.30 ms
            # of CPU per 640x480 frame, measured).
            cv2.setNumThreads(1)
            _cv2 = cv2
        except ImportError:  # exercised where OpenCV is not installed
            _cv2 = None
    return _cv2


IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
_RANGE_TOLERANCE = 0.05  # of the range width
_IDENTITY_TOLERANCE = 1.01  # quantisation steps
_CONVENTIONS: list[tuple[str, float, float, tuple[float, ...], tuple[float, ...]]] = [
    ("[0,1]", 0.0, 1.0, (0.0,), (255.0,)),
    ("[-1,1]", -1.0, 1.0, (127.5,), (127.5,)),
    ("[0,255]", 0.0, 255.0, (0.0,), (1.0,)),
    ("[-128,127]", -128.0, 127.0, (128.0,), (1.0,)),
    ("imagenet", -2.1179, 2.6400, IMAGENET_MEAN, IMAGENET_STD),
]

_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.float32))
U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "config", "bundle", "metadata", "quantization" or "default"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """The interpreter's input tensor, as preprocessing needs it."""

    shape: tuple[int, ...]  # as the interpreter has it, batch included when present
    layout: str  # "NHWC" | "NCHW"
    height: int
    width: int
    channels: int
    dtype: np.dtype[Any]
    scale: float  # 0 when not quantised
    zero_point: int

    @classmethod
    def from_details(cls, details: dict[str, Any], layout: str | None = None) -> InputSpec:
        shape = tuple(int(d) for d in details["shape"])
        dtype = np.dtype(details["dtype"])
        scale, zero_point = details.get("quantization", (0.0, 0)) or (0.0, 0)
        dims = shape[1:] if len(shape) == 4 else shape
        if len(dims) != 3 or (len(shape) == 4 and shape[0] != 1):
            raise ModelError(f"model input shape {list(shape)} is not one image (NHWC or NCHW)")
        if layout is None:
            if dims[2] in (1, 3):
                layout = "NHWC"
            elif dims[0] in (1, 3):
                layout = "NCHW"
            else:
                raise ModelError(
                    f"model input shape {list(shape)} has no 1- or 3-channel axis (NHWC or NCHW)"
                )
        if layout == "NHWC":
            height, width, channels = dims
        elif layout == "NCHW":
            channels, height, width = dims
        else:
            raise ModelError(f"unknown input layout {layout!r} (NHWC or NCHW)")
        if channels not in (1, 3) or height < 1 or width < 1:
            raise ModelError(f"model input shape {list(shape)} is not a 1- or 3-channel image")
        if dtype not in _DTYPES:
            raise ModelError(f"model input type {dtype} is not supported")
        return cls(shape, layout, height, width, channels, dtype, float(scale), int(zero_point))

    @property
    def quantized(self) -> bool:
        return self.dtype.kind in "iu" and self.scale > 0


def quant_range(dtype: np.dtype[Any], scale: float, zero_point: int) -> tuple[float, float] | None:
    """The real values a quantised dtype covers, or None for float / unquantised inputs."""
    if dtype.kind not in "iu" or scale <= 0:
        return None
    info = np.iinfo(dtype)
    return scale * (int(info.min) - zero_point), scale * (int(info.max) - zero_point)


def infer_normalization(dtype: np.dtype[Any], scale: float, zero_point: int) -> Normalization:
    """The mean/std a model expects, read off its input quantisation (see module docstring)."""
    rng = quant_range(dtype, scale, zero_point)
    if rng is None:
        if dtype.kind == "f":
            return Normalization((127.5,), (127.5,), "default")
        low = int(np.iinfo(dtype).min)
        return Normalization((float(-low),), (1.0,), "default")  # raw pixels (+ dtype min)
    lo, hi = rng
    best: tuple[float, tuple[float, ...], tuple[float, ...]] | None = None
    for _name, c_lo, c_hi, mean, std in _CONVENTIONS:
        err = max(abs(lo - c_lo), abs(hi - c_hi)) / (c_hi - c_lo)
        if err <= _RANGE_TOLERANCE and (best is None or err < best[0]):
            best = (err, mean, std)
    if best is not None:
        return Normalization(best[1], best[2], "quantization")
    # Unknown convention: feed raw pixels, q = pixel + dtype min.
    low = int(np.iinfo(dtype).min)
    return Normalization((float(zero_point - low),), (1.0 / scale,), "quantization")


def per_channel(values: list[float] | tuple[float, ...], channels: int, what: str) -> list[float]:
    if len(values) == 1:
        return [float(values[0])] * channels
    if len(values) != channels:
        raise ModelError(
            f"{what} has {len(values)} values but the model input has {channels} channels"
        )
    return [float(v) for v in values]


def build_lut(spec: InputSpec, norm: Normalization) -> tuple[np.ndarray, int | None]:
    """The per-channel table (256 x channels, input dtype) and, when the mapping is the identity
    within one quantisation step, the constant offset to add to pixels instead (0 or -128)."""
    mean = per_channel(norm.mean, spec.channels, "mean")
    std = per_channel(norm.std, spec.channels, "std")
    if any(s == 0 for s in std):
        raise ModelError("std must not contain 0")
    x = np.arange(256, dtype=np.float64)[:, None]
    real = (x - np.asarray(mean)[None, :]) / np.asarray(std)[None, :]
    if spec.dtype.kind == "f":
        return real.astype(spec.dtype), None
    info = np.iinfo(spec.dtype)
    q = real / spec.scale + spec.zero_point if spec.quantized else real
    offset = int(info.min) if spec.dtype in (np.dtype(np.uint8), np.dtype(np.int8)) else None
    identity = offset is not None and float(np.max(np.abs(q - (x + offset)))) <= _IDENTITY_TOLERANCE
    lut = np.clip(np.rint(q), info.min, info.max).astype(spec.dtype)
    return lut, (offset if identity else None)


class Preprocessor:
    """Turns HxWx3 (or HxW) uint8 RGB frames into the model's input tensor.

    Returns a buffer of its own, the same every call — or, when the frame already is the
    tensor (uint8 RGB at the input size, an input that takes pixels as they are), a view of
    the frame itself: no copy, ``set_tensor`` makes the only one. Copy the result to keep it.
    Not thread-safe.
    """

    def __init__(self, spec: InputSpec, norm: Normalization) -> None:
        self.spec = spec
        self.norm = norm
        lut, self.identity_offset = build_lut(spec, norm)
        h, w, c = spec.height, spec.width, spec.channels
        self.buffer: np.ndarray = np.zeros(spec.shape, dtype=spec.dtype)
        image = self.buffer.reshape(self.buffer.shape[-3:])  # HWC or CHW view of the buffer
        self._nchw = spec.layout == "NCHW"
        self._planes = [image[i] for i in range(c)] if self._nchw else []
        self._hwc = image if not self._nchw else image.transpose(1, 2, 0)
        self._as_is = self.identity_offset == 0 and not self._nchw and c == 3
        self._lut = [np.ascontiguousarray(lut[:, i]) for i in range(c)]  # one 256-table each
        self._lut_cv = np.ascontiguousarray(lut.reshape(1, 256, c))
        self._resized = np.zeros((h, w, 3), dtype=np.uint8)
        self._gray = np.zeros((h, w), dtype=np.uint8)
        self._rgb = np.zeros((h, w, 3), dtype=np.uint8)
        self._split = [np.zeros((h, w), dtype=np.uint8) for _ in range(3)]

    @property
    def fast_path(self) -> bool:
        return self.identity_offset is not None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        src = self._fit(image)
        if self._as_is and src.shape == self._hwc.shape and src.flags.c_contiguous:
            return src.reshape(self.buffer.shape)
        cv2 = None if self.identity_offset is not None else opencv()
        if src.ndim == 2:  # one channel: HxW into the single plane
            self._map(src, self._planes[0] if self._nchw else self._hwc[:, :, 0], 0)
        elif self._nchw:
            # De-interleave into planes once, then map each plane straight into the buffer.
            cv2 = opencv()
            if cv2 is not None:
                cv2.split(src, self._split)
                for ch, plane in enumerate(self._planes):
                    self._map(self._split[ch], plane, ch)
            else:
                for ch, plane in enumerate(self._planes):
                    self._map(src[:, :, ch], plane, ch)
        elif self.identity_offset is None and cv2 is not None:
            cv2.LUT(src, self._lut_cv, dst=self._hwc)  # all three channels in one pass
        elif self.identity_offset is not None:
            self._map(src, self._hwc, 0)
        else:
            for ch in range(3):
                self._map(src[:, :, ch], self._hwc[:, :, ch], ch)
        return self.buffer

    def _map(self, src: np.ndarray, dst: np.ndarray, ch: int) -> None:
        """dst = table(src) for one channel (or all, on the identity paths)."""
        if self.identity_offset == 0:
            np.copyto(dst.view(np.uint8), src)
        elif self.identity_offset is not None:  # int8: pixel - 128 == pixel ^ 0x80
            np.bitwise_xor(src, 0x80, out=dst.view(np.uint8))
        elif (cv2 := opencv()) is not None and dst.flags.c_contiguous:
            cv2.LUT(src, self._lut[ch], dst=dst)
        else:
            np.take(self._lut[ch], src, out=dst, mode="clip")

    def _fit(self, image: np.ndarray) -> U8:
        """Resize to the input size and convert to the input's channel count."""
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
        h, w = self.spec.height, self.spec.width
        if image.shape[:2] != (h, w):
            image = self._resize(image)
        want = self.spec.channels
        if want == 1 and image.ndim == 3:
            return self._to_gray(image)
        if want == 3 and image.ndim == 2:
            if (cv2 := opencv()) is not None:
                cv2.cvtColor(image, cv2.COLOR_GRAY2RGB, dst=self._rgb)
            else:
                np.copyto(self._rgb, image[:, :, None])
            return self._rgb
        return image

    def _resize(self, image: np.ndarray) -> U8:
        h, w = self.spec.height, self.spec.width
        cv2 = opencv()
        if cv2 is not None:
            if not image.flags.c_contiguous:
                image = np.ascontiguousarray(image)
            # Area-average by the whole factor (OpenCV's fast integer path), then bilinear for
            # the rest: 640x480 -> 224x224 in 0.17 ms against INTER_AREA's 1.0 ms, without
            # the aliasing of bilinear alone on big reductions.
            k = int(min(image.shape[0] / h, image.shape[1] / w))
            if k >= 2:
                size = (image.shape[1] // k, image.shape[0] // k)
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            dst = self._resized if image.ndim == 3 else self._gray
            out: U8 = cv2.resize(image, (w, h), dst=dst, interpolation=cv2.INTER_LINEAR)
            return out
        from PIL import Image

        # BOX is area averaging, as INTER_AREA; for smaller reductions and enlarging, bilinear.
        shrink = min(image.shape[0] / h, image.shape[1] / w)
        box = Image.Resampling.BOX if shrink >= 2.0 else Image.Resampling.BILINEAR
        resized = Image.fromarray(image).resize((w, h), box)
        return np.asarray(resized, dtype=np.uint8)

    def _to_gray(self, image: np.ndarray) -> U8:
        if (cv2 := opencv()) is not None:
            if not image.flags.c_contiguous:
                image = np.ascontiguousarray(image)
            cv2.cvtColor(image, cv2.COLOR_RGB2GRAY, dst=self._gray)
            return self._gray
        # ITU-R 601 luma, as PIL "L" and cv2 RGB2GRAY compute it.
        luma = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        np.copyto(self._gray, np.clip(np.rint(luma), 0, 255), casting="unsafe")
        return self._gray
