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

Changes last until the daemon stops, unless ``"persist": true``: then they are merged into
``<state_dir>/overrides.json`` (written atomically) and applied at every start on top of the
config file and the environment. ``{"command": "reset"}`` deletes that file and returns to the
config file's values (and resumes). Precedence, lowest first: config file, ``EDGED_*``
environment, ``overrides.json``, changes made since the start without ``persist``.

Threads: paho's thread only queues the raw payload (:meth:`Control.on_message`); the frame loop
validates, applies and answers between two frames (:meth:`Control.poll`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from edged import events
from edged.config import Config, ModelConfig, PublishConfig, format_validation_error
from edged.publish.connect import RateLimitedLog
from edged.publish.mqtt import Publisher

log = logging.getLogger("edged.control")

OVERRIDES_NAME = "overrides.json"
MAX_PAYLOAD = 16 * 1024
QUEUE_MAX = 64
# What can change while running; the rest of these sections is read once at start.
RUNTIME_KEYS: dict[str, tuple[str, ...]] = {
    "publish": ("mode", "min_score", "agree_n", "agree_m", "min_interval_s", "heartbeat_s", "qos"),
    "model": ("top_k",),
}
SECTION_MODELS: dict[str, type[BaseModel]] = {"publish": PublishConfig, "model": ModelConfig}
Command = Literal["stats", "ha_remove", "ha_announce", "reset"]


class ControlError(Exception):
    """A refused control message; ``problems`` are ``key.path: reason`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    publish: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    paused: StrictBool | None = None
    command: Command | None = None
    persist: StrictBool = False
    id: Annotated[str, Field(max_length=128)] | StrictInt | None = None


class _Sections(BaseModel):
    """The config file's own section models, so that errors name ``publish.min_score``."""

    model_config = ConfigDict(extra="forbid")

    publish: PublishConfig
    model: ModelConfig


@dataclass(frozen=True, slots=True)
class Settings:
    publish: PublishConfig
    model: ModelConfig
    paused: bool = False


def validate(
    current: Settings, data: Mapping[str, Any]
) -> tuple[Settings, dict[str, Any], Command | None, bool]:
    """(new settings, what changed as given, command, persist) or ``ControlError``."""
    try:
        req = _Request.model_validate(dict(data))
    except ValidationError as err:
        raise ControlError(format_validation_error(err)) from None
    problems: list[str] = []
    merged: dict[str, dict[str, Any]] = {}
    patches: dict[str, dict[str, Any]] = {}
    for section, model_cls in SECTION_MODELS.items():
        patch: dict[str, Any] = getattr(req, section) or {}
        for key in patch:
            if key in model_cls.model_fields and key not in RUNTIME_KEYS[section]:
                problems.append(
                    f"{section}.{key}: cannot be changed at runtime (edit the config file "
                    "and restart)"
                )
        runtime = RUNTIME_KEYS[section]
        patch = {k: v for k, v in patch.items() if k not in model_cls.model_fields or k in runtime}
        patches[section] = patch
        merged[section] = {**getattr(current, section).model_dump(), **patch}
    sections: _Sections | None = None
    try:
        sections = _Sections.model_validate(merged)
    except ValidationError as err:
        problems += format_validation_error(err)
    changes = bool(patches["publish"] or patches["model"]) or req.paused is not None
    if req.command == "reset" and changes:
        problems.append("command: reset cannot be combined with settings")
    if not changes and req.command is None and not problems:
        problems.append("(top level): nothing to do: give publish, model, paused or command")
    if problems or sections is None:
        raise ControlError(problems)
    applied: dict[str, Any] = {}
    for section in SECTION_MODELS:
        new = getattr(sections, section)
        if patches[section]:
            applied[section] = {k: getattr(new, k) for k in patches[section]}
    paused = current.paused if req.paused is None else req.paused
    if req.paused is not None:
        applied["paused"] = req.paused
    return Settings(sections.publish, sections.model, paused), applied, req.command, req.persist


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to ``path`` so that a crash or power cut leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself, durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class Control:
    """``apply(settings)`` and the ``commands`` run on the frame loop (inside :meth:`poll`);
    a command missing from ``commands`` is refused as not available."""

    def __init__(
        self,
        cfg: Config,
        publisher: Publisher,
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
        self.saved: dict[str, Any] = {}  # what overrides.json holds
        self._apply = apply
        self._commands = commands
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=QUEUE_MAX)
        self._warn = RateLimitedLog(log)

    # -- start -------------------------------------------------------------------------------

    def load(self) -> Settings:
        """The settings to start with: the config's, with ``overrides.json`` applied."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self.current
        except (OSError, ValueError) as err:
            log.warning("ignoring %s: cannot read it (%s)", self.path, err)
            return self.current
        try:
            if not isinstance(data, dict):
                raise ControlError(["(top level): must be a JSON object"])
            settings, applied, _, _ = validate(self.base, data)
        except ControlError as err:
            log.warning("ignoring %s: %s", self.path, "; ".join(err.problems))
            return self.current
        self.current, self.saved = settings, applied
        log.info("settings from %s: %s", self.path, json.dumps(applied, separators=(",", ":")))
        return settings

    def subscribe(self) -> None:
        self.publisher.subscribe(self.topics.control)

    # -- paho's thread -----------------------------------------------------------------------

    def wants(self, topic: str) -> bool:
        return topic == self.topics.control

    def on_message(self, topic: str, payload: bytes) -> None:
        if not payload:  # a retained message being cleared
            return
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self._warn.warning("control: too many messages waiting; dropping one")

    # -- the frame loop ----------------------------------------------------------------------

    def poll(self) -> None:
        while True:
            try:
                payload = self._queue.get_nowait()
            except queue.Empty:
                return
            self.handle(payload)

    def handle(self, payload: bytes) -> dict[str, Any]:
        """Validate, apply, answer on ``set/result``; returns the answer."""
        answer: dict[str, Any] = {"schema": events.SCHEMA, "device": self.device}
        data: Any = None
        try:
            if len(payload) > MAX_PAYLOAD:
                raise ControlError([f"(top level): larger than {MAX_PAYLOAD} bytes"])
            try:
                data = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as err:
                raise ControlError([f"(top level): not valid JSON ({err})"]) from None
            if not isinstance(data, dict):
                raise ControlError(["(top level): must be a JSON object"])
            if isinstance(data.get("id"), str | int) and not isinstance(data["id"], bool):
                answer["id"] = data["id"]
            answer.update(self._act(data))
        except ControlError as err:
            answer.update(ok=False, errors=err.problems)
            log.warning("control message refused: %s", "; ".join(err.problems))
        answer["ts"] = events.iso_utc(time.time())
        self.publisher.publish(self.topics.control_result, events.dumps(answer), qos=1)
        return answer

    def _act(self, data: dict[str, Any]) -> dict[str, Any]:
        settings, applied, command, persist = validate(self.current, data)
        if command == "reset":
            return self._reset()
        if command is not None and command not in self._commands:
            raise ControlError([f"command: {command} is not available on this device"])
        persisted = False
        if persist and applied:
            saved = _merge(self.saved, applied)
            try:
                write_atomically(self.path, saved)
            except OSError as err:
                raise ControlError([f"persist: cannot write {self.path}: {err}"]) from None
            self.saved, persisted = saved, True
        if applied:
            self._set(settings)
            log.info(
                "control: %s%s",
                json.dumps(applied, separators=(",", ":")),
                f" (saved in {self.path})" if persisted else "",
            )
        if command is not None:
            self._commands[command]()
            applied["command"] = command
        return {"ok": True, "applied": applied, "persisted": persisted}

    def _reset(self) -> dict[str, Any]:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as err:
            raise ControlError([f"command: cannot remove {self.path}: {err}"]) from None
        self.saved = {}
        self._set(self.base)
        log.info("control: back to the config file's settings (%s removed)", self.path)
        return {"ok": True, "applied": {"command": "reset"}, "persisted": False}

    def _set(self, settings: Settings) -> None:
        self.current = settings
        self._apply(settings)
