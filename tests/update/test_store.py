"""On-disk state: atomic writes, the commit point, cleanup."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from edged.update import store as store_mod
from edged.update.store import ModelRecord, State, Store, atomic_write


def _record(version: int, file: str) -> ModelRecord:
    return ModelRecord("digits", version, "ab" * 32, file, "cd" * 32, transfer_id=f"t{version}")


def test_state_round_trips(tmp_path: Path) -> None:
    store = Store(tmp_path)
    state = State(
        active=_record(2, "2-cdcdcdcdcdcd.edgb"),
        previous=_record(1, "/etc/edged/digits.edgb"),
        highest_version=2,
        last_command_issued=1700000000.5,
        last_update={"transfer_id": "t2", "status": "accepted"},
        answered=["t1", "t2"],
    )
    store.save(state)
    assert store.load() == state
    assert oct(store.dir.stat().st_mode & 0o777) == "0o700"


def test_no_state_is_an_empty_state(tmp_path: Path) -> None:
    assert Store(tmp_path / "nowhere").load() == State()


def test_a_corrupt_state_is_set_aside(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_dir()
    store.state_path.write_text("{not json")
    assert store.load() == State()
    assert (store.dir / "state.json.bad").exists() and not store.state_path.exists()


def test_a_crash_before_the_rename_leaves_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    old = State(active=_record(1, "1-cdcdcdcdcdcd.edgb"), highest_version=1)
    store.save(old)

    def crash(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "simulated power cut")

    monkeypatch.setattr(os, "replace", crash)
    new = State(active=_record(2, "2-cdcdcdcdcdcd.edgb"), previous=old.active, highest_version=2)
    with pytest.raises(OSError, match="simulated"):
        store.save(new)
    monkeypatch.undo()
    assert store.load() == old
    assert sorted(p.name for p in store.dir.iterdir()) == ["state.json"]  # no temp file left


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_a_failed_write_raises_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    path = tmp_path / "f.json"
    atomic_write(path, b"old")

    def fail(fd: int, data: object) -> int:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "write", fail)
    with pytest.raises(OSError) as exc:
        atomic_write(path, b"new")
    assert exc.value.errno == err
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_install_renames_and_cleanup_keeps_active_and_previous(tmp_path: Path) -> None:
    store = Store(tmp_path)
    names = []
    for v in (1, 2, 3):
        part = store.part_path(f"t{v}")
        part.write_bytes(b"x")
        names.append(store.install(part, v, f"{v:x}" * 64))
    assert names == ["1-111111111111.edgb", "2-222222222222.edgb", "3-333333333333.edgb"]
    (store.dir / "current.edgb").write_bytes(b"installed by hand: not ours")
    (store.dir / ".t9.part").write_bytes(b"a transfer cut short")
    state = State(active=_record(3, names[2]), previous=_record(2, names[1]))
    assert store.cleanup(state, keep=store.dir / names[0]) == [".t9.part"]  # model.path
    assert store.cleanup(state) == [names[0]]
    assert sorted(p.name for p in store.dir.iterdir()) == [
        "2-222222222222.edgb", "3-333333333333.edgb", "current.edgb",
    ]  # fmt: skip


def test_answered_transfer_ids_are_bounded() -> None:
    state = State()
    for i in range(100):
        state.remember(f"t{i}")
    state.remember("t99")
    assert len(state.answered) == store_mod.MAX_ANSWERED and state.answered[-1] == "t99"


def test_activate_keeps_every_model_served_up_to_keep_and_cleanup_spares_them(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    store.ensure_dir()
    boot = ModelRecord("boot", 0, "ef" * 32, "/etc/edged/boot.tflite")
    state = State(active=boot)
    records = [_record(v, f"{v}-{v:012x}.edgb") for v in range(2, 7)]
    for r in records:
        (store.dir / r.file).write_bytes(b"x")
        state.activate(r, keep=3)
    assert state.active == records[-1]
    assert [r.version for r in state.kept()] == [5, 4, 3]  # boot (0) and v2 fell off
    state.activate(records[1], keep=3)  # back to v3: it leaves the kept list, v6 joins it
    assert state.active is records[1]
    assert [r.version for r in state.kept()] == [6, 5, 4]
    state.offer_seen("cam-1", 5.0)
    store.save(state)
    assert store.load() == state
    removed = store.cleanup(state)
    assert removed == ["2-000000000002.edgb"]
    assert sorted(p.name for p in store.dir.glob("*.edgb")) == [r.file for r in records[1:]]
