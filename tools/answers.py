"""What a push waits for: the devices' answers on ``update/result`` (:func:`answers`), and,
meanwhile, their requests on ``update/request`` (:class:`Resender`: the offer again on hello,
missing chunks again, periodic re-offers to silent targets). See :mod:`tools.push`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from edged.protocol.base import read
from edged.protocol.payloads import UpdateResult
from edged.publish.topics import chunk_topic, offer_topic
from edged.update.receiver import MAX_ASKED
from tools.mqttclient import Broker, Received, json_object

Row = tuple[str, str, str]  # status, version, reason
NO_ANSWER = "no answer"
FINAL = ("confirmed", "rolled_back", "rejected")
MAX_REQUEST_BYTES = 16 * 1024  # a device's request is small (edged.update.receiver)
MAX_RESENT = MAX_ASKED  # chunks re-sent for one request


MAX_COPIES = 8  # bundle copies all chunk re-sends of one group push may add up to


class Resender:
    """Answers devices' requests during a push, and re-offers periodically (see the module
    docstring). Requests are outside input: anything malformed, from a device not targeted,
    or naming chunks out of range is ignored; each device gets at most one answer a second,
    except chunks never re-sent to it before: what one device can make it send is bounded by
    one copy of the bundle plus one answer a second. A group's chunks go to one topic that
    every member reads, so in a group push that bound is per group, not per device name (made-up
    names cannot multiply it), and all its re-sent chunks together never exceed ``MAX_COPIES``
    copies of the bundle (a device push's targets are named, each bounded as above)."""

    def __init__(
        self,
        broker: Broker,
        prefix: str,
        tid: str,
        offers: dict[str, bytes],
        chunks: list[bytes],
        *,
        group: str | None,
        version: int,
        model_sha256: str | None,
        every: float,
    ) -> None:
        self.broker, self.prefix, self.tid = broker, prefix, tid
        self.offers, self.chunks, self.group = offers, chunks, group
        self.version, self.model_sha256, self.every = version, model_sha256, every
        self.current: dict[str, Row] = {}  # devices whose hello says they run this version
        self.seen_devices: set[str] = set()  # devices that sent a valid request
        self._read = 0
        self._last: dict[str, float] = {}  # device -> time of the last answer
        self._sent: dict[str, set[int]] = {}  # device -> chunk indices re-sent to it
        self._periodic = time.monotonic()
        self.reoffers = self.periodic = self.resent = 0

    def scope_of(self, device: str, groups: Any) -> str | None:
        if self.group is None:
            scope = f"{self.prefix}/{device}"
            return scope if scope in self.offers else None
        if isinstance(groups, list) and self.group in groups:
            return f"{self.prefix}/group/{self.group}"
        return None

    def step(self, answered: set[str], silent_scopes: list[str]) -> None:
        msgs = self.broker.messages()
        new, self._read = msgs[self._read :], len(msgs)
        for m in new:
            if m.topic.endswith("/update/request") and len(m.payload) <= MAX_REQUEST_BYTES:
                self._request(m, answered)
        now = time.monotonic()
        if silent_scopes and now - self._periodic >= self.every:
            self._periodic = now
            self.periodic += 1
            items = [(offer_topic(s), self.offers[s], False) for s in silent_scopes]
            self.broker.publish_all(items, 30)

    def _request(self, m: Received, answered: set[str]) -> None:
        parts = m.topic.split("/")
        device = parts[-3] if len(parts) >= 3 else ""
        r = json_object(m.payload)
        if (
            r is None
            or r.get("device") != device
            or f"{self.prefix}/{device}/update/request" != m.topic
        ):
            return
        scope = self.scope_of(device, r.get("groups"))
        if scope is None:
            return
        self.seen_devices.add(device)
        active = r.get("active")
        if not isinstance(active, dict):
            active = {}
        if active.get("version") == self.version and active.get("sha256") == self.model_sha256:
            self.current.setdefault(device, ("current", str(self.version), ""))
            return
        if device in answered or device in self.current:
            return
        now = time.monotonic()
        missing = r.get("missing")
        if r.get("transfer_id") == self.tid and isinstance(missing, list):
            wanted = sorted(
                {i for i in missing[:MAX_RESENT] if type(i) is int and 0 <= i < len(self.chunks)}
            )
            # Who the chunks reach: the device, or (group) every member at once.
            key = device if self.group is None else scope
            sent = self._sent.setdefault(key, set())
            # Chunks not re-sent to it before go at once (each at most once: the device asks
            # for the next ones as soon as the last arrived); others once a second.
            if sent.intersection(wanted) and now - self._last.get(key, -1e9) < 1.0:
                return
            if self.group is not None and self.resent + len(wanted) > MAX_COPIES * len(self.chunks):
                return  # the group push's budget is spent: the device waits for a re-offer
            sent.update(wanted)
            self._last[key] = now
            items = [(chunk_topic(scope, self.tid, i), self.chunks[i], False) for i in wanted]
            self.resent += len(items)
        else:
            if now - self._last.get(device, -1e9) < 1.0:
                return
            items = [(offer_topic(scope), self.offers[scope], False)]
            self.reoffers += 1
        self._last[device] = now
        if items:
            self.broker.publish_all(items, 30)


def answers(
    broker: Broker,
    tid: str,
    given: dict[str, Row],
    expected: int,
    deadline: float,
    known: list[str],
    *,
    probation: float | None = None,
    resender: Resender | None = None,
) -> dict[str, Row]:
    """Wait until ``expected`` devices answered transfer ``tid`` or ``deadline``; then, with
    ``probation`` (seconds), until each device that accepted it confirmed it or rolled it
    back. A device's row is its latest answer. ``resender`` answers requests meanwhile."""

    def collect() -> dict[str, Row]:
        got = dict(given)
        if resender is not None:
            for d, row in resender.current.items():
                got.setdefault(d, row)
        for m in broker.messages():
            r = read(UpdateResult, m.payload) if m.topic.endswith("/update/result") else None
            if r is None or r.transfer_id != tid:
                continue
            d = r.device
            row = (r.status, str(r.version), r.reason)
            if d not in got or got[d][0] not in FINAL:
                got[d] = row
        return got

    def wait(done: Callable[[], bool], until: float) -> None:
        while True:
            if resender is not None:
                rows = collect()
                if resender.group is None:
                    silent = [
                        s for s in resender.offers if target_of(resender.prefix, s) not in rows
                    ]
                else:
                    silent = list(resender.offers) if len(rows) < expected else []
                resender.step(set(rows), silent)
            remaining = until - time.monotonic()
            if done() or remaining <= 0:
                return
            broker.wait(done, min(0.25, remaining))

    wait(lambda: len(collect()) >= expected, deadline)
    if probation is not None:

        def settled() -> bool:
            rows = collect()
            return len(rows) >= expected and all(r[0] != "accepted" for r in rows.values())

        waiting = sum(r[0] == "accepted" for r in collect().values())
        if waiting:
            print(
                f"push: {waiting} device(s) accepted it; waiting up to {probation:g} s for the "
                "end of their probation (--no-wait-probation: do not wait)",
                file=sys.stderr,
            )
            wait(settled, time.monotonic() + probation)
    got = collect()
    if probation is not None:
        for d, row in got.items():
            if row[0] == "accepted":
                got[d] = (NO_ANSWER, row[1], f"accepted, no probation verdict in {probation:g} s")
    for d in known:
        got.setdefault(d, (NO_ANSWER, "-", ""))
    return got


def target_of(prefix: str, scope: str) -> str:
    """``<prefix>/cam-1`` -> ``cam-1``; ``<prefix>/group/lab`` -> ``group/lab``."""
    return scope[len(prefix) + 1 :]
