"""The daemon: capture thread → frame loop (inference) → post thread (policy, publish).

The capture thread reads and prepares only the frames the interpreters take next (it is asked
for one, :meth:`Capture.request`). The model may be run by several interpreters at once (a
plan such as ``2x1``, edged.model.autothreads): the frame loop is then one *lane* per
interpreter, the caller's thread and ``edged-lane-N`` threads, each taking a frame, running it
and handing the result on; results are finished in the order their frames were taken
(:class:`PostStage` tickets), so predictions go out in capture order with seq rising.

With a core to spare beside the interpreters' threads the stages overlap
(edged.frames.pipeline): the next frame is asked for as ``invoke`` starts on the current one,
and the post thread publishes the previous result while ``invoke`` runs. With every core in
the interpreters there is no post thread: each lane finishes results itself (in ticket order,
never waiting for another lane), and asks for its next frame after ``invoke``, so that it is
read and prepared while the lane finishes the current result (work beside a multi-threaded
``invoke`` slows all its threads, which wait for each other at every layer; for single-threaded
interpreters asking ahead gained no rate, measured, and doubled the latency).

Built from :class:`~edged.app.parts.Parts` (source, model, publisher, clock) and
:class:`~edged.app.parts.Features`; the constructor only records them. :meth:`Daemon.open`
takes the state dir's lock and builds the stages, :meth:`Daemon.start` starts the threads and
the connection, :meth:`Daemon.close` undoes both; :meth:`Daemon.run` is all three around the
frame loop. ``edged.app.compose`` builds the production daemon from a config.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np

from edged.app.extras import Extras
from edged.app.instance import InstanceLock
from edged.app.lifecycle import reload_ok
from edged.app.parts import Features, Parts
from edged.config import Config
from edged.features.stats import Counters, Stats
from edged.frames.capture import Capture, SourceHealth
from edged.frames.pipeline import PostStage, Preparer
from edged.frames.policy import PublishPolicy
from edged.infra import events
from edged.infra.sdnotify import Notifier
from edged.model import autothreads
from edged.model.classifier import Classifier, warm_up
from edged.model.runtime import interpreter_threads
from edged.protocol import payloads as wire
from edged.publish.api import PublisherAPI
from edged.publish.outbox import Outbox
from edged.publish.seq import SeqCounter, open_outbox
from edged.publish.spool import SqliteOutbox
from edged.sources.base import Frame, FrameSource
from edged.update.monitor import ServiceMonitor

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
    # Built by open() (None before it):
    classifier: Classifier
    outbox: Outbox
    seqs: SeqCounter
    publisher: PublisherAPI
    stats: Stats
    extras: Extras
    policy: PublishPolicy
    preparer: Preparer
    post: PostStage[Inferred]
    capture: Capture

    def __init__(
        self,
        cfg: Config,
        *,
        parts: Parts | None = None,
        features: Features | None = None,
        classifier: Classifier | None = None,
        notifier: Notifier | None = None,
        config_path: Path | None = None,
    ) -> None:
        """Records what it is given; opens, locks and starts nothing (see :meth:`open`).
        ``classifier``: short for ``parts=Parts.with_classifier(classifier)``."""
        if parts is None:
            parts = Parts.with_classifier(classifier) if classifier is not None else Parts()
        self.cfg = cfg
        self.parts = parts
        self.features = features if features is not None else Features()
        self.notifier = notifier or Notifier()
        self.clock = parts.clock
        self.config_path = config_path  # what a reload (SIGHUP) reads again
        self.running = False  # set once start() starts the MQTT client (edged.app.lifecycle)
        self.reexec = False  # run() returned for a reload: the caller executes edged again
        self.instance: InstanceLock | None = None
        self.paused = False  # frames are taken and dropped, not classified
        self.overlap = False  # a post thread beside the interpreters; next frame asked ahead
        self.monitor: ServiceMonitor | None = None
        self.processed = 0
        self._count = threading.Lock()  # processed is counted by every lane
        self.model_lock = threading.Lock()  # classifier and monitor change together
        self._lanes: list[threading.Thread] = []  # lanes beside the caller's (edged-lane-N)
        self._lane_error: BaseException | None = None
        self.published = 0  # predictions handed to the publisher by this run (not seq: it goes on)
        self.seq = 0
        self._state: str | None = None
        self._reload = threading.Event()
        self._stop = threading.Event()
        # Held by the post thread per result, and by control while it changes settings.
        self.settings_lock = threading.Lock()
        self._opened = self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Take the state dir's lock (exit status 4 for a second daemon on it), load the
        model, open the spool, build the stages. No thread runs, nothing is connected."""
        if self._opened:
            return
        self.instance = InstanceLock(self.cfg.state_dir)
        try:
            self._build()
        except BaseException:
            self.instance.release()
            raise
        self._opened = True

    def _build(self) -> None:
        cfg, parts = self.cfg, self.parts
        loaded = parts.load_model(cfg)
        self.classifier = loaded.classifier
        # <state_dir>/spool.sqlite3 (memory when off or unusable); seq continues across restarts.
        self.outbox, self.seqs = open_outbox(cfg)
        self.seq = self.seqs.last
        self.publisher = parts.make_publisher(cfg, self.outbox, self._on_message)
        self.topics = self.publisher.topics
        self.stats = Stats(cfg.stats, cfg.device_id, self._counters, self._publish_stats)
        self.extras = Extras(self, loaded.boot)
        self.policy = PublishPolicy(cfg.publish)
        # Overlap the stages only where a core is left beside the interpreters' threads: with
        # every core in the interpreters, work beside them slows them (edged.frames.pipeline).
        self.overlap = self._interpreter_threads() < autothreads.cores()
        self.preparer = Preparer(lambda: self.classifier)
        self.preparer.active = not self.paused
        self.post = PostStage(
            self._finish,
            on_error=self._stop.set,
            depth=max(4, 2 * self.classifier.lanes),
            inline=not self.overlap,
        )
        self.capture = Capture(
            self._make_source,
            read_timeout_s=cfg.source.read_timeout_s,
            retry_min_s=cfg.source.retry_min_s,
            retry_max_s=cfg.source.retry_max_s,
            on_health=self._publish_health,
            prepare=self.preparer,
            discard=self.preparer.release,
            max_pixels=cfg.source.max_image_pixels,
            demand=True,
        )

    def _interpreter_threads(self) -> int:
        """The threads of all the interpreters together."""
        plan = self.classifier.info.plan
        if plan.threads > 0:
            return plan.interpreters * plan.threads
        threads = self.cfg.model.threads  # a classifier built without a plan (tests)
        per = interpreter_threads(threads) if isinstance(threads, int) else autothreads.cores()
        return self.classifier.lanes * per

    def start(self) -> None:
        """:meth:`open`, one warm-up inference, then the publisher, the features and the
        capture and post threads."""
        self.open()
        if self._started:
            return
        info = self.classifier.info
        log.info(
            "model %s v%s (%s, %dx%dx%d %s, %s, %s)",
            info.name, info.version, info.sha256[:12], info.width, info.height,
            info.channels, info.dtype, info.backend, _plan_text(self.classifier),
        )  # fmt: skip
        warm_up(self.classifier)  # first-use imports and set-up now, not in the first frame
        if info.plan.threads:  # models loaded while it runs are not measured (autothreads)
            autothreads.daemon_running(info.plan)
        self._started = True
        self.running = True  # signals now stop or reload cleanly (edged.app.lifecycle)
        self.publisher.start()
        self.extras.start()
        if self.features.stats:
            self.stats.start()
        self.post.start()
        self.capture.start()
        self.capture.request()  # the first frame
        self._spawn_lanes()
        self.notifier.ready(f"classifying with {info.name}")

    def close(self) -> None:
        """Stop what :meth:`start` started and release what :meth:`open` took (idempotent)."""
        if self._started:
            self._started = False
            if self.reexec:
                self.notifier.reloading()
            else:
                self.notifier.stopping()
            self.capture.stop()
            self.post.close(0.5)
            self.extras.close()
            self.stats.stop()
            # A reload leaves "online": the same daemon is back within seconds.
            self.publisher.stop(availability=None if self.reexec else "stopped")
            autothreads.daemon_running(None)
            log.info(
                "stopped after %d frames (%d published)",
                self.processed, self.published,
            )  # fmt: skip
        if self._opened:
            self._opened = False
            self.seqs.close()
        if self.instance is not None:
            self.instance.release()

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.request_stop()
        self.close()

    def run(self) -> int:
        """Start, classify until stopped (or a finite source ends), publish what is queued,
        close."""
        try:
            self.start()
            try:
                self._loop()
            except BaseException:
                self._stop.set()  # the other lanes stop now, not after their next frames
                self.post.abort()
                raise
            finally:
                self._join_lanes()
            if self._lane_error is not None:
                raise self._lane_error
            self.post.close(POST_DRAIN_S)  # the last results are published before stopping
            if self.post.error is not None:
                raise self.post.error
        finally:
            self.close()
        return 0

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP (any thread or a signal handler): the frame loop checks the config file and
        its model and, if both are good, stops for a reload (:attr:`reexec`)."""
        self._reload.set()

    def _try_reload(self) -> None:
        self._reload.clear()
        if reload_ok(self.config_path):
            self.reexec = True
            self._stop.set()

    def _make_source(self) -> FrameSource:
        return self.parts.make_source(self.cfg.source, self.classifier.input_size())

    # -- the frame loop --------------------------------------------------------------------

    def _loop(self) -> None:
        cap = self.capture
        watchdog_s = self.notifier.watchdog_s
        while not self._stop.is_set():
            now = self.clock()
            cap.check_hang(now)
            hung = cap.hung_since
            if watchdog_s is None or hung is None or now - hung < watchdog_s:
                self.notifier.watchdog(now)
            frame = cap.get(POLL_S)
            if self._reload.is_set():
                self._try_reload()
            self.extras.between_frames()
            self._spawn_lanes()  # a new model may have more interpreters
            if frame is not None:
                self._take(frame)
            elif cap.ended:
                log.info("source ended")
                return

    def _take(self, frame: Frame) -> None:
        if self.paused:  # paused: the frame is dropped unclassified
            self.preparer.release(frame)
            self.post.skip(frame.ticket)
            self.capture.request()
        else:
            self.infer(frame)

    # -- lanes: the frame loop once more per interpreter -------------------------------------

    def _spawn_lanes(self) -> None:
        """One lane thread per interpreter beyond the first (the caller's thread is lane 0)."""
        while len(self._lanes) + 1 < self.classifier.lanes:
            index = len(self._lanes) + 1
            lane = threading.Thread(
                target=self._lane, args=(index,), name=f"edged-lane-{index}", daemon=True
            )
            self._lanes.append(lane)
            self.capture.request()  # its first frame; then one request per frame it takes
            lane.start()

    def _lane(self, index: int) -> None:
        cap = self.capture
        try:
            while not self._stop.is_set():
                if index >= self.classifier.lanes:  # the model now has fewer interpreters
                    self._stop.wait(POLL_S)
                    continue
                frame = cap.get(POLL_S)
                if frame is not None:
                    self._take(frame)
                elif cap.ended:
                    return
        except BaseException as err:  # raised again by run(); the other lanes stop
            self._lane_error = err
            self._stop.set()
            self.post.abort()

    def _join_lanes(self) -> None:
        for lane in self._lanes:
            lane.join(POST_DRAIN_S)

    def infer(self, frame: Frame) -> Inferred | None:
        """Frame loop: run the model on one frame and queue the result for the post thread;
        the next frame is asked for as ``invoke`` starts. A new model that fails is reported
        for rollback instead of raising (None)."""
        with self.model_lock:  # never a new model with the old one's monitor
            clf, monitor = self.classifier, self.monitor
        asked = False
        try:
            tensor = self.preparer.tensor_for(frame, clf)
            if self.overlap:
                self.capture.request()  # read and prepared on the spare core beside invoke
                asked = True
            raw, invoke_ms = clf.infer(tensor)
        except Exception as err:
            if not asked:  # one frame asked for per frame taken
                self.capture.request()
            self.post.skip(frame.ticket)
            self._failed(monitor, frame, err)
            return None
        finally:
            self.preparer.release(frame)
        if not self.overlap:  # every core in the interpreters: read the next frame while
            self.capture.request()  # this one is finished, not beside invoke
        with self._count:
            self.processed += 1
        item = Inferred(frame, clf, monitor, raw, invoke_ms)
        self.post.submit(item, frame.ticket)
        return item

    def _finish(self, item: Inferred) -> None:
        """Post thread: top-k, policy, publish; the new-model monitor's checks."""
        frame, monitor = item.frame, item.monitor
        with self.settings_lock:
            if self.paused:  # inferred before the pause: not published after "paused"
                return
            cfg, clock = self.cfg, self.clock
            t0 = clock()
            try:
                top = item.classifier.postprocess(item.raw, cfg.model.top_k)
            except Exception as err:
                self._failed(monitor, frame, err)
                return
            post_ms = (clock() - t0) * 1000.0
            self.stats.record(frame.prepare_ms + item.invoke_ms + post_ms)
            label, score = top[0]
            reason = self.policy.decide(label, score, clock())
            if reason is not None:
                self.seq = self.seqs.next()
                self.published += 1
                latency = {
                    "preprocess": frame.prepare_ms,
                    "invoke": item.invoke_ms,
                    "postprocess": post_ms,
                    "total": (clock() - frame.captured) * 1000.0,
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

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.extras.on_message(topic, payload)

    # -- what the features read and call ---------------------------------------------------

    def set_paused(self, paused: bool) -> None:
        """(Settings lock held, or before start.) Pause or resume classifying."""
        self.paused = paused
        self.preparer.active = not paused
        if paused:
            self.publisher.publish(self.topics.state, wire.PAUSED_STATE, qos=1, retain=True)
        else:  # start afresh: the next result is published as if just started
            self.policy = PublishPolicy(self.cfg.publish)
            self._state = None

    def _counters(self) -> Counters:
        cap, outbox = self.capture, self.outbox
        return Counters(
            processed=self.processed,
            predictions=self.published,
            captured=cap.frames,
            dropped=cap.dropped,
            skipped=cap.skipped,
            paused=self.paused,
            model=_model_ref(self.classifier).wire(),
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


def _plan_text(clf: Classifier) -> str:
    """``2x1 interpreters x threads``, or how many interpreters when the threads are unknown."""
    plan = clf.info.plan
    return f"{plan} interpreters x threads" if plan.threads else f"{clf.lanes} interpreter(s)"


def _model_ref(clf: Classifier) -> wire.ModelRef:
    info = clf.info
    return wire.ModelRef.model_construct(name=info.name, version=info.version, sha256=info.sha256)
