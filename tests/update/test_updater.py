"""The updater in-process (a stand-in publisher and frame loop): disk failures and crashes
between steps leave the old model live and the old state committed."""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from edged.config import Config, parse_config
from edged.infra import util as util_mod
from edged.model.classifier import Classifier
from edged.publish.mqtt import Publisher
from edged.publish.topics import Topics, chunk_topic
from edged.update.models import boot
from edged.update.monitor import ServiceMonitor
from edged.update.store import Store
from edged.update.transfer import Offer, make_offer
from edged.update.updater import Updater
from edged.update.validate import Validator
from tests.daemon import DEMO_MODEL, SAMPLES
from tests.update.bundles import Keys, make_bundle, make_keys


class FakePublisher:
    def __init__(self) -> None:
        self.topics = Topics("edged", "cam-1")
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.published: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.append(topic)

    def unsubscribe(self, topic: str) -> None:
        self.unsubscribed.append(topic)

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        with self._cond:
            self.published.append((topic, bytes(payload), retain))  # type: ignore[arg-type]
            self._cond.notify_all()

    def results(self) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(p) for t, p, _ in self.published if t.endswith("/update/result")]

    def wait_result(self, n: int = 1, timeout: float = 20.0) -> dict[str, Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.results()) >= n, timeout), self.published
            return self.results()[n - 1]

    def model_state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(
            [p for t, p, _ in self.published if t == "edged/cam-1/model"][-1]
        )
        return state


class FrameLoop:
    """Takes swaps like the daemon's frame loop does."""

    def __init__(self, updater: Updater, classifier: Classifier) -> None:
        self.updater, self.classifier = updater, classifier
        self.swaps = 0
        self.monitor: ServiceMonitor | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            swap = self.updater.slot.take()
            if swap is not None:
                old, self.classifier = self.classifier, swap.classifier
                self.monitor = swap.monitor
                swap.complete(old, time.monotonic())
                self.swaps += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


def _config(tmp_path: Path, keys: Keys, **update: Any) -> Config:
    return parse_config(
        {
            "device_id": "cam-1",
            "state_dir": str(tmp_path / "state"),
            "source": {"type": "files", "path": str(SAMPLES)},
            "model": {"path": str(DEMO_MODEL)},
            "update": {"trusted_keys": [str(keys.public_path)], "monitor_frames": 3, **update},
        },
        {},
    )


class Rig:
    def __init__(self, cfg: Config, keys: Keys | None = None) -> None:
        self.cfg = cfg
        self.keys = keys
        self.pub = FakePublisher()
        b = boot(cfg)
        clf = b.classifier or Classifier.load(cfg.model.path)
        self.updater = Updater(cfg, cast(Publisher, self.pub), clf, b)
        self.loop = FrameLoop(self.updater, clf)
        self.updater.start()

    def deliver(self, data: bytes, version: int, tid: str) -> None:
        offer, chunks = self.offer(data, version, tid)
        self.updater.on_message("edged/cam-1/update/offer", offer.to_json())
        deadline = time.monotonic() + 5
        while chunk_topic("edged/cam-1", tid, 0) not in self.pub.subscribed:
            if self.pub.results():  # refused from the offer alone
                return
            assert time.monotonic() < deadline, "never subscribed to the chunks"
            time.sleep(0.01)
        for i, c in enumerate(chunks):
            self.updater.on_message(chunk_topic("edged/cam-1", tid, i), c)

    def offer(self, data: bytes, version: int, tid: str) -> tuple[Offer, list[bytes]]:
        """A signed offer for this device (the rig's keys)."""
        assert self.keys is not None
        return make_offer(
            data, transfer_id=tid, name="digits", version=version, chunk_size=16384,
            target="cam-1", key=self.keys.private,
        )  # fmt: skip

    def close(self) -> None:
        self.updater.stop()
        self.loop.stop()


@pytest.fixture
def rig(tmp_path: Path, keys: Keys) -> Iterator[Rig]:
    r = Rig(_config(tmp_path, keys), keys)
    yield r
    r.close()


