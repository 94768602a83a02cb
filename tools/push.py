"""``python -m tools push``: send a model bundle to edged devices over MQTT, or a signed rollback.

::

    python -m tools push BUNDLE --device cam-1 [--device cam-2 ...]
    python -m tools push BUNDLE --group lab (--expect N | --devices cam-1 cam-2 ...)
    python -m tools push --rollback VERSION --device cam-1 --key release.pem

Broker options: ``--host --port --username --password-file --ca-file --prefix --protocol``.

A push publishes, retained and at QoS 1 (waiting for the broker's acknowledgements), the
bundle's chunks and then its offer under ``<prefix>/<device>/update/`` (or
``<prefix>/group/<group>/update/``), so that a device that is offline now gets the bundle when
it comes back, without this tool. It reads the offer retained there before (a push it
replaces) and clears that transfer's chunks. Then it waits up to ``--timeout`` seconds for each
device's result and prints one line per device: ``accepted``, ``rejected`` (with the reason),
``current`` (the device already runs this version), or ``no answer``. Exit status: 0 when every
expected device accepted (or is current), 1 otherwise, 2 for bad arguments or an unreadable
bundle.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edged.errors import BundleError
from edged.model.bundle import load_private_key, read_bundle
from edged.publish.topics import chunk_topic, offer_topic
from edged.update.command import sign_command
from edged.update.transfer import DEFAULT_CHUNK_SIZE, Offer, OfferError, make_offer

USAGE_ERROR, FAILED, OK = 2, 1, 0
Row = tuple[str, str, str]  # status, version, reason
OK_STATUSES = ("accepted", "current")
_HEADROOM = 512  # bytes of a PUBLISH packet besides the payload (topic, header)


class PushError(Exception):
    """One line for the user; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Received:
    topic: str
    payload: bytes


