"""The ask-and-resend side of the OTA protocol, in memory (no broker): the device's requests
on ``update/request`` (hello once per connection, missing chunks of a stalled transfer) and
the push tool's answers to hostile or well-formed requests."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from edged.publish.mqtt import Publisher
from edged.publish.topics import chunk_topic, offer_topic
from edged.update.receiver import MAX_ASKED, Receiver
from edged.update.store import Store
from edged.update.transfer import make_offer
from tools.answers import Resender
from tools.mqttclient import Broker, Received

DATA = os.urandom(5000)


class Pub:
    """Records subscriptions and publications; ``connected``/``stats`` as a Publisher has."""

    def __init__(self) -> None:
        self.connected = False
        self.stats = {"reconnects": 0}
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.sent: list[tuple[str, bytes]] = []

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.append(topic)

    def unsubscribe(self, topic: str) -> None:
        self.unsubscribed.append(topic)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        assert not retain
        self.sent.append((topic, payload))

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.sent if t == "edged/cam-1/update/request"]


def _receiver(tmp_path: Path, pub: Pub, timeout_s: float = 120.0) -> Receiver:
    store = Store(tmp_path)
    store.ensure_dir()
    return Receiver(
        store,
        cast(Publisher, pub),
        scopes=["edged/cam-1", "edged/group/lab"],
        timeout_s=timeout_s,
        screen=lambda offer: True,
        refuse=lambda offer, reason: None,
        complete=lambda offer, path: None,
        request_topic="edged/cam-1/update/request",
        hello=lambda: {"device": "cam-1", "groups": ["lab"], "active": None},
    )


def test_a_device_says_hello_once_per_connection(tmp_path: Path) -> None:
    pub = Pub()
    rx = _receiver(tmp_path, pub)
    rx.tick()
    assert pub.requests() == []  # not connected: nothing
    pub.connected = True
    rx.tick()
    rx.tick()
    (hello,) = pub.requests()
    assert hello == {
        "schema": 1, "device": "cam-1", "groups": ["lab"], "active": None,
        "transfer_id": None, "missing": [], "ts": hello["ts"],
    }  # fmt: skip
    pub.stats = {"reconnects": 1}  # a reconnect between two ticks
    rx.tick()
    assert len(pub.requests()) == 2


def test_a_stalled_transfer_asks_for_its_missing_chunks_by_exact_topic(tmp_path: Path) -> None:
    pub = Pub()
    pub.connected = True
    rx = _receiver(tmp_path, pub, timeout_s=2.0)  # asks after 0.5 s, every 0.5 s
    offer, chunks = make_offer(DATA, transfer_id="t1", name="m", version=2, chunk_size=1024)
    rx.offer("edged/cam-1", offer)
    exact = [chunk_topic("edged/cam-1", "t1", i) for i in range(5)]
    assert pub.subscribed == exact  # one exact topic per chunk, no wildcard
    assert rx.match(chunk_topic("edged/cam-1", "t1", 1)) is not None
    rx.chunk("edged/cam-1/update/chunk/t1/", "1", chunks[1])
    rx.tick()  # the hello
    time.sleep(0.6)
    rx.tick()
    asks = [r for r in pub.requests() if r["transfer_id"] == "t1"]
    assert [a["missing"] for a in asks] == [[0, 2, 3, 4]]
    rx.tick()  # not again before another ask_after_s
    assert len([r for r in pub.requests() if r["transfer_id"] == "t1"]) == 1
    for i in (0, 2, 3, 4):
        rx.chunk("edged/cam-1/update/chunk/t1/", str(i), chunks[i])
    assert rx.current is None and sorted(pub.unsubscribed) == sorted(exact)


def _stalled(tmp_path: Path) -> tuple[Pub, Receiver, list[bytes]]:
    """A device that accepted a transfer of MAX_ASKED + 10 chunks, none of which came."""
    pub = Pub()
    pub.connected = True
    rx = _receiver(tmp_path, pub, timeout_s=0.4)
    data = os.urandom(1024 * (MAX_ASKED + 10))
    offer, chunks = make_offer(data, transfer_id="big", name="m", version=2, chunk_size=1024)
    rx.offer("edged/cam-1", offer)
    time.sleep(0.15)
    rx.tick()
    return pub, rx, chunks


def test_a_request_names_at_most_max_asked_chunks(tmp_path: Path) -> None:
    pub, rx, chunks = _stalled(tmp_path)
    ask = [r for r in pub.requests() if r["transfer_id"] == "big"]
    assert len(ask) == 1 and ask[0]["missing"] == list(range(MAX_ASKED))
    for i in range(MAX_ASKED):  # what it asked for arrives: it asks for the next ones at once
        rx.chunk("edged/cam-1/update/chunk/big/", str(i), chunks[i])
    ask = [r for r in pub.requests() if r["transfer_id"] == "big"]
    assert [a["missing"] for a in ask[1:]] == [list(range(MAX_ASKED, MAX_ASKED + 10))]


class FakeBroker:
    def __init__(self) -> None:
        self.msgs: list[Received] = []
        self.published: list[tuple[str, bytes, bool]] = []

    def messages(self) -> list[Received]:
        return list(self.msgs)

    def publish_all(self, items: list[tuple[str, bytes, bool]], timeout: float) -> None:
        self.published += items


def _resender(group: str | None = None) -> tuple[FakeBroker, Resender, list[bytes]]:
    offer, chunks = make_offer(DATA, transfer_id="t9", name="m", version=2, chunk_size=1024)
    scopes = ["edged/group/lab"] if group else ["edged/cam-1", "edged/cam-2"]
    fb = FakeBroker()
    rs = Resender(
        cast(Broker, fb), "edged", "t9", {s: offer.to_json() for s in scopes}, chunks,
        group=group, version=2, model_sha256="ab" * 32, every=1000.0,
    )  # fmt: skip
    return fb, rs, chunks


def _req(device: str, **body: Any) -> Received:
    payload = json.dumps({"device": device, **body}).encode()
    return Received(f"edged/{device}/update/request", payload)


def test_the_push_tool_re_offers_on_hello_and_re_sends_the_chunks_asked_for() -> None:
    fb, rs, chunks = _resender()
    fb.msgs.append(_req("cam-1", transfer_id=None))
    fb.msgs.append(_req("cam-3", transfer_id=None))  # not a target
    rs.step(set(), [])
    assert [(t, r) for t, _, r in fb.published] == [(offer_topic("edged/cam-1"), False)]
    fb.msgs.append(_req("cam-2", transfer_id="t9", missing=[4, 0, 99, -1, "1", True, 4]))
    rs.step(set(), [])
    assert [t for t, _, _ in fb.published[1:]] == [
        chunk_topic("edged/cam-2", "t9", 0),
        chunk_topic("edged/cam-2", "t9", 4),
    ]
    assert fb.published[2][1] == chunks[4]
    fb.msgs.append(_req("cam-2", transfer_id="t9", missing=[0]))  # again within 1 s: ignored
    fb.msgs.append(_req("cam-1", transfer_id=None))  # answered meanwhile: ignored
    rs.step({"cam-1"}, [])
    assert len(fb.published) == 3
    fb.msgs.append(_req("cam-2", transfer_id="t9", missing=[1, 2]))  # the next ones: at once
    rs.step({"cam-1"}, [])
    assert [t for t, _, _ in fb.published[3:]] == [
        chunk_topic("edged/cam-2", "t9", 1),
        chunk_topic("edged/cam-2", "t9", 2),
    ]
    assert (rs.reoffers, rs.resent) == (1, 4)


def test_a_hello_saying_it_runs_this_version_marks_the_device_current() -> None:
    fb, rs, _ = _resender(group="lab")
    active = {"name": "m", "version": 2, "sha256": "ab" * 32}
    fb.msgs.append(_req("cam-5", groups=["lab"], active=active, transfer_id=None))
    fb.msgs.append(_req("cam-6", groups=["other"], transfer_id=None))  # not in the group
    rs.step(set(), [])
    assert rs.current == {"cam-5": ("current", "2", "")} and fb.published == []


def test_periodic_re_offers_go_to_silent_targets_only() -> None:
    fb, rs, _ = _resender()
    rs.every = 0.0
    rs.step({"cam-1"}, ["edged/cam-2"])
    assert [t for t, _, _ in fb.published] == [offer_topic("edged/cam-2")] and rs.periodic == 1


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["edged/cam-1/update/request", "edged/cam-2/update/request",
                             "edged/x/update/request", "edged/cam-1/update/result"]),
            st.one_of(
                st.binary(max_size=200),
                st.builds(
                    lambda d, t, m, g: json.dumps(
                        {"device": d, "transfer_id": t, "missing": m, "groups": g}
                    ).encode(),
                    st.sampled_from(["cam-1", "cam-2", "x", None, 3]),
                    st.sampled_from(["t9", None, "other", 5]),
                    st.one_of(st.none(), st.text(max_size=5), st.lists(
                        st.one_of(st.integers(-5, 1 << 40), st.floats(), st.booleans()),
                        max_size=600)),
                    st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=3)),
                ),
            ),
        ),
        max_size=20,
    )
)  # fmt: skip
def test_hostile_requests_cost_at_most_one_bounded_answer_per_device(
    msgs: list[tuple[str, bytes]],
) -> None:
    fb, rs, chunks = _resender()
    fb.msgs = [Received(t, p) for t, p in msgs]
    rs.step(set(), [])
    topics = [t for t, _, _ in fb.published]
    allowed = {offer_topic(s) for s in ("edged/cam-1", "edged/cam-2")} | {
        chunk_topic(s, "t9", i) for s in ("edged/cam-1", "edged/cam-2") for i in range(len(chunks))
    }
    assert set(topics) <= allowed
    assert all(not retain for _, _, retain in fb.published)
    answered = {t.split("/")[1] for t in topics}
    # Per device within a second: one offer, and each chunk at most once.
    assert len(topics) <= len(answered) * (len(chunks) + 1)
    for scope in ("edged/cam-1", "edged/cam-2"):
        sent = [t for t in topics if t.startswith(scope + "/update/chunk/")]
        assert len(sent) == len(set(sent))


def test_no_chained_asks_while_the_broker_delivers_retained_chunks(tmp_path: Path) -> None:
    """On a single broker the retained chunks keep coming: what was asked for arriving with
    others is not a reason to ask for more (that would send the bundle twice)."""
    pub, rx, chunks = _stalled(tmp_path)
    for i in [MAX_ASKED + 5, *range(MAX_ASKED)]:  # one not asked for among them: retained
        rx.chunk("edged/cam-1/update/chunk/big/", str(i), chunks[i])
    assert len([r for r in pub.requests() if r["transfer_id"] == "big"]) == 1


def test_made_up_device_names_cannot_multiply_a_group_push() -> None:
    """A group's chunks go to one topic all members read: 200 made-up names asking for every
    chunk cost one copy of the bundle, not 200 (the outsider attack sent 47.6 MB for 40 KB)."""
    fb, rs, chunks = _resender(group="lab")
    every = list(range(len(chunks)))
    fb.msgs = [
        _req(f"fake-{i}", groups=["lab"], transfer_id="t9", missing=every) for i in range(200)
    ]
    rs.step(set(), [])
    sent = [t for t, _, _ in fb.published if "/update/chunk/" in t]
    assert len(sent) == len(chunks) and rs.resent == len(chunks)


def test_a_deep_or_huge_request_is_ignored_not_a_crash() -> None:
    fb, rs, _ = _resender(group="lab")
    fb.msgs = [
        Received("edged/cam-1/update/request", b"[" * 5000),
        Received("edged/cam-1/update/request", b'["' + b'\\"' * 7000),
        Received("edged/cam-1/update/request", b'{"device": "cam-1", "x": ' + b"[" * 100 + b"}"),
    ]
    started = time.monotonic()
    rs.step(set(), [])
    assert fb.published == [] and time.monotonic() - started < 1.0
