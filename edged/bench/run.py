"""``edged bench``: the bare interpreter against the whole daemon path, in one run.

For each backend and thread count it measures

- **bare**: ``set_tensor`` + ``invoke`` + ``get_tensor`` frames/s, warmed up;
- **pipeline**: frames/s of the real :class:`~edged.app.daemon.Daemon` — in-memory source →
  capture thread → preprocess → invoke → postprocess → policy → publish to a real broker,
  through the on-disk spool as by default —
  with frames (a) already at the model's input size and (b) 640×480 (resized per frame);
- the ratio pipeline/bare, per-frame time spent outside ``invoke`` (median, p99), and
  capture-to-subscriber latency (p50, p99) measured at a real MQTT subscriber;

then peak RSS and the CPU the daemon uses while it has no frames.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.app.daemon import Daemon, Inferred
from edged.bench.peers import PrivateBroker, Subscriber
from edged.config import Config, FilesSource, ModelConfig, MqttConfig, PublishConfig
from edged.errors import BenchError
from edged.infra.sdnotify import Notifier
from edged.model.classifier import Classifier
from edged.model.runtime import available_backends
from edged.publish.spool import SqliteOutbox
from edged.sources.base import Frame, FrameSource

STOP_S = 10.0  # longest a daemon under test may take to stop


class MemorySource(FrameSource):
    """The same frame over and over: at ``fps``, or (``fps=None``) on demand — a new frame
    is captured as soon as the previous one is taken, so one is always waiting, as from a
    camera exactly as fast as inference. ``fps=0``: never a frame (the idle case)."""

    def __init__(self, image: np.ndarray, fps: float | None) -> None:
        self.image, self.fps = image, fps
        self.taken = threading.Event()
        self._next = 0.0
        self._closed = threading.Event()

    def open(self) -> None:
        self._next = time.monotonic()
        self.taken.set()

    def read(self) -> Frame | None:
        if self.fps is None:
            while not self.taken.wait(0.2):
                if self._closed.is_set():
                    return None
            self.taken.clear()
            return Frame(self.image, time.monotonic())
        if self.fps <= 0:
            self._closed.wait()
            return None
        self._next += 1.0 / self.fps
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            self._next = time.monotonic()
        return Frame(self.image, time.monotonic())

    def close(self) -> None:
        self._closed.set()


class _BenchDaemon(Daemon):
    def __init__(self, cfg: Config, classifier: Classifier, source: MemorySource) -> None:
        super().__init__(cfg, classifier=classifier, notifier=Notifier({}))
        self._source = source
        self.lock = threading.Lock()  # held by the bare loop while it borrows the interpreter
        self.outside_ms: list[float] = []  # frame loop, per frame, outside invoke
        self.overlapped_ms: list[float] = []  # prepare + post: off the frame loop
        self.captured: dict[int, float] = {}
        self.invoked_ms: dict[int, float] = {}  # seq -> that frame's invoke time
        self._last_end: int | None = None  # the previous frame's end in the frame loop
        self.last_done = 0.0  # time.monotonic() at the end of the last frame's invoke

    def _make_source(self) -> FrameSource:
        return self._source

    def infer(self, frame: Frame) -> Inferred | None:
        # The frame loop's time per frame outside invoke: from the end of the previous frame
        # to the end of this one, less invoke and less any wait for the bare loop's lock.
        self._source.taken.set()
        t0 = time.perf_counter_ns()
        with self.lock:
            t1 = time.perf_counter_ns()
            item = super().infer(frame)
            t2 = time.perf_counter_ns()
            self.last_done = time.monotonic()
        if self._last_end is not None and item is not None:
            took = (t2 - self._last_end) - (t1 - t0)
            self.outside_ms.append(took / 1e6 - item.invoke_ms)
        self._last_end = t2
        return item

    def _finish(self, item: Inferred) -> None:
        t0 = time.perf_counter_ns()
        super()._finish(item)
        post_ms = (time.perf_counter_ns() - t0) / 1e6
        self.overlapped_ms.append(item.frame.prepare_ms + post_ms)
        self.captured[self.seq] = item.frame.captured
        self.invoked_ms[self.seq] = item.invoke_ms


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_parts_mib() -> dict[str, float]:
    """The resident set now, split (Linux): anonymous memory (this process's own) and file
    pages (shared libraries: how many of their pages are mapped depends on what the page cache
    holds, so this part varies between runs of the same code by several MiB)."""
    try:
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        return {
            key: int(status[field].split()[0]) / 1024.0
            for key, field in (("anon", "RssAnon"), ("file", "RssFile"))
        }
    except (OSError, KeyError, ValueError):
        return {"anon": float("nan"), "file": float("nan")}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class BenchOptions:
    model: Path
    seconds: float = 3.0
    warmup_s: float = 0.5
    threads: list[int] | None = None
    backends: list[str] | None = None
    host: str | None = None  # None = start a private broker
    port: int = 1883
    qos: int = 1
    idle_s: float = 2.0


def bare_loop(clf: Classifier, seconds: float) -> tuple[int, float, float]:
    """set_tensor + invoke + get_tensor on a fixed input for ``seconds``:
    (frames, seconds taken, median ms per frame)."""
    tensor = clf.preprocess(np.zeros((clf.info.height, clf.info.width, 3), np.uint8))
    interp, inp, out = clf.interpreter_handles()
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < t_end:
        interp.set_tensor(inp, tensor)
        interp.invoke()
        interp.get_tensor(out)
        times.append(time.perf_counter() - t0)
    return len(times), sum(times), statistics.median(times) * 1000.0


def _config(
    opts: BenchOptions, host: str, port: int, threads: int, backend: str, state_dir: Path
) -> Config:
    """The daemon as it runs by default (spool on, write-behind), publishing every frame."""
    return Config(
        device_id="bench",
        source=FilesSource(path="-"),
        model=ModelConfig(path=opts.model, threads=threads, backend=backend),
        mqtt=MqttConfig(host=host, port=port),
        publish=PublishConfig(mode="every", qos=opts.qos, heartbeat_s=0),
        state_dir=state_dir,
    )


def bench_image(shape: tuple[int, int, int]) -> np.ndarray:
    """A fixed, busy uint8 image: a hash of the pixel index. Not numpy.random, which the
    daemon never imports (alone: 1.7 MiB anonymous + 4.9 MiB library pages)."""
    n = np.arange(int(np.prod(shape)), dtype=np.uint32)
    return ((n * np.uint32(2654435761)) >> np.uint32(24)).astype(np.uint8).reshape(shape)


def pipeline(
    cfg: Config, clf: Classifier, image: np.ndarray, fps: float | None, opts: BenchOptions
) -> dict[str, float]:
    """Run the real daemon loop on an in-memory source; measure throughput and latency.

    With ``fps=None`` (a frame always waiting) throughput is measured in alternating slices:
    the bare loop (borrowing the same interpreter while the frame loop waits), then the
    pipeline, and so on — so both see the same machine load, and their ratio does not drift
    with whatever else the machine does. With a camera rate, only latency is measured.
    """
    sub = Subscriber(cfg.mqtt.host, cfg.mqtt.port, f"{cfg.mqtt.topic_prefix}/bench/prediction")
    try:
        with _running(_BenchDaemon(cfg, clf, MemorySource(image, fps))) as daemon:
            measured = _measure(daemon, clf, fps, opts)
        time.sleep(0.2)  # the last messages in flight
    finally:
        sub.close()
    return _figures(daemon, sub, measured)


@dataclass
class _Slices:
    """What ``_measure`` counted: frames and seconds of the bare and the pipeline slices."""

    skip: int  # frames of the warm-up, left out of the per-frame figures
    started: float  # time.monotonic() at the end of the warm-up
    bare_n: float = 0.0
    bare_t: float = 0.0
    pipe_n: float = 0.0
    pipe_t: float = 0.0
    invoke_ms: list[float] = field(default_factory=list)  # median invoke of each bare slice

    @property
    def fps(self) -> float:
        return self.pipe_n / self.pipe_t if self.pipe_t else float("nan")

    @property
    def bare_fps(self) -> float:
        return self.bare_n / self.bare_t if self.bare_t else float("nan")


def _measure(
    daemon: _BenchDaemon, clf: Classifier, fps: float | None, opts: BenchOptions
) -> _Slices:
    """While the daemon runs: the throughput slices (``fps=None``), or just wait."""
    time.sleep(opts.warmup_s)
    m = _Slices(skip=len(daemon.outside_ms), started=time.monotonic())
    slice_s = 0.5
    if fps is None:
        # Throughput: pair each pipeline slice with a bare one. A pipeline slice runs from the
        # release of the lock to the end of its last frame (counting whole frames in a fixed
        # window would undercount by up to a frame per slice: 25 % with a 125 ms model).
        with daemon.lock:  # start as the frame loop stands between two frames
            n0, t0 = daemon.processed, time.monotonic()
        for _ in range(max(2, round(opts.seconds / slice_s))):
            time.sleep(slice_s)
            with daemon.lock:
                n, last = daemon.processed - n0, daemon.last_done
                if n > 0:
                    m.pipe_n, m.pipe_t = m.pipe_n + n, m.pipe_t + last - t0
                nb, took, ms = bare_loop(clf, slice_s)
                m.bare_n, m.bare_t = m.bare_n + nb, m.bare_t + took
                m.invoke_ms.append(ms)
                n0, t0 = daemon.processed, time.monotonic()
    else:
        time.sleep(opts.seconds)
    return m


def _figures(daemon: _BenchDaemon, sub: Subscriber, m: _Slices) -> dict[str, float]:
    seqs = [s for s in daemon.captured if s in sub.received and daemon.captured[s] >= m.started]
    lat = [(sub.received[s] - daemon.captured[s]) * 1000.0 for s in seqs]
    # What edged adds to each frame's latency: all of it but that frame's own invoke.
    added = [ms - daemon.invoked_ms[s] for ms, s in zip(lat, seqs, strict=True)]
    outside = daemon.outside_ms[m.skip :]
    overlapped = daemon.overlapped_ms[m.skip :]
    return {
        "fps": m.fps,
        "bare_fps": m.bare_fps,
        "invoke_ms_p50": statistics.median(m.invoke_ms) if m.invoke_ms else float("nan"),
        "ratio": m.fps / m.bare_fps,  # nan when either is
        "outside_invoke_ms_p50": _pct(outside, 0.5),
        "outside_invoke_ms_p99": _pct(outside, 0.99),
        "overlapped_ms_p50": _pct(overlapped, 0.5),
        "latency_ms_p50": _pct(lat, 0.5),
        "latency_ms_p99": _pct(lat, 0.99),
        "latency_invoke_ms_p50": _pct([daemon.invoked_ms[s] for s in seqs], 0.5),
        "latency_added_ms_p50": _pct(added, 0.5),
        "latency_added_ms_p99": _pct(added, 0.99),
        "received": float(len(lat)),
        "dropped_frames": float(daemon.capture.dropped),
        "spool": float(isinstance(daemon.outbox, SqliteOutbox)),  # 1: through the disk spool
    }


@contextlib.contextmanager
def _running(daemon: _BenchDaemon) -> Iterator[_BenchDaemon]:
    """Run ``daemon`` in a thread; always stop it (BenchError if it does not stop)."""
    runner = threading.Thread(target=daemon.run, name="bench-daemon")
    runner.start()
    try:
        yield daemon
    finally:
        daemon.request_stop()  # run() stops capture and the publisher on its way out
        runner.join(STOP_S)
    if runner.is_alive():
        raise BenchError(f"the daemon under test did not stop within {STOP_S:g} s")


def idle_cpu(cfg: Config, clf: Classifier, seconds: float) -> float:
    """Percent of one core the daemon uses with a source that yields no frames."""
    with _running(_BenchDaemon(cfg, clf, MemorySource(np.zeros((1, 1, 3), np.uint8), fps=0))):
        time.sleep(0.5)
        c0, t0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = time.process_time(), time.monotonic()
    return 100.0 * (c1 - c0) / (t1 - t0)


def run(opts: BenchOptions) -> dict[str, Any]:
    backends = opts.backends or available_backends()
    threads = opts.threads or list(range(1, (os.cpu_count() or 1) + 1))
    results: list[dict[str, Any]] = []
    idle = rss_model_size = float("nan")
    parts = {"anon": float("nan"), "file": float("nan")}
    with contextlib.ExitStack() as stack:
        broker = PrivateBroker() if opts.host is None else None
        if broker is not None:
            stack.callback(broker.close)
        host, port = ("127.0.0.1", broker.port) if broker else (opts.host or "", opts.port)
        # Each daemon has stopped (and closed its spool) before the next starts and before this
        # is removed (_running).
        state = stack.enter_context(tempfile.TemporaryDirectory(prefix="edged-bench-state-"))
        for backend in backends:
            for n in threads:
                cfg = _config(opts, host, port, n, backend, Path(state))
                clf = Classifier.load(opts.model, threads=n, backend=backend)
                bare_loop(clf, opts.warmup_s)
                row: dict[str, Any] = {"backend": clf.info.backend, "threads": n}
                size = (clf.info.height, clf.info.width, 3)
                for tag, shape in (("model_size", size), ("640x480", (480, 640, 3))):
                    image = bench_image(shape)
                    # Throughput: a frame always waiting. Latency: a camera at half the
                    # inference rate, so frames never queue and the figure is edged's own.
                    p = pipeline(cfg, clf, image, None, opts)
                    slow = pipeline(cfg, clf, image, p["bare_fps"] / 2, opts)
                    p.update({k: v for k, v in slow.items() if k.startswith("latency_")})
                    row[tag] = p
                    if tag == "model_size":
                        row["bare_fps"] = p["bare_fps"]
                        row["invoke_ms_p50"] = p["invoke_ms_p50"]
                    if tag == "model_size" and np.isnan(rss_model_size):
                        rss_model_size = _peak_rss_mib()  # before 640x480 frames load OpenCV
                        parts = _rss_parts_mib()
                results.append(row)
                if np.isnan(idle):
                    idle = idle_cpu(cfg, clf, opts.idle_s)
    return {
        "model": str(opts.model),
        "cpu_count": os.cpu_count(),
        "results": results,
        "peak_rss_mib_model_size": rss_model_size,
        "rss_anon_mib_model_size": parts["anon"],
        "rss_file_mib_model_size": parts["file"],
        "peak_rss_mib": _peak_rss_mib(),
        "idle_cpu_percent": idle,
    }


def table(report: dict[str, Any]) -> str:
    head = (
        f"{'backend':<15}{'thr':>4}{'bare fps':>10}{'invoke':>8}"
        f"{'pipe fps':>10}{'ratio':>7}{'out p50':>9}{'out p99':>9}{'lat p50':>9}{'lat p99':>9}"
        f"{'added':>7}{'640x480':>9}{'ratio':>7}"
    )
    lines = [head]
    for r in report["results"]:
        m, v = r["model_size"], r["640x480"]
        lines.append(
            f"{r['backend']:<15}{r['threads']:>4}{r['bare_fps']:>10.1f}{r['invoke_ms_p50']:>8.2f}"
            f"{m['fps']:>10.1f}{m['ratio']:>7.3f}{m['outside_invoke_ms_p50']:>9.3f}"
            f"{m['outside_invoke_ms_p99']:>9.3f}{m['latency_ms_p50']:>9.2f}{m['latency_ms_p99']:>9.2f}"
            f"{m['latency_added_ms_p50']:>7.2f}{v['fps']:>9.1f}{v['ratio']:>7.3f}"
        )
    lines.append(
        f"peak RSS {report['peak_rss_mib_model_size']:.1f} MiB with model-size frames "
        f"(now: {report['rss_anon_mib_model_size']:.1f} anonymous, "
        f"{report['rss_file_mib_model_size']:.1f} shared-library pages), "
        f"{report['peak_rss_mib']:.1f} MiB after 640x480 ones (OpenCV); idle CPU {report['idle_cpu_percent']:.2f} % of a core"
    )
    return "\n".join(lines)
