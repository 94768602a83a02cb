"""tools.keygen: a key pair, mode 0600, the key id printed, never an overwrite."""

from __future__ import annotations

import shutil
import stat
import subprocess
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


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_keygen_warns_inside_a_git_work_tree_and_says_whether_git_ignores_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    monkeypatch.chdir(repo)
    assert main(["--out", "secrets/dev"]) == 0  # not ignored
    err = capsys.readouterr().err
    assert "keygen: warning: the private key secrets/dev.pem is inside the git work tree" in err
    assert "git does NOT ignore it: add it to .gitignore" in err
    (repo / ".gitignore").write_text("keys/\n")
    assert main([]) == 0  # the default, keys/release, which .gitignore covers
    err = capsys.readouterr().err
    assert (repo / "keys" / "release.pem").is_file() and (
        repo / "keys" / "release.pub.pem"
    ).is_file()
    assert "keys/release.pem is inside the git work tree" in err and "(git ignores it)" in err
    outside = tmp_path / "elsewhere"
    assert main(["--out", str(outside / "k")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_repository_ignores_the_default_key_folder() -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["keys/release.pem", "keys/release.pub.pem", "tools/keys/x.pem"]
    done = subprocess.run(
        ["git", "check-ignore", *paths], cwd=root, capture_output=True, text=True, check=False
    )
    assert done.stdout.split() == paths
