"""Runtime statistics: a retained JSON snapshot on ``<prefix>/<device_id>/stats`` every
``[stats] interval_s`` seconds (the first ``FIRST_SNAPSHOT_S`` after start), and an optional
Prometheus endpoint on localhost.

Per frame the frame loop only appends the frame's classify time to a bounded buffer
(:meth:`Stats.record`, a ``deque.append``). Everything else is read when a snapshot is taken,
from a timer thread (or on request: the ``{"command": "stats"}`` control message): the daemon's
counters through ``probe``, the publisher's counters, the process's resident memory
(``/proc/self/statm``) and the CPU temperature (``/sys/class/thermal/thermal_zone0/temp``,
``null`` where there is none). Each snapshot closes an *interval*: ``fps`` and the inference
time percentiles cover the frames classified since the previous snapshot.

The Prometheus endpoint (``[stats] prometheus_port``, off by default; built in
:mod:`edged.features.metrics`) is prometheus-client's ``MetricsHandler`` on a stdlib
``http.server`` thread, serving ``GET /metrics`` only (text exposition format 0.0.4, or
OpenMetrics when asked), bound to ``127.0.0.1`` unless
``prometheus_host`` says otherwise. Its registry is the daemon's own (never prometheus-client's
global one) and holds one collector that reads the counters live at each scrape; the inference
summary and ``edged_fps`` are those of the last closed interval.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged.config import StatsConfig
from edged.infra import events
from edged.protocol import payloads as wire

if TYPE_CHECKING:  # imported when metrics are first asked for (Stats.registry)
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = logging.getLogger("edged.stats")

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
SAMPLES_MAX = 4096  # classify times kept per interval (the newest, when frames are faster)
IDLE_WINDOW_S = 60.0  # interval length when only the Prometheus endpoint is on
FIRST_SNAPSHOT_S = 5.0  # the first snapshot comes this soon after start (or one period, if shorter)


def cpu_temperature(path: Path = THERMAL_ZONE) -> float | None:
    """Degrees Celsius from a thermal zone (millidegrees in the file), or None if unreadable."""
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def rss_bytes() -> int | None:
    """Resident set size of this process now (Linux ``/proc``), or None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of an ascending list; None when empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Counters:
    """What the daemon reports at each snapshot (totals since it started)."""

    processed: int  # frames classified
    predictions: int  # predictions published
    captured: int  # frames the source delivered
    dropped: int  # frames replaced by a newer one before they were classified
    skipped: int  # unreadable inputs the source skipped
    paused: bool
    model: dict[str, Any]  # name, version, sha256
    mqtt: dict[str, int]  # Publisher.stats
    connected: bool
    spool_depth: int | None  # messages held in the spool file's outbox; None: no spool


@dataclass(slots=True)
class Interval:
    """One closed interval: rates and classify-time percentiles."""

    seconds: float = 0.0
    fps: float = 0.0
    capture_fps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    n: int = 0


@dataclass(slots=True)
class _Totals:
    count: int = 0  # classify times observed (Prometheus summary _count)
    sum_ms: float = 0.0
    last: Interval = field(default_factory=Interval)


