"""The JSON payloads edged publishes: numbers as numbers, never image data."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

SCHEMA = 1


def iso_utc(wall: float) -> str:
    """``2026-11-22T10:15:03.123Z``"""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def wall_time(monotonic_ts: float) -> float:
    """Wall-clock time of an earlier ``time.monotonic()`` reading."""
    return time.time() - (time.monotonic() - monotonic_ts)


def dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def prediction_event(
    *,
    device: str,
    seq: int,
    captured: float,
    reason: str,
    label: str,
    score: float,
    top: list[tuple[str, float]],
    model: dict[str, Any],
    latency_ms: dict[str, float],
    frame: str = "",
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema": SCHEMA,
        "device": device,
        "seq": seq,
        "ts": iso_utc(wall_time(captured)),
        "reason": reason,
        "label": label,
        "score": round(float(score), 5),
        "top": [{"label": lab, "score": round(float(s), 5)} for lab, s in top],
        "model": model,
        "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()},
    }
    if frame:
        event["frame"] = frame
    return event


def health_event(
    *, device: str, source_ok: bool, error: str | None, faults: int, skipped: int
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "device": device,
        "ts": iso_utc(time.time()),
        "source": {"ok": source_ok, "error": error, "faults": faults, "skipped": skipped},
    }
