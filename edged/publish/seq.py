"""The daemon's prediction sequence numbers and its outbox.

``seq`` increases strictly for the device's whole life, whatever happens to the spool:

* Its high-water mark is kept in a file of its own, ``<state_dir>/seq.hwm`` (``SeqFile``),
  outside the spool, so that a damaged, foreign or unreadable spool cannot take it along. The
  file holds two checksummed slots that are overwritten in place and fsync'ed (a torn write
  spoils one slot, the other stays valid; no new disk block is needed, so it can still be
  written on a full disk). It is *reserved ahead*: before a number is handed out, a value at
  least that high is durable; the counter reserves ``SEQ_BLOCK`` (100) numbers at a time, from
  a thread of its own, halfway through the previous block, and writes the exact last number on
  a clean stop.
* The spool keeps a reservation of its own as well (``edged.publish.spool``).
* At start ``seq`` continues after the highest of the two. After a clean stop that is +1;
  after ``kill -9`` or a power cut up to ``SEQ_BLOCK`` numbers are skipped, none reused.
* If neither can tell - the high-water mark file is damaged or missing *and* the spool is
  missing, broken or never recorded a number, while something shows the device ran before (a
  damaged mark, a spool file) - ``seq`` continues from a time-derived floor: microseconds since
  the Unix epoch (``time_floor``), above any number handed out before as long as the device
  never averaged a million predictions a second and its clock is not behind the clock of the
  earlier run. A state dir with neither file at all is a new device: ``seq`` starts at 1.

``open_outbox`` makes the daemon's outbox and counter: the spool (``SqliteOutbox``,
``edged.publish.spool``) or - with ``publish.spool = false`` or when it cannot be opened, with
one warning - memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from edged.errors import SpoolBusy, SpoolError
from edged.infra.util import close_fd
from edged.publish.outbox import MemoryOutbox, Outbox
from edged.publish.spool import SqliteOutbox
from edged.publish.spool_file import SEQ_BLOCK, SPOOL_NAME
from edged.publish.spool_salvage import Found, salvage

if TYPE_CHECKING:
    from edged.config import Config

__all__ = ["HWM_NAME", "SeqCounter", "SeqFile", "open_outbox", "time_floor"]

log = logging.getLogger("edged.spool")

HWM_NAME = "seq.hwm"
SLOT = 64  # bytes per slot; the file is two slots
SEQ_WAIT_S = 0.5  # longest next() waits for its reservation to be written
RETRY_S = 5.0  # pause after a failed write of the high-water mark
CLOCK_SANE_US = 1_767_225_600 * 1_000_000  # 2026-01-01: an earlier clock is not set
_SLOT_RE = re.compile(rb"edged-seq 1 (\d{1,19}) (\d{1,19}) ([0-9a-f]{8}) *\n")


def time_floor() -> int:
    """A sequence number above any handed out before, from the wall clock (microseconds)."""
    return time.time_ns() // 1000


def _slot(gen: int, value: int) -> bytes:
    body = f"edged-seq 1 {gen} {value}"
    line = f"{body} {zlib.crc32(body.encode('ascii')):08x}".encode("ascii")
    return line.ljust(SLOT - 1) + b"\n"


def _parse(slot: bytes) -> tuple[int, int] | None:
    """(generation, value) of a valid slot."""
    m = _SLOT_RE.fullmatch(slot)
    if m is None:
        return None
    gen, value = int(m.group(1)), int(m.group(2))
    body = f"edged-seq 1 {gen} {value}".encode("ascii")
    return (gen, value) if f"{zlib.crc32(body):08x}".encode("ascii") == m.group(3) else None


class SeqFile:
    """``<state_dir>/seq.hwm``: the sequence numbers' high-water mark (see the module).

    Each slot holds a generation, the mark and a CRC-32; the valid slot of the highest
    generation is the mark (a clean stop may lower it to the exact last number)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = -1
        self._slots: list[tuple[int, int] | None] = [None, None]  # (generation, value)

    def read(self) -> tuple[str, int, str]:
        """(status, value, detail): ``ok`` with the mark, ``missing``, or ``damaged`` (the
        file exists but holds no valid slot, or cannot be read; ``detail`` says why)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return "missing", 0, ""
        except OSError as err:
            return "damaged", 0, err.strerror or str(err)
        try:
            data = os.read(fd, 2 * SLOT + 1)
        except OSError as err:
            return "damaged", 0, err.strerror or str(err)
        finally:
            os.close(fd)
        slots = [_parse(data[i * SLOT : (i + 1) * SLOT]) for i in range(2)]
        valid = [v for v in slots if v is not None]
        newest = max(valid)[1] if valid else 0  # the slot written last
        if len(data) != 2 * SLOT or not valid:
            why = "empty" if not data else f"{len(data)} bytes, no valid slot"
            return "damaged", newest, why
        self._slots = slots
        return "ok", newest, ""

    def write(self, value: int) -> None:
        """Make ``value`` the durable mark; raises OSError. The slot not holding the current
        mark is overwritten, so a torn write leaves the previous mark readable."""
        if self._fd < 0 and any(self._slots):  # read intact: overwrite in place (full disk)
            with contextlib.suppress(OSError):
                self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        if self._fd < 0:
            self._create(value)
            return
        a, b = self._slots
        i = 0 if a is None or (b is not None and a < b) else 1  # not the newest slot
        gen = max(s[0] for s in (a, b) if s is not None) + 1
        self._slots[i] = None  # until the write is known to be durable
        os.pwrite(self._fd, _slot(gen, value), i * SLOT)
        os.fsync(self._fd)
        self._slots[i] = (gen, value)

    def _create(self, value: int) -> None:
        """A new file with both slots (write, fsync, rename, fsync the folder); a damaged one
        in the way is replaced."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.path.lexists(self.path) and not self.path.is_file():
            _move_aside(self.path)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            data = _slot(1, value) + _slot(2, value)
            if os.write(fd, data) != len(data):
                raise OSError(28, "short write")
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._fd = fd
        self._slots = [(1, value), (2, value)]

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        close_fd(fd)


