"""The configuration's sections but ``[source]``, and the whole :class:`Config`: pydantic
models, each field described.

Unknown keys are rejected everywhere (``extra="forbid"``). Reading, environment overrides and
error messages are in :mod:`edged.config.load`; the source sections in
:mod:`edged.config.sources`; the common base and bounds in :mod:`edged.config.section`.

Untrusted values (a config file, the environment, ``overrides.json``, control messages) are
bounded here: no float may be NaN or infinite, every number has an upper bound (durations at
most ``MAX_SECONDS``), and text must be valid Unicode (no lone surrogates) of bounded length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from edged.config.section import DEVICE_ID_PATTERN, MAX_SECONDS, Section
from edged.config.sources import SourceConfig


class ModelConfig(Section):
    path: Path = Field(..., description="A .tflite model or an edged bundle (.edgb).")
    labels: Path | None = Field(
        None, description="Label file, one per line; default: bundle or embedded metadata labels."
    )
    threads: int | Literal["auto"] = Field(
        "auto",
        description="Interpreter threads: 'auto' = the plan (interpreters x threads) measured "
        "fastest on this machine (once per model, kept in the state dir); 0 = number of cores.",
    )
    interpreters: int | Literal["auto"] = Field(
        "auto",
        description="Interpreters working on frames at once, each with 'threads' threads: "
        "'auto' = as measured with threads = 'auto', else 1.",
    )
    backend: Literal["auto", "ai-edge-litert", "tflite-runtime", "tensorflow"] = Field(
        "auto", description="Interpreter; 'auto' tries them in this order."
    )
    top_k: int = Field(3, ge=1, le=100, description="How many classes each prediction lists.")
    mean: list[float] | None = Field(
        None,
        max_length=4,
        description="Per-channel mean subtracted from 0-255 pixels (overrides metadata).",
    )
    std: list[float] | None = Field(
        None,
        max_length=4,
        description="Per-channel std dividing 0-255 pixels (overrides metadata).",
    )
    softmax: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="Apply softmax to outputs; 'auto' applies it when they are not probabilities.",
    )

    @model_validator(mode="after")
    def _mean_std_together(self) -> ModelConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: object) -> object:
        """One error, not one per member of the union: 'auto' or a whole number 0-64."""
        return _auto_or_count(value, 0, 64, "threads")

    @field_validator("interpreters", mode="before")
    @classmethod
    def _interpreters(cls, value: object) -> object:
        """'auto' or a whole number 1-8 (each one holds the model's memory again)."""
        return _auto_or_count(value, 1, 8, "interpreters")


def _auto_or_count(value: object, low: int, high: int, what: str) -> object:
    """'auto', or a whole number from ``low`` to ``high`` (also as text or a whole float)."""
    if value == "auto":
        return value
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit() and len(text) <= 6:
        value = int(text)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"must be 'auto' or a number of {what} from {low} to {high}")
    return value


class TlsConfig(Section):
    ca_file: Path | None = Field(None, description="CA bundle; the server certificate is verified.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key (PEM).")
    insecure: bool = Field(False, description="Skip hostname verification (testing only).")


class MqttConfig(Section):
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, gt=0, lt=65536, description="Broker TCP port.")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    username: str | None = Field(None, description="User name for broker authentication.")
    password: str | None = Field(None, repr=False, description="Password (prefer password_file).")
    password_file: Path | None = Field(
        None, description="File holding the password, e.g. $CREDENTIALS_DIRECTORY/mqtt."
    )
    tls: TlsConfig | None = Field(None, description="Enable TLS with these files.")
    keepalive_s: int = Field(30, ge=5, le=65535, description="MQTT keepalive in seconds.")
    reconnect_min_s: float = Field(1.0, gt=0, le=3600, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Longest reconnect delay.")
    topic_prefix: str = Field(
        "edged",
        pattern=r"^[^#+\x00]+$",
        description="Topics are <prefix>/<device_id>/...; no wildcards.",
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=3600, description="Used by 'edged check'.")

    @model_validator(mode="after")
    def _password_once(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    def read_password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        return self.password


class PublishConfig(Section):
    mode: Literal["every", "change"] = Field(
        "every", description="'every' result, or only when the stable label 'change's."
    )
    min_score: float = Field(
        0.0, ge=0, le=1, description="Results whose top score is below this are not published."
    )
    agree_n: int = Field(
        3, ge=1, le=100, description="change mode: a new label needs N of the last M."
    )
    agree_m: int = Field(5, ge=1, le=100, description="change mode: window size M (at most 100).")
    min_interval_s: float = Field(
        0.0,
        ge=0,
        le=MAX_SECONDS,
        description="At most one prediction per this many seconds (0 = no limit).",
    )
    heartbeat_s: float = Field(
        60.0,
        ge=0,
        le=MAX_SECONDS,
        description="Re-publish the current label after this much silence (0 = never).",
    )
    qos: Literal[0, 1, 2] = Field(1, description="QoS of prediction messages.")
    spool: bool = Field(
        True,
        description="Keep messages until the broker acknowledges them in "
        "<state_dir>/spool.sqlite3, so they survive restarts and power cuts (false: memory only).",
    )
    spool_max_messages: int = Field(
        100000,
        ge=1,
        le=100_000_000,
        description="Most messages in the spool; the oldest are dropped first.",
    )
    spool_max_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        le=2**40,
        description="Most bytes (topic + payload) in the spool; the oldest are dropped first.",
    )
    spool_sync: Literal["full", "normal"] = Field(
        "full",
        description="'full': fsync each spool commit (a power cut loses nothing committed); "
        "'normal': fewer SD-card writes, a power cut can lose the last seconds.",
    )
    queue_max: int = Field(
        10000,
        ge=1,
        le=10_000_000,
        description="Most messages held in memory (all of them without a spool; with one, "
        "those not yet written); the oldest are dropped first.",
    )
    queue_max_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        le=2**36,
        description="Most bytes (topic + payload) held in memory, as queue_max.",
    )

    @model_validator(mode="after")
    def _n_of_m(self) -> PublishConfig:
        if self.agree_n > self.agree_m:
            raise ValueError("agree_n must not exceed agree_m")
        return self


