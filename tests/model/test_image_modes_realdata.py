"""The same photo in every image mode gives the same top-1 as its 8-bit RGB copy (issue 11).

Each variant goes through the daemon's decoder (:func:`edged.sources.images.decode_image`),
stored in a format that keeps its mode (PNG, TIFF, JPEG, WebP) where there is one, and then
the classifier. A real Coral MobileNet v2 on real photos (../shared/realdata, skipped when
absent), and the demo digits model of a fresh clone on its samples.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edged.model.classifier import Classifier
from edged.sources.images import decode_image, to_rgb_array
from tests.daemon import DEMO_MODEL, SAMPLES
from tests.realdata import MODELS, PHOTOS, requires_realdata

PHOTO_NAMES = ["grace_hopper.bmp", "cat.bmp", "bird.bmp", "parrot.jpg", "owl.jpg", "sunflower.bmp"]


def _save(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def variants(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """mode -> what the decoder makes of the photo stored in that mode."""
    im = Image.fromarray(rgb)
    h, w = rgb.shape[:2]
    opaque = np.full((h, w), 255, np.uint8)
    gray = np.asarray(im.convert("L"))
    # A 16-bit copy whose real range is 0..65535 (the stretch is then exactly x257).
    stretched = (gray.astype(np.float64) - gray.min()) * 65535.0 / max(1, np.ptp(gray))
    g16 = np.rint(stretched).astype(np.uint16)
    rgba = np.dstack([rgb, opaque])
    stored: dict[str, bytes] = {
        "RGB (8-bit PNG)": _save(im, "PNG"),
        "L": _save(im.convert("L"), "PNG"),
        "LA": _save(Image.fromarray(np.dstack([gray, opaque]), "LA"), "PNG"),
        "P": _save(im.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"),
        "P+transparency": _save(
            im.convert("P", palette=Image.Palette.ADAPTIVE, colors=255), "PNG", transparency=255
        ),
        "RGBA": _save(Image.fromarray(rgba, "RGBA"), "PNG"),
        "CMYK": _save(im.convert("CMYK"), "TIFF"),
        "CMYK JPEG": _save(im.convert("CMYK"), "JPEG", quality=95),
        "I;16": _save(Image.fromarray(g16), "PNG"),
        "I;16B": _save(Image.frombytes("I;16B", im.size, g16.astype(">u2").tobytes()), "TIFF"),
        "F": _save(Image.fromarray(gray.astype(np.float32) / 255.0 * 3.5 - 1.0, "F"), "TIFF"),
        "1": _save(im.convert("1"), "PNG"),
    }
    out = {mode: decode_image(data) for mode, data in stored.items()}
    for mode in ("YCbCr", "LAB", "HSV", "I"):  # no file format of ours stores these as such
        out[mode] = to_rgb_array(im.convert(mode))
    out["PA"] = to_rgb_array(im.convert("P", palette=Image.Palette.ADAPTIVE).convert("PA"))
    # Stored sideways with an EXIF orientation that says so: comes out upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = im.transpose(Image.Transpose.ROTATE_90)
    out["EXIF orientation 6"] = decode_image(_save(sideways, "JPEG", quality=95, exif=exif))
    # First frame of an animation.
    anim = _save(im, "PNG", save_all=True, append_images=[Image.new("RGB", (w, h))])
    out["APNG frame 0"] = decode_image(anim)
    return out


GRAY_MODES = {"L", "LA", "I;16", "I;16B", "F", "I", "1"}


@requires_realdata
@pytest.mark.realdata
def test_every_mode_of_a_real_photo_keeps_the_top1_of_its_rgb_copy() -> None:
    clf = Classifier.load(MODELS / "coral_mobilenet_v2_1.0_224_quant.tflite")
    gray_clf = clf  # the gray variants are compared with the gray photo, not the colour one
    mismatches = []
    for name in PHOTO_NAMES:
        with Image.open(PHOTOS / "coral" / name) as src:
            rgb = np.asarray(src.convert("RGB"))
        want = clf.classify(rgb, 1).label
        gray3 = np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[:, :, None], 3, axis=2)
        want_gray = gray_clf.classify(gray3, 1).label
        for mode, got_rgb in variants(rgb).items():
            if mode == "1":
                continue  # 1-bit dithering is no longer the photo; decoded, not compared
            assert got_rgb.shape == rgb.shape and got_rgb.dtype == np.uint8, mode
            expect = want_gray if mode in GRAY_MODES else want
            got = clf.classify(got_rgb, 1).label
            if got != expect:
                mismatches.append((name, mode, got, expect))
    assert not mismatches, mismatches


def test_every_mode_of_a_sample_keeps_the_top1_with_the_demo_model() -> None:
    """A fresh clone (no realdata): the digits model is grayscale, so every mode counts."""
    clf = Classifier.load(DEMO_MODEL)
    checked = 0
    for path in sorted(SAMPLES.glob("digit-*.png"))[:10]:
        with Image.open(path) as src:
            rgb = np.asarray(src.convert("RGB"))
        want = clf.classify(rgb, 1).label
        for mode, got_rgb in variants(rgb).items():
            if mode == "1":
                continue
            assert clf.classify(got_rgb, 1).label == want, (path.name, mode)
            checked += 1
    assert checked == 10 * (len(variants(np.zeros((4, 4, 3), np.uint8))) - 1)
