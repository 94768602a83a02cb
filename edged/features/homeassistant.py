"""Home Assistant MQTT discovery: the device and its sensors appear in Home Assistant by
themselves.

One retained config per sensor on ``<discovery_prefix>/sensor/<device_id>/<object_id>/config``
(long keys as Home Assistant documents them for MQTT sensors, no abbreviations), all tied to one
device (``identifiers`` ``edged_<device_id>``):

==================  ==========================  ==============================================
object_id           state from                  what
==================  ==========================  ==============================================
``label``           ``<base>/state`` (retained) the current label (``paused`` while paused);
                                                score and top-k as attributes, from each
                                                prediction event
``score``           ``<base>/prediction``       the top score of the last published result
``fps``             ``<base>/stats``            diagnostic: frames classified per second
``inference_ms``    ``<base>/stats``            diagnostic: median classify time (p99, max
                                                and n as attributes)
``cpu_temperature`` ``<base>/stats``            diagnostic, only where the CPU temperature is
                                                readable
``model_version``   ``<base>/stats``            diagnostic: version of the running model
                                                (name and sha256 as attributes)
==================  ==========================  ==============================================

The diagnostics are announced only when ``[stats] interval_s`` is not 0 (they read the stats
topic). Availability comes from ``<base>/availability``: ``online`` is available; ``offline``
(the last will) and ``stopped`` (a clean stop) are both unavailable, through a
``value_template`` that maps everything but ``online`` to ``offline``.

The configs are published at start, again whenever Home Assistant's birth message (``online``
on ``<discovery_prefix>/status``) arrives -- e.g. after Home Assistant or the broker restarted
and lost them -- and after a model update. :meth:`Discovery.remove` (the ``ha_remove`` control
command) publishes an empty retained payload to every config topic, which makes Home Assistant
delete the entities; birth messages are then ignored until ``ha_announce`` or a restart.

The status topic is open to any client with publish rights: a payload other than ``online``
(after stripping whitespace) is ignored, whatever it holds, and birth messages re-announce at
most once per ``BIRTH_MIN_INTERVAL_S`` (one arriving sooner is acted on when that time is up),
so a flood of them costs a flag, not a flood of retained configs.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from edged import __version__
from edged.config import HomeAssistantConfig
from edged.infra import events
from edged.model.classifier import ModelInfo
from edged.publish.api import PublisherAPI
from edged.publish.topics import Topics

log = logging.getLogger("edged.homeassistant")

COMPONENT = "sensor"
OBJECT_IDS = ("label", "score", "fps", "inference_ms", "cpu_temperature", "model_version")
BIRTH_PAYLOAD = b"online"
BIRTH_MIN_INTERVAL_S = 5.0  # re-announcements caused by birth messages, at most one per this
# Home Assistant compares the template's result with payload_available/payload_not_available:
# "stopped" (clean shutdown) must count as unavailable, like the last will's "offline".
AVAILABILITY_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"
HARDWARE_MODEL = Path("/proc/device-tree/model")  # "Raspberry Pi 5 Model B Rev 1.0"


def hardware_model(path: Path = HARDWARE_MODEL) -> str | None:
    try:
        text = path.read_bytes().rstrip(b"\x00").decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


def unique_id(device_id: str, object_id: str) -> str:
    return f"edged_{device_id}_{object_id}"


def config_topic(discovery_prefix: str, device_id: str, object_id: str) -> str:
    return f"{discovery_prefix}/{COMPONENT}/{device_id}/{object_id}/config"


def entity_configs(
    topics: Topics,
    model_name: str,
    *,
    diagnostics: bool,
    cpu_temperature: bool,
    hw_version: str | None = None,
) -> dict[str, dict[str, Any]]:
    """object_id -> discovery payload (a JSON object), for the sensors announced."""
    device_id = topics.device_id
    device: dict[str, Any] = {
        "identifiers": [f"edged_{device_id}"],
        "name": device_id,
        "manufacturer": "edged",
        "model": f"edged image classifier ({model_name})",
        "sw_version": __version__,
    }
    if hw_version:
        device["hw_version"] = hw_version
    common: dict[str, Any] = {
        "availability": [
            {
                "topic": topics.availability,
                "payload_available": "online",
                "payload_not_available": "offline",
                "value_template": AVAILABILITY_TEMPLATE,
            }
        ],
        "device": device,
        "origin": {"name": "edged", "sw_version": __version__},
        "qos": 1,
    }
    diagnostic = {"entity_category": "diagnostic", "state_topic": topics.stats}
    entities: dict[str, dict[str, Any]] = {
        "label": {
            "name": "Label",
            "state_topic": topics.state,
            "json_attributes_topic": topics.prediction,
            "json_attributes_template": (
                "{{ {'score': value_json.score, 'top': value_json.top} | tojson }}"
            ),
            "icon": "mdi:label-outline",
        },
        "score": {
            "name": "Score",
            "state_topic": topics.prediction,
            "value_template": "{{ value_json.score }}",
            "state_class": "measurement",
            "suggested_display_precision": 3,
            "icon": "mdi:gauge",
        },
    }
    if diagnostics:
        entities["fps"] = {
            "name": "Frame rate",
            **diagnostic,
            "value_template": "{{ value_json.fps }}",
            "unit_of_measurement": "fps",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "icon": "mdi:speedometer",
        }
        entities["inference_ms"] = {
            "name": "Inference time",
            **diagnostic,
            "value_template": "{{ value_json.inference_ms.p50 }}",
            "json_attributes_topic": topics.stats,
            "json_attributes_template": "{{ value_json.inference_ms | tojson }}",
            "device_class": "duration",
            "unit_of_measurement": "ms",
            "state_class": "measurement",
            "suggested_display_precision": 2,
        }
        if cpu_temperature:
            entities["cpu_temperature"] = {
                "name": "CPU temperature",
                **diagnostic,
                "value_template": "{{ value_json.cpu_temp_c }}",
                "device_class": "temperature",
                "unit_of_measurement": "°C",
                "state_class": "measurement",
                "suggested_display_precision": 1,
            }
        entities["model_version"] = {
            "name": "Model version",
            **diagnostic,
            "value_template": "{{ value_json.model.version }}",
            "json_attributes_topic": topics.stats,
            "json_attributes_template": "{{ value_json.model | tojson }}",
            "icon": "mdi:brain",
        }
    return {
        oid: {**body, "unique_id": unique_id(device_id, oid), **common}
        for oid, body in entities.items()
    }


class Discovery:
    """Announces, re-announces on Home Assistant's birth message, removes on request.

    ``on_message`` runs on paho's thread and only flags the birth; the frame loop calls
    ``poll`` between frames, which announces.
    """

    def __init__(
        self,
        cfg: HomeAssistantConfig,
        publisher: PublisherAPI,
        *,
        diagnostics: bool,
        cpu_temperature: bool,
    ) -> None:
        self.cfg = cfg
        self.publisher = publisher
        self.topics = publisher.topics
        self.diagnostics = diagnostics
        self.cpu_temperature = cpu_temperature
        self.removed = False
        self.announcements = 0
        self._birth = threading.Event()
        self._birth_announced: float | None = None  # monotonic time of the last one
        self._hw = hardware_model()

    @property
    def status_topic(self) -> str:
        return f"{self.cfg.discovery_prefix}/status"

    def config_topic(self, object_id: str) -> str:
        return config_topic(self.cfg.discovery_prefix, self.topics.device_id, object_id)

    def start(self, info: ModelInfo) -> None:
        if not self.cfg.enabled:
            return
        self.publisher.subscribe(self.status_topic)
        self.announce(info)

    def announce(self, info: ModelInfo) -> None:
        """Publish (retained) the config of every sensor; makes a removal undone."""
        self.removed = False
        configs = entity_configs(
            self.topics,
            info.name,
            diagnostics=self.diagnostics,
            cpu_temperature=self.cpu_temperature,
            hw_version=self._hw,
        )
        for oid, payload in configs.items():
            self.publisher.publish(
                self.config_topic(oid), events.dumps(payload), qos=1, retain=True
            )
        self.announcements += 1
        log.info(
            "home assistant: announced %d sensors under %s/%s/%s/",
            len(configs),
            self.cfg.discovery_prefix,
            COMPONENT,
            self.topics.device_id,
        )

    def remove(self) -> None:
        """Empty retained payloads on every config topic this device may have used."""
        self.removed = True
        for oid in OBJECT_IDS:
            self.publisher.publish(self.config_topic(oid), b"", qos=1, retain=True)
        log.info("home assistant: entities removed (until ha_announce or a restart)")

    # -- Home Assistant's birth message ---------------------------------------------------------

    def wants(self, topic: str) -> bool:
        return self.cfg.enabled and topic == self.status_topic

    def on_message(self, topic: str, payload: bytes) -> None:
        """paho's thread: note the birth message, nothing more (never raises)."""
        if len(payload) <= 64 and bytes(payload).strip() == BIRTH_PAYLOAD:
            self._birth.set()

    def poll(self, info: ModelInfo, now: float | None = None) -> None:
        """Frame loop: announce again after a birth message (unless removed), at most once per
        ``BIRTH_MIN_INTERVAL_S``."""
        if not self._birth.is_set():
            return
        now = time.monotonic() if now is None else now
        last = self._birth_announced
        if last is not None and now - last < BIRTH_MIN_INTERVAL_S:
            return  # kept pending: announced when the interval is up
        self._birth.clear()
        self._birth_announced = now
        if self.removed:
            log.info("home assistant is online; entities stay removed (ha_announce restores)")
            return
        self.announce(info)
