"""Frames from a Raspberry Pi ribbon camera through picamera2 (libcamera).

The ISP scales each frame into the *lores* stream at the model's input size, so no
CPU resize is needed. Formats (Picamera2 manual, appendix A):

* ``YUV420``: ``capture_array`` gives shape ``(h*3//2, stride)``: h rows of Y, then
  the U and V planes (two half-width rows per array row); any stride padding is
  left on the right. The only lores format the VC4 ISP (Pi 4 and earlier) offers.
* ``RGB888``: shape ``(h, w, 3)`` with pixels in **[B, G, R]** byte order (libcamera
  / DRM naming). Available for lores on the Pi 5 (PiSP).

What the camera stack grants can differ from what was asked, so the source reads the
configuration back after ``configure`` and works from that (sources: libcamera's Raspberry Pi
pipeline handlers and the bcm2835-isp driver; see tests/sources/fake_picamera2):

* **size**: the Pi 4 ISP clamps every output to at least 64x64 (a 32x32 model's lores stream
  comes back 64x64); the Pi 5 enlarges outputs that would downscale the sensor image more than
  its scalers allow, keeping the aspect ratio. The frame is resized to the model input.
* **format**: an output that cannot produce the requested format is given NV12; YUV420,
  YVU420, NV12, NV21, RGB888, BGR888, XBGR8888 and XRGB8888 are all converted.
* **controls**: only those the camera advertises are set (picamera2 refuses the others:
  "Control ... is not advertised by libcamera"); ``fps`` becomes ``FrameRate``.
* **timeouts**: ``capture_array(wait=seconds)`` times out only from picamera2 0.3.20 on; before
  that it waits forever for a camera that stopped. Each capture runs in a helper thread that
  edged abandons after ``read_timeout_s`` (plus a grace), so a read never hangs.

``picamera2`` is imported only inside :meth:`Picamera2FrameSource.open`. The pixel format
conversions and the final resize are in :mod:`edged.sources.pixels`.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edged.config import Picamera2Source
from edged.errors import FrameRejected, SourceError
from edged.sources.base import Frame, FrameSource, one_line, transform
from edged.sources.pixels import RGB_FORMATS, YUV_FORMATS, fit, yuv420_to_rgb

log = logging.getLogger("edged.sources")

PICAMERA2_MISSING = (
    "picamera2 is not installed: on Raspberry Pi OS install python3-picamera2 "
    "and create the venv with --system-site-packages"
)
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
BUFFER_COUNT = 4  # picamera2's preview default: enough to keep the ISP busy, little latency
# Our own capture deadline is picamera2's wait plus this: picamera2 >= 0.3.20 reports its own
# timeout first; an older one (or a wedged driver) is abandoned.
READ_GRACE_S = 1.0
FRAME_RATE_CONTROLS = ("FrameRate", "FrameDurationLimits")  # FrameRate sets FrameDurationLimits
_PISP_MODELS = re.compile(r"Raspberry Pi (5|500)\b|Compute Module 5\b")


def even_up(n: int) -> int:
    return n + (n % 2)


def detect_platform(picamera2_cls: Any = None, model_file: Path | None = None) -> str:
    """``"pisp"`` (Pi 5 family) or ``"vc4"`` (Pi 4 and earlier).

    picamera2 exposes its own probe as the class attribute ``Picamera2.platform``
    (``picamera2.Platform.PISP`` / ``.VC4``, from the ``rp1-cfe`` V4L2 card on the Pi 5);
    older picamera2 releases lack it, so fall back to ``/proc/device-tree/model``.
    """
    name = getattr(getattr(picamera2_cls, "platform", None), "name", None)
    if isinstance(name, str):
        return "pisp" if name.upper() == "PISP" else "vc4"
    try:
        model = (model_file or DEVICE_TREE_MODEL).read_bytes().decode("ascii", "replace")
    except OSError:
        return "vc4"
    return "pisp" if _PISP_MODELS.search(model) else "vc4"


class Picamera2FrameSource(FrameSource):
    """Capture the lores stream at ``target_size`` (the model input, (width, height)).

    Without ``target_size`` the main stream is read at ``cfg.main_size`` instead.
    The lores stream shows the full field of view scaled (not letterboxed) to that size.
    ``roi`` and ``rotate`` then apply to that frame, so an roi is in lores pixels; for a
    90/270 rotation without an roi the lores stream is configured transposed so the
    rotated frame is ``target_size``.
    """

    def __init__(self, cfg: Picamera2Source, target_size: tuple[int, int] | None = None) -> None:
        self.cfg = cfg
        self.target_size = target_size
        self.skipped = 0
        self.platform = ""
        self.stream = "lores" if target_size is not None else "main"
        self.format = ""
        self.stream_size: tuple[int, int] = (0, 0)  # as configured by libcamera
        self._want: tuple[int, int] | None = None  # size before rotation
        self._cam: Any = None
        self._lock = threading.Lock()
        self._reading = False
        self._orphan: Any = None
        self._stuck: threading.Thread | None = None  # an abandoned capture, still blocked

    def _resolve_format(self) -> str:
        fmt = self.cfg.lores_format
        if fmt == "auto":
            if self.stream == "main":
                return "RGB888"
            return "RGB888" if self.platform == "pisp" else "YUV420"
        if fmt == "RGB888" and self.stream == "lores" and self.platform == "vc4":
            raise SourceError(
                "picamera2: lores_format RGB888 needs a Pi 5; the VC4 ISP (Pi 4 and "
                "earlier) only gives a YUV420 lores stream: use lores_format = 'auto'"
            )
        return fmt

    def _stream_sizes(self) -> tuple[tuple[int, int], tuple[int, int] | None]:
        mw, mh = self.cfg.main_size
        main = (mw - mw % 2, mh - mh % 2)
        if self.target_size is None:
            self._want = None
            return main, None
        tw, th = self.target_size
        if self.cfg.rotate in (90, 270) and self.cfg.roi is None:
            tw, th = th, tw
        self._want = (tw, th)
        # Sizes must be even; lores may not exceed main (picamera2 checks this).
        lores = (min(even_up(tw), main[0]), min(even_up(th), main[1]))
        return main, lores

    def open(self) -> None:
        self.close()
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(PICAMERA2_MISSING) from None
        try:
            import libcamera
        except ImportError:  # pragma: no cover - picamera2 cannot import without it
            libcamera = None
        self.platform = detect_platform(Picamera2)
        self.format = asked = self._resolve_format()
        main, lores = self._stream_sizes()
        requested = lores if lores is not None else main
        n = self.cfg.camera
        try:
            cameras = Picamera2.global_camera_info()
        except Exception as err:
            raise SourceError(f"picamera2: cannot list cameras: {err}") from None
        if n >= len(cameras):
            raise SourceError(
                f"picamera2: no camera {n} ({len(cameras)} found; is the ribbon cable seated "
                "and the camera enabled?)"
            )
        try:
            cam = Picamera2(n)
        except Exception as err:
            raise SourceError(
                f"picamera2: cannot open camera {n} (in use by another process?): {err}"
            ) from None
        try:
            kwargs: dict[str, Any] = {"buffer_count": BUFFER_COUNT}
            if self.cfg.fps is not None:
                if _advertises(cam, FRAME_RATE_CONTROLS):
                    kwargs["controls"] = {"FrameRate": float(self.cfg.fps)}
                else:
                    log.warning(
                        "picamera2: camera %d does not advertise a frame rate control; "
                        "fps = %g is not applied",
                        n,
                        self.cfg.fps,
                    )
            if self.format == "YUV420" and libcamera is not None:
                # Our YUV -> RGB maths is BT.601 limited range: ask for exactly that.
                kwargs["colour_space"] = libcamera.ColorSpace.Smpte170m()
            if lores is None:
                config = cam.create_preview_configuration(
                    main={"size": main, "format": self.format}, **kwargs
                )
            else:
                # The main stream is unused: YUV420 keeps its buffers small (CMA memory).
                config = cam.create_preview_configuration(
                    main={"size": main, "format": "YUV420"},
                    lores={"size": lores, "format": self.format},
                    **kwargs,
                )
            cam.configure(config)
            self._granted(cam.camera_configuration()[self.stream])
            cam.start()
        except SourceError:
            _shutdown(cam)
            raise
        except Exception as err:
            _shutdown(cam)
            raise SourceError(f"picamera2: cannot start camera {n}: {err}") from None
        with self._lock:
            self._cam = cam
        log.info(
            "picamera2 source: camera %d (%s) on %s, %s %s %dx%d%s",
            n,
            cameras[n].get("Model", "?"),
            self.platform,
            self.stream,
            self.format,
            *self.stream_size,
            (
                f" (asked {requested[0]}x{requested[1]} {asked}; frames are resized)"
                if (requested, asked) != (self.stream_size, self.format)
                else ""
            ),
        )

    def _granted(self, actual: Any) -> None:
        """Take the stream as libcamera granted it (size and format may differ from the
        request); refuse one that cannot be converted, with the reason."""
        try:
            size = (int(actual["size"][0]), int(actual["size"][1]))
            fmt = str(actual["format"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise SourceError(f"picamera2: unreadable stream configuration {actual!r}") from None
        if not (0 < size[0] <= 16384 and 0 < size[1] <= 16384):
            raise SourceError(f"picamera2: libcamera granted an unusable size {size}")
        if fmt not in YUV_FORMATS + RGB_FORMATS:
            raise SourceError(
                f"picamera2: libcamera gave the {self.stream} stream format {fmt}, which edged "
                f"cannot convert (it handles {', '.join(YUV_FORMATS + RGB_FORMATS)})"
            )
        if fmt != self.format:
            log.warning(
                "picamera2: asked for %s on the %s stream, libcamera gave %s",
                self.format,
                self.stream,
                fmt,
            )
        self.stream_size = size
        self.format = fmt

    def close(self) -> None:
        with self._lock:
            cam, self._cam = self._cam, None
            stuck = self._stuck is not None and self._stuck.is_alive()
            self._stuck = None
            if cam is not None and self._reading:
                self._orphan = cam  # shut down by the thread blocked in read()
                cam = None
        if cam is None:
            return
        if stuck:
            # A capture is still blocked inside picamera2: stopping may wait behind it, so
            # that happens off this thread; close() returns at once.
            threading.Thread(
                target=_shutdown, args=(cam,), name="picamera2-shutdown", daemon=True
            ).start()
        else:
            _shutdown(cam)

    def read(self) -> Frame | None:
        with self._lock:
            cam = self._cam
            if cam is None:
                raise SourceError("picamera2 source is not open")
            if self._stuck is not None and self._stuck.is_alive():
                raise SourceError(
                    "picamera2: capture failed: an earlier capture is still blocked in "
                    "picamera2 (the camera stopped delivering frames); reopen the camera"
                )
            self._reading = True
        timeout = self.cfg.read_timeout_s
        box: dict[str, Any] = {}

        def capture() -> None:
            try:
                box["raw"] = cam.capture_array(self.stream, wait=timeout)
            except BaseException as err:
                box["err"] = err

        worker = threading.Thread(target=capture, name="picamera2-capture", daemon=True)
        try:
            worker.start()
            worker.join(timeout + READ_GRACE_S)
            if worker.is_alive():
                # An old picamera2 (< 0.3.20) ignores the wait's number; a wedged driver
                # never answers. Abandon the thread; close() shuts the camera down.
                with self._lock:
                    self._stuck = worker
                raise SourceError(
                    f"picamera2: capture failed: no frame within {timeout:g} s "
                    "(picamera2 did not return; the capture was abandoned)"
                )
            err = box.get("err")
            if isinstance(err, TimeoutError):
                raise SourceError(
                    f"picamera2: capture failed: no frame within {timeout:g} s"
                ) from None
            if err is not None:
                why = str(err) or type(err).__name__
                raise SourceError(f"picamera2: capture failed: {why}") from None
        finally:
            with self._lock:
                self._reading = False
                orphan, self._orphan = self._orphan, None
            if orphan is not None:
                _shutdown(orphan)
        try:
            image = self._to_rgb(np.asarray(box["raw"]))
        except SourceError:
            raise
        except Exception as bad:  # a frame of another dtype/shape: skipped, not a fault
            raise FrameRejected(f"picamera2: unusable frame: {one_line(bad)}") from None
        return Frame(image=image)

    def _to_rgb(self, raw: np.ndarray) -> np.ndarray:
        w, h = self.stream_size
        if self.format in YUV_FORMATS:
            if raw.ndim != 2 or raw.shape[0] != h * 3 // 2:
                raise SourceError(
                    f"picamera2: {self.format} array shape {raw.shape} does not match the "
                    f"configured {w}x{h}"
                )
            rgb = yuv420_to_rgb(raw, w, fmt=self.format)
        else:
            if raw.ndim != 3 or raw.shape[2] < 3 or raw.shape[0] != h or raw.shape[1] < w:
                raise SourceError(
                    f"picamera2: {self.format} array shape {raw.shape} does not match the "
                    f"configured {w}x{h}"
                )
            # RGB888 / XRGB8888 are [B, G, R(, X)] in memory, BGR888 / XBGR8888 [R, G, B(, X)]
            bgr = self.format in ("RGB888", "XRGB8888")
            rgb = raw[:, :w, 2::-1] if bgr else raw[:, :w, :3]
        if self._want is not None:
            rgb = fit(rgb, self._want)
        return np.ascontiguousarray(transform(rgb, self.cfg.roi, self.cfg.rotate))


def _advertises(cam: Any, names: tuple[str, ...]) -> bool:
    """Whether the camera advertises one of ``names`` (an old picamera2 without
    ``camera_controls`` is trusted)."""
    try:
        controls = cam.camera_controls
    except Exception:
        return True
    if not isinstance(controls, dict):
        return True
    return any(name in controls for name in names)


def _shutdown(cam: Any) -> None:
    """Stop and close a Picamera2, never raising (a dead camera must not block a retry)."""
    for step in ("cancel_all_and_flush", "stop", "close"):
        method = getattr(cam, step, None)
        if method is None:
            continue
        try:
            method()
        except Exception as err:
            log.debug("picamera2 %s failed: %s", step, err)
