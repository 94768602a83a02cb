"""What a :class:`~edged.app.daemon.Daemon` is built from: its parts and its features.

The daemon creates none of its dependencies' kinds itself: the source, the model, the
publisher and the clock come from :class:`Parts` (production ones by default,
:mod:`edged.app.compose`; a benchmark or a test passes its own), and what runs beside the
frame path (model updates, Home Assistant discovery, control over MQTT, stats) is said by
:class:`Features`, not guessed from how the daemon was constructed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edged.config import Config, SourceConfig
from edged.model.classifier import Classifier
from edged.publish.api import PublisherAPI
from edged.publish.mqtt import Publisher
from edged.publish.outbox import Outbox
from edged.sources import open_source
from edged.sources.base import FrameSource
from edged.update.models import Boot
from edged.update.models import boot as boot_model

OnMessage = Callable[[str, bytes], None]


@dataclass(slots=True)
class Loaded:
    """The model to start with, and the update state it came from (None: no stored state)."""

    classifier: Classifier
    boot: Boot | None = None


def load_model(cfg: Config) -> Loaded:
    """Production: the stored model of the last update wins over ``model.path``
    (edged.update.models); ``threads = "auto"`` choices are kept in the state dir."""
    from edged.model import autothreads

    autothreads.use_cache_dir(cfg.state_dir)
    boot = boot_model(cfg)
    return Loaded(boot.classifier or Classifier.from_config(cfg.model), boot)


def make_publisher(cfg: Config, outbox: Outbox, on_message: OnMessage) -> Publisher:
    return Publisher(cfg.mqtt, cfg.device_id, outbox=outbox, on_message=on_message)


def make_source(cfg: SourceConfig, model_size: tuple[int, int]) -> FrameSource:
    return open_source(cfg, model_size)


@dataclass(frozen=True, slots=True)
class Parts:
    """How the daemon gets each dependency. All called in ``Daemon.open()``/``start()``, never
    in its constructor."""

    load_model: Callable[[Config], Loaded] = load_model
    make_source: Callable[[SourceConfig, tuple[int, int]], FrameSource] = make_source
    make_publisher: Callable[[Config, Outbox, OnMessage], PublisherAPI] = make_publisher
    clock: Callable[[], float] = field(default=time.monotonic)

    @classmethod
    def with_classifier(cls, classifier: Classifier) -> Parts:
        """A model already loaded (no update state): ``edged bench``, tests."""
        return cls(load_model=lambda _cfg: Loaded(classifier))


@dataclass(frozen=True, slots=True)
class Features:
    """What runs beside the frame path. The default is the bare daemon: frames in,
    predictions and stats out."""

    updates: bool = False  # signed model updates over MQTT (needs the loader's update state)
    homeassistant: bool = False  # discovery, its birth message, the ha_* commands
    control: bool = False  # settings and commands over MQTT, overrides.json
    stats: bool = True  # the periodic stats message (stats.interval_s) and /metrics

    @classmethod
    def from_config(cls, cfg: Config) -> Features:
        """Production: as the config says."""
        return cls(
            updates=cfg.update.enabled,
            homeassistant=True,  # announces only if enabled; answers ha_remove either way
            control=cfg.control.enabled,
            stats=True,
        )
