"""A stand-in for ``picamera2`` at its import boundary (tests only; no libcamera, no camera).

It imitates the calls edged makes, with the real signatures and the real checks, and it is as
strict as the real stack where that has bitten (sources read for each rule):

* ``create_preview_configuration`` / ``create_video_configuration``: dicts; sizes rounded down
  to even (``align_stream(optimal=False)``); a **raw stream** (the sensor's Bayer format, at the
  main size) added by default as picamera2 does for Raspberry Pi cameras (``raw={}``); the
  default ``NoiseReductionMode`` / ``FrameDurationLimits`` controls when advertised.
* ``configure`` = picamera2's ``check_camera_config`` (even sizes, lores no larger than main,
  lores must be YUV on VC4), then every control checked against the camera's advertised ones
  (picamera2/controls.py: ``RuntimeError("Control X is not advertised by libcamera")``;
  ``FrameRate`` is the virtual name of ``FrameDurationLimits``), then libcamera's ``validate``,
  whose adjustments are written back into the configuration (picamera2
  ``_update_camera_config``: ``camera_configuration()`` shows what was granted):

  - **formats**: an ISP output that does not support the requested format is given NV12
    (libcamera rpi ``pipeline_base.cpp``: "If we cannot find a native format, use a default
    one"); the raw stream gets the sensor format and size.
  - **sizes, Pi 4 (VC4)**: every ISP output clamped to 64..16384 in each dimension (the
    bcm2835-isp driver's ``MIN_DIM``/``MAX_DIM`` in ``try_fmt``), then the smaller output
    bounded by the larger (``vc4.cpp`` ``platformValidate``); rows padded to 64 bytes for
    YUV420 (``bcm2835-isp-fmts.h`` ``bytesperline_align``), 32 for RGB.
  - **sizes, Pi 5 (PiSP)**: an output may not downscale the sensor image by more than 64x where
    the back end branch has a downscaler (lores, Output1) or 16x where it has only the resampler
    (main, Output0): smaller outputs are **enlarged**, keeping their aspect ratio, to
    ``ceil(raw/64)`` (even) or ``(raw - 1 + 15) // 16 + 1`` (even), raw being the sensor size
    bounded to the output's aspect ratio (``pisp.cpp`` ``platformValidate``; libpisp BCM2712
    variants); then bounded by main; rows padded to 64 bytes (optimal stride).
* ``capture_array(name, wait)``: ``wait`` a number of seconds raises ``TimeoutError`` when no
  frame comes in time -- from picamera2 0.3.20 on; before that (``dispatch_functions`` called
  ``job.get_result()`` without the timeout) it blocks until a frame comes, however long
  (:attr:`World.version`, :attr:`World.stall`).

Arrays are what picamera2 hands out: YUV420/YVU420/NV12/NV21 as ``(h*3//2, stride)`` with
stride padding on the right (BT.601 limited range), RGB888 as ``(h, w, 3)`` in [B, G, R] byte
order, BGR888 in [R, G, B], XBGR8888/XRGB8888 as ``(h, w, 4)``.

Tests steer it through :data:`WORLD` (cameras present, busy, failing or stalled captures, the
scene, the sensor size, the advertised controls, the picamera2 version) and
``Picamera2.platform`` (``Platform.VC4`` = Pi 4, ``Platform.PISP`` = Pi 5).
"""

from __future__ import annotations

import enum
import threading
import time
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
SENSOR_FORMAT = "SBGGR10_CSI2P"
# What each ISP output can produce. VC4: the low-resolution output (lores) is YUV only.
OUTPUT_FORMATS = {
    ("vc4", "main"): {"YUV420", "YVU420", "NV12", "NV21", "YUYV", "UYVY", *RGB_FORMATS},
    ("vc4", "lores"): {"YUV420", "YVU420", "NV12", "NV21"},
    ("pisp", "main"): {"YUV420", "YVU420", "NV12", "NV21", "YUYV", "UYVY", *RGB_FORMATS},
    ("pisp", "lores"): {"YUV420", "YVU420", "NV12", "NV21", "YUYV", "UYVY", *RGB_FORMATS},
}
VC4_MIN_DIM, VC4_MAX_DIM = 64, 16384
# FrameRate is picamera2's virtual control: it sets FrameDurationLimits (picamera2/controls.py).
VIRTUAL_CONTROLS = {"FrameRate": "FrameDurationLimits"}


