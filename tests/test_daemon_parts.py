"""The daemon built from injected parts: nothing happens in the constructor, features are
explicit, and the frame path reads only the frames the interpreter takes."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from edged.app.compose import production_daemon
from edged.app.daemon import Daemon
from edged.app.instance import LOCK_NAME, InstanceError
from edged.app.parts import Features, Loaded, Parts
from edged.config import Config, FilesSource, ModelConfig, MqttConfig, PublishConfig
from edged.errors import EdgedError
from edged.infra.sdnotify import Notifier
from edged.model.classifier import Classifier
from tests.daemon import DEMO_MODEL
from tests.fakes import CountingSource


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier.load(DEMO_MODEL, threads=1)


def _free_port() -> int:
    with socket.socket() as s:  # nothing listens there: publishing queues, nothing fails
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cfg(tmp_path: Path, threads: int | str = 1) -> Config:
    return Config(
        device_id="cam-1",
        state_dir=tmp_path / "state",
        source=FilesSource(path="-"),
        model=ModelConfig(path=DEMO_MODEL, threads=threads),
        mqtt=MqttConfig(host="127.0.0.1", port=_free_port()),
        publish=PublishConfig(mode="every", spool=False),
    )


def test_the_constructor_loads_locks_and_starts_nothing(tmp_path: Path) -> None:
    called: list[str] = []

    def load(_cfg: Config) -> Loaded:
        called.append("load")
        raise AssertionError("not in the constructor")

    threads = threading.active_count()
    Daemon(_cfg(tmp_path), parts=Parts(load_model=load), notifier=Notifier({}))
    assert called == [] and threading.active_count() == threads
    assert not (tmp_path / "state").exists()  # no lock file, no spool, no state dir


def test_open_takes_the_lock_and_close_gives_it_back(tmp_path: Path, clf: Classifier) -> None:
    first = Daemon(_cfg(tmp_path), classifier=clf, notifier=Notifier({}))
    first.open()
    assert (tmp_path / "state" / LOCK_NAME).exists()
    second = Daemon(_cfg(tmp_path), classifier=clf, notifier=Notifier({}))
    with pytest.raises(InstanceError):
        second.open()
    first.close()
    second.open()  # free again
    second.close()


def test_a_failing_loader_leaves_the_lock_free(tmp_path: Path) -> None:
    def load(_cfg: Config) -> Loaded:
        raise EdgedError("model gone")

    daemon = Daemon(_cfg(tmp_path), parts=Parts(load_model=load), notifier=Notifier({}))
    with pytest.raises(EdgedError, match="model gone"):
        daemon.open()
    assert daemon.instance is not None and not daemon.instance.held


def test_features_are_what_they_say(tmp_path: Path, clf: Classifier) -> None:
    bare = Daemon(_cfg(tmp_path), classifier=clf, notifier=Notifier({}))
    bare.open()
    assert (bare.extras.updater, bare.extras.ha, bare.extras.control) == (None, None, None)
    bare.close()
    cfg = _cfg(tmp_path)
    full = Features.from_config(cfg)
    assert full.updates and full.homeassistant and full.control == cfg.control.enabled
    prod = production_daemon(cfg, notifier=Notifier({}))
    assert prod.features == full and prod.instance is None
    prod.open()
    assert prod.extras.updater is not None and prod.extras.ha is not None
    prod.close()
    # Updates without the update state a loader gives are refused, not silently dropped.
    odd = Daemon(cfg, classifier=clf, features=Features(updates=True), notifier=Notifier({}))
    with pytest.raises(EdgedError, match="update state"):
        odd.open()


@pytest.mark.parametrize("threads", [1, 0])
def test_only_the_frames_the_interpreter_takes_are_read(
    tmp_path: Path, clf: Classifier, threads: int
) -> None:
    """A source faster than the model: every frame read is classified (the one asked for
    last may be pending at the stop), none read just to be dropped."""
    src = CountingSource((40, 30, 3))
    parts = Parts(load_model=lambda _c: Loaded(clf), make_source=lambda _c, _s: src)
    daemon = Daemon(_cfg(tmp_path, threads), parts=parts, notifier=Notifier({}))
    runner = threading.Thread(target=daemon.run)
    runner.start()
    deadline = time.monotonic() + 10
    while daemon.processed < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    daemon.request_stop()
    runner.join(10)
    assert not runner.is_alive() and daemon.processed >= 50
    assert daemon.processed <= src.reads <= daemon.processed + 1
    # (a read under way at the stop is not offered)
    assert daemon.capture.dropped == 0 and src.reads - 1 <= daemon.capture.frames <= src.reads
