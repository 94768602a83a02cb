"""``edgectl push --rollback MODEL``: a signed rollback command to each device, and its answers.

``MODEL`` names any model the device keeps: ``VERSION`` (0 is a plain ``.tflite`` it booted
from), ``NAME@VERSION``, or a prefix of its sha256 (``sha256:PREFIX`` when the prefix is all
decimal digits). See :mod:`tools.push` for the options.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edged.protocol.base import read
from edged.protocol.payloads import UpdateResult
from edged.update.command import sign_command
from tools.answers import NO_ANSWER, Row
from tools.mqttclient import USAGE_ERROR, Broker, PushError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_HEX = re.compile(r"^[0-9a-f]{6,64}$")


def rollback_target(spec: str) -> dict[str, Any]:
    """``7`` (version), ``name@7``, ``sha256:1a2b3c`` or a bare hex prefix (6+ digits, not all
    decimal) -> the command's fields naming the model; :class:`PushError` otherwise."""
    spec = spec.strip()
    if "@" in spec:
        name, _, version = spec.rpartition("@")
        if name and version.isdigit():
            return {"name": name, "version": int(version)}
    elif spec.startswith("sha256:") and _HEX.match(spec[7:].lower()):
        return {"sha256": spec[7:].lower()}
    elif spec.isdigit():
        return {"version": int(spec)}
    elif _HEX.match(spec.lower()):
        return {"sha256": spec.lower()}
    raise PushError(
        f"--rollback {spec!r}: give VERSION, NAME@VERSION, or a sha256 prefix (6+ hex digits, "
        "sha256:PREFIX when it is all decimal digits)",
        USAGE_ERROR,
    )


def rollback(args: argparse.Namespace, load_key: Callable[[], Ed25519PrivateKey]) -> dict[str, Row]:
    """Send a rollback command naming ``args.rollback`` to each ``args.device``, signed with
    the key ``load_key`` reads (once the target is known good); returns {device: (status,
    version, reason)}."""
    target = rollback_target(args.rollback)
    key = load_key()
    p = args.prefix
    broker = Broker(args)
    try:
        broker.subscribe([f"{p}/{d}/update/result" for d in args.device])
        issued: dict[str, float] = {}
        items = []
        for d in args.device:
            issued[d] = round(time.time(), 6)
            cmd = sign_command(key, command="rollback", device=d, issued=issued[d], **target)
            items.append((f"{p}/{d}/update/command", json.dumps(cmd).encode(), False))
        t0 = time.monotonic()
        broker.publish_all(items, args.timeout)
        deadline, devices = t0 + args.timeout, list(args.device)

        def collect() -> dict[str, Row]:
            got: dict[str, Row] = {}
            for m in broker.messages():
                r = read(UpdateResult, m.payload)
                if r is not None and r.command is not None and r.issued == issued.get(r.device):
                    v = r.version
                    got.setdefault(r.device, (r.status, "-" if v is None else str(v), r.reason))
            return got

        broker.wait(lambda: len(collect()) >= len(devices), max(0.0, deadline - time.monotonic()))
        got = collect()
        for d in devices:
            got.setdefault(d, (NO_ANSWER, "-", ""))
        return got
    finally:
        broker.close()
