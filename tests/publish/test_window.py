"""The in-flight window (edged.publish.window) on its own: no broker, no paho."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.publish.outbox import OutMessage
from edged.publish.window import (
    MAX_HEAD_ATTEMPTS,
    MAX_INFLIGHT,
    InflightWindow,
    Limits,
    Sent,
    packet_size,
)


def test_connack_limits_keep_one_slot_for_availability() -> None:
    assert Limits.from_connack(None, None) == Limits(None, MAX_INFLIGHT)
    assert Limits.from_connack(1000, 10) == Limits(1000, 9)
    assert Limits.from_connack(None, 1).receive_max == 1
    assert Limits.from_connack(None, 65535).receive_max == MAX_INFLIGHT
    assert Limits.from_connack("x", True).max_packet is None


def test_acks_in_either_order_and_a_stale_hand_over() -> None:
    w = InflightWindow()
    w.reset(Limits(None, 3))
    epoch = w.epoch
    w.handing(1, 10)
    assert w.sent(epoch, 1, mid=7, qos=1, taken=True) is Sent.TRACKED
    assert w.room() == 2 and len(w) == 1 and w.cursor == 1
    assert w.acked(7, failed=False) == 1
    # The ack beats the registration: reported by sent().
    assert w.acked(8, failed=True) is None
    assert w.sent(epoch, 2, mid=8, qos=1, taken=True) is Sent.REFUSED
    assert w.sent(epoch, 3, mid=9, qos=0, taken=True) is Sent.DELIVERED
    assert w.acked(9, failed=False) is None and len(w) == 0  # QoS 0: ignored
    w.handing(4, 10)
    lost = w.lost()
    assert lost.pending == [4] and lost.unacked == 0
    assert w.sent(epoch, 4, mid=10, qos=1, taken=True) is Sent.STALE


def test_a_refused_hand_over_blocks_the_window_until_the_next_connection() -> None:
    w = InflightWindow()
    w.reset(Limits())
    assert w.sent(w.epoch, 1, mid=1, qos=1, taken=False) is Sent.BLOCKED
    assert w.room() == 0
    assert w.room(now=time.monotonic() + 2) > 0
    w.reset(Limits())
    assert w.room() == MAX_INFLIGHT


def test_a_message_that_kills_the_connection_is_given_up_and_bounds_the_size() -> None:
    w = InflightWindow()
    w.reset(Limits(None, 10))
    w.handing(1, 100)
    assert w.sent(w.epoch, 1, mid=1, qos=1, taken=True) is Sent.TRACKED
    w.acked(1, failed=False)
    w.done(1, failed=False)  # the broker took 100 bytes
    verdicts = []
    for _ in range(MAX_HEAD_ATTEMPTS):
        w.reset(Limits(None, 10))
        w.handing(2, 5000)
        w.sent(w.epoch, 2, mid=2, qos=1, taken=True)
        verdicts.append(w.strike(w.lost(), time.monotonic()))
        assert w.limit() == 1  # probing: one at a time
    assert verdicts == [None] * (MAX_HEAD_ATTEMPTS - 1) + [2]
    assert w.killed(2, 5000) == MAX_HEAD_ATTEMPTS
    w.given_up(2)
    assert w.limit() == 10
    assert w.verdict(5000) and "closed the connection" in (w.verdict(6000) or "")
    assert w.verdict(4000) is None  # nothing in flight: smaller than the killer goes


def test_over_the_connack_maximum_packet_size_is_not_sent() -> None:
    w = InflightWindow()
    w.reset(Limits(max_packet=1000))
    assert "maximum packet size (1000 bytes" in (w.verdict(1001) or "")
    assert w.verdict(1000) is None


@given(st.text(min_size=1, max_size=300), st.binary(max_size=20000), st.sampled_from([0, 1, 2]))
def test_packet_size_matches_the_mqtt_encoding(topic: str, payload: bytes, qos: int) -> None:
    msg = OutMessage(1, topic, payload, qos, False)
    for v5 in (False, True):
        remaining = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if v5 else 0) + len(payload)
        header = 1 + (1 if remaining < 128 else 2 if remaining < 16384 else 3)
        assert packet_size(msg, v5) == header + remaining


@pytest.mark.parametrize("pending", [[], [3, 5]])
def test_strike_needs_one_message_alone_in_flight(pending: list[int]) -> None:
    w = InflightWindow()
    w.reset(Limits())
    for seq in pending:
        w.handing(seq, 10_000)
        w.sent(w.epoch, seq, mid=seq, qos=1, taken=True)
    lost = w.lost()
    assert lost.pending == pending
    if pending:
        assert w.strike(lost, time.monotonic()) is None
        assert w.limit() == 1
