"""The on-disk outbox: messages the broker has not acknowledged yet, in an sqlite file.

``SqliteOutbox`` implements the ``Outbox`` protocol (``edged.publish.outbox``) on top of
``<state_dir>/spool.sqlite3`` (stdlib ``sqlite3``, WAL mode), so that predictions made while the
broker is away survive ``kill -9``, a crash or a power cut and are sent after the restart, in
order, before anything new.

Write-behind, so that the frame loop never waits for the disk: ``append``, ``peek``, ``ack`` and
``len`` work on memory (``peek`` also reads committed rows through a second, read-only
connection, which in WAL mode never waits for the writer); the writer thread of ``SpoolWriter``
(``edged.publish.spool_writer``, the base class: opening, committing, closing, bounds, what can
be lost) commits them. The file itself - lock, schema, corruption - is handled in
``edged.publish.spool_file``; the daemon's sequence numbers (``SeqCounter``) and its choice of
outbox (``open_outbox``) are in ``edged.publish.seq``.

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

import sqlite3
import time

from edged.publish.outbox import OutMessage, message_size
from edged.publish.spool_file import SEQ_BLOCK
from edged.publish.spool_writer import SpoolWriter

__all__ = ["SqliteOutbox"]

SEQ_WAIT_S = 0.5  # longest SeqCounter.next waits for its reservation to be committed


class SqliteOutbox(SpoolWriter):
    """A bounded, persistent ``Outbox``; see the module description.

    Thread-safe: the publisher's threads call ``append``/``peek``/``ack``/``len``, the daemon
    calls ``seq_used`` (through ``SeqCounter``), the writer thread commits.
    """

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
                damaged = [s for s, t, p, q, r in rows if not _intact(t, p, q)]
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


def _intact(topic: object, payload: object, qos: object) -> bool:
    """A row as this spool writes it (a damaged page can hold anything)."""
    return (
        isinstance(topic, str)
        and bool(topic)
        and "\ufffd" not in topic
        and not any(c in topic for c in "+#\x00")
        and isinstance(payload, bytes)
        and qos in (0, 1, 2)
    )