def _default_controls() -> dict[str, tuple[Any, Any, Any]]:
    return {
        "FrameDurationLimits": (33333, 120000, None),
        "ExposureTime": (26, 112015443, None),
        "AnalogueGain": (1.12, 16.0, None),
        "AeEnable": (False, True, None),
        "NoiseReductionMode": (0, 4, 0),
        "ScalerCrop": ((0, 0, 64, 64), (0, 0, 4608, 2592), None),
    }


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
    sensor_size: tuple[int, int] = (2304, 1296)  # the sensor mode's output (imx708, binned)
    controls: dict[str, tuple[Any, Any, Any]] = field(default_factory=_default_controls)
    version: tuple[int, int, int] = (0, 3, 36)  # picamera2's; < 0.3.20: wait=<s> never times out
    stall: bool = False  # the camera stopped delivering frames (capture_array waits)
    unstall: threading.Event = field(default_factory=threading.Event)  # ends every stalled wait
    unsupported: set[str] = field(default_factory=set)  # formats this ISP lacks (-> NV12)
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
    WORLD.unstall.set()  # let any capture a previous test left waiting finish
    WORLD = World()
    Picamera2.platform = Platform.VC4


def _platform() -> str:
    # A picamera2 too old to have Picamera2.platform (None): the tests mean a Pi 5 then.
    return "vc4" if Picamera2.platform == Platform.VC4 else "pisp"


def _even_up(n: int) -> int:
    return (n + 1) & ~1


