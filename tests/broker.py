"""A real Mosquitto broker for tests, a subscribing client, and a throw-away PKI for TLS tests.

Nothing here mocks a broker: ``Mosquitto`` runs the real ``mosquitto`` binary on a free
127.0.0.1 port with a generated config, and ``Subscriber`` is a paho client that subscribes
like a user would.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

INSTALL_HINT = "mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients"


class MosquittoNotInstalled(RuntimeError):
    pass


def find_mosquitto() -> str:
    """Path of the mosquitto binary (often in /usr/sbin, which is not always on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoNotInstalled(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hash_password(password: str, *, iterations: int = 101, salt: bytes | None = None) -> str:
    """A mosquitto 2 password-file hash (``$7$``: PBKDF2-SHA512), as ``mosquitto_passwd`` writes."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class TlsListener:
    """Certificate paths for a TLS listener (PEM files)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # needed when require_certificate is set
    require_certificate: bool = False


_live: weakref.WeakSet[Mosquitto] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for m in list(_live):
        m.close()


class Mosquitto:
    """A private mosquitto on 127.0.0.1:<free port>, configured in ``workdir``.

    ``users`` -> password_file (and anonymous access off); ``acl`` -> acl_file text;
    ``tls`` -> the listener speaks TLS; ``max_packet_size`` -> bytes;
    ``persistence`` -> mosquitto.db in ``workdir`` (saved on ``stop()`` and every second).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        tls: TlsListener | None = None,
        max_packet_size: int | None = None,
        persistence: bool = False,
        port: int | None = None,
        extra_conf: Iterable[str] = (),
        start: bool = True,
    ) -> None:
        self.binary = find_mosquitto()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.tls = tls
        self.persistence = persistence
        self.port = port if port is not None else free_port()
        self.log_path = self.workdir / "mosquitto.log"
        self.conf_path = self.workdir / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self._frozen = False
        lines = [
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise mosquitto drops to 'mosquitto' and can't read
        if self.users:
            self.password_file = self.workdir / "passwd"
            self.password_file.write_text(
                "".join(f"{u}:{hash_password(p)}\n" for u, p in self.users.items())
            )
            self.password_file.chmod(0o600)
            lines.append(f"password_file {self.password_file}")
        if acl is not None:
            self.acl_file = self.workdir / "acl"
            self.acl_file.write_text(acl if acl.endswith("\n") else acl + "\n")
            self.acl_file.chmod(0o600)
            lines.append(f"acl_file {self.acl_file}")
        if tls is not None:
            lines += [f"certfile {tls.cert_file}", f"keyfile {tls.key_file}"]
            if tls.ca_file is not None:
                lines.append(f"cafile {tls.ca_file}")
            if tls.require_certificate:
                lines.append("require_certificate true")
        if max_packet_size is not None:
            lines.append(f"max_packet_size {max_packet_size}")
        if persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
            ]
        lines += list(extra_conf)
        self.conf_path.write_text("\n".join(lines) + "\n")
        _live.add(self)
        if start:
            self.start()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "broker not started"
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._frozen = False
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with status {self.proc.returncode}:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"mosquitto did not listen on port {self.port}:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no persistence save, clients see the connection drop."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts TCP connections but nothing is answered."""
        assert self.running, "broker not running"
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        if self.running and self._frozen:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self._frozen = False

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (persistence is saved); SIGKILL if it does not exit within ``timeout``."""
        if not self.running:
            return
        assert self.proc is not None
        self.thaw()
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        """Stop (if running) and start again on the same port with the same config."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Teardown: end the process whatever its state."""
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.kill()
        _live.discard(self)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else "running" if self.running else "stopped"
        return f"<Mosquitto {self.host}:{self.port} {state}>"


# -- subscriber ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


class Subscriber:
    """A paho client subscribed to ``topic`` collecting what it receives (thread-safe).

    It re-subscribes after reconnecting. ``persistent=True`` keeps a broker-side session
    (fixed client id, no clean start after the first connect), so QoS >= 1 messages published
    while it is disconnected (e.g. across a broker restart with persistence) are queued for it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str = "#",
        *,
        qos: int = 2,
        protocol: str = "5",
        client_id: str | None = None,
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.topic = topic
        self.qos = qos
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        v5 = protocol == "5"
        client_id = client_id or f"test-sub-{os.getpid()}-{id(self):x}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        kwargs: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: unannotated
            if persistent:
                props.SessionExpiryInterval = 3600
            kwargs = {"clean_start": mqtt.MQTT_CLEAN_START_FIRST_ONLY, "properties": props}
        self.client.connect(host, port, keepalive=10, **kwargs)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"subscriber: no SUBACK for {topic!r} within {timeout} s")

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, self.qos)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        item = Received(msg.topic, bytes(msg.payload), bool(msg.retain), int(msg.qos))
        with self._cond:
            self._messages.append(item)
            self._cond.notify_all()

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def texts(self, topic: str | None = None) -> list[str]:
        return [m.text for m in self.messages if topic is None or m.topic == topic]

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 5.0) -> Received:
        """The first message (already received or arriving within ``timeout``) matching."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self._messages:
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no matching message within {timeout} s; got {self._summary()}"
                    )
                self._cond.wait(left)

    def wait_count(
        self,
        n: int,
        timeout: float = 5.0,
        predicate: Callable[[Received], bool] | None = None,
    ) -> list[Received]:
        """Wait until at least ``n`` (matching) messages arrived; returns all (matching) ones."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [m for m in self._messages if predicate is None or predicate(m)]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"got {len(got)} of {n} messages within {timeout} s; {self._summary()}"
                    )
                self._cond.wait(left)

    def _summary(self, limit: int = 10) -> str:
        shown = [f"{m.topic}={m.payload[:40]!r}" for m in self._messages[-limit:]]
        return f"{len(self._messages)} message(s), last: [{', '.join(shown)}]"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a throw-away PKI ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(
    directory: Path, name: str = "test", hosts: Iterable[str] = ("127.0.0.1", "localhost")
) -> Pki:
    """A CA and a server certificate/key signed by it, valid for ``hosts`` (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    valid_from, valid_to = now - dt.timedelta(minutes=5), now + dt.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} server")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pki = Pki(
        directory / f"{name}-ca.pem",
        directory / f"{name}-server.pem",
        directory / f"{name}-server.key",
    )
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    pki.key_file.chmod(0o600)
    return pki
