"""scripts/arm-test.sh, the ARM job, where it must not run: it skips in one line, exit 0.

The job itself (debootstrap'd Debian roots under qemu-user, install.sh inside them, real models,
the demo daemon) runs from .ci/run, not from pytest: it needs root, binfmt_misc and minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.daemon import ROOT

SCRIPT = ROOT / "scripts" / "arm-test.sh"


def _run(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), "bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_without_root_it_skips_in_one_line() -> None:
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop root")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    out = _run(prefix=prefix)
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout
        == "arm-test: SKIPPED: needs root (debootstrap, chroot, mounts); run it with sudo\n"
    )


def test_help_names_the_roots_and_the_budget() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for word in ("bookworm-arm64", "bookworm-armhf", "EDGED_ARM_BUDGET_S", "--build-only"):
        assert word in out.stdout


def test_unknown_argument_is_a_usage_error() -> None:
    out = _run("--frobnicate")
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["arm-test: unknown argument: --frobnicate (see --help)"]