class Broker:
    """A small synchronous wrapper around a paho client (VERSION2 callbacks)."""

    def __init__(self, args: argparse.Namespace) -> None:
        v5 = args.protocol == "5"
        self.client_id = f"edged-push-{secrets.token_hex(4)}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        if args.username is not None:
            password = None
            if args.password_file is not None:
                password = _read_text(args.password_file).rstrip("\r\n")
            self.client.username_pw_set(args.username, password)
        if args.ca_file is not None:
            self.client.tls_set(ca_certs=str(args.ca_file))
        self.where = f"{args.host}:{args.port}"
        self.max_packet: int | None = None
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._subacks: set[int] = set()
        self._connected: bool | None = None
        self._refused = ""
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        try:
            self.client.connect(args.host, args.port, keepalive=30)
        except OSError as err:
            raise PushError(f"cannot connect to {self.where}: {err.strerror or err}") from None
        self.client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._connected is not None, timeout=15)
            if not self._connected:
                self.close()
                raise PushError(f"broker {self.where} refused the connection: {self._refused}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._connected = not rc.is_failure
            self._refused = str(rc)
            size = getattr(props, "MaximumPacketSize", None)
            self.max_packet = size if isinstance(size, int) else None
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._connected = False
            self._refused = str(rc)
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._messages.append(Received(msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def subscribe(self, topics: list[str], timeout: float = 10.0) -> None:
        _rc, mid = self.client.subscribe([(t, 1) for t in topics])
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, timeout):
                raise PushError(f"broker {self.where} did not confirm the subscriptions")

    def settle(self, topic: str, timeout: float = 3.0) -> None:
        """Wait until the retained messages of earlier subscriptions have arrived: they come
        before our own probe message on the same connection (skipped after ``timeout``)."""
        token = secrets.token_hex(8).encode()
        self.subscribe([topic])
        self.client.publish(topic, token, qos=0)
        self.wait(
            lambda: any(m.topic == topic and m.payload == token for m in self._messages), timeout
        )

    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def wait(self, done: Callable[[], bool], timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(done, timeout)

    def publish_all(self, items: list[tuple[str, bytes, bool]], timeout: float) -> None:
        """Publish at QoS 1 and wait for every acknowledgement."""
        infos = [self.client.publish(t, p, qos=1, retain=r) for t, p, r in items]
        deadline = time.monotonic() + timeout
        for info in infos:
            while not info.is_published():
                if not self._connected:
                    raise PushError(
                        f"broker {self.where} dropped the connection while publishing "
                        f"({self._refused}); is a chunk over its max_packet_size? "
                        "(try a smaller --chunk-size)"
                    )
                if time.monotonic() > deadline:
                    raise PushError(f"broker {self.where} did not acknowledge the messages")
                time.sleep(0.01)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise PushError(f"{path}: cannot read ({err.strerror or err})", USAGE_ERROR) from None


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- push --------------------------------------------------------------------------------------


def push(args: argparse.Namespace) -> dict[str, Row]:
    """Push the bundle; returns {device: (status, version, reason)}."""
    try:
        data = args.bundle.read_bytes()
    except OSError as err:
        raise PushError(
            f"{args.bundle}: cannot read ({err.strerror or err})", USAGE_ERROR
        ) from None
    try:
        bundle = read_bundle(data, allow_unsigned=True, max_bytes=1 << 30)
    except BundleError as err:
        raise PushError(f"{args.bundle}: not a valid bundle ({err})", USAGE_ERROR) from None
    if "signature.json" not in zipfile.ZipFile(io.BytesIO(data)).namelist():
        print(
            "push: note: the bundle is unsigned (devices refuse it unless allow_unsigned)",
            file=sys.stderr,
        )
    return send(args, data, bundle.name, bundle.version, bundle.sha256)


def send(
    args: argparse.Namespace, data: bytes, name: str, version: int, model_sha256: str | None = None
) -> dict[str, Row]:
    """Publish ``data`` as bundle ``name`` v``version`` and collect the answers (no checks of
    ``data`` itself: tests send broken bundles through this)."""
    p = args.prefix
    scopes = [f"{p}/{d}" for d in args.device] if args.device else [f"{p}/group/{args.group}"]
    known = list(args.device or args.devices or [])
    tid = secrets.token_hex(8)
    try:
        offer, chunks = make_offer(
            data, transfer_id=tid, name=name, version=version, chunk_size=args.chunk_size
        )
    except OfferError as err:
        raise PushError(str(err), USAGE_ERROR) from None
    broker = Broker(args)
    try:
        if broker.max_packet is not None and args.chunk_size + _HEADROOM > broker.max_packet:
            raise PushError(
                f"--chunk-size {args.chunk_size} does not fit the broker's maximum packet size "
                f"({broker.max_packet} bytes)",
                USAGE_ERROR,
            )
        results = [f"{p}/{d}/update/result" for d in known] or [f"{p}/+/update/result"]
        retained = [offer_topic(s) for s in scopes] + [f"{p}/{d}/model" for d in known]
        broker.subscribe(results + retained)
        broker.settle(f"{scopes[0]}/update/probe/{broker.client_id}")
        before = {m.topic: m.payload for m in broker.messages()}
        current: dict[str, Row] = {}
        for d in known:  # already running this version: it ignores the offer quietly
            state = _json(before.get(f"{p}/{d}/model", b"")) or {}
            active = state.get("active") or {}
            if active.get("version") == version and active.get("sha256") == model_sha256:
                current[d] = ("current", str(version), "")
        items: list[tuple[str, bytes, bool]] = []
        stale: list[tuple[str, bytes, bool]] = []
        for scope in scopes:
            items += [(chunk_topic(scope, tid, i), c, True) for i, c in enumerate(chunks)]
            items.append((offer_topic(scope), offer.to_json(), True))
            try:
                old = Offer.from_json(before.get(offer_topic(scope), b""))
            except OfferError:
                continue
            stale += [
                (chunk_topic(scope, old.transfer_id, i), b"", True) for i in range(len(old.chunks))
            ]
        t0 = time.monotonic()
        broker.publish_all(items, args.timeout)
        broker.publish_all(stale, args.timeout)
        print(
            f"push: {name} v{version} ({len(data)} bytes, {len(chunks)} chunk(s)) published to "
            f"{', '.join(scopes)} as transfer {tid} in {time.monotonic() - t0:.1f} s",
            file=sys.stderr,
        )
        expected = len(known) if known else args.expect
        deadline = t0 + args.timeout
        return answers(
            broker, lambda r: r.get("transfer_id") == tid, current, expected, deadline, known
        )
    finally:
        broker.close()


def answers(
    broker: Broker,
    match: Callable[[dict[str, Any]], bool],
    given: dict[str, Row],
    expected: int,
    deadline: float,
    known: list[str],
) -> dict[str, Row]:
    """Wait until ``expected`` devices answered (results matching ``match``) or ``deadline``."""

    def collect() -> dict[str, Row]:
        got = dict(given)
        for m in broker.messages():
            r = _json(m.payload) if m.topic.endswith("/update/result") else None
            if r is not None and match(r):
                got.setdefault(
                    str(r.get("device")),
                    (str(r.get("status")), str(r.get("version")), str(r.get("reason") or "")),
                )
        return got

    broker.wait(lambda: len(collect()) >= expected, max(0.0, deadline - time.monotonic()))
    got = collect()
    for d in known:
        got.setdefault(d, ("no answer", "-", ""))
    return got


# -- rollback ----------------------------------------------------------------------------------


def rollback(args: argparse.Namespace) -> dict[str, Row]:
    try:
        key = load_private_key(args.key)
    except BundleError as err:
        raise PushError(str(err), USAGE_ERROR) from None
    p = args.prefix
    broker = Broker(args)
    try:
        broker.subscribe([f"{p}/{d}/update/result" for d in args.device])
        issued: dict[str, float] = {}
        items = []
        for d in args.device:
            issued[d] = round(time.time(), 3)
            cmd = sign_command(
                key, command="rollback", device=d, version=args.rollback, issued=issued[d]
            )
            items.append((f"{p}/{d}/update/command", json.dumps(cmd).encode(), False))
        t0 = time.monotonic()
        broker.publish_all(items, args.timeout)
        deadline, devices = t0 + args.timeout, list(args.device)
        return answers(
            broker,
            lambda r: r.get("issued") == issued.get(str(r.get("device"))),
            {},
            len(issued),
            deadline,
            devices,
        )
    finally:
        broker.close()


# -- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tools push",
        description="Send a model bundle to edged devices over MQTT (or a signed rollback).",
    )
    ap.add_argument("bundle", nargs="?", type=Path, help="the .edgb bundle to send")
    ap.add_argument("--device", action="append", metavar="ID", help="a device (repeatable)")
    ap.add_argument("--group", metavar="G", help="a group of devices ([update] groups)")
    ap.add_argument("--expect", type=int, metavar="N", help="group: wait for N answers")
    ap.add_argument("--devices", nargs="+", metavar="ID", help="group: the devices to wait for")
    ap.add_argument("--rollback", type=int, metavar="VERSION", help="send a rollback command")
    ap.add_argument("--key", type=Path, help="Ed25519 private key (PEM) signing the command")
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--username")
    ap.add_argument("--password-file", type=Path)
    ap.add_argument("--ca-file", type=Path, help="CA bundle: connect with TLS")
    ap.add_argument("--prefix", default="edged", help="topic prefix (default: edged)")
    ap.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for answers")
    ap.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per chunk")
    return ap


def _check(args: argparse.Namespace) -> str | None:
    if args.rollback is not None:
        if args.bundle is not None or args.group is not None:
            return "--rollback takes no BUNDLE and no --group"
        if not args.device or args.key is None:
            return "--rollback needs --device and --key"
        return None
    if args.bundle is None:
        return "give a BUNDLE (or --rollback VERSION)"
    if bool(args.device) == (args.group is not None):
        return "give --device ID (repeatable) or --group G"
    if args.group is not None and (args.expect is None) == (args.devices is None):
        return "--group needs --expect N or --devices ID ..."
    if args.device and (args.expect is not None or args.devices is not None):
        return "--expect and --devices go with --group"
    if args.expect is not None and args.expect < 1:
        return "--expect must be at least 1"
    if args.timeout <= 0:
        return "--timeout must be positive"
    return None


def print_table(rows: dict[str, Row]) -> None:
    header = ("device", "status", "version", "reason")
    lines = [header, *((d, *rows[d]) for d in sorted(rows))]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line[:3], widths, strict=True)) + "  " + line[3])


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["push"]:
        args_list = args_list[1:]
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: usage on stderr; --help exits 0
        return OK if exc.code == 0 else USAGE_ERROR
    problem = _check(args)
    if problem is not None:
        print(f"push: error: {problem}", file=sys.stderr)
        return USAGE_ERROR
    try:
        rows = rollback(args) if args.rollback is not None else push(args)
    except PushError as err:
        print(f"push: error: {err}", file=sys.stderr)
        return err.status
    print_table(rows)
    if args.expect is not None and len(rows) < args.expect:
        print(f"push: {len(rows)} of {args.expect} expected devices answered", file=sys.stderr)
    wanted = ("rolled_back",) if args.rollback is not None else OK_STATUSES
    expected = len(args.device or args.devices or []) or args.expect
    good = sum(1 for status, _, _ in rows.values() if status in wanted)
    return OK if good >= expected and all(s in wanted for s, _, _ in rows.values()) else FAILED


if __name__ == "__main__":
    sys.exit(main())
