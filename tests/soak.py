"""Soak: the real daemon on a looping files source at a high frame rate, with the broker
restarted along the way, sampling the daemon's RSS, threads and open fds every second.

    python -m tests.soak --frames 200000 [--fps 1000] [--restart-every 20000] [--json OUT]

Prints one JSON object (and writes it to ``--json``): frames, duration, broker restarts, RSS
(start = at the end of the warm-up, end, max, growth), threads and fds (start, end, min, max
after the warm-up), and the daemon's own count of frames and published predictions. Exit
status 1 when a limit is exceeded (RSS growth over ``--max-rss-growth-mib`` after the warm-up,
threads or fds not flat, the daemon dead or not exiting 0), else 0.

tests/fault/test_broker_faults.py runs a short version in CI.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.broker import Mosquitto
from tests.daemon import demo_config, write_config
from tests.fault.harness import LiveDaemon, Sample, sample_process

DEVICE = "soak"
_SEQ = re.compile(rb'"seq":(\d+)')


class SeqWatcher:
    """Subscribes to the predictions (QoS 0) and keeps only the count and the highest seq."""

    def __init__(self, broker: Mosquitto) -> None:
        self.count = 0
        self.last_seq = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"soak-watch-{id(self):x}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"edged/{DEVICE}/prediction", 0)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        found = _SEQ.search(msg.payload)
        with self._lock:
            self.count += 1
            if found:
                self.last_seq = max(self.last_seq, int(found.group(1)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Stats:
    start: int
    end: int
    min: int
    max: int


def _stats(values: list[int]) -> Stats:
    return Stats(values[0], values[-1], min(values), max(values))


def run_soak(
    frames: int,
    *,
    fps: float = 1000.0,
    restart_every: int = 20000,
    warmup_s: float = 30.0,
    workdir: Path,
    log: Any = None,
) -> dict[str, Any]:
    """Run the soak; returns the figures (see the module docstring)."""
    broker = Mosquitto(workdir / "mosquitto")
    watcher = SeqWatcher(broker)
    cfg = demo_config(
        workdir,
        broker,
        device_id=DEVICE,  # type: ignore[arg-type]
        source={"loop": True, "fps": fps},
        mqtt={"keepalive_s": 5, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        publish={"mode": "every", "qos": 1, "heartbeat_s": 0},
    )
    daemon = LiveDaemon(write_config(workdir / "edged.toml", cfg))
    samples: list[Sample] = []
    restarts = 0
    rc: int | None = None
    t0 = time.monotonic()
    limit = t0 + 60 + 5 * frames / fps
    try:
        daemon.wait_line(r"edged\.mqtt: connected to", 30)
        next_restart = restart_every
        next_sample = time.monotonic()
        while watcher.last_seq < frames:
            now = time.monotonic()
            if now > limit or not daemon.alive():
                raise RuntimeError(
                    f"soak stalled at seq {watcher.last_seq} (daemon alive: {daemon.alive()})\n"
                    + "\n".join(s for _, s in daemon.lines()[-20:])
                )
            if now >= next_sample:
                s = sample_process(daemon.pid)
                if s is not None:
                    samples.append(s)
                next_sample += 1.0
                if log is not None and len(samples) % 30 == 0:
                    print(
                        f"soak: {now - t0:.0f} s seq {watcher.last_seq} rss "
                        f"{samples[-1].rss_kib // 1024} MiB threads {samples[-1].threads} "
                        f"fds {samples[-1].fds} restarts {restarts}",
                        file=log,
                        flush=True,
                    )
            if restart_every and watcher.last_seq >= next_restart:
                broker.restart()
                restarts += 1
                next_restart += restart_every
            time.sleep(0.05)
        duration = time.monotonic() - t0
        last = sample_process(daemon.pid)
        if last is not None:
            samples.append(last)
        rc = daemon.terminate(15)
    finally:
        daemon.close()
        watcher.close()
        broker.close()
    stopped = re.findall(r"stopped after (\d+) frames \((\d+) published\)", daemon.log())
    processed, published = map(int, stopped[-1]) if stopped else (0, 0)
    warm = [s for s in samples if s.t - samples[0].t >= warmup_s] or samples[-1:]
    rss = _stats([s.rss_kib for s in warm])
    threads = _stats([s.threads for s in warm])
    fds = _stats([s.fds for s in warm])
    return {
        "frames": processed,
        "published": published,
        "received_qos0": watcher.count,
        "duration_s": round(duration, 1),
        "fps": round(processed / duration, 1) if duration else 0.0,
        "broker_restarts": restarts,
        "warmup_s": warmup_s,
        "samples": len(samples),
        "rss_kib": {**asdict(rss), "growth": rss.end - rss.start, "first": samples[0].rss_kib},
        "threads": asdict(threads),
        "fds": asdict(fds),
        "exit_status": rc,
    }


def problems(report: dict[str, Any], max_rss_growth_mib: float = 5.0) -> list[str]:
    """The limits a soak must stay within, as one line per violation."""
    out = []
    rss, thr, fds = report["rss_kib"], report["threads"], report["fds"]
    if (
        rss["growth"] > max_rss_growth_mib * 1024
        or rss["max"] - rss["start"] > (max_rss_growth_mib + 5) * 1024
    ):
        out.append(f"RSS grew after the warm-up: {rss}")
    if thr["end"] != thr["start"] or thr["max"] - thr["min"] > 2:
        out.append(f"thread count not flat: {thr}")
    if fds["end"] - fds["start"] > 1 or fds["max"] - fds["min"] > 4:
        out.append(f"fd count not flat: {fds}")
    if report["exit_status"] != 0:
        out.append(f"daemon exit status {report['exit_status']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--fps", type=float, default=1000.0)
    ap.add_argument("--restart-every", type=int, default=20_000, help="frames between restarts")
    ap.add_argument("--warmup-s", type=float, default=30.0)
    ap.add_argument("--max-rss-growth-mib", type=float, default=5.0)
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edged-soak-") as tmp:
        report = run_soak(
            args.frames,
            fps=args.fps,
            restart_every=args.restart_every,
            warmup_s=args.warmup_s,
            workdir=Path(tmp),
            log=sys.stderr,
        )
    report["problems"] = problems(report, args.max_rss_growth_mib)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
