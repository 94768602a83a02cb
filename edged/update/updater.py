"""Orchestration of over-the-air updates on the device (see ``edged.update`` for the protocol).

Threads: paho's network thread calls :meth:`Updater.on_message`, which only sorts the message
into a queue (chunks of anything but the current transfer are dropped there); the frame loop
takes swaps from :attr:`Updater.slot` and reports in-service verdicts through the monitor;
everything else -- writing chunks, verifying, validating, loading, committing, rolling back,
reporting -- happens on the update thread, one thing at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edged import events
from edged.config import Config
from edged.errors import BundleError, EdgedError
from edged.guard import KindLog, one_line
from edged.model.bundle import read_bundle
from edged.model.classifier import Classifier
from edged.publish.mqtt import Publisher
from edged.publish.topics import offer_topic
from edged.update.command import CommandError, load_trusted_keys, verify_command
from edged.update.models import Boot, config_record, describe, load_record
from edged.update.monitor import ServiceMonitor
from edged.update.receiver import Receiver, Refused, oserror
from edged.update.report import model_payload, result_payload
from edged.update.slot import ModelSlot, Swap
from edged.update.store import ModelRecord, Store
from edged.update.transfer import Offer
from edged.update.validate import Validator

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger("edged.update")

ACCEPTED, REJECTED, ROLLED_BACK = "accepted", "rejected", "rolled_back"
MAX_QUEUED_REQUESTS = 64  # offers and commands waiting for the update thread (flood bound)


def warm_up(clf: Classifier) -> None:
    """First-run set-up of a new model here, not in the first frame's latency."""
    w, h = clf.input_size()
    clf.classify(np.zeros((h, w, 3), np.uint8), 1)


