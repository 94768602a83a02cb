"""Image folders, the seeded per-class split, and pixels exactly as the device sees them.

No TensorFlow here. Pixels come from edged's own :class:`edged.model.preprocess.Preprocessor`
(resize with area averaging or bilinear, grey via ITU-R 601 luma when the model has one
channel), so the model trains on the frames the daemon will feed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edged.model.preprocess import InputSpec as DeviceInputSpec
from edged.model.preprocess import Normalization, Preprocessor

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})

Sample = tuple[Path, int]  # (image file, label index)


def list_image_folder(data_dir: Path, min_labels: int = 2) -> dict[str, list[Path]]:
    """``{label: [image files]}``: one sub-folder per label, both sorted by name."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: not a directory")
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if files:
            out[sub.name] = files
    if len(out) < min_labels:
        need = "two label sub-folders" if min_labels > 1 else "one label sub-folder"
        raise ValueError(f"{data_dir}: need at least {need} holding images")
    return out


def split_dataset(
    files_by_label: Mapping[str, Sequence[Path]], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Per-class seeded split into ``(train, val)``; the same inputs always give the same split.

    Labels are indexed in sorted order; within a class the files are sorted by name, permuted
    by ``numpy.random.default_rng([seed, class_index])`` and the first
    ``round(n * val_fraction)`` (at least one, when the class has two or more) go to val.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    train: list[Sample] = []
    val: list[Sample] = []
    for index, label in enumerate(sorted(files_by_label)):
        files = sorted(files_by_label[label], key=lambda p: p.name)
        n_val = round(len(files) * val_fraction)
        if len(files) >= 2:
            n_val = min(max(n_val, 1), len(files) - 1)
        order = np.random.default_rng([seed, index]).permutation(len(files))
        val_rows = {int(i) for i in order[:n_val]}
        for row, path in enumerate(files):
            (val if row in val_rows else train).append((path, index))
    return train, val


def load_rgb(path: Path) -> np.ndarray:
    """An image file as an ``H×W×3`` uint8 RGB array (what a frame source hands the daemon)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


class DevicePixels:
    """RGB frame -> ``H×W×C`` uint8 pixels through the daemon's resize and colour conversion
    (edged's Preprocessor on an unquantised uint8 input: the pixels come out untouched)."""

    def __init__(self, height: int, width: int, channels: int) -> None:
        spec = DeviceInputSpec(
            shape=(1, height, width, channels),
            layout="NHWC",
            height=height,
            width=width,
            channels=channels,
            dtype=np.dtype(np.uint8),
            scale=0.0,
            zero_point=0,
        )
        self._pre = Preprocessor(spec, Normalization((0.0,), (1.0,), "config"))
        if not self._pre.fast_path:  # pragma: no cover - the identity is what makes this exact
            raise RuntimeError("edged's preprocessor did not take the identity path")

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._pre(rgb)[0].copy()
        return out


def load_pixels(
    samples: Sequence[Sample], height: int, width: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels[N, H, W, C] uint8, labels[N] int64)`` for ``samples``, device-preprocessed."""
    pixels = DevicePixels(height, width, channels)
    x = np.zeros((len(samples), height, width, channels), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):
        x[i] = pixels(load_rgb(path))
    y = np.asarray([label for _, label in samples], dtype=np.int64)
    return x, y


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(pixels - mean) / std`` as float32 (per channel; one value applies to all)."""
    return (
        (pixels.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    ).astype(np.float32)
