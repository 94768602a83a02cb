"""Where the real third-party models and photos live, and the marks for tests that need them.

``REALDATA`` is ``../shared/realdata`` relative to the repository root (override with the
``EDGEDTEST_REALDATA`` environment variable). Tests that read it use ``pytestmark = realdata`` (or
``@pytest.mark.realdata`` plus ``@requires_realdata``) and are skipped when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REALDATA = Path(
    os.environ.get("EDGEDTEST_REALDATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
)
MODELS = REALDATA / "models"
PHOTOS = REALDATA / "photos"
DATASET = REALDATA / "dataset"

requires_realdata = pytest.mark.skipif(
    not MODELS.is_dir(),
    reason=f"real models and photos not found at {REALDATA} (../shared/realdata)",
)
realdata = [pytest.mark.realdata, requires_realdata]


def load_rgb(path: Path) -> np.ndarray:
    """An HxWx3 uint8 RGB array of an image file (BMP, JPEG, PNG; grayscale expanded)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
