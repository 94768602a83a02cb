"""Create an Ed25519 signing key pair for edged bundles (host only).

    edgectl keygen [--out DIR/NAME]        (default: keys/release)

writes ``DIR/NAME.pem`` (the private key, PKCS#8 PEM, mode 0600: keep it off devices) and
``DIR/NAME.pub.pem`` (the public key: install it on devices as a trusted key), creating DIR
(mode 0700) when missing, and prints the key id (the first 16 hex digits of the SHA-256 of
the raw public key, as ``signature.json`` names it). It never overwrites: if either file
exists it exits 2 and touches nothing. When the private key lands inside a git work tree it
warns (and says whether git ignores it: the repository's ``.gitignore`` has ``keys/``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from edged.model.bundle import generate_keypair

DEFAULT_OUT = Path("keys") / "release"
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


def work_tree(path: Path) -> Path | None:
    """The git work tree ``path`` lies in, if any (a ``.git`` folder or file above it)."""
    for parent in Path(path).resolve().parents:
        if (parent / ".git").exists():
            return parent
    return None


def git_ignores(path: Path, tree: Path) -> bool | None:
    """Whether git ignores ``path`` (None: git cannot say)."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(
            [git, "-C", str(tree), "check-ignore", "-q", str(Path(path).resolve())],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: True, 1: False}.get(done.returncode)


def warn_if_in_work_tree(private: Path) -> None:
    tree = work_tree(private)
    if tree is None:
        return
    ignored = git_ignores(private, tree)
    how = {
        True: "git ignores it",
        False: "git does NOT ignore it: add it to .gitignore",
        None: "check that git ignores it",
    }[ignored]
    print(
        f"keygen: warning: the private key {private} is inside the git work tree {tree} "
        f"({how}); never commit it, and keep it off devices",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edgectl keygen",
        description="Create an Ed25519 key pair for signing edged bundles.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="DIR/NAME: writes DIR/NAME.pem (private, 0600) and DIR/NAME.pub.pem "
        f"(default: {DEFAULT_OUT})",
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
    warn_if_in_work_tree(private)
    print(kid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
