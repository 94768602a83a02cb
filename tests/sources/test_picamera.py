"""The picamera2 source against the stand-in package in tests/sources/fake_picamera2."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edged.config import Picamera2Source, Roi
from edged.errors import SourceError
from edged.sources import open_source
from edged.sources.picamera import PICAMERA2_MISSING, Picamera2FrameSource, detect_platform
from edged.sources.pixels import fit, yuv420_to_rgb

MODEL_INPUT = (224, 224)
TOL = 3  # YUV 4:2:0 round trip, integer rounding


def _pi4(fake: ModuleType) -> None:
    fake.Picamera2.platform = fake.Platform.VC4


def _pi5(fake: ModuleType) -> None:
    fake.Picamera2.platform = fake.Platform.PISP


def _read_one(cfg: Picamera2Source, size: tuple[int, int] | None = MODEL_INPUT) -> np.ndarray:
    src = Picamera2FrameSource(cfg, size)
    with src:
        frame = src.read()
    assert frame is not None
    return frame.image


def _cam(fake: ModuleType) -> object:
    assert len(fake.WORLD.instances) == 1
    return fake.WORLD.instances[0]


# -- configuration ------------------------------------------------------------------------


def test_pi4_configures_yuv420_lores_at_model_input(fake_picamera2: ModuleType) -> None:
    _pi4(fake_picamera2)
    src = Picamera2FrameSource(Picamera2Source(fps=15), MODEL_INPUT)
    src.open()
    try:
        cam = _cam(fake_picamera2)
        created = cam.created  # type: ignore[attr-defined]
        assert created["lores"] == {"size": (224, 224), "format": "YUV420"}
        assert created["main"]["size"] == (1280, 960)
        assert created["controls"] == {"FrameRate": 15.0}
        assert created["buffer_count"] >= 2
        assert created["colour_space"].name == "SMPTE170M"  # what the YUV maths assumes
        assert cam.camera_config["lores"]["size"] == (224, 224)  # type: ignore[attr-defined]
        assert cam.started  # type: ignore[attr-defined]
        assert (src.platform, src.stream, src.format) == ("vc4", "lores", "YUV420")
    finally:
        src.close()
    assert cam.calls[-2:] == ["stop", "close"]  # type: ignore[attr-defined]


def test_pi5_configures_rgb888_lores(fake_picamera2: ModuleType) -> None:
    _pi5(fake_picamera2)
    image = _read_one(Picamera2Source())
    created = _cam(fake_picamera2).created  # type: ignore[attr-defined]
    assert created["lores"] == {"size": (224, 224), "format": "RGB888"}
    assert "FrameRate" not in created.get("controls", {})
    assert image.shape == (224, 224, 3)


def test_yuv_frames_come_out_rgb(fake_picamera2: ModuleType) -> None:
    _pi4(fake_picamera2)
    image = _read_one(Picamera2Source())
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    # Stride padding (224 -> 256) must be cropped: every pixel is the red scene.
    assert np.abs(image.astype(int) - (255, 0, 0)).max() <= TOL


def test_rgb888_frames_are_bgr_in_memory_and_come_out_rgb(fake_picamera2: ModuleType) -> None:
    _pi5(fake_picamera2)
    fake_picamera2.WORLD.scene = (10, 100, 250)
    image = _read_one(Picamera2Source())
    assert image.flags.c_contiguous
    assert (image == (10, 100, 250)).all()


@pytest.mark.parametrize("platform", ["vc4", "pisp"])
def test_scene_detail_survives_both_paths(fake_picamera2: ModuleType, platform: str) -> None:
    (_pi4 if platform == "vc4" else _pi5)(fake_picamera2)

    def quadrants(w: int, h: int) -> np.ndarray:
        img = np.zeros((h, w, 3), np.uint8)
        img[: h // 2, : w // 2] = (255, 0, 0)
        img[: h // 2, w // 2 :] = (0, 255, 0)
        img[h // 2 :, : w // 2] = (0, 0, 255)
        img[h // 2 :, w // 2 :] = (255, 255, 255)
        return img

    fake_picamera2.WORLD.scene = quadrants
    image = _read_one(Picamera2Source(), (96, 64))
    assert image.shape == (64, 96, 3)
    for (y, x), want in {
        (10, 10): (255, 0, 0),
        (10, 80): (0, 255, 0),
        (50, 10): (0, 0, 255),
        (50, 80): (255, 255, 255),
    }.items():
        assert np.abs(image[y, x].astype(int) - want).max() <= TOL, (y, x, image[y, x])


def test_odd_target_is_rounded_up_to_even_then_cropped(fake_picamera2: ModuleType) -> None:
    _pi4(fake_picamera2)
    image = _read_one(Picamera2Source(), (225, 223))
    assert _cam(fake_picamera2).created["lores"]["size"] == (226, 224)  # type: ignore[attr-defined]
    assert image.shape == (223, 225, 3)


def test_lores_never_exceeds_main_and_is_resized(fake_picamera2: ModuleType) -> None:
    _pi4(fake_picamera2)
    image = _read_one(Picamera2Source(main_size=(320, 240)), (400, 400))
    assert _cam(fake_picamera2).created["lores"]["size"] == (320, 240)  # type: ignore[attr-defined]
    assert image.shape == (400, 400, 3)
    assert np.abs(image.astype(int) - (255, 0, 0)).max() <= TOL


def test_rotation_90_configures_transposed_lores(fake_picamera2: ModuleType) -> None:
    _pi5(fake_picamera2)
    image = _read_one(Picamera2Source(rotate=90), (320, 240))
    assert _cam(fake_picamera2).created["lores"]["size"] == (240, 320)  # type: ignore[attr-defined]
    assert image.shape == (240, 320, 3)  # (h, w) of the model input after rotation


def test_roi_applies_to_the_lores_frame(fake_picamera2: ModuleType) -> None:
    _pi5(fake_picamera2)
    image = _read_one(Picamera2Source(roi=Roi(x=10, y=20, width=50, height=40)))
    assert image.shape == (40, 50, 3)


def test_without_target_size_reads_main_stream(fake_picamera2: ModuleType) -> None:
    _pi4(fake_picamera2)
    image = _read_one(Picamera2Source(main_size=(640, 480)), None)
    cam = _cam(fake_picamera2)
    assert cam.created["lores"] is None  # type: ignore[attr-defined]
    assert cam.created["main"] == {"size": (640, 480), "format": "RGB888"}  # type: ignore[attr-defined]
    assert image.shape == (480, 640, 3)
    assert (image == (255, 0, 0)).all()


def test_explicit_rgb888_on_pi4_is_refused_up_front(fake_picamera2: ModuleType) -> None:
    _pi4(fake_picamera2)
    src = Picamera2FrameSource(Picamera2Source(lores_format="RGB888"), MODEL_INPUT)
    with pytest.raises(SourceError, match="Pi 5"):
        src.open()
    assert fake_picamera2.WORLD.instances == []


def test_explicit_yuv420_on_pi5(fake_picamera2: ModuleType) -> None:
    _pi5(fake_picamera2)
    image = _read_one(Picamera2Source(lores_format="YUV420"))
    assert _cam(fake_picamera2).created["lores"]["format"] == "YUV420"  # type: ignore[attr-defined]
    assert np.abs(image.astype(int) - (255, 0, 0)).max() <= TOL


def test_read_passes_a_bounded_wait(fake_picamera2: ModuleType) -> None:
    _read_one(Picamera2Source(read_timeout_s=2.5))
    assert _cam(fake_picamera2).capture_waits == [2.5]  # type: ignore[attr-defined]


def test_factory_builds_picamera_source(fake_picamera2: ModuleType) -> None:
    src = open_source(Picamera2Source(), MODEL_INPUT)
    assert isinstance(src, Picamera2FrameSource)
    assert fake_picamera2.WORLD.instances == []  # the factory does not open the camera


# -- failures -------------------------------------------------------------------------------


def test_missing_module_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    src = Picamera2FrameSource(Picamera2Source(), MODEL_INPUT)
    with pytest.raises(SourceError) as info:
        src.open()
    assert str(info.value) == PICAMERA2_MISSING
    assert "python3-picamera2" in str(info.value) and "--system-site-packages" in str(info.value)


def test_edged_imports_without_picamera2_or_cv2() -> None:
    code = (
        "import sys, edged.sources, edged.sources.picamera, edged.sources.opencv; "
        "assert 'picamera2' not in sys.modules and 'cv2' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_camera_attached(fake_picamera2: ModuleType) -> None:
    fake_picamera2.WORLD.cameras = []
    with pytest.raises(SourceError, match="no camera 0"):
        Picamera2FrameSource(Picamera2Source(), MODEL_INPUT).open()


def test_camera_index_out_of_range(fake_picamera2: ModuleType) -> None:
    with pytest.raises(SourceError, match="no camera 1"):
        Picamera2FrameSource(Picamera2Source(camera=1), MODEL_INPUT).open()


def test_camera_busy(fake_picamera2: ModuleType) -> None:
    fake_picamera2.WORLD.busy = True
    with pytest.raises(SourceError, match="cannot open camera 0"):
        Picamera2FrameSource(Picamera2Source(), MODEL_INPUT).open()


def test_configure_failure_closes_camera(fake_picamera2: ModuleType) -> None:
    fake_picamera2.WORLD.fail_configure = True
    with pytest.raises(SourceError, match="cannot start camera"):
        Picamera2FrameSource(Picamera2Source(), MODEL_INPUT).open()
    assert not _cam(fake_picamera2).is_open  # type: ignore[attr-defined]


def test_capture_failure_is_a_source_error(fake_picamera2: ModuleType) -> None:
    src = Picamera2FrameSource(Picamera2Source(), MODEL_INPUT)
    src.open()
    fake_picamera2.WORLD.fail_capture = True
    with pytest.raises(SourceError, match="capture failed: no frame within 5 s"):
        src.read()
    src.close()
    cam = _cam(fake_picamera2)
    calls = cam.calls  # type: ignore[attr-defined]
    # Pending capture jobs are cancelled first, else stop() could wait behind them forever.
    assert calls.index("cancel_all_and_flush") < calls.index("stop") and calls[-1] == "close"
    assert not cam.is_open  # type: ignore[attr-defined]
    src.close()  # idempotent


def test_read_before_open(fake_picamera2: ModuleType) -> None:
    with pytest.raises(SourceError, match="not open"):
        Picamera2FrameSource(Picamera2Source(), MODEL_INPUT).read()


def test_reopen_after_close(fake_picamera2: ModuleType) -> None:
    src = Picamera2FrameSource(Picamera2Source(), MODEL_INPUT)
    for _ in range(2):
        src.open()
        assert src.read() is not None
        src.close()
    assert [c.is_open for c in fake_picamera2.WORLD.instances] == [False, False]


# -- platform detection and conversions --------------------------------------------------------


def test_platform_from_picamera2_attribute(fake_picamera2: ModuleType) -> None:
    _pi5(fake_picamera2)
    assert detect_platform(fake_picamera2.Picamera2) == "pisp"
    _pi4(fake_picamera2)
    assert detect_platform(fake_picamera2.Picamera2) == "vc4"


@pytest.mark.parametrize(
    ("model", "want"),
    [
        (b"Raspberry Pi 5 Model B Rev 1.0\x00", "pisp"),
        (b"Raspberry Pi Compute Module 5 Rev 1.0\x00", "pisp"),
        (b"Raspberry Pi 500 Rev 1.0\x00", "pisp"),
        (b"Raspberry Pi 4 Model B Rev 1.4\x00", "vc4"),
        (b"Raspberry Pi Zero 2 W Rev 1.0\x00", "vc4"),
    ],
)
def test_platform_from_device_tree_when_picamera2_is_old(
    tmp_path: Path, model: bytes, want: str
) -> None:
    class OldPicamera2:  # picamera2 releases before Picamera2.platform existed
        pass

    f = tmp_path / "model"
    f.write_bytes(model)
    assert detect_platform(OldPicamera2, f) == want
    assert detect_platform(OldPicamera2, tmp_path / "missing") == "vc4"


def test_old_picamera2_on_pi5_uses_device_tree(
    fake_picamera2: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.1\x00")
    monkeypatch.setattr("edged.sources.picamera.DEVICE_TREE_MODEL", model)
    # Like a picamera2 without Picamera2.platform (the fake then accepts RGB lores, as a Pi 5).
    monkeypatch.setattr(fake_picamera2.Picamera2, "platform", None)
    _read_one(Picamera2Source())
    assert _cam(fake_picamera2).created["lores"]["format"] == "RGB888"  # type: ignore[attr-defined]


@pytest.mark.parametrize("use_cv2", [True, False])
@pytest.mark.parametrize(
    "colour",
    [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (128, 64, 32)],
)
def test_yuv420_to_rgb_colours(
    fake_picamera2: ModuleType, use_cv2: bool, colour: tuple[int, int, int]
) -> None:
    rgb = np.broadcast_to(np.array(colour, np.uint8), (6, 10, 3)).copy()
    arr = fake_picamera2.rgb_to_yuv420(rgb, 16, pad=200)  # stride 16 > width 10; 6/2 rows odd
    out = yuv420_to_rgb(arr, 10, use_cv2=use_cv2)
    assert out.shape == (6, 10, 3)
    assert np.abs(out.astype(int) - colour).max() <= TOL


def test_numpy_and_cv2_conversions_agree(fake_picamera2: ModuleType) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(16, 236, size=(48 * 3 // 2, 64), dtype=np.uint8)
    a = yuv420_to_rgb(arr, 60, use_cv2=True).astype(int)
    b = yuv420_to_rgb(arr, 60, use_cv2=False).astype(int)
    assert np.abs(a - b).max() <= 2


def test_yuv420_bad_shape() -> None:
    with pytest.raises(SourceError):
        yuv420_to_rgb(np.zeros((10, 16), np.uint8), 16)


def test_fit_crops_or_resizes() -> None:
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    assert fit(img, (7, 5)) is img
    assert (fit(img, (6, 4)) == img[:4, :6]).all()
    assert fit(img, (14, 10)).shape == (10, 14, 3)


# -- a stand-in as strict as libcamera: what edged gets is not always what it asked for ------

ROOT = Path(__file__).resolve().parents[2]


def _granted(fake: ModuleType, stream: str = "lores") -> dict[str, Any]:
    return _cam(fake).camera_config[stream]  # type: ignore[attr-defined,no-any-return]


def _quadrants(w: int, h: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    img[h // 2 :, w // 2 :] = (255, 255, 255)
    return img


def _assert_quadrants(image: np.ndarray, tol: int = TOL) -> None:
    h, w = image.shape[:2]
    for (y, x), want in {
        (h // 4, w // 4): (255, 0, 0),
        (h // 4, 3 * w // 4): (0, 255, 0),
        (3 * h // 4, w // 4): (0, 0, 255),
        (3 * h // 4, 3 * w // 4): (255, 255, 255),
    }.items():
        assert np.abs(image[y, x].astype(int) - want).max() <= tol, (y, x, image[y, x])


def test_stand_in_pi4_clamps_outputs_to_64(fake_picamera2: ModuleType) -> None:
    _pi4(fake_picamera2)
    cam = fake_picamera2.Picamera2(0)
    cam.configure(cam.create_preview_configuration(lores={"size": (32, 32), "format": "YUV420"}))
    lores = cam.camera_configuration()["lores"]
    assert lores["size"] == (64, 64) and lores["stride"] == 64
    assert cam.camera_configuration()["main"]["size"] == (640, 480)


@pytest.mark.parametrize(
    ("sensor", "asked", "granted"),
    [
        ((2304, 1296), (32, 32), (32, 32)),  # 1296/64 -> 21 -> 22: 32 is enough
        ((2304, 1296), (16, 16), (22, 22)),
        ((4608, 2592), (32, 32), (42, 42)),  # 2592/64 -> 40.5 -> 41 -> 42
        ((4608, 2592), (32, 16), (72, 36)),  # 4608x2304 / 64: enlarged, still 2:1
    ],
)
def test_stand_in_pi5_enlarges_small_outputs(
    fake_picamera2: ModuleType,
    sensor: tuple[int, int],
    asked: tuple[int, int],
    granted: tuple[int, int],
) -> None:
    _pi5(fake_picamera2)
    fake_picamera2.WORLD.sensor_size = sensor
    cam = fake_picamera2.Picamera2(0)
    cam.configure(
        cam.create_preview_configuration(
            main={"size": (1280, 960)}, lores={"size": asked, "format": "RGB888"}
        )
    )
    assert cam.camera_configuration()["lores"]["size"] == granted


def test_stand_in_adds_a_raw_stream_and_checks_controls(fake_picamera2: ModuleType) -> None:
    cam = fake_picamera2.Picamera2(0)
    config = cam.create_preview_configuration(main={"size": (640, 480)})
    assert config["raw"] == {"format": "SBGGR10_CSI2P", "size": (640, 480)}
    assert set(config["controls"]) == {"NoiseReductionMode", "FrameDurationLimits"}
    cam.configure(config)
    assert cam.camera_configuration()["raw"]["size"] == fake_picamera2.WORLD.sensor_size
    bad = cam.create_preview_configuration(controls={"Brightnesss": 0.5})
    with pytest.raises(RuntimeError, match="Control Brightnesss is not advertised by libcamera"):
        cam.configure(bad)
    del fake_picamera2.WORLD.controls["FrameDurationLimits"]
    with pytest.raises(RuntimeError, match="FrameDurationLimits is not advertised"):
        cam.configure(cam.create_preview_configuration(controls={"FrameRate": 10.0}))


def test_stand_in_rewrites_unsupported_formats_to_nv12(fake_picamera2: ModuleType) -> None:
    _pi4(fake_picamera2)
    cam = fake_picamera2.Picamera2(0)
    with pytest.raises(RuntimeError, match="lores stream must be YUV"):
        cam.configure(
            cam.create_preview_configuration(lores={"size": (64, 64), "format": "RGB888"})
        )
    cam.configure(cam.create_preview_configuration(lores={"size": (64, 64), "format": "YUYV"}))
    assert cam.camera_configuration()["lores"]["format"] == "NV12"


@pytest.mark.parametrize("platform", ["vc4", "pisp"])
def test_pi4_64x64_floor_is_resized_to_a_32x32_model(
    fake_picamera2: ModuleType, platform: str
) -> None:
    (_pi4 if platform == "vc4" else _pi5)(fake_picamera2)
    fake_picamera2.WORLD.sensor_size = (4608, 2592)  # the Pi 5 then grants 42x42
    fake_picamera2.WORLD.scene = _quadrants
    src = Picamera2FrameSource(Picamera2Source(), (32, 32))
    with src:
        frame = src.read()
        granted = _granted(fake_picamera2)["size"]
        assert src.stream_size == granted
    assert granted == ((64, 64) if platform == "vc4" else (42, 42))
    assert frame is not None and frame.image.shape == (32, 32, 3)
    _assert_quadrants(frame.image)


@pytest.mark.parametrize("fmt", ["NV12", "YVU420", "NV21", "BGR888", "XBGR8888", "XRGB8888"])
def test_format_rewritten_by_libcamera_is_converted(fake_picamera2: ModuleType, fmt: str) -> None:
    _pi5(fake_picamera2)
    fake_picamera2.WORLD.scene = _quadrants
    if fmt == "NV12":  # the ISP lacks RGB888: libcamera hands out NV12 instead
        fake_picamera2.WORLD.unsupported = {"RGB888"}
        cfg = Picamera2Source()
    else:  # a libcamera that grants another format: patch what configure writes back
        cfg = Picamera2Source()
        real_validate = fake_picamera2.Picamera2._validate

        def validate(self: object, config: dict[str, Any]) -> None:
            config["lores"]["format"] = fmt
            real_validate(self, config)

        fake_picamera2.Picamera2._validate = validate
    try:
        src = Picamera2FrameSource(cfg, (96, 64))
        with src:
            frame = src.read()
            assert src.format == fmt
    finally:
        if fmt != "NV12":
            fake_picamera2.Picamera2._validate = real_validate
    assert frame is not None and frame.image.shape == (64, 96, 3)
    _assert_quadrants(frame.image)


def test_format_edged_cannot_convert_is_refused_with_the_reason(
    fake_picamera2: ModuleType,
) -> None:
    _pi5(fake_picamera2)
    real_validate = fake_picamera2.Picamera2._validate

    def validate(self: object, config: dict[str, Any]) -> None:
        real_validate(self, config)
        config["lores"]["format"] = "YUYV"

    fake_picamera2.Picamera2._validate = validate
    try:
        with pytest.raises(SourceError, match="format YUYV, which edged cannot convert"):
            Picamera2FrameSource(Picamera2Source(), MODEL_INPUT).open()
    finally:
        fake_picamera2.Picamera2._validate = real_validate
    assert not _cam(fake_picamera2).is_open  # type: ignore[attr-defined]


def test_fps_is_set_only_when_the_camera_advertises_it(
    fake_picamera2: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    del fake_picamera2.WORLD.controls["FrameDurationLimits"]  # e.g. a camera without it
    image = _read_one(Picamera2Source(fps=15))
    assert image.shape == (224, 224, 3)
    cam = _cam(fake_picamera2)
    assert "FrameRate" not in cam.controls_set  # type: ignore[attr-defined]
    assert "does not advertise a frame rate control" in caplog.text


def test_raw_stream_in_the_preview_configuration_is_harmless(fake_picamera2: ModuleType) -> None:
    fake_picamera2.WORLD.scene = _quadrants
    image = _read_one(Picamera2Source(), (96, 64))
    cam = _cam(fake_picamera2)
    assert cam.camera_config["raw"]["format"] == "SBGGR10_CSI2P"  # type: ignore[attr-defined]
    assert cam.calls.count("capture_array:lores") == 1  # type: ignore[attr-defined]
    _assert_quadrants(image)


@pytest.mark.parametrize("version", [(0, 3, 19), (0, 3, 36)])
def test_a_stalled_camera_never_hangs_a_read(
    fake_picamera2: ModuleType, version: tuple[int, int, int]
) -> None:
    """picamera2 < 0.3.20 ignores capture_array(wait=<seconds>): edged's own deadline holds."""
    fake_picamera2.WORLD.version = version
    src = Picamera2FrameSource(Picamera2Source(read_timeout_s=0.3), MODEL_INPUT)
    src.open()
    fake_picamera2.WORLD.stall = True
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"no frame within 0\.3 s") as info:
        src.read()
    elapsed = time.monotonic() - t0
    old = version < (0, 3, 20)
    assert ("abandoned" in str(info.value)) == old
    assert elapsed < 0.3 + 1.0 + 3.0  # picamera2's wait + edged's grace + a loaded machine
    if old:  # the abandoned capture still blocks: no second capture on that camera
        with pytest.raises(SourceError, match="still blocked"):
            src.read()
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.0  # close() does not wait behind the blocked capture
    fake_picamera2.WORLD.stall = False
    fake_picamera2.WORLD.unstall.set()
    src.open()  # a fresh camera works again
    try:
        assert src.read() is not None
    finally:
        src.close()


