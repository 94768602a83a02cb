"""The chunk protocol: an offer describes a bundle, retained chunks carry it, a file collects it.

An offer (JSON, retained on ``<scope>/update/offer``)::

    {"transfer_id": "9f2c61d0a4b3e857", "name": "digits", "version": 2, "size": 36614,
     "sha256": "<of the whole bundle>", "chunk_size": 131072, "chunks": ["<sha256>", ...]}

Chunk ``i`` is the raw bytes ``bundle[i * chunk_size : (i + 1) * chunk_size]``, retained on
``<scope>/update/chunk/<transfer_id>/<i>``. Every chunk is checked against its hash as it
arrives and written at its offset into a file (never held in memory); the whole file is
checked against ``sha256`` at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CHUNK_SIZE = 128 * 1024  # fits a broker capped at 256 KB packets (max_packet_size)
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_CHUNKS = 100_000
TRANSFER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class OfferError(ValueError):
    """An offer that cannot be used; the message is the reason reported."""


class TransferError(ValueError):
    """A chunk or an assembled bundle that does not match its offer."""


@dataclass(frozen=True, slots=True)
class Offer:
    transfer_id: str
    name: str
    version: int
    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[str, ...]

    def to_json(self) -> bytes:
        body = {
            "transfer_id": self.transfer_id,
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
        }
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    @classmethod
    def from_json(cls, payload: bytes) -> Offer:
        """Parse and check an offer's own consistency (not its size limit: the caller's)."""
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            raise OfferError("offer is not valid JSON") from None
        if not isinstance(raw, dict):
            raise OfferError("offer is not a JSON object")
        tid = raw.get("transfer_id")
        if not isinstance(tid, str) or not TRANSFER_ID.match(tid):
            raise OfferError("offer has no valid transfer_id (1-64 of A-Z a-z 0-9 _ -)")
        name, chunks = raw.get("name"), raw.get("chunks")
        version, size, chunk_size = (_int(raw, k) for k in ("version", "size", "chunk_size"))
        if not isinstance(name, str) or not name:
            raise OfferError("offer has no name")
        if version < 1:
            raise OfferError("offer version must be a positive integer")
        if size < 1:
            raise OfferError("offer size must be a positive integer")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise OfferError(f"offer chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        if not _is_sha256(raw.get("sha256")):
            raise OfferError("offer sha256 is not a hex SHA-256")
        expected = math.ceil(size / chunk_size)
        if (
            not isinstance(chunks, list)
            or len(chunks) != expected
            or not all(_is_sha256(c) for c in chunks)
        ):
            raise OfferError(f"offer must list {expected} chunk SHA-256 digests")
        if expected > MAX_CHUNKS:
            raise OfferError(f"offer has more than {MAX_CHUNKS} chunks")
        return cls(tid, name, version, size, str(raw["sha256"]), chunk_size, tuple(chunks))


def _int(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise OfferError(f"offer {key} must be an integer")
    return value


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value))


def split(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]


def make_offer(
    data: bytes, *, transfer_id: str, name: str, version: int, chunk_size: int
) -> tuple[Offer, list[bytes]]:
    """The offer for ``data`` and its chunks (host side)."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise OfferError(f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    chunks = split(data, chunk_size)
    offer = Offer(
        transfer_id=transfer_id,
        name=name,
        version=version,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=chunk_size,
        chunks=tuple(hashlib.sha256(c).hexdigest() for c in chunks),
    )
    return offer, chunks


class Transfer:
    """One bundle being received into ``path`` (device side; one thread uses it).

    The file's space is reserved up front, so a full disk shows at the start (``OSError``).
    """

    def __init__(self, offer: Offer, scope: str, path: Path) -> None:
        self.offer = offer
        self.scope = scope
        self.path = path
        self.received: set[int] = set()
        self.started = self.progress = time.monotonic()
        self.resubscribed = False
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self._fd, 0, offer.size)
            else:  # pragma: no cover - not Linux
                os.ftruncate(self._fd, offer.size)
        except OSError:
            self.discard()
            raise

    @property
    def complete(self) -> bool:
        return len(self.received) == len(self.offer.chunks)

    def add(self, index: int, data: bytes) -> bool:
        """Write chunk ``index``; False for a duplicate. Raises :class:`TransferError` for a
        chunk that does not match the offer and ``OSError`` when it cannot be written."""
        offer = self.offer
        if not 0 <= index < len(offer.chunks):
            raise TransferError(f"chunk {index} is out of range (0..{len(offer.chunks) - 1})")
        if index in self.received:
            return False
        if len(data) != offer.chunk_length(index):
            raise TransferError(
                f"chunk {index} has {len(data)} bytes, the offer says {offer.chunk_length(index)}"
            )
        if hashlib.sha256(data).hexdigest() != offer.chunks[index]:
            raise TransferError(f"chunk {index} does not match its sha256 in the offer")
        assert self._fd is not None, "transfer already finished"
        view = memoryview(data)
        offset = index * offer.chunk_size
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        self.received.add(index)
        self.progress = time.monotonic()
        return True

    def finish(self) -> Path:
        """fsync, close and check the whole file's sha256; returns its path."""
        assert self._fd is not None and self.complete
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        digest = hashlib.sha256()
        with self.path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != self.offer.sha256:
            raise TransferError("the assembled bundle does not match the offer's sha256")
        return self.path

    def discard(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            self.path.unlink()
