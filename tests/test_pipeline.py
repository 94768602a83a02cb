"""The overlapped stages: the capture thread's Preparer and the post thread's PostStage."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged.app.daemon import Daemon
from edged.config import Config, FilesSource, ModelConfig, PublishConfig
from edged.frames.pipeline import PostStage, Preparer
from edged.infra.sdnotify import Notifier
from edged.model.classifier import Classifier
from edged.sources.base import Frame
from tests.daemon import DEMO_MODEL, SAMPLES
from tests.memory import MemoryBroker, memory_parts


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier.load(DEMO_MODEL)


def _frame(value: int, size: tuple[int, int] = (8, 8)) -> Frame:
    return Frame(np.full((*size, 3), value, np.uint8))


def test_prepared_tensor_is_what_classify_feeds(clf: Classifier) -> None:
    prep = Preparer(lambda: clf)
    image = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    frame = Frame(image)
    prep(frame)
    assert frame.tensor is not None and frame.prepare_ms > 0
    np.testing.assert_array_equal(frame.tensor, clf.preprocess(image))
    assert Preparer.tensor_for(frame, clf) is frame.tensor
    raw, invoke_ms = clf.infer(frame.tensor)
    pred = clf.classify(image)
    assert invoke_ms > 0 and clf.postprocess(raw, 3) == pred.top


def test_buffers_are_reused_and_never_shared(clf: Classifier) -> None:
    prep = Preparer(lambda: clf)
    a, b = _frame(10), _frame(200)
    prep(a)
    prep(b)
    assert a.tensor is not None and b.tensor is not None
    assert not np.shares_memory(a.tensor, b.tensor)  # both alive: two buffers
    held = a.tensor
    prep.release(a)
    assert a.tensor is None and a.prepared is None
    c = _frame(99)
    prep(c)
    assert c.tensor is held  # the released buffer, reused: no allocation
    assert int(b.tensor.max()) != int(c.tensor.max())  # b untouched by c's preparation


def test_a_frame_prepared_for_a_replaced_model_is_prepared_again(
    clf: Classifier, tmp_path: Path
) -> None:
    current = [clf]
    prep = Preparer(lambda: current[0])
    frame = _frame(50)
    prep(frame)
    other = Classifier.load(DEMO_MODEL)
    current[0] = other
    tensor = Preparer.tensor_for(frame, other)
    assert tensor is other.preprocessor.buffer and tensor is not frame.tensor
    prep.release(frame)  # a buffer of the old model is not pooled for the new one
    fresh = _frame(60)
    prep(fresh)
    assert fresh.prepared is not None and fresh.prepared.model is other


def test_paused_or_unpreparable_frames_are_left_to_the_frame_loop(clf: Classifier) -> None:
    prep = Preparer(lambda: clf)
    prep.active = False
    frame = _frame(1)
    prep(frame)
    assert frame.tensor is None
    prep.active = True
    bad = Frame(np.zeros((8, 8, 3), np.float32))  # not uint8: the frame loop reports it
    prep(bad)
    assert bad.tensor is None
    with pytest.raises(ValueError, match="uint8"):
        Preparer.tensor_for(bad, clf)


def test_post_stage_keeps_order_and_finishes_everything_on_close() -> None:
    done: list[int] = []

    def work(i: int) -> None:
        time.sleep(0.001)
        done.append(i)

    stage: PostStage[int] = PostStage(work, lambda: None)
    stage.start()
    for i in range(50):
        stage.submit(i)
    assert stage.close(5.0)
    assert done == list(range(50))


def test_post_stage_applies_back_pressure() -> None:
    gate = threading.Event()

    def work(i: int) -> None:
        gate.wait(5)

    stage: PostStage[int] = PostStage(work, lambda: None, depth=2)
    stage.start()
    submitted: list[int] = []

    def producer() -> None:
        for i in range(5):
            stage.submit(i)
            submitted.append(i)

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.3)
    # One item being finished, two queued: the producer waits for room.
    assert submitted == [0, 1, 2]
    gate.set()
    t.join(5)
    assert submitted == [0, 1, 2, 3, 4]
    assert stage.close(5.0)


def test_post_stage_error_stops_and_is_kept() -> None:
    stopped = threading.Event()
    seen: list[int] = []

    def finish(i: int) -> None:
        if i == 3:
            raise RuntimeError("broken output")
        seen.append(i)

    stage: PostStage[int] = PostStage(finish, stopped.set)
    stage.start()
    for i in range(10):
        stage.submit(i)
    assert stopped.wait(5)
    assert isinstance(stage.error, RuntimeError) and seen == [0, 1, 2]
    stage.submit(11)  # dropped: the stage has failed
    stage.close(1.0)
    assert seen == [0, 1, 2]


def test_daemon_raises_an_error_from_the_post_thread(
    clf: Classifier, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An exception while publishing a result is not lost in a thread: run() raises it."""
    broker = MemoryBroker()
    cfg = Config(
        device_id="cam-1",
        state_dir=tmp_path / "state",
        source=FilesSource(path=str(SAMPLES), fps=50, loop=True),
        model=ModelConfig(path=DEMO_MODEL),
        publish=PublishConfig(mode="every", spool=False),
    )
    daemon = Daemon(cfg, parts=memory_parts(broker, clf), notifier=Notifier({}))
    calls = [0]
    real = clf.postprocess

    def flaky(raw: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        calls[0] += 1
        if calls[0] > 5:
            raise RuntimeError("label table corrupted")
        return real(raw, top_k)

    monkeypatch.setattr(clf, "postprocess", flaky)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="label table corrupted"):
        daemon.run()
    assert (
        time.monotonic() - started < 5 and daemon.seq == 4
    )  # the warm-up inference was the first call
    assert len(broker.on("edged/cam-1/prediction")) == 4


