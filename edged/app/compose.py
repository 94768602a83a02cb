"""The composition root: the production daemon, built from a config.

Everything else builds a :class:`~edged.app.daemon.Daemon` from its own
:class:`~edged.app.parts.Parts` (``edged bench``: an in-memory source and a model loaded once;
tests: fakes); ``edged run`` gets this one.
"""

from __future__ import annotations

from pathlib import Path

from edged.app.daemon import Daemon
from edged.app.parts import Features, Parts
from edged.config import Config
from edged.infra.sdnotify import Notifier


def production_daemon(
    cfg: Config, *, config_path: Path | None = None, notifier: Notifier | None = None
) -> Daemon:
    """The sources, model loader (stored update first, ``threads = "auto"`` measured once per
    model) and MQTT publisher of a real device, with the features the config turns on."""
    return Daemon(
        cfg,
        parts=Parts(),
        features=Features.from_config(cfg),
        notifier=notifier,
        config_path=config_path,
    )
