"""The spool's sqlite file: taking its lock, opening (or creating) it, the statements a commit runs.

``<state_dir>/spool.sqlite3`` (stdlib ``sqlite3``, WAL mode) holds the messages not yet
acknowledged (table ``messages``) and a few counters (table ``meta``: the drop total, the
sequence number reservation, whether the last user closed it cleanly). ``SqliteOutbox``
(``edged.publish.spool``) keeps the file open through two connections: a writer and a read-only
reader, which in WAL mode never waits for the writer.

A second process cannot open the same spool (``spool.lock``, an flock). A file that cannot be
used as it is (damaged, another schema, unreadable) is set aside as
``spool.sqlite3.broken-<UTC time>`` and a fresh spool started with what could be read from it
(``open_file``); what can be read from it is salvaged (``edged.publish.spool_salvage``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edged.errors import SpoolBroken as _Broken
from edged.errors import SpoolBusy, SpoolError
from edged.publish.outbox import OutMessage, message_size
from edged.publish.spool_salvage import (
    BROKEN_KEEP,
    Salvaged,
    broken_cause,
    close_quietly,
    oserror,
    salvage,
    set_aside,
    text,
)

__all__ = [
    "BROKEN_KEEP",
    "JOURNAL_SIZE_LIMIT",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "SEQ_BLOCK",
    "SPOOL_NAME",
    "SpoolBusy",
    "SpoolError",
    "SpoolFile",
    "Sync",
    "close_quietly",
    "commit",
    "enforce_bounds",
    "open_file",
    "put_meta",
    "take_lock",
]

log = logging.getLogger("edged.spool")

SPOOL_NAME = "spool.sqlite3"
LOCK_NAME = "spool.lock"
SCHEMA_VERSION = 1
SEQ_BLOCK = 100  # sequence numbers reserved ahead (the most skipped after a kill -9)
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024  # the WAL is truncated to this after a checkpoint

Sync = Literal["full", "normal"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages ("
    " seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,"
    " qos INTEGER NOT NULL, retain INTEGER NOT NULL, size INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


@dataclass(frozen=True, slots=True)
class SpoolFile:
    """An opened spool file: its two connections and what it held."""

    db: sqlite3.Connection  # the writer connection
    reader: sqlite3.Connection  # read-only
    count: int  # rows in ``messages``
    nbytes: int  # their sizes (topic + payload)
    max_seq: int  # the highest seq among them (0: none)
    dropped: int  # persistent total of messages dropped for the bounds
    seq_start: int  # the last sequence number that may have been handed out
    seq_reserved: int  # the reservation committed at opening (seq_start + SEQ_BLOCK)
    unclean: bool  # the previous user did not close the spool (kill -9, power cut)
    seq_known: bool = False  # the file recorded sequence numbers (it was used before)
    set_aside: Path | None = None  # where a broken file was moved (this one is fresh)
    salvaged: int = 0  # messages carried over from the set-aside file


def take_lock(path: Path) -> int:
    """Take the flock on ``spool.lock`` next to ``path`` (creating the folder); returns its fd."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path.parent / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise SpoolError(f"cannot open the spool in {path.parent}: {oserror(err)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SpoolBusy(f"spool {path} is in use by another process") from None
    return fd


def open_file(
    path: Path,
    sync: Sync,
    *,
    seq_floor: int = 0,
    dropped: int = 0,
    max_messages: int = 100_000,
    max_bytes: int = 32 * 1024 * 1024,
) -> SpoolFile:
    """Open (or create) the spool file; raises ``SpoolError``.

    A file that cannot be used as it is - damaged, truncated, not an sqlite file, another
    schema, not a regular file, unreadable - is set aside as ``spool.sqlite3.broken-<UTC time>``
    (with its ``-wal``; the newest ``BROKEN_KEEP`` such copies are kept), what can still be read
    from it (its undelivered messages, within the bounds, and its sequence numbers) is carried
    into a fresh spool, and one warning says why. A problem of the surroundings (a full disk,
    a folder that cannot be written) raises ``SpoolError`` and leaves the file alone.

    ``seq_floor`` and ``dropped`` seed a fresh file's counters (and raise an existing one's)."""
    try:
        return _connect(path, sync, seq_floor=seq_floor, dropped=dropped)
    except _Broken as err:
        cause = str(err)
    except (UnicodeError, ValueError, OverflowError) as err:  # what a damaged file can hold
        cause = f"damaged ({type(err).__name__}: {err})"
    except sqlite3.DatabaseError as err:
        why = broken_cause(path, err)
        if why is None:
            raise SpoolError(f"cannot open spool {path}: {err}") from None
        cause = why
    except OSError as err:  # pragma: no cover - sqlite3 reports these as DatabaseError
        raise SpoolError(f"cannot open spool {path}: {oserror(err)}") from None
    try:
        aside = set_aside(path)
    except OSError as move_err:
        raise SpoolError(
            f"spool {path} cannot be used ({cause}) and cannot be set aside: {oserror(move_err)}"
        ) from None
    found = salvage(aside, max_messages, max_bytes)
    try:
        opened = _connect(
            path,
            sync,
            seq_floor=max(seq_floor, found.seq),
            dropped=dropped,
            rows=found.rows,
        )
    except (sqlite3.Error, _Broken) as err2:
        raise SpoolError(
            f"spool {path} cannot be used ({cause}; set aside as {aside.name}) and a new one "
            f"cannot be created: {err2}"
        ) from None
    log.warning(
        "spool %s cannot be used (%s): set aside as %s; %d undelivered message(s) recovered "
        "from it%s; started a fresh spool",
        path,
        cause,
        aside.name,
        len(found.rows),
        f" ({found.lost})" if found.lost else "",
    )
    return dataclasses.replace(
        opened, set_aside=aside, salvaged=len(found.rows), seq_known=found.seq > 0
    )


_COLUMNS = {"seq", "topic", "payload", "qos", "retain", "size"}


def _check_schema(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise _Broken(f"schema version {version}, this edged uses {SCHEMA_VERSION}")
    tables = {
        str(name): {str(c[1]) for c in db.execute(f'PRAGMA table_info("{name}")').fetchall()}
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "messages" in tables and not tables["messages"] >= _COLUMNS:
        raise _Broken("another schema (table messages has other columns)")
    if "meta" in tables and not {"key", "value"} <= tables["meta"]:
        raise _Broken("another schema (table meta has other columns)")
    if version == 0 and tables and not {"messages", "meta"} <= set(tables):
        raise _Broken("not an edged spool (other tables)")


def _connect(
    path: Path,
    sync: Sync,
    *,
    seq_floor: int = 0,
    dropped: int = 0,
    rows: list[Salvaged] | None = None,
) -> SpoolFile:
    """Open both connections, check the file and commit a new sequence number reservation; the
    connections are closed again if anything fails."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    db.text_factory = text
    reader: sqlite3.Connection | None = None
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode={mode})")
        db.execute(f"PRAGMA synchronous={sync.upper()}")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        check = db.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            detail = "; ".join(str(r[0]) for r in check[:3])
            raise _Broken(f"database disk image is malformed ({detail})")
        _check_schema(db)
        db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:
                db.execute(stmt)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if rows:
                db.executemany(
                    "INSERT INTO messages (topic, payload, qos, retain, size) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(r.topic, r.payload, r.qos, int(r.retain), r.size) for r in rows],
                )
            count, nbytes, max_seq = db.execute(
                "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM messages"
            ).fetchone()
            if meta.get("clean"):
                start = int(meta.get("seq_last", 0))
            else:
                start = max(int(meta.get("seq_last", 0)), int(meta.get("seq_reserved", 0)))
            start = max(start, seq_floor)
            reserved = start + SEQ_BLOCK
            total_dropped = max(int(meta.get("dropped", 0)), dropped)
            put_meta(db, clean=0, seq_last=start, seq_reserved=reserved, dropped=total_dropped)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1.0)
        reader.execute("PRAGMA query_only=1")
        reader.text_factory = text  # a damaged row must not make every read fail
    except BaseException:
        close_quietly(reader, db)
        raise
    return SpoolFile(
        db=db,
        reader=reader,
        count=int(count),
        nbytes=int(nbytes),
        max_seq=int(max_seq),
        dropped=total_dropped,
        seq_start=start,
        seq_reserved=reserved,
        unclean=bool(meta) and not meta.get("clean"),
        seq_known="seq_last" in meta or "seq_reserved" in meta,
    )


# ---------------------------------------------------------------------- a broken file


# ---------------------------------------------------------------------- in a commit


def put_meta(db: sqlite3.Connection, **values: int) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [(k, int(v)) for k, v in values.items()],
    )


def enforce_bounds(
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


def commit(
    db: sqlite3.Connection,
    batch: list[OutMessage],
    deletes: list[int],
    held: tuple[int, int],
    bounds: tuple[int, int],
    meta: dict[str, int],
    dropped: tuple[int, bool],
) -> tuple[int, int, int, int]:
    """One transaction of the write-behind: delete the acknowledged rows ``deletes``, insert
    ``batch``, drop the oldest rows beyond ``bounds`` (messages, bytes), write ``meta`` and the
    drop total (``dropped``: the total before this commit, and whether it changed since the
    last one; written if so or if the bounds drop rows). ``held``: (rows, bytes) in the file before. Returns (rows, bytes, rows
    dropped for the bounds, highest seq dropped); raises sqlite3.Error (rolled back)."""
    freed_count = freed_bytes = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        for seq in deletes:
            row = db.execute("SELECT size FROM messages WHERE seq = ?", (seq,)).fetchone()
            if row is not None:
                db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
                freed_count += 1
                freed_bytes += int(row[0])
        sizes = [message_size(m.topic, m.payload) for m in batch]
        if batch:
            db.executemany(
                "INSERT OR REPLACE INTO messages (seq, topic, payload, qos, retain, size)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (m.seq, m.topic, m.payload, m.qos, int(m.retain), size)
                    for m, size in zip(batch, sizes, strict=True)
                ],
            )
        count = held[0] - freed_count + len(batch)
        nbytes = held[1] - freed_bytes + sum(sizes)
        bound_drops, dropped_bytes, cut = enforce_bounds(db, count - bounds[0], nbytes - bounds[1])
        if dropped[1] or bound_drops:
            meta = {**meta, "dropped": dropped[0] + bound_drops}
        if meta:
            put_meta(db, **meta)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return count - bound_drops, nbytes - dropped_bytes, bound_drops, cut