class Updater:
    def __init__(
        self, cfg: Config, publisher: Publisher, classifier: Classifier, boot: Boot
    ) -> None:
        """``classifier``: the model running now, which :func:`~edged.update.models.boot`
        chose (``boot.classifier``) or loaded from ``model.path`` (``boot.classifier`` None)."""
        self.cfg = cfg
        self.ucfg = cfg.update
        self.device = cfg.device_id
        self.publisher = publisher
        self.topics = publisher.topics
        self.store = Store(cfg.state_dir)
        self.slot = ModelSlot()
        state = boot.state
        if boot.classifier is None or state.active is None:  # running model.path
            state.active = config_record(classifier, cfg.model.path)
        state.highest_version = max(state.highest_version, state.active.version or 0)
        self.state = state
        self._boot_note = boot.rolled_back
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._requests = 0  # offers and commands in _queue (bounded: MAX_QUEUED_REQUESTS)
        self._requests_lock = threading.Lock()
        self._limited = KindLog(log)
        self.receiver = Receiver(
            self.store,
            publisher,
            scopes=[self.topics.base, *(self.topics.group_base(g) for g in self.ucfg.groups)],
            timeout_s=self.ucfg.transfer_timeout_s,
            screen=self._screen,
            refuse=lambda offer, reason: self._answer(offer, REJECTED, reason),
            complete=self._install,
            malformed=self._malformed,
        )
        self._keys: list[Ed25519PublicKey] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.validator = Validator(
            timeout_s=self.ucfg.validate_timeout_s,
            memory_mb=self.ucfg.validate_memory_mb,
            require_golden=self.ucfg.require_golden,
            max_bytes=self.ucfg.max_bundle_bytes,
            backend=cfg.model.backend,
            softmax=cfg.model.softmax,
        )

    # -- lifecycle (daemon thread) -----------------------------------------------------------

    def start(self) -> None:
        self.store.cleanup(self.state, keep=self.cfg.model.path)
        self.receiver.subscribe()
        self.publisher.subscribe(self.topics.update_command)
        self._publish_model()
        if self._boot_note is not None and self.state.last_update is not None:
            last = self.state.last_update
            self._publish_result(
                last.get("transfer_id"), None, last.get("version"), ROLLED_BACK, self._boot_note
            )
        self._thread = threading.Thread(target=self._run, name="edged-update", daemon=True)
        self._thread.start()
        log.info(
            "updates: listening on %s (active %s, highest version %d)",
            ", ".join(offer_topic(s) for s in self.receiver.scopes),
            describe(self.state.active),
            self.state.highest_version,
        )

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self.validator.cancel()
        self._queue.put(("stop",))
        if self._thread is not None:
            self._thread.join(timeout)

    def initial_monitor(self) -> ServiceMonitor | None:
        """A monitor for a stored model started before it passed its probation."""
        active = self.state.active
        if active is None or active.confirmed or self.state.previous is None:
            return None
        return self._monitor(active)

    # -- inputs from other threads -------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """paho's network thread: sort and queue, nothing more. Never raises; at most
        ``MAX_QUEUED_REQUESTS`` offers and commands wait (a flood beyond is dropped, logged
        at most once per 10 s)."""
        try:
            if topic == self.topics.update_command:
                item: tuple[Any, ...] = ("command", payload)
            else:
                match = self.receiver.match(topic)
                if match is None:
                    return
                item = (*match, payload)
            if item[0] != "chunk":
                with self._requests_lock:
                    if self._requests >= MAX_QUEUED_REQUESTS:
                        self._limited.warning(
                            "flood", "updates: too many offers/commands waiting; dropping one"
                        )
                        return
                    self._requests += 1
            self._queue.put(item)
        except Exception as err:  # a bug: this message is lost, paho's thread goes on
            self._limited.error("message", f"updates: a message failed: {one_line(repr(err))}")

    def _monitor(self, record: ModelRecord) -> ServiceMonitor:
        tid = record.transfer_id
        return ServiceMonitor(
            window=self.ucfg.monitor_frames,
            probation=self.ucfg.probation_frames,
            on_fail=lambda reason: self._queue.put(("failed", tid, reason)),
            on_pass=lambda: self._queue.put(("passed", tid)),
            description=describe(record),
        )

    # -- the update thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = ("tick",)
            if item[0] == "stop":
                break
            self._step(item)

    def _step(self, item: tuple[Any, ...]) -> None:
        """One queued item on the update thread; nothing it holds can raise out of here."""
        if item[0] in ("offer", "command"):
            with self._requests_lock:
                self._requests -= 1
        try:
            getattr(self, f"_on_{item[0]}")(*item[1:])
            self.receiver.tick()
        except Exception as err:  # a bug: keep the daemon and the update thread alive
            self._limited.error(
                f"step-{item[0]}",
                f"update thread: handling {item[0]} failed: {one_line(repr(err))}",
            )
            log.debug("update thread: handling %s failed", item[0], exc_info=True)

    def _on_tick(self) -> None:
        pass

    def _on_offer(self, scope: str, payload: bytes) -> None:
        self.receiver.offer(scope, payload)

    def _on_chunk(self, prefix: str, index: str, payload: bytes) -> None:
        self.receiver.chunk(prefix, index, payload)

    def _screen(self, offer: Offer) -> bool:
        """Checks made from the offer alone, before anything is received."""
        state, limit = self.state, self.ucfg.max_bundle_bytes
        if offer.transfer_id in state.answered:
            return False
        if state.active is not None and state.active.version == offer.version:
            log.debug("offer %s: version %d is already active", offer.transfer_id, offer.version)
            return False
        if offer.size > limit:
            raise Refused(
                f"bundle is {offer.size} bytes, over the {limit}-byte limit "
                "(update.max_bundle_bytes)"
            )
        if offer.version <= state.highest_version:
            raise Refused(
                f"version {offer.version} is not above the highest accepted version "
                f"{state.highest_version} (replay or downgrade refused)"
            )
        return True

    def _malformed(self, reason: str) -> None:
        log.warning("update offer refused: %s", reason)
        self._publish_result(None, None, None, REJECTED, reason)

    # -- install, rollback ---------------------------------------------------------------------

    def _trusted_keys(self) -> list[Ed25519PublicKey]:
        if self._keys is None:
            self._keys = load_trusted_keys(list(self.ucfg.trusted_keys))
        return self._keys

    def _install(self, offer: Offer, path: Path) -> None:
        t0 = time.monotonic()
        installed: str | None = None
        try:
            bundle = read_bundle(
                path.read_bytes(),
                trusted_keys=self._trusted_keys(),
                allow_unsigned=self.ucfg.allow_unsigned,
                max_bytes=self.ucfg.max_bundle_bytes,
            )
            if (bundle.name, bundle.version) != (offer.name, offer.version):
                raise Refused(
                    f"bundle is {bundle.name} v{bundle.version}, the offer says "
                    f"{offer.name} v{offer.version}"
                )
            verdict = self.validator.run(path)
            if not verdict.ok:
                raise Refused(f"validation failed: {verdict.reason}")
            for problem in (verdict.details or {}).get("limit_warnings", []):
                log.warning("validator ran without a limit it could not set: %s", problem)
            m = self.cfg.model
            clf = Classifier.from_bundle(
                bundle, threads=m.threads, backend=m.backend, softmax=m.softmax
            )
            warm_up(clf)
            installed = self.store.install(path, bundle.version, offer.sha256)
            record = ModelRecord(
                bundle.name, bundle.version, clf.info.sha256, installed, offer.sha256,
                confirmed=False, transfer_id=offer.transfer_id,
            )  # fmt: skip
            state = replace(self.state, active=record, previous=self.state.active)
            state.highest_version = max(state.highest_version, bundle.version)
            state.boot_attempts = 0
            state.note(offer.transfer_id, offer.version, ACCEPTED, "")
            self.store.save(state)  # the commit point
        except (Refused, EdgedError) as err:
            self._reject_install(offer, installed, str(err))
            return
        except OSError as err:
            reason = f"cannot install the bundle: {oserror(err)}"
            self._reject_install(offer, installed, reason)
            return
        self.state = state
        ready = time.monotonic()
        swap = self._swap(clf, self._monitor(record) if state.previous is not None else None)
        log.info(
            "update %s: %s v%d is live (validated in %.2f s, verified+loaded+committed in "
            "%.2f s, swapped %.0f ms after)",
            offer.transfer_id, bundle.name, bundle.version, verdict.seconds,
            ready - t0 - verdict.seconds, 1000 * ((swap.swapped_at or ready) - ready),
        )  # fmt: skip
        self.store.cleanup(self.state, keep=self.cfg.model.path)
        self._publish_result(offer.transfer_id, offer.name, offer.version, ACCEPTED, "")
        self._publish_model()

    def _reject_install(self, offer: Offer, installed: str | None, reason: str) -> None:
        if installed is not None:
            self.store.discard(installed)
        self._answer(offer, REJECTED, reason)

    def _swap(self, clf: Classifier, monitor: ServiceMonitor | None) -> Swap:
        """Hand ``clf`` to the frame loop and wait until it swapped it in."""
        swap = self.slot.put(clf, monitor)
        while not swap.wait(0.2):
            if self._stop.is_set() and self.slot.cancel(swap):
                log.info("stopping before the swap; the new model is active from the next start")
                return swap
        swap.old = None  # the replaced model: released here, off the frame loop
        return swap

    def _rollback(
        self, target: ModelRecord, reason: str, tid: str | None, version: int | None, **extra: Any
    ) -> str:
        """Make ``target`` (the previous model) active again; returns "" or why it failed."""
        try:
            clf = load_record(target, self.store, self.cfg)
            warm_up(clf)
        except (EdgedError, OSError) as err:
            return f"cannot load {describe(target)}: {err}"
        failed = self.state.active
        state = replace(self.state, active=replace(target, confirmed=True), previous=failed)
        state.boot_attempts = 0
        state.note(tid, version, ROLLED_BACK, reason)
        try:
            self.store.save(state)
        except OSError as err:
            return f"cannot save the update state: {oserror(err)}"
        self.state = state
        self._swap(clf, None)
        log.warning("rolled back to %s: %s", describe(target), reason)
        name = failed.name if failed is not None else None
        self._publish_result(tid, name, version, ROLLED_BACK, reason, **extra)
        self._publish_model()
        return ""

    def _on_failed(self, tid: str | None, reason: str) -> None:
        active, previous = self.state.active, self.state.previous
        if active is None or active.transfer_id != tid or previous is None:
            return
        problem = self._rollback(previous, reason, tid, active.version)
        if problem:
            log.error("cannot roll back %s (%s): %s", describe(active), reason, problem)

    def _on_passed(self, tid: str | None) -> None:
        active = self.state.active
        if active is None or active.transfer_id != tid or active.confirmed:
            return
        state = replace(self.state, active=replace(active, confirmed=True), boot_attempts=0)
        try:
            self.store.save(state)
        except OSError as err:
            log.warning("cannot record that %s passed its probation: %s", describe(active), err)
        self.state = state
        log.info("%s passed its probation", describe(active))

    def _on_command(self, payload: bytes) -> None:
        extra: dict[str, Any] = {"command": "rollback", "issued": None}
        version: int | None = None
        with contextlib.suppress(ValueError, TypeError, AttributeError):  # echo what it said
            raw = json.loads(payload)
            extra["issued"], version = raw.get("issued"), raw.get("version")
        try:
            cmd = verify_command(
                payload,
                device=self.device,
                trusted_keys=self._trusted_keys(),
                last_issued=self.state.last_command_issued,
            )
            extra["issued"], version = cmd.issued, cmd.version
            state = replace(self.state, last_command_issued=cmd.issued)
            try:
                self.store.save(state)  # before acting: a command is never run twice
            except OSError as err:
                raise Refused(f"cannot record the command: {oserror(err)}") from None
            self.state = state
            active, previous = state.active, state.previous
            if active is not None and active.version == cmd.version:
                raise Refused(f"version {cmd.version} is already active")
            if previous is None or previous.version != cmd.version:
                raise Refused(
                    f"version {cmd.version} is not kept here (previous: {describe(previous)})"
                )
            reason = f"rollback command (key {cmd.key_id})"
            problem = self._rollback(previous, reason, None, cmd.version, **extra)
            if problem:
                raise Refused(problem)
        except (CommandError, Refused, BundleError) as err:
            log.warning("command refused: %s", err)
            self._publish_result(None, None, version, REJECTED, str(err), **extra)

    # -- reporting -----------------------------------------------------------------------------

    def _answer(self, offer: Offer, status: str, reason: str) -> None:
        """Report a refused offer once (the transfer id is remembered, persisted if possible)."""
        if self._stop.is_set():  # cut short by the stop, not refused: tried again next start
            log.info("update %s: interrupted (%s)", offer.transfer_id, reason)
            return
        log.warning(
            "update %s (%s v%d) %s: %s",
            offer.transfer_id,
            offer.name,
            offer.version,
            status,
            reason,
        )
        self.state.note(offer.transfer_id, offer.version, status, reason)
        try:
            self.store.save(self.state)
        except OSError as err:
            log.debug("cannot save the update state: %s", err)
        self._publish_result(offer.transfer_id, offer.name, offer.version, status, reason)
        self._publish_model()

    def _publish_result(
        self, tid: str | None, name: str | None, version: int | None, status: str, reason: str,
        **extra: Any,
    ) -> None:  # fmt: skip
        payload = result_payload(self.device, tid, name, version, status, reason, **extra)
        self.publisher.publish(self.topics.update_result, events.dumps(payload), qos=1)

    def _publish_model(self) -> None:
        payload = model_payload(self.device, self.state)
        self.publisher.publish(self.topics.model, events.dumps(payload), qos=1, retain=True)
