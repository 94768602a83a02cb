"""A spool on a full disk (edged.publish.spool_writer, seq): degrade to memory with one warning,
give the space back once the backlog has drained, and start again on a full disk.

A real small filesystem: a tmpfs mounted for the test (needs root / CAP_SYS_ADMIN; skipped with
the reason otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.publish.seq import open_outbox
from edged.publish.spool import SqliteOutbox
from edged.publish.spool_file import SPOOL_NAME
from edged.publish.spool_writer import GIVE_BACK_BYTES
from tests.publish.configs import spool_config

T = "edged/dev1/prediction"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_up(path: Path, leave: int = 0) -> Path:
    """A filler file that takes all the free space but ``leave`` bytes."""
    filler = path / f"filler-{len(list(path.glob('filler-*')))}"
    with open(filler, "wb") as fh:
        want = max(0, free_bytes(path) - leave)
        with contextlib.suppress(OSError):
            while want > 0:
                n = fh.write(b"\0" * min(want, 65536))
                want -= n
        with contextlib.suppress(OSError):
            fh.flush()
    return filler


def test_full_disk_memory_then_space_given_back_then_start_on_a_full_disk(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = small_fs / "state"
    box, seqs = open_outbox(spool_config(state))
    assert isinstance(box, SqliteOutbox)
    fill_up(small_fs, leave=600 * 1024)
    payload = b"p" * 1000
    with caplog.at_level(logging.INFO, logger="edged.spool"):
        for i in range(1500):  # ~1.5 MB: more than the disk has left
            seqs.next()
            box.append(T, b"%05d" % i + payload, 1, False)
            if i % 50 == 0:
                box.flush()
        box.flush()
        assert box._failing, "the disk never filled up"
        assert len(box) == 1500  # nothing lost: what the disk did not take waits in memory
        full_warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(full_warnings) == 1, [r.getMessage() for r in full_warnings]
        # The broker takes the backlog.
        while (batch := box.peek(0, 200)) and batch:
            for m in batch:
                box.ack(m.seq)
        box.flush()
        assert box.give_back()
    assert len(box) == 0 and not box._failing
    spool_size = sum(
        os.path.getsize(p) for p in state.glob(SPOOL_NAME + "*") if p.name != SPOOL_NAME + "-shm"
    )
    assert spool_size < 64 * 1024, spool_size
    assert free_bytes(small_fs) > 500 * 1024
    assert any("shrunk" in r.getMessage() for r in caplog.records)
    # New messages are written again.
    box.append(T, b"after", 1, False)
    assert box.flush()
    last = seqs.last
    box.close()
    seqs.close()

    # The next start on a completely full disk still works, and seq goes on.
    fill_up(small_fs)
    assert free_bytes(small_fs) < 8192
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edged.spool"):
        box, seqs = open_outbox(spool_config(state))
    try:
        assert seqs.next() == last + 1
        # The message kept in the spool is sent (read from it, when sqlite cannot open it).
        assert [m.payload for m in box.peek(0, 10)] == [b"after"]
        box.append(T, b"new", 1, False)
        assert [m.payload for m in box.peek(0, 10)] == [b"after", b"new"]
        assert len(caplog.records) <= 1, [r.getMessage() for r in caplog.records]
    finally:
        box.close()
        seqs.close()


def test_drained_spool_gives_its_space_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / SPOOL_NAME
    box = SqliteOutbox(path, writer=False)
    for i in range(4000):
        box.append(T, b"%05d" % i + b"q" * 1000, 1, False)
    assert box.flush()
    grown = sum(os.path.getsize(p) for p in path.parent.glob(SPOOL_NAME + "*"))
    assert grown > 4_000_000
    assert not box.give_back()  # not drained yet: nothing to give back
    for m in box.peek(0, 5000):
        box.ack(m.seq)
    assert box.flush() and box.give_back()
    size = os.path.getsize(path) + os.path.getsize(str(path) + "-wal")
    box.close()
    print(f"\nspool: {grown} bytes with 4000 messages, {size} after they were delivered")
    assert size < GIVE_BACK_BYTES
