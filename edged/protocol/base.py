"""What every payload shares: the header (``schema``, ``device``, ``ts``), the encoding of
outgoing payloads and the one-line refusal of incoming ones.

Outgoing payloads are built with ``Model.model_construct(...)`` (no validation: what edged
publishes never fails to encode, whatever a label, a file name or a score holds) and encoded by
:meth:`Payload.to_bytes`, which is :func:`edged.infra.events.dumps`: compact UTF-8 JSON, keys in
the order the model declares them, lone surrogates as U+FFFD, NaN and infinities as ``null``.
Fields named in ``OMIT_IF_NONE`` are left out of the JSON when they are ``None`` (the key is
absent, not ``null``); every other field is always present.

Incoming payloads are parsed as bounded, strict JSON first (``edged.update.wire`` and
``edged.features.control``: size, nesting, duplicate keys, NaN), then validated by their model;
:func:`refusal` turns a :class:`pydantic.ValidationError` into the one line that is reported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edged.infra import events

REFUSED = "refused"  # the error type of a PydanticCustomError whose message is the whole line
SCHEMA: Literal[1] = 1  # the payload schema version every JSON payload carries


def now() -> str:
    """The ``ts`` of a payload built now."""
    return events.iso_utc(time.time())


#: The time a payload was built (a prediction: when its frame was captured), UTC, milliseconds;
#: declared ``ts: Timestamp = Field(default_factory=now)`` where each payload has it.
Timestamp = Annotated[
    str,
    Field(
        description="UTC time, ISO 8601 with milliseconds and a Z",
        examples=["2026-11-22T10:15:03.123Z"],
        pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$",
    ),
]


def _required(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """JSON Schema: every key is always present, except those that may be left out."""
    omit: frozenset[str] = getattr(cls, "OMIT_IF_NONE", frozenset())
    required = [f.alias or n for n, f in cls.model_fields.items() if n not in omit]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)


class Payload(BaseModel):
    """A JSON object on the wire (also the nested objects of one)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra=_required,
    )

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset()
    #: fields holding an object that has keys to leave out
    HOLDS_OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def omitted(self) -> list[str]:
        """The keys left out of this object's JSON."""
        return [k for k in self.OMIT_IF_NONE if getattr(self, k, None) is None]

    def _exclude(self) -> dict[str, Any] | None:
        """What :meth:`wire` leaves out, here and in the objects held directly."""
        out: dict[str, Any] = {k: True for k in self.omitted()}
        for name in self.HOLDS_OPTIONAL:
            value = getattr(self, name, None)
            inner = value._exclude() if isinstance(value, Payload) else None
            if inner:
                out[name] = inner
        return out or None

    def wire(self) -> dict[str, Any]:
        """The JSON object, as a dict in wire order."""
        data: dict[str, Any] = self.model_dump(
            by_alias=True, warnings=False, exclude=self._exclude()
        )
        return data

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON; never raises (:func:`edged.infra.events.dumps`)."""
        return events.dumps(self.wire())


class Header(Payload):
    """``schema`` and ``device`` open every JSON payload a device publishes; each payload
    places its ``ts`` (:data:`Timestamp`) where it always has."""

    schema_version: Literal[1] = Field(
        SCHEMA, alias="schema", description="Payload schema version (changes only incompatibly)"
    )
    device: str = Field(description="The publishing device's device_id")


P = TypeVar("P", bound=Payload)


class Inbound(BaseModel):
    """A JSON object a device receives: validated, unknown keys per model."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    #: field name -> the line reported when that field is refused (else pydantic's message)
    MESSAGES: ClassVar[Mapping[str, str]] = {}
    WHAT: ClassVar[str] = "message"

    @classmethod
    def refusal(cls, err: ValidationError) -> str:
        return refusal(err, cls.MESSAGES, cls.WHAT)


def read(model: type[P], payload: bytes) -> P | None:
    """A device's payload read on the host side (tools/), or None when it is not one: keys the
    model does not know are dropped first, so a newer device's additions do not hide it."""
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    known = {f.alias or n for n, f in model.model_fields.items()}
    try:
        return model.model_validate({k: v for k, v in raw.items() if k in known})
    except ValidationError:
        return None


def refusal(err: ValidationError, messages: Mapping[str, str], what: str) -> str:
    """One line for the first problem of ``err``: the field's own message, or pydantic's."""
    errors = err.errors(include_url=False, include_input=False)
    if not errors:
        return f"{what} is not valid"
    first = errors[0]
    if first.get("type") == REFUSED:  # raised by the model itself, already one line
        return events.text(str(first.get("msg", "")))
    loc = first.get("loc", ())
    field = str(loc[0]) if loc else ""
    if field in messages:
        return messages[field]
    where = ".".join(str(p) for p in loc) or "(top level)"
    return events.text(" ".join(f"{what} {where}: {first.get('msg', 'not valid')}".split()))
