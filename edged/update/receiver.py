"""Receiving bundles: offers in, chunks to a file, one transfer at a time (device side).

The chunk topic of a transfer is subscribed only once its offer has been accepted for download
(retained messages on different topics arrive in no guaranteed order), and chunks of any other
transfer are dropped on paho's thread before they are queued. An offer on the scope of the
transfer in progress (a new push) replaces it; offers on other scopes wait, and the highest
version waiting goes next. A transfer that makes no progress for ``timeout_s`` asks the broker
for the retained chunks once more (a new SUBSCRIBE), and is given up after another
``timeout_s``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edged.publish.mqtt import Publisher
from edged.publish.topics import chunk_topic, offer_topic
from edged.update.store import Store
from edged.update.transfer import Offer, OfferError, Transfer, TransferError

log = logging.getLogger("edged.update")

SPACE_MARGIN = 1024 * 1024  # free bytes that must remain after a transfer's file is reserved


class Refused(Exception):
    """An update or command refused; the message is the reason reported."""


def oserror(err: OSError) -> str:
    return err.strerror or str(err)


class Receiver:
    """``screen(offer)`` returns False to ignore an offer quietly, raises :class:`Refused` to
    refuse it, True to receive it; ``refuse(offer, reason)`` reports; ``complete(offer, path)``
    gets each assembled, checked bundle file (which it may move; what is left is removed);
    ``malformed(reason)`` reports an offer that could not be parsed (once per payload)."""

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
        malformed: Callable[[str], None],
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.scopes = scopes
        self.timeout_s = timeout_s
        self._screen, self._refuse = screen, refuse
        self._complete, self._malformed = complete, malformed
        self._lock = threading.Lock()
        self._chunk_prefix: str | None = None  # "<scope>/update/chunk/<tid>/" being received
        self.current: Transfer | None = None
        self._pending: dict[str, Offer] = {}  # scope -> newest offer not yet handled
        self._bad: set[str] = set()  # digests of malformed offers already reported

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
        if prefix is not None and topic.startswith(prefix):
            return ("chunk", prefix, topic[len(prefix) :])
        return None

    # -- the update thread ---------------------------------------------------------------------

    def offer(self, scope: str, payload: bytes) -> None:
        if not payload:  # a cleared retained offer
            return
        try:
            offer = Offer.from_json(payload)
        except OfferError as err:
            digest = hashlib.sha256(payload).hexdigest()
            if digest not in self._bad:
                if len(self._bad) >= 1024:  # bounded: a flood of distinct junk offers
                    self._bad.clear()
                self._bad.add(digest)
                self._malformed(str(err))
            return
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
        cur = self.current
        if cur is None or time.monotonic() - cur.progress < self.timeout_s:
            return
        if not cur.resubscribed:  # the broker sends the retained chunks again
            cur.resubscribed, cur.progress = True, time.monotonic()
            log.info("update %s: no progress, subscribing again", cur.offer.transfer_id)
            self.publisher.subscribe(chunk_topic(cur.scope, cur.offer.transfer_id, "+"))
            return
        n = len(cur.offer.chunks)
        self._drop(f"transfer stalled with {len(cur.received)} of {n} chunks", answer=True)

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
        self.publisher.subscribe(chunk_topic(scope, tid, "+"))
        log.info(
            "update %s: receiving %s v%d (%d bytes, %d chunks) from %s",
            tid, offer.name, offer.version, offer.size, len(offer.chunks), scope,
        )  # fmt: skip

    def _end(self, cur: Transfer) -> None:
        self.current = None
        with self._lock:
            self._chunk_prefix = None
        # Stop the broker re-sending this transfer's retained chunks after every reconnect.
        self.publisher.unsubscribe(chunk_topic(cur.scope, cur.offer.transfer_id, "+"))

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
