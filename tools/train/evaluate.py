"""Evaluation on the held-out split through the device's own preprocessing.

Both the float32 TFLite model and the int8 one are run by
:class:`edged.model.classifier.Classifier` built from a bundle (``tools.bundle
.device_classifier``), on the validation images as RGB frames at their original size: the
daemon's resize, colour conversion, normalisation and quantisation, then the TFLite kernels.
No NumPy/scikit-learn re-implementation of the preprocessing is involved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tools.bundle import device_classifier
from tools.train.data import Sample, load_rgb


@dataclass(slots=True)
class Scores:
    """Per-image outputs of one model on the validation split."""

    outputs: np.ndarray  # [N, K] dequantised outputs (probabilities)
    predictions: np.ndarray  # [N] argmax
    backend: str


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return cm


def metrics(cm: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and macro averages from a confusion
    matrix (a class never predicted has precision 0, one never present recall 0)."""
    total = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    per_class = {
        label: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(actual[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": round(float(tp.sum() / total), 4) if total else 0.0,
        "correct": int(tp.sum()),
        "total": total,
        "macro_precision": round(float(precision.mean()), 4),
        "macro_recall": round(float(recall.mean()), 4),
        "macro_f1": round(float(f1.mean()), 4),
        "per_class": per_class,
        "confusion": cm.astype(int).tolist(),
    }


def evaluate_models(
    models: dict[str, bytes],
    labels: Sequence[str],
    samples: Sequence[Sample],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    threads: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Scores]:
    """Run every model in ``models`` (``{"float": bytes, "int8": bytes}``) on each validation
    image, read once, through its device classifier."""
    classifiers = {
        key: device_classifier(model, labels, mean=mean, std=std, threads=threads)
        for key, model in models.items()
    }
    outputs: dict[str, list[np.ndarray]] = {key: [] for key in models}
    for i, (path, _) in enumerate(samples):
        rgb = load_rgb(path)
        for key, clf in classifiers.items():
            outputs[key].append(clf.invoke_raw(clf.preprocess(rgb)).reshape(-1))
        if progress is not None:
            progress(i + 1, len(samples))
    result: dict[str, Scores] = {}
    for key, clf in classifiers.items():
        out = np.stack(outputs[key]) if outputs[key] else np.zeros((0, len(labels)), np.float32)
        result[key] = Scores(out, np.argmax(out, axis=1), clf.info.backend)
    return result
