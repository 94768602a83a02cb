"""scripts/install.sh, run for real into a throwaway root (``--root``): nothing on the host changes,
and neither apt-get nor systemctl may run (stand-ins on PATH record any call).

The install is the real one — a venv made from the OS's python3 with --system-site-packages,
this checkout pip-installed into it with its dependencies — not a ``--no-deps`` install on top
of the test interpreter's packages: what matters is that the ``edged`` the unit's ExecStart
names runs the demo model from that venv, and only a real install shows it. It costs one venv
and one pip install (about 20 s with pip's cache warm, a minute or two cold), so the module
shares ONE install and ONE re-run (a module-scoped fixture); the --prefix test reuses that venv.
The script runs from a copy of the checkout, so concurrent edits of the working tree cannot make
the re-run see different sources.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import edged
from edged.config import DEVICE_ID_PATTERN, load_config
from tests.daemon import ROOT

SCRIPT = ROOT / "scripts" / "install.sh"
UNIT = ROOT / "systemd" / "edged.service"
DEFAULT_EXEC_START = "ExecStart=/opt/edged/venv/bin/edged run -c /etc/edged/edged.toml"
STEP_LINE = re.compile(r"^[a-z]+: +\S")
INSTALL_TIMEOUT_S = 600
# What a copy of the checkout needs for the script (sources, config template, unit, model).
CHECKOUT_PARTS = [
    "pyproject.toml",
    "README.md",
    "edged",
    "scripts",
    "config",
    "systemd",
    "models",
    "samples",
    "LICENSE",
]


@dataclass(frozen=True)
class Installed:
    root: Path
    checkout: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    config_as_installed: str
    config_as_edited: str
    calls_log: Path
    host_before: dict[str, bool]

    @property
    def venv(self) -> Path:
        return self.root / "opt" / "edged" / "venv"

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "edged"


HOST_PATHS = ("/etc/edged", "/etc/systemd/system/edged.service", "/opt/edged")


def make_stand_ins(bin_dir: Path, log: Path) -> None:
    """apt-get, apt, systemctl and sudo that only record being called, and fail."""
    bin_dir.mkdir()
    for name in ("apt-get", "apt", "systemctl", "sudo"):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 1\n')
        path.chmod(0o755)


def run_script(
    script: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def steps(out: str) -> dict[str, list[str]]:
    """``{step: [message, ...]}`` from the script's one-line-per-step output."""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        assert STEP_LINE.match(line), f"not a step line: {line!r}"
        step, _, message = line.partition(":")
        found.setdefault(step, []).append(message.strip())
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    checkout = base / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for part in CHECKOUT_PARTS:
        src = ROOT / part
        if not src.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, checkout / part, ignore=ignore)
        else:
            checkout.mkdir(exist_ok=True)
            shutil.copy2(src, checkout / part)
    calls_log = base / "calls.log"
    make_stand_ins(base / "bin", calls_log)
    env = {**os.environ, "PATH": f"{base / 'bin'}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin"}
    host_before = {p: os.path.lexists(p) for p in HOST_PATHS}
    root = base / "root"
    script = checkout / "scripts" / "install.sh"

    first = run_script(script, "--root", str(root), env=env, timeout=INSTALL_TIMEOUT_S)
    assert first.returncode == 0, f"install failed:\n{first.stdout}\n{first.stderr}"
    config = root / "etc" / "edged" / "edged.toml"
    as_installed = config.read_text()
    # The user edits the config; the re-run must leave it alone.
    as_edited = re.sub(r'(?m)^device_id = ".*"$', 'device_id = "my-cam"', as_installed)
    as_edited += "\n# my own note\n"
    config.write_text(as_edited)
    second = run_script(script, "--root", str(root), env=env, timeout=INSTALL_TIMEOUT_S)
    return Installed(root, checkout, first, second, as_installed, as_edited, calls_log, host_before)


def test_install_reports_one_line_per_step(installed: Installed) -> None:
    found = steps(installed.first.stdout)
    for step in ("platform", "venv", "edged", "selfcheck", "config", "password", "model", "unit"):
        assert step in found, f"no {step!r} line in:\n{installed.first.stdout}"
    assert installed.first.stdout.splitlines()[-1].startswith("done:")
    assert "skipped (--root)" in found["systemd"][0]