def test_an_update_is_committed_then_swapped_in(rig: Rig, keys: Keys) -> None:
    rig.deliver(make_bundle(2, keys), 2, "t2")
    result = rig.pub.wait_result()
    assert (result["status"], result["version"], result["transfer_id"]) == ("accepted", 2, "t2")
    assert rig.loop.swaps == 1 and rig.loop.classifier.info.version == 2
    state = Store(rig.cfg.state_dir).load()
    assert state.active is not None and state.active.version == 2 and not state.active.confirmed
    assert state.previous is not None and state.previous.version == 1
    assert (Store(rig.cfg.state_dir).dir / state.active.file).is_file()
    assert rig.pub.model_state()["active"]["version"] == 2
    assert chunk_topic("edged/cam-1", "t2", 0) in rig.pub.unsubscribed


def _enospc(*args: object, **kwargs: object) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _assert_v1_live(rig: Rig) -> None:
    assert rig.loop.swaps == 0 and rig.loop.classifier.info.version == 1
    assert rig.updater.state.active is not None and rig.updater.state.active.version == 1
    state = Store(rig.cfg.state_dir).load()
    assert state.active is None or state.active.version == 1
    leftovers = [p.name for p in Store(rig.cfg.state_dir).dir.glob("*.edgb")]
    assert leftovers == []


