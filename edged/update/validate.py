"""Test-load a bundle in a separate, resource-limited process before the daemon touches it.

``python -m edged.update.validate BUNDLE [--memory-mb N] [--cpu-s N] [--no-require-golden] ...``

The child limits itself first (``RLIMIT_AS``, ``RLIMIT_CPU``, no core dumps, ``nice`` 10 so that
it never competes with the frame loop for a busy CPU), then checks that
the bundle loads; that the model's input shape and dtype match the manifest's input spec and
its outputs the number of labels; that the golden vector (manifest ``golden``: ``member``,
``output``, ``atol``) is reproduced within ``atol``; and that a blank frame classifies to finite
scores. It prints one JSON line, ``{"ok": true, ...}`` or ``{"ok": false, "reason": ...}``, and
exits 0 or 1. A malformed model that crashes the interpreter kills only the child:
:meth:`Validator.run` reports that (and a timeout) as the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_INVALID = 0, 1
NICE = 10  # the child's CPU priority below the daemon's
PARENT_ENV = "EDGED_VALIDATOR_PARENT"  # the daemon's pid, for the child's parent check
EXIT_ORPHAN = 3


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str = ""
    seconds: float = 0.0
    details: dict[str, Any] | None = None


# -- the parent side ---------------------------------------------------------------------------


class Validator:
    """Runs the child; :meth:`cancel` (from another thread) kills a running one."""

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        memory_mb: int = 1024,
        require_golden: bool = True,
        max_bytes: int = 64 * 1024 * 1024,
        backend: str = "auto",
        softmax: str = "auto",
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.require_golden = require_golden
        self.max_bytes = max_bytes
        self.backend = backend
        self.softmax = softmax
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._cancelled = False

    def command(self, path: Path) -> list[str]:
        cmd = [
            sys.executable, "-m", "edged.update.validate", str(path),
            "--memory-mb", str(self.memory_mb),
            "--cpu-s", str(int(self.timeout_s) + 5),
            "--max-bytes", str(self.max_bytes),
            "--backend", self.backend,
            "--softmax", self.softmax,
        ]  # fmt: skip
        if not self.require_golden:
            cmd.append("--no-require-golden")
        return cmd

    def run(self, path: Path) -> Verdict:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # so a source checkout works too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # One BLAS/OpenMP thread: thread pools reserve address space the limit is about.
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        env[PARENT_ENV] = str(os.getpid())  # the child dies with the daemon (die_with_parent)
        t0 = time.monotonic()
        with self._lock:
            if self._cancelled:
                return Verdict(False, "validation cancelled (daemon stopping)")
            try:
                proc = subprocess.Popen(
                    self.command(path),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    start_new_session=True,
                )
            except OSError as err:
                return Verdict(False, f"cannot start the validator: {err}")
            self._proc = proc
        try:
            out, errout = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return Verdict(False, f"validation timed out after {self.timeout_s:g} s", _since(t0))
        finally:
            with self._lock:
                self._proc = None
        return _verdict(proc.returncode, out, errout, _since(t0), self._cancelled)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()


def _since(t0: float) -> float:
    return time.monotonic() - t0


def _verdict(rc: int, out: bytes, err: bytes, seconds: float, cancelled: bool) -> Verdict:
    if cancelled:
        return Verdict(False, "validation cancelled (daemon stopping)", seconds)
    result: dict[str, Any] = {}
    lines = out.decode("utf-8", "replace").strip().splitlines()
    if lines:
        with contextlib.suppress(ValueError):
            parsed = json.loads(lines[-1])
            result = parsed if isinstance(parsed, dict) else {}
    if rc == EXIT_OK and result.get("ok") is True:
        return Verdict(True, "", seconds, result)
    if rc == EXIT_INVALID and result.get("reason"):
        return Verdict(False, str(result["reason"]), seconds, result)
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return Verdict(False, f"validator crashed ({name}) loading the model", seconds)
    tail = [ln for ln in err.decode("utf-8", "replace").strip().splitlines() if ln.strip()]
    detail = f": {tail[-1].strip()[:200]}" if tail else ""
    return Verdict(False, f"validator exited with status {rc}{detail}", seconds)


# -- the child side ----------------------------------------------------------------------------


def die_with_parent(environ: dict[str, str] | None = None) -> bool:
    """Never outlive the daemon: ask the kernel for SIGKILL when the parent dies
    (``PR_SET_PDEATHSIG``, Linux), then check that it has not died already (before the
    request). False when the parent is gone: the caller exits."""
    env = os.environ if environ is None else environ
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc or prctl refused: the check below stays
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    expected = env.get(PARENT_ENV, "")
    return not expected.isdigit() or os.getppid() == int(expected)


def limit_resources(memory_mb: int, cpu_s: int) -> list[str]:
    """Lower this process's limits; returns the ones that could not be set (a sandbox may
    refuse setrlimit: the parent's wall-clock timeout still applies)."""
    import resource

    problems = []
    wanted = [
        ("RLIMIT_AS", resource.RLIMIT_AS, memory_mb * 1024 * 1024),
        ("RLIMIT_CPU", resource.RLIMIT_CPU, cpu_s),
        ("RLIMIT_CORE", resource.RLIMIT_CORE, 0),
    ]
    for name, which, value in wanted:
        try:
            _soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value if name != "RLIMIT_CPU" else hard))
        except (OSError, ValueError) as err:
            problems.append(f"{name}: {err}")
    # The daemon's frame loop comes first on a busy CPU. Best effort: systemd's
    # SystemCallFilter=~@resources (the shipped unit) refuses setpriority; prlimit64 is allowed.
    with contextlib.suppress(OSError):
        os.nice(NICE)
    return problems


