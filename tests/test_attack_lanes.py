"""Adversarial checks of plans and lanes (issue 14): a hostile ``threads.json``, ``bench
--plans`` garbage, finite sources, failures and stops at awkward moments with several lanes."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged import cli
from edged.app.daemon import Daemon
from edged.frames.pipeline import PostStage
from edged.model import autothreads
from edged.model.autothreads import Plan
from edged.model.classifier import Classifier
from edged.sources.base import Frame
from tests.daemon import DEMO_MODEL, SAMPLES
from tests.memory import assert_in_capture_order, files_daemon, predictions

TOPIC = "edged/cam-1"
NAMES = sorted(p.name for p in SAMPLES.iterdir())


@pytest.fixture
def fresh_autothreads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(autothreads, "_memo", {})
    monkeypatch.setattr(autothreads, "_cache_dir", None)
    yield


def _lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edged-lane-")]


# -- threads.json ------------------------------------------------------------------------


def test_a_fifo_named_threads_json_does_not_hang_choose(
    tmp_path: Path, fresh_autothreads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO (no writer) at <state_dir>/threads.json: open() would block forever."""
    os.mkfifo(tmp_path / autothreads.CACHE_NAME)
    autothreads.use_cache_dir(tmp_path)
    monkeypatch.setattr(autothreads, "cores", lambda: 2)
    monkeypatch.setattr(
        autothreads, "measure", lambda m, b, plans: (plans[0], {p: 1.0 for p in plans})
    )
    out: list[Plan] = []
    worker = threading.Thread(target=lambda: out.append(autothreads.choose(b"m", "x")), daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock the reader so the thread ends
        fd = os.open(tmp_path / autothreads.CACHE_NAME, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(5)
        pytest.fail("choose() blocked on a FIFO named threads.json")
    assert out == [Plan(1, 1)]


hostile = st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode()),
    st.sampled_from(["0x1", "1x0", "5x1", "99x99", "2x1 ", "２x１", "-1x1", "1x1\n"]).map(
        lambda v: v.encode()
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=hostile, as_value=st.booleans())
def test_hostile_threads_json_gives_a_plan_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, as_value: bool
) -> None:
    monkeypatch.setattr(autothreads, "_memo", {})
    monkeypatch.setattr(autothreads, "cores", lambda: 2)
    monkeypatch.setattr(
        autothreads, "measure", lambda m, b, plans: (plans[-1], {p: 1.0 for p in plans})
    )
    autothreads.use_cache_dir(tmp_path)
    try:
        key = autothreads._key(b"m", "x", 2, None)
        path = tmp_path / autothreads.CACHE_NAME
        if as_value:  # the value under the right key is the garbage
            try:
                value = json.loads(content)
            except ValueError:
                value = content.decode("latin-1")
            path.write_text(json.dumps({key: value}))
        else:
            path.write_bytes(content)
        plan = autothreads.choose(b"m", "x")
        assert plan in autothreads.candidates(2, None, autothreads.memory_cap(1))
        # and the file is usable again afterwards
        assert Plan.parse(json.loads(path.read_text())[key]) == plan
    finally:
        autothreads.use_cache_dir(None)


# -- bench --plans -----------------------------------------------------------------------


