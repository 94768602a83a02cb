"""The distribution ships the host commands: ``pip install 'edged[tools]'`` gives ``edgectl``
(train|bundle|keygen|push|status) runnable from any directory.

One wheel is built from a copy of the checkout (pip, with build isolation: setuptools from the
package index or pip's cache) and installed without dependencies into a throwaway target, whose
``bin/edgectl`` then runs from an unrelated directory on the test interpreter's packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.daemon import ROOT

PARTS = ["pyproject.toml", "README.md", "LICENSE", "edged", "tools"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for part in PARTS:
        p = ROOT / part
        if p.is_dir():
            shutil.copytree(p, src / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif p.exists():
            shutil.copy2(p, src / part)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 and "Could not find a version" in done.stderr:
        pytest.skip(f"no build backend reachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    (whl,) = out.glob("edged-*.whl")
    return whl


def test_the_wheel_has_the_tools_package_the_console_script_and_the_extra(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata, entry_points = z.read(meta).decode(), z.read(entry).decode()
    for module in ("__main__", "push", "status", "keygen", "bundle", "train/cli"):
        assert f"tools/{module}.py" in names, module
    assert "edgectl = tools.__main__:main" in entry_points
    assert "edged = edged.cli:main" in entry_points
    assert "Provides-Extra: tools" in metadata
    assert not any(n.startswith(("tests/", "keys/")) for n in names)


def test_edgectl_runs_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    edgectl = target / "bin" / "edgectl"
    assert edgectl.is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    usage = subprocess.run(
        [str(edgectl), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.startswith("usage: edgectl <command> [args]")
    for command in ("train", "bundle", "keygen", "push", "status"):
        assert f"  {command} " in usage.stdout
    where = subprocess.run(
        [str(edgectl), "status", "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert where.returncode == 0 and "usage: edgectl status" in where.stdout, where.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import tools; print(tools.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert probe.stdout.strip().startswith(str(target)), probe
    keygen = subprocess.run(
        [str(edgectl), "keygen"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert keygen.returncode == 0, keygen.stderr
    assert (elsewhere / "keys" / "release.pem").is_file()
