"""``edgectl push``: send a model bundle to edged devices over MQTT, or a signed rollback.

::

    edgectl push BUNDLE --key release.pem --device cam-1 [--device cam-2 ...]
    edgectl push BUNDLE --key release.pem --group lab (--expect N | --devices cam-1 cam-2 ...)
    edgectl push --rollback MODEL --device cam-1 --key release.pem

Broker options: ``--host --port --username --password-file --ca-file --prefix --protocol``.

A push signs one offer per target (device or group) with ``--key``, publishes the bundle's
chunks retained at QoS 1 and waits until the broker acknowledged every one, and only then the
offers (retained), so that no device ever sees an offer whose chunks are not all there; a
device that is offline now gets the bundle when it comes back, without this tool. If anything
fails on the way, it replaces everything it published with retained empty payloads (nothing
of a failed push stays on the broker). After the offer it clears the chunks of the push it
replaces, and, once every device named with ``--device`` has answered, its own offer and
chunks. It waits up to ``--timeout`` seconds for each device's answer, then (by default) up
to ``--probation-timeout`` seconds for the end of each accepting device's probation, and
prints one line per device: ``confirmed`` (passed its probation), ``rolled_back`` (with the
reason), ``rejected`` (with the reason), ``current`` (already runs this version), ``accepted``
(with ``--no-wait-probation``) or ``no answer``. Exit status: 0 when every expected device
confirmed (``--no-wait-probation``: accepted) or is current, 1 otherwise, 2 for bad arguments
or an unreadable bundle.

While it waits it answers the devices' requests (``<prefix>/<device>/update/request``, see
``edged.update.receiver``): a targeted device that has not answered yet and says hello (it
just connected) gets the offer again, one that names missing chunks of this transfer gets
those chunks again, and every ``--reoffer-s`` seconds the offer is published again to every
target with a device still silent -- all not retained, at most one answer per device a
second, until ``--timeout``. A broker cluster that keeps retained messages on the node they
were published on (RabbitMQ) needs this: a device on another node sees neither the retained
offer nor the chunks; on a single broker the retained copies already reach it and the
re-sends are ignored (duplicates of a transfer the device has or is receiving).

``--rollback MODEL`` names any model the device keeps: ``VERSION`` (0 is a plain ``.tflite``
it booted from), ``NAME@VERSION``, or a prefix of its sha256 (``sha256:PREFIX`` when the
prefix is all decimal digits).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import secrets
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edged.errors import BundleError, OfferError
from edged.infra.guard import json_depth
from edged.model.bundle import load_private_key, read_bundle
from edged.protocol.base import read
from edged.protocol.payloads import ModelState, UpdateResult
from edged.publish.topics import chunk_topic, offer_topic
from edged.update.command import sign_command
from edged.update.receiver import MAX_ASKED
from edged.update.transfer import DEFAULT_CHUNK_SIZE, Offer, make_offer
from tools.brokerargs import add_broker_args

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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

    def subscribe(self, topics: list[str], timeout: float = 10.0, qos: int = 1) -> None:
        _rc, mid = self.client.subscribe([(t, qos) for t in topics])
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, timeout):
                raise PushError(f"broker {self.where} did not confirm the subscriptions")

    def settle(self, topic: str, timeout: float = 3.0, qos: int = 1) -> None:
        """Wait until the retained messages of earlier subscriptions have arrived: they come
        before our own probe message on the same connection (skipped after ``timeout``)."""
        token = secrets.token_hex(8).encode()
        self.subscribe([topic], qos=qos)
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

    @property
    def connected(self) -> bool:
        with self._cond:
            return bool(self._connected)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise PushError(f"{path}: cannot read ({err.strerror or err})", USAGE_ERROR) from None


def _json(payload: bytes) -> dict[str, Any] | None:
    """A JSON object from the broker (anyone may have published it), or None: never raises."""
    if len(payload) > MAX_ANSWER_BYTES or json_depth(payload) > MAX_ANSWER_DEPTH:
        return None
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


MAX_ANSWER_BYTES = 1 << 20  # a device's result, model or request is far smaller
MAX_ANSWER_DEPTH = 16
MAX_COPIES = 8  # bundle copies all chunk re-sends of one group push may add up to

# -- push ---------------------------------------------------------------------------------------


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


def signing_key(args: argparse.Namespace) -> Ed25519PrivateKey | None:
    if args.key is None:
        return None
    try:
        return load_private_key(args.key)
    except BundleError as err:
        raise PushError(str(err), USAGE_ERROR) from None


def target_of(prefix: str, scope: str) -> str:
    """``<prefix>/cam-1`` -> ``cam-1``; ``<prefix>/group/lab`` -> ``group/lab``."""
    return scope[len(prefix) + 1 :]


def clear(args: argparse.Namespace, broker: Broker, topics: list[str]) -> None:
    """Replace what a failed push published with retained empty payloads, on a fresh
    connection (the old one may still hold, and keep re-sending, what made the push fail)."""
    broker.close()
    if not topics:
        return
    empties = [(t, b"", True) for t in reversed(topics)]  # the offers (published last) first
    try:
        broker = Broker(args)
        broker.publish_all(empties, args.timeout)
        print(f"push: cleared the {len(topics)} retained message(s) it published", file=sys.stderr)
    except PushError as err:
        print(
            f"push: warning: could not clear the {len(topics)} retained message(s) it "
            f"published ({err})",
            file=sys.stderr,
        )
    finally:
        broker.close()


def send(
    args: argparse.Namespace, data: bytes, name: str, version: int, model_sha256: str | None = None
) -> dict[str, Row]:
    """Publish ``data`` as bundle ``name`` v``version`` and collect the answers (no checks of
    ``data`` itself: tests send broken bundles through this)."""
    p = args.prefix
    scopes = [f"{p}/{d}" for d in args.device] if args.device else [f"{p}/group/{args.group}"]
    known = list(args.device or args.devices or [])
    tid = secrets.token_hex(8)
    key = signing_key(args)
    try:
        offers = {
            scope: make_offer(
                data,
                transfer_id=tid,
                name=name,
                version=version,
                chunk_size=args.chunk_size,
                target=target_of(p, scope),
                key=key,
            )
            for scope in scopes
        }
    except OfferError as err:
        raise PushError(str(err), USAGE_ERROR) from None
    chunks = offers[scopes[0]][1]
    broker = Broker(args)
    published: list[str] = []
    try:
        if broker.max_packet is not None and args.chunk_size + _HEADROOM > broker.max_packet:
            raise PushError(
                f"--chunk-size {args.chunk_size} does not fit the broker's maximum packet size "
                f"({broker.max_packet} bytes)",
                USAGE_ERROR,
            )
        results = [f"{p}/{d}/update/result" for d in known] or [f"{p}/+/update/result"]
        results += [f"{p}/{d}/update/request" for d in known] or [f"{p}/+/update/request"]
        retained = [offer_topic(s) for s in scopes] + [f"{p}/{d}/model" for d in known]
        broker.subscribe(results + retained)
        broker.settle(f"{scopes[0]}/update/probe/{broker.client_id}")
        before = {m.topic: m.payload for m in broker.messages()}
        current: dict[str, Row] = {}
        for d in known:  # already running this version: it ignores the offer quietly
            state = read(ModelState, before.get(f"{p}/{d}/model", b""))
            active = state.active if state is not None else None
            if active is not None and (active.version, active.sha256) == (version, model_sha256):
                current[d] = ("current", str(version), "")
        stale = []
        for scope in scopes:
            try:
                old = Offer.from_json(before.get(offer_topic(scope), b""))
            except OfferError:
                continue
            stale += [chunk_topic(scope, old.transfer_id, i) for i in range(len(old.chunks))]
        t0 = time.monotonic()
        # Every chunk on the broker (acknowledged) before the offer that points at them.
        items = [
            (chunk_topic(scope, tid, i), c, True) for scope in scopes for i, c in enumerate(chunks)
        ]
        published += [t for t, _, _ in items]
        broker.publish_all(items, args.timeout)
        offer_items = [(offer_topic(s), offers[s][0].to_json(), True) for s in scopes]
        published += [t for t, _, _ in offer_items]
        broker.publish_all(offer_items, args.timeout)
    except BaseException:
        clear(args, broker, published)
        raise
    try:
        # The previous push's chunks: superseded by this offer.
        broker.publish_all([(t, b"", True) for t in stale], args.timeout)
        print(
            f"push: {name} v{version} ({len(data)} bytes, {len(chunks)} chunk(s)) published to "
            f"{', '.join(scopes)} as transfer {tid} in {time.monotonic() - t0:.1f} s",
            file=sys.stderr,
        )
        expected = len(known) if known else args.expect
        resender = Resender(
            broker, p, tid, {s: offers[s][0].to_json() for s in scopes}, chunks,
            group=None if args.device else args.group, version=version,
            model_sha256=model_sha256, every=args.reoffer_s,
        )  # fmt: skip
        rows = answers(
            broker, tid, current, expected, t0 + args.timeout, known,
            probation=args.probation_timeout if args.wait_probation else None,
            resender=resender,
        )  # fmt: skip
        if resender.reoffers or resender.periodic or resender.resent:
            print(
                f"push: re-sent the offer {resender.reoffers} time(s) on request and "
                f"{resender.periodic} time(s) to silent targets, and {resender.resent} "
                "chunk(s) on request",
                file=sys.stderr,
            )
        if args.device and all(r[0] != NO_ANSWER for r in rows.values()):
            # Every device has it (or refused it): nothing retained is needed any more.
            # Offers first: never an offer left without its chunks, even if this is cut short.
            broker.publish_all([(t, b"", True) for t in reversed(published)], args.timeout)
        return rows
    finally:
        broker.close()


NO_ANSWER = "no answer"
FINAL = ("confirmed", "rolled_back", "rejected")
MAX_REQUEST_BYTES = 16 * 1024  # a device's request is small (edged.update.receiver)
MAX_RESENT = MAX_ASKED  # chunks re-sent for one request


class Resender:
    """Answers devices' requests during a push, and re-offers periodically (see the module
    docstring). Requests are outside input: anything malformed, from a device not targeted,
    or naming chunks out of range is ignored; each device gets at most one answer a second,
    except chunks never re-sent to it before: what one device can make it send is bounded by
    one copy of the bundle plus one answer a second. A group's chunks go to one topic that
    every member reads, so in a group push that bound is per group, not per device name (made-up
    names cannot multiply it), and all its re-sent chunks together never exceed ``MAX_COPIES``
    copies of the bundle (a device push's targets are named, each bounded as above)."""

    def __init__(
        self,
        broker: Broker,
        prefix: str,
        tid: str,
        offers: dict[str, bytes],
        chunks: list[bytes],
        *,
        group: str | None,
        version: int,
        model_sha256: str | None,
        every: float,
    ) -> None:
        self.broker, self.prefix, self.tid = broker, prefix, tid
        self.offers, self.chunks, self.group = offers, chunks, group
        self.version, self.model_sha256, self.every = version, model_sha256, every
        self.current: dict[str, Row] = {}  # devices whose hello says they run this version
        self.seen_devices: set[str] = set()  # devices that sent a valid request
        self._read = 0
        self._last: dict[str, float] = {}  # device -> time of the last answer
        self._sent: dict[str, set[int]] = {}  # device -> chunk indices re-sent to it
        self._periodic = time.monotonic()
        self.reoffers = self.periodic = self.resent = 0

    def scope_of(self, device: str, groups: Any) -> str | None:
        if self.group is None:
            scope = f"{self.prefix}/{device}"
            return scope if scope in self.offers else None
        if isinstance(groups, list) and self.group in groups:
            return f"{self.prefix}/group/{self.group}"
        return None

    def step(self, answered: set[str], silent_scopes: list[str]) -> None:
        msgs = self.broker.messages()
        new, self._read = msgs[self._read :], len(msgs)
        for m in new:
            if m.topic.endswith("/update/request") and len(m.payload) <= MAX_REQUEST_BYTES:
                self._request(m, answered)
        now = time.monotonic()
        if silent_scopes and now - self._periodic >= self.every:
            self._periodic = now
            self.periodic += 1
            items = [(offer_topic(s), self.offers[s], False) for s in silent_scopes]
            self.broker.publish_all(items, 30)

    def _request(self, m: Received, answered: set[str]) -> None:
        parts = m.topic.split("/")
        device = parts[-3] if len(parts) >= 3 else ""
        r = _json(m.payload)
        if (
            r is None
            or r.get("device") != device
            or f"{self.prefix}/{device}/update/request" != m.topic
        ):
            return
        scope = self.scope_of(device, r.get("groups"))
        if scope is None:
            return
        self.seen_devices.add(device)
        active = r.get("active")
        if not isinstance(active, dict):
            active = {}
        if active.get("version") == self.version and active.get("sha256") == self.model_sha256:
            self.current.setdefault(device, ("current", str(self.version), ""))
            return
        if device in answered or device in self.current:
            return
        now = time.monotonic()
        missing = r.get("missing")
        if r.get("transfer_id") == self.tid and isinstance(missing, list):
            wanted = sorted(
                {i for i in missing[:MAX_RESENT] if type(i) is int and 0 <= i < len(self.chunks)}
            )
            # Who the chunks reach: the device, or (group) every member at once.
            key = device if self.group is None else scope
            sent = self._sent.setdefault(key, set())
            # Chunks not re-sent to it before go at once (each at most once: the device asks
            # for the next ones as soon as the last arrived); others once a second.
            if sent.intersection(wanted) and now - self._last.get(key, -1e9) < 1.0:
                return
            if self.group is not None and self.resent + len(wanted) > MAX_COPIES * len(self.chunks):
                return  # the group push's budget is spent: the device waits for a re-offer
            sent.update(wanted)
            self._last[key] = now
            items = [(chunk_topic(scope, self.tid, i), self.chunks[i], False) for i in wanted]
            self.resent += len(items)
        else:
            if now - self._last.get(device, -1e9) < 1.0:
                return
            items = [(offer_topic(scope), self.offers[scope], False)]
            self.reoffers += 1
        self._last[device] = now
        if items:
            self.broker.publish_all(items, 30)


def answers(
    broker: Broker,
    tid: str,
    given: dict[str, Row],
    expected: int,
    deadline: float,
    known: list[str],
    *,
    probation: float | None = None,
    resender: Resender | None = None,
) -> dict[str, Row]:
    """Wait until ``expected`` devices answered transfer ``tid`` or ``deadline``; then, with
    ``probation`` (seconds), until each device that accepted it confirmed it or rolled it
    back. A device's row is its latest answer. ``resender`` answers requests meanwhile."""

    def collect() -> dict[str, Row]:
        got = dict(given)
        if resender is not None:
            for d, row in resender.current.items():
                got.setdefault(d, row)
        for m in broker.messages():
            r = read(UpdateResult, m.payload) if m.topic.endswith("/update/result") else None
            if r is None or r.transfer_id != tid:
                continue
            d = r.device
            row = (r.status, str(r.version), r.reason)
            if d not in got or got[d][0] not in FINAL:
                got[d] = row
        return got

    def wait(done: Callable[[], bool], until: float) -> None:
        while True:
            if resender is not None:
                rows = collect()
                if resender.group is None:
                    silent = [
                        s for s in resender.offers if target_of(resender.prefix, s) not in rows
                    ]
                else:
                    silent = list(resender.offers) if len(rows) < expected else []
                resender.step(set(rows), silent)
            remaining = until - time.monotonic()
            if done() or remaining <= 0:
                return
            broker.wait(done, min(0.25, remaining))

    wait(lambda: len(collect()) >= expected, deadline)
    if probation is not None:

        def settled() -> bool:
            rows = collect()
            return len(rows) >= expected and all(r[0] != "accepted" for r in rows.values())

        waiting = sum(r[0] == "accepted" for r in collect().values())
        if waiting:
            print(
                f"push: {waiting} device(s) accepted it; waiting up to {probation:g} s for the "
                "end of their probation (--no-wait-probation: do not wait)",
                file=sys.stderr,
            )
            wait(settled, time.monotonic() + probation)
    got = collect()
    if probation is not None:
        for d, row in got.items():
            if row[0] == "accepted":
                got[d] = (NO_ANSWER, row[1], f"accepted, no probation verdict in {probation:g} s")
    for d in known:
        got.setdefault(d, (NO_ANSWER, "-", ""))
    return got


# -- rollback ----------------------------------------------------------------------------------


_HEX = re.compile(r"^[0-9a-f]{6,64}$")


def rollback_target(spec: str) -> dict[str, Any]:
    """``7`` (version), ``name@7``, ``sha256:1a2b3c`` or a bare hex prefix (6+ digits, not all
    decimal) -> the command's fields naming the model; :class:`PushError` otherwise."""
    spec = spec.strip()
    if "@" in spec:
        name, _, version = spec.rpartition("@")
        if name and version.isdigit():
            return {"name": name, "version": int(version)}
    elif spec.startswith("sha256:") and _HEX.match(spec[7:].lower()):
        return {"sha256": spec[7:].lower()}
    elif spec.isdigit():
        return {"version": int(spec)}
    elif _HEX.match(spec.lower()):
        return {"sha256": spec.lower()}
    raise PushError(
        f"--rollback {spec!r}: give VERSION, NAME@VERSION, or a sha256 prefix (6+ hex digits, "
        "sha256:PREFIX when it is all decimal digits)",
        USAGE_ERROR,
    )


def rollback(args: argparse.Namespace) -> dict[str, Row]:
    target = rollback_target(args.rollback)
    key = signing_key(args)
    assert key is not None
    p = args.prefix
    broker = Broker(args)
    try:
        broker.subscribe([f"{p}/{d}/update/result" for d in args.device])
        issued: dict[str, float] = {}
        items = []
        for d in args.device:
            issued[d] = round(time.time(), 6)
            cmd = sign_command(key, command="rollback", device=d, issued=issued[d], **target)
            items.append((f"{p}/{d}/update/command", json.dumps(cmd).encode(), False))
        t0 = time.monotonic()
        broker.publish_all(items, args.timeout)
        deadline, devices = t0 + args.timeout, list(args.device)

        def collect() -> dict[str, Row]:
            got: dict[str, Row] = {}
            for m in broker.messages():
                r = read(UpdateResult, m.payload)
                if r is not None and r.command is not None and r.issued == issued.get(r.device):
                    v = r.version
                    got.setdefault(r.device, (r.status, "-" if v is None else str(v), r.reason))
            return got

        broker.wait(lambda: len(collect()) >= len(devices), max(0.0, deadline - time.monotonic()))
        got = collect()
        for d in devices:
            got.setdefault(d, (NO_ANSWER, "-", ""))
        return got
    finally:
        broker.close()


# -- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edgectl push",
        description="Send a model bundle to edged devices over MQTT (or a signed rollback).",
    )
    ap.add_argument("bundle", nargs="?", type=Path, help="the .edgb bundle to send")
    ap.add_argument("--device", action="append", metavar="ID", help="a device (repeatable)")
    ap.add_argument("--group", metavar="G", help="a group of devices ([update] groups)")
    ap.add_argument("--expect", type=int, metavar="N", help="group: wait for N answers")
    ap.add_argument("--devices", nargs="+", metavar="ID", help="group: the devices to wait for")
    ap.add_argument(
        "--rollback",
        "--rollback-to",
        dest="rollback",
        metavar="MODEL",
        help="send a signed rollback command to MODEL: VERSION (0 = the boot .tflite), "
        "NAME@VERSION or a sha256 prefix",
    )
    ap.add_argument(
        "--key", type=Path, help="Ed25519 private key (PEM) signing the offer or the command"
    )
    ap.add_argument(
        "--unsigned",
        action="store_true",
        help="send an unsigned offer (only devices without trusted_keys and with "
        "allow_unsigned take it)",
    )
    add_broker_args(ap)
    ap.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for acceptance (default 60)"
    )
    ap.add_argument(
        "--probation-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for the verdict of the devices' probation (default 600)",
    )
    ap.add_argument(
        "--no-wait-probation",
        dest="wait_probation",
        action="store_false",
        help="stop at acceptance; do not wait for the end of probation",
    )
    ap.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per chunk")
    ap.add_argument(
        "--reoffer-s",
        type=float,
        default=10.0,
        metavar="S",
        help="publish the offer again every S seconds to targets with a device still silent "
        "(not retained; for broker clusters; default 10)",
    )
    return ap


