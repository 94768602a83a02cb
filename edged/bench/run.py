"""``edged bench``: what users run, side by side with what it is measured against, in one run.

Cases, each in a process of its own (:mod:`edged.bench.cases`), against a private Mosquitto
and a real subscriber process (:mod:`edged.bench.peers`), all on this machine:

1. **default**: the daemon as ``edged run`` builds it from a config that sets nothing but the
   model (``threads = "auto"``: the measured plan, spool on), fed 640x480 frames (``--frame``;
   ``model``: at the model's input size, as picamera2's lores stream) by a source faster than
   the model;
2. **bare KxN**: ``set_tensor`` + ``invoke`` + ``get_tensor`` alone, for each plan: one
   interpreter at each thread count (``1xN``), and as many single-threaded interpreters as
   cores at once (``Kx1``), plus the default's plan;
3. **plain**: a loop as a user would write it (read, resize, invoke, publish with paho), with
   the thread count of the fastest single bare interpreter of the round;
4. the **30 fps** camera case: the default daemon, and a bare interpreter of the default's
   threads, both paced.

For each: delivered predictions per second (arrivals at the subscriber; the bare interpreter's
invokes), CPU milliseconds per prediction (the process's CPU time over the predictions it
made), latency p50/p99 (capture to arrival at the subscriber; bare: the invoke), peak RSS.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.bench.peers import PrivateBroker, Subscriber
from edged.errors import BenchError
from edged.model import autothreads
from edged.model.autothreads import Plan
from edged.model.runtime import available_backends

CASE_TIMEOUT_S = 120.0


def _model_size(model: str, backend: str) -> tuple[int, int]:
    """(width, height) of the model's input: frames as picamera2's lores stream gives them."""
    from edged.bench.cases import model_bytes
    from edged.model.preprocess import InputSpec
    from edged.model.runtime import load_interpreter

    interp, _ = load_interpreter(model_bytes(model), 1, backend)
    spec = InputSpec.from_details(interp.get_input_details()[0])
    return spec.width, spec.height


@dataclass
class BenchOptions:
    model: Path
    seconds: float = 3.0
    warmup_s: float = 1.0
    plans: list[Plan] | None = None  # bare plans (default: 1x1..1xcores, Kx1, the default's)
    backend: str | None = None  # default: the first installed
    host: str | None = None  # None = start a private broker
    port: int = 1883
    qos: int = 1
    camera_fps: float = 30.0
    rounds: int = 3  # every case once per round, interleaved: the machine's load hits all
    frame: tuple[int, int] | None = (640, 480)  # what the camera delivers; None: the model's size


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edged.bench.cases", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BenchError(f"bench case {spec['case']} ran over {CASE_TIMEOUT_S:g} s") from None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        err = out.stderr.strip().splitlines()
        raise BenchError(f"bench case {spec['case']} failed: {err[-1] if err else out.returncode}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _case(
    name: str, spec: dict[str, Any], host: str, port: int, topic: str | None
) -> dict[str, Any]:
    """Run one case (with a subscriber on ``topic`` when it publishes); its figures."""
    sub = Subscriber(host, port, topic) if topic else None
    try:
        r = _child(spec)
    finally:
        if sub is not None:
            sub.close()
    t0, t1, span = r["t0"], r["t1"], r["t1"] - r["t0"]
    if sub is None:
        delivered, lat = r["n"] / span, r["latency_ms"]
    else:
        captured = {int(k): v for k, v in r["captured"].items()}
        arrived = {s: at for s, at in sub.received.items() if t0 <= at < t1 and s in captured}
        delivered = len(arrived) / span
        lat = [(at - captured[s]) * 1000.0 for s, at in arrived.items()]
    return {
        "case": name,
        "plan": r["plan"],
        "delivered_fps": delivered,
        "cpu_ms_per_prediction": 1000.0 * r["cpu_s"] / r["n"] if r["n"] else float("nan"),
        "latency_ms_p50": _pct(lat, 0.5),
        "latency_ms_p99": _pct(lat, 0.99),
        "peak_rss_mib": r["peak_rss_mib"],
        **{k: r[k] for k in ("dropped", "overlap") if k in r},
    }


def run(opts: BenchOptions) -> dict[str, Any]:
    backend = opts.backend or available_backends()[0]
    n = autothreads.cores()
    plans = opts.plans or [Plan(1, t) for t in range(1, n + 1)]
    if opts.plans is None and n > 1:
        plans.append(Plan(min(n, autothreads.MAX_INTERPRETERS), 1))
    base = {
        "model": str(opts.model.resolve()),
        "backend": backend,
        "seconds": opts.seconds,
        "warmup_s": opts.warmup_s,
        "qos": opts.qos,
    }
    load = os.getloadavg()
    width, height = opts.frame or _model_size(str(opts.model.resolve()), backend)
    base["shape"] = [height, width, 3]
    rounds: list[list[dict[str, Any]]] = []
    with contextlib.ExitStack() as stack:
        broker = PrivateBroker() if opts.host is None else None
        if broker is not None:
            stack.callback(broker.close)
        host, port = ("127.0.0.1", broker.port) if broker else (opts.host or "", opts.port)
        state = stack.enter_context(tempfile.TemporaryDirectory(prefix="edged-bench-state-"))
        for _ in range(max(1, opts.rounds)):
            rounds.append(_round(opts, base, host, port, state, plans))
    cases = [_median([r[i] for r in rounds]) for i in range(len(rounds[0]))]
    per_round = [targets(r) for r in rounds]
    return {
        "model": base["model"],
        "backend": backend,
        "cpu_count": autothreads.cores(),
        "loadavg_at_start": list(load),
        "loadavg_at_end": list(os.getloadavg()),
        "auto_plan": cases[0]["plan"],
        "frame": f"{width}x{height}",
        "rounds": len(rounds),
        "cases": cases,
        "targets": {k: statistics.median(t[k] for t in per_round) for k in per_round[0]},
        "targets_per_round": per_round,
    }


def _round(
    opts: BenchOptions, base: dict[str, Any], host: str, port: int, state: str, plans: list[Plan]
) -> list[dict[str, Any]]:
    """Every case once, the default config first."""
    net = {"host": host, "port": port}
    daemon = {**base, **net, "case": "daemon", "threads": "auto"}
    daemon["state_dir"] = state  # threads.json: "auto" is measured once, by the first case
    topic = "edged/bench/prediction"
    default = _case("default", daemon, host, port, topic)
    cases = [default]
    chosen = Plan.parse(default["plan"]) or Plan(1, 1)
    for plan in [*plans, *([chosen] if chosen not in plans else [])]:
        spec = {**base, "case": "bare", "threads": plan.threads, "interpreters": plan.interpreters}
        cases.append(_case(f"bare {plan}", spec, host, port, None))
    singles = [c for c in cases[1:] if c["plan"].startswith("1x")] or cases[1:]
    best_single = Plan.parse(max(singles, key=lambda c: c["delivered_fps"])["plan"])
    threads = best_single.threads if best_single else chosen.threads
    plain = {**base, **net, "case": "plain", "threads": threads}
    cases.append(_case("plain", plain, host, port, "bench/plain/prediction"))
    fps = opts.camera_fps
    cases.append(_case(f"default {fps:g} fps", {**daemon, "fps": fps}, host, port, topic))
    bare_cam = {**base, "case": "bare", "threads": chosen.threads, "fps": fps}
    cases.append(_case(f"bare 1x{chosen.threads} {fps:g} fps", bare_cam, host, port, None))
    return cases


def _median(same: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's figures over the rounds: the median of each number."""
    out = dict(same[0])
    for key, value in same[0].items():
        if isinstance(value, float):
            out[key] = statistics.median(c[key] for c in same)
    return out