def bounded_to_aspect_ratio(size: tuple[int, int], ratio: tuple[int, int]) -> tuple[int, int]:
    """libcamera ``Size::boundedToAspectRatio``: the largest size within ``size`` with the
    aspect ratio of ``ratio``."""
    w, h = size
    rw, rh = ratio
    if w * rh > h * rw:  # too wide
        return (h * rw // rh, h)
    return (w, w * rh // rw)


def pisp_min_size(
    sensor: tuple[int, int], size: tuple[int, int], downscaler: bool
) -> tuple[int, int]:
    raw_w, raw_h = bounded_to_aspect_ratio(sensor, size)
    if downscaler:  # up to 64x
        return (_even_up(-(-raw_w // 64)), _even_up(-(-raw_h // 64)))
    # resampler only: (output_dim - 1) * 16 <= input_dim - 1
    return (_even_up((raw_w - 1 + 15) // 16 + 1), _even_up((raw_h - 1 + 15) // 16 + 1))


def pisp_adjust(size: tuple[int, int], minimum: tuple[int, int]) -> tuple[int, int]:
    """Enlarge ``size`` to ``minimum`` keeping its aspect ratio (pisp.cpp platformValidate)."""
    w, h = size
    if w < minimum[0]:
        h = _even_up(h * minimum[0] // w)
        w = minimum[0]
    if h < minimum[1]:
        w = _even_up(w * minimum[1] // h)
        h = minimum[1]
    return (w, h)


def rgb_to_yuv420(rgb: np.ndarray, stride: int, pad: int = 0) -> np.ndarray:
    """RGB (h, w, 3) -> picamera2's YUV420 array (h*3//2, stride), BT.601 limited range."""
    return rgb_to_yuv(rgb, stride, "YUV420", pad)


def rgb_to_yuv(rgb: np.ndarray, stride: int, fmt: str, pad: int = 0) -> np.ndarray:
    """RGB (h, w, 3) -> a 4:2:0 array (h*3//2, stride) as picamera2 gives it: planar
    (YUV420: U then V; YVU420: V then U, each plane rows of stride/2) or semi-planar (NV12:
    interleaved U,V rows of stride; NV21: V,U), BT.601 limited range."""
    h, w = rgb.shape[:2]
    f = rgb.astype(np.float64)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b

    def sub(c: np.ndarray) -> np.ndarray:
        out: np.ndarray = c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        return out

    def q(c: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.clip(np.rint(c), 0, 255).astype(np.uint8)
        return out

    y_plane = np.full((h, stride), pad, np.uint8)
    y_plane[:, :w] = q(y)
    if fmt in ("YUV420", "YVU420"):
        first, second = (u, v) if fmt == "YUV420" else (v, u)
        p1 = np.full((h // 2, stride // 2), pad, np.uint8)
        p1[:, : w // 2] = q(sub(first))
        p2 = np.full((h // 2, stride // 2), pad, np.uint8)
        p2[:, : w // 2] = q(sub(second))
        chroma = np.concatenate([p1.ravel(), p2.ravel()])
    elif fmt in ("NV12", "NV21"):
        first, second = (u, v) if fmt == "NV12" else (v, u)
        uv = np.full((h // 2, stride), pad, np.uint8)
        uv[:, 0:w:2] = q(sub(first))
        uv[:, 1:w:2] = q(sub(second))
        chroma = uv.ravel()
    else:
        raise ValueError(fmt)
    flat = np.concatenate([y_plane.ravel(), chroma])
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
        self.controls_set: dict[str, Any] = {}
        self.created: dict[str, Any] | None = None  # kwargs of the last create_*_configuration
        camera_num = self.global_camera_info()[camera_num]["Num"]  # IndexError, as the real one
        if WORLD.busy:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.camera_idx = camera_num
        self.is_open = True
        WORLD.instances.append(self)

    @property
    def camera_controls(self) -> dict[str, tuple[Any, Any, Any]]:
        """Advertised controls: name -> (min, max, default), as picamera2's property."""
        return dict(WORLD.controls)

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
        raw: dict[str, Any] | None,
        main_default: dict[str, Any],
        controls: dict[str, Any] | None,
        default_controls: dict[str, Any],
        **rest: Any,
    ) -> dict[str, Any]:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        self.created = {
            "use_case": use_case,
            "main": main,
            "lores": lores,
            "raw": raw,
            "controls": dict(controls or {}),
            **rest,
        }
        m = self._stream(main_default, main)
        assert m is not None
        lo = self._stream({"format": "YUV420", "size": m["size"], "preserve_ar": False}, lores)
        # Raspberry Pi cameras get a raw stream unless the caller passes raw=None.
        ra = None if raw is None else {"format": SENSOR_FORMAT, "size": m["size"], **raw}
        # picamera2 adds its defaults when the camera advertises them; the caller's win.
        ctrls = {k: v for k, v in default_controls.items() if k in WORLD.controls}
        ctrls |= dict(controls or {})
        return {
            "use_case": use_case,
            "main": m,
            "lores": lo,
            "raw": ra,
            "controls": ctrls,
            **rest,
        }

    def create_preview_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = {},  # noqa: B006 - picamera2's own default
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
            raw,
            {"format": "XBGR8888", "size": (640, 480), "preserve_ar": True},
            controls,
            {"NoiseReductionMode": 1, "FrameDurationLimits": (100, 83333)},
            transform=transform or libcamera.Transform(),
            colour_space=colour_space or libcamera.ColorSpace.Sycc(),
            buffer_count=buffer_count,
            display=display,
            encode=encode,
            queue=queue,
        )

    def create_video_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = {},  # noqa: B006 - picamera2's own default
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
            raw,
            {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True},
            controls,
            {"NoiseReductionMode": 2, "FrameDurationLimits": (33333, 33333)},
            transform=transform or libcamera.Transform(),
            colour_space=colour_space or libcamera.ColorSpace.Rec709(),
            buffer_count=buffer_count,
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
        # picamera2's check_camera_config
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
        lores = config.get("lores")
        if lores is not None:
            mw, mh = config["main"]["size"]
            lw, lh = lores["size"]
            if lw > mw or lh > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if Picamera2.platform == Platform.VC4 and lores["format"] not in YUV_FORMATS:
                raise RuntimeError("lores stream must be YUV")
        raw = config.get("raw")
        if raw is not None and not str(raw.get("format", "")).startswith(("SBGGR", "SRGGB")):
            raise RuntimeError(f"Unrecognised raw format {raw.get('format')}")
        # picamera2's Controls(): every control must be advertised by the camera
        for name in config.get("controls") or {}:
            real = VIRTUAL_CONTROLS.get(name, name)
            if real not in WORLD.controls:
                raise RuntimeError(f"Control {real} is not advertised by libcamera")
        self._validate(config)
        self.camera_config = config
        self.controls_set = dict(config.get("controls") or {})
        self.calls.append("configure")

    def _validate(self, config: dict[str, Any]) -> None:
        """libcamera's CameraConfiguration::validate(), its adjustments written back."""
        platform = _platform()
        main, lores, raw = config["main"], config.get("lores"), config.get("raw")
        for name, stream in (("main", main), ("lores", lores)):
            supported = OUTPUT_FORMATS[(platform, name)] - WORLD.unsupported
            if stream is not None and stream["format"] not in supported:
                stream["format"] = "NV12"
        if platform == "vc4":
            for stream in (main, lores):
                if stream is not None:
                    w, h = stream["size"]
                    stream["size"] = (
                        min(max(w, VC4_MIN_DIM), VC4_MAX_DIM),
                        min(max(h, VC4_MIN_DIM), VC4_MAX_DIM),
                    )
        else:
            sensor = WORLD.sensor_size
            main["size"] = pisp_adjust(main["size"], pisp_min_size(sensor, main["size"], False))
            if lores is not None:
                lores["size"] = pisp_adjust(
                    lores["size"], pisp_min_size(sensor, lores["size"], True)
                )
        if lores is not None:
            lores["size"] = (
                min(lores["size"][0], main["size"][0]),
                min(lores["size"][1], main["size"][1]),
            )
        for stream in (main, lores):
            if stream is not None:
                stream["stride"] = self._stride(stream["format"], stream["size"][0])
        if raw is not None:
            raw["format"] = SENSOR_FORMAT
            raw["size"] = WORLD.sensor_size
            raw["stride"] = -(-WORLD.sensor_size[0] * 5 // 4 // 32) * 32

    @staticmethod
    def _stride(fmt: str, w: int) -> int:
        a = WORLD.stride_align
        bpp = {"RGB888": 3, "BGR888": 3, "XBGR8888": 4, "XRGB8888": 4}.get(fmt, 1)
        if fmt in ("YUYV", "UYVY"):
            bpp = 2
        return -(-w * bpp // a) * a

    def camera_configuration(self) -> dict[str, Any] | None:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        assert self.camera_config is not None
        stream: dict[str, Any] = self.camera_config[name]
        return stream

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
        if fmt in ("YUV420", "YVU420", "NV12", "NV21"):
            return rgb_to_yuv(rgb, stream["stride"], fmt, WORLD.pad_value)
        if fmt == "RGB888":
            return np.ascontiguousarray(rgb[..., ::-1])  # [B, G, R] in memory
        if fmt == "BGR888":
            return rgb.copy()
        if fmt in ("XBGR8888", "XRGB8888"):
            order = rgb if fmt == "XBGR8888" else rgb[..., ::-1]
            return np.concatenate([order, np.full((h, w, 1), 255, np.uint8)], axis=2)
        raise RuntimeError("Format " + fmt + " not supported")

    def _wait_for_frame(self, wait: Any) -> None:
        """A stalled camera: what capture_array(wait=...) does while no frame comes."""
        if not WORLD.stall:
            return
        timeout = wait if isinstance(wait, (int, float)) and not isinstance(wait, bool) else None
        if WORLD.version < (0, 3, 20):
            timeout = None  # dispatch_functions ignored the number: job.get_result()
        if timeout is None:
            WORLD.unstall.wait()  # as long as it takes (a test ends it through reset())
            if WORLD.stall:
                raise RuntimeError("stalled capture abandoned by the test")
            return
        deadline = time.monotonic() + timeout
        if not WORLD.unstall.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError()

    def capture_array(
        self, name: str = "main", wait: Any = None, signal_function: Any = None
    ) -> np.ndarray:
        self.capture_waits.append(wait)
        if not self.started:
            raise RuntimeError("Camera is not running")
        if WORLD.fail_capture:
            raise TimeoutError()
        self._wait_for_frame(wait)
        self.calls.append(f"capture_array:{name}")
        return self._make_array(name)

    def capture_request(
        self, wait: Any = None, signal_function: Any = None, flush: Any = None
    ) -> _Request:
        if not self.started:
            raise RuntimeError("Camera is not running")
        if WORLD.fail_capture:
            raise TimeoutError()
        self._wait_for_frame(wait)
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
