"""Test bundles made from the demo model (models/digits.edgb) and keys made in the test."""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.model.bundle import build_bundle, generate_keypair, load_private_key, read_bundle
from tests.daemon import DEMO_MODEL

DEMO = read_bundle(DEMO_MODEL.read_bytes())


@dataclass(frozen=True)
class Keys:
    private: Ed25519PrivateKey
    private_path: Path
    public_path: Path
    key_id: str


def make_keys(directory: Path, name: str = "release") -> Keys:
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / f"{name}.pem", directory / f"{name}.pub"
    kid = generate_keypair(priv, pub)
    return Keys(load_private_key(priv), priv, pub, kid)


def make_bundle(
    version: int,
    key: Keys | None,
    *,
    model: bytes | None = None,
    labels: list[str] | None = None,
    input_patch: dict[str, Any] | None = None,
    golden: bool = True,
    pad: int = 0,
) -> bytes:
    """The demo model as bundle ``version``; ``pad`` adds that many incompressible bytes."""
    members: dict[str, bytes] = {}
    manifest: dict[str, Any] = {}
    if golden:
        members["golden.bin"] = DEMO.members["golden.bin"]
        manifest["golden"] = DEMO.manifest["golden"]
    if pad:
        members["padding.bin"] = os.urandom(pad)
    return build_bundle(
        name="digits",
        version=version,
        model=DEMO.model_bytes if model is None else model,
        labels=DEMO.labels if labels is None else labels,
        input_spec={**DEMO.manifest["input"], **(input_patch or {})},
        extra_members=members,
        extra_manifest=manifest,
        signing_key=key.private if key is not None else None,
    )


def replace_member(data: bytes, name: str, content: bytes) -> bytes:
    """The same zip with one member's bytes replaced (manifest and signature untouched)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, content if info.filename == name else src.read(info))
    return out.getvalue()
