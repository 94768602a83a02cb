"""``python -m tools push`` argument and input errors (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.broker import free_port
from tests.update.bundles import make_bundle
from tools.push import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["b.edgb"], "give --device ID (repeatable) or --group G"),
        (["b.edgb", "--device", "a", "--group", "g"], "give --device ID"),
        (["b.edgb", "--group", "g"], "--group needs --expect N or --devices"),
        (["b.edgb", "--device", "a", "--expect", "2"], "--expect and --devices go with --group"),
        (["--device", "a"], "give a BUNDLE"),
        (["--rollback", "1", "--device", "a"], "--rollback needs --device and --key"),
        (["b.edgb", "--rollback", "1", "--device", "a", "--key", "k"], "--rollback takes no"),
        (["b.edgb", "--device", "a"], "give --key KEY.pem (signs the offer) or --unsigned"),
        (["b.edgb", "--device", "a", "--key", "k", "--unsigned"], "give --key KEY.pem"),
        (["--rollback", "v1", "--device", "a", "--key", "k"], "give VERSION, NAME@VERSION"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("push: error: ") and message in err and "\n" not in err


def test_unreadable_or_invalid_bundles_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "missing.edgb"), "--device", "a", "--unsigned"]) == 2
    assert "cannot read" in capsys.readouterr().err
    junk = tmp_path / "junk.edgb"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    assert main([str(junk), "--device", "a", "--unsigned"]) == 2
    assert "not a valid bundle" in capsys.readouterr().err


def test_an_unreachable_broker_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "b.edgb"
    bundle.write_bytes(make_bundle(2, None))
    rc = main(
        [
            "push",
            str(bundle),
            "--device",
            "a",
            "--unsigned",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "cannot connect to 127.0.0.1" in err
    assert "unsigned" in err  # a note: devices refuse it unless allow_unsigned
