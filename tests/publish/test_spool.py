"""SqliteOutbox (edged.publish.spool): order, bounds, persistence, kill -9, corrupt files."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.config import MqttConfig
from edged.publish.mqtt import Publisher
from edged.publish.outbox import MemoryOutbox
from edged.publish.seq import SeqCounter, open_outbox, time_floor
from edged.publish.spool import SqliteOutbox
from edged.publish.spool_file import LOCK_NAME, SEQ_BLOCK, SPOOL_NAME, SpoolError
from tests.broker import Mosquitto, Subscriber
from tests.publish.configs import spool_config

ROOT = Path(__file__).resolve().parents[2]
T = "edged/dev1/prediction"

Open = Callable[..., SqliteOutbox]


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / SPOOL_NAME


@pytest.fixture
def open_spool(spool_path: Path) -> Iterator[Open]:
    """``open_spool(**kwargs)``: a spool at ``spool_path`` (no writer thread unless asked);
    every one opened is closed at teardown."""
    made: list[SqliteOutbox] = []

    def make(**kwargs: Any) -> SqliteOutbox:
        kwargs.setdefault("writer", False)
        box = SqliteOutbox(spool_path, **kwargs)
        made.append(box)
        return box

    yield make
    for box in made:
        box.close()


def payloads(box: SqliteOutbox | MemoryOutbox, limit: int = 1000) -> list[bytes]:
    return [m.payload for m in box.peek(0, limit)]


def fill(box: SqliteOutbox, n: int, start: int = 0, size: int = 0) -> None:
    for i in range(start, start + n):
        box.append(T, str(i).encode().ljust(size, b" "), 1, False)


def rows_on_disk(path: Path) -> list[tuple[int, bytes]]:
    """The committed messages, read as another process would (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(int(s), bytes(p)) for s, p in conn.execute("SELECT seq, payload FROM messages")]
    finally:
        conn.close()


# -- the Outbox contract ---------------------------------------------------------------------


def test_order_peek_and_ack_across_memory_and_disk(open_spool: Open) -> None:
    box = open_spool()
    fill(box, 5)
    assert box.flush()
    fill(box, 5, start=5)  # 0-4 committed, 5-9 still in memory
    assert len(box) == 10
    assert payloads(box) == [str(i).encode() for i in range(10)]
    first = box.peek(0, 3)
    assert [m.payload for m in box.peek(first[-1].seq, 4)] == [b"3", b"4", b"5", b"6"]
    box.ack(first[1].seq)  # on disk, out of order
    box.ack(box.peek(0, 10)[5].seq)  # "6", in memory
    box.ack(first[1].seq)  # already acknowledged: ignored
    box.ack(10**9)  # unknown: ignored
    expected = [b"0", b"2", b"3", b"4", b"5", b"7", b"8", b"9"]
    assert payloads(box) == expected and len(box) == 8
    assert box.flush()
    assert payloads(box) == expected and len(box) == 8
    assert [p for _, p in rows_on_disk(box.path)] == expected
    assert box.peek(0, 0) == [] and box.peek(10**9, 5) == []
    msg = box.peek(0, 1)[0]
    assert (msg.topic, msg.qos, msg.retain) == (T, 1, False)


def test_messages_survive_close_and_reopen_in_order(open_spool: Open) -> None:
    box = open_spool()
    fill(box, 20)
    for m in box.peek(0, 5):
        box.ack(m.seq)
    box.close()  # commits what is still in memory

    again = open_spool()
    assert again.recovered == 15 and not again.unclean
    assert payloads(again) == [str(i).encode() for i in range(5, 20)]
    fill(again, 2, start=100)  # new messages come after the recovered ones
    seqs = [m.seq for m in again.peek(0, 100)]
    assert payloads(again)[-2:] == [b"100", b"101"] and seqs == sorted(seqs)
    again.close()
    third = open_spool()
    assert len(third) == 17 and payloads(third)[0] == b"5"


def test_retain_and_qos_are_kept(open_spool: Open) -> None:
    box = open_spool()
    box.append("edged/dev1/state", b"cat", 2, True)
    box.append(T, b"x", 0, False)
    box.close()
    a, b = open_spool().peek(0, 10)
    assert (a.topic, a.payload, a.qos, a.retain) == ("edged/dev1/state", b"cat", 2, True)
    assert (b.qos, b.retain) == (0, False)