def test_a_full_disk_at_the_commit_leaves_the_old_model(
    rig: Rig, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(util_mod, "write_all", _enospc)
    rig.deliver(make_bundle(2, keys), 2, "t2")
    result = rig.pub.wait_result()
    assert result["status"] == "rejected"
    assert result["reason"] == "cannot install the bundle: No space left on device"
    _assert_v1_live(rig)


def test_a_full_disk_while_receiving_leaves_the_old_model(
    rig: Rig, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "pwrite", _enospc)
    rig.deliver(make_bundle(2, keys), 2, "t2")
    result = rig.pub.wait_result()
    assert result["reason"] == "cannot write the bundle: No space left on device"
    _assert_v1_live(rig)


def test_a_read_only_state_dir_leaves_the_old_model(
    rig: Rig, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(self: Store, tid: str) -> Path:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Store, "part_path", read_only)
    rig.deliver(make_bundle(2, keys), 2, "t2")
    assert rig.pub.wait_result()["reason"] == "cannot store the bundle: Read-only file system"
    _assert_v1_live(rig)


def test_a_crash_between_install_and_commit_restarts_on_the_old_model(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, keys)
    rig = Rig(cfg, keys)
    try:
        real = os.replace
        calls = []

        def replace(src: Any, dst: Any) -> None:  # the bundle's rename works, the state's not
            calls.append(Path(dst).name)
            if Path(dst).name == "state.json":
                raise OSError(errno.EIO, "simulated power cut")
            real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        rig.deliver(make_bundle(2, keys), 2, "t2")
        assert "simulated power cut" in rig.pub.wait_result()["reason"]
        bundle = next(i for i, c in enumerate(calls) if c.startswith("2-"))
        assert "state.json" in calls[bundle:]  # the offer's own record may come first
    finally:
        rig.close()
        monkeypatch.undo()
    _assert_v1_live(rig)
    # A real power cut at that moment leaves the renamed bundle behind; the next start runs
    # the committed (old) model and removes it.
    models = Store(cfg.state_dir).dir
    orphan = models / "2-0123456789ab.edgb"
    orphan.write_bytes(make_bundle(2, keys))
    (models / ".t3.part").write_bytes(b"half a transfer")
    again = Rig(cfg, keys)
    try:
        assert again.loop.classifier.info.version == 1
        assert again.pub.model_state()["active"]["version"] == 1
        assert [p.name for p in models.iterdir() if p.name != "state.json"] == []
    finally:
        again.close()


def test_in_service_failure_rolls_back_to_the_previous_model(rig: Rig, keys: Keys) -> None:
    rig.deliver(make_bundle(2, keys), 2, "t2")
    assert rig.pub.wait_result()["status"] == "accepted"
    monitor = rig.loop.monitor  # travelled with the swap, as in the daemon
    assert monitor is not None
    monitor.failure("RuntimeError: invoke failed")  # what the frame loop reports
    result = rig.pub.wait_result(2)
    assert result["status"] == "rolled_back" and result["transfer_id"] == "t2"
    assert result["reason"] == "digits v2 failed in service: RuntimeError: invoke failed"
    assert rig.loop.swaps == 2 and rig.loop.classifier.info.version == 1
    state = Store(rig.cfg.state_dir).load()
    assert state.active is not None and state.active.version == 1
    assert state.previous is not None and state.previous.version == 2
    assert state.highest_version == 2  # v2 cannot come back by replay


def test_a_model_that_never_passes_probation_is_dropped_after_repeated_starts(
    tmp_path: Path, keys: Keys
) -> None:
    cfg = _config(tmp_path, keys)
    rig = Rig(cfg, keys)
    rig.deliver(make_bundle(2, keys), 2, "t2")
    assert rig.pub.wait_result()["status"] == "accepted"
    rig.close()  # "crashed" before its probation ended
    versions = []
    for _ in range(3):
        b = boot(cfg)
        versions.append(b.classifier.info.version if b.classifier else None)
    assert versions == [2, 2, 1]
    assert b.rolled_back is not None and "did not pass its probation" in b.rolled_back


def test_a_stop_during_validation_is_not_a_refusal(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    monkeypatch.setattr(Validator, "command", lambda self, path: slow)
    cfg = _config(tmp_path, keys)
    rig = Rig(cfg, keys)
    rig.deliver(make_bundle(2, keys), 2, "t2")
    time.sleep(0.5)  # validating
    t0 = time.monotonic()
    rig.close()
    assert time.monotonic() - t0 < 2.5
    assert rig.pub.results() == []  # nothing answered: the retained offer is tried again
    assert "t2" not in Store(cfg.state_dir).load().answered


def test_a_stalled_transfer_asks_again_then_gives_up(tmp_path: Path, keys: Keys) -> None:
    rig = Rig(_config(tmp_path, keys, transfer_timeout_s=0.6), keys)
    try:
        data = make_bundle(2, keys)
        offer, chunks = rig.offer(data, 2, "t2")
        rig.updater.on_message("edged/cam-1/update/offer", offer.to_json())
        time.sleep(0.2)
        rig.updater.on_message(chunk_topic("edged/cam-1", "t2", 0), chunks[0])
        result = rig.pub.wait_result(timeout=10)
        n = len(chunks)
        assert result["reason"] == (
            f"transfer stalled with 1 of {n} chunks (no chunk for 0.6 s: update.transfer_timeout_s)"
        )
        # Asked again, by exact topic, for the chunks it misses only.
        assert rig.pub.subscribed.count(chunk_topic("edged/cam-1", "t2", 0)) == 1
        assert all(
            rig.pub.subscribed.count(chunk_topic("edged/cam-1", "t2", i)) == 2 for i in range(1, n)
        )
        _assert_v1_live(rig)
        assert not list(Store(rig.cfg.state_dir).dir.glob(".*.part"))
    finally:
        rig.close()


def test_a_new_push_replaces_the_transfer_in_progress_and_old_offers_are_refused(
    rig: Rig, keys: Keys
) -> None:
    old = make_bundle(2, keys, pad=40_000)
    offer, chunks = rig.offer(old, 2, "old")
    rig.updater.on_message("edged/cam-1/update/offer", offer.to_json())
    rig.updater.on_message(chunk_topic("edged/cam-1", "old", 0), chunks[0])
    time.sleep(0.2)
    rig.deliver(make_bundle(3, keys), 3, "new")  # the same scope: replaces "old"
    result = rig.pub.wait_result()
    assert (result["transfer_id"], result["status"], result["version"]) == ("new", "accepted", 3)
    rig.updater.on_message("edged/cam-1/update/offer", b'{"transfer_id": "x"}')
    bad = rig.pub.wait_result(2)
    assert bad["status"] == "rejected" and bad["transfer_id"] is None
    assert bad["reason"] == "offer refused: offer has no name (1-128 printable characters)"
    rig.updater.on_message("edged/cam-1/update/offer", offer.to_json())  # recorded, replayed
    replay = rig.pub.wait_result(3)["reason"]
    assert replay.startswith("offer refused: transfer old was issued at") and "replay" in replay
    time.sleep(0.3)
    assert len(rig.pub.results()) == 3
