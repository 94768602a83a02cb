"""A fleet of real ``edged run`` processes on one broker (or a cluster), and what it measures.

:class:`Fleet` starts N daemons (the demo model, the sample images at a low rate, each with its
own state dir, all in update group ``fleet``); :class:`Watcher` is a persistent subscriber
that timestamps everything; :func:`scenario` runs the documented sequence -- a group push, a
broker restart, a broker outage -- and returns the figures (the CI test asserts them, and
``scripts/fleet_run.py`` runs it with N = 100 for docs/fleets.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.broker import Mosquitto, Received, Subscriber
from tests.daemon import DEMO_MODEL, ROOT, SAMPLES, DaemonProcess, write_config
from tests.update.bundles import Keys, make_bundle

GROUP = "fleet"


def device_id(i: int) -> str:
    return f"fleet-{i:03d}"


class Watcher(Subscriber):
    """A subscriber (persistent session, QoS 1) that also keeps each message's arrival time."""

    def __init__(self, host: str, port: int, topic: str = "#", **kwargs: Any) -> None:
        self.times: list[float] = []
        kwargs.setdefault("persistent", True)
        kwargs.setdefault("qos", 1)
        super().__init__(host, port, topic, **kwargs)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        item = Received(msg.topic, bytes(msg.payload), bool(msg.retain), int(msg.qos))
        with self._cond:
            self._messages.append(item)
            self.times.append(time.monotonic())
            self._cond.notify_all()

    def timed(self) -> list[tuple[float, Received]]:
        with self._cond:
            return list(zip(self.times, self._messages, strict=True))

    def wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s")
            time.sleep(0.5)  # the checks walk every message: leave the watcher's thread be

    def online_since(self, t0: float) -> dict[str, float]:
        """device -> first time it said ``online`` after ``t0`` (live, not a retained copy)."""
        out: dict[str, float] = {}
        for t, m in self.timed():
            live = not m.retain
            if t >= t0 and live and m.topic.endswith("/availability") and m.payload == b"online":
                out.setdefault(m.topic.split("/")[-2], t)
        return out

    def seq_report(self) -> dict[str, dict[str, int]]:
        """device -> {first, last, received, missing} of its prediction ``seq`` numbers."""
        seqs: dict[str, set[int]] = {}
        for m in self.messages:
            if m.topic.endswith("/prediction"):
                ev = json.loads(m.payload)
                seqs.setdefault(ev["device"], set()).add(int(ev["seq"]))
        return {
            d: {
                "first": min(s),
                "last": max(s),
                "received": len(s),
                "missing": max(s) - min(s) + 1 - len(s),
            }
            for d, s in seqs.items()
        }

    def discovery_count(self, since: float = 0.0) -> int:
        """Home Assistant configs published live (retained copies re-sent on subscribe not
        counted) at or after ``since``."""
        return sum(
            1
            for t, m in self.timed()
            if t >= since and m.topic.startswith("homeassistant/") and m.topic.endswith("/config")
            and not m.retain
        )  # fmt: skip