def _check(args: argparse.Namespace) -> str | None:
    if args.rollback is not None:
        if args.bundle is not None or args.group is not None:
            return "--rollback takes no BUNDLE and no --group"
        if not args.device or args.key is None:
            return "--rollback needs --device and --key"
        return None
    if args.bundle is None:
        return "give a BUNDLE (or --rollback MODEL)"
    if bool(args.device) == (args.group is not None):
        return "give --device ID (repeatable) or --group G"
    if args.group is not None and (args.expect is None) == (args.devices is None):
        return "--group needs --expect N or --devices ID ..."
    if args.device and (args.expect is not None or args.devices is not None):
        return "--expect and --devices go with --group"
    if args.expect is not None and args.expect < 1:
        return "--expect must be at least 1"
    if args.timeout <= 0 or args.probation_timeout <= 0 or args.reoffer_s <= 0:
        return "--timeout, --probation-timeout and --reoffer-s must be positive"
    if (args.key is None) != args.unsigned:
        return "give --key KEY.pem (signs the offer) or --unsigned"
    return None


def print_table(rows: dict[str, Row]) -> None:
    header = ("device", "status", "version", "reason")
    lines = [header, *((d, *rows[d]) for d in sorted(rows))]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    for line in lines:
        text = "  ".join(c.ljust(w) for c, w in zip(line[:3], widths, strict=True))
        print((text + "  " + line[3]).rstrip())


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
    except KeyboardInterrupt:
        print(
            "push: interrupted; what was published stays on the broker (a device that comes "
            "later still takes the retained offer): run push again to see the results",
            file=sys.stderr,
        )
        return 130
    print_table(rows)
    if args.expect is not None and len(rows) < args.expect:
        print(f"push: {len(rows)} of {args.expect} expected devices answered", file=sys.stderr)
    if args.rollback is not None:
        wanted: tuple[str, ...] = ("rolled_back",)
    elif args.wait_probation:
        wanted = ("confirmed", "current")
    else:
        wanted = (*OK_STATUSES, "confirmed")  # a device may pass probation while others answer
    expected = len(args.device or args.devices or []) or args.expect
    good = sum(1 for status, _, _ in rows.values() if status in wanted)
    return OK if good >= expected and all(s in wanted for s, _, _ in rows.values()) else FAILED


if __name__ == "__main__":
    sys.exit(main())
