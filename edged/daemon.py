"""The frame loop: capture thread → newest frame → classify → policy → asynchronous publish."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

import numpy as np

from edged import events
from edged.capture import Capture, SourceHealth
from edged.config import Config
from edged.model.classifier import Classifier, Prediction
from edged.policy import PublishPolicy
from edged.publish.mqtt import Publisher
from edged.sdnotify import Notifier
from edged.sources import open_source
from edged.sources.base import Frame, FrameSource

log = logging.getLogger("edged")

POLL_S = 0.2  # longest the loop sleeps without a frame (stop and hang checks)


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        classifier: Classifier | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.classifier = classifier or Classifier.load(
            cfg.model.path,
            labels=cfg.model.labels,
            threads=cfg.model.threads,
            backend=cfg.model.backend,
            mean=cfg.model.mean,
            std=cfg.model.std,
            softmax=cfg.model.softmax,
        )
        self.notifier = notifier or Notifier()
        self.publisher = Publisher(cfg.mqtt, cfg.device_id, queue_max=cfg.publish.queue_max)
        self.topics = self.publisher.topics
        self.policy = PublishPolicy(cfg.publish)
        self.capture = Capture(
            self._make_source,
            read_timeout_s=cfg.source.read_timeout_s,
            retry_min_s=cfg.source.retry_min_s,
            retry_max_s=cfg.source.retry_max_s,
            on_health=self._publish_health,
        )
        self._stop = threading.Event()
        self.seq = 0
        self.processed = 0
        self._state: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        info = self.classifier.info
        log.info(
            "model %s v%s (%s, %dx%dx%d %s, %s)",
            info.name,
            info.version,
            info.sha256[:12],
            info.width,
            info.height,
            info.channels,
            info.dtype,
            info.backend,
        )
        # One warm-up inference: first-use imports and the interpreter's first-run set-up
        # happen now, not in the first frame's latency.
        w, h = self.classifier.input_size()
        self.classifier.classify(np.zeros((h, w, 3), np.uint8), 1)
        self.publisher.start()
        self.capture.start()
        self.notifier.ready(f"classifying with {info.name}")
        try:
            self._loop()
        finally:
            self.notifier.stopping()
            self.capture.stop()
            self.publisher.stop()
            log.info("stopped after %d frames (%d published)", self.processed, self.seq)
        return 0

    def _make_source(self) -> FrameSource:
        return open_source(self.cfg.source, self.classifier.input_size())

    # -- the frame loop --------------------------------------------------------------------

    def _loop(self) -> None:
        cap = self.capture
        watchdog_s = self.notifier.watchdog_s
        while not self._stop.is_set():
            now = time.monotonic()
            cap.check_hang(now)
            hung = cap.hung_since
            if watchdog_s is None or hung is None or now - hung < watchdog_s:
                self.notifier.watchdog(now)
            frame = cap.get(POLL_S)
            if frame is not None:
                self.process(frame)
            elif cap.ended:
                log.info("source ended")
                return

    def process(self, frame: Frame) -> Prediction:
        cfg = self.cfg
        pred = self.classifier.classify(frame.image, cfg.model.top_k)
        self.processed += 1
        reason = self.policy.decide(pred.label, pred.score, time.monotonic())
        if reason is None:
            return pred
        self.seq += 1
        payload = events.prediction_event(
            device=cfg.device_id,
            seq=self.seq,
            captured=frame.captured,
            reason=reason,
            label=pred.label,
            score=pred.score,
            top=pred.top,
            model=self.model_ref(),
            latency_ms=_latency(pred, frame),
            frame=frame.name,
        )
        self.publisher.publish(self.topics.prediction, events.dumps(payload), qos=cfg.publish.qos)
        if pred.label != self._state:
            self._state = pred.label
            self.publisher.publish(self.topics.state, pred.label, qos=1, retain=True)
        log.debug("published seq=%d %s %.3f (%s)", self.seq, pred.label, pred.score, reason)
        return pred

    def model_ref(self) -> dict[str, Any]:
        info = self.classifier.info
        return {"name": info.name, "version": info.version, "sha256": info.sha256}

    def _publish_health(self, health: SourceHealth) -> None:
        payload = events.health_event(
            device=self.cfg.device_id,
            source_ok=health.ok,
            error=health.error,
            faults=health.faults,
            skipped=self.capture.skipped,
        )
        self.publisher.publish(self.topics.health, events.dumps(payload), qos=1, retain=True)


def _latency(pred: Prediction, frame: Frame) -> dict[str, float]:
    total = (time.monotonic() - frame.captured) * 1000.0
    return {
        "preprocess": pred.preprocess_ms,
        "invoke": pred.invoke_ms,
        "postprocess": pred.postprocess_ms,
        "total": total,
    }
