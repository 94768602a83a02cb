"""``model.threads = "auto"``: measured once per model, kept in the state dir, bounded."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edged.config import ModelConfig
from edged.model import autothreads
from edged.model.runtime import available_backends, load_interpreter
from tests.daemon import DEMO_MODEL
from tests.model.test_tiny_models import tiny_model


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(autothreads, "_memo", {})
    monkeypatch.setattr(autothreads, "_cache_dir", None)
    yield


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """measure() replaced: 2 threads win on a pretend 4-core machine; each call recorded."""
    calls: list[bytes] = []

    def fake(model: bytes, backend: str, n: int) -> tuple[int, dict[int, float]]:
        calls.append(model)
        return 2, {1: 10.0, 2: 19.0, 3: 19.5, 4: 19.0}

    monkeypatch.setattr(autothreads, "measure", fake)
    monkeypatch.setattr(autothreads, "cores", lambda: 4)
    return calls


@given(st.dictionaries(st.integers(1, 16), st.floats(0.01, 1e4), min_size=1))
def test_pick_is_the_fastest_unless_a_smaller_count_is_nearly_as_fast(
    rates: dict[int, float],
) -> None:
    n = autothreads.pick(rates)
    assert n in rates
    # No count beats the chosen one by more than the margin...
    assert all(r <= rates[n] * (1 + autothreads.PREFER_FEWER) ** len(rates) for r in rates.values())
    # ...and the chosen one beats every smaller count by the margin (or is the smallest).
    smaller = [m for m in rates if m < n]
    assert all(rates[n] > rates[m] for m in smaller)


def test_pick_prefers_fewer_threads_within_the_margin() -> None:
    assert autothreads.pick({1: 100.0, 2: 104.0}) == 1
    assert autothreads.pick({1: 100.0, 2: 110.0}) == 2
    assert autothreads.pick({1: 100.0, 2: 180.0, 3: 181.0, 4: 150.0}) == 2


def test_measured_once_per_model_and_kept_in_the_state_dir(
    tmp_path: Path, measured: list[bytes]
) -> None:
    autothreads.use_cache_dir(tmp_path)
    assert autothreads.choose(b"model-a", "litert") == 2
    assert autothreads.choose(b"model-a", "litert") == 2
    assert measured == [b"model-a"]
    cache = json.loads((tmp_path / autothreads.CACHE_NAME).read_text())
    assert list(cache.values()) == [2]
    # A new process (memory empty) reads the file instead of measuring again.
    autothreads._memo.clear()
    assert autothreads.choose(b"model-a", "litert") == 2 and measured == [b"model-a"]
    # Another model (an update) is measured.
    assert autothreads.choose(b"model-b", "litert") == 2
    assert measured == [b"model-a", b"model-b"]


def test_a_damaged_or_foreign_cache_is_measured_again(
    tmp_path: Path, measured: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    autothreads.use_cache_dir(tmp_path)
    path = tmp_path / autothreads.CACHE_NAME
    path.write_text("{not json")
    assert autothreads.choose(b"m", "litert") == 2 and len(measured) == 1
    assert "ignoring" in caplog.text
    key = next(iter(json.loads(path.read_text())))
    for bad in (0, 99, "2", True, None):  # out of range for 4 cores, or not a count
        path.write_text(json.dumps({key: bad}))
        autothreads._memo.clear()
        assert autothreads.choose(b"m", "litert") == 2
    assert len(measured) == 6


def test_the_cache_stays_small(tmp_path: Path, measured: list[bytes]) -> None:
    autothreads.use_cache_dir(tmp_path)
    for i in range(autothreads.MAX_ENTRIES + 5):
        autothreads.choose(f"model-{i}".encode(), "litert")
    cache = json.loads((tmp_path / autothreads.CACHE_NAME).read_text())
    assert len(cache) == autothreads.MAX_ENTRIES


def test_an_unwritable_state_dir_costs_a_warning(
    tmp_path: Path, measured: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    autothreads.use_cache_dir(blocker / "state")  # a file where a directory should be
    assert autothreads.choose(b"m", "litert") == 2
    assert "cannot keep the thread choice" in caplog.text


def test_a_real_measurement_is_bounded_and_loads_with_the_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(autothreads, "BUDGET_S", 0.2)
    model = tiny_model()
    backend = available_backends()[0]
    t0 = time.monotonic()
    chosen, rates = autothreads.measure(model, backend, 2, budget_s=0.2)
    assert time.monotonic() - t0 < 5.0
    assert set(rates) == {1, 2} and chosen in rates and all(r > 0 for r in rates.values())
    autothreads.use_cache_dir(tmp_path)
    interp, _ = load_interpreter(model, threads="auto", backend=backend)
    assert interp is not None and (tmp_path / autothreads.CACHE_NAME).exists()


def test_config_takes_auto_or_a_count() -> None:
    assert ModelConfig(path=DEMO_MODEL).threads == "auto"
    assert ModelConfig(path=DEMO_MODEL, threads=3).threads == 3
    for bad in ("fast", -1, 65):
        with pytest.raises(ValidationError):
            ModelConfig(path=DEMO_MODEL, threads=bad)
