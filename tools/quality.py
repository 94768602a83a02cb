"""The quality gate: a model that is no better than guessing, or that says the same thing
whatever it is shown, is not bundled (unless the operator insists with ``--force``).

Two checks on a model's outputs over an evaluation set (``outputs[N, K]``, true labels when
known):

* **above chance**: the held-out accuracy must beat the best *constant* guess -- always
  answering the evaluation set's most frequent class, whose accuracy is that class's share
  ``p0`` (``1/K`` for a balanced set) -- by :data:`MIN_MARGIN` (5 points) **and** with a
  one-sided binomial test ``P(X >= correct | n, p0) <= ``:data:`MAX_P_VALUE` (0.001). The
  margin keeps a huge set from passing a model barely above chance; the test keeps a tiny set
  from passing a lucky one (10 images cannot show a 5-class model is any good: that needs
  ``--force``).
* **outputs vary**: the model must not give (nearly) the same answer for everything: the most
  frequent top-1 class may cover at most :data:`MAX_TOP1_SHARE` (95 %) of the images (unless
  the set itself is that lopsided), and the outputs must move by more than
  :data:`MIN_OUTPUT_RANGE` (or one output quantisation step) somewhere across the images.

With no labelled data (``tools bundle`` without ``--eval-dir``) only the second check can run,
on probe frames, and only its strict half: outputs that do not move at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_P_VALUE = 1e-3
MIN_MARGIN = 0.05
MAX_TOP1_SHARE = 0.95
MIN_OUTPUT_RANGE = 1e-4


@dataclass(slots=True)
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), **self.figures}

    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "passed"


def binomial_tail(successes: int, trials: int, p: float) -> float:
    """``P(X >= successes)`` for ``X ~ Binomial(trials, p)`` (exact, in log space)."""
    if successes <= 0:
        return 1.0
    if successes > trials:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [
        math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
        + k * lp + (trials - k) * lq
        for k in range(successes, trials + 1)
    ]  # fmt: skip
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def output_range(outputs: np.ndarray) -> float:
    """How far the outputs move across the images: the largest per-class max - min."""
    if outputs.shape[0] < 2:
        return 0.0
    return float(np.max(np.ptp(outputs.astype(np.float64), axis=0)))


def check_variation(outputs: np.ndarray, *, min_range: float = MIN_OUTPUT_RANGE) -> Verdict:
    """The strict check alone (no labels): fail when the outputs do not move at all."""
    outputs = np.asarray(outputs)
    moved = output_range(outputs)
    figures = {"images": int(outputs.shape[0]), "output_range": round(moved, 6)}
    if outputs.shape[0] >= 2 and moved <= min_range:
        return Verdict(
            False,
            [
                f"the outputs do not vary: the same output for all {outputs.shape[0]} images "
                f"(largest change {moved:.2g})"
            ],
            figures,
        )
    return Verdict(True, [], figures)


def evaluate(
    outputs: np.ndarray,
    y_true: np.ndarray,
    num_classes: int,
    labels: Sequence[str] | None = None,
    *,
    min_range: float = MIN_OUTPUT_RANGE,
) -> Verdict:
    """The full gate on a labelled evaluation set."""
    outputs = np.asarray(outputs)
    y_true = np.asarray(y_true, dtype=np.int64)
    n = len(y_true)
    if outputs.ndim != 2 or outputs.shape[0] != n:
        raise ValueError("outputs must be [N, K] for N labels")
    names = list(labels) if labels is not None else [str(i) for i in range(num_classes)]
    if n == 0:
        return Verdict(False, ["no held-out images to judge the model on"], {"images": 0})
    pred = np.argmax(outputs, axis=1)
    correct = int(np.sum(pred == y_true))
    accuracy = correct / n
    true_counts = np.bincount(y_true, minlength=num_classes)
    chance = float(true_counts.max()) / n  # the best constant guess
    p_value = binomial_tail(correct, n, chance)
    pred_counts = np.bincount(pred, minlength=num_classes)
    top_class = int(np.argmax(pred_counts))
    top_share = float(pred_counts[top_class]) / n
    moved = output_range(outputs)
    figures: dict[str, Any] = {
        "images": n,
        "accuracy": round(accuracy, 4),
        "chance": round(chance, 4),
        "p_value": float(f"{p_value:.3g}"),
        "top1_share": round(top_share, 4),
        "top1_class": names[top_class] if top_class < len(names) else str(top_class),
        "output_range": round(moved, 6),
        "rules": {
            "min_margin": MIN_MARGIN,
            "max_p_value": MAX_P_VALUE,
            "max_top1_share": MAX_TOP1_SHARE,
            "min_output_range": min_range,
        },
    }
    reasons: list[str] = []
    if accuracy < chance + MIN_MARGIN or p_value > MAX_P_VALUE:
        reasons.append(
            f"held-out accuracy {accuracy:.3f} ({correct}/{n}) is not clearly above chance "
            f"{chance:.3f} (needs +{MIN_MARGIN:.2f} and binomial p <= {MAX_P_VALUE:g}; "
            f"p = {p_value:.2g})"
        )
    true_share = chance
    if top_share >= MAX_TOP1_SHARE and true_share < MAX_TOP1_SHARE:
        reasons.append(
            f"the model answers {figures['top1_class']!r} for {100 * top_share:.1f} % of the "
            f"{n} held-out images"
        )
    if moved <= min_range:
        reasons.append(f"the outputs do not vary over the {n} held-out images")
    return Verdict(not reasons, reasons, figures)
