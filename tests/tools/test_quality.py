"""The quality gate's rules (no TensorFlow): above chance, outputs that vary."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools import quality


def exact_tail(k: int, n: int, p: Fraction) -> Fraction:
    return sum(
        (Fraction(math.comb(n, j)) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)),
        Fraction(0),
    )


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    data=st.data(),
    p=st.fractions(min_value=Fraction(1, 100), max_value=Fraction(99, 100), max_denominator=100),
)
def test_binomial_tail_is_exact(n: int, data: st.DataObject, p: Fraction) -> None:
    k = data.draw(st.integers(0, n + 1))
    want = float(exact_tail(k, n, p)) if k <= n else 0.0
    assert quality.binomial_tail(k, n, float(p)) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_binomial_tail_large_n_does_not_overflow() -> None:
    # 900 of 4000 right with chance 0.2: mean 800, sd ~25 -> about 4 sd, p ~ 3e-5
    p = quality.binomial_tail(900, 4000, 0.2)
    assert 1e-6 < p < 1e-4
    assert quality.binomial_tail(4000, 4000, 0.2) == pytest.approx(0.2**4000, abs=1e-300)
    assert quality.binomial_tail(0, 10, 0.5) == 1.0


def onehot(pred: list[int], k: int, confident: float = 0.9) -> np.ndarray:
    out = np.full((len(pred), k), (1 - confident) / (k - 1), np.float32)
    out[np.arange(len(pred)), pred] = confident
    return out


def test_constant_model_is_refused_with_its_reasons() -> None:
    y = np.repeat(np.arange(5), 20)  # 100 images, 5 balanced classes
    outputs = np.tile(np.array([[0.3, 0.2, 0.2, 0.2, 0.1]], np.float32), (100, 1))
    verdict = quality.evaluate(outputs, y, 5, ["a", "b", "c", "d", "e"])
    assert not verdict.passed
    text = verdict.summary()
    assert "not clearly above chance 0.200" in text
    assert "answers 'a' for 100.0 % of the 100 held-out images" in text
    assert "outputs do not vary" in text
    assert verdict.figures["accuracy"] == 0.2 and verdict.figures["top1_share"] == 1.0
    assert verdict.as_json()["passed"] is False


def test_good_model_passes() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 40)
    pred = np.where(rng.random(200) < 0.9, y, (y + 1) % 5)
    verdict = quality.evaluate(onehot(pred.tolist(), 5), y, 5)
    assert verdict.passed and verdict.reasons == []
    assert verdict.figures["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-4)
    assert verdict.figures["p_value"] < 1e-30


def test_barely_above_chance_is_not_enough() -> None:
    """Chance + 3 points on 10,000 images is significant but not *clearly* above chance."""
    rng = np.random.default_rng(1)
    n, k = 10_000, 4
    y = np.tile(np.arange(k), n // k)  # chance 0.25
    right = rng.random(n) < 0.28
    pred = np.where(right, y, (y + rng.integers(1, k, n)) % k)
    verdict = quality.evaluate(onehot(pred.tolist(), k), y, k)
    chance = verdict.figures["chance"]
    assert chance == 0.25 and chance + 0.02 < verdict.figures["accuracy"] < chance + 0.05
    assert verdict.figures["p_value"] < 1e-6  # significant, yet not clearly better
    assert not verdict.passed and "not clearly above chance" in verdict.summary()


def test_tiny_evaluation_sets_cannot_prove_anything() -> None:
    y = np.array([0, 1, 2])
    verdict = quality.evaluate(onehot([0, 1, 2], 3), y, 3)  # 3 of 3, p = 1/27
    assert not verdict.passed and "binomial p" in verdict.summary()
    empty = quality.evaluate(np.zeros((0, 3)), np.zeros(0, np.int64), 3)
    assert not empty.passed and "no held-out images" in empty.summary()


def test_chance_is_the_majority_share_of_a_lopsided_set() -> None:
    """96 % of the images are class 0: always answering 0 scores 96 % and is still refused
    (no better than the constant guess); the top-1 share rule does not fire on such a set."""
    y = np.array([0] * 96 + [1] * 4)
    verdict = quality.evaluate(onehot([0] * 100, 2), y, 2)
    assert verdict.figures["chance"] == 0.96
    assert not verdict.passed
    assert len(verdict.reasons) == 2  # chance and no variation, not the share rule
    assert not any("answers" in r for r in verdict.reasons)


def test_varied_outputs_but_one_answer_is_refused() -> None:
    """Outputs that move but always rank the same class first: 'the same answer'."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 25)
    outputs = rng.uniform(0, 0.2, (100, 4)).astype(np.float32)
    outputs[:, 2] += 0.5
    outputs[:3, 1] += 1.0  # three images differ
    verdict = quality.evaluate(outputs, y, 4, ["w", "x", "y", "z"])
    assert not verdict.passed and "answers 'y' for 97.0 %" in verdict.summary()


def test_check_variation() -> None:
    assert not quality.check_variation(np.ones((16, 3)) / 3).passed
    assert "same output for all 16 images" in quality.check_variation(np.ones((16, 3))).summary()
    moving = np.ones((16, 3)) / 3
    moving[5, 0] += 0.01
    assert quality.check_variation(moving).passed
    assert not quality.check_variation(moving, min_range=0.02).passed
    assert quality.check_variation(np.ones((1, 3))).passed  # one frame proves nothing


def test_evaluate_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        quality.evaluate(np.zeros((3, 2)), np.zeros(4, np.int64), 2)