@dataclass
class Fleet:
    workdir: Path
    n: int
    endpoints: list[tuple[str, int]]  # device i connects to endpoints[i % len(endpoints)]
    keys: Keys
    protocol: str = "5"
    fps: float = 1.0
    procs: dict[int, DaemonProcess] = field(default_factory=dict)

    def config(self, i: int) -> dict[str, Any]:
        host, port = self.endpoints[i % len(self.endpoints)]
        return {
            "device_id": device_id(i),
            "state_dir": str(self.workdir / device_id(i)),
            "log_level": "warning",
            "source": {"type": "files", "path": str(SAMPLES), "fps": self.fps, "loop": True},
            "model": {"path": str(DEMO_MODEL)},
            "mqtt": {"host": host, "port": port, "protocol": self.protocol, "keepalive_s": 10},
            "publish": {"mode": "every"},
            "update": {
                "trusted_keys": [str(self.keys.public_path)],
                "groups": [GROUP],
                "probation_frames": 3,
                "validate_memory_mb": 768,
            },
            "homeassistant": {"enabled": True},
            "stats": {"interval_s": 10},
        }

    def start(self, i: int) -> DaemonProcess:
        path = write_config(self.workdir / f"{device_id(i)}.toml", self.config(i))
        self.procs[i] = DaemonProcess(path)
        return self.procs[i]

    def start_all(self, skip: set[int] | None = None, pace_s: float = 0.0) -> None:
        for i in range(self.n):
            if i not in (skip or set()):
                self.start(i)
                if pace_s:
                    time.sleep(pace_s)

    def rss_kib(self) -> list[tuple[int, int]]:
        """(VmRSS, Pss) in KiB of every running daemon."""
        out = []
        for p in self.procs.values():
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
                rollup = Path(f"/proc/{p.pid}/smaps_rollup").read_text()
            except OSError:
                continue
            rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
            pss = next(int(x.split()[1]) for x in rollup.splitlines() if x.startswith("Pss:"))
            out.append((rss, pss))
        return out

    def dead(self) -> list[str]:
        return [device_id(i) for i, p in self.procs.items() if not p.alive()]

    def close(self) -> None:
        for p in self.procs.values():
            if p.alive():
                p.proc.terminate()
        for p in self.procs.values():
            try:
                p.proc.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
            p.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def push(
    bundle: Path, keys: Keys, host: str, port: int, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m tools push`` as a process (its table on stdout, its notes on stderr)."""
    cmd = [
        sys.executable, "-m", "tools", "push", str(bundle), "--key", str(keys.private_path),
        "--host", host, "--port", str(port), "--timeout", str(timeout), *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60)


def _unix(ts: str) -> float:
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def results(watch: Watcher, version: int) -> dict[str, float]:
    """device -> unix time (the device's own ``ts``: a watcher lagging behind a loaded
    machine does not count) of its ``accepted`` answer for ``version``."""
    out: dict[str, float] = {}
    for m in watch.messages:
        if m.topic.endswith("/update/result"):
            r = json.loads(m.payload)
            if r.get("version") == version and r.get("status") == "accepted":
                out.setdefault(str(r["device"]), _unix(r["ts"]))
    return out


def status_json(host: str, port: int) -> tuple[list[dict[str, Any]], float, float, int]:
    """``python -m tools status`` as a process, ``--json`` and as a table: (rows, wall seconds
    of the JSON run, seconds the table run said collecting took, table lines)."""
    cmd = [sys.executable, "-m", "tools", "status", "--host", host, "--port", str(port)]
    t0 = time.monotonic()
    out = subprocess.run([*cmd, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    wall = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    tab = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    took = float(tab.stderr.split("collected in ")[1].split()[0])
    return json.loads(out.stdout), wall, took, len(tab.stdout.splitlines())


def _spread(times: dict[str, float]) -> dict[str, float]:
    vals = sorted(times.values())
    if not vals:
        return {"spread_s": 0.0, "peak_per_s": 0}
    peak = max(sum(1 for v in vals if t <= v < t + 1.0) for t in vals)
    return {"first_s": vals[0], "spread_s": round(vals[-1] - vals[0], 2), "peak_per_s": peak}


def scenario(
    workdir: Path,
    broker: Mosquitto,
    keys: Keys,
    n: int,
    *,
    outage_s: float = 30.0,
    pace_s: float = 0.0,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Start ``n`` daemons on ``broker`` (persistence on, ``sys_interval 1``), push v2 to the
    group, restart the broker, take it away for ``outage_s``; returns the figures."""
    figures: dict[str, Any] = {"n": n}
    watch = Watcher(broker.host, broker.port, "#", client_id=f"fleet-watch-{os.getpid()}")
    sysw = Subscriber(broker.host, broker.port, "$SYS/broker/bytes/sent", qos=0)
    fleet = Fleet(workdir, n, [(broker.host, broker.port)], keys)
    try:
        t0 = time.monotonic()
        fleet.start_all(pace_s=pace_s)

        def predicting() -> bool:
            dead = fleet.dead()
            if dead:
                proc = next(p for i, p in fleet.procs.items() if device_id(i) == dead[0])
                raise AssertionError(f"{dead} exited: {proc.log()[-1500:]}")
            topics = {m.topic for m in watch.messages if m.topic.endswith("/prediction")}
            return len(topics) >= n

        watch.wait_until(predicting, 60 + 3 * n, "every device publishing predictions")
        figures["start_all_s"] = round(time.monotonic() - t0, 1)
        log(f"{n} daemons predicting after {figures['start_all_s']} s")
        time.sleep(5)
        rss = fleet.rss_kib()
        figures["rss_mib_mean"] = round(sum(r for r, _ in rss) / len(rss) / 1024, 1)
        figures["pss_mib_mean"] = round(sum(p for _, p in rss) / len(rss) / 1024, 1)
        pids = [p.pid for p in fleet.procs.values()]
        t_idle, cpu_idle = time.monotonic(), cpu_seconds(broker.pid)
        daemons_idle = sum(cpu_seconds(pid) for pid in pids)
        time.sleep(10)
        took = time.monotonic() - t_idle
        figures["broker_cpu_idle_pct"] = round(100 * (cpu_seconds(broker.pid) - cpu_idle) / took, 2)
        figures["daemon_cpu_pct_mean"] = round(
            100 * (sum(cpu_seconds(pid) for pid in pids) - daemons_idle) / took / len(pids), 2
        )
        discovery_start = watch.discovery_count()
        figures["discovery_at_start"] = discovery_start

        def bytes_sent() -> int:
            vals = [int(m.payload) for m in sysw.messages if m.payload.isdigit()]
            return vals[-1] if vals else 0

        # -- a group push -------------------------------------------------------------------
        bundle = workdir / "digits-v2.edgb"
        bundle.write_bytes(make_bundle(2, keys))
        time.sleep(1.5)
        b0, cpu_p0 = bytes_sent(), cpu_seconds(broker.pid)
        tp, unix0 = time.monotonic(), time.time()
        out = push(
            bundle, keys, broker.host, broker.port, "--group", GROUP, "--expect", str(n),
            "--no-wait-probation", timeout=60 + 2 * n,
        )  # fmt: skip
        push_wall = time.monotonic() - tp
        time.sleep(2.5)  # two $SYS intervals
        watch.wait_until(lambda: len(results(watch, 2)) >= n, 60, "the watcher sees every result")
        accepted = results(watch, 2)
        t_all = max(accepted.values(), default=float("nan")) - unix0
        figures["push"] = {
            "exit": out.returncode,
            "accepted": len(accepted),
            "time_to_all_accepted_s": round(t_all, 2),
            "push_tool_wall_s": round(push_wall, 2),
            "broker_bytes_sent": bytes_sent() - b0,
            "bundle_bytes": bundle.stat().st_size,
            "broker_cpu_s": round(cpu_seconds(broker.pid) - cpu_p0, 2),
            "per_device_s": {d: round(t - unix0, 2) for d, t in sorted(accepted.items())},
        }
        figures["push_stdout"] = out.stdout
        figures["push_stderr"] = out.stderr
        log(f"push: {len(accepted)}/{n} accepted, all in {t_all:.2f} s")

        # -- status ---------------------------------------------------------------------------
        time.sleep(3)
        rows, wall, took, lines = status_json(broker.host, broker.port)
        figures["status"] = {
            "devices": len(rows),
            "table_lines": lines,
            "wall_s": round(wall, 2),
            "collect_s": took,
            "online": sum(r["availability"] == "online" for r in rows),
            "v2": sum((r["model"] or {}).get("version") == 2 for r in rows),
        }

        # -- a broker restart ---------------------------------------------------------------
        d0 = watch.discovery_count()
        tr = time.monotonic()
        broker.restart()
        up = time.monotonic()
        watch.wait_until(lambda: len(watch.online_since(tr)) >= n, 60 + n, "all back online")
        figures["restart"] = {
            **_spread({d: t - up for d, t in watch.online_since(tr).items()}),
            "broker_cpu_s": round(cpu_seconds(broker.pid), 2),  # the new broker, so far
            "dead": fleet.dead(),
        }
        log(f"restart: {figures['restart']}")

        # -- an outage ----------------------------------------------------------------------
        time.sleep(5)
        to = time.monotonic()
        broker.stop()
        time.sleep(outage_s)
        broker.start()
        up = time.monotonic()
        watch.wait_until(lambda: len(watch.online_since(to)) >= n, 90 + n, "all back online")
        figures["outage"] = {
            "outage_s": outage_s,
            **_spread({d: t - up for d, t in watch.online_since(to).items()}),
            "broker_cpu_s": round(cpu_seconds(broker.pid), 2),
            "dead": fleet.dead(),
        }
        log(f"outage: {figures['outage']}")
        figures["discovery_after_reconnects"] = watch.discovery_count() - d0
        time.sleep(8 + n * 0.05)  # the spooled predictions flushed
        seqs = watch.seq_report()
        figures["seq"] = {
            "devices": len(seqs),
            "missing": sum(s["missing"] for s in seqs.values()),
            "received": sum(s["received"] for s in seqs.values()),
        }
        figures["wall_total_s"] = round(time.monotonic() - t0, 1)
        figures["dead"] = fleet.dead()
        return figures
    finally:
        fleet.close()
        watch.close()
        sysw.close()


def fleet_broker(make: Callable[..., Mosquitto]) -> Mosquitto:
    """A broker for the fleet: persistence (a restart keeps sessions and retained messages),
    $SYS every second, room for N clients' in-flight messages."""
    return make(
        persistence=True,
        extra_conf=["sys_interval 1", "max_queued_messages 10000", "max_inflight_messages 100"],
    )
