"""seq never goes backwards, whatever happens to the spool (edged.publish.seq, spool_file).

Each case runs a "previous life" that hands out numbers through ``open_outbox`` (as the daemon
does), then damages the state dir the way the field does - random bytes, a truncated or
zero-length file, a spool of another schema, a folder where the file should be, a damaged
high-water mark file - and checks that the next life continues above every number handed out,
that a broken spool is set aside (named, one warning with the cause) and that what could be
read from it is delivered from the fresh one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.publish.outbox import MemoryOutbox
from edged.publish.seq import HWM_NAME, SLOT, SeqCounter, SeqFile, open_outbox, time_floor
from edged.publish.spool import SqliteOutbox
from edged.publish.spool_file import BROKEN_KEEP, SEQ_BLOCK, SPOOL_NAME
from tests.fuzz import examples
from tests.publish.configs import spool_config

EXAMPLES = examples(30)
T = "edged/dev1/prediction"


def life(state: Path, n: int, *, pending: int = 0, clean: bool = True) -> tuple[int, Any]:
    """One run of the daemon's counter: hand out ``n`` numbers (and leave ``pending``
    messages undelivered in the outbox); returns (last seq, outbox)."""
    box, seqs = open_outbox(spool_config(state))
    last = 0
    for _ in range(n):
        last = seqs.next()
    for i in range(pending):
        box.append(T, f'{{"pending":{i}}}'.encode(), 1, False)
    if clean:
        box.close()
        seqs.close()
    return last, box


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def aside_files(state: Path) -> list[Path]:
    return sorted(
        p for p in state.glob(SPOOL_NAME + ".broken-*") if p.name[-4:] not in ("-wal", "-shm")
    )


# -- the high-water mark file -----------------------------------------------------------------


def test_hwm_file_round_trip_lowering_and_a_torn_slot(tmp_path: Path) -> None:
    f = SeqFile(tmp_path / HWM_NAME)
    assert f.read() == ("missing", 0, "")
    f.write(100)
    f.write(200)
    f.write(150)  # a clean stop writes the exact last number, lower than the reservation
    f.close()
    assert SeqFile(tmp_path / HWM_NAME).read() == ("ok", 150, "")
    data = bytearray((tmp_path / HWM_NAME).read_bytes())
    assert len(data) == 2 * SLOT
    newest = 0 if b" 150 " in data[:SLOT] else 1
    data[newest * SLOT + 20] ^= 0xFF  # a torn write of the newest slot: the other one counts
    (tmp_path / HWM_NAME).write_bytes(bytes(data))
    assert SeqFile(tmp_path / HWM_NAME).read() == ("ok", 200, "")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(junk=st.binary(max_size=3 * SLOT))
def test_any_bytes_in_the_hwm_file_never_send_seq_back(tmp_path: Path, junk: bytes) -> None:
    state = tmp_path / f"s{abs(hash(junk))}"
    last, _ = life(state, 7)
    (state / HWM_NAME).write_bytes(junk)
    box, seqs = open_outbox(spool_config(state))
    try:
        assert seqs.next() > last  # the spool still knows (or the hwm does, if junk is valid)
    finally:
        box.close()
        seqs.close()


def test_spool_of_an_older_edged_without_hwm_file_continues(tmp_path: Path) -> None:
    """Upgrade path: a state dir written before the high-water mark file existed."""
    state = tmp_path / "state"
    last, _ = life(state, 42)
    (state / HWM_NAME).unlink()
    box, seqs = open_outbox(spool_config(state))
    assert seqs.next() == last + 1
    box.close()
    seqs.close()


def test_kill_9_skips_at_most_a_block_and_reuses_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    last, box = life(state, 5 * SEQ_BLOCK + 17, clean=False)  # no close: like kill -9
    box._store.release()  # the process is gone: its locks with it
    box._store.close_connections()
    box, seqs = open_outbox(spool_config(state))
    first = seqs.next()
    assert last < first <= last + SEQ_BLOCK + 1
    box.close()
    seqs.close()


def test_no_spool_at_all_still_continues(tmp_path: Path) -> None:
    state = tmp_path / "state"
    box, seqs = open_outbox(spool_config(state, spool=False))
    assert isinstance(box, MemoryOutbox) and [seqs.next() for _ in range(3)] == [1, 2, 3]
    seqs.close()
    box, seqs = open_outbox(spool_config(state, spool=False))
    assert seqs.next() == 4
    seqs.close()


# -- broken spools ----------------------------------------------------------------------------


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(100, len(data) // 3)])


def _zero_length(path: Path) -> None:
    path.write_bytes(b"")


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "x").write_text("a folder where the spool file should be")


def _foreign_newer(path: Path) -> None:
    """A spool written by a later edged: schema 7, its own columns, undelivered messages."""
    path.unlink()
    db = sqlite3.connect(path)
    db.executescript(
        "PRAGMA user_version=7;"
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB, qos INTEGER,"
        " retain INTEGER, expires INTEGER);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER);"
    )
    db.executemany(
        "INSERT INTO messages (topic, payload, qos, retain, expires) VALUES (?, ?, 1, 0, 0)",
        [(T, f'{{"foreign":{i}}}'.encode()) for i in range(5)],
    )
    db.commit()
    db.close()


def _foreign_older(path: Path) -> None:
    """An sqlite file with another layout and no version: a messages table without size/seq."""
    path.unlink()
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE messages (topic TEXT, payload TEXT); CREATE TABLE other (x);")
    db.executemany("INSERT INTO messages VALUES (?, ?)", [(T, f"old {i}") for i in range(3)])
    db.execute("INSERT INTO messages VALUES ('bad/+/topic', 'invalid: skipped')")
    db.commit()
    db.close()


DAMAGE = {
    "random bytes": (_random_bytes, "not a database", 0),
    "truncated": (_truncated, "malformed", None),
    "zero length": (_zero_length, None, 0),
    "a directory": (_directory, "not a regular file", 0),
    "newer schema": (_foreign_newer, "schema version 7", 5),
    "other layout": (_foreign_older, "another schema", 3),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("hwm", ["intact", "damaged"])
def test_seq_continues_over_a_broken_spool(
    tmp_path: Path, kind: str, hwm: str, caplog: pytest.LogCaptureFixture
) -> None:
    damage, cause, carried = DAMAGE[kind]
    state = tmp_path / "state"
    last, _ = life(state, 250, pending=4)
    damage(state / SPOOL_NAME)
    if hwm == "damaged":
        (state / HWM_NAME).write_bytes(b"\x00garbage")
    before = time_floor()
    with caplog.at_level(logging.INFO, logger="edged.spool"):
        box, seqs = open_outbox(spool_config(state))
    try:
        first = seqs.next()
        assert first > last, f"seq went back to {first} after {last}"
        assert isinstance(box, SqliteOutbox), warnings_of(caplog)
        spool_warnings = [w for w in warnings_of(caplog) if "set aside" in w]
        if cause is None:  # an empty file is a valid, empty sqlite database: nothing to set aside
            assert not spool_warnings and not aside_files(state)
        else:
            assert len(spool_warnings) == 1 and cause in spool_warnings[0], warnings_of(caplog)
            (aside,) = aside_files(state)
            assert aside.name in spool_warnings[0]
        if hwm == "intact":
            assert first <= last + 1 + SEQ_BLOCK  # the mark file alone is enough
        elif kind in ("truncated",) and first <= last + 1 + SEQ_BLOCK:
            pass  # the set-aside file still told its reservation
        else:
            assert first >= before  # nothing tells: the time-derived floor
        got = [m.payload for m in box.peek(0, 100)]
        if carried is not None:
            assert len(got) == carried, got
        if kind == "newer schema":
            assert got == [f'{{"foreign":{i}}}'.encode() for i in range(5)]
        if kind == "other layout":
            assert got == [f"old {i}".encode() for i in range(3)]
    finally:
        box.close()
        seqs.close()
    # The fresh spool is a normal one: the next start continues exactly.
    box, seqs = open_outbox(spool_config(state))
    assert seqs.next() == first + 1
    box.close()
    seqs.close()


def test_undelivered_messages_of_a_damaged_spool_are_carried_over(tmp_path: Path) -> None:
    state = tmp_path / "state"
    box = SqliteOutbox(state / SPOOL_NAME, writer=False)
    for i in range(300):
        box.append(T, f"m{i:04d}".encode().ljust(300, b"."), 1, False)
    box.close()
    data = bytearray((state / SPOOL_NAME).read_bytes())
    data[6 * 4096 : 8 * 4096] = os.urandom(2 * 4096)  # two damaged pages in the middle
    (state / SPOOL_NAME).write_bytes(bytes(data))
    reopened, seqs = open_outbox(spool_config(state))
    got = [m.payload[:5].decode() for m in reopened.peek(0, 1000)]
    reopened.close()
    seqs.close()
    assert 200 < len(got) < 300 and got == sorted(got) and got[-1] == "m0299"


def test_only_the_newest_broken_copies_are_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    life(state, 3)
    for _ in range(BROKEN_KEEP + 2):
        (state / SPOOL_NAME).write_bytes(b"junk" * 1000)
        box, seqs = open_outbox(spool_config(state))
        box.close()
        seqs.close()
    assert len(aside_files(state)) == BROKEN_KEEP


def test_both_lost_continues_from_a_time_floor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    last, _ = life(state, 10)
    (state / HWM_NAME).unlink()
    (state / SPOOL_NAME).write_bytes(b"junk" * 100)
    before = time_floor()
    with caplog.at_level(logging.WARNING, logger="edged.spool"):
        box, seqs = open_outbox(spool_config(state))
    first = seqs.next()
    box.close()
    seqs.close()
    assert first > before > last
    assert any("time-derived floor" in w for w in warnings_of(caplog))
    box, seqs = open_outbox(spool_config(state))
    assert seqs.next() == first + 1  # and from there on, +1 again
    box.close()
    seqs.close()


def test_a_new_state_dir_starts_at_1(tmp_path: Path) -> None:
    box, seqs = open_outbox(spool_config(tmp_path / "new"))
    assert seqs.next() == 1
    box.close()
    seqs.close()


def test_hwm_is_written_ahead_while_numbers_are_handed_out(tmp_path: Path) -> None:
    f = SeqFile(tmp_path / HWM_NAME)
    seqs = SeqCounter(hwm=f, start=0)
    for _ in range(3 * SEQ_BLOCK):
        seq = seqs.next()
        status, mark, _ = SeqFile(tmp_path / HWM_NAME).read()
        assert status == "ok" and mark >= seq  # never behind what was handed out
    seqs.close()
    assert SeqFile(tmp_path / HWM_NAME).read() == ("ok", 3 * SEQ_BLOCK, "")


class UsedSpool(tuple[bytes, int]):
    def __repr__(self) -> str:  # not 30 kB of bytes in a falsifying example
        return f"<spool of {len(self[0])} bytes, seq {self[1]}>"


@pytest.fixture(scope="module")
def used_spool(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """The bytes of a spool after a life that handed out numbers and left messages waiting."""
    state = tmp_path_factory.mktemp("used") / "state"
    last, _ = life(state, 130, pending=300)
    return UsedSpool(((state / SPOOL_NAME).read_bytes(), last))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cuts=st.lists(
        st.tuples(st.integers(0, 200_000), st.binary(min_size=1, max_size=512)),
        min_size=1,
        max_size=6,
    ),
    truncate=st.one_of(st.none(), st.integers(0, 200_000)),
)
def test_any_damage_to_the_spool_never_crashes_nor_sends_seq_back(
    tmp_path: Path,
    used_spool: tuple[bytes, int],
    cuts: list[tuple[int, bytes]],
    truncate: int | None,
) -> None:
    data, last = used_spool
    damaged = bytearray(data)
    for offset, chunk in cuts:
        at = offset % max(1, len(damaged))
        damaged[at : at + len(chunk)] = chunk
    if truncate is not None:
        del damaged[truncate % max(1, len(damaged)) :]
    state = Path(tempfile.mkdtemp(dir=tmp_path))
    (state / SPOOL_NAME).write_bytes(bytes(damaged))
    (state / HWM_NAME).write_bytes(b"lost")  # the worst case: the mark file is gone too
    box, seqs = open_outbox(spool_config(state))
    try:
        assert seqs.next() > last
        got = box.peek(0, 1000)  # whatever was carried over is readable and in order
        assert [m.seq for m in got] == sorted(m.seq for m in got)
        # A damaged byte can change a topic (sqlite keeps no checksum per row), but never into
        # one that cannot be published.
        assert all(m.topic and not set(m.topic) & set("+#\x00\ufffd") for m in got)
    finally:
        box.close()
        seqs.close()
