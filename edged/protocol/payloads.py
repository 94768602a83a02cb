"""The JSON payloads a device publishes (one model each), and the plain-text ones.

Every JSON payload opens with the header (:class:`~edged.protocol.base.Header`: ``schema``,
``device``) and carries a ``ts`` (:data:`~edged.protocol.base.Timestamp`), except the retained
``model`` topic, which says what the device keeps (its ``last_update`` has the time).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from edged.protocol.base import Header, Payload, Timestamp, now

#: ``<base>/availability``, retained: ``online`` (connected), ``offline`` (the broker's last
#: will: the connection was lost), ``stopped`` (a clean stop).
Availability = Literal["online", "offline", "stopped"]
AVAILABILITY: tuple[Availability, ...] = ("online", "offline", "stopped")
#: ``<base>/state``, retained: the current label as plain UTF-8 text, or this while paused.
PAUSED_STATE = "paused"


# -- shared parts -------------------------------------------------------------------------------


class ModelRef(Payload):
    """A model, as predictions, stats and the model topic name it."""

    name: str
    version: int | None = Field(description="The bundle's version; 0 or null for a plain .tflite")
    sha256: str = Field(description="SHA-256 of the model.tflite the device runs")


class TopLabel(Payload):
    label: str
    score: float | None = Field(description="Rounded to 5 decimals; null if not a number")


# -- <base>/prediction --------------------------------------------------------------------------


class Prediction(Header):
    """One published result (``<base>/prediction``, QoS ``publish.qos``, not retained)."""

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"frame"})

    seq: int = Field(description="Increases by one per prediction, across restarts")
    ts: Timestamp = Field(default_factory=now)
    reason: str = Field(description="Why it was published: every, change, heartbeat, ...")
    label: str
    score: float | None = Field(description="The top score, rounded to 5 decimals")
    top: list[TopLabel] = Field(description="The top-k labels, best first")
    model: ModelRef
    latency_ms: dict[str, float | None] = Field(
        description="preprocess, invoke, postprocess and total (capture to publish), in ms"
    )
    frame: str | SkipJsonSchema[None] = Field(
        None, description="The frame's name (a file source); absent when it has none"
    )


def prediction(
    *,
    device: str,
    seq: int,
    ts: str,
    reason: str,
    label: str,
    score: float,
    top: list[tuple[str, float]],
    model: ModelRef,
    latency_ms: dict[str, float],
    frame: str = "",
) -> Prediction:
    return Prediction.model_construct(
        device=device,
        seq=seq,
        ts=ts,
        reason=reason,
        label=label,
        score=round(float(score), 5),
        top=[TopLabel.model_construct(label=lab, score=round(float(s), 5)) for lab, s in top],
        model=model,
        latency_ms={k: round(v, 3) for k, v in latency_ms.items()},
        frame=frame or None,
    )


# -- <base>/health ------------------------------------------------------------------------------


class SourceStatus(Payload):
    ok: bool = Field(description="The source delivers frames")
    error: str | None = Field(description="The last fault, one line; null when ok")
    faults: int = Field(description="Faults since start")
    skipped: int = Field(description="Unreadable inputs skipped since start")


class Health(Header):
    """The frame source's health (``<base>/health``, retained), on every change."""

    ts: Timestamp = Field(default_factory=now)
    source: SourceStatus


# -- <base>/stats -------------------------------------------------------------------------------


class InferenceTimes(Payload):
    p50: float | None
    p99: float | None
    max: float | None
    n: int = Field(description="Frames in the interval")


class FrameCounts(Payload):
    captured: int
    processed: int
    dropped: int
    skipped: int


class MqttCounts(Payload):
    connected: bool
    published: int
    failures: int
    dropped: int
    inflight: int
    reconnects: int
    dropped_by_broker: int
    takeovers: int


