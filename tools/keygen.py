"""Create an Ed25519 signing key pair for edged bundles (host only).

    python -m tools keygen --out DIR/NAME

writes ``DIR/NAME.pem`` (the private key, PKCS#8 PEM, mode 0600: keep it off devices) and
``DIR/NAME.pub.pem`` (the public key: install it on devices as a trusted key), creating DIR
(mode 0700) when missing, and prints the key id (the first 16 hex digits of the SHA-256 of
the raw public key, as ``signature.json`` names it). It never overwrites: if either file
exists it exits 2 and touches nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edged.model.bundle import generate_keypair

PRIVATE_SUFFIX = ".pem"
PUBLIC_SUFFIX = ".pub.pem"


def key_paths(out: Path) -> tuple[Path, Path]:
    """``DIR/NAME`` -> ``(DIR/NAME.pem, DIR/NAME.pub.pem)`` (a trailing ``.pem`` is dropped)."""
    name = out.name
    for suffix in (PUBLIC_SUFFIX, PRIVATE_SUFFIX):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if not name:
        raise ValueError(f"{out}: no key name")
    return out.with_name(name + PRIVATE_SUFFIX), out.with_name(name + PUBLIC_SUFFIX)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools keygen",
        description="Create an Ed25519 key pair for signing edged bundles.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="DIR/NAME: writes DIR/NAME.pem (private, 0600) and DIR/NAME.pub.pem",
    )
    args = parser.parse_args(argv)
    try:
        private, public = key_paths(args.out)
    except ValueError as err:
        print(f"keygen: {err}", file=sys.stderr)
        return 2
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing:
        print(f"keygen: {', '.join(existing)} already exist(s); not overwriting", file=sys.stderr)
        return 2
    try:
        private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        kid = generate_keypair(private, public)
    except OSError as err:
        print(f"keygen: {err.filename or private}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"wrote {private} (private, mode 0600) and {public} (public)", file=sys.stderr)
    print(kid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
