"""The benchmark's peers: a private Mosquitto and a real subscriber in its own process.

Neither is part of the daemon: ``edged bench`` (edged.bench.run) runs the daemon against them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edged.errors import BrokerError


class Subscriber:
    """A real subscriber in its own process (as a user's would be, with its own GIL): it
    records when each prediction arrives (``time.monotonic()``, the same clock system-wide)."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.received: dict[int, float] = {}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import sys, edged.bench.peers as b; b.subscriber_main(sys.argv[1:])",
             host, str(port), topic],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "subscribed":
            self._proc.kill()
            err = self._proc.communicate()[1].strip().splitlines()
            raise BrokerError(
                f"bench subscriber could not subscribe on {host}:{port}"
                + (f": {err[-1]}" if err else "")
            )

    def close(self) -> None:
        out, _ = self._proc.communicate("", timeout=10)  # stdin closed: it prints and exits
        for line in out.splitlines():
            if not line.strip():
                continue
            seq, at = line.split()
            self.received[int(seq)] = float(at)


def subscriber_main(argv: list[str]) -> None:
    """``Subscriber``'s process: print "subscribed", then on end of stdin "seq time" lines."""
    host, port, topic = argv[0], int(argv[1]), argv[2]
    received: list[tuple[int, float]] = []
    ready = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received.append((int(json.loads(msg.payload)["seq"]), time.monotonic()))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    if not ready.wait(5):
        raise SystemExit("no SUBACK within 5 s")
    print("subscribed", flush=True)
    sys.stdin.read()
    client.loop_stop()
    client.disconnect()
    print("\n".join(f"{seq} {at!r}" for seq, at in received))


class PrivateBroker:
    """A throwaway Mosquitto on a free loopback port (for benchmarks, not production)."""

    def __init__(self) -> None:
        exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
        if exe is None:
            raise BrokerError(
                "mosquitto is not installed (apt-get install mosquitto), or pass --broker"
            )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._dir = tempfile.TemporaryDirectory(prefix="edged-bench-")
        conf = Path(self._dir.name) / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{user}")
        self._proc = subprocess.Popen(
            [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.close()
        raise BrokerError("private mosquitto did not start")

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._dir.cleanup()
