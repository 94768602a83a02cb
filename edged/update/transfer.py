"""The chunk protocol: an offer describes a bundle, retained chunks carry it, a file collects it.

An offer (JSON, retained on ``<scope>/update/offer``)::

    {"transfer_id": "9f2c61d0a4b3e857", "name": "digits", "version": 2, "size": 36614,
     "sha256": "<of the whole bundle>", "chunk_size": 131072, "chunks": ["<sha256>", ...],
     "target": "cam-1" | "group/lab", "issued": 1732262400.123456,
     "key_id": "3f1a...", "signature": "<base64 Ed25519 over the canonical JSON of the rest>"}

The canonical JSON is the object without ``signature``, keys sorted, no spaces, UTF-8 (as for
commands). A device with trusted keys verifies the signature before it reserves anything for
the transfer, checks that ``target`` is the scope the offer arrived on (an offer signed for
another device or group cannot be moved), and that ``issued`` is later than the last offer it
acted on for that scope (a recorded offer cannot be replayed).

Chunk ``i`` is the raw bytes ``bundle[i * chunk_size : (i + 1) * chunk_size]``, retained on
``<scope>/update/chunk/<transfer_id>/<i>``. Every chunk is checked against its hash as it
arrives and written at its offset into a file (never held in memory); the whole file is
checked against ``sha256`` at the end.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edged.protocol.inbound import (
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    UpdateOffer,
)
from edged.update.wire import WireError, canonical, clip, loads_object

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

DEFAULT_CHUNK_SIZE = 128 * 1024  # fits a broker capped at 256 KB packets (max_packet_size)


class OfferError(ValueError):
    """An offer that cannot be used; the message is the reason reported."""


class TransferError(ValueError):
    """A chunk or an assembled bundle that does not match its offer."""


OFFER_OVERHEAD = 4096  # bytes of an offer besides its chunk digests


def max_offer_bytes(max_bundle_bytes: int) -> int:
    """The largest offer payload a device with this bundle limit can need."""
    chunks = min(MAX_CHUNKS, math.ceil(max_bundle_bytes / MIN_CHUNK_SIZE))
    return OFFER_OVERHEAD + 67 * chunks


@dataclass(frozen=True, slots=True)
class Offer:
    transfer_id: str
    name: str
    version: int
    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[str, ...]
    target: str = ""  # "<device_id>" or "group/<group>": the scope it was published for
    issued: float = 0.0  # unix time at the host; a device refuses one not after the last
    key_id: str | None = None
    signature: bytes | None = None
    signed: bytes = field(default=b"", compare=False, repr=False)  # what the signature covers

    def body(self) -> dict[str, Any]:
        """The offer's fields without the signature (what is signed)."""
        body: dict[str, Any] = {
            "transfer_id": self.transfer_id,
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
            "target": self.target,
            "issued": self.issued,
        }
        if self.key_id is not None:
            body["key_id"] = self.key_id
        return body

    def to_json(self) -> bytes:
        """The offer as published (host side)."""
        body = self.body()
        if self.signature is not None:
            body["signature"] = base64.b64encode(self.signature).decode("ascii")
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    def sign(self, key: Ed25519PrivateKey) -> Offer:
        """This offer signed with ``key`` (host side)."""
        from edged.model.bundle import key_id

        unsigned = replace(self, key_id=key_id(key.public_key()), signature=None)
        signed = canonical(unsigned.body())
        return replace(unsigned, signature=key.sign(signed), signed=signed)

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    @classmethod
    def from_json(cls, payload: bytes, max_bytes: int = 1 << 30) -> Offer:
        """Parse and check an offer's own consistency (not its size limit, nor its signature:
        the caller's). Never raises anything but :class:`OfferError`."""
        try:
            raw = loads_object(payload, "offer", max_bytes)
        except WireError as err:
            raise OfferError(str(err)) from None
        try:
            return cls._from_raw(raw)
        except WireError as err:
            raise OfferError(str(err)) from None

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> Offer:
        try:
            msg = UpdateOffer.model_validate(raw)
        except ValidationError as err:
            raise OfferError(UpdateOffer.refusal(err)) from None
        signature: bytes | None = None
        if msg.signature is not None:
            try:
                signature = base64.b64decode(msg.signature, validate=True)
            except (binascii.Error, ValueError):
                raise OfferError("offer signature is not base64") from None
        signed = canonical({k: v for k, v in raw.items() if k != "signature"})
        return cls(
            msg.transfer_id, msg.name, msg.version, msg.size, msg.sha256, msg.chunk_size,
            tuple(msg.chunks), msg.target, msg.issued, msg.key_id, signature, signed,
        )  # fmt: skip


def verify_offer(offer: Offer, trusted_keys: list[Ed25519PublicKey]) -> str:
    """The key id that signed ``offer``; :class:`OfferError` when it is unsigned, signed by a
    key not in ``trusted_keys``, or its signature does not match."""
    from cryptography.exceptions import InvalidSignature

    from edged.model.bundle import key_id

    if offer.signature is None or offer.key_id is None:
        raise OfferError("offer is not signed (a device with trusted keys needs signed offers)")
    key = next((k for k in trusted_keys if key_id(k) == offer.key_id), None)
    if key is None:
        raise OfferError(f"offer signed by unknown key {clip(offer.key_id, 40)}")
    try:
        key.verify(offer.signature, offer.signed)
    except InvalidSignature:
        raise OfferError(f"bad offer signature (key {offer.key_id})") from None
    return offer.key_id


def split(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]


def make_offer(
    data: bytes,
    *,
    transfer_id: str,
    name: str,
    version: int,
    chunk_size: int,
    target: str = "",
    issued: float | None = None,
    key: Ed25519PrivateKey | None = None,
) -> tuple[Offer, list[bytes]]:
    """The offer for ``data`` (signed with ``key`` when given) and its chunks (host side)."""
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
        target=target,
        issued=round(time.time(), 6) if issued is None else issued,
    )
    if key is not None:
        offer = offer.sign(key)
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