class Stats:
    """``record(ms)`` per frame (frame loop); ``snapshot()`` / ``publish_now()`` from any
    thread; ``start()``/``stop()`` the timer and the HTTP endpoint."""

    def __init__(
        self,
        cfg: StatsConfig,
        device: str,
        probe: Callable[[], Counters],
        publish: Callable[[bytes], None],
        *,
        thermal_path: Path = THERMAL_ZONE,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self._probe = probe
        self._publish = publish
        self.thermal_path = thermal_path
        self._samples: deque[float] = deque(maxlen=SAMPLES_MAX)
        self.record: Callable[[float], None] = self._samples.append  # the per-frame cost
        self._lock = threading.Lock()  # the interval bookkeeping below
        self.started = time.monotonic()
        self._since = self.started
        self._last: Counters | None = None
        self._totals = _Totals()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: Any = None  # http.server.ThreadingHTTPServer while serving
        self._registry: CollectorRegistry | None = None  # made on first use (registry)
        self._server_thread: threading.Thread | None = None

    @property
    def period_s(self) -> float:
        return self.cfg.interval_s or IDLE_WINDOW_S

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """(host, port) the Prometheus endpoint listens on, or None."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.cfg.prometheus_port:
            self._serve(self.cfg.prometheus_host, self.cfg.prometheus_port)
        if self.cfg.interval_s > 0 or self._server is not None:
            self._thread = threading.Thread(target=self._run, name="edged-stats", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(1.0)

    def _run(self) -> None:
        # The first snapshot soon after start, not one period later: a subscriber (Home
        # Assistant's diagnostic sensors) has this run's figures within seconds.
        due = time.monotonic() + min(FIRST_SNAPSHOT_S, self.period_s)
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            now = time.monotonic()
            due = due + self.period_s if due + self.period_s > now else now + self.period_s
            try:
                if self.cfg.interval_s > 0:
                    self.publish_now()
                else:
                    self.snapshot()  # only closes the interval (for the endpoint)
            except Exception:  # a bug: keep the timer alive
                log.exception("stats snapshot failed")

    # -- snapshots ---------------------------------------------------------------------------

    def _close_interval(self, c: Counters) -> Interval:
        """Close the interval since the previous snapshot; ``_lock`` held."""
        now = time.monotonic()
        samples = [self._samples.popleft() for _ in range(len(self._samples))]
        samples.sort()
        seconds = max(now - self._since, 1e-9)
        last = self._last
        processed = c.processed - (last.processed if last is not None else 0)
        captured = c.captured - (last.captured if last is not None else 0)
        interval = Interval(
            seconds=seconds,
            fps=processed / seconds,
            capture_fps=captured / seconds,
            p50_ms=percentile(samples, 50),
            p99_ms=percentile(samples, 99),
            max_ms=samples[-1] if samples else None,
            n=len(samples),
        )
        self._since, self._last = now, c
        self._totals.count += len(samples)
        self._totals.sum_ms += math.fsum(samples)
        self._totals.last = interval
        return interval

    def snapshot(self) -> dict[str, Any]:
        """Close the current interval and return the stats payload
        (:class:`edged.protocol.payloads.Stats`, as its JSON object)."""
        c = self._probe()
        with self._lock:
            iv = self._close_interval(c)
        mqtt = c.mqtt
        return wire.Stats.model_construct(
            device=self.device,
            uptime_s=round(time.monotonic() - self.started, 1),
            interval_s=round(iv.seconds, 3),
            paused=c.paused,
            fps=round(iv.fps, 2),
            inference_ms=wire.InferenceTimes.model_construct(
                p50=_round(iv.p50_ms), p99=_round(iv.p99_ms), max=_round(iv.max_ms), n=iv.n
            ),
            frames=wire.FrameCounts.model_construct(
                captured=c.captured, processed=c.processed, dropped=c.dropped, skipped=c.skipped
            ),
            predictions=c.predictions,
            queue_depth=max(0, mqtt.get("queued", 0) - mqtt.get("inflight", 0)),
            spool_depth=c.spool_depth,
            mqtt=wire.MqttCounts.model_construct(
                connected=c.connected,
                published=mqtt.get("published", 0),
                failures=mqtt.get("failures", 0),
                dropped=mqtt.get("dropped", 0),
                inflight=mqtt.get("inflight", 0),
                reconnects=mqtt.get("reconnects", 0),
                dropped_by_broker=mqtt.get("dropped_by_broker", 0),
                takeovers=mqtt.get("takeovers", 0),
            ),
            rss_bytes=rss_bytes(),
            cpu_temp_c=cpu_temperature(self.thermal_path),
            model=wire.ModelRef.model_construct(
                name=c.model["name"], version=c.model["version"], sha256=c.model["sha256"]
            ),
        ).wire()

    def publish_now(self) -> dict[str, Any]:
        payload = self.snapshot()
        self._publish(events.dumps(payload))
        return payload

    # -- Prometheus --------------------------------------------------------------------------

    @property
    def registry(self) -> CollectorRegistry:
        """The daemon's own registry (the endpoint serves it; prometheus-client's global one is
        left alone), holding one collector that reads this object at each scrape.
        prometheus-client is imported here, when metrics are first asked for."""
        if self._registry is None:
            from edged.features.metrics import registry_of

            self._registry = registry_of(self.metric_families)
        return self._registry

    def metrics_text(self) -> str:
        """The Prometheus text exposition (0.0.4) of the current counters and the last interval."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode("utf-8")

    def metric_families(self) -> list[Metric]:
        """The metric families of one scrape: counters read now, the last closed interval."""
        from edged.features.metrics import metric_families

        c = self._probe()
        with self._lock:
            totals = self._totals
            iv, count, sum_ms = totals.last, totals.count, totals.sum_ms
        return metric_families(
            c, iv, count, sum_ms, uptime=time.monotonic() - self.started, rss=rss_bytes(),
            temp=cpu_temperature(self.thermal_path),
        )  # fmt: skip

    def _serve(self, host: str, port: int) -> None:
        from edged.features.metrics import serve

        served = serve(self.registry, host, port)
        if served is not None:
            self._server, self._server_thread = served


def _round(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)
