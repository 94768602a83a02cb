"""Signals and lifecycle (issue 11, point 4), against the real daemon as a process: SIGHUP
reloads in place, no signal kills it, SIGTERM at any moment of startup exits 0, and the update
validator's child never outlives the daemon."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.broker import Mosquitto, Subscriber
from tests.daemon import ROOT, DaemonProcess, demo_config, write_config

TOPIC = "edged/cam-1"


def _predictions(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.messages if m.topic == f"{TOPIC}/prediction"]


def _wait_log(d: DaemonProcess, text: str, timeout: float = 30.0, count: int = 1) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = d.log()
        if log.count(text) >= count:
            return log
        assert d.alive(), log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{d.log()}")


def _looping(tmp_path: Path, broker: Mosquitto, **over: object) -> dict[str, object]:
    return demo_config(tmp_path, broker, source={"loop": True, "fps": 10}, **over)  # type: ignore[arg-type]


def test_sighup_reloads_the_config_in_place_keeping_seq_and_availability(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    sub = subscriber_factory(broker, f"{TOPIC}/#")
    cfg = _looping(tmp_path, broker, model={"top_k": 3})
    d = start_daemon(cfg)
    sub.wait_count(5, 30, lambda m: m.topic == f"{TOPIC}/prediction")
    assert all(len(p["top"]) == 3 for p in _predictions(sub))

    # A broken config: refused, the daemon goes on unchanged.
    config_path = d.log_path.with_suffix(".toml")
    good = config_path.read_text()
    config_path.write_text(good + "\n[publish]\nagree_m = 1000\n")
    os.kill(d.pid, signal.SIGHUP)
    _wait_log(d, "reload refused, going on as before")
    n = len(_predictions(sub))
    sub.wait_count(n + 5, 20, lambda m: m.topic == f"{TOPIC}/prediction")

    # A good one: the same process, executed again, on the new settings.
    cfg["model"] = {**cfg["model"], "top_k": 1}  # type: ignore[dict-item]
    write_config(config_path, cfg)
    n = len(_predictions(sub))
    os.kill(d.pid, signal.SIGHUP)
    _wait_log(d, "restarting in place")
    sub.wait_for(
        lambda m: m.topic == f"{TOPIC}/prediction" and len(json.loads(m.payload)["top"]) == 1, 60
    )
    assert d.alive(), d.log()
    preds = _predictions(sub)
    seqs = [p["seq"] for p in preds]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs  # never repeated
    assert len(preds) > n
    availability = [m.text for m in sub.messages if m.topic == f"{TOPIC}/availability"]
    assert "stopped" not in availability and availability[-1] == "online", availability
    assert d.log().count("model digits") == 2  # loaded twice: the original and the reload
    rc, seconds = d.terminate()
    assert rc == 0 and seconds < 5


def test_usr1_usr2_pipe_do_not_kill_it(
    tmp_path: Path,
    broker: Mosquitto,
    subscriber_factory: Callable[..., Subscriber],
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    sub = subscriber_factory(broker, f"{TOPIC}/prediction")
    d = start_daemon(_looping(tmp_path, broker))
    sub.wait_count(2, 30)
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE) * 20:
        os.kill(d.pid, sig)
    time.sleep(0.5)
    n = len(sub.messages)
    sub.wait_count(n + 3, 10)
    assert d.alive(), d.log()
    assert d.log().count("received SIGUSR1: ignored") == 1  # rate limited
    rc, _ = d.terminate()
    assert rc == 0


def test_sigterm_at_any_moment_of_startup_exits_0(
    tmp_path: Path, broker: Mosquitto, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """From the moment edged's own code runs (the interpreter's first ~0.1 s have the kernel's
    default action, which systemd counts as a clean exit too): config, model, spool, warm-up,
    connecting, running."""
    stages = []
    for delay in (0.3, 0.45, 0.6, 0.8, 1.0, 1.3, 1.7, 2.2, 3.0):
        d = start_daemon(_looping(tmp_path / str(delay), broker))
        time.sleep(delay)
        rc, seconds = d.terminate()  # died by SIGTERM (-15) before the handlers on main
        log = d.log()
        assert rc == 0, (delay, log)
        assert seconds < 5, (delay, log)
        stages.append("while starting" in log)
    assert any(stages), "no SIGTERM arrived while starting: the delays need adjusting"


def test_sighup_while_starting_is_done_once_running(
    tmp_path: Path, broker: Mosquitto, start_daemon: Callable[..., DaemonProcess]
) -> None:
    d = start_daemon(_looping(tmp_path, broker))
    time.sleep(0.3)
    os.kill(d.pid, signal.SIGHUP)  # killed the process on main
    _wait_log(d, "restarting in place", 60)
    _wait_log(d, "connected to", 30, count=2)  # the new image connected
    assert d.alive(), d.log()
    rc, _ = d.terminate()
    assert rc == 0


PARENT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from pathlib import Path
    from edged.update.validate import Validator

    fifo = Path(sys.argv[1])
    v = Validator(timeout_s=120)
    threading.Thread(target=v.run, args=(fifo,), daemon=True).start()
    while v._proc is None:
        time.sleep(0.01)
    print(v._proc.pid, flush=True)
    time.sleep(float(sys.argv[2]))  # the child reads the FIFO: blocked mid-validation
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("delay", [0.0, 3.0], ids=["before-prctl", "mid-validation"])
def test_validator_child_never_outlives_a_killed_daemon(tmp_path: Path, delay: float) -> None:
    fifo = tmp_path / "bundle.edgb"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", PARENT, str(fifo), str(delay)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout.split()[0])
    try:
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the validator outlived the daemon (orphaned)"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
