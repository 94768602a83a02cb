from __future__ import annotations

import os
import socket
from pathlib import Path

from edged.infra.sdnotify import Notifier


def test_ready_and_watchdog_reach_the_notify_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(1)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier(env)
    assert n.watchdog_s == 2.0
    n.ready("ok")
    assert server.recv(100) == b"READY=1\nSTATUS=ok"
    n.watchdog(now=100.0)
    n.watchdog(now=100.1)  # rate-limited: within a quarter interval
    n.watchdog(now=100.6)
    assert [server.recv(100), server.recv(100)] == [b"WATCHDOG=1", b"WATCHDOG=1"]
    server.setblocking(False)
    try:
        extra = server.recv(100)
    except BlockingIOError:
        extra = b""
    assert extra == b""
    n.close()
    server.close()


def test_without_systemd_it_does_nothing() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_s is None
    n.ready()
    n.watchdog()


def test_watchdog_for_another_pid_is_ignored() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None
