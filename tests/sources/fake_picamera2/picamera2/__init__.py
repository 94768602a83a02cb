"""A stand-in for ``picamera2`` at its import boundary (tests only; no libcamera, no camera).

It imitates the calls edged makes, with the real signatures and the real checks that matter
(picamera2/picamera2.py): ``Picamera2.global_camera_info()``, ``Picamera2(camera_num)``
(IndexError for a missing camera, RuntimeError when it cannot be acquired),
``create_preview_configuration`` / ``create_video_configuration`` (dicts; sizes rounded
down to even), ``configure`` (even sizes; lores no larger than main; lores must be YUV on
VC4), ``camera_configuration``, ``start``, ``capture_array`` / ``capture_request`` +
``make_array`` + ``release``, ``cancel_all_and_flush``, ``stop``, ``close``.

Arrays are what picamera2 hands out: YUV420 as ``(h*3//2, stride)`` with stride padding on
the right (BT.601 limited range), RGB888 as ``(h, w, 3)`` in [B, G, R] byte order.

Tests steer it through :data:`WORLD` (cameras present, busy, failing captures, the scene)
and ``Picamera2.platform`` (``Platform.VC4`` = Pi 4, ``Platform.PISP`` = Pi 5).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libcamera
import numpy as np


class Platform(enum.Enum):
    VC4 = 0
    PISP = 1


YUV_FORMATS = {"YUV420", "YVU420", "NV12", "NV21", "YUYV", "UYVY"}
RGB_FORMATS = {"RGB888", "BGR888", "XBGR8888", "XRGB8888"}


def _default_cameras() -> list[dict[str, Any]]:
    return [{"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/imx708@1a", "Num": 0}]


@dataclass
class World:
    cameras: list[dict[str, Any]] = field(default_factory=_default_cameras)
    busy: bool = False  # Picamera2() fails as when another process holds the camera
    fail_configure: bool = False
    fail_capture: bool = False  # capture_array raises as on a timed-out / dead camera
    scene: tuple[int, int, int] | Callable[[int, int], np.ndarray] = (255, 0, 0)
    stride_align: int = 64  # libcamera pads rows; the fake pads YUV rows to this
    pad_value: int = 7
    instances: list[Picamera2] = field(default_factory=list)

    def scene_rgb(self, w: int, h: int) -> np.ndarray:
        if callable(self.scene):
            img = np.asarray(self.scene(w, h), dtype=np.uint8)
            assert img.shape == (h, w, 3), img.shape
            return img
        return np.broadcast_to(np.array(self.scene, dtype=np.uint8), (h, w, 3)).copy()


WORLD = World()


def reset() -> None:
    global WORLD
    WORLD = World()
    Picamera2.platform = Platform.VC4


def rgb_to_yuv420(rgb: np.ndarray, stride: int, pad: int = 0) -> np.ndarray:
    """RGB (h, w, 3) -> picamera2's YUV420 array (h*3//2, stride), BT.601 limited range."""
    h, w = rgb.shape[:2]
    f = rgb.astype(np.float64)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    def q(c: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(c), 0, 255).astype(np.uint8)

    y_plane = np.full((h, stride), pad, np.uint8)
    y_plane[:, :w] = q(y)
    u_plane = np.full((h // 2, stride // 2), pad, np.uint8)
    u_plane[:, : w // 2] = q(sub(u))
    v_plane = np.full((h // 2, stride // 2), pad, np.uint8)
    v_plane[:, : w // 2] = q(sub(v))
    flat = np.concatenate([y_plane.ravel(), u_plane.ravel(), v_plane.ravel()])
    return flat.reshape(h * 3 // 2, stride)


class _Request:
    def __init__(self, cam: Picamera2) -> None:
        self._cam = cam
        self.released = False

    def make_array(self, name: str) -> np.ndarray:
        return self._cam._make_array(name)

    def get_metadata(self) -> dict[str, Any]:
        return {"FrameDuration": 33333}

    def release(self) -> None:
        self.released = True


class Picamera2:
    platform = Platform.VC4

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(c) for c in WORLD.cameras]

    def __init__(
        self,
        camera_num: int = 0,
        verbose_console: int | None = None,
        tuning: Any = None,
        allocator: Any = None,
    ) -> None:
        self.is_open = False
        self.started = False
        self.camera_config: dict[str, Any] | None = None
        self.calls: list[str] = []
        self.capture_waits: list[Any] = []
        self.created: dict[str, Any] | None = None  # kwargs of the last create_*_configuration
        camera_num = self.global_camera_info()[camera_num]["Num"]  # IndexError, as the real one
        if WORLD.busy:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.camera_idx = camera_num
        self.is_open = True
        WORLD.instances.append(self)

    # -- configuration -------------------------------------------------------------------
    @staticmethod
    def _stream(defaults: dict[str, Any], updates: dict[str, Any] | None) -> dict[str, Any] | None:
        if updates is None:
            return None
        out = dict(defaults)
        for key, value in updates.items():
            if key not in ("format", "size", "stride", "preserve_ar"):
                raise ValueError(f"Bad key {key!r}")
            out[key] = value
        w, h = out["size"]
        out["size"] = (w - w % 2, h - h % 2)  # align_stream(optimal=False)
        return out

    def _create(
        self,
        use_case: str,
        main: dict[str, Any],
        lores: dict[str, Any] | None,
        main_default: dict[str, Any],
        **rest: Any,
    ) -> dict[str, Any]:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        self.created = {"use_case": use_case, "main": main, "lores": lores, **rest}
        m = self._stream(main_default, main)
        assert m is not None
        lo = self._stream({"format": "YUV420", "size": m["size"], "preserve_ar": False}, lores)
        return {"use_case": use_case, "main": m, "lores": lo, "raw": None, **rest}

    def create_preview_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None,
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 4,
        controls: dict[str, Any] | None = None,
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: dict[str, Any] | None = None,
        use_case: str = "preview",
    ) -> dict[str, Any]:
        return self._create(
            use_case,
            main or {},
            lores,
            {"format": "XBGR8888", "size": (640, 480), "preserve_ar": True},
            transform=transform or libcamera.Transform(),
            colour_space=colour_space or libcamera.ColorSpace.Sycc(),
            buffer_count=buffer_count,
            controls=dict(controls or {}),
            display=display,
            encode=encode,
            queue=queue,
        )

    def create_video_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None,
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: dict[str, Any] | None = None,
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: dict[str, Any] | None = None,
        use_case: str = "video",
    ) -> dict[str, Any]:
        return self._create(
            use_case,
            main or {},
            lores,
            {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True},
            transform=transform or libcamera.Transform(),
            colour_space=colour_space or libcamera.ColorSpace.Rec709(),
            buffer_count=buffer_count,
            controls=dict(controls or {}),
            display=display,
            encode=encode,
            queue=queue,
        )

    def configure(self, camera_config: dict[str, Any] | None = None) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if camera_config is None:
            camera_config = self.create_preview_configuration()
        if WORLD.fail_configure:
            raise RuntimeError(f"Invalid camera configuration: {camera_config}")
        config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in camera_config.items()}
        for name in ("main", "lores"):
            stream = config.get(name)
            if stream is None:
                continue
            fmt = stream["format"]
            if fmt not in YUV_FORMATS | RGB_FORMATS:
                raise RuntimeError(f"Bad format {fmt} in stream {name}")
            w, h = stream["size"]
            if w % 2 or h % 2:
                raise RuntimeError("width and height should be even")
            stream["stride"] = self._stride(fmt, w)
        lores = config.get("lores")
        if lores is not None:
            mw, mh = config["main"]["size"]
            lw, lh = lores["size"]
            if lw > mw or lh > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if Picamera2.platform == Platform.VC4 and lores["format"] not in YUV_FORMATS:
                raise RuntimeError("lores stream must be YUV")
        self.camera_config = config
        self.calls.append("configure")

    @staticmethod
    def _stride(fmt: str, w: int) -> int:
        a = WORLD.stride_align
        bpp = {"RGB888": 3, "BGR888": 3, "XBGR8888": 4, "XRGB8888": 4}.get(fmt, 1)
        return -(-w * bpp // a) * a

    def camera_configuration(self) -> dict[str, Any] | None:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        assert self.camera_config is not None
        return self.camera_config[name]

    # -- running -------------------------------------------------------------------------
    def start(self, config: Any = None, show_preview: bool | None = False) -> None:
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True
        self.calls.append("start")

    def _make_array(self, name: str) -> np.ndarray:
        assert self.camera_config is not None
        stream = self.camera_config.get(name)
        if stream is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        w, h = stream["size"]
        rgb = WORLD.scene_rgb(w, h)
        fmt = stream["format"]
        if fmt in ("YUV420",):
            return rgb_to_yuv420(rgb, stream["stride"], WORLD.pad_value)
        if fmt == "RGB888":
            return np.ascontiguousarray(rgb[..., ::-1])  # [B, G, R] in memory
        if fmt == "BGR888":
            return rgb.copy()
        if fmt in ("XBGR8888", "XRGB8888"):
            order = rgb if fmt == "XBGR8888" else rgb[..., ::-1]
            return np.concatenate([order, np.full((h, w, 1), 255, np.uint8)], axis=2)
        raise RuntimeError("Format " + fmt + " not supported")

    def capture_array(
        self, name: str = "main", wait: Any = None, signal_function: Any = None
    ) -> np.ndarray:
        self.capture_waits.append(wait)
        if not self.started:
            raise RuntimeError("Camera is not running")
        if WORLD.fail_capture:
            raise TimeoutError()
        self.calls.append(f"capture_array:{name}")
        return self._make_array(name)

    def capture_request(
        self, wait: Any = None, signal_function: Any = None, flush: Any = None
    ) -> _Request:
        if not self.started:
            raise RuntimeError("Camera is not running")
        if WORLD.fail_capture:
            raise TimeoutError()
        return _Request(self)

    def cancel_all_and_flush(self) -> None:
        self.calls.append("cancel_all_and_flush")

    def stop(self) -> None:
        self.started = False
        self.calls.append("stop")

    def close(self) -> None:
        if self.is_open:
            self.stop()
        self.is_open = False
        self.calls.append("close")
