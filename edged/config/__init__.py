"""Configuration: one TOML file validated by pydantic, each key overridable from the environment.

``EDGED_MQTT__HOST=broker`` overrides ``[mqtt] host``; a double underscore separates levels.
Unknown keys are rejected everywhere (``extra="forbid"``).

The section models are in :mod:`edged.config.models` (the source sections in
:mod:`edged.config.sources`); reading, overriding, validating and
checking files in :mod:`edged.config.load`. Both are importable from here.
"""

from edged.config.load import (
    ENV_PREFIX,
    check_files,
    env_overrides,
    format_validation_error,
    load_config,
    parse_config,
    resolve_paths,
)
from edged.config.models import (
    Config,
    ControlConfig,
    GroupName,
    HomeAssistantConfig,
    ModelConfig,
    MqttConfig,
    PublishConfig,
    StatsConfig,
    TlsConfig,
    UpdateConfig,
)
from edged.config.section import DEVICE_ID_PATTERN
from edged.config.sources import FilesSource, OpenCVSource, Picamera2Source, Roi, SourceConfig

__all__ = [
    "DEVICE_ID_PATTERN",
    "ENV_PREFIX",
    "Config",
    "ControlConfig",
    "FilesSource",
    "GroupName",
    "HomeAssistantConfig",
    "ModelConfig",
    "MqttConfig",
    "OpenCVSource",
    "Picamera2Source",
    "PublishConfig",
    "Roi",
    "SourceConfig",
    "StatsConfig",
    "TlsConfig",
    "UpdateConfig",
    "check_files",
    "env_overrides",
    "format_validation_error",
    "load_config",
    "parse_config",
    "resolve_paths",
]