def test_bound_by_count_drops_oldest_and_counts_across_restarts(open_spool: Open) -> None:
    box = open_spool(max_messages=10)
    fill(box, 25)
    assert box.flush()
    assert len(box) == 10 and box.dropped == 15
    assert payloads(box) == [str(i).encode() for i in range(15, 25)]
    box.close()
    again = open_spool(max_messages=10)
    assert again.dropped == 15
    fill(again, 3, start=25)
    assert again.flush()
    assert again.dropped == 18
    assert payloads(again) == [str(i).encode() for i in range(18, 28)]


def test_bound_by_bytes_drops_oldest_keeps_newest(open_spool: Open) -> None:
    size = len(T) + 100  # each message counts topic + payload
    box = open_spool(max_bytes=5 * size)
    fill(box, 8, size=100)
    assert box.flush()
    assert len(box) == 5 and box.dropped == 3 and box.nbytes == 5 * size
    assert [p.strip() for p in payloads(box)] == [str(i).encode() for i in range(3, 8)]
    box.append(T, b"y" * (10 * size), 1, False)  # bigger than the bound on its own
    assert box.flush()
    assert payloads(box) == [b"y" * (10 * size)] and box.dropped == 8


def test_memory_part_is_bounded_when_the_disk_does_not_keep_up(open_spool: Open) -> None:
    box = open_spool(memory_max_messages=4)  # no writer thread: nothing is committed
    dropped = sum(box.append(T, str(i).encode(), 1, False) for i in range(10))
    assert dropped == 6 and box.dropped == 6 and len(box) == 4
    assert payloads(box) == [b"6", b"7", b"8", b"9"]
    box.close()
    assert open_spool().dropped == 6


def test_writer_commits_within_the_flush_interval_and_skips_acknowledged(
    open_spool: Open,
) -> None:
    box = open_spool(writer=True)
    t0 = time.monotonic()
    box.append(T, b"kept", 1, False)
    while not rows_on_disk(box.path):
        assert time.monotonic() - t0 < 1.0, "not committed within 1 s"
        time.sleep(0.005)
    took = time.monotonic() - t0
    assert took < 0.5, took
    # Acknowledged before the writer got to it (a prompt broker): never written.
    for i in range(20):
        box.append(T, f"fast {i}".encode(), 1, False)
        box.ack(box.peek(0, 100)[-1].seq)
    time.sleep(0.3)
    assert [p for _, p in rows_on_disk(box.path)] == [b"kept"]


def test_appends_are_cheap_and_the_writer_keeps_up(open_spool: Open) -> None:
    box = open_spool(writer=True)
    payload = b"p" * 400
    n = 3000
    worst = 0.0
    t0 = time.perf_counter()
    for i in range(n):  # 1000 per second, 100x the daemon's 10 Hz
        a = time.perf_counter()
        box.append(T, payload, 1, False)
        worst = max(worst, time.perf_counter() - a)
        time.sleep(max(0.0, t0 + (i + 1) / 1000 - time.perf_counter()))
    time.sleep(0.3)
    assert len(rows_on_disk(box.path)) == n and box.dropped == 0
    assert worst < 0.05, f"an append took {worst * 1000:.1f} ms"
    print(f"1000 appends/s for 3 s: all committed, slowest append {worst * 1e3:.2f} ms")


# -- sequence numbers ------------------------------------------------------------------------


def test_seq_continues_exactly_after_a_clean_close(open_spool: Open) -> None:
    box = open_spool(writer=True)
    seqs = SeqCounter(box)
    assert seqs.last == 0
    assert [seqs.next() for _ in range(250)][-1] == 250
    box.close()
    again = open_spool()
    assert SeqCounter(again).next() == 251 and not again.unclean


def test_seq_without_a_spool_starts_at_1() -> None:
    seqs = SeqCounter()
    assert (seqs.last, seqs.next(), seqs.next()) == (0, 1, 2)


