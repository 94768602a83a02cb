"""One ``edged bench`` case, run in a process of its own (``python -m edged.bench.cases SPEC``)
so its CPU time and peak RSS are its own: the bare interpreter, the daemon (built from the
same :class:`~edged.app.parts.Parts` as ``edged run``, with an in-memory source), or a plain
loop as a user would write it.

Each prints one JSON line: the measurement window (``time.monotonic()``, the same clock in
every process), the predictions made in it, the CPU seconds the process used in it, its peak
RSS, and per published seq the time its frame was captured (the subscriber in the parent
times the arrival).
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.sources.base import Frame, FrameSource


class MemorySource(FrameSource):
    """A camera in memory: each read copies the frame out of the "driver's" buffer (the
    decode step), at ``fps`` or (``fps=None``) at once: a source faster than the model.
    ``fps=0``: never a frame (the idle case). Capture times are kept per read, in order."""

    def __init__(self, image: np.ndarray, fps: float | None) -> None:
        self.image, self.fps = image, fps
        self.reads: list[float] = []
        self._next = 0.0
        self._closed = threading.Event()

    def open(self) -> None:
        self._next = time.monotonic()

    def read(self) -> Frame | None:
        if self.fps is not None:
            if self.fps <= 0:
                self._closed.wait()
                return None
            self._next += 1.0 / self.fps
            delay = self._next - time.monotonic()
            if delay > 0:
                self.pace(time.sleep, delay)
            else:  # late: the frames due meanwhile were never decoded
                missed = int(-delay * self.fps)
                self.dropped += missed
                self._next += missed / self.fps
        now = time.monotonic()
        self.reads.append(now)
        return Frame(self.image.copy(), now)

    def close(self) -> None:
        self._closed.set()


def bench_image(shape: tuple[int, int, int]) -> np.ndarray:
    """A fixed, busy uint8 image: a hash of the pixel index (not numpy.random, which the
    daemon never imports)."""
    n = np.arange(int(np.prod(shape)), dtype=np.uint32)
    return ((n * np.uint32(2654435761)) >> np.uint32(24)).astype(np.uint8).reshape(shape)


@dataclass
class Result:
    t0: float = 0.0
    t1: float = 0.0
    n: int = 0  # predictions made in the window
    cpu_s: float = 0.0
    latency_ms: list[float] = field(default_factory=list)  # bare: per invoke
    captured: dict[int, float] = field(default_factory=dict)  # seq -> capture time
    plan: str = ""  # interpreters x threads, e.g. "2x1"
    extra: dict[str, Any] = field(default_factory=dict)


def model_bytes(path: str) -> bytes:
    """The ``.tflite`` model in ``path``, a bundle's model for an ``.edgb``."""
    from edged.model import bundle

    data = Path(path).read_bytes()
    if bundle.is_bundle(data):
        return bundle.read_bundle(data, allow_unsigned=True).model_bytes
    return data


def _reraised(fn: Callable[[], None]) -> Callable[[], None]:
    """A thread body whose exception :func:`_check` raises again in the main thread."""

    def body() -> None:
        try:
            fn()
        except BaseException as err:
            errors[body] = err

    return body


errors: dict[Callable[[], None], BaseException] = {}


def _check(body: Callable[[], None]) -> None:
    if body in errors:
        raise errors[body]


def _window(warmup_s: float, seconds: float, count: Any) -> tuple[float, float, int, float]:
    time.sleep(warmup_s)
    n0, c0, t0 = count(), time.process_time(), time.monotonic()
    time.sleep(seconds)
    n1, c1, t1 = count(), time.process_time(), time.monotonic()
    return t0, t1, n1 - n0, c1 - c0


def bare(spec: dict[str, Any]) -> Result:
    """set_tensor + invoke + get_tensor alone, as fast as it goes or at ``fps``; with
    ``interpreters`` > 1, that many interpreters at once, each in a thread of its own (a
    paced camera's frames go to whichever is free)."""
    from edged.model.runtime import load_interpreter

    model = model_bytes(spec["model"])
    k = int(spec.get("interpreters", 1))
    interps = [load_interpreter(model, spec["threads"], spec["backend"])[0] for _ in range(k)]
    fps: float = spec.get("fps") or 0.0
    stop, lock = threading.Event(), threading.Lock()
    times: list[float] = []
    due = [time.monotonic()]

    def wait_turn() -> None:
        with lock:  # the camera's next frame, for whichever interpreter asks first
            due[0] += 1.0 / fps
            if (d := due[0] - time.monotonic()) <= 0:  # late: no burst to catch up
                due[0] = time.monotonic()
                return
        time.sleep(d)

    def loop(interp: Any) -> None:
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        tensor = np.zeros(inp["shape"], inp["dtype"])
        while not stop.is_set():
            if fps:
                wait_turn()
            t0 = time.perf_counter()
            interp.set_tensor(inp["index"], tensor)
            interp.invoke()
            interp.get_tensor(out["index"])
            with lock:
                times.append(time.perf_counter() - t0)

    bodies = [_reraised(functools.partial(loop, i)) for i in interps]
    workers = [threading.Thread(target=b) for b in bodies]
    for w in workers:
        w.start()
    r = Result(plan=f"{k}x{spec['threads']}")
    r.t0, r.t1, r.n, r.cpu_s = _window(spec["warmup_s"], spec["seconds"], lambda: len(times))
    stop.set()
    for w in workers:
        w.join()
    for b in bodies:
        _check(b)
    r.latency_ms = [t * 1000.0 for t in times[-r.n :]] if r.n else []
    return r


