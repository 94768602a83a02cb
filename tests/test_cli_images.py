"""``edged classify`` decodes images as the daemon's files source does (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.daemon import DEMO_MODEL, ROOT, SAMPLES


def _classify(*paths: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "edged", "classify", str(DEMO_MODEL), *paths],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )


def test_classify_uses_the_bounded_decoder_for_every_mode_and_name(tmp_path: Path) -> None:
    sample = SAMPLES / "digit-3-1.png"
    rgb = np.asarray(Image.open(sample).convert("RGB"))
    gray = np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16)
    Image.fromarray(gray * 257).save(tmp_path / "sixteen.png")  # main: clipped to white
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9\n.png")
    Image.fromarray(rgb).save(os.fsdecode(odd))
    bomb = tmp_path / "bomb.png"
    Image.new("1", (13000, 13000), 0).save(bomb, optimize=True)
    out = _classify(str(sample), str(tmp_path / "sixteen.png"), odd, str(bomb))
    assert out.returncode == 2, out
    lines = [json.loads(line) for line in out.stdout.decode("utf-8").splitlines()]
    assert [line["label"] for line in lines] == [lines[0]["label"]] * 3
    assert lines[2]["image"].endswith("caf\\xe9\\n.png")
    errors = out.stderr.decode("utf-8").splitlines()
    assert len(errors) == 1 and "Traceback" not in out.stderr.decode()
    assert errors[0].endswith(
        "bomb.png: cannot read image (image of 13000x13000 pixels is over the 16777216-pixel "
        "limit (source.max_image_pixels))"
    )