def _move_aside(path: Path) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    os.replace(path, path.with_name(f"{path.name}.broken-{stamp}"))


class SeqCounter:
    """The daemon's prediction sequence numbers (see the module description).

    ``SeqCounter(spool)`` continues after the spool's reservation; ``hwm`` adds the high-water
    mark file and ``start`` says where to continue (``open_outbox`` works both out)."""

    def __init__(
        self,
        spool: SqliteOutbox | None = None,
        *,
        hwm: SeqFile | None = None,
        start: int | None = None,
    ) -> None:
        self._spool = spool
        self.last = start if start is not None else spool.seq_start if spool is not None else 0
        self._hwm = hwm
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._durable = 0
        self._wanted = 0
        self._failing = False
        self._closing = False
        self._late_warned = False
        self._thread: threading.Thread | None = None
        if hwm is None:
            return
        self._wanted = self.last + SEQ_BLOCK
        try:
            hwm.write(self._wanted)
        except OSError as err:
            self._failed(err)
        else:
            self._durable = self._wanted
        self._thread = threading.Thread(target=self._writer, name="edged-seq", daemon=True)
        self._thread.start()

    def next(self) -> int:
        late = False
        with self._lock:
            self.last = seq = self.last + 1
            if self._hwm is not None and not self._closing:
                if seq + SEQ_BLOCK // 2 > self._wanted:
                    self._wanted = seq + SEQ_BLOCK
                    self._cond.notify_all()
                deadline = time.monotonic() + SEQ_WAIT_S
                while seq > self._durable and not self._failing and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                late = seq > self._durable and not self._failing and not self._late_warned
                if late:
                    self._late_warned = True
        if late:
            log.warning("seq: the high-water mark is not written in time (slow disk?)")
        if self._spool is not None:
            self._spool.seq_used(seq)
        return seq

    def _writer(self) -> None:
        hwm = self._hwm
        assert hwm is not None
        while True:
            with self._cond:
                while not self._closing and self._wanted <= self._durable:
                    self._cond.wait()
                if self._closing:
                    return
                wanted = self._wanted
            try:
                hwm.write(wanted)
            except OSError as err:
                with self._cond:
                    was = self._failing
                    self._failing = True
                    self._cond.notify_all()
                if not was:
                    self._failed(err)
                with self._cond:
                    self._cond.wait(RETRY_S)
                continue
            with self._cond:
                self._durable = max(self._durable, wanted)
                recovered, self._failing = self._failing, False
                self._cond.notify_all()
            if recovered:
                log.info("seq: high-water mark %s written again", hwm.path)

    def _failed(self, err: OSError) -> None:
        self._failing = True
        assert self._hwm is not None
        log.warning(
            "seq: cannot write the high-water mark %s: %s; numbers keep increasing, but after "
            "a crash before it can be written again some may be handed out again",
            self._hwm.path,
            err.strerror or err,
        )

    def close(self) -> None:
        """Write the exact last number (a clean restart continues at +1); idempotent."""
        hwm = self._hwm
        if hwm is None:
            return
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(2.0)
        if not self._failing:
            with contextlib.suppress(OSError):
                hwm.write(self.last)
        hwm.close()


