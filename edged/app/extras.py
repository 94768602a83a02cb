"""The features beside the frame path, as :class:`~edged.app.parts.Features` turns them on:
model updates (edged.update), Home Assistant discovery (edged.features.homeassistant) and
settings and commands over MQTT (edged.features.control).

Each one's inbound messages arrive on paho's thread (:meth:`Extras.on_message` only queues or
flags); their work runs on the frame loop between two frames (:meth:`Extras.between_frames`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from edged.errors import EdgedError
from edged.features.control import Control
from edged.features.homeassistant import Discovery
from edged.features.settings import Settings
from edged.features.stats import cpu_temperature
from edged.infra.guard import KindLog, one_line
from edged.protocol import payloads as wire
from edged.update.models import Boot
from edged.update.updater import Updater

if TYPE_CHECKING:
    from edged.app.daemon import Daemon

log = logging.getLogger("edged")


class Extras:
    """Built in ``Daemon.open()``; nothing starts before :meth:`start`."""

    def __init__(self, daemon: Daemon, boot: Boot | None) -> None:
        self.daemon = daemon
        cfg, features, publisher = daemon.cfg, daemon.features, daemon.publisher
        self._log = KindLog(log)
        if features.updates and boot is None:
            raise EdgedError("model updates need the update state the model loader gives")
        self.updater = (
            Updater(cfg, publisher, daemon.classifier, boot)
            if features.updates and boot is not None
            else None
        )
        # Watches a newly installed model in service (None: nothing to roll back to).
        daemon.monitor = self.updater.initial_monitor() if self.updater is not None else None
        self.ha = (
            Discovery(
                cfg.homeassistant,
                publisher,
                diagnostics=cfg.stats.interval_s > 0,
                cpu_temperature=cpu_temperature() is not None,
            )
            if features.homeassistant
            else None
        )
        self.control = (
            Control(cfg, publisher, apply=self._apply_settings, commands=self._commands())
            if features.control
            else None
        )
        if self.control is not None:  # <state_dir>/overrides.json over the config file
            start = self.control.load()
            cfg.publish, cfg.model, daemon.paused = start.publish, start.model, start.paused

    def start(self) -> None:
        daemon = self.daemon
        if self.updater is not None:
            self.updater.start()
        if self.ha is not None:
            self.ha.start(daemon.classifier.info)
        if self.control is not None:
            self.control.subscribe()
        if daemon.paused:
            log.info("paused (overrides.json): frames are not classified")
            daemon.publisher.publish(daemon.topics.state, wire.PAUSED_STATE, qos=1, retain=True)

    def close(self) -> None:
        if self.control is not None:
            self.control.close()  # a coalesced overrides.json write still pending
        if self.updater is not None:
            self.updater.stop()

    def on_message(self, topic: str, payload: bytes) -> None:
        # paho's thread: each of these only queues or flags, and none may raise into paho
        # (a handler's bug costs that message and a rate-limited log line, nothing more).
        try:
            if self.control is not None and self.control.wants(topic):
                self.control.on_message(topic, payload)
            elif self.ha is not None and self.ha.wants(topic):
                self.ha.on_message(topic, payload)
            elif self.updater is not None:
                self.updater.on_message(topic, payload)
        except Exception as err:
            self._log.error(
                "message",
                f"handling a message on {one_line(topic, 120)} failed: {one_line(repr(err))}",
            )

    def between_frames(self) -> None:
        """A new model, control messages, Home Assistant's birth message (none of them may
        stop the frame loop but a bug in the updater's swap)."""
        self._take_new_model()
        if self.control is not None:
            self.control.poll()
        if self.ha is not None:
            try:
                self.ha.poll(self.daemon.classifier.info)
            except Exception as err:  # a bug: the announcement is lost, frames go on
                self._log.error("ha", f"home assistant: {one_line(repr(err))}")

    def _take_new_model(self) -> None:
        """Swap in a model the update thread loaded (a pointer swap)."""
        swap = self.updater.slot.take() if self.updater is not None else None
        if swap is None:
            return
        daemon = self.daemon
        old = daemon.classifier
        with daemon.model_lock:  # lanes read the pair together (Daemon.infer)
            daemon.classifier, daemon.monitor = swap.classifier, swap.monitor
        swap.complete(old, daemon.clock())
        info = daemon.classifier.info
        log.info("now classifying with %s v%s (%s)", info.name, info.version, info.sha256[:12])
        if self.ha is not None and daemon.cfg.homeassistant.enabled and not self.ha.removed:
            self.ha.announce(info)  # the device's model name changed

    def _apply_settings(self, settings: Settings) -> None:
        daemon = self.daemon
        with daemon.settings_lock:  # not while the post thread handles a result
            cfg = daemon.cfg
            if settings.publish != cfg.publish:
                cfg.publish = settings.publish
                daemon.policy.reconfigure(settings.publish)
            cfg.model = settings.model
            if settings.paused == daemon.paused:
                return
            log.info("paused: frames are not classified" if settings.paused else "resumed")
            daemon.set_paused(settings.paused)

    def _commands(self) -> dict[str, Callable[[], object]]:
        daemon = self.daemon
        commands: dict[str, Callable[[], object]] = {"stats": daemon.stats.publish_now}
        ha = self.ha
        if ha is not None:
            commands["ha_remove"] = ha.remove
            if daemon.cfg.homeassistant.enabled:
                commands["ha_announce"] = lambda: ha.announce(daemon.classifier.info)
        return commands
