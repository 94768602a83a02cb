"""Orchestration of over-the-air updates on the device (see ``edged.update`` for the protocol).

Threads: paho's network thread calls :meth:`Updater.on_message`, which only sorts the message
into a bounded queue (:class:`~edged.update.inbox.Inbox`); the frame loop
takes swaps from :attr:`Updater.slot` and reports in-service verdicts through the monitor;
everything else -- writing chunks, verifying, validating, loading, committing, rolling back,
reporting -- happens on the update thread, one thing at a time.

No payload on an update topic can raise out of its handler: a refused message gets one line on
``update/result`` and in the log, both rate limited (:class:`~edged.update.report.Reporter`),
so a flood of them costs the device nothing else. An offer is authenticated (its Ed25519 signature, its target,
its ``issued`` time) before anything is reserved for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged.config import Config
from edged.errors import BundleError, EdgedError, OfferError, Refused
from edged.model.bundle import read_bundle
from edged.model.classifier import Classifier, warm_up
from edged.protocol.payloads import UpdateStatus
from edged.publish.api import PublisherAPI
from edged.publish.topics import offer_topic
from edged.update.admit import authenticate, screen
from edged.update.command import CommandError, load_trusted_keys, verify_command
from edged.update.inbox import Inbox, issued_of
from edged.update.models import Boot, config_record, describe, find_kept, load_record
from edged.update.monitor import ServiceMonitor
from edged.update.receiver import Receiver, oserror
from edged.update.report import Reporter
from edged.update.slot import ModelSlot, Swap
from edged.update.store import ModelRecord, Store
from edged.update.transfer import Offer, max_offer_bytes
from edged.update.validate import Validator

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger("edged.update")

ACCEPTED: UpdateStatus = "accepted"
REJECTED: UpdateStatus = "rejected"
ROLLED_BACK: UpdateStatus = "rolled_back"
CONFIRMED: UpdateStatus = "confirmed"


class Updater:
    def __init__(
        self, cfg: Config, publisher: PublisherAPI, classifier: Classifier, boot: Boot
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
        self.report = Reporter(publisher, self.device, list(self.ucfg.groups))
        self.receiver = Receiver(
            self.store,
            publisher,
            scopes=[self.topics.base, *(self.topics.group_base(g) for g in self.ucfg.groups)],
            timeout_s=self.ucfg.transfer_timeout_s,
            screen=lambda offer: screen(self.state, offer, self.ucfg.max_bundle_bytes),
            refuse=lambda offer, reason: self._answer(offer, REJECTED, reason),
            complete=self._install,
            changed=self._publish_model,
            request_topic=self.topics.update_request,
            hello=lambda: self.report.hello(self.state),
        )
        self.inbox = Inbox(
            command_topic=self.topics.update_command,
            match=self.receiver.match,
            max_offer=max_offer_bytes(self.ucfg.max_bundle_bytes),
            refused=self.report.refused,
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
            self.report.result(
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
        self.inbox.queue.put(("stop",))
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
        """paho's network thread: sort and queue, nothing more; never raises."""
        try:
            self.inbox.sort(topic, bytes(payload))
        except Exception as err:  # a bug: the network thread must go on
            self.report.refused("update message", f"cannot handle it ({type(err).__name__})")

    def _monitor(self, record: ModelRecord) -> ServiceMonitor:
        tid = record.transfer_id
        return ServiceMonitor(
            window=self.ucfg.monitor_frames,
            probation=self.ucfg.probation_frames,
            on_fail=lambda reason: self.inbox.queue.put(("failed", tid, reason)),
            on_pass=lambda: self.inbox.queue.put(("passed", tid)),
            description=describe(record),
        )

    # -- the update thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.inbox.queue.get(timeout=1.0)
            except queue.Empty:
                item = ("tick",)
            if item[0] == "stop":
                break
            self._step(item)

    def _step(self, item: tuple[Any, ...]) -> None:
        """One queued item on the update thread; nothing it holds can raise out of here."""
        try:
            getattr(self, f"_on_{item[0]}")(*item[1:])
            self.receiver.tick()
        except Exception as err:  # a bug: keep the daemon and the update thread alive
            self.report.refused(str(item[0]), f"handling it failed ({type(err).__name__})")
            log.debug("update thread: handling %s failed", item[0], exc_info=True)

    def _on_tick(self) -> None:
        pass

    def _on_offer(self, scope: str) -> None:
        payload = self.inbox.take_offer(scope)
        if not payload:  # a cleared retained offer
            return
        try:
            offer = Offer.from_json(payload, self.inbox.max_offer)
        except OfferError as err:
            self.report.refused("offer", str(err))
            return
        target = scope[len(self.topics.prefix) + 1 :]
        try:
            authenticate(
                offer, target, self._trusted_keys(), allow_unsigned=self.ucfg.allow_unsigned
            )
        except (OfferError, BundleError) as err:
            self.report.refused("offer", str(err))
            return
        if offer.transfer_id in self.state.answered or self.receiver.busy_with(offer.transfer_id):
            return  # the retained offer again (after a reconnect or a restart)
        last = self.state.offer_issued.get(target)
        if last is not None and offer.issued < last:
            self.report.refused(
                "offer",
                f"transfer {offer.transfer_id} was issued at {offer.issued}, before the last "
                f"offer for {target} ({last}): replay refused",
            )
            return
        if last != offer.issued:
            self.state.offer_seen(target, offer.issued)
            try:
                self.store.save(self.state)
            except OSError as err:
                log.debug("cannot save the update state: %s", err)
        self.receiver.offer(scope, offer)

    def _on_chunk(self, prefix: str, index: str, payload: bytes) -> None:
        self.receiver.chunk(prefix, index, payload)

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
                bundle,
                threads=m.threads,
                interpreters=m.interpreters,
                backend=m.backend,
                softmax=m.softmax,
            )
            warm_up(clf)
            installed = self.store.install(path, bundle.version, offer.sha256)
            record = ModelRecord(
                bundle.name, bundle.version, clf.info.sha256, installed, offer.sha256,
                confirmed=False, transfer_id=offer.transfer_id,
            )  # fmt: skip
            state = replace(self.state, history=list(self.state.history))
            state.activate(record, self.ucfg.keep_models)
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
        self.report.result(offer.transfer_id, offer.name, offer.version, ACCEPTED, "")
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
        """Make ``target`` (a kept model) active again; returns "" or why it failed. A command
        (no ``tid``) must get the very model it named; an automatic rollback (a failing model)
        takes the configured model.path even if that file changed meanwhile."""
        try:
            clf = load_record(target, self.store, self.cfg, strict=tid is None)
            warm_up(clf)
        except (EdgedError, OSError) as err:
            return f"cannot load {describe(target)}: {err}"
        failed = self.state.active
        state = replace(self.state, history=list(self.state.history))
        state.activate(replace(target, confirmed=True), self.ucfg.keep_models)
        state.boot_attempts = 0
        state.note(tid, version, ROLLED_BACK, reason)
        try:
            self.store.save(state)
        except OSError as err:
            return f"cannot save the update state: {oserror(err)}"
        self.state = state
        self._swap(clf, None)
        log.warning("rolled back to %s: %s", describe(target), reason)
        name = (failed.name if failed is not None else None) if tid else target.name
        self.report.result(tid, name, version, ROLLED_BACK, reason, **extra)
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
        state.note(tid, active.version, CONFIRMED, "passed its probation")
        try:
            self.store.save(state)
        except OSError as err:
            log.warning("cannot record that %s passed its probation: %s", describe(active), err)
        self.state = state
        log.info("%s passed its probation", describe(active))
        self.report.result(tid, active.name, active.version, CONFIRMED, "passed its probation")
        self._publish_model()

    def _on_command(self, payload: bytes) -> None:
        self.inbox.command_taken()
        try:
            cmd = verify_command(
                payload,
                device=self.device,
                trusted_keys=self._trusted_keys(),
                last_issued=self.state.last_command_issued,
            )
        except (CommandError, BundleError) as err:
            self.report.refused("command", str(err), command="rollback", issued=issued_of(payload))
            return
        extra: dict[str, Any] = {"command": cmd.command, "issued": cmd.issued}
        try:
            state = replace(self.state, last_command_issued=cmd.issued)
            try:
                self.store.save(state)  # before acting: a command is never run twice
            except OSError as err:
                raise Refused(f"cannot record the command: {oserror(err)}") from None
            self.state = state
            target = find_kept(self.state, cmd)
            reason = f"rollback command (key {cmd.key_id})"
            problem = self._rollback(target, reason, None, target.version, **extra)
            if problem:
                raise Refused(problem)
        except (Refused, BundleError) as err:
            log.warning("command refused: %s", err)
            self.report.result(None, None, cmd.version, REJECTED, str(err), **extra)

    # -- reporting -----------------------------------------------------------------------------

    def _answer(self, offer: Offer, status: UpdateStatus, reason: str) -> None:
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
        self.report.result(offer.transfer_id, offer.name, offer.version, status, reason)
        self._publish_model()

    def _publish_model(self) -> None:
        self.report.model(self.state, self.receiver.current)
