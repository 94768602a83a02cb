"""Top-k order: score descending, then class index ascending - the same classes in the same
order whatever k is (issue 15.7: the README's ``classify`` sample must print what it shows)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edged.model.scores import top_indices
from tests.daemon import DEMO_MODEL, ROOT, SAMPLES
from tests.fuzz import examples


def reference(values: np.ndarray, k: int) -> list[int]:
    """The definition, written the slow way: NaN ranks below every number."""
    key = [-math.inf if math.isnan(float(v)) else float(v) for v in values]
    return sorted(range(len(key)), key=lambda i: (-key[i], i))[: max(0, min(k, len(key)))]


def test_ties_come_out_in_index_order_whatever_k() -> None:
    values = np.array([0.0, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
    assert top_indices(values, 10).tolist() == [2, 4, 0, 1, 3, 5, 6, 7, 8, 9]
    for k in range(1, 11):
        assert top_indices(values, k).tolist() == [2, 4, 0, 1, 3, 5, 6, 7, 8, 9][:k]


def test_int8_ties_and_nan() -> None:
    raw = np.array([-128, 127, -128, -128, 5], dtype=np.int8)
    assert top_indices(raw, 3).tolist() == [1, 4, 0]  # int8 compared as numbers, not wrapped
    f = np.array([np.nan, 1.0, np.nan, -np.inf, 0.0], dtype=np.float32)
    assert top_indices(f, 5).tolist() == [1, 4, 0, 2, 3]


@settings(max_examples=examples(200), deadline=None)
@given(
    values=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int8, np.uint8]),
        shape=st.integers(1, 40),
        # few distinct values, so ties are common
        elements=st.integers(0, 6),
    ),
    k=st.integers(-2, 45),
)
def test_matches_the_definition(values: np.ndarray, k: int) -> None:
    assert top_indices(values, k).tolist() == reference(values, k)


@settings(max_examples=examples(100), deadline=None)
@given(
    values=hnp.arrays(
        dtype=np.float32,
        shape=st.integers(1, 30),
        elements=st.sampled_from([0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf")]),
    ),
    k=st.integers(1, 30),
)
def test_matches_the_definition_with_nan_and_inf(values: np.ndarray, k: int) -> None:
    assert top_indices(values, k).tolist() == reference(values, k)


def test_classify_prints_the_same_order_for_every_top_k() -> None:
    """The demo model gives 0.0 to nine classes of digit-3-1.png: their order must not move."""
    image = str((SAMPLES / "digit-3-1.png").relative_to(ROOT))
    tops = []
    for k in (1, 2, 3, 5, 10):
        out = subprocess.run(
            [sys.executable, "-m", "edged", "classify", str(DEMO_MODEL), image, "--top-k", str(k)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=True,
        )
        tops.append([t["label"] for t in json.loads(out.stdout)["top"]])
    assert tops[-1] == ["3", "0", "1", "2", "4", "5", "6", "7", "8", "9"]
    for top in tops:
        assert top == tops[-1][: len(top)]
