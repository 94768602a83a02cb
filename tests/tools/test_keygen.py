"""tools.keygen: a key pair, mode 0600, the key id printed, never an overwrite."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edged.model.bundle import key_id, load_private_key, load_public_key
from tools.keygen import key_paths, main


def test_keygen_writes_a_pair_and_prints_the_key_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path / "keys" / "edged")]) == 0
    out = capsys.readouterr().out.strip()
    private, public = tmp_path / "keys" / "edged.pem", tmp_path / "keys" / "edged.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert out == key_id(load_public_key(public)) == key_id(load_private_key(private).public_key())
    assert len(out) == 16


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "k")]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main(["--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keygen: ") and "not overwriting" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # Only the public half there is refused too (no private key written beside it).
    (tmp_path / "only.pub.pem").write_text("x")
    assert main(["--out", str(tmp_path / "only")]) == 2
    assert not (tmp_path / "only.pem").exists()


def test_key_paths() -> None:
    assert key_paths(Path("d/n")) == (Path("d/n.pem"), Path("d/n.pub.pem"))
    assert key_paths(Path("d/n.pem")) == (Path("d/n.pem"), Path("d/n.pub.pem"))
    assert key_paths(Path("d/n.pub.pem")) == (Path("d/n.pem"), Path("d/n.pub.pem"))
