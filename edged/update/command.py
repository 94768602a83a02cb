"""Signed commands to a device (``<prefix>/<device_id>/update/command``, not retained).

::

    {"command": "rollback", "device": "cam-1", "version": 1, "issued": 1732262400.123,
     "key_id": "3f1a...", "signature": "<base64 Ed25519 over the canonical JSON of the rest>"}

The model to go back to is named by ``version`` (0 is a plain ``.tflite`` the device booted
from), ``sha256`` (a prefix of 6+ hex digits of the model's or the bundle's SHA-256) and/or
``name``; together they must match exactly one model the device keeps.

The canonical JSON is the object without ``signature``, keys sorted, no spaces, UTF-8. A command
is accepted only for this device, signed by a trusted key, and ``issued`` later than the last
command this device accepted (persisted), so a recorded command cannot be replayed. Commands are
always signed: ``allow_unsigned`` applies to bundles only.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edged.errors import BundleError
from edged.model.bundle import key_id
from edged.protocol.inbound import MAX_COMMAND_BYTES, UpdateCommand
from edged.update.wire import WireError, canonical, clip, loads_object

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

COMMANDS = ("rollback",)


class CommandError(ValueError):
    """A command refused; the message is the reason reported."""


@dataclass(frozen=True, slots=True)
class Command:
    command: str
    device: str
    version: int | None  # the model to go back to: by version (0 = the boot .tflite) ...
    issued: float
    key_id: str
    sha256: str | None = None  # ... and/or by a prefix of its sha256 (model or bundle) ...
    name: str | None = None  # ... and/or by name

    def target(self) -> str:
        """How the command names the model, for messages."""
        parts = []
        if self.name is not None:
            parts.append(self.name)
        if self.version is not None:
            parts.append(f"v{self.version}")
        if self.sha256 is not None:
            parts.append(f"sha256 {self.sha256}")
        return " ".join(parts)


def sign_command(
    key: Ed25519PrivateKey,
    *,
    command: str,
    device: str,
    version: int | None = None,
    issued: float,
    sha256: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The full command object, signed (host side)."""
    fields: dict[str, Any] = {
        "command": command,
        "device": device,
        "issued": issued,
        "key_id": key_id(key.public_key()),
    }
    for k, v in (("version", version), ("sha256", sha256), ("name", name)):
        if v is not None:
            fields[k] = v
    signature = base64.b64encode(key.sign(canonical(fields))).decode("ascii")
    return {**fields, "signature": signature}


def parse_command(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """(fields without the signature, signature bytes); :class:`CommandError` if malformed.
    Never raises anything else."""
    try:
        fields = loads_object(payload, "command", MAX_COMMAND_BYTES)
    except WireError as err:
        raise CommandError(str(err)) from None
    if not isinstance(fields.get("signature"), str):
        raise CommandError(UpdateCommand.MESSAGES["signature"])
    try:
        msg = UpdateCommand.model_validate(fields)
    except ValidationError as err:
        raise CommandError(UpdateCommand.refusal(err)) from None
    try:
        signature = base64.b64decode(msg.signature, validate=True)
    except (binascii.Error, ValueError):
        raise CommandError(UpdateCommand.MESSAGES["signature"]) from None
    del fields["signature"]
    return fields, signature


def verify_command(
    payload: bytes,
    *,
    device: str,
    trusted_keys: list[Ed25519PublicKey],
    last_issued: float | None,
) -> Command:
    """Check a command end to end; raises :class:`CommandError` naming the reason."""
    from cryptography.exceptions import InvalidSignature

    fields, signature = parse_command(payload)
    cmd = Command(
        command=str(fields["command"]),
        device=str(fields["device"]),
        version=fields.get("version"),
        issued=float(fields["issued"]),
        key_id=str(fields["key_id"]),
        sha256=fields.get("sha256"),
        name=fields.get("name"),
    )
    if cmd.device != device:
        raise CommandError(f"command is for device {clip(repr(cmd.device), 80)}, not {device!r}")
    if not trusted_keys:
        raise CommandError("no trusted keys configured (update.trusted_keys)")
    key = next((k for k in trusted_keys if key_id(k) == cmd.key_id), None)
    if key is None:
        raise CommandError(f"command signed by unknown key {clip(cmd.key_id, 64)}")
    try:
        key.verify(signature, canonical(fields))
    except InvalidSignature:
        raise CommandError(f"bad command signature (key {cmd.key_id})") from None
    if last_issued is not None and cmd.issued <= last_issued:
        raise CommandError(
            f"replayed or out-of-order command: issued {cmd.issued} is not after the last "
            f"accepted command ({last_issued})"
        )
    return cmd


def load_trusted_keys(paths: list[Any]) -> list[Ed25519PublicKey]:
    """PEM public keys; a :class:`BundleError` names the first unreadable one."""
    from edged.model.bundle import load_public_key

    keys = []
    for p in paths:
        try:
            keys.append(load_public_key(p))
        except BundleError as err:
            raise BundleError(f"update.trusted_keys: {err}") from None
    return keys
