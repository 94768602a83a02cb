"""``python -m tools <command>``: dispatch, usage, unknown and absent commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tools.__main__ as dispatcher

REPO = Path(__file__).resolve().parents[2]


def test_usage_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatcher.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "bundle", "keygen", "push", "status"):
        assert f"  {command} " in out
    assert dispatcher.main([]) == 2


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatcher.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_absent_command_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(dispatcher.COMMANDS, "push", ("tools.no_such_push", "send"))
    assert dispatcher.main(["push", "x.edgb"]) == 2
    assert capsys.readouterr().err == "tools: push is not available in this checkout\n"


def test_a_broken_command_module_is_not_mistaken_for_an_absent_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "broken_cmd.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(dispatcher.COMMANDS, "push", ("broken_cmd", "send"))
    with pytest.raises(ModuleNotFoundError):
        dispatcher.main(["push"])


def test_dispatches_to_keygen(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools", "keygen", "--out", str(tmp_path / "k")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip()) == 16 and (tmp_path / "k.pem").is_file()
