"""The model bundle: one zip file holding the model, its labels, a manifest and a signature.

Members::

    manifest.json    name, version, created, files{name: {sha256, size}}, input spec, labels,
                     report headline, golden test vector
    model.tflite     the model
    labels.txt       one label per line, in output order
    golden.bin       (optional) raw input tensor of the golden vector
    signature.json   {"key_id": ..., "signature": base64(Ed25519(manifest.json bytes))}

The manifest carries the digest of every other member, so signing the manifest's exact bytes
signs the whole bundle.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged.errors import BundleError

if TYPE_CHECKING:  # cryptography costs ~7 MB of RSS: imported only where keys are handled
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

BUNDLE_SUFFIX = ".edgb"
FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
MODEL = "model.tflite"
LABELS = "labels.txt"
GOLDEN = "golden.bin"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class Bundle:
    manifest: dict[str, Any]
    members: dict[str, bytes]
    key_id: str | None  # the key that signed it; None if unsigned

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def model_bytes(self) -> bytes:
        return self.members[MODEL]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels") or [])

    @property
    def sha256(self) -> str:
        return str(self.manifest["files"][MODEL]["sha256"])


def is_bundle(data_or_path: bytes | Path) -> bool:
    if isinstance(data_or_path, Path):
        if data_or_path.suffix == BUNDLE_SUFFIX:
            return True
        with data_or_path.open("rb") as fh:
            head = fh.read(4)
    else:
        head = data_or_path[:4]
    return head == b"PK\x03\x04"


def key_id(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise BundleError(f"{path}: not an Ed25519 private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: not an Ed25519 public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: not an Ed25519 public key")
    return key


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new PEM key pair (private key mode 0600); return its key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.touch(mode=0o600, exist_ok=False)
    private_path.write_bytes(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(key.public_key())


def _digest(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def build_bundle(
    *,
    name: str,
    version: int,
    model: bytes,
    labels: list[str],
    input_spec: dict[str, Any],
    extra_members: dict[str, bytes] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    created: datetime | None = None,
) -> bytes:
    """Assemble (and sign, when a key is given) a bundle; returns its bytes."""
    if version < 1:
        raise BundleError("version must be a positive integer")
    members: dict[str, bytes] = {
        MODEL: model,
        LABELS: ("\n".join(labels) + "\n").encode("utf-8"),
        **(extra_members or {}),
    }
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": (created or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {n: _digest(b) for n, b in sorted(members.items())},
        "input": input_spec,
        "labels": labels,
        **(extra_manifest or {}),
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, manifest_bytes)
        for n, b in members.items():
            zf.writestr(n, b)
        if signing_key is not None:
            sig = {
                "key_id": key_id(signing_key.public_key()),
                "signature": base64.b64encode(signing_key.sign(manifest_bytes)).decode(),
            }
            zf.writestr(SIGNATURE, json.dumps(sig))
    return buf.getvalue()


def read_bundle(
    data: bytes,
    *,
    trusted_keys: list[Ed25519PublicKey] | None = None,
    allow_unsigned: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Bundle:
    """Parse and verify a bundle: size, signature (when keys are given), every member's digest.

    With ``trusted_keys`` the bundle must be signed by one of them unless ``allow_unsigned``;
    a signature by an unknown key is always refused when keys are given.
    """
    if len(data) > max_bytes:
        raise BundleError(f"bundle is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = {i.filename: i for i in zf.infolist()}
        total = sum(i.file_size for i in infos.values())
        if total > max_bytes:
            raise BundleError(f"bundle unpacks to {total} bytes, over the {max_bytes}-byte limit")
        raw = {n: zf.read(n) for n in infos}
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError) as err:
        raise BundleError(f"not a readable bundle: {err}") from None
    except zipfile.LargeZipFile:
        raise BundleError("bundle too large") from None
    if MANIFEST not in raw:
        raise BundleError("bundle has no manifest.json")
    manifest_bytes = raw.pop(MANIFEST)
    try:
        manifest = json.loads(manifest_bytes)
        files = manifest["files"]
        int(manifest["version"])
        str(manifest["name"])
    except (ValueError, KeyError, TypeError) as err:
        raise BundleError(f"manifest.json is invalid: {err}") from None

    signer = _verify_signature(
        raw.pop(SIGNATURE, None), manifest_bytes, trusted_keys, allow_unsigned
    )

    if MODEL not in files:
        raise BundleError("manifest lists no model.tflite")
    for name, meta in files.items():
        if name not in raw:
            raise BundleError(f"member {name} is missing")
        if _digest(raw[name]) != {"sha256": meta.get("sha256"), "size": meta.get("size")}:
            raise BundleError(f"member {name} does not match its sha256 in the manifest")
    extra = sorted(set(raw) - set(files))
    if extra:
        raise BundleError(f"members not in the manifest: {', '.join(extra)}")
    return Bundle(manifest=manifest, members=raw, key_id=signer)


def _verify_signature(
    sig_bytes: bytes | None,
    manifest_bytes: bytes,
    trusted_keys: list[Ed25519PublicKey] | None,
    allow_unsigned: bool,
) -> str | None:
    if sig_bytes is None:
        if trusted_keys and not allow_unsigned:
            raise BundleError("bundle is not signed")
        return None
    try:
        sig = json.loads(sig_bytes)
        kid, signature = str(sig["key_id"]), base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise BundleError("signature.json is invalid") from None
    if not trusted_keys:
        return None if allow_unsigned else _fail("no trusted keys configured")
    from cryptography.exceptions import InvalidSignature

    for key in trusted_keys:
        if key_id(key) == kid:
            try:
                key.verify(signature, manifest_bytes)
            except InvalidSignature:
                raise BundleError(f"bad signature (key {kid})") from None
            return kid
    raise BundleError(f"signed by unknown key {kid}")


def _fail(msg: str) -> str:
    raise BundleError(msg)
