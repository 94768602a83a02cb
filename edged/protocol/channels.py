"""Every MQTT topic of a device: its address, who publishes, its payload, QoS and retention.

``send`` is a topic the device publishes, ``receive`` one it subscribes to. Addresses use the
parameters ``prefix`` (``[mqtt] topic_prefix``), ``device_id``, ``group`` (``[update] groups``),
``discovery_prefix`` (``[homeassistant] discovery_prefix``), ``object_id``, ``transfer_id`` and
``index``; the two prefixes may span several topic levels, the others are one level each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from edged.protocol import inbound, payloads

TEXT, JSON, BINARY = "text/plain", "application/json", "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Message:
    """A payload: a JSON model, or plain text / bytes described by ``schema``."""

    name: str  # also the name of its JSON Schema file (docs/schemas/<name>.json)
    title: str
    model: type[BaseModel] | None = None
    schema: dict[str, Any] = field(default_factory=dict)  # when model is None
    content_type: str = JSON


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    address: str
    action: Literal["send", "receive"]
    message: Message
    summary: str
    qos: int = 1
    retained: bool = False
    clearable: bool = False  # an empty retained payload clears it (not a message of its own)

    def pattern(self, **known: str) -> re.Pattern[str]:
        """A regex matching the concrete topics of this channel: a parameter given in
        ``known`` stands for that text, a prefix for one or more levels, any other parameter
        for exactly one level."""
        out = []
        for part in re.split(r"(\{[a-z_]+\})", self.address):
            name = part[1:-1] if part.startswith("{") else None
            if name is None:
                out.append(re.escape(part))
            elif name in known:
                out.append(re.escape(known[name]))
            else:
                out.append(".+" if name in PREFIXES else "[^/]+")
        return re.compile("^" + "".join(out) + "$")


AVAILABILITY = Message(
    "availability",
    "Availability",
    schema={"type": "string", "enum": list(payloads.AVAILABILITY)},
    content_type=TEXT,
)
STATE = Message(
    "state",
    "Current label",
    schema={
        "type": "string",
        "description": f"The current label (UTF-8), or {payloads.PAUSED_STATE!r} while paused",
    },
    content_type=TEXT,
)
CHUNK = Message(
    "update_chunk",
    "Bundle chunk",
    schema={"type": "string", "format": "binary", "description": "Raw bytes of one chunk"},
    content_type=BINARY,
)
HA_STATUS = Message(
    "ha_status",
    "Home Assistant birth message",
    schema={"type": "string", "description": "'online' re-announces; anything else is ignored"},
    content_type=TEXT,
)

DEVICE = "{prefix}/{device_id}"
GROUP = "{prefix}/group/{group}"

CHANNELS: tuple[Channel, ...] = (
    Channel(
        "availability", f"{DEVICE}/availability", "send", AVAILABILITY,
        "online when connected; offline (the last will) when the connection is lost; stopped "
        "after a clean stop", retained=True,
    ),
    Channel(
        "prediction", f"{DEVICE}/prediction", "send",
        Message("prediction", "Prediction", payloads.Prediction),
        "One result the publish policy let through (QoS: [publish] qos, 1 by default)",
    ),
    Channel(
        "state", f"{DEVICE}/state", "send", STATE,
        "The current label, on every change", retained=True,
    ),
    Channel(
        "health", f"{DEVICE}/health", "send", Message("health", "Health", payloads.Health),
        "The frame source's health, on every change", retained=True,
    ),
    Channel(
        "stats", f"{DEVICE}/stats", "send", Message("stats", "Statistics", payloads.Stats),
        "Runtime statistics every [stats] interval_s (and on the stats command)", retained=True,
    ),
    Channel(
        "model", f"{DEVICE}/model", "send", Message("model", "Model", payloads.ModelState),
        "The active model, the models kept for a rollback, the last update, the transfer in "
        "progress ([update] enabled)", retained=True,
    ),
    Channel(
        "updateResult", f"{DEVICE}/update/result", "send",
        Message("update_result", "Update result", payloads.UpdateResult),
        "The answer to an offer or a command",
    ),
    Channel(
        "updateOffer", f"{DEVICE}/update/offer", "receive",
        Message("update_offer", "Update offer", inbound.UpdateOffer),
        "A signed offer of a model bundle for this device", retained=True, clearable=True,
    ),
    Channel(
        "groupUpdateOffer", f"{GROUP}/update/offer", "receive",
        Message("update_offer", "Update offer", inbound.UpdateOffer),
        "A signed offer for a group the device is in ([update] groups)", retained=True,
        clearable=True,
    ),
    Channel(
        "updateChunk", f"{DEVICE}/update/chunk/{{transfer_id}}/{{index}}", "receive", CHUNK,
        "Chunk index (0-based) of an offered bundle; subscribed while it is being received",
        retained=True, clearable=True,
    ),
    Channel(
        "groupUpdateChunk", f"{GROUP}/update/chunk/{{transfer_id}}/{{index}}", "receive", CHUNK,
        "Chunk index of a bundle offered to a group", retained=True, clearable=True,
    ),
    Channel(
        "updateCommand", f"{DEVICE}/update/command", "receive",
        Message("update_command", "Update command", inbound.UpdateCommand),
        "A signed command (rollback)",
    ),
    Channel(
        "control", f"{DEVICE}/set", "receive",
        Message("set", "Control message", inbound.ControlRequest),
        "Settings and commands ([control] enabled)",
    ),
    Channel(
        "controlResult", f"{DEVICE}/set/result", "send",
        Message("set_result", "Control result", payloads.ControlResult),
        "The answer to each control message (and to a flood of them, one a second)",
    ),
    Channel(
        "haDiscovery", "{discovery_prefix}/sensor/{device_id}/{object_id}/config", "send",
        Message("ha_discovery", "Home Assistant sensor config", payloads.HaSensorConfig),
        "Home Assistant MQTT discovery, one per sensor ([homeassistant] enabled); an empty "
        "retained payload removes the sensor (the ha_remove command)",
        retained=True, clearable=True,
    ),
    Channel(
        "haStatus", "{discovery_prefix}/status", "receive", HA_STATUS,
        "Home Assistant's birth message: the device announces its sensors again",
    ),
)  # fmt: skip

PREFIXES = ("prefix", "discovery_prefix")  # may hold several topic levels
PARAMETERS: dict[str, str] = {
    "prefix": "[mqtt] topic_prefix (may span several topic levels)",
    "device_id": "device_id of the config",
    "group": "An update group of the device ([update] groups)",
    "discovery_prefix": "[homeassistant] discovery_prefix (may span several topic levels)",
    "object_id": "label, score, fps, inference_ms, cpu_temperature or model_version",
    "transfer_id": "The offer's transfer_id",
    "index": "The chunk's index, 0-based",
}
DEFAULTS = {"prefix": "edged", "discovery_prefix": "homeassistant"}


def parameters(address: str) -> list[str]:
    return re.findall(r"\{([a-z_]+)\}", address)


def channel_of(topic: str, **known: str) -> Channel | None:
    """The channel a concrete topic belongs to, given what parameters are known (e.g. the
    device's ``prefix`` and ``device_id``): the first whose address matches."""
    return next((c for c in CHANNELS if c.pattern(**known).match(topic)), None)
