"""Receiving bundles: offers in, chunks to a file, one transfer at a time (device side).

The chunk topics of a transfer are subscribed -- each by its exact name, no wildcard: a
clustered broker such as RabbitMQ does not send retained messages for wildcard subscriptions --
only once its offer has been accepted for download (retained messages on different topics
arrive in no guaranteed order), and chunks of any other transfer are dropped on paho's thread
before they are queued. An offer on the scope of the
transfer in progress (a new push) replaces it; offers on other scopes wait, and the highest
version waiting goes next. A transfer that makes no progress for half of ``timeout_s`` asks
the broker for the retained chunks once more (a new SUBSCRIBE), and is given up (and answered
``rejected``) when ``timeout_s`` passes without a new chunk: a transfer that cannot complete
(a chunk missing on the broker) ends within ``timeout_s`` of its last chunk.

Asking the host (``<base>/update/request``, not retained; see :func:`request_payload`): a
broker cluster keeps retained messages on the node they were published on, so a device on
another node may see neither the offer nor the chunks. The device therefore says hello
(``transfer_id`` null) each time it (re)connects, and a transfer without a new chunk for
``ask_after_s`` names the first :data:`MAX_ASKED` chunks it misses (again every
``ask_after_s`` without progress, and for the next ones as soon as those, and only those,
arrived). A running
``edgectl push`` answers by publishing the offer or those chunks again; with nobody listening
(a single broker keeps the retained ones) it costs one small message.

Offers reach the receiver parsed and authenticated (:class:`~edged.update.updater.Updater`);
nothing is reserved before. Chunks are screened on paho's thread (:meth:`Receiver.match`):
only the current transfer's, only indices in range, each index queued at most once -- so the
bytes waiting in the queue never exceed the bundle's size, which the signed offer declared.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edged.protocol.payloads import ModelRef, UpdateRequest
from edged.publish.mqtt import Publisher
from edged.publish.topics import chunk_topic, offer_topic
from edged.update.store import Store
from edged.update.transfer import Offer, Transfer, TransferError

log = logging.getLogger("edged.update")

SPACE_MARGIN = 1024 * 1024  # free bytes that must remain after a transfer's file is reserved
ASK_AFTER_S = 3.0  # a transfer without a new chunk for this long asks the host for the rest
MAX_ASKED = 16  # chunk indices named in one request: a slow link is not flooded with re-sends


class Refused(Exception):
    """An update or command refused; the message is the reason reported."""


def oserror(err: OSError) -> str:
    return err.strerror or str(err)


def request_payload(
    hello: dict[str, Any], transfer_id: str | None = None, missing: list[int] | None = None
) -> bytes:
    """``<base>/update/request``: ``hello`` (device, groups, active model) and, during a
    transfer, its id and the first :data:`MAX_ASKED` chunk indices still missing."""
    active = hello.get("active")
    return UpdateRequest.model_construct(
        device=hello.get("device", ""),
        groups=list(hello.get("groups", [])),
        active=ModelRef.model_construct(**active) if isinstance(active, dict) else None,
        transfer_id=transfer_id,
        missing=(missing or [])[:MAX_ASKED],
    ).to_bytes()


class Receiver:
    """``screen(offer)`` returns False to ignore an offer quietly, raises :class:`Refused` to
    refuse it, True to receive it; ``refuse(offer, reason)`` reports; ``complete(offer, path)``
    gets each assembled, checked bundle file (which it may move; what is left is removed);
    ``changed()`` is called when a transfer starts or ends."""

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        *,
        scopes: list[str],
        timeout_s: float,
        screen: Callable[[Offer], bool],
        refuse: Callable[[Offer, str], None],
        complete: Callable[[Offer, Path], None],
        changed: Callable[[], None] = lambda: None,
        request_topic: str | None = None,
        hello: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.scopes = scopes
        self.timeout_s = timeout_s
        self._screen, self._refuse = screen, refuse
        self._complete, self._changed = complete, changed
        self._lock = threading.Lock()
        self._chunk_prefix: str | None = None  # "<scope>/update/chunk/<tid>/" being received
        self._chunk_count = 0
        self._queued: set[int] = set()  # chunk indices handed to the update thread
        self.current: Transfer | None = None
        self._pending: dict[str, Offer] = {}  # scope -> newest offer not yet handled
        self.request_topic, self._hello = request_topic, hello
        self._greeted: tuple[bool, int] | None = None  # (connected, reconnects) last greeted
        self._asked = 0.0  # monotonic time of the last request for missing chunks
        self._asked_for: set[int] = set()  # the chunk indices it named
        self._received_at_ask = 0  # chunks the transfer had then
        self.ask_after_s = min(ASK_AFTER_S, timeout_s / 4)

    def subscribe(self) -> None:
        for scope in self.scopes:
            self.publisher.subscribe(offer_topic(scope))

    def match(self, topic: str) -> tuple[str, ...] | None:
        """paho's thread: ("offer", scope), ("chunk", prefix, index) or None (not ours)."""
        for scope in self.scopes:
            if topic == offer_topic(scope):
                return ("offer", scope)
        with self._lock:
            prefix = self._chunk_prefix
            if prefix is None or not topic.startswith(prefix):
                return None
            tail = topic[len(prefix) :]
            if not (tail.isascii() and tail.isdigit() and len(tail) <= 6):
                return None
            index = int(tail)
            if index >= self._chunk_count or index in self._queued:
                return None  # out of range, or a duplicate (re-delivered retained chunk)
            self._queued.add(index)
        return ("chunk", prefix, tail)

    def requeue(self, index: int) -> None:
        """Chunk ``index`` was not written: let a re-delivered copy through again."""
        with self._lock:
            self._queued.discard(index)

    # -- the update thread ---------------------------------------------------------------------

    def busy_with(self, transfer_id: str) -> bool:
        cur = self.current
        return (cur is not None and cur.offer.transfer_id == transfer_id) or any(
            o.transfer_id == transfer_id for o in self._pending.values()
        )

    def offer(self, scope: str, offer: Offer) -> None:
        """An authenticated offer for ``scope``."""
        cur = self.current
        if cur is not None and cur.offer.transfer_id == offer.transfer_id:
            return  # the retained offer again (after a reconnect)
        self._pending[scope] = offer
        if cur is not None and cur.scope == scope:
            self._drop(f"replaced by transfer {offer.transfer_id}")
        self._next()

    def chunk(self, prefix: str, index: str, payload: bytes) -> None:
        cur = self.current
        if cur is None or chunk_topic(cur.scope, cur.offer.transfer_id, "") != prefix:
            return
        try:
            cur.add(int(index), payload)
        except TransferError as err:
            self._drop(str(err), answer=True)
            return
        except ValueError:
            log.warning("update %s: ignoring chunk %r", cur.offer.transfer_id, index)
            return
        except OSError as err:
            self._drop(f"cannot write the bundle: {oserror(err)}", answer=True)
            return
        if not cur.complete:
            got = len(cur.received) - self._received_at_ask
            if self._asked_for and self._asked_for <= cur.received and got == len(self._asked_for):
                # What it asked for came, and nothing else (the broker sends no retained
                # copies): the next ones, without waiting.
                self._ask(cur)
            return
        self._end(cur)
        try:
            path = cur.finish()
        except TransferError as err:
            self._refuse(cur.offer, str(err))
        except OSError as err:
            self._refuse(cur.offer, f"cannot write the bundle: {oserror(err)}")
        else:
            self._complete(cur.offer, path)
        cur.discard()  # the transfer file, unless it was moved meanwhile
        self._next()

    def tick(self) -> None:
        self._greet()
        cur = self.current
        if cur is None:
            return
        now = time.monotonic()
        idle = now - cur.progress
        if self.request_topic is not None and min(idle, now - self._asked) >= self.ask_after_s:
            self._ask(cur)  # the chunks may be retained on another node of a cluster
        if not cur.resubscribed and idle >= self.timeout_s / 2:
            cur.resubscribed = True  # the broker sends the retained chunks again
            log.info("update %s: no progress, subscribing again", cur.offer.transfer_id)
            for i in range(len(cur.offer.chunks)):
                if i not in cur.received:
                    self.publisher.subscribe(chunk_topic(cur.scope, cur.offer.transfer_id, i))
            return
        if idle < self.timeout_s:
            return
        n = len(cur.offer.chunks)
        self._drop(
            f"transfer stalled with {len(cur.received)} of {n} chunks "
            f"(no chunk for {self.timeout_s:g} s: update.transfer_timeout_s)",
            answer=True,
        )

    def _greet(self) -> None:
        """Say hello once per connection: a host pushing now sends what this device missed."""
        if self.request_topic is None:
            return
        connected = bool(getattr(self.publisher, "connected", False))
        stats = getattr(self.publisher, "stats", None)
        key = (connected, stats.get("reconnects", 0) if isinstance(stats, dict) else 0)
        if not connected or key == self._greeted:
            return
        self._greeted = key
        self._request(None)

    def _ask(self, cur: Transfer) -> None:
        self._asked = time.monotonic()
        missing: list[int] = []
        for i in range(len(cur.offer.chunks)):
            if i not in cur.received:
                missing.append(i)
                if len(missing) == MAX_ASKED:
                    break
        self._asked_for, self._received_at_ask = set(missing), len(cur.received)
        self._request(cur.offer.transfer_id, missing)

    def _request(self, transfer_id: str | None, missing: list[int] | None = None) -> None:
        assert self.request_topic is not None
        payload = request_payload(self._hello(), transfer_id, missing)
        self.publisher.publish(self.request_topic, payload, qos=1)

    def _next(self) -> None:
        while self.current is None and self._pending:
            scope = max(self._pending, key=lambda s: self._pending[s].version)
            self._start(scope, self._pending.pop(scope))

    def _start(self, scope: str, offer: Offer) -> None:
        tid = offer.transfer_id
        try:
            if not self._screen(offer):
                return
            part = self.store.part_path(tid)
            free = shutil.disk_usage(self.store.dir).free
            if free < offer.size + SPACE_MARGIN:
                raise Refused(f"not enough space in {self.store.dir} ({free} bytes free)")
            transfer = Transfer(offer, scope, part)
        except Refused as err:
            self._refuse(offer, str(err))
            return
        except OSError as err:
            self._refuse(offer, f"cannot store the bundle: {oserror(err)}")
            return
        self.current = transfer
        with self._lock:
            self._chunk_prefix = chunk_topic(scope, tid, "")
            self._chunk_count = len(offer.chunks)
            self._queued = set()
        self._asked, self._asked_for = time.monotonic(), set()
        for i in range(len(offer.chunks)):  # exact topics: a cluster sends retained ones only so
            self.publisher.subscribe(chunk_topic(scope, tid, i))
        self._changed()
        log.info(
            "update %s: receiving %s v%d (%d bytes, %d chunks) from %s",
            tid, offer.name, offer.version, offer.size, len(offer.chunks), scope,
        )  # fmt: skip

    def _end(self, cur: Transfer) -> None:
        self.current = None
        with self._lock:
            self._chunk_prefix = None
            self._chunk_count = 0
            self._queued = set()
        # Stop the broker re-sending this transfer's retained chunks after every reconnect.
        for i in range(len(cur.offer.chunks)):
            self.publisher.unsubscribe(chunk_topic(cur.scope, cur.offer.transfer_id, i))
        self._changed()

    def _drop(self, reason: str, *, answer: bool = False) -> None:
        cur = self.current
        if cur is None:
            return
        self._end(cur)
        cur.discard()
        if answer:
            self._refuse(cur.offer, reason)
        else:
            log.info("update %s: dropped (%s)", cur.offer.transfer_id, reason)
        self._next()
