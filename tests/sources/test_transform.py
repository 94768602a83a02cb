"""edged.sources.base.transform: crop to the roi (clipped), then rotate clockwise."""

from __future__ import annotations

import numpy as np
import pytest

from edged.config import Roi
from edged.sources.base import transform

# 3 rows x 4 columns; the value of a pixel is 10*row + col in every channel.
GRID = np.array([[10 * r + c for c in range(4)] for r in range(3)], dtype=np.uint8)
IMG = np.repeat(GRID[:, :, None], 3, axis=2)


def _plane(a: np.ndarray) -> list[list[int]]:
    assert a.ndim == 3 and a.shape[2] == 3
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    return [[int(v) for v in row] for row in a[..., 0]]


def test_identity() -> None:
    assert _plane(transform(IMG, None, 0)) == GRID.tolist()


def test_roi_crop() -> None:
    out = transform(IMG, Roi(x=1, y=1, width=2, height=2), 0)
    assert _plane(out) == [[11, 12], [21, 22]]


def test_roi_clipped_to_frame() -> None:
    out = transform(IMG, Roi(x=2, y=1, width=100, height=100), 0)
    assert _plane(out) == [[12, 13], [22, 23]]


def test_roi_entirely_outside_keeps_the_last_pixel() -> None:
    out = transform(IMG, Roi(x=50, y=50, width=5, height=5), 0)
    assert _plane(out) == [[23]]


@pytest.mark.parametrize(
    ("rotate", "want"),
    [
        (90, [[20, 10, 0], [21, 11, 1], [22, 12, 2], [23, 13, 3]]),
        (180, [[23, 22, 21, 20], [13, 12, 11, 10], [3, 2, 1, 0]]),
        (270, [[3, 13, 23], [2, 12, 22], [1, 11, 21], [0, 10, 20]]),
    ],
)
def test_rotate_clockwise(rotate: int, want: list[list[int]]) -> None:
    assert _plane(transform(IMG, None, rotate)) == want


def test_crop_happens_before_rotation() -> None:
    out = transform(IMG, Roi(x=0, y=0, width=3, height=2), 90)
    assert _plane(out) == [[10, 0], [11, 1], [12, 2]]


def test_colour_channels_are_kept_in_order() -> None:
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = (255, 0, 0)
    out = transform(img, None, 90)  # top-left goes to top-right
    assert tuple(out[0, 1]) == (255, 0, 0)
