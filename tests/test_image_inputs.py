"""Hostile files dropped into the files source's folder, against the daemon as a real process
(issue 11): odd names, odd files and a decompression bomb never stop it or grow its memory;
every readable image is published with a ``frame`` name that is one valid UTF-8 line."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from edged.model.classifier import Classifier
from edged.sources.files import load_rgb
from tests.broker import Mosquitto, Subscriber
from tests.daemon import DEMO_MODEL, SAMPLES, demo_config

TOPIC = "edged/cam-1"

# name on disk (bytes) -> the ``frame`` field the event must carry
GOOD = {
    b"caf\xe9-\xff-3.png": "caf\\xe9-\\xff-3.png",  # not UTF-8 (the name that killed main)
    b"new\nline-1.png": "new\\nline-1.png",
    b"esc\x1b[31m-2.png": "esc\\x1b[31m-2.png",
    "sep\u2028-4.png".encode(): "sep\\u2028-4.png",
    "é✓🙂-5.png".encode(): "é✓🙂-5.png",
    b"l" * 249 + b"-6.png": "l" * 249 + "-6.png",
    b"link-7.png": "link-7.png",  # a symlink to a sample
    b"wrong-ext-8.jpg": "wrong-ext-8.jpg",  # a PNG named .jpg
}


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_hostile_files_never_stop_the_daemon_nor_grow_it(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., Any],
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    samples = sorted(SAMPLES.glob("digit-*.png"))
    for i, raw in enumerate(GOOD):
        target = os.path.join(os.fsencode(folder), raw)
        if raw == b"link-7.png":
            os.symlink(samples[i], target)
        else:
            shutil.copyfile(samples[i], target)
    # What must be skipped and counted: a 20 KB PNG declaring 169 Mpx (main: 2 GiB), a
    # truncated file, random bytes, an empty file; what must be left alone: a FIFO, a
    # directory and a device named like images.
    Image.new("1", (13000, 13000), 0).save(folder / "bomb.png", optimize=True)
    (folder / "truncated.png").write_bytes(samples[0].read_bytes()[:200])
    (folder / "random.jpg").write_bytes(os.urandom(3000))
    (folder / "empty.png").write_bytes(b"")
    os.mkfifo(folder / "fifo.png")
    (folder / "dir.jpg").mkdir()
    (folder / "zero.png").symlink_to("/dev/zero")
    refused = 4

    sub = subscriber_factory(broker, f"{TOPIC}/#")
    d = start_daemon(
        demo_config(tmp_path, broker, source={"path": str(folder), "fps": 20, "loop": False})
    )
    peak = 0
    deadline = time.monotonic() + 60
    while d.alive() and time.monotonic() < deadline:
        peak = max(peak, _vm_hwm_kib(d.pid))
        time.sleep(0.05)
    assert d.wait(5) == 0, d.log()
    peak_mib = peak / 1024
    print(f"daemon peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 400, f"the daemon peaked at {peak_mib:.0f} MiB"

    msgs = sub.wait_count(len(GOOD), 10, predicate=lambda m: m.topic == f"{TOPIC}/prediction")
    events = [json.loads(m.payload.decode("utf-8")) for m in msgs]  # strict UTF-8
    assert sorted(e["frame"] for e in events) == sorted(GOOD.values())
    # Each image was read correctly: its label is the one the model gives the sample itself.
    clf = Classifier.load(DEMO_MODEL)
    want = {
        frame: clf.classify(load_rgb(samples[i]), 1).label for i, frame in enumerate(GOOD.values())
    }
    assert {e["frame"]: e["label"] for e in events} == want
    health = [json.loads(m.payload) for m in sub.messages if m.topic == f"{TOPIC}/health"]
    assert health and max(h["source"]["skipped"] for h in health) == refused, health
    log = d.log()
    assert "over the 16777216-pixel limit" in log
    assert all(line.isprintable() for line in log.splitlines()), "a log line was split"