def targets(cases: list[dict[str, Any]]) -> dict[str, float]:
    """The issue 14 ratios: the default against the best bare rate (of any plan, and of one
    interpreter alone) and the bare CPU of its plan, the plain loop, the 30 fps case."""
    by = {c["case"]: c for c in cases}
    default = cases[0]
    bares = [c for c in cases if c["case"].startswith("bare ") and "fps" not in c["case"]]
    best = max(bares, key=lambda c: c["delivered_fps"])
    singles = [c for c in bares if c["plan"].startswith("1x")] or bares
    best_single = max(singles, key=lambda c: c["delivered_fps"])
    same = next((c for c in bares if c["plan"] == default["plan"]), best)
    cam = [c for c in cases if c["case"].endswith(" fps")]
    out = {
        "rate_vs_bare_best": default["delivered_fps"] / best["delivered_fps"],
        "rate_vs_bare_single": default["delivered_fps"] / best_single["delivered_fps"],
        "cpu_vs_bare": default["cpu_ms_per_prediction"] / same["cpu_ms_per_prediction"],
        "rate_vs_plain": default["delivered_fps"] / by["plain"]["delivered_fps"],
        "cpu_vs_plain": default["cpu_ms_per_prediction"] / by["plain"]["cpu_ms_per_prediction"],
        "peak_rss_mib": default["peak_rss_mib"],
    }
    if len(cam) == 2:
        out["camera_cpu_vs_bare"] = (
            cam[0]["cpu_ms_per_prediction"] / cam[1]["cpu_ms_per_prediction"]
        )
        out["camera_peak_rss_mib"] = cam[0]["peak_rss_mib"]
    return out


def table(report: dict[str, Any]) -> str:
    head = (
        f"{'case':<20}{'plan':>5}{'pred/s':>9}{'CPU ms/pred':>13}{'lat p50':>9}{'lat p99':>9}"
        f"{'peak RSS':>10}"
    )
    lines = [head]
    for c in report["cases"]:
        lines.append(
            f"{c['case']:<20}{c['plan']:>5}{c['delivered_fps']:>9.1f}"
            f"{c['cpu_ms_per_prediction']:>13.2f}{c['latency_ms_p50']:>9.1f}"
            f"{c['latency_ms_p99']:>9.1f}{c['peak_rss_mib']:>9.1f}M"
        )
    t = report["targets"]
    lines.append(
        f"default: {t['rate_vs_bare_best']:.3f} of the best bare rate "
        f"({t['rate_vs_bare_single']:.3f} of one interpreter's), "
        f"{t['cpu_vs_bare']:.3f}x bare CPU/prediction; vs plain loop: rate "
        f"{t['rate_vs_plain']:.3f}x, CPU {t['cpu_vs_plain']:.3f}x"
        + (
            f"; 30 fps: {t['camera_cpu_vs_bare']:.3f}x bare CPU"
            if "camera_cpu_vs_bare" in t
            else ""
        )
    )
    load = report["loadavg_at_start"]
    lines.append(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return "\n".join(lines)
