"""The chunk protocol: offers and a transfer assembled in a file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edged.update.transfer import Offer, OfferError, Transfer, TransferError, make_offer

DATA = os.urandom(10_000)


def _offer(chunk_size: int = 4096) -> tuple[Offer, list[bytes]]:
    return make_offer(DATA, transfer_id="t1", name="digits", version=2, chunk_size=chunk_size)


def test_offer_round_trips_and_describes_every_chunk() -> None:
    offer, chunks = _offer()
    assert [len(c) for c in chunks] == [4096, 4096, 1808]
    assert b"".join(chunks) == DATA
    again = Offer.from_json(offer.to_json())
    assert again == offer
    assert again.chunks[2] == hashlib.sha256(chunks[2]).hexdigest()
    assert [offer.chunk_length(i) for i in range(3)] == [4096, 4096, 1808]


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"transfer_id": "a/b"}, "transfer_id"),
        ({"transfer_id": None}, "transfer_id"),
        ({"version": 0}, "version must be an integer in 1.."),
        ({"version": True}, "version must be an integer"),
        ({"size": -1}, "size must be an integer in 1.."),
        ({"size": 10**400}, "size must be an integer in 1.."),
        ({"target": 5}, "target must be a string"),
        ({"issued": float("nan")}, "not valid JSON"),
        ({"signature": "!!"}, "signature"),
        ({"chunk_size": 10}, "chunk_size must be"),
        ({"sha256": "xyz"}, "sha256"),
        ({"chunks": ["0" * 64]}, "must list 3 chunk"),
        ({"name": ""}, "no name"),
    ],
)
def test_inconsistent_offers_are_refused_with_a_reason(patch: dict[str, Any], reason: str) -> None:
    offer, _ = _offer()
    raw = {**json.loads(offer.to_json()), **patch}
    with pytest.raises(OfferError, match=reason):
        Offer.from_json(json.dumps(raw).encode())


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_garbage_offers_are_refused(payload: bytes) -> None:
    with pytest.raises(OfferError):
        Offer.from_json(payload)


def test_chunks_in_any_order_with_duplicates_assemble_the_bundle(tmp_path: Path) -> None:
    offer, chunks = _offer()
    t = Transfer(offer, "edged/cam-1", tmp_path / "x.part")
    assert t.add(2, chunks[2]) and t.add(0, chunks[0])
    assert not t.add(0, chunks[0])  # a duplicate (retained message delivered again)
    assert not t.complete
    assert t.add(1, chunks[1]) and t.complete
    assert t.finish().read_bytes() == DATA


@pytest.mark.parametrize(
    ("index", "mutate", "reason"),
    [
        (1, lambda c: c[:-1], "has 4095 bytes"),
        (1, lambda c: bytes([c[0] ^ 1]) + c[1:], "does not match its sha256"),
        (7, lambda c: c, "out of range"),
    ],
)
def test_a_bad_chunk_is_refused(
    tmp_path: Path, index: int, mutate: Callable[[bytes], bytes], reason: str
) -> None:
    offer, chunks = _offer()
    t = Transfer(offer, "edged/cam-1", tmp_path / "x.part")
    with pytest.raises(TransferError, match=reason):
        t.add(index, mutate(chunks[1]))
    t.discard()
    assert not (tmp_path / "x.part").exists()


def test_a_forged_offer_is_caught_by_the_whole_file_hash(tmp_path: Path) -> None:
    offer, chunks = _offer()
    forged = Offer(
        offer.transfer_id, offer.name, offer.version, offer.size, "0" * 64,
        offer.chunk_size, offer.chunks,
    )  # fmt: skip
    t = Transfer(forged, "edged/cam-1", tmp_path / "x.part")
    for i, c in enumerate(chunks):
        t.add(i, c)
    with pytest.raises(TransferError, match="assembled bundle does not match"):
        t.finish()


def test_space_is_reserved_up_front_so_a_full_disk_shows_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    offer, _ = _offer()
    with pytest.raises(OSError) as exc:
        Transfer(offer, "edged/cam-1", tmp_path / "x.part")
    assert exc.value.errno == errno.ENOSPC
    assert not (tmp_path / "x.part").exists()
