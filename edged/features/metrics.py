"""The Prometheus side of :mod:`edged.features.stats`: the metric families of one scrape, the
daemon's own registry, and the ``/metrics`` endpoint (prometheus-client's ``MetricsHandler`` on
a stdlib ``http.server`` thread).

prometheus-client is imported by this module only, and this module only when metrics are
first asked for (``Stats.registry``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, MetricsHandler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edged.features.stats import Counters, Interval

log = logging.getLogger("edged.stats")

MODEL_LABELS = ("name", "version", "sha256")  # edged_model_info's labels


def registry_of(collect: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A registry of its own (prometheus-client's global one is left alone) holding one
    collector that calls ``collect`` at each scrape."""

    class Figures(Collector):
        def collect(self) -> Iterable[Metric]:
            return collect()

    registry = CollectorRegistry()
    registry.register(Figures())
    return registry


def metric_families(
    c: Counters, iv: Interval, count: int, sum_ms: float, *, uptime: float,
    rss: int | None, temp: float | None,
) -> list[Metric]:  # fmt: skip
    """The metric families of one scrape: counters ``c`` read now, ``iv`` the last closed
    interval, ``count``/``sum_ms`` the classify times of all intervals."""
    mqtt = c.mqtt
    queued = max(0, mqtt.get("queued", 0) - mqtt.get("inflight", 0))
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    summary = Metric(
        "edged_inference_seconds",
        "Time to classify one frame (preprocess, invoke, postprocess); quantiles over the "
        "last interval.",
        "summary",
    )
    summary.add_sample("edged_inference_seconds", {"quantile": "0.5"}, _nan(iv.p50_ms))
    summary.add_sample("edged_inference_seconds", {"quantile": "0.99"}, _nan(iv.p99_ms))
    summary.add_sample("edged_inference_seconds_sum", {}, sum_ms / 1000.0)
    summary.add_sample("edged_inference_seconds_count", {}, count)
    families: list[Metric] = [
        gauge("edged_uptime_seconds", "Seconds since the daemon started.",
              value=uptime),
        gauge("edged_paused", "1 while classification is paused.", value=int(c.paused)),
        counter("edged_frames_captured_total", "Frames the source delivered.",
                value=c.captured),
        counter("edged_frames_processed_total", "Frames classified.", value=c.processed),
        counter("edged_frames_dropped_total",
                "Frames replaced by a newer one before they were classified.",
                value=c.dropped),
        counter("edged_frames_skipped_total", "Unreadable inputs skipped.", value=c.skipped),
        counter("edged_predictions_published_total", "Prediction events published.",
                value=c.predictions),
        gauge("edged_fps", "Frames classified per second over the last interval.",
              value=iv.fps),
        summary,
        gauge("edged_mqtt_connected", "1 while connected to the broker.",
              value=int(c.connected)),
        counter("edged_mqtt_messages_published_total",
                "Messages the broker acknowledged (QoS 0: sent).",
                value=mqtt.get("published", 0)),
        counter("edged_mqtt_publish_failures_total",
                "Messages rejected by the broker or undeliverable.",
                value=mqtt.get("failures", 0)),
        counter("edged_mqtt_messages_dropped_total",
                "Messages dropped because the outbox was full (oldest first).",
                value=mqtt.get("dropped", 0)),
        counter("edged_mqtt_reconnects_total", "Reconnections to the broker.",
                value=mqtt.get("reconnects", 0)),
        counter("edged_mqtt_messages_dropped_by_broker_total",
                "Messages the broker refused or could not take (refusal in PUBACK/PUBREC, "
                "over its packet size limit), dropped.",
                value=mqtt.get("dropped_by_broker", 0)),
        counter("edged_mqtt_takeovers_total",
                "Connections taken over by another client with the same client id.",
                value=mqtt.get("takeovers", 0)),
        gauge("edged_mqtt_queue_depth", "Messages waiting to be sent.", value=queued),
        gauge("edged_mqtt_inflight", "Messages sent and not yet acknowledged.",
              value=mqtt.get("inflight", 0)),
    ]  # fmt: skip
    if c.spool_depth is not None:
        families.append(gauge("edged_spool_depth", "Messages held in the on-disk outbox.",
                              value=c.spool_depth))  # fmt: skip
    if rss is not None:
        families.append(gauge("edged_resident_memory_bytes", "Resident memory of the daemon.",
                              value=rss))  # fmt: skip
    if temp is not None:
        families.append(gauge("edged_cpu_temperature_celsius", "CPU temperature.", value=temp))
    info = gauge("edged_model_info", "The model classifying frames (always 1).",
                 labels=MODEL_LABELS)  # fmt: skip
    info.add_metric([_label(c.model.get(k)) for k in MODEL_LABELS], 1)
    families.append(info)
    return families


def serve(
    registry: CollectorRegistry, host: str, port: int
) -> tuple[ThreadingHTTPServer, threading.Thread] | None:
    """Serve ``GET /metrics`` from ``registry`` on ``host:port`` (a daemon thread); None, and
    an error in the log, when it cannot listen."""
    served = registry

    class Handler(MetricsHandler):
        registry = served
        timeout = 5  # seconds a client may take to send its request

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics here")
                return
            try:
                super().do_GET()  # renders the whole body before it sends anything
            except Exception:
                log.exception("metrics failed")
                self.send_error(500)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per scrape would flood the journal

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as err:
        log.error(
            "metrics endpoint: cannot listen on %s:%d (%s); continuing without it",
            host,
            port,
            err.strerror or err,
        )
        return None
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="edged-metrics",
        daemon=True,
    )  # fmt: skip
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    log.info("metrics on http://%s:%d/metrics", bound_host, bound_port)
    return server, thread


def _nan(ms: float | None) -> float:
    """Milliseconds as seconds; NaN for none (a quantile of an empty interval)."""
    return math.nan if ms is None else ms / 1000.0


def _label(value: Any) -> str:
    return "" if value is None else str(value)
