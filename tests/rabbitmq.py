"""A real 3-node RabbitMQ cluster on loopback, from the Debian ``rabbitmq-server`` package.

Each node runs as the ``rabbitmq`` user with its own node name (``edged-t<k>-<pid>@localhost``),
AMQP, distribution and MQTT ports, and its own data, log and config directories under a
temporary directory owned by ``rabbitmq``; the ``rabbitmq_mqtt`` plugin is enabled; nodes 2
and 3 join node 1 (``rabbitmqctl join_cluster``). Starting needs root (to run the nodes as
``rabbitmq``) and the package (``apt-get install -y rabbitmq-server``): :class:`Unavailable`
says which is missing, and the fixture turns it into a skip with that reason.

RabbitMQ's MQTT plugin (3.10, MQTT 3.1.1) keeps retained messages per node and does not send
them for wildcard subscriptions -- the fleet tests rely on exactly that being the case.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.broker import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
INSTALL_HINT = "apt-get install -y rabbitmq-server (as root)"


class Unavailable(RuntimeError):
    """The cluster cannot be started here; the message says why (a skip reason)."""


@dataclass
class Node:
    name: str
    amqp_port: int
    dist_port: int
    mqtt_port: int
    base: Path
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:  # what tests and tools connect to
        return self.mqtt_port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _epmd_running() -> bool:
    """Erlang's port mapper (4369), started by the first node and shared by all."""
    return _port_open(4369)


class RabbitCluster:
    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        if not (os.access(SERVER, os.X_OK) and os.access(CTL, os.X_OK)):
            raise Unavailable(f"RabbitMQ is not installed: {INSTALL_HINT}")
        if os.geteuid() != 0:
            raise Unavailable("starting RabbitMQ nodes as the rabbitmq user needs root")
        try:
            self._user = pwd.getpwnam("rabbitmq")
        except KeyError:
            raise Unavailable("there is no rabbitmq user (the package did not install)") from None
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.home = self.workdir / "home"
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        os.chmod(cookie, 0o400)
        self._epmd_before = _epmd_running()
        tag = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.nodes = [
            Node(
                f"edged-t{k + 1}-{tag}@localhost",
                free_port(),
                free_port(),
                free_port(),
                self.workdir / f"node{k + 1}",
            )
            for k in range(nodes)
        ]
        for node in self.nodes:
            node.base.mkdir(exist_ok=True)
            (node.base / "rabbitmq.conf").write_text(
                "\n".join(
                    [
                        f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}",
                        f"mqtt.listeners.tcp.1 = 127.0.0.1:{node.mqtt_port}",
                        "mqtt.allow_anonymous = true",
                        "loopback_users = none",
                        "log.file.level = warning",
                        "log.console = false",
                        "vm_memory_high_watermark.absolute = 512MB",
                        "disk_free_limit.absolute = 50MB",
                    ]
                )
                + "\n"
            )
            (node.base / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self._chown(self.workdir)
        try:
            if not self._epmd_before:  # started here, before the nodes race to start it
                epmd = shutil.which("epmd") or "/usr/bin/epmd"
                subprocess.run([epmd, "-daemon"], capture_output=True, timeout=10, check=False)
                deadline = time.monotonic() + 10
                while not _epmd_running() and time.monotonic() < deadline:
                    time.sleep(0.1)
            for node in self.nodes:
                self._start(node)
            for node in self.nodes:
                self._wait(node)
            first = self.nodes[0].name
            for node in self.nodes[1:]:
                self.ctl(node, "stop_app")
                self.ctl(node, "join_cluster", first)
                self.ctl(node, "start_app")
            for node in self.nodes:
                self._wait(node)
        except BaseException:
            self.close()
            raise

    def _chown(self, top: Path) -> None:
        for root, dirs, files in os.walk(top):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(name, self._user.pw_uid, self._user.pw_gid)

    def _env(self, node: Node) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(node.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.base / "log"),
            "RABBITMQ_PID_FILE": str(node.base / "pid"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(node.base / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 1:1 +A 4",
        }

    def _demote(self) -> None:
        os.setgid(self._user.pw_gid)
        os.setgroups([])
        os.setuid(self._user.pw_uid)
        os.setsid()

    def _start(self, node: Node) -> None:
        log = (node.base / "stdout.log").open("wb")
        node.proc = subprocess.Popen(
            [SERVER],
            env=self._env(node),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=node.base,
            preexec_fn=self._demote,
        )
        log.close()

    def ctl(self, node: Node, *args: str, timeout: float = 60.0) -> str:
        out = subprocess.run(
            [CTL, "-n", node.name, *args],
            env=self._env(node),
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=self._demote,
        )
        if out.returncode != 0:
            raise Unavailable(
                f"rabbitmqctl {' '.join(args)} on {node.name} failed: "
                f"{(out.stderr or out.stdout).strip()[-400:]}"
            )
        return out.stdout

    def _wait(self, node: Node, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise Unavailable(
                    f"RabbitMQ node {node.name} exited ({node.proc.returncode}): "
                    + (node.base / "stdout.log").read_text(errors="replace")[-400:]
                )
            if _port_open(node.mqtt_port):
                return
            time.sleep(0.3)
        raise Unavailable(f"RabbitMQ node {node.name} did not open its MQTT port in {timeout} s")

    def cluster_nodes(self) -> list[str]:
        """The running nodes of the cluster, as node 1 sees them."""
        out = self.ctl(self.nodes[0], "eval", "rabbit_nodes:all_running().")
        return sorted(n for n in (node.name for node in self.nodes) if n in out)

    def close(self) -> None:
        for node in self.nodes:
            proc = node.proc
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for node in self.nodes:
            proc = node.proc
            if proc is None:
                continue
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for node in self.nodes:  # whatever of the nodes' process groups is still around
            if node.proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
        if not self._epmd_before and shutil.which("epmd"):  # the first node started it
            subprocess.run(["epmd", "-kill"], capture_output=True, timeout=10, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
