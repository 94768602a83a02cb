"""Export scikit-learn's bundled handwritten digits as an image folder for ``tools.train``.

The data is ``sklearn.datasets.load_digits()``: a copy of the test set of the UCI "Optical
Recognition of Handwritten Digits" data set (E. Alpaydin, C. Kaynak, 1998), 1797 8×8 images
with pixel values 0..16, licensed CC BY 4.0 by the UCI Machine Learning Repository
(https://doi.org/10.24432/C50P49). It ships inside the scikit-learn wheel, so nothing is
downloaded.

Each digit becomes a dark-on-white RGB PNG (like a printed digit seen by a camera), upscaled
bilinearly to ``size - 2*margin`` pixels and centred on a white ``size``×``size`` canvas::

    OUT/0/digit-0000.png ... OUT/9/digit-1796.png      (file name = row in load_digits())
    OUT/DATA.txt                                        (source, licence, attribution)
    samples/digit-<label>-<n>.png                       (held out: in neither train nor val)

The train/validation split is ``tools.train.split_dataset`` (per class, seeded, reproducible);
``python -m tools.demo_data`` prints it.

    python -m tools.demo_data build/digits --samples samples
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SIZE = 32
DEFAULT_MARGIN = 2
DEFAULT_SAMPLES_PER_CLASS = 2
MARKER = "DATA.txt"

ATTRIBUTION = """\
Images derived from scikit-learn's bundled digits data set (sklearn.datasets.load_digits),
a copy of the test set of the UCI Machine Learning Repository data set
"Optical Recognition of Handwritten Digits" by E. Alpaydin and C. Kaynak (1998),
https://doi.org/10.24432/C50P49, licensed under the Creative Commons Attribution 4.0
International licence (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/).
Changes: the 8x8 images (values 0..16) were inverted to dark-on-white, upscaled bilinearly
and padded with a white margin, and written as RGB PNG files by tools/demo_data.py.
"""


@dataclass(slots=True)
class ExportSummary:
    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)  # label -> images exported
    samples: list[Path] = field(default_factory=list)  # held-out sample files written

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``(images[N, 8, 8] uint8 in 0..16, targets[N] int64)`` (needs scikit-learn)."""
    from sklearn.datasets import load_digits  # lazy: only the host needs scikit-learn

    bunch = load_digits()
    images = np.asarray(bunch.images).astype(np.uint8)
    targets = np.asarray(bunch.target).astype(np.int64)
    return images, targets


def digit_to_image(
    pixels: np.ndarray, *, size: int = DEFAULT_SIZE, margin: int = DEFAULT_MARGIN
) -> Image.Image:
    """One 8×8 digit (0..16, 16 = ink) as a dark-on-white ``size``×``size`` RGB image."""
    if pixels.shape != (8, 8):
        raise ValueError(f"expected an 8x8 digit, got shape {pixels.shape}")
    inner = size - 2 * margin
    if inner < 8 or margin < 0:
        raise ValueError(f"size {size} with margin {margin} leaves no room for the digit")
    ink = np.clip(pixels.astype(np.float64), 0, 16) / 16.0
    gray = np.rint(255.0 * (1.0 - ink)).astype(np.uint8)
    small = Image.fromarray(gray).resize((inner, inner), resample=Image.Resampling.BILINEAR)
    canvas = Image.new("L", (size, size), color=255)
    canvas.paste(small, (margin, margin))
    return canvas.convert("RGB")


def choose_samples(targets: np.ndarray, per_class: int, seed: int) -> dict[int, list[int]]:
    """Rows held out as sample images: ``per_class`` per label, chosen by a seeded RNG."""
    rng = np.random.default_rng(seed)
    chosen: dict[int, list[int]] = {}
    for label in sorted({int(t) for t in targets}):
        rows = np.flatnonzero(targets == label)
        picks = rng.permutation(rows)[:per_class]
        chosen[label] = sorted(int(r) for r in picks)
    return chosen


def export(
    out_dir: Path,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    samples_dir: Path | None = None,
    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS,
    size: int = DEFAULT_SIZE,
    margin: int = DEFAULT_MARGIN,
    seed: int = 0,
    force: bool = False,
) -> ExportSummary:
    """Write the image folder (and the held-out samples); deterministic for the same inputs."""
    if len(images) != len(targets):
        raise ValueError("images and targets differ in length")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise FileExistsError(f"{out_dir} is not empty (use --force to replace an export)")
        if not (out_dir / MARKER).is_file():
            raise FileExistsError(f"{out_dir} has no {MARKER}: not an export, not replacing it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    held_out = choose_samples(targets, samples_per_class, seed) if samples_dir else {}
    skip = {row for rows in held_out.values() for row in rows}
    summary = ExportSummary(out_dir=out_dir)
    for row, (pixels, target) in enumerate(zip(images, targets, strict=True)):
        if row in skip:
            continue
        label = str(int(target))
        folder = out_dir / label
        folder.mkdir(exist_ok=True)
        digit_to_image(pixels, size=size, margin=margin).save(folder / f"digit-{row:04d}.png")
        summary.counts[label] = summary.counts.get(label, 0) + 1
    summary.counts = dict(sorted(summary.counts.items()))
    (out_dir / MARKER).write_text(ATTRIBUTION, encoding="utf-8")

    if samples_dir is not None:
        samples_dir.mkdir(parents=True, exist_ok=True)
        for digit, rows in held_out.items():
            for n, row in enumerate(rows, start=1):
                path = samples_dir / f"digit-{digit}-{n}.png"
                digit_to_image(images[row], size=size, margin=margin).save(path, optimize=True)
                summary.samples.append(path)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo_data",
        description="Export scikit-learn's digits (CC BY 4.0) as an image folder for tools.train.",
    )
    parser.add_argument(
        "out_dir", type=Path, help="image folder to write (one sub-folder per label)"
    )
    parser.add_argument(
        "--samples", type=Path, default=None, help="also write held-out sample images here"
    )
    parser.add_argument("--samples-per-class", type=int, default=DEFAULT_SAMPLES_PER_CLASS)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    parser.add_argument("--margin", type=int, default=DEFAULT_MARGIN, help="white border, pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed for samples and the split")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="validation share (for the printed split)"
    )
    parser.add_argument("--force", action="store_true", help="replace a previous export")
    args = parser.parse_args(argv)

    from tools.train import list_image_folder, split_dataset

    images, targets = load_digits_arrays()
    try:
        summary = export(
            args.out_dir,
            images,
            targets,
            samples_dir=args.samples,
            samples_per_class=args.samples_per_class,
            size=args.size,
            margin=args.margin,
            seed=args.seed,
            force=args.force,
        )
    except (FileExistsError, ValueError) as err:
        print(f"demo_data: {err}", file=sys.stderr)
        return 2
    train, val = split_dataset(list_image_folder(args.out_dir), args.val_fraction, args.seed)
    print(f"wrote {summary.total} images in {len(summary.counts)} classes to {args.out_dir}")
    print("per class: " + ", ".join(f"{k}={v}" for k, v in summary.counts.items()))
    print(
        f"split (seed {args.seed}, val fraction {args.val_fraction}): "
        f"{len(train)} train, {len(val)} validation"
    )
    if summary.samples:
        print(f"wrote {len(summary.samples)} held-out samples to {args.samples}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
