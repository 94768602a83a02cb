"""systemd/edged.service: key directives, `systemd-analyze verify` and the security exposure."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edged.service"
MAX_EXPOSURE = 2.0
SYNTAX_ERRORS = re.compile(
    r"Invalid syntax|Unknown (key|section|lvalue)|Failed to parse|Missing '='|"
    r"Unknown assignment|bad-setting",
    re.IGNORECASE,
)


def directives(text: str) -> dict[str, list[str]]:
    """``{key: [values in order]}`` over all sections; comments and blank lines skipped."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return directives(UNIT.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("ExecStart", "/opt/edged/venv/bin/edged run -c /etc/edged/edged.toml"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RestartSec", "5"),
        ("DynamicUser", "yes"),
        ("SupplementaryGroups", "video"),
        ("StateDirectory", "edged"),
        ("ConfigurationDirectory", "edged"),
        ("LoadCredential", "mqtt-password:/etc/edged/mqtt-password"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("DevicePolicy", "closed"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallFilter", "@system-service"),
        ("LockPersonality", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("UMask", "0077"),
        ("WantedBy", "multi-user.target"),
    ],
)
def test_key_directive(unit: dict[str, list[str]], key: str, value: str) -> None:
    assert value in unit.get(key, []), f"{key}={value} missing (have {unit.get(key)})"


def test_camera_devices_allowed(unit: dict[str, list[str]]) -> None:
    allowed = {v.split()[0]: v.split()[1] for v in unit["DeviceAllow"]}
    # /dev/video* + /dev/v4l-subdev*, /dev/media*, /dev/dma_heap/* (libcamera / picamera2)
    for group in ("char-video4linux", "char-media", "char-dma_heap"):
        assert allowed.get(group) == "rw", f"DeviceAllow={group} rw missing"
    assert "PrivateDevices" not in unit  # it would hide the camera


def test_network_families(unit: dict[str, list[str]]) -> None:
    (families,) = unit["RestrictAddressFamilies"]
    assert set(families.split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert "PrivateNetwork" not in unit  # the broker is on the network


def test_nothing_writable_but_state(unit: dict[str, list[str]]) -> None:
    for key in ("ReadWritePaths", "LogsDirectory", "CacheDirectory", "RuntimeDirectory"):
        assert key not in unit


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    return exe


def test_security_exposure() -> None:
    exe = _analyze()
    proc = subprocess.run(
        [exe, "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    text = proc.stdout + proc.stderr
    if "--offline" in text and "unrecognized" in text.lower():
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", text)
    assert match, f"no exposure figure in output:\n{text}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{text}"


def test_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on a copy whose ExecStart points at an existing binary (the
    real one, /opt/edged/venv/bin/edged, is not installed here)."""
    exe = _analyze()
    true = shutil.which("true") or "/bin/true"
    text = UNIT.read_text(encoding="utf-8").replace(
        "ExecStart=/opt/edged/venv/bin/edged", f"ExecStart={true}"
    )
    copy = tmp_path / "edged.service"
    copy.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [exe, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    out = proc.stdout + proc.stderr
    bad = [line for line in out.splitlines() if SYNTAX_ERRORS.search(line)]
    assert not bad, "unit has invalid settings:\n" + "\n".join(bad)
    if proc.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run fully here: {out.strip()[:300]}")
