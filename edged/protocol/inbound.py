"""The JSON payloads a device receives (one model each), after the bounded, strict JSON parse
of their handler (``edged.update.wire.loads_object``, ``edged.features.settings.parse``).

Each model checks the types and ranges; :meth:`~edged.protocol.base.Inbound.refusal` gives
the one line reported for the first problem. Signed payloads (offers, commands) keep their
raw JSON object as well: the signature covers its canonical encoding, unknown keys included.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edged.protocol.base import REFUSED, Inbound

# -- <base>/set: settings and commands ----------------------------------------------------------

ControlCommand = Literal["stats", "ha_remove", "ha_announce", "reset"]


class ControlRequest(BaseModel):
    """A control message (``<base>/set``): every key optional; the sections are checked by the
    config file's own models (``edged.features.settings.validate``)."""

    model_config = ConfigDict(extra="forbid")

    publish: dict[str, Any] | None = Field(
        None,
        description="Runtime keys of [publish]: mode, min_score, agree_n, agree_m, "
        "min_interval_s, heartbeat_s, qos",
    )
    model: dict[str, Any] | None = Field(None, description="Runtime keys of [model]: top_k")
    paused: StrictBool | None = None
    command: ControlCommand | None = None
    persist: StrictBool = Field(False, description="Save the settings in overrides.json")
    id: (
        Annotated[str, Field(max_length=128)]
        | Annotated[StrictInt, Field(ge=-(2**63), lt=2**63)]
        | None
    ) = Field(None, description="Echoed in the answer")


# -- <scope>/update/offer -----------------------------------------------------------------------

MAX_NAME = 128
MAX_SIZE = 1 << 40
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_CHUNKS = 100_000
SHA256_PATTERN = r"^[0-9a-f]{64}$"
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]


def _printable(name: str) -> str:
    if not name.isprintable():
        raise ValueError("not printable")
    return name


UnixTime = (
    Annotated[StrictInt, Field(ge=0, lt=10**12)] | Annotated[StrictFloat, Field(ge=0, lt=1e12)]
)


def _refuse(message: str) -> PydanticCustomError:
    return PydanticCustomError(REFUSED, message)  # the whole line (base.refusal)


class UpdateOffer(Inbound):
    """An offer of a bundle (``<scope>/update/offer``, retained): see ``edged.update.transfer``."""

    WHAT: ClassVar[str] = "offer"
    MESSAGES: ClassVar[dict[str, str]] = {
        "transfer_id": "offer has no valid transfer_id (1-64 of A-Z a-z 0-9 _ -)",
        "name": f"offer has no name (1-{MAX_NAME} printable characters)",
        "version": f"offer version must be an integer in 1..{2**53}",
        "size": f"offer size must be an integer in 1..{MAX_SIZE}",
        "chunk_size": f"offer chunk_size must be an integer in {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}",
        "sha256": "offer sha256 is not a hex SHA-256",
        "target": "offer target must be a string",
        "issued": "offer issued must be a unix time",
        "key_id": "offer key_id must be a string",
        "signature": "offer signature needs a key_id and a base64 signature",
    }

    transfer_id: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    name: Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME), AfterValidator(_printable)]
    version: StrictInt = Field(ge=1, le=2**53)
    size: StrictInt = Field(ge=1, le=MAX_SIZE, description="Bytes of the whole bundle")
    chunk_size: StrictInt = Field(ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)
    sha256: Sha256 = Field(description="SHA-256 of the whole bundle")
    chunks: list[Any] = Field(description="SHA-256 of each chunk, in order")
    target: Annotated[StrictStr, Field(max_length=200)] = Field(
        "", description='"<device_id>" or "group/<group>": the scope it was published for'
    )
    issued: UnixTime = Field(0.0, description="Unix time at the host; must grow per scope")
    key_id: StrictStr | None = Field(None, description="Of the Ed25519 key that signed it")
    signature: Annotated[StrictStr, Field(max_length=200)] | None = Field(
        None, description="Base64 Ed25519 signature of the canonical JSON of the rest"
    )

    @model_validator(mode="after")
    def _consistent(self) -> UpdateOffer:
        expected = math.ceil(self.size / self.chunk_size)
        if expected > MAX_CHUNKS:
            raise _refuse(f"offer has more than {MAX_CHUNKS} chunks")
        if len(self.chunks) != expected or not all(
            isinstance(c, str) and _SHA256.match(c) for c in self.chunks
        ):
            raise _refuse(f"offer must list {expected} chunk SHA-256 digests")
        if self.signature is not None and self.key_id is None:
            raise _refuse(self.MESSAGES["signature"])
        return self


# -- <base>/update/command ----------------------------------------------------------------------

MAX_COMMAND_BYTES = 4096


class UpdateCommand(Inbound):
    """A signed command (``<base>/update/command``): see ``edged.update.command``."""

    WHAT: ClassVar[str] = "command"
    MESSAGES: ClassVar[dict[str, str]] = {
        "signature": "command is not signed (no valid base64 'signature')",
        "version": "command version must be an integer >= 0",
        "sha256": "command sha256 must be 6-64 lowercase hex digits",
        "name": "command name must be a string of 1-128 characters",
        "issued": "command 'issued' must be a number (unix time)",
        "device": "command needs 'device' and 'key_id' strings",
        "key_id": "command needs 'device' and 'key_id' strings",
    }

    signature: Annotated[StrictStr, Field(max_length=200)] = Field(
        description="Base64 Ed25519 signature of the canonical JSON of the rest"
    )
    command: Any = Field(description='"rollback"', json_schema_extra={"enum": ["rollback"]})
    version: Annotated[StrictInt, Field(ge=0, le=2**53)] | None = Field(
        None, description="The model to go back to (0: the boot .tflite)"
    )
    sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{6,64}$")] | None = Field(
        None, description="A prefix of the model's or the bundle's SHA-256"
    )
    name: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    issued: UnixTime = Field(description="Unix time; must be after the last accepted command")
    device: Annotated[StrictStr, Field(max_length=200)]
    key_id: Annotated[StrictStr, Field(max_length=64)]

    @model_validator(mode="before")
    @classmethod
    def _known(cls, raw: Any) -> Any:
        """The command is checked first: an unknown one is named in the refusal."""
        if isinstance(raw, dict) and isinstance(raw.get("signature"), str):
            command = raw.get("command")
            if not isinstance(command, str) or command != "rollback":
                text = repr(command)
                text = text if len(text) <= 60 else text[:59] + "…"
                raise _refuse(f"unknown command {' '.join(text.split())}")
        return raw

    @model_validator(mode="after")
    def _names_a_model(self) -> UpdateCommand:
        if self.version is None and self.sha256 is None:
            raise _refuse("command names no model (give a version or a sha256)")
        return self
