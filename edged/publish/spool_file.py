"""The spool's sqlite file: taking its lock, opening (or creating) it, the statements a commit runs.

``<state_dir>/spool.sqlite3`` (stdlib ``sqlite3``, WAL mode) holds the messages not yet
acknowledged (table ``messages``) and a few counters (table ``meta``: the drop total, the
sequence number reservation, whether the last user closed it cleanly). ``SqliteOutbox``
(``edged.publish.spool``) keeps the file open through two connections: a writer and a read-only
reader, which in WAL mode never waits for the writer.

A second process cannot open the same spool (``spool.lock``, an flock). A corrupt file is set
aside as ``spool.sqlite3.bad`` and an empty spool started.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "JOURNAL_SIZE_LIMIT",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "SEQ_BLOCK",
    "SPOOL_NAME",
    "SpoolError",
    "SpoolFile",
    "Sync",
    "close_quietly",
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


class SpoolError(Exception):
    """The spool cannot be used (one line, for the log)."""


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


def take_lock(path: Path) -> int:
    """Take the flock on ``spool.lock`` next to ``path`` (creating the folder); returns its fd."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path.parent / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise SpoolError(f"cannot open the spool in {path.parent}: {_oserror(err)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SpoolError(f"spool {path} is in use by another process") from None
    return fd


def open_file(path: Path, sync: Sync) -> SpoolFile:
    """Open (or create) the spool file, setting a corrupt one aside; raises ``SpoolError``."""
    try:
        return _connect(path, sync)
    except sqlite3.DatabaseError as err:
        if not _is_corruption(err):
            raise SpoolError(f"cannot open spool {path}: {err}") from None
        bad = path.with_name(path.name + ".bad")
        try:
            os.replace(path, bad)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(path) + suffix)
        except OSError as move_err:
            raise SpoolError(
                f"spool {path} is corrupt ({err}) and cannot be set aside: {_oserror(move_err)}"
            ) from None
        log.warning(
            "spool %s is corrupt (%s); set aside as %s, starting an empty spool",
            path,
            err,
            bad.name,
        )
        try:
            return _connect(path, sync)
        except sqlite3.Error as err2:
            raise SpoolError(f"cannot create spool {path}: {err2}") from None
    except sqlite3.Error as err:
        raise SpoolError(f"cannot open spool {path}: {err}") from None


def _connect(path: Path, sync: Sync) -> SpoolFile:
    """Open both connections, check the file and commit a new sequence number reservation; the
    connections are closed again if anything fails."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
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
            put_meta(db, clean=0, seq_last=start, seq_reserved=reserved)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1.0)
        reader.execute("PRAGMA query_only=1")
    except BaseException:
        close_quietly(reader, db)
        raise
    return SpoolFile(
        db=db,
        reader=reader,
        count=int(count),
        nbytes=int(nbytes),
        max_seq=int(max_seq),
        dropped=int(meta.get("dropped", 0)),
        seq_start=start,
        seq_reserved=reserved,
        unclean=bool(meta) and not meta.get("clean"),
    )


def close_quietly(*conns: sqlite3.Connection | None) -> None:
    """Close the connections given (None: skipped), ignoring sqlite errors."""
    for conn in conns:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


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


# ---------------------------------------------------------------------- helpers


def _is_corruption(err: sqlite3.DatabaseError) -> bool:
    text = str(err).lower()
    return isinstance(err, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "corrupt" in text
    )


def _oserror(err: OSError) -> str:
    return err.strerror or str(err)