# -- the default install's path: picamera2 + the 32x32 demo model ------------------------------


@pytest.mark.parametrize(
    ("platform", "sensor"),
    [("vc4", (2304, 1296)), ("pisp", (2304, 1296)), ("pisp", (4608, 2592))],
)
def test_default_install_path_classifies_digits(
    fake_picamera2: ModuleType, platform: str, sensor: tuple[int, int]
) -> None:
    """The shipped config's picamera2 source feeding models/digits.edgb (32x32 input): the Pi 4
    grants 64x64 YUV420, the Pi 5 RGB888 at 32x32 or enlarged; every path must still classify
    the sample digits as named."""
    from PIL import Image

    from edged.config import load_config
    from edged.model.classifier import Classifier

    (_pi4 if platform == "vc4" else _pi5)(fake_picamera2)
    fake_picamera2.WORLD.sensor_size = sensor
    shipped = load_config(ROOT / "config" / "edged.example.toml", environ={})
    assert isinstance(shipped.source, Picamera2Source)
    clf = Classifier.load(ROOT / "models" / "digits.edgb")
    assert (clf.info.width, clf.info.height) == (32, 32)
    samples = sorted((ROOT / "samples").glob("digit-*-1.png"))
    assert len(samples) == 10
    right = 0
    for path in samples:
        with Image.open(path) as im:
            digit = im.convert("RGB")

        def scene(w: int, h: int, digit: Image.Image = digit) -> np.ndarray:
            return np.asarray(digit.resize((w, h), Image.Resampling.BILINEAR))

        fake_picamera2.WORLD.scene = scene
        src = Picamera2FrameSource(shipped.source, (clf.info.width, clf.info.height))
        with src:
            frame = src.read()
            granted = src.stream_size
        assert frame is not None and frame.image.shape == (32, 32, 3)
        right += clf.classify(frame.image, 1).label == path.name.split("-")[1]
    want = {"vc4": (64, 64), "pisp": (32, 32) if sensor[0] < 4000 else (42, 42)}[platform]
    assert granted == want
    assert right >= 9, f"{right} of 10 sample digits classified as named"
