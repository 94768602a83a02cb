"""The spool's write-behind: its state in memory and the writer thread that commits it to the file.

``SpoolWriter`` is the base of ``SqliteOutbox`` (``edged.publish.spool``): it opens the spool
file (``edged.publish.spool_file``), holds the state that the ``Outbox`` operations work on, and
commits that state to the file in a thread of its own, so that the frame loop never waits for
the disk. A writer thread commits, as one transaction, as soon as the oldest message not yet
written has waited ``flush_interval`` (50 ms) unacknowledged: everything not yet written is
inserted, acknowledged rows are deleted, the bounds enforced. A message the broker acknowledges
within that interval - every message while the broker is reachable and answers promptly - is
never written at all, so a healthy device does (almost) no disk writes for its messages, at any
message rate.
What can be lost, durability vs SD-card wear, the bounds and giving space back: see
``edged.publish.spool``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Self

from edged.infra.util import RateLimitedLog, close_fd
from edged.publish.outbox import OutMessage, message_size
from edged.publish.spool_file import (
    SpoolError,
    Sync,
    close_quietly,
    commit,
    open_file,
    take_lock,
)

__all__ = ["FLUSH_INTERVAL_S", "SpoolWriter"]

log = logging.getLogger("edged.spool")

FLUSH_INTERVAL_S = 0.05  # an unacknowledged message is committed when it is this old
GIVE_BACK_BYTES = 1024 * 1024  # a drained spool larger than this on disk is shrunk
RETRY_S = 1.0  # pause after a failed commit


class SpoolWriter:
    """The spool's state and its write-behind (see the module description); ``SqliteOutbox``
    adds the ``Outbox`` operations on that state.

    ``_lock`` guards the memory state and the reader connection; the writer thread commits.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_messages: int = 100_000,
        max_bytes: int = 32 * 1024 * 1024,
        memory_max_messages: int = 10_000,
        memory_max_bytes: int = 8 * 1024 * 1024,
        sync: Sync = "full",
        flush_interval: float = FLUSH_INTERVAL_S,
        writer: bool = True,
    ) -> None:
        """Open (or create) the spool at ``path``; raises ``SpoolError``.

        ``writer=False`` starts no writer thread: only ``flush()`` and ``close()`` write.
        """
        if min(max_messages, max_bytes, memory_max_messages, memory_max_bytes) < 1:
            raise ValueError("spool bounds must be at least 1")
        if sync not in ("full", "normal"):
            raise ValueError(f"invalid sync mode {sync!r}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.memory_max_messages = memory_max_messages
        self.memory_max_bytes = memory_max_bytes
        self.sync: Sync = sync
        self.flush_interval = flush_interval
        self._warn = RateLimitedLog(log)

        self._lock = threading.Lock()  # memory state and the reader connection
        self._wake = threading.Condition(self._lock)  # writer: something to commit
        self._io_lock = threading.Lock()  # the writer connection (one commit at a time)
        self._closing = threading.Event()
        self._closed = False

        # Memory state (under _lock).
        self._tail: OrderedDict[int, OutMessage] = OrderedDict()  # not yet committed
        self._tail_bytes = 0
        self._tail_t: dict[int, float] = {}  # seq -> when appended (monotonic)
        self._acked_since = 0.0  # when _acked last became non-empty
        self._flushing_upto = 0  # tail seqs <= this are in the commit in progress
        self._acked: set[int] = set()  # acknowledged, committed rows: delete at the next commit
        self._acked_early: set[int] = set()  # acknowledged while the running commit inserts them
        self._dropped_upto = 0  # the bounds dropped every committed row up to this seq
        self._disk_count = 0  # rows committed
        self._disk_bytes = 0
        self._disk_max_seq = 0
        self._dropped = 0  # persistent total
        self._new_drops = 0  # dropped from the tail since the last commit (to persist)
        self._failing = False  # the last commit failed
        self._seq_last = 0  # the last sequence number handed out
        self._seq_durable = 0  # committed reservation: numbers up to this may be used
        self._seq_wanted = 0  # reservation the writer should commit next
        self._next_seq = 1  # the next message's position in the spool
        self.seq_start = 0  # SeqCounter continues after this
        self.recovered = 0  # messages found in the file when it was opened
        self.unclean = False  # the previous user did not close the spool (kill -9, power cut)
        self.seq_known = False  # the file had recorded sequence numbers (it was used before)
        self.set_aside: Path | None = None  # a broken file moved aside at opening
        self.salvaged = 0  # messages carried over from it
        self.gave_back = 0  # times the file was shrunk after a backlog drained

        self._lock_fd = take_lock(self.path)
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        try:
            self._open()
        except BaseException:
            self._release()
            raise
        self._writer: threading.Thread | None = None
        if writer:
            self._writer = threading.Thread(
                target=self._writer_loop, name="edged-spool", daemon=True
            )
            self._writer.start()

    def _open(self, seq_floor: int = 0, dropped: int = 0) -> None:
        opened = open_file(
            self.path,
            self.sync,
            seq_floor=seq_floor,
            dropped=dropped,
            max_messages=self.max_messages,
            max_bytes=self.max_bytes,
        )
        self._db = opened.db
        self._reader = opened.reader
        self._disk_count = opened.count
        self._disk_bytes = opened.nbytes
        self._disk_max_seq = opened.max_seq
        self._next_seq = opened.max_seq + 1
        self._dropped = opened.dropped
        self._seq_last = opened.seq_start
        self._seq_wanted = self._seq_durable = opened.seq_reserved
        self.seq_start = opened.seq_start
        self.recovered = self._disk_count
        self.unclean = opened.unclean
        self.seq_known = opened.seq_known
        self.set_aside = opened.set_aside
        self.salvaged = opened.salvaged

    # ------------------------------------------------------------------ writing

    def _due_in(self, now: float) -> float | None:
        """Seconds until the next commit is due (<= 0: now), None if nothing is pending;
        ``_lock`` held."""
        if self._new_drops or self._seq_wanted > self._seq_durable:
            return 0.0
        due: float | None = None
        if self._tail:
            due = self._tail_t[next(iter(self._tail))] + self.flush_interval - now
        if self._acked:
            acked = self._acked_since + self.flush_interval - now
            due = acked if due is None else min(due, acked)
        return due

    def _writer_loop(self) -> None:
        while True:
            with self._wake:
                while True:
                    if self._closing.is_set():
                        return
                    due = self._due_in(time.monotonic())
                    if due is not None and due <= 0:
                        break
                    self._wake.wait(due)
            ok = self.flush()
            self.give_back()
            if not ok and self._closing.wait(RETRY_S):
                return

    def flush(self) -> bool:
        """Commit what changed now (the writer thread does this on its own); False if the
        commit failed (logged; everything stays in memory and is tried again)."""
        with self._io_lock:
            return self._flush(final=False)

    def _flush(self, final: bool) -> bool:
        db = self._db
        if db is None:
            return False
        with self._lock:
            batch = list(self._tail.values())
            self._flushing_upto = batch[-1].seq if batch else 0
            deletes = list(self._acked)
            new_drops = self._new_drops
            seq_wanted = self._seq_wanted
            seq_last = self._seq_last
            seq_durable = self._seq_durable
            dropped_total = self._dropped
            disk_count, disk_bytes = self._disk_count, self._disk_bytes
            need_meta = new_drops > 0 or seq_wanted > seq_durable or final
            if not batch and not deletes and not need_meta:
                return True
        meta: dict[str, int] = {}
        if final:
            meta.update(clean=1, seq_last=seq_last, seq_reserved=seq_last)
        elif seq_wanted > seq_durable:
            meta["seq_reserved"] = seq_wanted
        try:
            count, nbytes, bound_drops, cut = commit(
                db,
                batch,
                deletes,
                (disk_count, disk_bytes),
                (self.max_messages, self.max_bytes),
                meta,
                (dropped_total, new_drops > 0),
            )
        except sqlite3.Error as err:
            with self._lock:
                self._flushing_upto = 0
                self._acked_early.clear()  # their inserts were rolled back
                was_failing, self._failing = self._failing, True
                self._wake.notify_all()
            if not was_failing:  # one warning per episode; the recovery is logged too
                log.warning(
                    "spool: cannot write %s: %s; keeping new messages in memory (at most %d) "
                    "until it can be written again",
                    self.path,
                    err,
                    self.memory_max_messages,
                )
            return False
        with self._lock:
            for m in batch:
                if self._tail.pop(m.seq, None) is not None:
                    del self._tail_t[m.seq]
                    self._tail_bytes -= message_size(m.topic, m.payload)
            self._flushing_upto = 0
            self._acked.difference_update(deletes)
            if self._acked_early and not self._acked:
                self._acked_since = time.monotonic()
            self._acked.update(self._acked_early)
            self._acked_early.clear()
            if cut:
                self._dropped_upto = max(self._dropped_upto, cut)
                self._acked = {a for a in self._acked if a > cut}
            self._disk_count = count
            self._disk_bytes = nbytes
            if batch:
                self._disk_max_seq = max(self._disk_max_seq, batch[-1].seq)
            self._new_drops -= new_drops
            self._dropped += bound_drops
            if not final:
                self._seq_durable = max(self._seq_durable, seq_wanted)
            recovered, self._failing = self._failing, False
            self._wake.notify_all()
        if recovered:
            log.info("spool: %s can be written again", self.path)
        if bound_drops:
            self._warn.warning(
                f"spool full ({self.max_messages} messages / {self.max_bytes} bytes): "
                "dropping the oldest messages"
            )
        return True

    # ------------------------------------------------------------------ giving space back

    def give_back(self) -> bool:
        """Once the backlog has drained, give the disk space the spool grew to back: checkpoint
        and truncate the WAL and VACUUM the (empty) file - or, when even that cannot be written
        (a full disk), replace the file, every row of which the broker has acknowledged, by a
        fresh one. True if it did either. The writer thread calls this after each commit."""
        with self._io_lock:
            with self._lock:
                if self._closed or self._db is None or self._tail:
                    return False
                drained = self._disk_count - len(self._acked) <= 0
                failing = self._failing
            if not drained or (self._disk_count and not failing):
                return False  # rows to delete first: the next commit does that
            size = _size_on_disk(self.path)
            if size < GIVE_BACK_BYTES and not failing:
                return False
            db = self._db
            try:
                if failing:
                    raise sqlite3.OperationalError("the last commit failed")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                if os.stat(self.path).st_size >= GIVE_BACK_BYTES:
                    db.execute("VACUUM")
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except (sqlite3.Error, OSError) as err:
                if not self._recreate(err):
                    return False
            after = _size_on_disk(self.path)
            self.gave_back += 1
        log.info("spool: backlog delivered; %s shrunk from %d to %d bytes", self.path, size, after)
        return True

    def _recreate(self, why: Exception) -> bool:
        """Replace a file whose every row is acknowledged by a fresh one (``_io_lock`` held)."""
        with self._lock:
            if self._tail or self._disk_count - len(self._acked) > 0:
                return False
            seq_floor = self._seq_last  # the fresh file reserves SEQ_BLOCK beyond it again
            dropped = self._dropped
            next_seq, disk_max = self._next_seq, self._disk_max_seq
            kept = (self.seq_start, self.unclean, self.seq_known, self.set_aside, self.salvaged)
            close_quietly(self._reader, self._db)
            self._reader = self._db = None
            try:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(str(self.path) + suffix)
                self._open(seq_floor=seq_floor, dropped=dropped)
            except (OSError, SpoolError) as err:
                self._failing = True
                self._warn.warning(f"spool: cannot replace {self.path} ({why}): {err}")
                return False
            # Positions continue (the publisher's cursor refers to them); older acks are moot.
            self._next_seq = max(next_seq, disk_max + 1)
            self._dropped_upto = max(self._dropped_upto, disk_max)
            self._disk_max_seq = disk_max
            self._acked.clear()
            self._acked_early.clear()
            self._disk_count = self._disk_bytes = 0
            self._failing = False
            self.seq_start, self.unclean, self.seq_known, self.set_aside, self.salvaged = kept
            self._wake.notify_all()
        return True

    # ------------------------------------------------------------------ closing

    def close(self, timeout: float = 2.0) -> None:
        """Stop the writer, commit everything still in memory and release the file."""
        with self._lock:
            if self._closed:
                return
        self._closing.set()
        with self._wake:
            self._wake.notify_all()
        if self._writer is not None:
            self._writer.join(timeout)
        left = 0
        if self._io_lock.acquire(timeout=timeout):
            try:
                self._flush(final=True)
            finally:
                self._io_lock.release()
        else:
            log.warning("spool: the disk is not answering; closing without a final commit")
        with self._lock:
            self._closed = True
            left = self._disk_count - len(self._acked) + len(self._tail)
            self._wake.notify_all()
        if left > 0:
            log.info("spool: %d message(s) kept in %s for the next start", left, self.path)
        self._close_connections()
        self._release()

    def _close_connections(self) -> None:
        with self._lock:
            close_quietly(self._reader, self._db)
            self._reader = self._db = None

    def _release(self) -> None:
        fd, self._lock_fd = self._lock_fd, -1
        close_fd(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _size_on_disk(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(str(path) + suffix).st_size
    return total