def test_venv_sees_system_site_packages_and_runs_edged(installed: Installed) -> None:
    cfg = (installed.venv / "pyvenv.cfg").read_text()
    assert re.search(r"(?mi)^include-system-site-packages = true$", cfg)
    out = subprocess.run(
        [str(installed.venv / "bin" / "edged"), "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"edged {edged.__version__}"
    # The self-check proves numbers, not only that something runs.
    check = steps(installed.first.stdout)["selfcheck"][0]
    assert re.fullmatch(
        r"golden vector within \S+ \(atol 0\.015625\); (19|20) of 20 known-answer images as "
        r"named; backend \S+",
        check,
    ), check


def test_config_is_valid_and_runs_the_installed_demo_model(
    installed: Installed, tmp_path: Path
) -> None:
    as_installed = tmp_path / "edged.toml"
    as_installed.write_text(installed.config_as_installed)
    cfg = load_config(as_installed, environ={})
    assert re.fullmatch(DEVICE_ID_PATTERN, cfg.device_id)
    assert cfg.model.path == Path("/etc/edged/digits.edgb")  # the path the service sees
    # `edged check` with the installed venv, config and model; the model path is the one below
    # the throwaway root (the config names the service's /etc/edged/digits.edgb).
    env = {**os.environ, "EDGED_MODEL__PATH": str(installed.etc / "digits.edgb")}
    out = subprocess.run(
        [str(installed.venv / "bin" / "edged"), "check", "--no-broker", "-c", str(as_installed)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "model: digits" in out.stdout
    assert (installed.etc / "digits.edgb").read_bytes() == (
        ROOT / "models" / "digits.edgb"
    ).read_bytes()


def test_password_file_is_empty_and_0600(installed: Installed) -> None:
    st = (installed.etc / "mqtt-password").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 0


def test_unit_is_the_repositorys_with_its_exec_start(installed: Installed) -> None:
    unit = installed.root / "etc" / "systemd" / "system" / "edged.service"
    text = unit.read_text()
    assert DEFAULT_EXEC_START in text.splitlines()
    assert text == UNIT.read_text(), "the default prefix installs the unit unchanged"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644


def test_rerun_changes_nothing_and_keeps_the_users_config(installed: Installed) -> None:
    second = installed.second
    assert second.returncode == 0, second.stdout + second.stderr
    found = steps(second.stdout)
    assert found["done"] == ["nothing changed (already installed)"]
    for step in ("venv", "edged", "model", "unit"):
        assert "unchanged" in found[step][0], found[step]
    assert "left as it is" in found["config"][0]
    assert "left as it is" in found["password"][0]
    config = installed.etc / "edged.toml"
    assert config.read_text() == installed.config_as_edited


def test_neither_apt_nor_systemctl_ran_and_the_host_is_untouched(installed: Installed) -> None:
    calls = installed.calls_log.read_text() if installed.calls_log.exists() else ""
    assert calls == "", f"called under --root: {calls}"
    assert {p: os.path.lexists(p) for p in HOST_PATHS} == installed.host_before


def test_prefix_points_exec_start_at_the_venv(installed: Installed, tmp_path: Path) -> None:
    root = tmp_path / "root"
    venv = root / "srv" / "edged" / "venv"
    venv.parent.mkdir(parents=True)
    # The same venv (the fixture's install), so no second pip install: the script finds it up
    # to date and only writes /etc/edged and the unit.
    venv.symlink_to(installed.venv, target_is_directory=True)
    script = installed.checkout / "scripts" / "install.sh"
    out = run_script(script, "--root", str(root), "--prefix", "/srv/edged", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "unchanged" in steps(out.stdout)["edged"][0]
    unit = (root / "etc" / "systemd" / "system" / "edged.service").read_text().splitlines()
    original = UNIT.read_text().splitlines()
    assert "ExecStart=/srv/edged/venv/bin/edged run -c /etc/edged/edged.toml" in unit
    # Nothing else differs: the hardening is the repository's.
    assert [a for a, b in zip(unit, original, strict=True) if a != b] == [
        "ExecStart=/srv/edged/venv/bin/edged run -c /etc/edged/edged.toml"
    ]


@pytest.mark.parametrize(
    ("prefix", "why"),
    [("/home/pi/edged", "ProtectHome"), ("opt/edged", "absolute"), ("/opt/my edged", "only")],
)
def test_bad_prefix_is_refused(prefix: str, why: str, tmp_path: Path) -> None:
    out = run_script(SCRIPT, "--root", str(tmp_path / "r"), "--prefix", prefix)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and why in out.stderr


def as_unprivileged() -> list[str]:
    """A command prefix that drops root (the tests usually run as root), or [] if not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop root")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_without_root_and_without_root_dir_it_refuses_in_one_line() -> None:
    out = subprocess.run(
        [*as_unprivileged(), "bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert "must run as root" in lines[0] and "--root" in lines[0]


def test_root_dir_needs_no_root() -> None:
    target = Path("/tmp") / f"edged-install-test-{uuid.uuid4().hex}"  # not created: dry run
    out = subprocess.run(
        [*as_unprivileged(), "bash", str(SCRIPT), "--root", str(target), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    found = steps(out.stdout)
    assert found["done"][0].startswith("dry run:")
    assert "would be created" in found["venv"][0]
    assert not target.exists()


# -- the self-check: wrong numbers stop the install ----------------------------------------------


def _checkout_copy(installed: Installed, dest: Path) -> Path:
    shutil.copytree(installed.checkout, dest, symlinks=True)
    return dest


def _reuse_venv(installed: Installed, root: Path) -> None:
    """The fixture's venv under a new root: no second pip install (the sources are the same)."""
    venv = root / "opt" / "edged" / "venv"
    venv.parent.mkdir(parents=True)
    venv.symlink_to(installed.venv, target_is_directory=True)


def test_selfcheck_fails_the_install_when_the_golden_vector_is_not_reproduced(
    installed: Installed, tmp_path: Path
) -> None:
    from edged.model.bundle import GOLDEN, build_bundle, read_bundle

    checkout = _checkout_copy(installed, tmp_path / "checkout")
    model = checkout / "models" / "digits.edgb"
    bundle = read_bundle(model.read_bytes(), allow_unsigned=True)
    golden = dict(bundle.manifest["golden"])
    golden["output"] = list(reversed(golden["output"]))  # what a broken interpreter would give
    model.write_bytes(
        build_bundle(
            name=bundle.name,
            version=bundle.version,
            model=bundle.model_bytes,
            labels=bundle.labels,
            input_spec=bundle.manifest["input"],
            extra_members={GOLDEN: bundle.members[GOLDEN]},
            extra_manifest={"golden": golden},
        )
    )
    root = tmp_path / "root"
    _reuse_venv(installed, root)
    out = run_script(checkout / "scripts" / "install.sh", "--root", str(root), timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "selfcheck" not in steps(out.stdout)
    (line,) = out.stderr.splitlines()[-1:]
    assert "computes wrong answers here" in line and "golden output differs by" in line
    assert not (root / "etc" / "edged" / "edged.toml").exists()  # stopped before /etc/edged


def test_selfcheck_fails_when_known_answer_images_collapse_to_one_label(
    installed: Installed, tmp_path: Path
) -> None:
    checkout = _checkout_copy(installed, tmp_path / "checkout")
    samples = sorted((checkout / "samples").glob("*.png"))
    zero = samples[0].read_bytes()
    for path in samples:  # every known answer now shows a 0: a runtime that says "0" to all
        path.write_bytes(zero)
    root = tmp_path / "root"
    _reuse_venv(installed, root)
    out = run_script(checkout / "scripts" / "install.sh", "--root", str(root), timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    line = out.stderr.splitlines()[-1]
    assert "known-answer images: only 2 of 20 as named" in line, line


# -- 32-bit ARM: the userland decides, and what cannot work is refused up front ----------------


def _fake_platform(bin_dir: Path, dpkg_arch: str, uname_m: str) -> dict[str, str]:
    """dpkg, dpkg-query and uname stand-ins: a Debian userland of ``dpkg_arch`` on a kernel
    that says ``uname_m``, with none of the OS's Python packages installed."""
    bin_dir.mkdir()
    scripts = {
        "dpkg": f'#!/bin/sh\n[ "$1" = --print-architecture ] && echo {dpkg_arch}\n',
        "dpkg-query": "#!/bin/sh\nexit 1\n",
        "uname": f'#!/bin/sh\ncase "$1" in -m) echo {uname_m} ;; *) /bin/uname "$@" ;; esac\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}


@pytest.mark.parametrize(
    ("dpkg_arch", "uname_m", "why"),
    [
        ("armel", "armv7l", "need an armhf (ARMv7) userland"),
        ("armhf", "armv6l", "an ARMv6 CPU (Pi 1 / Zero / Zero W) cannot run"),
    ],
)
def test_unsupported_32_bit_arm_is_refused_in_one_line_before_any_change(
    tmp_path: Path, dpkg_arch: str, uname_m: str, why: str
) -> None:
    env = _fake_platform(tmp_path / "bin", dpkg_arch, uname_m)
    root = tmp_path / "root"
    out = run_script(SCRIPT, "--root", str(root), env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("install.sh: error: 32-bit ARM") and why in line, line
    assert not root.exists()


def test_32_bit_userland_on_a_64_bit_kernel_is_told_from_the_userland(tmp_path: Path) -> None:
    """A Pi 4 with 32-bit Raspberry Pi OS: uname says aarch64, dpkg says armhf. The installer
    takes the 32-bit path, so it asks for the OS's numpy/Pillow/cryptography; without apt
    (--root) and without them it stops with the reason, having written nothing."""
    env = _fake_platform(tmp_path / "bin", "armhf", "aarch64")
    root = tmp_path / "root"
    out = run_script(SCRIPT, "--root", str(root), env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "armhf" in steps(out.stdout)["platform"][0]
    (line,) = out.stderr.splitlines()
    assert "32-bit ARM needs the OS's python3-numpy python3-pil python3-cryptography" in line
    assert list(root.iterdir()) == []  # created, nothing written


def test_64_bit_arm_takes_the_ordinary_path(tmp_path: Path) -> None:
    env = _fake_platform(tmp_path / "bin", "arm64", "aarch64")
    out = run_script(SCRIPT, "--root", str(tmp_path / "root"), "--dry-run", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    found = steps(out.stdout)
    assert "arm64" in found["platform"][0]
    assert "missing here: python3-venv mosquitto-clients" in found["apt"][0]  # no python3-pil


def _requirements(env: dict[str, str]) -> dict[str, str]:
    """pyproject's dependencies that apply in ``env``: name -> specifier."""
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for text in deps:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            assert req.name not in out, f"two requirements for {req.name} apply in {env}"
            out[req.name] = str(req.specifier)
    return out


@pytest.mark.parametrize("machine", ["armv7l", "armv8l"])
def test_markers_on_32_bit_arm(machine: str) -> None:
    reqs = _requirements({"platform_machine": machine, "python_version": "3.11"})
    assert "ai-edge-litert" not in reqs
    assert reqs["tflite-runtime"] == ">=2.14"
    # Debian Bookworm's python3-pil 9.4 and python3-cryptography 38 satisfy them
    assert reqs["pillow"] == ">=9.4" and reqs["cryptography"] == ">=38"
    newer = _requirements({"platform_machine": machine, "python_version": "3.13"})
    assert "tflite-runtime" not in newer  # no wheels past 3.11: install.sh refuses instead


@pytest.mark.parametrize("machine", ["aarch64", "x86_64"])
def test_markers_on_64_bit(machine: str) -> None:
    reqs = _requirements({"platform_machine": machine, "python_version": "3.11"})
    assert reqs["ai-edge-litert"] == ">=1.2"
    assert "tflite-runtime" not in reqs
    assert reqs["pillow"] == ">=10" and reqs["cryptography"] == ">=42"


def test_32_bit_trixie_python_3_13_is_refused_up_front(tmp_path: Path) -> None:
    """32-bit Trixie: Python 3.13, for which no TFLite runtime has 32-bit ARM wheels."""
    env = _fake_platform(tmp_path / "bin", "armhf", "armv7l")
    py = tmp_path / "python3.13"
    real = shutil.which("python3") or "/usr/bin/python3"
    py.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -c ]; then shift; code=$1; shift\n'
        f'  exec {real} -c "import sys; sys.version_info = (3, 13, 0, \'final\', 0); $code" "$@"\n'
        f'fi\nexec {real} "$@"\n'
    )
    py.chmod(0o755)
    root = tmp_path / "root"
    out = run_script(SCRIPT, "--root", str(root), "--python", str(py), env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert "Python 3.13 has no TFLite runtime" in line and "64-bit Raspberry Pi OS" in line
    assert not root.exists()
