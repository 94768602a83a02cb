"""The validator subprocess: every check, crash and timeout handling, resource limits."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from edged.model.bundle import build_bundle
from edged.update.validate import Validator, _verdict
from tests.update.bundles import DEMO, make_bundle


def _run(tmp_path: Path, data: bytes, **kwargs: object) -> tuple[bool, str]:
    path = tmp_path / "b.edgb"
    path.write_bytes(data)
    v = Validator(**kwargs).run(path)  # type: ignore[arg-type]
    return v.ok, v.reason


def test_a_good_bundle_passes_with_its_golden_vector(tmp_path: Path) -> None:
    path = tmp_path / "b.edgb"
    path.write_bytes(make_bundle(2, None))
    v = Validator().run(path)
    assert v.ok, v.reason
    assert v.details is not None and v.details["golden_max_diff"] <= DEMO.manifest["golden"]["atol"]
    assert v.details["num_classes"] == 10 and v.seconds < 20


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"model": os.urandom(40_000)}, "not a TFLite model"),
        ({"input_patch": {"shape": [1, 28, 28, 1]}}, "manifest input shape [1, 28, 28, 1]"),
        ({"input_patch": {"dtype": "uint8"}}, "manifest input dtype uint8"),
        ({"labels": ["a", "b", "c"]}, "3 labels"),
        ({"golden": False}, "no golden test vector"),
    ],
)
def test_broken_bundles_fail_with_the_reason(
    tmp_path: Path, kwargs: dict[str, Any], reason: str
) -> None:
    ok, why = _run(tmp_path, make_bundle(2, None, **kwargs))
    assert not ok
    assert reason in why, why


def test_a_golden_vector_the_model_does_not_reproduce_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    golden = dict(DEMO.manifest["golden"])
    golden["output"] = list(reversed(golden["output"]))
    monkeypatch.setitem(DEMO.manifest, "golden", golden)
    ok, why = _run(tmp_path, make_bundle(2, None))
    assert not ok and "golden output differs by" in why


def test_golden_can_be_optional(tmp_path: Path) -> None:
    ok, why = _run(tmp_path, make_bundle(2, None, golden=False), require_golden=False)
    assert ok, why


def test_a_timeout_kills_the_child(tmp_path: Path) -> None:
    ok, why = _run(tmp_path, make_bundle(2, None), timeout_s=0.05)
    assert not ok and why == "validation timed out after 0.05 s"


def test_the_memory_limit_applies_in_the_child(tmp_path: Path) -> None:
    # 160 MB of zeros: a small file that unpacks to more than the child may hold.
    bomb = build_bundle(
        name="digits",
        version=2,
        model=DEMO.model_bytes,
        labels=DEMO.labels,
        input_spec=DEMO.manifest["input"],
        extra_members={"golden.bin": DEMO.members["golden.bin"], "zeros.bin": bytes(160 << 20)},
        extra_manifest={"golden": DEMO.manifest["golden"]},
    )
    assert len(bomb) < 1 << 20
    ok, why = _run(tmp_path, bomb, memory_mb=128, max_bytes=1 << 30)
    assert (ok, why) == (False, "validation ran out of memory (limit 128 MiB)")


def test_crashes_and_odd_exits_are_reported() -> None:
    assert _verdict(-signal.SIGSEGV, b"", b"", 0.1, False).reason == (
        "validator crashed (SIGSEGV) loading the model"
    )
    v = _verdict(3, b"", b"noise\nFatal Python error: Aborted\n", 0.1, False)
    assert v.reason == "validator exited with status 3: Fatal Python error: Aborted"
    assert not _verdict(0, b"not json", b"", 0.1, False).ok