def check_bundle(data: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """Every check; raises ``ValueError``/``EdgedError`` naming the first failure."""
    import numpy as np

    from edged.model.bundle import read_bundle
    from edged.model.classifier import Classifier

    bundle = read_bundle(data, allow_unsigned=True, max_bytes=args.max_bytes)
    spec = bundle.manifest.get("input")
    if not isinstance(spec, dict) or spec.get("shape") is None or spec.get("dtype") is None:
        raise ValueError("manifest input spec must give the input shape and dtype")
    clf = Classifier.from_bundle(bundle, threads=1, backend=args.backend, softmax=args.softmax)
    info = clf.info
    if bundle.labels and len(bundle.labels) != info.num_classes:
        raise ValueError(
            f"model has {info.num_classes} outputs but the manifest lists "
            f"{len(bundle.labels)} labels"
        )
    details: dict[str, Any] = {
        "name": bundle.name,
        "version": bundle.version,
        "num_classes": info.num_classes,
        "input": [info.height, info.width, info.channels, info.dtype],
    }
    golden = bundle.manifest.get("golden")
    if golden is None:
        if args.require_golden:
            raise ValueError("bundle has no golden test vector (manifest 'golden')")
    else:
        details["golden_max_diff"] = _check_golden(clf, bundle.members, golden, np)
    blank = np.full((info.height, info.width, 3), 128, dtype=np.uint8)
    pred = clf.classify(blank, top_k=info.num_classes)
    if not all(np.isfinite(s) for _, s in pred.top):
        raise ValueError("model gives non-finite scores for a blank frame")
    return details


def _check_golden(clf: Any, members: dict[str, bytes], golden: Any, np: Any) -> float:
    if not isinstance(golden, dict):
        raise ValueError("manifest 'golden' must be an object")
    member, expected_raw = golden.get("member"), golden.get("output")
    if member not in members:
        raise ValueError(f"golden member {member!r} is not in the bundle")
    try:
        expected = np.asarray(expected_raw, dtype=np.float32).reshape(-1)
        atol = float(golden.get("atol", 0.0))
    except (TypeError, ValueError):
        raise ValueError("manifest golden 'output'/'atol' must be numbers") from None
    dtype = np.dtype(clf.info.dtype)
    raw = members[member]
    if len(raw) % dtype.itemsize:
        raise ValueError(f"golden input is {len(raw)} bytes, not a whole number of {dtype}")
    out = clf.invoke_raw(np.frombuffer(raw, dtype=dtype)).reshape(-1)
    if out.shape != expected.shape:
        raise ValueError(f"golden output has {expected.size} values, the model gives {out.size}")
    if not np.all(np.isfinite(out)):
        raise ValueError("model output for the golden input is not finite")
    diff = float(np.max(np.abs(out - expected)))
    if diff > atol:
        raise ValueError(f"golden output differs by {diff:.6g} (atol {atol:g})")
    return diff


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edged.update.validate")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--memory-mb", type=int, default=1024)
    parser.add_argument("--cpu-s", type=int, default=35)
    parser.add_argument("--max-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--softmax", default="auto")
    parser.add_argument("--no-require-golden", dest="require_golden", action="store_false")
    args = parser.parse_args(argv)
    if not die_with_parent():
        return EXIT_ORPHAN  # the daemon is gone: nobody waits for a verdict
    warnings = limit_resources(args.memory_mb, args.cpu_s)  # before anything big is loaded
    try:
        data = args.bundle.read_bytes()
        details = check_bundle(data, args)
    except MemoryError:
        reason = f"validation ran out of memory (limit {args.memory_mb} MiB)"
        return _emit({"ok": False, "reason": reason}, EXIT_INVALID)
    except (Exception, KeyboardInterrupt) as err:  # every failure becomes the reason
        # (KeyboardInterrupt: what OpenBLAS raises when it cannot start threads under RLIMIT_AS)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return _emit({"ok": False, "reason": reason}, EXIT_INVALID)
    if warnings:
        details["limit_warnings"] = warnings
    return _emit({"ok": True, **details}, EXIT_OK)


def _emit(obj: dict[str, Any], rc: int) -> int:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
