"""The on-disk outbox: messages the broker has not acknowledged yet, in an sqlite file.

``SqliteOutbox`` implements the ``Outbox`` protocol (``edged.publish.outbox``) on top of
``<state_dir>/spool.sqlite3`` (stdlib ``sqlite3``, WAL mode), so that predictions made while the
broker is away survive ``kill -9``, a crash or a power cut and are sent after the restart, in
order, before anything new.

Write-behind, so that the frame loop never waits for the disk: ``append``, ``peek``, ``ack`` and
``len`` work on memory (``peek`` also reads committed rows through a second, read-only
connection, which in WAL mode never waits for the writer). A writer thread commits, as one
transaction, as soon as the oldest message not yet written has waited ``flush_interval`` (50 ms)
unacknowledged: everything not yet written is inserted, acknowledged rows are deleted, the bounds
enforced. A message the broker acknowledges within that interval - every message while the broker
is reachable and answers promptly - is never written at all, so a healthy device does (almost)
no disk writes for its messages, at any message rate.

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

Sequence numbers: ``SeqCounter`` hands out the daemon's prediction ``seq``. It continues after a
restart instead of starting at 1 again, so that a message resent after a restart can be told
from a new one. The spool persists a reservation (``SEQ_BLOCK`` = 100 numbers ahead) before a
number in it is used, plus the exact last number on a clean close: after a clean restart ``seq``
continues at last + 1; after ``kill -9`` or a power cut it continues after the reservation, so
it can skip up to ``SEQ_BLOCK`` numbers, but never reuses one.

A second process cannot open the same spool (``spool.lock``, an flock). A corrupt file is set
aside as ``spool.sqlite3.bad`` and an empty spool started.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edged.publish.connect import RateLimitedLog
from edged.publish.outbox import MemoryOutbox, Outbox, OutMessage, message_size

if TYPE_CHECKING:
    from edged.config import Config

__all__ = [
    "FLUSH_INTERVAL_S",
    "SEQ_BLOCK",
    "SPOOL_NAME",
    "SeqCounter",
    "SpoolError",
    "SqliteOutbox",
    "open_outbox",
]

log = logging.getLogger("edged.spool")

SPOOL_NAME = "spool.sqlite3"
LOCK_NAME = "spool.lock"
SCHEMA_VERSION = 1
FLUSH_INTERVAL_S = 0.05  # an unacknowledged message is committed when it is this old
SEQ_BLOCK = 100  # sequence numbers reserved ahead (the most skipped after a kill -9)
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024  # the WAL is truncated to this after a checkpoint
RETRY_S = 1.0  # pause after a failed commit
SEQ_WAIT_S = 0.5  # longest SeqCounter.next waits for its reservation to be committed

Sync = Literal["full", "normal"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages ("
    " seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,"
    " qos INTEGER NOT NULL, retain INTEGER NOT NULL, size INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class SpoolError(Exception):
    """The spool cannot be used (one line, for the log)."""


class SqliteOutbox:
    """A bounded, persistent ``Outbox``; see the module description.

    Thread-safe: the publisher's threads call ``append``/``peek``/``ack``/``len``, the daemon
    calls ``seq_used`` (through ``SeqCounter``), the writer thread commits.
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

        self._lock_fd = self._take_lock()
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

    # ------------------------------------------------------------------ opening

    def _take_lock(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path.parent / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise SpoolError(
                f"cannot open the spool in {self.path.parent}: {_oserror(err)}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(f"spool {self.path} is in use by another process") from None
        return fd

    def _open(self) -> None:
        try:
            self._connect()
        except sqlite3.DatabaseError as err:
            if not _is_corruption(err):
                self._close_connections()
                raise SpoolError(f"cannot open spool {self.path}: {err}") from None
            self._close_connections()
            bad = self.path.with_name(self.path.name + ".bad")
            try:
                os.replace(self.path, bad)
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(str(self.path) + suffix)
            except OSError as move_err:
                raise SpoolError(
                    f"spool {self.path} is corrupt ({err}) and cannot be set aside: "
                    f"{_oserror(move_err)}"
                ) from None
            log.warning(
                "spool %s is corrupt (%s); set aside as %s, starting an empty spool",
                self.path,
                err,
                bad.name,
            )
            try:
                self._connect()
            except sqlite3.Error as err2:
                self._close_connections()
                raise SpoolError(f"cannot create spool {self.path}: {err2}") from None
        except sqlite3.Error as err:
            self._close_connections()
            raise SpoolError(f"cannot open spool {self.path}: {err}") from None

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        self._db = db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode={mode})")
        db.execute(f"PRAGMA synchronous={self.sync.upper()}")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        check = db.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            detail = "; ".join(str(r[0]) for r in check[:3])
            raise sqlite3.DatabaseError(f"database disk image is malformed ({detail})")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.OperationalError(
                f"written by a newer edged (schema {version} > {SCHEMA_VERSION})"
            )
        db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:
                db.execute(stmt)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            count, nbytes, max_seq = db.execute(
                "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM messages"
            ).fetchone()
            if meta.get("clean"):
                start = int(meta.get("seq_last", 0))
            else:
                start = max(int(meta.get("seq_last", 0)), int(meta.get("seq_reserved", 0)))
            reserved = start + SEQ_BLOCK
            _put_meta(db, clean=0, seq_last=start, seq_reserved=reserved)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._reader = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=1.0
        )
        self._reader.execute("PRAGMA query_only=1")
        self._disk_count = int(count)
        self._disk_bytes = int(nbytes)
        self._disk_max_seq = int(max_seq)
        self._next_seq = int(max_seq) + 1
        self._dropped = int(meta.get("dropped", 0))
        self._seq_last = start
        self._seq_wanted = self._seq_durable = reserved
        self.seq_start = start
        self.recovered = self._disk_count
        self.unclean = bool(meta) and not meta.get("clean")

    # ------------------------------------------------------------------ Outbox

    def append(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        size = message_size(topic, payload)
        with self._lock:
            dropped = 0
            while self._tail and (
                len(self._tail) >= self.memory_max_messages
                or self._tail_bytes + size > self.memory_max_bytes
            ):
                old_seq, old = self._tail.popitem(last=False)
                del self._tail_t[old_seq]
                self._tail_bytes -= message_size(old.topic, old.payload)
                if old_seq <= self._flushing_upto:  # being written: delete it afterwards
                    self._acked_early.add(old_seq)
                dropped += 1
            seq = self._next_seq
            self._next_seq += 1
            was_empty = not self._tail
            self._tail[seq] = OutMessage(seq, topic, payload, qos, retain)
            self._tail_t[seq] = time.monotonic()
            self._tail_bytes += size
            if dropped:
                self._dropped += dropped
                self._new_drops += dropped
            if was_empty or dropped:  # else the writer already waits for the oldest one
                self._wake.notify_all()
        if dropped:
            self._warn.warning(
                f"spool: {len(self._tail)} messages wait in memory for the disk "
                f"(queue_max {self.memory_max_messages}): dropping the oldest"
            )
        return dropped

    def peek(self, after: int, limit: int) -> list[OutMessage]:
        if limit <= 0:
            return []
        with self._lock:
            out: list[OutMessage] = []
            if self._disk_count > 0 and self._reader is not None:
                try:
                    rows = self._reader.execute(
                        "SELECT seq, topic, payload, qos, retain FROM messages"
                        " WHERE seq > ? ORDER BY seq LIMIT ?",
                        (after, limit + len(self._acked) + len(self._acked_early)),
                    ).fetchall()
                except sqlite3.Error as err:
                    # Nothing rather than newer messages first: the order is kept.
                    self._warn.warning(f"spool: cannot read {self.path}: {err}")
                    return []
                acked, early = self._acked, self._acked_early
                out = [
                    OutMessage(s, t, bytes(p), int(q), bool(r))
                    for s, t, p, q, r in rows
                    if s not in acked and s not in early
                ][:limit]
            if len(out) < limit or (out and self._tail and next(iter(self._tail)) < out[-1].seq):
                # Rows just committed can still be in the tail: merge without duplicates.
                seen = {m.seq for m in out}
                more: list[OutMessage] = []
                for seq, msg in self._tail.items():
                    if seq > after and seq not in seen:
                        more.append(msg)
                        if len(more) >= limit:
                            break
                if more:
                    out = sorted(out + more, key=lambda m: m.seq)[:limit]
            return out

    def ack(self, seq: int) -> None:
        with self._lock:
            msg = self._tail.pop(seq, None)
            if msg is not None:
                del self._tail_t[seq]
                self._tail_bytes -= message_size(msg.topic, msg.payload)
                if seq <= self._flushing_upto:
                    self._acked_early.add(seq)
            elif self._dropped_upto < seq <= self._disk_max_seq and seq not in self._acked:
                if not self._acked:
                    self._acked_since = time.monotonic()
                    self._wake.notify_all()
                self._acked.add(seq)

    def __len__(self) -> int:
        with self._lock:
            return max(0, self._disk_count + len(self._tail) - len(self._acked))

    @property
    def dropped(self) -> int:
        """Messages dropped for the bounds since the spool file was created."""
        with self._lock:
            return self._dropped

    @property
    def nbytes(self) -> int:
        """Bytes (topic + payload) of the messages held, on disk and in memory (approximate
        while acknowledged messages wait for their delete)."""
        with self._lock:
            return self._disk_bytes + self._tail_bytes

    # ------------------------------------------------------------------ sequence numbers

    def seq_used(self, seq: int) -> None:
        """``seq`` is about to be published: make sure a restart never hands it out again."""
        with self._lock:
            self._seq_last = max(self._seq_last, seq)
            if seq + SEQ_BLOCK // 2 > self._seq_wanted:
                self._seq_wanted = seq + SEQ_BLOCK
                self._wake.notify_all()
            if seq <= self._seq_durable or self._failing or self._closed:
                return
            # The writer is behind by SEQ_BLOCK/2 numbers: wait for the reservation.
            deadline = time.monotonic() + SEQ_WAIT_S
            while seq > self._seq_durable and not self._failing and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.notify_all()
                self._wake.wait(left)
            late = seq > self._seq_durable
        if late:
            self._warn.warning(
                "spool: sequence numbers are not committed in time; "
                "after a crash some may be reused"
            )

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
            if not self.flush() and self._closing.wait(RETRY_S):
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
        bound_drops = cut = 0
        freed_count = freed_bytes = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for seq in deletes:
                    row = db.execute("SELECT size FROM messages WHERE seq = ?", (seq,)).fetchone()
                    if row is not None:
                        db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
                        freed_count += 1
                        freed_bytes += int(row[0])
                if batch:
                    db.executemany(
                        "INSERT OR REPLACE INTO messages (seq, topic, payload, qos, retain, size)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (
                                m.seq,
                                m.topic,
                                m.payload,
                                m.qos,
                                int(m.retain),
                                message_size(m.topic, m.payload),
                            )
                            for m in batch
                        ],
                    )
                count = disk_count - freed_count + len(batch)
                nbytes = (
                    disk_bytes - freed_bytes + sum(message_size(m.topic, m.payload) for m in batch)
                )
                bound_drops, dropped_bytes, cut = _enforce_bounds(
                    db, count - self.max_messages, nbytes - self.max_bytes
                )
                count -= bound_drops
                nbytes -= dropped_bytes
                meta: dict[str, int] = {}
                if new_drops or bound_drops:
                    meta["dropped"] = dropped_total + bound_drops
                if final:
                    meta.update(clean=1, seq_last=seq_last, seq_reserved=seq_last)
                elif seq_wanted > seq_durable:
                    meta["seq_reserved"] = seq_wanted
                if meta:
                    _put_meta(db, **meta)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            with self._lock:
                self._flushing_upto = 0
                self._acked_early.clear()  # their inserts were rolled back
                self._failing = True
                self._wake.notify_all()
            self._warn.warning(
                f"spool: cannot write {self.path}: {err}; keeping messages in memory"
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
            self._failing = False
            self._wake.notify_all()
        if bound_drops:
            self._warn.warning(
                f"spool full ({self.max_messages} messages / {self.max_bytes} bytes): "
                "dropping the oldest messages"
            )
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
            for conn in (self._reader, self._db):
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
            self._reader = self._db = None

    def _release(self) -> None:
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> SqliteOutbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SeqCounter:
    """The daemon's prediction sequence numbers: 1, 2, 3, ... and, with a spool, continuing
    after a restart (see the module description)."""

    def __init__(self, spool: SqliteOutbox | None = None) -> None:
        self._spool = spool
        self.last = spool.seq_start if spool is not None else 0

    def next(self) -> int:
        seq = self.last + 1
        if self._spool is not None:
            self._spool.seq_used(seq)
        self.last = seq
        return seq


def open_outbox(cfg: Config) -> tuple[Outbox, SeqCounter]:
    """The daemon's outbox: the spool in ``<state_dir>`` (created if missing) when
    ``publish.spool`` is on, else - or when it cannot be opened, with one warning - memory."""
    p = cfg.publish
    if p.spool:
        try:
            spool = SqliteOutbox(
                Path(cfg.state_dir) / SPOOL_NAME,
                max_messages=p.spool_max_messages,
                max_bytes=p.spool_max_bytes,
                memory_max_messages=p.queue_max,
                memory_max_bytes=p.queue_max_bytes,
                sync=p.spool_sync,
            )
        except SpoolError as err:
            log.warning(
                "%s; keeping messages in memory only (lost on restart; seq starts at 1)", err
            )
        else:
            log.info(
                "spool %s: %d message(s) waiting%s, seq continues after %d",
                spool.path,
                spool.recovered,
                " (after an unclean stop)" if spool.unclean else "",
                spool.seq_start,
            )
            return spool, SeqCounter(spool)
    return MemoryOutbox(p.queue_max, p.queue_max_bytes), SeqCounter()


# ---------------------------------------------------------------------- helpers


def _put_meta(db: sqlite3.Connection, **values: int) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [(k, int(v)) for k, v in values.items()],
    )


def _enforce_bounds(
    db: sqlite3.Connection, excess_count: int, excess_bytes: int
) -> tuple[int, int, int]:
    """Delete the oldest rows until neither bound is exceeded (the newest row stays);
    returns (rows, bytes, highest seq) deleted. Runs inside the caller's transaction."""
    if excess_count <= 0 and excess_bytes <= 0:
        return 0, 0, 0
    newest = db.execute("SELECT max(seq) FROM messages").fetchone()[0]
    n = b = 0
    cut = None
    cur = db.execute("SELECT seq, size FROM messages ORDER BY seq")
    try:
        for seq, size in cur:
            if (n >= excess_count and b >= excess_bytes) or seq == newest:
                break
            n += 1
            b += int(size)
            cut = seq
    finally:
        cur.close()
    if cut is None:
        return 0, 0, 0
    db.execute("DELETE FROM messages WHERE seq <= ?", (cut,))
    return n, b, int(cut)


def _is_corruption(err: sqlite3.DatabaseError) -> bool:
    text = str(err).lower()
    return isinstance(err, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "corrupt" in text
    )


def _oserror(err: OSError) -> str:
    return err.strerror or str(err)
