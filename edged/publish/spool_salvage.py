"""A spool file that cannot be used: why (``broken_cause``), setting it aside (``set_aside``),
reading what can be read from it (``salvage``); and small sqlite helpers.

``edged.publish.spool_file.open_file`` sets a spool file that cannot be used aside and starts
a fresh one with what ``salvage`` recovers from it: the newest undelivered messages within the
bounds and the sequence numbers it recorded. A damaged page can hold anything, so every row is
checked (``_valid_row``) and nothing here raises.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BROKEN_KEEP",
    "MAX_PAYLOAD",
    "Found",
    "Salvaged",
    "broken_cause",
    "close_quietly",
    "intact_row",
    "oserror",
    "salvage",
    "set_aside",
    "text",
]

MAX_PAYLOAD = 256 * 1024 * 1024  # the largest MQTT payload; a salvaged row over it is invalid
BROKEN_KEEP = 3  # set-aside broken spools kept (the oldest beyond are removed)

log = logging.getLogger("edged.spool")


@dataclass(frozen=True, slots=True)
class Salvaged:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    @property
    def size(self) -> int:
        return len(self.topic.encode("utf-8")) + len(self.payload)


@dataclass(slots=True)
class Found:
    """What ``salvage`` read from a set-aside file."""

    rows: list[Salvaged] = field(default_factory=list)  # oldest first
    seq: int = 0  # the highest sequence number it had recorded (0: none readable)
    lost: str = ""  # why not everything could be read ("" if it could)


def salvage(aside: Path, max_messages: int, max_bytes: int) -> Found:
    """Read what can be read from a set-aside spool: the newest undelivered messages within the
    bounds, oldest first, and its recorded sequence numbers. Never raises."""
    found = Found()
    if not aside.is_file():
        found.lost = "nothing readable"
        return found
    db = None
    for uri in (f"file:{aside}", f"file:{aside}?immutable=1"):
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=1.0)
            db.text_factory = text
            db.execute("PRAGMA query_only=1")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            break
        except Exception:  # never raises: whatever a damaged file makes sqlite3 do
            close_quietly(db)
            db = None
    if db is None:
        found.lost = "nothing readable"
        return found
    try:
        with contextlib.suppress(Exception):
            for key, value in db.execute("SELECT key, value FROM meta"):
                if key in ("seq_last", "seq_reserved") and isinstance(value, int):
                    found.seq = max(found.seq, value)
        _salvage_rows(db, found, max_messages, max_bytes)
    finally:
        close_quietly(db)
    return found


def _salvage_rows(db: sqlite3.Connection, found: Found, max_messages: int, max_bytes: int) -> None:
    try:
        cols = {str(c[1]) for c in db.execute("PRAGMA table_info(messages)").fetchall()}
    except Exception as err:
        found.lost = f"messages unreadable: {err}"
        return
    if not {"topic", "payload"} <= cols:
        found.lost = "no messages table" if not cols else "messages without topic/payload"
        return
    order = "seq" if "seq" in cols else "rowid"
    qos = "qos" if "qos" in cols else "1"
    retain = "retain" if "retain" in cols else "0"
    select = f"SELECT {order}, topic, payload, {qos}, {retain} FROM messages ORDER BY {order}"
    got: dict[Any, Salvaged] = {}
    nbytes = 0
    skipped = 0
    full = False
    # Newest first, until the bounds are reached; after a damaged page, the oldest first too.
    for direction in ("DESC", "ASC"):
        try:
            for key, topic, payload, q, r in db.execute(f"{select} {direction}"):
                if key in got:
                    continue
                row = _valid_row(topic, payload, q, r)
                if row is None:
                    skipped += 1
                    continue
                if len(got) >= max_messages or nbytes + row.size > max_bytes:
                    full = True
                    break
                got[key] = row
                nbytes += row.size
            break  # read to the end, or the bounds are reached
        except Exception as err:
            found.lost = f"some rows unreadable: {err}"
    found.rows = [got[k] for k in sorted(got, key=_sort_key)]
    notes = [found.lost] if found.lost else []
    if skipped:
        notes.append(f"{skipped} invalid row(s) skipped")
    if full:
        notes.append("the oldest beyond the spool's bounds dropped")
    found.lost = "; ".join(notes)


def text(raw: bytes) -> str:
    """sqlite TEXT as str, whatever bytes a damaged row holds."""
    return raw.decode("utf-8", "replace")


def _sort_key(key: Any) -> tuple[int, str]:
    return (key, "") if isinstance(key, int) else (0, str(key))


def _valid_row(topic: Any, payload: Any, qos: Any, retain: Any) -> Salvaged | None:
    if isinstance(topic, bytes):
        try:
            topic = topic.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(topic, str) or not topic or any(c in topic for c in "+#\x00"):
        return None
    if len(topic.encode("utf-8", "surrogatepass")) > 65535:
        return None
    try:
        topic.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD:
        return None
    q = qos if isinstance(qos, int) and qos in (0, 1, 2) else 1
    return Salvaged(topic, payload, q, bool(retain) if isinstance(retain, int) else False)


def close_quietly(*conns: sqlite3.Connection | None) -> None:
    """Close the connections given (None: skipped), ignoring sqlite errors."""
    for conn in conns:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


# ---------------------------------------------------------------------- setting a file aside


def broken_cause(path: Path, err: sqlite3.DatabaseError) -> str | None:
    """Why the spool file itself is unusable, or None when the problem is around it (full
    disk, a folder that cannot be written): then the file is left alone."""
    text = str(err).lower()
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return str(err)
    for candidate in (path, Path(str(path) + "-wal")):
        try:
            st = os.stat(candidate)
        except FileNotFoundError:
            continue
        except OSError as oserr:
            return f"{candidate.name}: {oserror(oserr)}"
        if not stat.S_ISREG(st.st_mode):
            return f"{candidate.name} is not a regular file"
        try:
            fd = os.open(candidate, os.O_RDWR | os.O_CLOEXEC)
        except OSError as oserr:
            if oserr.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and _dir_writable(path):
                return f"{candidate.name}: {oserror(oserr)}"
            return None
        os.close(fd)
    return None


def _dir_writable(path: Path) -> bool:
    return os.access(path.parent, os.W_OK | os.X_OK)


def set_aside(path: Path) -> Path:
    """Rename the spool (and its -wal/-shm) to ``<name>.broken-<UTC time>``; keep the newest
    ``BROKEN_KEEP`` set-aside copies. Returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while os.path.lexists(aside):
        aside = path.with_name(f"{path.name}.broken-{stamp}-{n}")
        n += 1
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(str(path) + suffix, str(aside) + suffix)
    old = sorted(
        (p for p in path.parent.glob(f"{path.name}.broken-*") if not p.name.endswith(_SIDE)),
        key=lambda p: p.name,
    )
    for stale in old[:-BROKEN_KEEP]:
        for victim in (str(stale), str(stale) + "-wal", str(stale) + "-shm"):
            with contextlib.suppress(OSError):
                if os.path.isdir(victim) and not os.path.islink(victim):
                    shutil.rmtree(victim)
                else:
                    os.unlink(victim)
        log.info("spool: removed the old set-aside copy %s", stale.name)
    return aside


_SIDE = ("-wal", "-shm")


def oserror(err: OSError) -> str:
    return err.strerror or str(err)


def intact_row(topic: object, payload: object, qos: object) -> bool:
    """A row as this spool writes it (a damaged page can hold anything)."""
    return (
        isinstance(topic, str)
        and bool(topic)
        and "\ufffd" not in topic
        and not any(c in topic for c in "+#\x00")
        and isinstance(payload, bytes)
        and qos in (0, 1, 2)
    )
