"""The daemon's prediction sequence numbers and its outbox.

Sequence numbers: ``SeqCounter`` hands out the daemon's prediction ``seq``. It continues after a
restart instead of starting at 1 again, so that a message resent after a restart can be told
from a new one. The spool persists a reservation (``SEQ_BLOCK`` = 100 numbers ahead) before a
number in it is used, plus the exact last number on a clean close: after a clean restart ``seq``
continues at last + 1; after ``kill -9`` or a power cut it continues after the reservation, so
it can skip up to ``SEQ_BLOCK`` numbers, but never reuses one.

``open_outbox`` makes the daemon's outbox and counter: a spool (``SqliteOutbox``,
``edged.publish.spool``) or, without one, memory and a counter that starts at 1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edged.publish.outbox import MemoryOutbox, Outbox
from edged.publish.spool import SqliteOutbox
from edged.publish.spool_file import SPOOL_NAME, SpoolError

if TYPE_CHECKING:
    from edged.config import Config

__all__ = ["SeqCounter", "open_outbox"]

log = logging.getLogger("edged.spool")


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
