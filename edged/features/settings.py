"""What a control message says, and what it may change: the parser (bounded JSON, for messages
and ``overrides.json``) and the validation of settings against the config file's own models.

Bounds (untrusted input): a payload is at most ``MAX_PAYLOAD`` bytes of UTF-8 JSON, nested at
most ``MAX_DEPTH`` deep, with no duplicate keys and no NaN/Infinity. Only ``RUNTIME_KEYS`` can
change while running; errors read as the config file's (``publish.min_score: ...``).
:mod:`edged.features.control` takes the messages and applies the result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from edged.config import ModelConfig, PublishConfig, format_validation_error
from edged.errors import ControlError
from edged.infra import events
from edged.infra.guard import json_depth, one_line
from edged.protocol.inbound import ControlCommand, ControlRequest

MAX_PAYLOAD = 16 * 1024
MAX_DEPTH = 8  # nesting of objects/arrays in a message (a valid one needs 2)
# What can change while running; the rest of these sections is read once at start.
RUNTIME_KEYS: dict[str, tuple[str, ...]] = {
    "publish": ("mode", "min_score", "agree_n", "agree_m", "min_interval_s", "heartbeat_s", "qos"),
    "model": ("top_k",),
}
SECTION_MODELS: dict[str, type[BaseModel]] = {"publish": PublishConfig, "model": ModelConfig}
Command = ControlCommand


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {one_line(key, 40)!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {one_line(text, 40)}")
    return value


def parse(payload: bytes, limit: int = MAX_PAYLOAD) -> dict[str, Any]:
    """A control message (or ``overrides.json``) as a dict, or ``ControlError``: UTF-8 JSON,
    one object, at most ``limit`` bytes and ``MAX_DEPTH`` deep, no duplicate keys, finite
    numbers only."""
    if len(payload) > limit:
        raise ControlError([f"(top level): larger than {limit} bytes"])
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ControlError([f"(top level): not UTF-8 (byte {err.start})"]) from None
    if json_depth(payload) > MAX_DEPTH:
        raise ControlError([f"(top level): nested deeper than {MAX_DEPTH} levels"])
    try:
        data = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_constant,
            parse_float=_finite,
        )
    except (ValueError, RecursionError) as err:
        raise ControlError([f"(top level): not valid JSON ({one_line(err, 120)})"]) from None
    if not isinstance(data, dict):
        raise ControlError(["(top level): must be a JSON object"])
    return data


def echo_id(data: Mapping[str, Any]) -> str | int | None:
    """The message's ``id`` when it can be echoed: a string of at most 128 characters or an
    integer of at most 64 bits."""
    value = data.get("id")
    if isinstance(value, str) and len(value) <= 128:
        return events.text(value)
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None


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
        req = ControlRequest.model_validate(dict(data))
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
