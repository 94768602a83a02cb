"""The on-disk outbox: messages the broker has not acknowledged yet, in an sqlite file.

``SqliteOutbox`` implements the ``Outbox`` protocol (``edged.publish.outbox``) on top of
``<state_dir>/spool.sqlite3`` (stdlib ``sqlite3``, WAL mode), so that predictions made while the
broker is away survive ``kill -9``, a crash or a power cut and are sent after the restart, in
order, before anything new.

Write-behind, so that the frame loop never waits for the disk: ``append``, ``peek``, ``ack`` and
``len`` work on memory, which ``SqliteOutbox`` owns (under its ``_lock``); ``peek`` also reads
committed rows. Its two parts have a lock each (``edged.publish.spool_writer``, which also says
what can be lost): ``SpoolStore``, the open file (``edged.publish.spool_file``: lock, schema,
corruption), and ``SpoolWriter``, the thread that commits the memory to it. The sequence
numbers (``SeqCounter``) and the daemon's choice of outbox are in ``edged.publish.seq``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Self

from edged.errors import SpoolError
from edged.infra.util import RateLimitedLog
from edged.publish.outbox import OutMessage, message_size
from edged.publish.spool_file import SEQ_BLOCK, SpoolFile, Sync
from edged.publish.spool_salvage import intact_row
from edged.publish.spool_writer import FLUSH_INTERVAL_S, Snapshot, SpoolStore, SpoolWriter

__all__ = ["SqliteOutbox"]

SEQ_WAIT_S = 0.5  # longest SeqCounter.next waits for its reservation to be committed

log = logging.getLogger("edged.spool")


class SqliteOutbox:
    """A bounded, persistent ``Outbox``; see the module description.

    Thread-safe: the publisher's threads call ``append``/``peek``/``ack``/``len``, the daemon
    calls ``seq_used`` (through ``SeqCounter``), the writer thread commits. ``_lock`` guards the
    memory state; lock order: ``_lock``, then the store's.
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
        self._lock = threading.Lock()  # the memory state below
        self._wake = threading.Condition(self._lock)  # the writer: something to commit
        self._closed = False

        self._tail: OrderedDict[int, OutMessage] = OrderedDict()  # not yet committed
        self._tail_bytes = 0
        self._tail_t: dict[int, float] = {}  # seq -> when appended (monotonic)
        self._acked_since = 0.0  # when _acked last became non-empty
        self._flushing_upto = 0  # tail seqs <= this are in the commit in progress
        self._acked: set[int] = set()  # acknowledged, committed rows: delete at the next commit
        self._acked_early: set[int] = set()  # acknowledged while the running commit inserts them
        self._dropped_upto = 0  # the bounds dropped every committed row up to this seq
        self._new_drops = 0  # dropped from the tail since the last commit (to persist)
        self._failing = False  # the last commit failed

        self._store = SpoolStore(self.path, sync, max_messages, max_bytes)
        self._adopt(self._store.opened)
        self._writer = SpoolWriter(self._store, self, memory_max=memory_max_messages, thread=writer)

    def _adopt(self, opened: SpoolFile) -> None:
        """The state of a freshly opened file."""
        self._disk_count = opened.count  # rows committed
        self._disk_bytes = opened.nbytes
        self._disk_max_seq = opened.max_seq
        self._next_seq = opened.max_seq + 1  # the next message's position in the spool
        self._dropped = opened.dropped  # persistent total
        self._seq_last = opened.seq_start  # the last sequence number handed out
        self._seq_durable = opened.seq_reserved  # committed: numbers up to this may be used
        self._seq_wanted = opened.seq_reserved  # reservation the writer should commit next
        self.seq_start = opened.seq_start  # SeqCounter continues after this
        self.recovered = opened.count  # messages found in the file when it was opened
        self.unclean = opened.unclean  # the previous user did not close it (kill -9, power cut)
        self.seq_known = opened.seq_known  # the file had recorded sequence numbers
        self.set_aside = opened.set_aside  # a broken file moved aside at opening
        self.salvaged = opened.salvaged  # messages carried over from it

    @property
    def gave_back(self) -> int:
        """Times the file was shrunk after a backlog drained."""
        return self._writer.gave_back

    def flush(self) -> bool:
        """Commit now (see ``SpoolWriter.flush``); False if the commit failed."""
        return self._writer.flush()

    def give_back(self) -> bool:
        """Shrink the drained file now (see ``SpoolWriter.give_back``)."""
        return self._writer.give_back()

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
            if self._disk_count > 0:
                try:
                    rows = self._store.read(
                        after, limit + len(self._acked) + len(self._acked_early)
                    )
                except sqlite3.Error as err:
                    # Nothing rather than newer messages first: the order is kept.
                    self._warn.warning(f"spool: cannot read {self.path}: {err}")
                    return []
                acked, early = self._acked, self._acked_early
                damaged = [s for s, t, p, q, r in rows if not intact_row(t, p, q)]
                for seq in damaged:  # unreadable rows would block the queue: drop, count, log
                    self._ack_locked(seq)
                    self._dropped += 1
                    self._new_drops += 1
                if damaged:
                    self._warn.warning(
                        f"spool: dropping {len(damaged)} damaged message(s) in {self.path}",
                        key="damaged rows",
                    )
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
            else:
                self._ack_locked(seq)

    def _ack_locked(self, seq: int) -> None:
        """A committed row is done with: deleted at the next commit (``_lock`` held)."""
        if self._dropped_upto < seq <= self._disk_max_seq and seq not in self._acked:
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

    def seq_floor(self, seq: int) -> None:
        """Sequence numbers up to ``seq`` may have been handed out (known from elsewhere): the
        file's reservation moves past it with the next commit."""
        with self._lock:
            self._seq_last = max(self._seq_last, seq)
            if seq + SEQ_BLOCK > self._seq_wanted:
                self._seq_wanted = seq + SEQ_BLOCK
                self._wake.notify_all()

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

    # ------------------------------------------------------------------ Pending (the writer)

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

    def wait_due(self, closing: threading.Event) -> bool:
        with self._wake:
            while not closing.is_set():
                due = self._due_in(time.monotonic())
                if due is not None and due <= 0:
                    return True
                self._wake.wait(due)
        return False

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def snapshot(self, final: bool) -> Snapshot | None:
        with self._lock:
            batch = list(self._tail.values())
            self._flushing_upto = batch[-1].seq if batch else 0
            deletes = list(self._acked)
            new_drops, seq_wanted, seq_last = self._new_drops, self._seq_wanted, self._seq_last
            need_meta = new_drops > 0 or seq_wanted > self._seq_durable or final
            if not batch and not deletes and not need_meta:
                return None
            meta: dict[str, int] = {}
            if final:
                meta.update(clean=1, seq_last=seq_last, seq_reserved=seq_last)
            elif seq_wanted > self._seq_durable:
                meta["seq_reserved"] = seq_wanted
            return Snapshot(
                batch,
                deletes,
                (self._disk_count, self._disk_bytes),
                meta,
                (self._dropped, new_drops > 0),
                new_drops,
                seq_wanted,
                final,
            )

    def failed(self) -> bool:
        with self._lock:
            self._flushing_upto = 0
            self._acked_early.clear()  # their inserts were rolled back
            was_failing, self._failing = self._failing, True
            self._wake.notify_all()
        return was_failing

    def committed(self, snap: Snapshot, result: tuple[int, int, int, int]) -> bool:
        count, nbytes, bound_drops, cut = result
        with self._lock:
            for m in snap.batch:
                if self._tail.pop(m.seq, None) is not None:
                    del self._tail_t[m.seq]
                    self._tail_bytes -= message_size(m.topic, m.payload)
            self._flushing_upto = 0
            self._acked.difference_update(snap.deletes)
            if self._acked_early and not self._acked:
                self._acked_since = time.monotonic()
            self._acked.update(self._acked_early)
            self._acked_early.clear()
            if cut:
                self._dropped_upto = max(self._dropped_upto, cut)
                self._acked = {a for a in self._acked if a > cut}
            self._disk_count = count
            self._disk_bytes = nbytes
            if snap.batch:
                self._disk_max_seq = max(self._disk_max_seq, snap.batch[-1].seq)
            self._new_drops -= snap.new_drops
            self._dropped += bound_drops
            if not snap.final:
                self._seq_durable = max(self._seq_durable, snap.seq_wanted)
            recovered, self._failing = self._failing, False
            self._wake.notify_all()
        return recovered

    def shrinkable(self) -> bool | None:
        with self._lock:
            if self._closed or self._tail:
                return None
            if self._disk_count - len(self._acked) > 0 or (self._disk_count and not self._failing):
                return None  # rows to delete first: the next commit does that
            return self._failing

    def recreate(self, store: SpoolStore, why: Exception) -> bool:
        with self._lock:
            if self._tail or self._disk_count - len(self._acked) > 0:
                return False
            seq_floor = self._seq_last  # the fresh file reserves SEQ_BLOCK beyond it again
            next_seq, disk_max = self._next_seq, self._disk_max_seq
            kept = (self.seq_start, self.unclean, self.seq_known, self.set_aside, self.salvaged)
            try:
                opened = store.recreate(seq_floor, self._dropped)
            except (OSError, SpoolError) as err:
                self._failing = True
                self._warn.warning(f"spool: cannot replace {self.path} ({why}): {err}")
                return False
            self._adopt(opened)
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
        if not self._writer.close(timeout):
            log.warning("spool: the disk is not answering; closing without a final commit")
        with self._lock:
            self._closed = True
            left = self._disk_count - len(self._acked) + len(self._tail)
            self._wake.notify_all()
        if left > 0:
            log.info("spool: %d message(s) kept in %s for the next start", left, self.path)
        self._store.close_connections()
        self._store.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
