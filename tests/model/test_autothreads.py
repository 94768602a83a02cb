"""``model.threads = "auto"``: a plan (interpreters x threads) measured once per model, kept
in the state dir, bounded."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edged.config import ModelConfig
from edged.model import autothreads
from edged.model.autothreads import Plan
from edged.model.classifier import Classifier
from edged.model.runtime import available_backends, load_interpreter, load_interpreters
from tests.daemon import DEMO_MODEL
from tests.model.test_tiny_models import tiny_model


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(autothreads, "_memo", {})
    monkeypatch.setattr(autothreads, "_cache_dir", None)
    monkeypatch.setattr(autothreads, "_running", None)
    yield


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """measure() replaced: 2x1 wins on a pretend 4-core machine; each call recorded."""
    calls: list[bytes] = []

    def fake(model: bytes, backend: str, plans: list[Plan]) -> tuple[Plan, dict[Plan, float]]:
        calls.append(model)
        assert plans == autothreads.candidates(4, None, autothreads.memory_cap(len(model)))
        return Plan(2, 1), {Plan(1, 1): 10.0, Plan(1, 2): 17.0, Plan(2, 1): 19.0}

    monkeypatch.setattr(autothreads, "measure", fake)
    monkeypatch.setattr(autothreads, "cores", lambda: 4)
    return calls


plans = st.builds(Plan, st.integers(1, 4), st.integers(1, 8))


@given(st.dictionaries(plans, st.floats(0.01, 1e4), min_size=1))
def test_pick_is_the_fastest_unless_a_cheaper_plan_is_nearly_as_fast(
    rates: dict[Plan, float],
) -> None:
    chosen = autothreads.pick(rates)
    assert chosen in rates
    # No plan beats the chosen one by more than the margin, compounded along the chain...
    margin = (1 + autothreads.PREFER_FEWER) ** len(rates)
    assert all(r <= rates[chosen] * margin for r in rates.values())
    # ...and the chosen one beats every cheaper plan (or is the cheapest).
    cheaper = [p for p in rates if p.cost < chosen.cost]
    assert all(rates[chosen] > rates[p] for p in cheaper)


def test_pick_prefers_the_cheaper_plan_within_the_margin() -> None:
    assert autothreads.pick({Plan(1, 1): 100.0, Plan(1, 2): 104.0}) == Plan(1, 1)
    assert autothreads.pick({Plan(1, 1): 100.0, Plan(1, 2): 110.0}) == Plan(1, 2)
    # Same threads in all: single-threaded interpreters (nothing to wait for each other)
    # unless one interpreter of more threads is 5 % faster.
    assert autothreads.pick({Plan(1, 2): 104.0, Plan(2, 1): 100.0}) == Plan(2, 1)
    assert autothreads.pick({Plan(1, 2): 113.0, Plan(2, 1): 100.0}) == Plan(1, 2)


def test_candidates_fit_the_cores_cheapest_first() -> None:
    assert autothreads.candidates(1) == [Plan(1, 1)]
    assert autothreads.candidates(2) == [Plan(1, 1), Plan(2, 1), Plan(1, 2)]
    assert autothreads.candidates(4, max_interpreters=1) == [Plan(1, t) for t in range(1, 5)]
    four = autothreads.candidates(4)
    assert all(p.interpreters * p.threads <= 4 for p in four) and len(four) == 8
    assert [p.cost for p in four] == sorted(p.cost for p in four)
    assert max(p.interpreters for p in autothreads.candidates(64)) == autothreads.MAX_INTERPRETERS
    assert autothreads.candidates(4, interpreters=2) == [Plan(2, 1), Plan(2, 2)]


def test_auto_plans_no_more_interpreters_than_memory_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert 1 <= autothreads.memory_cap(3_500_000) <= autothreads.MAX_INTERPRETERS
    assert autothreads.memory_cap(1 << 50) == 1  # a model bigger than any memory: one
    seen: list[list[Plan]] = []

    def fake(model: bytes, backend: str, plans: list[Plan]) -> tuple[Plan, dict[Plan, float]]:
        seen.append(list(plans))
        return plans[-1], {p: 1.0 for p in plans}

    monkeypatch.setattr(autothreads, "measure", fake)
    monkeypatch.setattr(autothreads, "cores", lambda: 4)
    monkeypatch.setattr(autothreads, "memory_cap", lambda size: 1)
    assert autothreads.choose(b"huge", "litert").interpreters == 1
    assert all(p.interpreters == 1 for p in seen[0])
    assert autothreads.candidates(2, interpreters=3) == [Plan(3, 1)]  # asked for: given


@given(st.text(max_size=12))
def test_plan_parse_takes_only_its_own_form(text: str) -> None:
    plan = Plan.parse(text)
    assert plan is None or str(plan) == text


def test_measured_once_per_model_and_kept_in_the_state_dir(
    tmp_path: Path, measured: list[bytes]
) -> None:
    autothreads.use_cache_dir(tmp_path)
    assert autothreads.choose(b"model-a", "litert") == Plan(2, 1)
    assert autothreads.choose(b"model-a", "litert") == Plan(2, 1)
    assert measured == [b"model-a"]
    cache = json.loads((tmp_path / autothreads.CACHE_NAME).read_text())
    assert list(cache.values()) == ["2x1"]
    # A new process (memory empty) reads the file instead of measuring again.
    autothreads._memo.clear()
    assert autothreads.choose(b"model-a", "litert") == Plan(2, 1) and measured == [b"model-a"]
    # Another model (an update) is measured.
    assert autothreads.choose(b"model-b", "litert") == Plan(2, 1)
    assert measured == [b"model-a", b"model-b"]


def test_a_damaged_or_foreign_cache_is_measured_again(
    tmp_path: Path, measured: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    autothreads.use_cache_dir(tmp_path)
    path = tmp_path / autothreads.CACHE_NAME
    path.write_text("{not json")
    assert autothreads.choose(b"m", "litert") == Plan(2, 1) and len(measured) == 1
    assert "ignoring" in caplog.text
    key = next(iter(json.loads(path.read_text())))
    # Out of range for 4 cores, an old-style count, or not a plan at all:
    bad_values = (0, 2, "2", "9x9", "3x2", "1x0", " 2x1", True, None, [2, 1], "2x1\n")
    for bad in bad_values:
        path.write_text(json.dumps({key: bad}))
        autothreads._memo.clear()
        assert autothreads.choose(b"m", "litert") == Plan(2, 1)
    assert len(measured) == 1 + len(bad_values)
    # Deep nesting, a huge file, bytes that are no text: ignored with a warning, measured.
    for raw in (b"[" * 100_000, b" " * (autothreads.MAX_CACHE_BYTES + 1), b"\xff\xfe{"):
        path.write_bytes(raw)
        autothreads._memo.clear()
        assert autothreads.choose(b"m", "litert") == Plan(2, 1)
    assert len(measured) == 4 + len(bad_values)


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
    assert autothreads.choose(b"m", "litert") == Plan(2, 1)
    assert "cannot keep the thread choice" in caplog.text


def test_a_real_measurement_is_bounded_and_loads_with_the_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(autothreads, "BUDGET_S", 0.2)
    model = tiny_model()
    backend = available_backends()[0]
    plans = autothreads.candidates(2)
    t0 = time.monotonic()
    chosen, rates = autothreads.measure(model, backend, plans, budget_s=0.2)
    assert time.monotonic() - t0 < 5.0
    assert list(rates) == plans and chosen in rates and all(r > 0 for r in rates.values())
    autothreads.use_cache_dir(tmp_path)
    interp, _ = load_interpreter(model, threads="auto", backend=backend)
    assert interp is not None and (tmp_path / autothreads.CACHE_NAME).exists()
    interps, _, plan = load_interpreters(
        model, threads="auto", backend=backend, interpreters="auto"
    )
    assert len(interps) == plan.interpreters and plan in autothreads.candidates(autothreads.cores())


def test_two_interpreters_infer_at_once_and_agree() -> None:
    """A classifier holding two interpreters gives the same output from two threads at once
    as one interpreter does, and lets no more than two invoke together."""
    one = Classifier.load(DEMO_MODEL, threads=1)
    two = Classifier.load(DEMO_MODEL, threads=1, interpreters=2)
    assert (one.lanes, two.lanes) == (1, 2) and two.info.plan == Plan(2, 1)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(40)]
    tensors = [one.preprocess(im) for im in images]
    want = [one.infer(t)[0] for t in tensors]
    got: dict[int, np.ndarray] = {}

    def lane(start: int) -> None:
        for i in range(start, len(tensors), 2):
            got[i] = two.infer(tensors[i])[0]

    lanes = [threading.Thread(target=lane, args=(i,)) for i in range(2)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join(30)
    assert sorted(got) == list(range(len(tensors)))
    for i, w in enumerate(want):
        np.testing.assert_array_equal(got[i], w)


def test_config_takes_auto_or_a_count() -> None:
    assert ModelConfig(path=DEMO_MODEL).threads == "auto"
    assert ModelConfig(path=DEMO_MODEL).interpreters == "auto"
    assert ModelConfig(path=DEMO_MODEL, threads=3).threads == 3
    assert ModelConfig(path=DEMO_MODEL, interpreters="2").interpreters == 2
    for bad in ("fast", -1, 65):
        with pytest.raises(ValidationError):
            ModelConfig(path=DEMO_MODEL, threads=bad)
    bad_counts: list[object] = ["fast", 0, -1, 9, True, 1.5, "2x1", float("nan")]
    for bad_count in bad_counts:
        with pytest.raises(ValidationError, match="number of interpreters from 1 to 8"):
            ModelConfig.model_validate({"path": DEMO_MODEL, "interpreters": bad_count})


def test_an_explicit_thread_count_is_one_interpreter_unless_told() -> None:
    model = DEMO_MODEL.read_bytes()
    from edged.model.runtime import plan_for

    assert plan_for(2, model, "x") == Plan(1, 2)
    assert plan_for(1, model, "x", interpreters=3) == Plan(3, 1)
    assert plan_for(1, model, "x", interpreters="auto") == Plan(1, 1)


@given(st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.booleans(), st.none()))
def test_threads_and_interpreters_take_auto_or_a_count_and_nothing_else(value: object) -> None:
    """Any value: accepted as a count in range, or refused with the one clear line."""
    for key, low, high in (("threads", 0, 64), ("interpreters", 1, 8)):
        try:
            got = ModelConfig.model_validate({"path": DEMO_MODEL, key: value})
        except ValidationError as err:
            assert f"must be 'auto' or a number of {key} from {low} to {high}" in str(err)
            continue
        n = getattr(got, key)
        assert n == "auto" or (isinstance(n, int) and low <= n <= high)


def test_a_model_loaded_while_a_daemon_runs_gets_its_plan_for_now(
    tmp_path: Path, measured: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update arriving while the daemon classifies is not measured on cores the daemon is
    using: it runs with the daemon's plan, nothing is cached, and the next start measures."""
    autothreads.use_cache_dir(tmp_path)
    monkeypatch.setattr(autothreads, "_running", None)
    autothreads.daemon_running(Plan(1, 2))
    assert autothreads.choose(b"update", "litert") == Plan(1, 2)
    assert measured == [] and not (tmp_path / autothreads.CACHE_NAME).exists()
    assert autothreads.choose(b"update", "litert", interpreters=2) == Plan(2, 2)
    assert measured == []
    autothreads.daemon_running(None)
    assert autothreads.choose(b"update", "litert") == Plan(2, 1) and measured == [b"update"]


def test_a_fifo_or_a_directory_at_threads_json_is_ignored_not_waited_on(
    tmp_path: Path, measured: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    autothreads.use_cache_dir(tmp_path)
    path = tmp_path / autothreads.CACHE_NAME
    os.mkfifo(path)  # no writer: a blocking open() would wait for ever
    done: list[Plan] = []
    t = threading.Thread(target=lambda: done.append(autothreads.choose(b"m", "litert")))
    t.start()
    t.join(5)
    assert done == [Plan(2, 1)] and "not a regular file" in caplog.text
    path.unlink()
    path.mkdir()
    autothreads._memo.clear()
    assert autothreads.choose(b"m", "litert") == Plan(2, 1)  # measured; nothing kept
