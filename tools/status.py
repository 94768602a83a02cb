"""``edgectl status``: what every edged device on a broker says about itself, at a glance.

::

    edgectl status [--host H --port P ...] [--group G | --device ID ...] [--json]

It subscribes to the retained topics each device keeps on the broker -- ``availability``,
``model`` (active model, last update, update groups, transfer in progress) and ``stats``
(fps, time of the last snapshot) -- under ``<prefix>/+/`` (or only the ``--device`` ones,
exact topics), collects what the broker holds, and exits: the broker sends the retained
messages of a subscription before anything published after it, so a probe message of its own
marks the end (``--settle`` seconds at most). Every device that left one of these topics is
listed; ``--group G`` keeps those whose ``model`` topic names ``G`` among their groups.

``last seen`` is the newest time a device put in its retained ``stats`` or ``model`` topics
(its stats snapshots come every ``[stats] interval_s``). Exit status: 0 when at least one
device was found, 1 when none, 2 for bad arguments or a broker that cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from edged.infra.guard import one_line
from tools.brokerargs import add_broker_args
from tools.mqttclient import Broker, PushError, json_object

TOPICS = ("availability", "model", "stats")
USAGE_ERROR, NONE_FOUND, OK = 2, 1, 0


def collect(
    messages: list[tuple[str, bytes]], prefix: str, group: str | None = None
) -> list[dict[str, Any]]:
    """One record per device from its retained topics (pure: tests feed it directly)."""
    seen: dict[str, dict[str, Any]] = {}
    for topic, payload in messages:
        if not topic.startswith(prefix + "/"):
            continue
        parts = topic[len(prefix) + 1 :].split("/")
        if len(parts) != 2 or parts[1] not in TOPICS or not payload:
            continue
        device, kind = parts
        entry = seen.setdefault(device, {})
        if kind == "availability":
            entry[kind] = payload.decode("utf-8", "replace")[:40]
        else:
            value = json_object(payload)
            if value is not None:
                entry[kind] = value
    rows = [_row(d, e) for d, e in sorted(seen.items())]
    if group is not None:
        rows = [r for r in rows if group in r["groups"]]
    return rows


def _row(device: str, e: dict[str, Any]) -> dict[str, Any]:
    model, stats = e.get("model") or {}, e.get("stats") or {}
    active = model.get("active") if isinstance(model.get("active"), dict) else None
    if active is None and isinstance(stats.get("model"), dict):
        active = stats["model"]  # a device with updates disabled still says it in its stats
    last = model.get("last_update") if isinstance(model.get("last_update"), dict) else None
    receiving = model.get("receiving") if isinstance(model.get("receiving"), dict) else None
    times = [t for t in (stats.get("ts"), (last or {}).get("ts")) if isinstance(t, str)]
    fps = stats.get("fps")
    groups = model.get("groups")
    return {
        "device": device,
        "availability": e.get("availability"),
        "model": (
            {
                "name": active.get("name"),
                "version": active.get("version"),
                "sha256": active.get("sha256"),
                "confirmed": active.get("confirmed"),
            }
            if active
            else None
        ),
        "last_update": last,
        "receiving": receiving,
        "fps": _number(fps),
        "last_seen": max(times) if times else None,
        "groups": [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else [],
    }


def _number(value: Any) -> float | int | None:
    """A finite number of sane size, or None (stats come from anyone who may publish)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return value if math.isfinite(value) and abs(value) < 1e12 else None
    except OverflowError:  # an int too large for a float
        return None


def _plain(value: Any) -> Any:
    """``value`` with every non-finite float as None: what ``--json`` prints is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    """One table cell: a printable line (no terminal escapes from device-made text), bounded."""
    return "-" if value is None or value == "" else one_line(value, 64)


def table(rows: list[dict[str, Any]]) -> str:
    header = ("device", "availability", "model", "sha256", "last update", "fps", "last seen")
    lines = [header]
    for r in rows:
        m = r["model"] or {}
        model = f"{m.get('name')} v{m.get('version')}" if m else "-"
        if m and m.get("confirmed") is False:
            model += " (probation)"
        last = r["last_update"] or {}
        update = f"{last.get('status')} v{last.get('version')}" if last else "-"
        if last and last.get("status") == "rolled_back" and last.get("transfer_id") is None:
            update = f"rollback to v{last.get('version')}"  # a command, not a failed update
        if r["receiving"]:
            update = f"receiving v{r['receiving'].get('version')}"
        sha = str(m.get("sha256") or "")[:12]
        fps = r["fps"]
        lines.append(
            (
                _cell(r["device"]),
                _cell(r["availability"]),
                _cell(model),
                _cell(sha),
                _cell(update),
                "-" if fps is None else f"{fps:g}",
                _cell(r["last_seen"]),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edgectl status",
        description="Show every edged device on a broker: availability, model, last update, "
        "fps, last seen (from the retained topics).",
    )
    ap.add_argument("--device", action="append", metavar="ID", help="only this device (repeatable)")
    ap.add_argument("--group", metavar="G", help="only devices in update group G")
    ap.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    add_broker_args(ap)
    ap.add_argument(
        "--settle",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds to wait at most for the retained messages (default 3)",
    )
    return ap


def fetch(args: argparse.Namespace) -> tuple[list[tuple[str, bytes]], float]:
    """The retained messages, and the seconds it took to collect them after connecting."""
    p = args.prefix
    if args.device:
        topics = [f"{p}/{d}/{t}" for d in args.device for t in TOPICS]
    else:
        topics = [f"{p}/+/{t}" for t in TOPICS]
    broker = Broker(args)
    try:
        t0 = time.monotonic()
        # QoS 0: a broker queues retained messages for a QoS 1 subscription only up to its
        # limit (mosquitto: max_queued_messages 1000) and drops the rest, silently; at QoS 0
        # they are written out as they come (the probe too, so it still comes after them).
        broker.subscribe(topics, qos=0)
        broker.settle(f"{p}/status-probe/{broker.client_id}", timeout=args.settle, qos=0)
        took = time.monotonic() - t0
        return [(m.topic, m.payload) for m in broker.messages()], took
    finally:
        broker.close()


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["status"]:
        args_list = args_list[1:]
    try:
        args = build_parser().parse_args(args_list)
    except SystemExit as exc:
        return OK if exc.code == 0 else USAGE_ERROR
    if args.settle <= 0:
        print("status: error: --settle must be positive", file=sys.stderr)
        return USAGE_ERROR
    try:
        messages, took = fetch(args)
    except PushError as err:
        print(f"status: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    rows = collect(messages, args.prefix, args.group)
    if args.json:
        print(json.dumps(_plain(rows), indent=1, allow_nan=False))
    else:
        print(table(rows))
        print(f"status: {len(rows)} device(s), collected in {took:.2f} s", file=sys.stderr)
    return OK if rows else NONE_FOUND


if __name__ == "__main__":
    sys.exit(main())
