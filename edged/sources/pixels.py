"""The camera stack's pixel formats converted to RGB, and frames fitted to the model's input.

4:2:0 YUV arrays as picamera2's ``capture_array`` gives them: shape ``(h*3//2, stride)``, h rows
of Y, then the chroma (planar U and V, or interleaved for NV12/NV21); any stride padding is on
the right. BT.601 limited range. OpenCV does the work when it is importable, numpy (and Pillow
for a resize) otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edged.errors import SourceError

YUV_FORMATS = ("YUV420", "YVU420", "NV12", "NV21")
RGB_FORMATS = ("RGB888", "BGR888", "XBGR8888", "XRGB8888")


def _chroma_planes(arr: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """The U and V planes, (h/2, stride/2) each, of a 4:2:0 array ``(h*3//2, stride)``."""
    h = arr.shape[0] * 2 // 3
    stride = arr.shape[1]
    chroma = np.ascontiguousarray(arr[h:]).reshape(-1)
    if fmt in ("NV12", "NV21"):  # interleaved chroma rows of `stride` bytes
        uv = chroma.reshape(h // 2, stride)
        first, second = uv[:, 0::2], uv[:, 1::2]
    else:  # planar: two planes of (h/2, stride/2)
        n = (h // 2) * (stride // 2)
        first = chroma[:n].reshape(h // 2, stride // 2)
        second = chroma[n : 2 * n].reshape(h // 2, stride // 2)
    return (first, second) if fmt in ("YUV420", "NV12") else (second, first)


def _yuv420_to_rgb_numpy(arr: np.ndarray, width: int, fmt: str = "YUV420") -> np.ndarray:
    """BT.601 limited range, nearest-neighbour chroma; same maths as OpenCV's I420."""
    h = arr.shape[0] * 2 // 3
    y = arr[:h, :width].astype(np.float32) - 16.0
    u_plane, v_plane = _chroma_planes(arr, fmt)
    cw = (width + 1) // 2
    u = u_plane[:, :cw].repeat(2, axis=0).repeat(2, axis=1)[:h, :width].astype(np.float32) - 128.0
    v = v_plane[:, :cw].repeat(2, axis=0).repeat(2, axis=1)[:h, :width].astype(np.float32) - 128.0
    y *= 1.164
    rgb = np.empty((h, width, 3), dtype=np.float32)
    rgb[..., 0] = y + 1.596 * v
    rgb[..., 1] = y - 0.813 * v - 0.391 * u
    rgb[..., 2] = y + 2.018 * u
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def yuv420_to_rgb(
    arr: np.ndarray, width: int, *, use_cv2: bool | None = None, fmt: str = "YUV420"
) -> np.ndarray:
    """picamera2's 4:2:0 array ``(h*3//2, stride)`` -> RGB ``(h, width, 3)`` uint8.

    ``fmt``: YUV420 (I420), YVU420 (YV12), NV12 or NV21. Uses ``cv2.cvtColor`` when OpenCV
    is importable (or ``use_cv2`` is True), otherwise a vectorised numpy conversion. Both
    assume BT.601 limited range, which is the colour space the source requests.
    """
    if fmt not in YUV_FORMATS:
        raise SourceError(f"picamera2: {fmt} is not a 4:2:0 YUV format")
    if arr.ndim != 2 or arr.shape[0] % 3 or arr.shape[1] % 2 or width > arr.shape[1]:
        raise SourceError(f"picamera2: unexpected {fmt} array shape {arr.shape} for width {width}")
    cv2: Any = None
    if use_cv2 is not False:
        try:
            import cv2
        except ImportError:
            if use_cv2:
                raise
    if cv2 is None:
        return _yuv420_to_rgb_numpy(arr, width, fmt)
    code = {
        "YUV420": cv2.COLOR_YUV2RGB_I420,
        "YVU420": cv2.COLOR_YUV2RGB_YV12,
        "NV12": cv2.COLOR_YUV2RGB_NV12,
        "NV21": cv2.COLOR_YUV2RGB_NV21,
    }[fmt]
    rgb = cv2.cvtColor(np.ascontiguousarray(arr), code)
    return np.ascontiguousarray(rgb[:, :width])


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return ``image`` at ``size`` (w, h): crop the odd pixel rounding added, else resize."""
    tw, th = size
    h, w = image.shape[:2]
    if (w, h) == (tw, th):
        return image
    if 0 <= w - tw <= 1 and 0 <= h - th <= 1:
        return image[:th, :tw]
    try:
        import cv2
    except ImportError:
        from PIL import Image

        resized = Image.fromarray(np.ascontiguousarray(image)).resize(
            (tw, th), Image.Resampling.BILINEAR
        )
        return np.asarray(resized)
    interp = cv2.INTER_AREA if w >= tw and h >= th else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, (tw, th), interpolation=interp))
