"""Settings and commands over MQTT: ``<prefix>/<device_id>/set`` in, ``.../set/result`` out.

A message is one JSON object; every key is optional, at least one setting or a command is
needed::

    {"publish": {"min_score": 0.8, "mode": "change", "agree_n": 3, "agree_m": 5,
                 "min_interval_s": 0, "heartbeat_s": 60, "qos": 1},
     "model": {"top_k": 1},
     "paused": true,
     "command": "stats" | "ha_remove" | "ha_announce" | "reset",
     "persist": true,
     "id": "anything, echoed in the result"}

The settings are validated by the same pydantic models as the config file (``PublishConfig``
and ``ModelConfig`` rebuilt from the running values merged with the message), so the errors
read the same: ``publish.min_score: Input should be less than or equal to 1``. Unknown keys are
rejected, and so are keys of those sections that only apply at start (``publish.spool``,
``model.path``, ...). A message with any error changes nothing. The answer::

    {"schema": 1, "device": "cam-1", "ts": "...Z", "ok": true,
     "applied": {"publish": {"min_score": 0.8}}, "persisted": false}
    {"schema": 1, "device": "cam-1", "ts": "...Z", "ok": false,
     "errors": ["publish.min_score: Input should be less than or equal to 1"]}

The message and the answer are ``ControlRequest`` and ``ControlResult`` of :mod:`edged.protocol`.

Changes last until the daemon stops, unless ``"persist": true``: then they are merged into
``<state_dir>/overrides.json`` (written atomically) and applied at every start on top of the
config file and the environment. Writes are coalesced: at most one every
``PERSIST_INTERVAL_S`` (the first at once, later ones with the last state winning), and the
pending one at stop. ``{"command": "reset"}`` deletes that file and returns to the
config file's values (and resumes). Precedence, lowest first: config file, ``EDGED_*``
environment, ``overrides.json``, changes made since the start without ``persist``.

Threads: paho's thread only queues the raw payload (:meth:`Control.on_message`); the frame loop
validates, applies and answers between two frames (:meth:`Control.poll`, at most
``MAX_PER_POLL`` messages per call).

Bounds (untrusted input): a payload is at most ``MAX_PAYLOAD`` bytes of UTF-8 JSON, nested at
most ``MAX_DEPTH`` deep, with no duplicate keys and no NaN/Infinity (the parser and the
validation are in :mod:`edged.features.settings`); the settings have upper
bounds (``edged.config.models``) so that no value raises the per-frame cost; messages are
taken at ``RATE`` a second (``BURST`` at once) and the rest refused and counted, answered by
one ``rate limit`` result a second at most. Nothing a message holds can raise out of
:meth:`Control.on_message` or :meth:`Control.poll`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edged.config import Config
from edged.errors import ControlError as ControlError  # re-exported: tests import it here
from edged.features.settings import Settings, echo_id, parse, validate
from edged.infra import events
from edged.infra.guard import KindLog, TokenBucket, one_line
from edged.infra.util import atomic_write, deep_merge
from edged.protocol.payloads import Applied, ControlResult
from edged.publish.api import PublisherAPI

log = logging.getLogger("edged.control")

OVERRIDES_NAME = "overrides.json"
MAX_OVERRIDES_BYTES = 64 * 1024  # a larger overrides.json is ignored
QUEUE_MAX = 64
MAX_PER_POLL = 8  # messages handled between two frames
RATE = 10.0  # control messages taken per second ...
BURST = 20.0  # ... and at once
PERSIST_INTERVAL_S = 2.0  # at most one overrides.json write per this many seconds
RATE_ANSWER_S = 1.0  # at most one "rate limit" answer per this many seconds


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to ``path`` so that a crash or power cut leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


class Control:
    """``apply(settings)`` and the ``commands`` run on the frame loop (inside :meth:`poll`);
    a command missing from ``commands`` is refused as not available."""

    def __init__(
        self,
        cfg: Config,
        publisher: PublisherAPI,
        *,
        apply: Callable[[Settings], None],
        commands: Mapping[str, Callable[[], object]],
    ) -> None:
        self.device = cfg.device_id
        self.publisher = publisher
        self.topics = publisher.topics
        self.path = Path(cfg.state_dir) / OVERRIDES_NAME
        self.base = Settings(cfg.publish, cfg.model, False)  # config file + environment
        self.current = self.base
        self.saved: dict[str, Any] = {}  # what overrides.json holds (or will, once written)
        self._apply = apply
        self._commands = commands
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=QUEUE_MAX)
        self._log = KindLog(log)
        self._bucket = TokenBucket(RATE, BURST)
        self._lock = threading.Lock()  # the counters below, from paho's thread and the loop
        #: handled (answered), refused (answered ok=false), rate_limited (not taken)
        self.counts = {"handled": 0, "refused": 0, "rate_limited": 0}
        self._limited_answered = 0
        self._limited_at = 0.0
        self._dirty = False  # self.saved differs from the file
        self._written_at = -PERSIST_INTERVAL_S  # monotonic time of the last write

    # -- start -------------------------------------------------------------------------------

    def load(self) -> Settings:
        """The settings to start with: the config's, with ``overrides.json`` applied. A file
        that is unreadable, too large or invalid is ignored with one warning line."""
        try:
            with self.path.open("rb") as fh:
                raw = fh.read(MAX_OVERRIDES_BYTES + 1)
            data = parse(raw, MAX_OVERRIDES_BYTES)
            settings, applied, _, _ = validate(self.base, data)
        except FileNotFoundError:
            return self.current
        except OSError as err:
            log.warning("ignoring %s: cannot read it (%s)", self.path, one_line(err))
            return self.current
        except ControlError as err:
            log.warning("ignoring %s: %s", self.path, "; ".join(err.problems))
            return self.current
        except Exception as err:  # a bug: start with the config file's settings
            log.warning("ignoring %s: %s", self.path, one_line(repr(err)))
            return self.current
        self.current, self.saved = settings, applied
        log.info("settings from %s: %s", self.path, one_line(_compact(applied), 500))
        return settings

    def subscribe(self) -> None:
        self.publisher.subscribe(self.topics.control)

    def close(self) -> None:
        """At stop: write a coalesced ``overrides.json`` still pending."""
        if self._dirty:
            self._write()

    # -- paho's thread -----------------------------------------------------------------------

    def wants(self, topic: str) -> bool:
        return topic == self.topics.control

    def on_message(self, topic: str, payload: bytes) -> None:
        if not payload:  # a retained message being cleared
            return
        if not self._bucket.take():
            with self._lock:
                self.counts["rate_limited"] += 1
            return
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            with self._lock:
                self.counts["rate_limited"] += 1

    # -- the frame loop ----------------------------------------------------------------------

    def poll(self, now: float | None = None) -> None:
        """Between two frames: at most ``MAX_PER_POLL`` messages, the rate-limit answer, a
        coalesced write. Never raises."""
        now = time.monotonic() if now is None else now
        for _ in range(MAX_PER_POLL):
            try:
                payload = self._queue.get_nowait()
            except queue.Empty:
                break
            try:
                self.handle(payload)
            except Exception as err:  # a bug: the message is lost, the daemon goes on
                self._log.error(
                    "handle", f"control: handling a message failed: {one_line(repr(err))}"
                )
        try:
            self._answer_rate_limited(now)
            if self._dirty and now - self._written_at >= PERSIST_INTERVAL_S:
                self._write(now)
        except Exception as err:  # a bug
            self._log.error("poll", f"control: {one_line(repr(err))}")

    def _answer_rate_limited(self, now: float) -> None:
        with self._lock:
            limited = self.counts["rate_limited"]
        new = limited - self._limited_answered
        if new <= 0 or now - self._limited_at < RATE_ANSWER_S:
            return
        self._limited_answered, self._limited_at = limited, now
        problem = (
            f"(top level): rate limit: {new} message(s) refused (more than {RATE:g} a second; "
            f"{limited} since start)"
        )
        self._log.warning("rate", f"control: {problem}")
        answer = ControlResult.model_construct(device=self.device, ok=False, errors=[problem])
        self.publisher.publish(self.topics.control_result, answer.to_bytes(), qos=1)

    def handle(self, payload: bytes) -> dict[str, Any]:
        """Validate, apply, answer on ``set/result``; returns the answer (its JSON object)."""
        msg_id: str | int | None = None
        try:
            data = parse(payload)
            msg_id = echo_id(data)
            applied, persisted = self._act(data)
            answer = ControlResult.model_construct(
                device=self.device,
                id=msg_id,
                ok=True,
                applied=Applied.model_construct(**applied),
                persisted=persisted,
            )
        except ControlError as err:
            answer = ControlResult.model_construct(
                device=self.device, id=msg_id, ok=False, errors=err.problems
            )
            self._log.warning("refused", "control message refused: " + "; ".join(err.problems))
        with self._lock:
            self.counts["handled"] += 1
            if not answer.ok:
                self.counts["refused"] += 1
        self.publisher.publish(self.topics.control_result, answer.to_bytes(), qos=1)
        return answer.wire()

    def _act(self, data: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """(what was applied, persisted) or ``ControlError``."""
        settings, applied, command, persist = validate(self.current, data)
        if command == "reset":
            return self._reset()
        if command is not None and command not in self._commands:
            raise ControlError([f"command: {command} is not available on this device"])
        persisted = False
        if persist and applied:
            saved = deep_merge(self.saved, applied)
            previous, self.saved, self._dirty = self.saved, saved, True
            if time.monotonic() - self._written_at >= PERSIST_INTERVAL_S:
                try:  # nothing written lately: now, so that an error is in the answer
                    self._write(raise_errors=True)
                except OSError as err:
                    self.saved, self._dirty = previous, False
                    raise ControlError(
                        [f"persist: cannot write {self.path}: {one_line(err)}"]
                    ) from None
            persisted = True  # else written within PERSIST_INTERVAL_S (poll) or at stop
        if applied:
            self._set(settings)
            log.info(
                "control: %s%s",
                one_line(_compact(applied), 500),
                f" (saved in {self.path})" if persisted else "",
            )
        if command is not None:
            self._commands[command]()
            applied["command"] = command
        return applied, persisted

    def _write(self, now: float | None = None, *, raise_errors: bool = False) -> None:
        self._written_at = time.monotonic() if now is None else now
        self._dirty = False
        try:
            if self.saved:
                write_atomically(self.path, self.saved)
            else:
                self.path.unlink(missing_ok=True)
        except OSError as err:
            if raise_errors:
                raise
            self._log.warning("persist", f"control: cannot write {self.path}: {one_line(err)}")

    def _reset(self) -> tuple[dict[str, Any], bool]:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as err:
            raise ControlError([f"command: cannot remove {self.path}: {one_line(err)}"]) from None
        self.saved, self._dirty = {}, False
        self._set(self.base)
        log.info("control: back to the config file's settings (%s removed)", self.path)
        return {"command": "reset"}, False

    def _set(self, settings: Settings) -> None:
        self.current = settings
        self._apply(settings)


def _compact(obj: Any) -> str:
    return events.dumps(obj).decode("utf-8")