def daemon(spec: dict[str, Any]) -> Result:
    """The daemon as ``edged run`` builds it (production model loader and features, spool
    on), the source replaced by a :class:`MemorySource`."""
    from edged.app.daemon import Daemon
    from edged.app.parts import Features, Parts
    from edged.config import Config, FilesSource, ModelConfig, MqttConfig, PublishConfig
    from edged.infra.sdnotify import Notifier

    cfg = Config(
        device_id="bench",
        source=FilesSource(path="-"),
        model=ModelConfig(
            path=Path(spec["model"]),
            threads=spec["threads"],
            interpreters=spec.get("interpreters", "auto"),
            backend=spec["backend"],
        ),
        mqtt=MqttConfig(host=spec["host"], port=spec["port"]),
        publish=PublishConfig(
            mode="every", qos=spec["qos"], heartbeat_s=0, **spec.get("publish", {})
        ),
        state_dir=Path(spec["state_dir"]),
    )
    source = MemorySource(bench_image(tuple(spec["shape"])), spec.get("fps"))
    d = Daemon(
        cfg,
        parts=Parts(make_source=lambda _cfg, _size: source),
        features=Features.from_config(cfg),
        notifier=Notifier({}),
    )
    d.start()
    seq0 = d.seq
    runner = threading.Thread(target=d.run, name="bench-daemon")
    runner.start()
    r = Result()
    try:
        r.t0, r.t1, r.n, r.cpu_s = _window(spec["warmup_s"], spec["seconds"], lambda: d.processed)
    finally:
        d.request_stop()
        runner.join(10.0)
    r.plan = str(d.classifier.info.plan)
    r.captured = {seq0 + 1 + i: t for i, t in enumerate(source.reads)}
    r.extra = {"dropped": d.capture.dropped, "overlap": d.overlap}
    return r


def plain(spec: dict[str, Any]) -> Result:
    """What a user writes in twenty lines: read, resize, invoke, publish with paho."""
    import cv2
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edged.model.runtime import _resolve

    Interpreter = _resolve(spec["backend"])[1]  # e.g. ai_edge_litert.interpreter.Interpreter
    source = MemorySource(bench_image(tuple(spec["shape"])), spec.get("fps"))
    model = model_bytes(spec["model"])  # a .tflite file's bytes (a bundle's model)
    stop, count = threading.Event(), [0]

    @_reraised
    def loop() -> None:
        interp = Interpreter(model_content=model, num_threads=spec["threads"])
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        h, w = inp["shape"][1:3]
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect(spec["host"], spec["port"])
        client.loop_start()
        while not stop.is_set():
            frame = source.read()
            assert frame is not None
            x = cv2.resize(frame.image, (w, h), interpolation=cv2.INTER_AREA)
            if inp["shape"][3] == 1:  # a grayscale model
                x = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[:, :, None]
            if inp["dtype"] != np.uint8:  # int8: pixel - 128
                x = (x.astype(np.int16) - 128).astype(inp["dtype"])
            interp.set_tensor(inp["index"], x[None])
            interp.invoke()
            scores = interp.get_tensor(out["index"])[0]
            top = int(scores.argmax())
            count[0] += 1
            msg = {"seq": count[0], "label": top, "score": float(scores[top]) / 255.0}
            client.publish("bench/plain/prediction", json.dumps(msg), qos=spec["qos"])
        client.loop_stop()
        client.disconnect()

    worker = threading.Thread(target=loop)
    worker.start()
    r = Result(plan=f"1x{spec['threads']}")
    try:
        r.t0, r.t1, r.n, r.cpu_s = _window(spec["warmup_s"], spec["seconds"], lambda: count[0])
    finally:
        stop.set()
        worker.join(10.0)
    _check(loop)
    r.captured = {i + 1: t for i, t in enumerate(source.reads)}
    return r


CASES = {"bare": bare, "daemon": daemon, "plain": plain}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    r = CASES[spec["case"]](spec)
    out = {
        "t0": r.t0,
        "t1": r.t1,
        "n": r.n,
        "cpu_s": r.cpu_s,
        "plan": r.plan,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "latency_ms": r.latency_ms,
        "captured": {str(k): v for k, v in r.captured.items()},
        **r.extra,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
