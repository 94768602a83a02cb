"""Security defaults against a real Mosquitto: TLS with server-certificate verification,
user/password (inline and from a file), client certificates, the example ACL
(config/mosquitto-acl.conf), and secrets kept out of the logs.

Prints one line of figures per scenario (``pytest -s``) for the README's reliability table.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.broker import Mosquitto, Pki, Received, Subscriber, TlsListener, make_pki
from tests.daemon import ROOT, demo_config, write_config
from tests.fault.harness import LiveDaemon, device_topic

pytestmark = pytest.mark.fault

ACL_FILE = ROOT / "config" / "mosquitto-acl.conf"
CONNECTED = r"edged\.mqtt: connected to"


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., LiveDaemon]]:
    made: list[LiveDaemon] = []

    def run(cfg: dict[str, Any], *args: str) -> LiveDaemon:
        path = write_config(tmp_path / f"edged-{len(made)}.toml", cfg)
        made.append(LiveDaemon(path, args=args))
        return made[-1]

    yield run
    for d in made:
        d.close()


def _cfg(tmp_path: Path, broker: Mosquitto, device: str = "cam-1", **mqtt_: Any) -> dict[str, Any]:
    return demo_config(
        tmp_path,
        broker,
        device_id=device,  # type: ignore[arg-type]
        state_dir=str(tmp_path / f"state-{device}"),  # type: ignore[arg-type]
        source={"loop": True, "fps": 10},
        mqtt={"reconnect_min_s": 0.2, "reconnect_max_s": 0.5, **mqtt_},
        publish={"mode": "every", "heartbeat_s": 0},
    )


def _not_connected(daemon: LiveDaemon, seconds: float) -> None:
    time.sleep(seconds)
    assert daemon.alive(), daemon.log()
    assert not daemon.lines(CONNECTED), daemon.log()


def _on(topic: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic


def _broker_sessions(broker: Mosquitto, client_id: str) -> int:
    """Connections the broker accepted from ``client_id`` (its connection log)."""
    return broker.log_text().count(f" as {client_id} ")


# -- TLS -------------------------------------------------------------------------------------


def make_client_pki(directory: Path, cn: str) -> Pki:
    """A client CA and a client certificate/key (CN ``cn``) signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edged test client CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "client-ca.pem", directory / f"{cn}.pem", directory / f"{cn}.key")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pki.key_file.chmod(0o600)
    return pki