def test_inline_post_stage_finishes_in_the_caller() -> None:
    done: list[tuple[int, str]] = []
    stage: PostStage[int] = PostStage(
        lambda i: done.append((i, threading.current_thread().name)), lambda: None, inline=True
    )
    stage.start()
    stage.submit(1)
    assert done == [(1, threading.current_thread().name)] and stage.close(0.1)


@pytest.mark.parametrize(
    ("threads", "interpreters", "overlap"), [(1, 1, True), (0, 1, False), (1, 0, False)]
)
def test_daemon_overlaps_only_with_a_core_to_spare(
    threads: int, interpreters: int, overlap: bool, tmp_path: Path
) -> None:
    """The interpreters' threads together decide: 1x1 leaves a core (on 2+ cores); 1xN and
    Nx1 (N = cores) take them all. interpreters 0 here: one per core."""
    cores = os.cpu_count() or 1
    if cores == 1 and overlap:
        pytest.skip("one core: nothing to overlap on")
    clf = Classifier.load(DEMO_MODEL, threads=threads, interpreters=interpreters or cores)
    cfg = Config(
        device_id="cam-1",
        state_dir=tmp_path / "state",
        source=FilesSource(path=str(SAMPLES)),
        model=ModelConfig(path=DEMO_MODEL, threads=threads),
        publish=PublishConfig(spool=False),
    )
    daemon = Daemon(cfg, parts=memory_parts(MemoryBroker(), clf), notifier=Notifier({}))
    assert daemon.instance is None  # the constructor takes nothing: open() does
    daemon.open()
    assert daemon.overlap is overlap and daemon.post.inline is not overlap
    assert daemon.preparer.active  # preparation overlaps either way
    daemon.close()
    assert daemon.instance is not None and not daemon.instance.held


@settings(max_examples=60, deadline=None)
@given(
    order=st.permutations(list(range(12))),
    skipped=st.sets(st.integers(0, 11), max_size=4),
    inline=st.booleans(),
)
def test_post_stage_finishes_in_ticket_order_whatever_order_results_come_in(
    order: list[int], skipped: set[int], inline: bool
) -> None:
    """Results of several interpreters come back in any order (and some frames have none):
    they are finished in ticket order, each once, none lost."""
    done: list[int] = []
    stage: PostStage[int] = PostStage(done.append, lambda: None, depth=16, inline=inline)
    stage.start()
    for ticket in order:
        if ticket in skipped:
            stage.skip(ticket)
        else:
            stage.submit(ticket, ticket)
    assert stage.close(5.0)
    assert done == [t for t in range(12) if t not in skipped]


def test_inline_post_stage_never_makes_a_lane_wait_for_another() -> None:
    """Inline: a result whose ticket is not due is left, and the submitter goes on at once;
    the lane whose ticket is due finishes its own and the ones left meanwhile."""
    done: list[tuple[int, str]] = []
    stage: PostStage[int] = PostStage(
        lambda i: done.append((i, threading.current_thread().name)), lambda: None, inline=True
    )
    late = threading.Thread(target=stage.submit, args=(1, 1), name="lane-b")
    late.start()
    late.join(1.0)
    assert not late.is_alive() and done == []  # ticket 1 left: ticket 0 is due
    stage.submit(0, 0)  # lane 0's result: it finishes 0, then 1
    me = threading.current_thread().name
    assert done == [(0, me), (1, me)]


def test_close_finishes_what_waits_behind_a_ticket_that_never_comes() -> None:
    for inline in (False, True):
        done: list[int] = []
        stage: PostStage[int] = PostStage(done.append, lambda: None, inline=inline)
        stage.start()
        stage.submit(0, 0)
        stage.submit(2, 2)  # ticket 1's lane stopped without a result
        stage.submit(3, 3)
        t0 = time.monotonic()
        assert stage.close(5.0)
        assert done == [0, 2, 3] and time.monotonic() - t0 < 1.0
