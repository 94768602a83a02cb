"""The spool's file and its write-behind, two objects owned by ``SqliteOutbox``
(``edged.publish.spool``), each with a lock of its own.

* ``SpoolStore`` is the open file (``edged.publish.spool_file``): its lock (``spool.lock``), its
  two connections - a writer and a read-only reader, which in WAL mode never waits for the
  writer - and the statements run on them (read, commit, shrink, replace). ``_lock`` guards the
  connections.
* ``SpoolWriter`` commits, in a thread of its own, so that the frame loop never waits for the
  disk: as soon as the oldest message not yet written has waited ``flush_interval`` (50 ms)
  unacknowledged, everything not yet written is inserted, acknowledged rows are deleted, the
  bounds enforced, as one transaction. A message the broker acknowledges within that interval -
  every message while the broker is reachable and answers promptly - is never written at all,
  so a healthy device does (almost) no disk writes for its messages, at any message rate. It
  sees the spool's memory only through ``Pending`` (what to commit, what was committed);
  ``_flush_lock`` makes one commit (or give-back) at a time.

What can be lost:

* ``kill -9``, a crash: the messages appended in the last ``flush_interval`` (plus the time the
  commit takes, typically a few ms) that the broker had not acknowledged yet. Everything committed is in the file:
  a committed transaction is in the WAL, which the kernel holds even if the process dies.
* A power cut, with ``sync="full"`` (the default): the same; each commit is fsync'ed.
  With ``sync="normal"``, commits are not fsync'ed (only checkpoints are), so a power cut can
  also lose what the kernel had not yet written back: typically the last 5-30 s of spooled
  messages. The file stays consistent either way (WAL frames are checksummed).

Durability vs SD-card wear: ``full`` costs one fsync per commit, and commits happen only while
messages wait longer than ``flush_interval`` (broker away or slow), at most 1/flush_interval = 20
per second whatever the message rate; each writes one or two 4 KiB WAL pages, i.e. roughly
40-80 KiB/s while the broker is away, nothing while it is up. ``normal`` writes the same pages
but lets the kernel coalesce them (one larger write every few seconds), which is gentler on
cheap SD cards and costs the power-cut window above.

Bounds: ``max_messages`` and ``max_bytes`` (topic + payload of the stored messages; the file is
larger by sqlite's overhead, and its WAL by up to ``JOURNAL_SIZE_LIMIT`` more). The oldest
messages are dropped first, when a commit would exceed a bound; the newest is always kept;
``dropped`` counts drops across restarts. The part not yet written is bounded separately by
``memory_max_messages`` / ``memory_max_bytes``, which only come into play when the disk cannot
keep up (stalled or failing writes): then that in-memory part drops its oldest too.

Space: when a commit fails (a full disk), new messages wait in memory, with one warning (and
one line when commits work again). Once the backlog has drained, the space the file grew to is
given back (``give_back``): the WAL is checkpointed and truncated and the file vacuumed - or,
when even that cannot be written, the file, every row of which has been acknowledged, is
replaced by a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edged.infra.util import RateLimitedLog, close_fd
from edged.publish.outbox import OutMessage
from edged.publish.spool_file import SpoolFile, Sync, close_quietly, commit, open_file, take_lock

__all__ = [
    "FLUSH_INTERVAL_S",
    "GIVE_BACK_BYTES",
    "Pending",
    "Snapshot",
    "SpoolStore",
    "SpoolWriter",
]

log = logging.getLogger("edged.spool")

FLUSH_INTERVAL_S = 0.05  # an unacknowledged message is committed when it is this old
GIVE_BACK_BYTES = 1024 * 1024  # a drained spool larger than this on disk is shrunk
RETRY_S = 1.0  # pause after a failed commit


class SpoolStore:
    """The spool file, open (see the module description); raises ``SpoolError`` when it cannot
    be opened."""

    def __init__(self, path: Path, sync: Sync, max_messages: int, max_bytes: int) -> None:
        self.path = path
        self.sync: Sync = sync
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # the two connections
        self._lock_fd = take_lock(path)
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        try:
            self.opened = self._open(0, 0)
        except BaseException:
            self.release()
            raise

    def _open(self, seq_floor: int, dropped: int) -> SpoolFile:
        opened = open_file(
            self.path,
            self.sync,
            seq_floor=seq_floor,
            dropped=dropped,
            max_messages=self.max_messages,
            max_bytes=self.max_bytes,
        )
        self._db, self._reader = opened.db, opened.reader
        return opened

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def read(self, after: int, limit: int) -> list[Any]:
        """Committed rows (seq, topic, payload, qos, retain) with ``seq > after``, oldest
        first; raises sqlite3.Error."""
        with self._lock:
            if self._reader is None:
                return []
            return self._reader.execute(
                "SELECT seq, topic, payload, qos, retain FROM messages"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()

    def commit(self, snap: Snapshot) -> tuple[int, int, int, int]:
        """``spool_file.commit`` of ``snap``; raises sqlite3.Error."""
        with self._lock:
            if self._db is None:
                raise sqlite3.OperationalError("the spool is closed")
            return commit(
                self._db,
                snap.batch,
                snap.deletes,
                snap.held,
                (self.max_messages, self.max_bytes),
                snap.meta,
                snap.dropped,
            )

    def size_on_disk(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(str(self.path) + suffix).st_size
        return total

    def shrink(self) -> None:
        """Checkpoint and truncate the WAL, VACUUM a large file; raises sqlite3.Error, OSError."""
        with self._lock:
            if self._db is None:
                raise sqlite3.OperationalError("the spool is closed")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if os.stat(self.path).st_size >= GIVE_BACK_BYTES:
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def recreate(self, seq_floor: int, dropped: int) -> SpoolFile:
        """Replace the file by a fresh one; raises OSError, SpoolError (then it is closed)."""
        with self._lock:
            close_quietly(self._reader, self._db)
            self._reader = self._db = None
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(self.path) + suffix)
            return self._open(seq_floor, dropped)

    def close_connections(self) -> None:
        with self._lock:
            close_quietly(self._reader, self._db)
            self._reader = self._db = None

    def release(self) -> None:
        """Give the file's lock back."""
        fd, self._lock_fd = self._lock_fd, -1
        close_fd(fd)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one commit writes (``Pending.snapshot``)."""

    batch: list[OutMessage]  # messages not yet written, oldest first
    deletes: list[int]  # acknowledged rows
    held: tuple[int, int]  # (rows, bytes) in the file before
    meta: dict[str, int]  # counters to write
    dropped: tuple[int, bool]  # the drop total, and whether it changed since the last commit
    new_drops: int
    seq_wanted: int
    final: bool


class Pending(Protocol):
    """The spool's memory, as the writer sees it (``SqliteOutbox``)."""

    def wait_due(self, closing: threading.Event) -> bool:
        """Block until a commit is due (True) or ``closing`` is set (False)."""
        ...

    def wake(self) -> None: ...

    def snapshot(self, final: bool) -> Snapshot | None:
        """What to commit now (None: nothing)."""
        ...

    def committed(self, snap: Snapshot, result: tuple[int, int, int, int]) -> bool:
        """``snap`` is in the file; True if the previous commit had failed."""
        ...

    def failed(self) -> bool:
        """The commit failed (rolled back); True if the previous one had failed too."""
        ...

    def shrinkable(self) -> bool | None:
        """None: not drained (nothing to give back yet); else whether the last commit failed."""
        ...

    def recreate(self, store: SpoolStore, why: Exception) -> bool:
        """Replace the drained file by a fresh one; False if it cannot be done."""
        ...


