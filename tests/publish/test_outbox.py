from __future__ import annotations

import pytest

from edged.publish.outbox import MemoryOutbox


def fill(box: MemoryOutbox, n: int) -> int:
    return sum(box.append("t", str(i).encode(), 1, False) for i in range(n))


def test_append_peek_ack_in_order() -> None:
    box = MemoryOutbox(10)
    assert fill(box, 5) == 0
    first = box.peek(0, 3)
    assert [m.payload for m in first] == [b"0", b"1", b"2"]
    assert [m.payload for m in box.peek(first[-1].seq, 10)] == [b"3", b"4"]
    box.ack(first[1].seq)  # out of order
    assert [m.payload for m in box.peek(0, 10)] == [b"0", b"2", b"3", b"4"]
    box.ack(first[1].seq)  # unknown / already acked: ignored
    assert len(box) == 4


def test_overflow_drops_oldest() -> None:
    box = MemoryOutbox(3)
    assert fill(box, 5) == 2
    assert [m.payload for m in box.peek(0, 10)] == [b"2", b"3", b"4"]
    seqs = [m.seq for m in box.peek(0, 10)]
    assert seqs == sorted(seqs)


def test_peek_limits() -> None:
    box = MemoryOutbox(3)
    fill(box, 2)
    assert box.peek(0, 0) == []
    assert box.peek(10**9, 5) == []
    with pytest.raises(ValueError):
        MemoryOutbox(0)
