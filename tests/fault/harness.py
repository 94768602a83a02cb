"""Shared by the fault scenarios: the daemon as a process whose log lines are time-stamped as
they arrive, a fake systemd notify socket, the retained health topic, a file lease that hangs a
real ``open()``, and /proc sampling.

Nothing here is a stand-in for product code: the daemon is ``python -m edged run``, the broker
is Mosquitto (tests/broker.py), the notify socket is the datagram socket systemd would give.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.broker import Received, Subscriber
from tests.daemon import ROOT

# Variables of a real systemd service that must not leak from the test's own environment.
_SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")


def device_topic(device: str, leaf: str, prefix: str = "edged") -> str:
    return f"{prefix}/{device}/{leaf}"


# -- the daemon ------------------------------------------------------------------------------


class LiveDaemon:
    """``python -m edged run -c CONFIG``; every output line is kept with ``time.monotonic()`` of
    its arrival (sub-second timing that the log's own HH:MM:SS stamps do not give)."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        base = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARS}
        self.log_path = config.with_suffix(".log")
        self._file: IO[str] = self.log_path.open("w", encoding="utf-8")
        self._cond = threading.Condition()
        self._lines: list[tuple[float, str]] = []
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "run", "-c", str(config), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**base, **(env or {})},
            cwd=ROOT,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            with self._cond:
                self._lines.append((now, line.rstrip("\n")))
                self._file.write(line)
                self._file.flush()
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def lines(self, pattern: str | None = None, since: float = 0.0) -> list[tuple[float, str]]:
        rx = re.compile(pattern) if pattern else None
        with self._cond:
            return [(t, s) for t, s in self._lines if t >= since and (rx is None or rx.search(s))]

    def log(self) -> str:
        with self._cond:
            return "\n".join(s for _, s in self._lines)

    def wait_line(self, pattern: str, timeout: float, since: float = 0.0) -> tuple[float, str]:
        """The first line at or after ``since`` matching ``pattern``: (arrival time, line)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, s in self._lines:
                    if t >= since and rx.search(s):
                        return t, s
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(s for _, s in self._lines[-25:])
                    raise AssertionError(f"no log line matching {pattern!r}; log tail:\n{tail}")
                self._cond.wait(min(left, 0.2))

    def terminate(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        with self._cond:
            self._file.close()


# -- a fake systemd ---------------------------------------------------------------------------


class NotifySocket:
    """The datagram socket systemd passes as $NOTIFY_SOCKET (abstract namespace), recording
    every message with its arrival time."""

    def __init__(self, watchdog_usec: int = 2_000_000) -> None:
        self.name = f"@edged-fault-{os.getpid()}-{secrets.token_hex(4)}"
        self.watchdog_usec = watchdog_usec
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.name[1:])
        self._sock.settimeout(0.2)
        self._cond = threading.Condition()
        self._messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._recv, name="notify", daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        """What systemd sets for a Type=notify service with WatchdogSec= (no WATCHDOG_PID)."""
        return {"NOTIFY_SOCKET": self.name, "WATCHDOG_USEC": str(self.watchdog_usec)}

    @property
    def watchdog_s(self) -> float:
        return self.watchdog_usec / 1e6

    def _recv(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._cond:
                for field in data.decode("utf-8", "replace").split("\n"):
                    if field:
                        self._messages.append((now, field))
                self._cond.notify_all()

    def messages(self) -> list[tuple[float, str]]:
        with self._cond:
            return list(self._messages)

    def pings(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [t for t, m in self.messages() if m == "WATCHDOG=1" and since <= t <= until]

    def wait_for(self, field: str, timeout: float, since: float = 0.0) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, m in self._messages:
                    if m == field and t >= since:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {field} on the notify socket within {timeout} s")
                self._cond.wait(left)

    def max_gap(self, since: float, until: float) -> float:
        """Longest time without a WATCHDOG=1 in [since, until] (window edges count)."""
        points = [since, *self.pings(since, until), until]
        return max(b - a for a, b in itertools.pairwise(points))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._sock.close()


# -- the health topic ------------------------------------------------------------------------


def health_of(m: Received) -> dict[str, Any]:
    return dict(json.loads(m.payload)["source"])


def wait_health(
    sub: Subscriber,
    device: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float,
    after: int = 0,
) -> tuple[float, dict[str, Any]]:
    """Wait for a health message (the ``after``-th and later received) matching ``predicate``;
    returns (time it was seen, its ``source`` object)."""
    topic = device_topic(device, "health")
    deadline = time.monotonic() + timeout
    while True:
        msgs = [m for m in sub.messages if m.topic == topic][after:]
        for m in msgs:
            h = health_of(m)
            if predicate(h):
                return time.monotonic(), h
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching health within {timeout} s: {[m.text for m in msgs]}")
        time.sleep(0.02)


def count_topic(sub: Subscriber, topic: str) -> int:
    return sum(1 for m in sub.messages if m.topic == topic)


# -- a hang that the kernel makes ------------------------------------------------------------

_LEASE_HOLDER = r"""
import fcntl, os, signal, sys
signal.signal(signal.SIGIO, signal.SIG_IGN)  # a lease break is announced by SIGIO
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("held", flush=True)
sys.stdin.readline()
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
os.close(fd)
print("released", flush=True)
"""


class FileLease:
    """A write lease (fcntl F_SETLEASE) on ``path``, held by a helper process: every other
    ``open()`` of the file blocks in the kernel until the lease is released (or the kernel breaks
    it after /proc/sys/fs/lease-break-time, 45 s by default) -- a real read that hangs, the way a
    file on a stalled network share or a camera driver stuck in a syscall does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LEASE_HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "held":
            self.proc.kill()
            raise RuntimeError(f"could not take a lease on {path}: {line!r}")
        self.taken = time.monotonic()

    def release(self) -> float:
        """Release the lease; returns ``time.monotonic()`` just before asking for it (blocked
        opens may return before this call does)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        asked = time.monotonic()
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(5)
        return asked

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def lease(path: Path) -> Iterator[FileLease]:
    held = FileLease(path)
    try:
        yield held
    finally:
        held.close()


# -- /proc sampling --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float
    rss_kib: int
    threads: int
    fds: int


def sample_process(pid: int) -> Sample | None:
    """RSS (VmRSS), thread count (/proc/PID/task) and open fds (/proc/PID/fd); None once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        threads = len(os.listdir(f"/proc/{pid}/task"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    if found is None:  # a zombie
        return None
    return Sample(time.monotonic(), int(found.group(1)), threads, fds)
