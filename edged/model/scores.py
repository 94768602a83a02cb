"""Score vectors: is it already probabilities, softmax, the top k."""

from __future__ import annotations

from typing import Any

import numpy as np

_PROB_TOLERANCE = 0.1  # |sum - 1| under which outputs already are probabilities


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    out: np.ndarray = e / np.sum(e)
    return out


def needs_softmax(values: np.ndarray) -> bool:
    """True when ``values`` are not already probabilities (outside [0, 1] or sum far from 1)."""
    if values.size == 0:
        return False
    lo, hi = float(values.min()), float(values.max())
    return lo < -1e-3 or hi > 1.0 + 1e-3 or abs(float(values.sum()) - 1.0) > _PROB_TOLERANCE


def quantized_probabilities(dtype: np.dtype[Any], scale: float, zero_point: int) -> bool:
    """True when a quantised output can only hold values in [0, 1]: a softmax (or sigmoid)
    output. Their sum is no test: with 1000 classes rounding to 1/256 steps it is often 0.8."""
    if dtype.kind not in "iu" or scale <= 0:
        return False
    info = np.iinfo(dtype)
    lo, hi = scale * (int(info.min) - zero_point), scale * (int(info.max) - zero_point)
    return lo >= -scale and hi <= 1.0 + scale


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first; equal values in ascending index order
    (so the same classes, in the same order, whatever ``k``); NaN ranks below every number.

    Selects without a full sort: the k-th largest value is found by a partition, then every
    index above it and the lowest indices equal to it are taken."""
    n = values.size
    k = max(0, min(k, n))
    key = values.reshape(-1).astype(np.float64)  # a copy: int8 math would wrap, NaN replaced
    np.copyto(key, -np.inf, where=np.isnan(key))
    if k == 0:
        return np.zeros(0, dtype=np.intp)
    if k < n:
        kth = np.partition(key, n - k)[n - k]
        above = np.flatnonzero(key > kth)
        equal = np.flatnonzero(key == kth)[: k - above.size]
        idx = np.concatenate((above, equal))
    else:
        idx = np.arange(n)
    # lexsort: the last key is the primary one (score, descending), then the index.
    order: np.ndarray = idx[np.lexsort((idx, -key[idx]))]
    return order
