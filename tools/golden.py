"""The golden test vector of a bundle: one frame's input tensor and the output the model gives
for it, which the device replays before it installs the bundle.

The frame is the candidate the model is least sure of (:func:`pick_golden`: ``--golden-image``
or training images, else a fixed synthetic picture); the tolerance is
:data:`GOLDEN_ATOL_STEPS` output quantisation steps (:data:`FLOAT_GOLDEN_ATOL` for float
outputs). :func:`replay_golden` is the check, on the host as on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edged.errors import BundleError
from edged.model.bundle import Bundle
from edged.model.classifier import Classifier
from edged.model.runtime import load_interpreter

GOLDEN_ATOL_STEPS = 4  # golden tolerance in output quantisation steps (kernels may differ by 1-2)
FLOAT_GOLDEN_ATOL = 1e-3  # for a float output
SYNTHETIC_GOLDEN = "synthetic:0"


@dataclass(slots=True)
class GoldenCandidate:
    source: str  # where the frame came from (file name, "synthetic:<seed>")
    rgb: np.ndarray  # H×W×3 uint8 frame, any size
    label: str | None = None  # its true label, when known


def output_atol(model: bytes) -> float:
    """Golden tolerance: a few output quantisation steps, or a fixed one for float outputs."""
    interpreter, _ = load_interpreter(model, threads=1)
    out = interpreter.get_output_details()[0]
    scale = float((out.get("quantization") or (0.0, 0))[0])
    if scale > 0 and np.dtype(out["dtype"]).kind in "iu":
        return round(GOLDEN_ATOL_STEPS * scale, 6)
    return FLOAT_GOLDEN_ATOL


def synthetic_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A fixed, smooth, colourful test picture (gradients and blobs; no randomness per call)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= max(height - 1, 1)
    xx /= max(width - 1, 1)
    img = np.stack([xx, yy, 1.0 - (xx + yy) / 2], axis=-1) * 160.0 + 40.0
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        radius = rng.uniform(0.1, 0.3)
        colour = rng.uniform(-90.0, 90.0, size=3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        img += blob[..., None] * colour
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def pick_golden(
    classifier: Classifier, candidates: Sequence[GoldenCandidate]
) -> tuple[np.ndarray, np.ndarray, GoldenCandidate]:
    """The candidate the model is least sure of (lowest top score), so that the check covers
    more than one saturated output: ``(input tensor, dequantised output, candidate)``."""
    if not candidates:
        raise ValueError("no golden candidates")
    best: tuple[float, np.ndarray, np.ndarray, GoldenCandidate] | None = None
    for cand in candidates:
        tensor = classifier.preprocess(cand.rgb)
        out = classifier.invoke_raw(tensor).reshape(-1)
        top = float(np.max(out))
        if best is None or top < best[0]:
            best = (top, tensor, out, cand)
    assert best is not None
    return best[1], best[2], best[3]


def replay_golden(bundle: Bundle, classifier: Classifier | None = None) -> np.ndarray:
    """Feed ``golden.bin`` through the bundle's model; raise :class:`BundleError` on a
    mismatch beyond ``atol``. Returns the output."""
    golden = bundle.manifest.get("golden")
    if not golden:
        raise BundleError("bundle has no golden vector")
    clf = classifier or Classifier.from_bundle(bundle, threads=1)
    spec = bundle.manifest["input"]
    raw = bundle.members[golden["member"]]
    tensor = np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"])
    got = clf.invoke_raw(tensor).reshape(-1)
    want = np.asarray(golden["output"], dtype=np.float32)
    if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=float(golden["atol"])):
        worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
        raise BundleError(f"golden vector does not reproduce (max error {worst:.6f})")
    return got