GroupName = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]


class UpdateConfig(Section):
    """Over-the-air model updates (``python -m tools push``); see ``edged.update``."""

    enabled: bool = Field(
        True, description="Accept model bundles offered over MQTT (and rollback commands)."
    )
    groups: list[GroupName] = Field(
        default_factory=list,
        max_length=64,
        description="Groups whose offers apply too: <prefix>/group/<name>/update/offer.",
    )
    trusted_keys: list[Path] = Field(
        default_factory=list,
        max_length=64,
        description="Ed25519 public keys (PEM) whose signatures are accepted on offers, bundles "
        "and rollback commands. With keys configured, every offer must be signed by one.",
    )
    allow_unsigned: bool = Field(
        False,
        description="Accept unsigned bundles (never rollback commands); with no trusted_keys, "
        "unsigned offers too. Testing only.",
    )
    require_golden: bool = Field(
        True, description="Refuse bundles whose manifest has no golden test vector."
    )
    max_bundle_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        le=2**40,
        description="Largest bundle accepted (checked from the offer).",
    )
    validate_timeout_s: float = Field(
        30.0, gt=0, le=MAX_SECONDS, description="Wall-clock limit of the validation subprocess."
    )
    validate_memory_mb: int = Field(
        1024,
        ge=128,
        le=2**20,
        description="Address-space limit (RLIMIT_AS) of the validation subprocess.",
    )
    transfer_timeout_s: float = Field(
        120.0,
        gt=0,
        le=MAX_SECONDS,
        description="A transfer without a new chunk for this long is given up and reported "
        "(the retained chunks are asked for again after half of it).",
    )
    keep_models: int = Field(
        3,
        ge=1,
        le=20,
        description="Models kept for a rollback besides the active one (the previous one and "
        "older ones the device served, the configured model.path included).",
    )
    monitor_frames: int = Field(
        10,
        ge=0,
        le=100_000,
        description="Roll back when this many consecutive outputs of a new model are "
        "non-finite or identical (0 = off).",
    )
    probation_frames: int = Field(
        100,
        ge=0,
        le=10_000_000,
        description="Frames a new model is watched for such outputs; it counts as proven after.",
    )


class HomeAssistantConfig(Section):
    """Home Assistant MQTT discovery; see ``edged.features.homeassistant``."""

    enabled: bool = Field(
        True,
        description="Announce the device and its sensors to Home Assistant by MQTT discovery "
        "(retained configs under <discovery_prefix>/sensor/<device_id>/).",
    )
    discovery_prefix: str = Field(
        "homeassistant",
        pattern=r"^[^#+\x00]+$",
        description="Home Assistant's discovery prefix; its birth message is expected on "
        "<discovery_prefix>/status.",
    )


class ControlConfig(Section):
    """Settings and commands over MQTT; see ``edged.features.control``."""

    enabled: bool = Field(
        True,
        description="Accept settings and commands on <prefix>/<device_id>/set (answers on "
        "<prefix>/<device_id>/set/result) and apply <state_dir>/overrides.json at start.",
    )


class StatsConfig(Section):
    """Runtime statistics; see ``edged.features.stats``."""

    interval_s: float = Field(
        60.0,
        ge=0,
        le=MAX_SECONDS,
        description="Publish retained stats on <prefix>/<device_id>/stats every this many "
        "seconds (0 = off; at least 0.5 otherwise).",
    )
    prometheus_port: int = Field(
        0,
        ge=0,
        lt=65536,
        description="Serve Prometheus metrics on http://<prometheus_host>:<port>/metrics "
        "(0 = off).",
    )
    prometheus_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the metrics endpoint binds to; it has no authentication, so "
        "anything but 127.0.0.1 exposes it to the network.",
    )

    @field_validator("interval_s")
    @classmethod
    def _interval(cls, value: float) -> float:
        if 0 < value < 0.5:
            raise ValueError("must be 0 (off) or at least 0.5")
        return value


class Config(Section):
    device_id: str = Field(
        ..., pattern=DEVICE_ID_PATTERN, description="Lower-case id; becomes part of every topic."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    state_dir: Path = Field(
        Path("/var/lib/edged"), description="Writable directory for runtime state."
    )
    source: SourceConfig = Field(..., description="Where frames come from.")
    model: ModelConfig = Field(..., description="The classifier.")
    mqtt: MqttConfig = Field(default_factory=lambda: MqttConfig(), description="Broker.")
    publish: PublishConfig = Field(
        default_factory=lambda: PublishConfig(), description="What is published, when."
    )
    update: UpdateConfig = Field(
        default_factory=lambda: UpdateConfig(), description="Over-the-air model updates."
    )
    homeassistant: HomeAssistantConfig = Field(
        default_factory=lambda: HomeAssistantConfig(),
        description="Home Assistant MQTT discovery.",
    )
    control: ControlConfig = Field(
        default_factory=lambda: ControlConfig(), description="Settings and commands over MQTT."
    )
    stats: StatsConfig = Field(
        default_factory=lambda: StatsConfig(), description="Runtime statistics."
    )