@pytest.mark.parametrize("garbage", ["²", "1x²", "x", "2,,1", "0", "1x0", "+1", "1_0"])
def test_bench_plans_garbage_is_one_usage_line(
    garbage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["bench", "/nonexistent.tflite", "--plans", garbage, "--rounds", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("edged: error: --plans"), err


# -- finite sources ----------------------------------------------------------------------


@pytest.mark.parametrize("many_cores", [False, True], ids=["inline", "post-thread"])
def test_finite_source_publishes_every_file_once_with_three_lanes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, many_cores: bool
) -> None:
    if many_cores:  # 3x1 on "16 cores": the post-thread mode with several lanes
        monkeypatch.setattr(autothreads, "cores", lambda: 16)
    clf = Classifier.load(DEMO_MODEL, threads=1, interpreters=3)
    daemon, broker = files_daemon(tmp_path, clf, fps=1000, loop=False)
    t0 = time.monotonic()
    assert daemon.run() == 0
    assert time.monotonic() - t0 < 30
    assert daemon.overlap is many_cores
    events = predictions(broker)
    assert sorted(str(e["frame"]) for e in events) == NAMES
    assert_in_capture_order(events)
    assert not _lane_threads()


# -- failures and stops ------------------------------------------------------------------


def test_ask_ahead_infer_failure_asks_for_one_frame_not_two(tmp_path: Path) -> None:
    """With ask-ahead (a core spare), a frame whose inference fails (a new model reported for
    rollback) must not leave an extra frame request behind: each one read ahead is a frame
    queued for good (stale by the time it is taken, up to 8 of them)."""
    clf = Classifier.load(DEMO_MODEL, threads=1, interpreters=1)
    daemon, _ = files_daemon(tmp_path, clf, fps=1000, loop=True)
    daemon.open()
    try:
        daemon.overlap = True  # a core spare: the next frame is asked for ahead
        daemon.post = PostStage(daemon._finish, on_error=lambda: None, inline=True)
        asked = [0]
        daemon.capture.request = lambda: asked.__setitem__(0, asked[0] + 1)  # type: ignore[method-assign]

        class Rollback:
            def failure(self, reason: str) -> bool:
                return True

        daemon.monitor = Rollback()  # type: ignore[assignment]

        def broken(tensor: np.ndarray) -> tuple[np.ndarray, float]:
            raise RuntimeError("new model broke")

        clf.infer = broken  # type: ignore[method-assign]
        img = np.zeros((32, 32, 3), np.uint8)
        for i in range(5):
            assert daemon.infer(Frame(image=img, ticket=i)) is None
        assert asked[0] == 5
    finally:
        daemon.close()


def _run_in_thread(daemon: Daemon) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def go() -> None:
        try:
            result.append(daemon.run())
        except BaseException as err:
            result.append(err)

    runner = threading.Thread(target=go)
    runner.start()
    return runner, result


def _wait(pred: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)


@pytest.mark.parametrize("moment", ["mid-invoke", "paused", "after-swap", "pause-resume"])
def test_stop_at_awkward_moments_with_three_lanes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    clf = Classifier.load(DEMO_MODEL, threads=1, interpreters=3)
    daemon, broker = files_daemon(tmp_path, clf, fps=300, loop=True)
    slow = threading.Event()
    real = clf.infer

    def maybe_slow(tensor: np.ndarray) -> tuple[np.ndarray, float]:
        if slow.is_set():
            time.sleep(0.8)
        return real(tensor)

    monkeypatch.setattr(clf, "infer", maybe_slow)
    runner, result = _run_in_thread(daemon)
    try:
        _wait(lambda: len(predictions(broker)) >= 60)
        if moment == "mid-invoke":
            slow.set()
            time.sleep(0.3)  # every lane is in a slow invoke now
        elif moment in ("paused", "pause-resume"):
            with daemon.settings_lock:
                daemon.set_paused(True)
            time.sleep(0.5)
            if moment == "pause-resume":
                n = len(predictions(broker))
                with daemon.settings_lock:
                    daemon.set_paused(False)
                _wait(lambda: len(predictions(broker)) >= n + 60)
        else:
            daemon.classifier = Classifier.load(DEMO_MODEL, threads=1, interpreters=2)
    finally:
        t0 = time.monotonic()
        daemon.request_stop()
        runner.join(15)
    took = time.monotonic() - t0
    assert not runner.is_alive()
    assert result == [0], result
    assert took < 3.0, took
    assert not _lane_threads()
    events = predictions(broker)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    if moment != "pause-resume":
        assert_in_capture_order(events)
    else:  # frames before the pause and after the resume are each in capture order
        frames = [NAMES.index(str(e["frame"])) for e in events]
        gaps = [b - a for a, b in itertools.pairwise(frames) if (b - a) % 20 != 1]
        assert len(gaps) <= 1, gaps