class SpoolWriter:
    """The write-behind (see the module description); ``thread=False`` starts no thread: only
    ``flush`` and ``close`` write."""

    def __init__(
        self, store: SpoolStore, pending: Pending, *, memory_max: int, thread: bool = True
    ) -> None:
        self._store = store
        self._pending = pending
        self._memory_max = memory_max
        self._warn = RateLimitedLog(log)
        self._flush_lock = threading.Lock()  # one commit (or give-back) at a time
        self._closing = threading.Event()
        self.gave_back = 0  # times the file was shrunk after a backlog drained
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(target=self._loop, name="edged-spool", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while self._pending.wait_due(self._closing):
            ok = self.flush()
            self.give_back()
            if not ok and self._closing.wait(RETRY_S):
                return

    def flush(self) -> bool:
        """Commit what changed now; False if the commit failed (logged; everything stays in
        memory and is tried again)."""
        with self._flush_lock:
            return self._flush(final=False)

    def _flush(self, final: bool) -> bool:
        store = self._store
        if not store.is_open:
            return False
        snap = self._pending.snapshot(final)
        if snap is None:
            return True
        try:
            result = store.commit(snap)
        except sqlite3.Error as err:
            if not self._pending.failed():  # one warning per episode; the recovery is logged
                log.warning(
                    "spool: cannot write %s: %s; keeping new messages in memory (at most %d) "
                    "until it can be written again",
                    store.path,
                    err,
                    self._memory_max,
                )
            return False
        if self._pending.committed(snap, result):
            log.info("spool: %s can be written again", store.path)
        if result[2]:
            self._warn.warning(
                f"spool full ({store.max_messages} messages / {store.max_bytes} bytes): "
                "dropping the oldest messages"
            )
        return True

    def give_back(self) -> bool:
        """Once the backlog has drained, give the disk space the spool grew to back: checkpoint
        and truncate the WAL and VACUUM the (empty) file - or, when even that cannot be written
        (a full disk), replace the file, every row of which the broker has acknowledged, by a
        fresh one. True if it did either. The writer thread calls this after each commit."""
        store = self._store
        with self._flush_lock:
            failing = self._pending.shrinkable()
            if failing is None or not store.is_open:
                return False
            size = store.size_on_disk()
            if size < GIVE_BACK_BYTES and not failing:
                return False
            try:
                if failing:
                    raise sqlite3.OperationalError("the last commit failed")
                store.shrink()
            except (sqlite3.Error, OSError) as err:
                if not self._pending.recreate(store, err):
                    return False
            after = store.size_on_disk()
            self.gave_back += 1
        log.info("spool: backlog delivered; %s shrunk from %d to %d bytes", store.path, size, after)
        return True

    def close(self, timeout: float) -> bool:
        """Stop the thread and make the final commit; False if the disk did not answer."""
        self._closing.set()
        self._pending.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if not self._flush_lock.acquire(timeout=timeout):
            return False
        try:
            self._flush(final=True)
        finally:
            self._flush_lock.release()
        return True