def test_tls_verifies_the_server_and_never_falls_back_to_plain(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    start: Callable[..., LiveDaemon],
) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", name="other")
    tls_broker = mosquitto_factory(tls=TlsListener(pki.cert_file, pki.key_file))
    plain_broker = mosquitto_factory()
    sub = Subscriber(tls_broker.host, tls_broker.port, "edged/#", ca_file=pki.ca_file)
    plain_sub = Subscriber(plain_broker.host, plain_broker.port, "edged/#")
    try:
        # The right CA: connected over TLS, predictions arrive.
        good = start(_cfg(tmp_path, tls_broker, "cam-good", tls={"ca_file": str(pki.ca_file)}))
        t0 = time.monotonic()
        good.wait_line(CONNECTED, 15)
        connect_s = time.monotonic() - t0
        sub.wait_count(3, 15, lambda m: m.topic == device_topic("cam-good", "prediction"))

        # Another CA: refused, says why, retries -- and nothing reaches the broker.
        wrong = start(_cfg(tmp_path, tls_broker, "cam-wrong", tls={"ca_file": str(other.ca_file)}))
        _, why = wrong.wait_line(r"cannot connect to .*TLS", 15)
        # TLS configured, the broker speaks plain MQTT: no fallback either.
        plain = start(_cfg(tmp_path, plain_broker, "cam-plain", tls={"ca_file": str(pki.ca_file)}))
        _, why_plain = plain.wait_line(r"cannot connect to", 15)
        _not_connected(wrong, 3.0)
        _not_connected(plain, 0.0)
        # `edged check` says the same, exit 3.
        check = subprocess.run(
            [
                sys.executable,
                "-m",
                "edged",
                "check",
                "-c",
                str(wrong.log_path.with_suffix(".toml")),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    finally:
        sub.close()
        plain_sub.close()
    assert "TLS certificate verification failed" in why, why
    assert not [m for m in sub.messages if "/cam-wrong/" in m.topic]
    assert not [m for m in plain_sub.messages if "/cam-plain/" in m.topic]
    assert _broker_sessions(tls_broker, "cam-wrong") == 0
    assert _broker_sessions(plain_broker, "cam-plain") == 0
    assert check.returncode == 3 and "TLS certificate verification failed" in check.stderr, check
    print(
        f"\nTLS: right CA -> connected in {connect_s:.2f} s, predictions delivered; wrong CA -> "
        f"'{why.split(': ', 2)[-1]}' (edged check: exit 3), 0 sessions on the broker; TLS "
        f"against a plain listener -> '{why_plain.split(': ', 2)[-1]}', 0 sessions (no fallback)"
    )


def test_client_certificate_authentication(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    start: Callable[..., LiveDaemon],
) -> None:
    pki = make_pki(tmp_path / "pki")
    client = make_client_pki(tmp_path / "client", "cam-1")
    broker = mosquitto_factory(
        tls=TlsListener(
            pki.cert_file, pki.key_file, ca_file=client.ca_file, require_certificate=True
        )
    )
    with_cert = start(
        _cfg(
            tmp_path,
            broker,
            "cam-1",
            tls={
                "ca_file": str(pki.ca_file),
                "cert_file": str(client.cert_file),
                "key_file": str(client.key_file),
            },
        )
    )
    with_cert.wait_line(CONNECTED, 15)
    without = start(_cfg(tmp_path, broker, "cam-2", tls={"ca_file": str(pki.ca_file)}))
    _, why = without.wait_line(r"edged\.mqtt: (cannot connect|.*refused|connection .* lost)", 15)
    _not_connected(without, 3.0)
    assert _broker_sessions(broker, "cam-1") >= 1
    assert _broker_sessions(broker, "cam-2") == 0
    print(
        f"\nclient certificates (require_certificate): with cert_file/key_file -> connected; "
        f"without -> refused: '{why.split(': ', 2)[-1]}'"
    )


# -- user name and password ----------------------------------------------------------------


def test_password_inline_and_from_a_file_and_refusal(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    start: Callable[..., LiveDaemon],
) -> None:
    password = "pw-" + secrets.token_urlsafe(18)
    broker = mosquitto_factory(users={"cam-1": password, "cam-2": password, "reader": "r"})
    pw_file = tmp_path / "credentials" / "mqtt-password"
    pw_file.parent.mkdir()
    pw_file.write_text(password + "\n")  # as `printf ... | tee` or an editor leaves it
    pw_file.chmod(0o600)
    sub = Subscriber(broker.host, broker.port, "edged/#", username="reader", password="r")
    try:
        inline = start(_cfg(tmp_path, broker, "cam-1", username="cam-1", password=password))
        from_file = start(
            _cfg(tmp_path, broker, "cam-2", username="cam-2", password_file=str(pw_file))
        )
        wrong = start(_cfg(tmp_path, broker, "cam-3", username="cam-1", password="nope"))
        for d in (inline, from_file):
            d.wait_line(CONNECTED, 15)
        for dev in ("cam-1", "cam-2"):
            sub.wait_for(_on(device_topic(dev, "prediction")), 15)
        _, why = wrong.wait_line(r"refused the connection", 15)
        _not_connected(wrong, 2.0)
        # No user name at all: refused too (allow_anonymous false).
        anon = start(_cfg(tmp_path, broker, "cam-4"))
        _, why_anon = anon.wait_line(r"refused the connection", 15)
    finally:
        sub.close()
    assert "Not authorized" in why or "Bad user name or password" in why, why
    assert not [m for m in sub.messages if "/cam-3/" in m.topic or "/cam-4/" in m.topic]
    print(
        f"\nuser/password: inline and password_file (trailing newline stripped) -> connected; "
        f"wrong password -> '{why.split(': ', 2)[-1]}'; none -> '{why_anon.split(': ', 2)[-1]}'"
    )


def test_secrets_never_reach_the_log(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    start: Callable[..., LiveDaemon],
) -> None:
    password = "pw-" + secrets.token_urlsafe(18)
    file_password = "pf-" + secrets.token_urlsafe(18)
    broker = mosquitto_factory(users={"cam-1": password, "cam-2": file_password})
    pw_file = tmp_path / "mqtt-password"
    pw_file.write_text(file_password)
    debug = {"log_level": "debug"}
    runs = [
        start({**_cfg(tmp_path, broker, "cam-1", username="cam-1", password=password), **debug}),
        start(
            {
                **_cfg(tmp_path, broker, "cam-2", username="cam-2", password_file=str(pw_file)),
                **debug,
            }
        ),
        # Refused (the other user's password): the refusal is logged, the password is not.
        start({**_cfg(tmp_path, broker, "cam-3", username="cam-2", password=password), **debug}),
    ]
    runs[0].wait_line(CONNECTED, 15)
    runs[1].wait_line(CONNECTED, 15)
    runs[2].wait_line(r"refused the connection", 15)
    runs[0].wait_line(r"published seq=", 10)  # debug lines are there
    time.sleep(1.0)
    for d in runs:
        d.terminate()
        d.close()
    check = subprocess.run(
        [sys.executable, "-m", "edged", "check", "-c", str(runs[0].log_path.with_suffix(".toml"))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    texts = [d.log_path.read_text() for d in runs] + [check.stdout + check.stderr]
    n_lines = sum(t.count("\n") for t in texts)
    leaked = [t for t in texts if password in t or file_password in t]
    print(
        f"\nsecrets: {n_lines} log lines at debug level from 3 daemons (inline password, "
        f"password_file, refused) and edged check: password found {len(leaked)} times"
    )
    assert check.returncode == 0, check
    assert n_lines > 30
    assert not leaked


# -- the example ACL -----------------------------------------------------------------------


class RawClient:
    """A paho client that reports PUBACK/SUBACK reason codes (MQTT 5)."""

    def __init__(self, broker: Mosquitto, client_id: str, username: str, password: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.username_pw_set(username, password)
        self._cond = threading.Condition()
        self.acks: dict[int, str] = {}
        self.subacks: dict[int, list[str]] = {}
        self.received: list[str] = []
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.connected.wait(5)

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        with self._cond:
            self.acks[mid] = str(rc)
            self._cond.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: Any, p: Any) -> None:
        with self._cond:
            self.subacks[mid] = [str(rc) for rc in rcs]
            self._cond.notify_all()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append(msg.topic)
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes = b"x", retain: bool = False) -> str:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.acks, 5)
            return self.acks[info.mid]

    def subscribe(self, topic: str) -> list[str]:
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self.subacks, 5)
            return self.subacks[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_example_acl_confines_each_device_to_its_own_topics(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    start: Callable[..., LiveDaemon],
) -> None:
    pw = {"cam-a": "pa-" + secrets.token_hex(8), "cam-b": "pb-" + secrets.token_hex(8)}
    pw["edged-operator"] = "po-" + secrets.token_hex(8)
    pw["homeassistant"] = "ph-" + secrets.token_hex(8)
    group_block = (
        "\nuser cam-a\ntopic read edged/group/lab/update/offer\n"
        "topic read edged/group/lab/update/chunk/#\n"
    )
    broker = mosquitto_factory(users=pw, acl=ACL_FILE.read_text() + group_block)
    watcher = Subscriber(
        broker.host, broker.port, "edged/#", username="edged-operator",
        password=pw["edged-operator"],
    )  # fmt: skip
    consumer = Subscriber(
        broker.host, broker.port, "edged/+/prediction", username="homeassistant",
        password=pw["homeassistant"],
    )  # fmt: skip
    clients: list[RawClient] = []
    try:
        # Both devices run for real under the ACL: connected, everything they publish
        # accepted, every subscription granted (their logs say nothing was refused).
        a = start(
            {
                **_cfg(tmp_path, broker, "cam-a", username="cam-a", password=pw["cam-a"]),
                "update": {"groups": ["lab"]},
            }
        )
        b = start(_cfg(tmp_path, broker, "cam-b", username="cam-b", password=pw["cam-b"]))
        for d in (a, b):
            d.wait_line(CONNECTED, 15)
            d.wait_line(r"updates: listening", 15)
        for dev in ("cam-a", "cam-b"):
            for leaf in ("availability", "prediction", "state", "model"):
                watcher.wait_for(_on(device_topic(dev, leaf)), 15)
        consumer.wait_for(lambda m: m.topic == device_topic("cam-b", "prediction"), 5)

        # Device A's credentials (another client id, so the daemon keeps running).
        rogue = RawClient(broker, "cam-a-rogue", "cam-a", pw["cam-a"])
        clients.append(rogue)
        as_b = {
            leaf: rogue.publish(device_topic("cam-b", leaf), b"forged")
            for leaf in ("prediction", "state", "availability", "update/result", "set/result")
        }
        as_b["discovery"] = rogue.publish("homeassistant/sensor/cam-b/label/config", b"forged")
        own = rogue.publish(device_topic("cam-a", "health"), b'{"forged": false}')
        offer_b = rogue.publish(device_topic("cam-b", "update/offer"), b"{}")
        sub_b = rogue.subscribe(device_topic("cam-b", "update/offer"))
        sub_chunks_b = rogue.subscribe("edged/cam-b/update/chunk/#")
        sub_all = rogue.subscribe("edged/#")
        sub_own = rogue.subscribe(device_topic("cam-a", "update/offer"))
        sub_group = rogue.subscribe("edged/group/lab/update/offer")

        # The operator offers to B and to A: A's credentials only ever see A's.
        operator = RawClient(broker, "operator-1", "edged-operator", pw["edged-operator"])
        clients.append(operator)
        operator.publish(device_topic("cam-b", "update/command"), b"{}")
        operator.publish(device_topic("cam-a", "update/command"), b"{}")
        consumer_pub = RawClient(broker, "ha-1", "homeassistant", pw["homeassistant"])
        clients.append(consumer_pub)
        ha_write = consumer_pub.publish(device_topic("cam-b", "update/command"), b"{}")
        time.sleep(1.0)
        forged = [m for m in watcher.messages if m.payload == b"forged"]
        consumer_forged = [m for m in consumer.messages if m.payload == b"forged"]
        rogue_got = list(rogue.received)
        logs = a.log() + b.log()
    finally:
        for c in clients:
            c.close()
        watcher.close()
        consumer.close()
    print(
        f"\nACL (config/mosquitto-acl.conf, %u = device id): both daemons publish and subscribe "
        f"with nothing refused; device A publishing as B (QoS 1) -> {sorted(set(as_b.values()))}, "
        f"{len(forged)} delivered; A offering to B -> {offer_b}; A subscribing to B's offer -> "
        f"{sub_b}, to edged/# -> {sub_all}; messages A received from B's topics: "
        f"{sum('/cam-b/' in t for t in rogue_got)}; homeassistant writing a command -> {ha_write}"
    )
    broker_said_no = re.findall(r"refused the connection|refused a subscription|rejected a", logs)
    assert not broker_said_no, logs
    assert set(as_b.values()) == {"Not authorized"}, as_b
    assert own == "Success"
    assert offer_b == "Not authorized" and ha_write == "Not authorized"
    assert not forged and not consumer_forged
    # Mosquitto grants the subscriptions and checks read access on each message it delivers:
    # nothing of B's comes through, A's own command does.
    assert not [t for t in rogue_got if "/cam-b/" in t], rogue_got
    assert device_topic("cam-a", "update/command") in rogue_got, rogue_got
    assert all(s[0] in ("Granted QoS 1", "Not authorized") for s in (sub_b, sub_chunks_b))
    assert sub_own == ["Granted QoS 1"] and sub_group == ["Granted QoS 1"], (sub_own, sub_group)
