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
import secrets
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edged.errors import BundleError, OfferError
from edged.model.bundle import load_private_key, read_bundle
from edged.protocol.base import read
from edged.protocol.payloads import ModelState
from edged.publish.topics import chunk_topic, offer_topic
from edged.update.transfer import DEFAULT_CHUNK_SIZE, Offer, make_offer
from tools.answers import NO_ANSWER, Resender, Row, answers, target_of
from tools.brokerargs import add_broker_args
from tools.mqttclient import FAILED, OK, USAGE_ERROR, Broker, PushError
from tools.rollback import rollback

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

OK_STATUSES = ("accepted", "current")
_HEADROOM = 512  # bytes of a PUBLISH packet besides the payload (topic, header)


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


def _rollback_key(args: argparse.Namespace) -> Ed25519PrivateKey:
    key = signing_key(args)
    assert key is not None  # _check: a rollback needs --key
    return key


def signing_key(args: argparse.Namespace) -> Ed25519PrivateKey | None:
    if args.key is None:
        return None
    try:
        return load_private_key(args.key)
    except BundleError as err:
        raise PushError(str(err), USAGE_ERROR) from None


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
        rows = (
            rollback(args, lambda: _rollback_key(args)) if args.rollback is not None else push(args)
        )
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
