"""The daemon: capture thread → frame loop (inference) → post thread (policy, publish).

The three stages overlap (edged.frames.pipeline): the capture thread prepares the next frame's
input tensor and the post thread publishes the previous result while ``invoke`` runs."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from edged.app.instance import InstanceLock
from edged.config import Config, check_files, load_config
from edged.errors import ConfigError
from edged.features.control import Control, Settings
from edged.features.homeassistant import Discovery
from edged.features.stats import Counters, Stats, cpu_temperature
from edged.frames.capture import Capture, SourceHealth
from edged.frames.pipeline import PostStage, Preparer
from edged.frames.policy import PublishPolicy
from edged.infra import events
from edged.infra.guard import KindLog, one_line
from edged.infra.sdnotify import Notifier
from edged.model.classifier import Classifier
from edged.model.runtime import interpreter_threads
from edged.protocol import payloads as wire
from edged.publish.mqtt import Publisher
from edged.publish.seq import open_outbox
from edged.publish.spool import SqliteOutbox
from edged.sources import open_source
from edged.sources.base import Frame, FrameSource
from edged.update.models import boot as boot_model
from edged.update.monitor import ServiceMonitor
from edged.update.updater import Updater

log = logging.getLogger("edged")

POLL_S = 0.2  # longest the loop sleeps without a frame (stop and hang checks)
POST_DRAIN_S = 5.0  # at most this long to publish the results still queued when stopping


@dataclass(slots=True)
class Inferred:
    """A frame's raw model output, from the frame loop to the post thread."""

    frame: Frame
    classifier: Classifier
    monitor: ServiceMonitor | None
    raw: np.ndarray
    invoke_ms: float


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        classifier: Classifier | None = None,
        notifier: Notifier | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path  # what a reload (SIGHUP) reads again
        self.running = False  # set once run() starts the MQTT client (edged.app.lifecycle)
        self.reexec = False  # run() returned for a reload: the caller executes edged again
        self._reload = threading.Event()
        # One daemon per state dir (exit status 4 for a second one), before anything in it is
        # opened; held until run() ends (edged.app.instance).
        self.instance = InstanceLock(cfg.state_dir)
        try:
            self._init(cfg, classifier, notifier)
        except BaseException:
            self.instance.release()
            raise

    def _init(self, cfg: Config, classifier: Classifier | None, notifier: Notifier | None) -> None:
        # The stored model of the last update wins over model.path (edged.update.models).
        boot = boot_model(cfg) if classifier is None else None
        if boot is not None:
            classifier = boot.classifier
        self.classifier = classifier or Classifier.from_config(cfg.model)
        self.notifier = notifier or Notifier()
        # <state_dir>/spool.sqlite3 (memory when off or unusable); seq continues across restarts.
        self.outbox, self.seqs = open_outbox(cfg)
        self.publisher = Publisher(
            cfg.mqtt, cfg.device_id, outbox=self.outbox, on_message=self._on_message
        )
        self.topics = self.publisher.topics
        # A classifier passed in (edged bench, tests) runs without updates: no stored state.
        self.updater = (
            Updater(cfg, self.publisher, self.classifier, boot)
            if cfg.update.enabled and boot is not None
            else None
        )
        # Watches a newly installed model in service (None: nothing to roll back to).
        self.monitor: ServiceMonitor | None = (
            self.updater.initial_monitor() if self.updater is not None else None
        )
        # Stats, Home Assistant discovery, settings over MQTT (edged.features.stats, edged.features.homeassistant,
        # edged.features.control). A classifier passed in (edged bench) gets no discovery and no control.
        self.stats = Stats(cfg.stats, cfg.device_id, self._counters, self._publish_stats)
        self.ha = (
            Discovery(
                cfg.homeassistant,
                self.publisher,
                diagnostics=cfg.stats.interval_s > 0,
                cpu_temperature=cpu_temperature() is not None,
            )
            if boot is not None
            else None
        )
        self.paused = False  # frames are taken and dropped, not classified
        self.control = (
            Control(cfg, self.publisher, apply=self._apply_settings, commands=self._commands())
            if cfg.control.enabled and boot is not None
            else None
        )
        if self.control is not None:  # <state_dir>/overrides.json over the config file
            start = self.control.load()
            cfg.publish, cfg.model, self.paused = start.publish, start.model, start.paused
        self.policy = PublishPolicy(cfg.publish)
        # Overlap the stages only where a core is left beside the interpreter's threads: with
        # every core in the interpreter, work beside it slows all of them (edged.frames.pipeline).
        self.overlap = interpreter_threads(cfg.model.threads) < _cores()
        self.preparer = Preparer(lambda: self.classifier)
        self.preparer.active = not self.paused
        self.post: PostStage[Inferred] = PostStage(
            self._finish, on_error=self._stop_soon, inline=not self.overlap
        )
        # Held by the post thread per result, and by control while it changes settings.
        self._settings_lock = threading.Lock()
        self.capture = Capture(
            self._make_source,
            read_timeout_s=cfg.source.read_timeout_s,
            retry_min_s=cfg.source.retry_min_s,
            retry_max_s=cfg.source.retry_max_s,
            on_health=self._publish_health,
            prepare=self.preparer,
            discard=self.preparer.release,
            max_pixels=cfg.source.max_image_pixels,
        )
        self._stop = threading.Event()
        self._guard_log = KindLog(log)
        self.seq = self.seqs.last
        self.processed = 0
        self.published = 0  # predictions handed to the publisher by this run (not seq: it goes on)
        self._state: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def request_reload(self) -> None:
        """SIGHUP (any thread or a signal handler): the frame loop checks the config file and
        its model and, if both are good, stops for a reload (:attr:`reexec`)."""
        self._reload.set()

    def _try_reload(self) -> None:
        self._reload.clear()
        path = self.config_path
        if path is None:
            log.warning("reload requested: no config file to read again; going on")
            return
        try:
            cfg = load_config(path)
            problems = check_files(cfg)
            if problems:
                raise ConfigError(problems)
            Classifier.from_config(cfg.model)  # loads, checks, is dropped
        except ConfigError as err:
            log.error(
                "reload refused, going on as before: %s", one_line("; ".join(err.problems), 500)
            )
            return
        except Exception as err:
            log.error("reload refused, going on as before: %s", one_line(err, 500))
            return
        log.info("reloading: %s and its model are good; restarting in place", path)
        self.reexec = True
        self._stop.set()

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
        self.running = True  # signals now stop or reload cleanly (edged.app.lifecycle)
        self.publisher.start()
        if self.updater is not None:
            self.updater.start()
        self._start_extras()
        self.post.start()
        self.capture.start()
        self.notifier.ready(f"classifying with {info.name}")
        try:
            self._loop()
            self.post.close(POST_DRAIN_S)  # the last results are published before stopping
            if self.post.error is not None:
                raise self.post.error
        finally:
            if self.reexec:
                self.notifier.reloading()
            else:
                self.notifier.stopping()
            self.capture.stop()
            self.post.close(0.5)
            if self.control is not None:
                self.control.close()  # a coalesced overrides.json write still pending
            if self.updater is not None:
                self.updater.stop()
            self.stats.stop()
            # A reload leaves "online": the same daemon is back within seconds.
            self.publisher.stop(availability=None if self.reexec else "stopped")
            self.seqs.close()
            self.instance.release()
            log.info("stopped after %d frames (%d published)", self.processed, self.published)
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
            if self._reload.is_set():
                self._try_reload()
            self._take_new_model()
            self._take_requests()
            if frame is not None:
                if self.paused:  # paused: the frame is dropped unclassified
                    self.preparer.release(frame)
                else:
                    self.infer(frame)
            elif cap.ended:
                log.info("source ended")
                return

    def infer(self, frame: Frame) -> Inferred | None:
        """Frame loop: run the model on one frame and queue the result for the post thread.
        A new model that fails is reported for rollback instead of raising (None)."""
        clf, monitor = self.classifier, self.monitor
        try:
            raw, invoke_ms = clf.infer(self.preparer.tensor_for(frame, clf))
        except Exception as err:
            self._failed(monitor, frame, err)
            return None
        finally:
            self.preparer.release(frame)
        self.processed += 1
        item = Inferred(frame, clf, monitor, raw, invoke_ms)
        self.post.submit(item)
        return item

    def _finish(self, item: Inferred) -> None:
        """Post thread: top-k, policy, publish; the new-model monitor's checks."""
        frame, monitor = item.frame, item.monitor
        with self._settings_lock:
            if self.paused:  # inferred before the pause: not published after "paused"
                return
            cfg = self.cfg
            t0 = time.perf_counter_ns()
            try:
                top = item.classifier.postprocess(item.raw, cfg.model.top_k)
            except Exception as err:
                self._failed(monitor, frame, err)
                return
            post_ms = (time.perf_counter_ns() - t0) / 1e6
            self.stats.record(frame.prepare_ms + item.invoke_ms + post_ms)
            label, score = top[0]
            reason = self.policy.decide(label, score, time.monotonic())
            if reason is not None:
                self.seq = self.seqs.next()
                self.published += 1
                latency = {
                    "preprocess": frame.prepare_ms,
                    "invoke": item.invoke_ms,
                    "postprocess": post_ms,
                    "total": (time.monotonic() - frame.captured) * 1000.0,
                }
                payload = wire.prediction(
                    device=cfg.device_id,
                    seq=self.seq,
                    ts=events.iso_utc(events.wall_time(frame.captured)),
                    reason=reason,
                    label=label,
                    score=score,
                    top=top,
                    model=_model_ref(item.classifier),
                    latency_ms=latency,
                    frame=frame.name,
                )
                self.publisher.publish(
                    self.topics.prediction, payload.to_bytes(), qos=cfg.publish.qos
                )
                if label != self._state:
                    self._state = label
                    self.publisher.publish(
                        self.topics.state, events.utf8(label), qos=1, retain=True
                    )
                log.debug("published seq=%d %s %.3f (%s)", self.seq, label, score, reason)
        if monitor is not None:
            monitor.observe(top, frame.image)

    @staticmethod
    def _failed(monitor: ServiceMonitor | None, frame: Frame, err: Exception) -> None:
        if monitor is None or not monitor.failure(f"{type(err).__name__}: {err}"):
            raise err
        log.error("frame %s lost: %s", frame.name or "", err)

    def _stop_soon(self) -> None:
        self._stop.set()

    # -- model updates (edged.update) -------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        # paho's thread: each of these only queues or flags, and none may raise into paho
        # (a handler's bug costs that message and a rate-limited log line, nothing more).
        try:
            if self.control is not None and self.control.wants(topic):
                self.control.on_message(topic, payload)
            elif self.ha is not None and self.ha.wants(topic):
                self.ha.on_message(topic, payload)
            elif self.updater is not None:
                self.updater.on_message(topic, payload)
        except Exception as err:
            self._guard_log.error(
                "message",
                f"handling a message on {one_line(topic, 120)} failed: {one_line(repr(err))}",
            )

    def _take_new_model(self) -> None:
        """Between two frames: swap in a model the update thread loaded (a pointer swap)."""
        swap = self.updater.slot.take() if self.updater is not None else None
        if swap is None:
            return
        old, self.classifier = self.classifier, swap.classifier
        self.monitor = swap.monitor
        swap.complete(old, time.monotonic())
        info = self.classifier.info
        log.info("now classifying with %s v%s (%s)", info.name, info.version, info.sha256[:12])
        if self.ha is not None and self.cfg.homeassistant.enabled and not self.ha.removed:
            self.ha.announce(info)  # the device's model name changed

    def model_ref(self) -> dict[str, Any]:
        return _model_ref(self.classifier).wire()

    # -- stats, Home Assistant, control (edged.features.stats, edged.features.homeassistant, edged.features.control) ------

    def _start_extras(self) -> None:
        if self.ha is not None:
            self.ha.start(self.classifier.info)
        if self.control is not None:
            self.control.subscribe()
        if self.paused:
            log.info("paused (overrides.json): frames are not classified")
            self.publisher.publish(self.topics.state, wire.PAUSED_STATE, qos=1, retain=True)
        self.stats.start()

    def _take_requests(self) -> None:
        """Between two frames: control messages, Home Assistant's birth message (neither may
        stop the frame loop)."""
        if self.control is not None:
            self.control.poll()
        if self.ha is not None:
            try:
                self.ha.poll(self.classifier.info)
            except Exception as err:  # a bug: the announcement is lost, frames go on
                self._guard_log.error("ha", f"home assistant: {one_line(repr(err))}")

    def _apply_settings(self, settings: Settings) -> None:
        with self._settings_lock:  # not while the post thread handles a result
            cfg = self.cfg
            if settings.publish != cfg.publish:
                cfg.publish = settings.publish
                self.policy.reconfigure(settings.publish)
            cfg.model = settings.model
            if settings.paused == self.paused:
                return
            self.paused = settings.paused
            self.preparer.active = not self.paused
            if self.paused:
                log.info("paused: frames are not classified")
                self.publisher.publish(self.topics.state, wire.PAUSED_STATE, qos=1, retain=True)
            else:  # start afresh: the next result is published as if just started
                log.info("resumed")
                self.policy = PublishPolicy(cfg.publish)
                self._state = None

    def _commands(self) -> dict[str, Callable[[], object]]:
        commands: dict[str, Callable[[], object]] = {"stats": self.stats.publish_now}
        ha = self.ha
        if ha is not None:
            commands["ha_remove"] = ha.remove
            if self.cfg.homeassistant.enabled:
                commands["ha_announce"] = lambda: ha.announce(self.classifier.info)
        return commands

    def _counters(self) -> Counters:
        cap, outbox = self.capture, self.outbox
        return Counters(
            processed=self.processed,
            predictions=self.published,
            captured=cap.frames,
            dropped=cap.dropped,
            skipped=cap.skipped,
            paused=self.paused,
            model=self.model_ref(),
            mqtt=self.publisher.stats,
            connected=self.publisher.connected,
            spool_depth=len(outbox) if isinstance(outbox, SqliteOutbox) else None,
        )

    def _publish_stats(self, payload: bytes) -> None:
        self.publisher.publish(self.topics.stats, payload, qos=1, retain=True)

    def _publish_health(self, health: SourceHealth) -> None:
        payload = wire.Health.model_construct(
            device=self.cfg.device_id,
            source=wire.SourceStatus.model_construct(
                ok=health.ok, error=health.error, faults=health.faults, skipped=self.capture.skipped
            ),
        )
        self.publisher.publish(self.topics.health, payload.to_bytes(), qos=1, retain=True)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _model_ref(clf: Classifier) -> wire.ModelRef:
    info = clf.info
    return wire.ModelRef.model_construct(name=info.name, version=info.version, sha256=info.sha256)