def open_outbox(cfg: Config) -> tuple[Outbox, SeqCounter]:
    """The daemon's outbox and sequence numbers (see the module description): the spool in
    ``<state_dir>`` (created if missing) when ``publish.spool`` is on, else - or when it cannot
    be opened, with one warning - memory; the high-water mark file either way."""
    p = cfg.publish
    state = Path(cfg.state_dir)
    hwm = SeqFile(state / HWM_NAME)
    status, mark, detail = hwm.read()
    if status == "damaged":
        log.warning("seq: high-water mark %s is damaged (%s)", hwm.path, detail)
    spool_path = state / SPOOL_NAME
    spool_existed = any(os.path.lexists(f"{spool_path}{s}") for s in ("", "-wal"))
    spool: SqliteOutbox | None = None
    found = Found()
    if p.spool:
        try:
            spool = SqliteOutbox(
                spool_path,
                max_messages=p.spool_max_messages,
                max_bytes=p.spool_max_bytes,
                memory_max_messages=p.queue_max,
                memory_max_bytes=p.queue_max_bytes,
                sync=p.spool_sync,
            )
        except SpoolBusy as err:
            log.warning("%s; keeping messages in memory only (lost on restart)", err)
        except SpoolError as err:
            # E.g. a full disk: sqlite cannot even open it. What waits in it is sent from a
            # read-only copy in memory (and again once the spool can be opened: duplicates,
            # with their seq, rather than a wait of unknown length).
            if os.path.isfile(spool_path):
                found = salvage(spool_path, p.queue_max, p.queue_max_bytes)
            log.warning(
                "%s; keeping messages in memory only (lost on restart)%s",
                err,
                f"; {len(found.rows)} waiting message(s) read from it are sent from memory "
                "(and again at the next start that can open it)"
                if found.rows
                else "",
            )
    start = mark
    spool_knows = spool is not None and spool.seq_known
    if spool is not None and spool_knows:
        start = max(start, spool.seq_start)
    elif found.seq:
        spool_knows = True
        start = max(start, found.seq)
    if status != "ok" and not spool_knows and (status == "damaged" or spool_existed):
        floor = time_floor()
        start = max(start, floor)
        log.warning(
            "seq: neither %s nor the spool tells the last sequence number; continuing from a "
            "time-derived floor (%d)%s",
            hwm.path.name,
            start,
            "" if floor >= CLOCK_SANE_US else " - the clock is not set: seq may repeat",
        )
    elif status == "missing" and start:
        log.info("seq: no %s yet; continuing after the spool's %d", hwm.path.name, start)
    seqs = SeqCounter(spool, hwm=hwm, start=start)
    if spool is None:
        memory = MemoryOutbox(p.queue_max, p.queue_max_bytes)
        for row in found.rows:
            memory.append(row.topic, row.payload, row.qos, row.retain)
        return memory, seqs
    spool.seq_floor(start)
    log.info(
        "spool %s: %d message(s) waiting%s, seq continues after %d",
        spool.path,
        spool.recovered,
        " (after an unclean stop)" if spool.unclean else "",
        start,
    )
    return spool, seqs
