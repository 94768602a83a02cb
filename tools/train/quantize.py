"""Keras core model -> TFLite: a float32 model and a full-integer int8 model.

The int8 model is post-training quantised: int8 weights (per channel) and activations, int32
biases, ``int8`` or ``uint8`` input and output, and only ``TFLITE_BUILTINS_INT8`` kernels
allowed, so conversion fails rather than leave a float op behind. Activation ranges are
calibrated on a seeded sample of *training* images (never validation ones), fed normalised,
exactly as the core model sees them.

The input tensor's quantisation range is the range the calibration images cover. When they do
not reach both pixel 0 and pixel 255 (pale or dim data sets), one more calibration image is
added: the sampled image of widest range with its contrast stretched to 0..255. That pins the
input range to the whole pixel range (the device feeds any pixel value; the rest would clip)
with activations of a real picture, not of a synthetic extreme.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.train.data import normalize

IO_DTYPES = ("int8", "uint8")
DEFAULT_CALIBRATION = 300


@dataclass(slots=True)
class Converted:
    float_model: bytes
    int8_model: bytes
    calibration_images: int
    stretched: bool  # a contrast-stretched image was added to cover pixels 0..255


def calibration_rows(n: int, count: int, seed: int) -> np.ndarray:
    """The rows of the training set used for calibration: seeded, at most ``count``."""
    return np.random.default_rng(seed).permutation(n)[: min(count, n)]


def full_range_image(pixels: np.ndarray) -> np.ndarray | None:
    """The image of widest pixel range, stretched to 0..255 (None when ``pixels`` already
    reach both 0 and 255)."""
    if pixels.size == 0 or (float(pixels.min()) <= 0.0 and float(pixels.max()) >= 255.0):
        return None
    flat = pixels.reshape(len(pixels), -1)
    widest = int(np.argmax(flat.max(axis=1) - flat.min(axis=1)))
    img: np.ndarray = pixels[widest].astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.where(np.arange(img.size).reshape(img.shape) % 2, 255.0, 0.0).astype(np.float32)
    return ((img - lo) * (255.0 / (hi - lo))).astype(np.float32)


def convert(
    core: Any,
    pixels: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    io_dtype: str = "int8",
    count: int = DEFAULT_CALIBRATION,
) -> Converted:
    """Export ``core`` once as a SavedModel and convert it twice (float32, full-integer).

    ``pixels`` are training images (0..255); calibration feeds ``(pixels - mean) / std``."""
    import tensorflow as tf

    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io dtype must be int8 or uint8, not {io_dtype!r}")
    rows = calibration_rows(len(pixels), count, seed)
    samples = [pixels[r : r + 1] for r in rows]
    extra = full_range_image(pixels[rows])
    if extra is not None:
        samples.append(extra[None])
    calibration = [normalize(s, mean, std) for s in samples]

    def representative() -> Iterator[list[np.ndarray]]:
        for sample in calibration:
            yield [sample]

    with tempfile.TemporaryDirectory(prefix="edged-train-") as tmp:
        saved = str(Path(tmp) / "saved_model")
        core.export(saved, format="tf_saved_model", verbose=False)
        float_model = bytes(tf.lite.TFLiteConverter.from_saved_model(saved).convert())
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        int8_model = full_integer(converter, representative, io_dtype)
    return Converted(float_model, int8_model, len(calibration), extra is not None)


def full_integer(converter: Any, representative: Callable[[], Any], io_dtype: str) -> bytes:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    tf_dtype = {"int8": tf.int8, "uint8": tf.uint8}[io_dtype]
    converter.inference_input_type = tf_dtype
    converter.inference_output_type = tf_dtype
    return bytes(converter.convert())