class Stats(Header):
    """Runtime statistics (``<base>/stats``, retained, every ``stats.interval_s``)."""

    ts: Timestamp = Field(default_factory=now)
    uptime_s: float
    interval_s: float = Field(description="Seconds since the previous snapshot")
    paused: bool
    fps: float = Field(description="Frames classified per second in the interval")
    inference_ms: InferenceTimes = Field(description="Classify time per frame in the interval")
    frames: FrameCounts = Field(description="Totals since start")
    predictions: int = Field(description="Predictions published since start")
    queue_depth: int = Field(description="Messages waiting to be sent")
    spool_depth: int | None = Field(description="Messages in the on-disk outbox; null: no spool")
    mqtt: MqttCounts
    rss_bytes: int | None
    cpu_temp_c: float | None
    model: ModelRef


# -- <base>/model -------------------------------------------------------------------------------


class ActiveModel(ModelRef):
    confirmed: bool = Field(description="False while a new model is on probation")


class LastUpdate(Payload):
    transfer_id: str | None = Field(description="null for a rollback command")
    version: int | None
    status: str = Field(description="accepted, rejected, rolled_back or confirmed")
    reason: str
    ts: str


class Receiving(Payload):
    transfer_id: str
    name: str
    version: int
    chunks: int


class ModelState(Header):
    """What the device runs and keeps (``<base>/model``, retained; no ``ts``)."""

    active: ActiveModel | None
    previous: ModelRef | None = Field(description="What a rollback returns to")
    kept: list[ModelRef] = Field(description="Every model kept for a rollback, newest first")
    last_update: LastUpdate | None
    receiving: Receiving | None = Field(description="The transfer in progress; null when none")
    groups: list[str] = Field(description="The device's update groups ([update] groups)")


# -- <base>/update/result -----------------------------------------------------------------------

UpdateStatus = Literal["accepted", "rejected", "rolled_back", "confirmed"]


class UpdateResult(Header):
    """The answer to an offer or a command (``<base>/update/result``, not retained)."""

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"command", "issued"})

    transfer_id: str | None = Field(description="null for commands and unauthenticated input")
    name: str | None
    version: int | None
    status: UpdateStatus
    reason: str = Field(description="One line; empty when accepted")
    ts: Timestamp = Field(default_factory=now)
    command: Literal["rollback"] | SkipJsonSchema[None] = Field(
        None, description="Command results only"
    )
    issued: float | None = Field(
        None, description="Command results only: the command's own issued time (null if unusable)"
    )

    def omitted(self) -> list[str]:
        return ["command", "issued"] if self.command is None else []  # not a command's


# -- <base>/set/result --------------------------------------------------------------------------


class Applied(Payload):
    """What a control message changed, as given (only the keys it set)."""

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"publish", "model", "paused", "command"})

    publish: dict[str, Any] | SkipJsonSchema[None] = None
    model: dict[str, Any] | SkipJsonSchema[None] = None
    paused: bool | SkipJsonSchema[None] = None
    command: str | SkipJsonSchema[None] = None


class ControlResult(Header):
    """The answer to each control message (``<base>/set/result``, not retained)."""

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"id", "applied", "persisted", "errors"})
    HOLDS_OPTIONAL: ClassVar[tuple[str, ...]] = ("applied",)

    id: str | int | SkipJsonSchema[None] = Field(None, description="The message's id, echoed")
    ok: bool
    applied: Applied | SkipJsonSchema[None] = Field(None, description="When ok")
    persisted: bool | SkipJsonSchema[None] = Field(
        None, description="When ok: saved to overrides.json"
    )
    errors: list[str] | SkipJsonSchema[None] = Field(None, description="When not ok: one line each")
    ts: Timestamp = Field(default_factory=now)


# -- <discovery_prefix>/sensor/<device_id>/<object_id>/config  -----------------------


class HaSensorConfig(BaseModel):
    """Home Assistant MQTT discovery config of one sensor (its format, long keys)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    unique_id: str
    state_topic: str
    availability: list[dict[str, str]]
    device: dict[str, Any]
    origin: dict[str, str]
    qos: int
    value_template: str | None = None
    json_attributes_topic: str | None = None
    json_attributes_template: str | None = None
    entity_category: Literal["diagnostic"] | None = None
    device_class: str | None = None
    unit_of_measurement: str | None = None
    state_class: Literal["measurement"] | None = None
    suggested_display_precision: int | None = None
    icon: str | None = None