CHILD = """
import sys, time
from pathlib import Path
from edged.publish.seq import SeqCounter
from edged.publish.spool import SqliteOutbox

box = SqliteOutbox(Path(sys.argv[1]))
seqs = SeqCounter(box)
i = 0
for i in range(200):
    box.append("t", str(i).encode(), 1, False)
    seqs.next()
time.sleep(0.3)  # the writer thread alone commits these within 50 ms
print("settled", i, seqs.last, flush=True)
while True:
    i += 1
    box.append("t", str(i).encode(), 1, False)
    seqs.next()
    if i % 25 == 0:
        box.flush()
        print("durable", i, seqs.last, flush=True)
"""


@pytest.mark.fault
def test_kill_9_mid_append_keeps_every_committed_message(spool_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spool_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        durable = settled = -1
        last_seq = 0
        deadline = time.monotonic() + 30
        while durable < 2000:
            assert time.monotonic() < deadline, "child too slow"
            line = child.stdout.readline()
            assert line, "child exited"
            kind, index, seq = line.split()
            if kind == "settled":
                settled = int(index)
            else:
                durable, last_seq = int(index), int(seq)
        os.kill(child.pid, signal.SIGKILL)  # in the middle of its append loop
        child.wait(5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert settled == 199
    conn = sqlite3.connect(spool_path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    rows = rows_on_disk(spool_path)
    got = [int(p) for _, p in rows]
    # Every message up to the last reported commit, in order, nothing missing.
    assert got == list(range(len(got))) and len(got) > durable
    box = SqliteOutbox(spool_path, writer=False)
    try:
        assert box.unclean and box.recovered == len(got)
        assert [int(m.payload) for m in box.peek(0, 5)] == [0, 1, 2, 3, 4]
        # Never a sequence number handed out before the kill; at most SEQ_BLOCK skipped.
        assert last_seq <= len(got) <= box.seq_start <= len(got) + 25 + SEQ_BLOCK
    finally:
        box.close()
    print(
        f"kill -9 mid-append: {len(got)} messages committed ({len(got) - durable - 1} after the "
        f"last reported commit), none missing; seq continues after {box.seq_start}"
    )


# -- opening problems ------------------------------------------------------------------------


def test_corrupt_file_is_set_aside_and_an_empty_spool_started(
    spool_path: Path, open_spool: Open, caplog: pytest.LogCaptureFixture
) -> None:
    spool_path.parent.mkdir(parents=True)
    spool_path.write_bytes(b"this is not an sqlite database\n" * 200)
    with caplog.at_level(logging.WARNING, logger="edged.spool"):
        box = open_spool()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not a database" in warnings[0], warnings
    (aside,) = spool_path.parent.glob(SPOOL_NAME + ".broken-*")
    assert aside.read_bytes().startswith(b"this is not")
    fill(box, 3)
    assert box.flush() and len(rows_on_disk(spool_path)) == 3


def test_damaged_pages_are_detected(spool_path: Path, open_spool: Open) -> None:
    box = open_spool()
    fill(box, 2000, size=200)
    box.close()
    data = bytearray(spool_path.read_bytes())
    assert len(data) > 16 * 4096
    data[8 * 4096 : 12 * 4096] = b"\xa5" * (4 * 4096)  # trash table pages, keep the header
    spool_path.write_bytes(bytes(data))
    fresh = open_spool()
    # The rows on the intact pages are carried into the fresh spool, in their order.
    got = [int(p) for p in payloads(fresh, 5000)]
    assert 1500 < len(got) < 2000 and got == sorted(got) and set(got) <= set(range(2000))
    assert got[0] == 0 and got[-1] == 1999 and fresh.salvaged == len(got)
    assert len(list(spool_path.parent.glob(SPOOL_NAME + ".broken-*"))) == 1


def test_second_process_cannot_use_the_same_spool(spool_path: Path, open_spool: Open) -> None:
    open_spool()
    with pytest.raises(SpoolError, match="in use by another process"):
        SqliteOutbox(spool_path)


def test_open_outbox_creates_state_dir_and_continues_seq(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    box, seqs = open_outbox(spool_config(state))
    assert isinstance(box, SqliteOutbox) and box.path == state / SPOOL_NAME
    assert seqs.next() == 1 and (state / LOCK_NAME).exists()
    box.close()
    seqs.close()
    box, seqs = open_outbox(spool_config(state))
    assert seqs.next() == 2
    box.close()
    seqs.close()
    off, seqs = open_outbox(spool_config(tmp_path / "other", spool=False, queue_max=7))
    assert isinstance(off, MemoryOutbox) and off.maxlen == 7 and seqs.next() == 1
    seqs.close()
    assert not (tmp_path / "other" / SPOOL_NAME).exists()
    off, seqs = open_outbox(spool_config(tmp_path / "other", spool=False))
    assert seqs.next() == 2  # without a spool too, seq continues (the high-water mark file)


@pytest.mark.parametrize("problem", ["not a directory", "in use"])
def test_open_outbox_falls_back_to_memory_with_one_warning(
    tmp_path: Path, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    holder = None
    if problem == "not a directory":
        state.write_text("a file where the state directory should be")
    else:
        holder = SqliteOutbox(state / SPOOL_NAME, writer=False)
    try:
        with caplog.at_level(logging.WARNING, logger="edged.spool"):
            box, seqs = open_outbox(spool_config(state))
        assert isinstance(box, MemoryOutbox)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([w for w in warnings if "memory only" in w]) == 1, warnings
        # The number cannot be read from anywhere: a time-derived floor, never back to 1.
        assert seqs.last >= time_floor() - 60_000_000
        seqs.close()
    finally:
        if holder is not None:
            holder.close()


def test_memory_outbox_bound_by_bytes() -> None:
    box = MemoryOutbox(100, max_bytes=3 * (len(T) + 1))
    for i in range(5):
        box.append(T, str(i).encode(), 1, False)
    assert (
        payloads(box) == [b"2", b"3", b"4"] and box.dropped == 2 and box.nbytes == 3 * (len(T) + 1)
    )
    box.ack(box.peek(0, 1)[0].seq)
    assert box.nbytes == 2 * (len(T) + 1)


# -- with the publisher ----------------------------------------------------------------------


@pytest.mark.fault
def test_publisher_delivers_spooled_messages_after_a_restart(
    mosquitto_factory: Callable[..., Mosquitto],
    subscriber_factory: Callable[..., Subscriber],
    spool_path: Path,
) -> None:
    broker = mosquitto_factory(start=False)
    cfg = MqttConfig(
        host=broker.host, port=broker.port, keepalive_s=5, reconnect_min_s=0.2, reconnect_max_s=0.5
    )
    pub = Publisher(cfg, "dev1", outbox=SqliteOutbox(spool_path))
    pub.start()
    for i in range(50):  # the broker is not running
        pub.publish(T, str(i))
    pub.stop(timeout=0.5)  # closes the spool: the 50 messages are in the file

    broker.start()
    sub = subscriber_factory(broker, T, qos=1)
    again = SqliteOutbox(spool_path)
    assert again.recovered == 50
    pub2 = Publisher(cfg, "dev1", outbox=again)
    pub2.start()
    try:
        pub2.publish(T, "new")
        got = sub.wait_count(51, timeout=10)
        assert [m.text for m in got] == [str(i) for i in range(50)] + ["new"]
        deadline = time.monotonic() + 5
        while pub2.stats["queued"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        pub2.stop(timeout=1.0)
    assert rows_on_disk(spool_path) == []


def test_failing_writes_keep_messages_in_memory_until_the_disk_recovers(
    open_spool: Open, caplog: pytest.LogCaptureFixture
) -> None:
    box = open_spool()
    fill(box, 3)
    assert box.flush()
    db = box._store._db
    box._store._db = sqlite3.connect(f"file:{box.path}?mode=ro", uri=True, check_same_thread=False)
    try:
        fill(box, 3, start=3)
        box.ack(box.peek(0, 1)[0].seq)
        with caplog.at_level(logging.WARNING, logger="edged.spool"):
            assert not box.flush()
        assert any("cannot write" in r.getMessage() for r in caplog.records)
        assert payloads(box) == [b"1", b"2", b"3", b"4", b"5"] and len(box) == 5
    finally:
        box._store._db.close()
        box._store._db = db
    assert box.flush()
    assert [p for _, p in rows_on_disk(box.path)] == [b"1", b"2", b"3", b"4", b"5"]
