"""Signed commands to a device (``<prefix>/<device_id>/update/command``, not retained).

::

    {"command": "rollback", "device": "cam-1", "version": 1, "issued": 1732262400.123,
     "key_id": "3f1a...", "signature": "<base64 Ed25519 over the canonical JSON of the rest>"}

The canonical JSON is the object without ``signature``, keys sorted, no spaces, UTF-8. A command
is accepted only for this device, signed by a trusted key, and ``issued`` later than the last
command this device accepted (persisted), so a recorded command cannot be replayed. Commands are
always signed: ``allow_unsigned`` applies to bundles only.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edged.errors import BundleError
from edged.model.bundle import key_id

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
    version: int
    issued: float
    key_id: str


def canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def sign_command(
    key: Ed25519PrivateKey, *, command: str, device: str, version: int, issued: float
) -> dict[str, Any]:
    """The full command object, signed (host side)."""
    fields: dict[str, Any] = {
        "command": command,
        "device": device,
        "version": version,
        "issued": issued,
        "key_id": key_id(key.public_key()),
    }
    signature = base64.b64encode(key.sign(canonical(fields))).decode("ascii")
    return {**fields, "signature": signature}


def parse_command(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """(fields without the signature, signature bytes); :class:`CommandError` if malformed."""
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise CommandError("command is not valid JSON") from None
    if not isinstance(raw, dict):
        raise CommandError("command is not a JSON object")
    fields = dict(raw)
    try:
        signature = base64.b64decode(str(fields.pop("signature")), validate=True)
    except (KeyError, binascii.Error, ValueError):
        raise CommandError("command is not signed (no valid base64 'signature')") from None
    if fields.get("command") not in COMMANDS:
        raise CommandError(f"unknown command {fields.get('command')!r}")
    version, issued = fields.get("version"), fields.get("issued")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CommandError("command version must be a positive integer")
    if not isinstance(issued, int | float) or isinstance(issued, bool) or not math.isfinite(issued):
        raise CommandError("command 'issued' must be a number (unix time)")
    if not isinstance(fields.get("device"), str) or not isinstance(fields.get("key_id"), str):
        raise CommandError("command needs 'device' and 'key_id' strings")
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
        version=int(fields["version"]),
        issued=float(fields["issued"]),
        key_id=str(fields["key_id"]),
    )
    if cmd.device != device:
        raise CommandError(f"command is for device {cmd.device!r}, not {device!r}")
    if not trusted_keys:
        raise CommandError("no trusted keys configured (update.trusted_keys)")
    key = next((k for k in trusted_keys if key_id(k) == cmd.key_id), None)
    if key is None:
        raise CommandError(f"command signed by unknown key {cmd.key_id}")
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
