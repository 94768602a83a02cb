"""Signals, for the whole life of ``edged run``: no signal a user or systemd sends kills it.

Installed before anything else is done (before the config is read), so there is no moment of
startup at which a signal has its default action:

- ``SIGTERM``/``SIGINT``: while starting (config, model, spool, before the MQTT client runs)
  the process exits 0 at once: nothing has been published yet and every file it may have
  opened (spool, seq) is crash-safe by design. Once running: the daemon's clean stop (the
  current frame finished, ``stopped`` published, exit 0).
- ``SIGHUP``: reload (see ``Daemon.request_reload``): the config file is read and checked, its
  model loaded; if both are good, the daemon stops cleanly *without* publishing ``stopped`` and
  executes itself again in place (same PID, so systemd sees a reload, not a restart), keeping
  the spool and the seq numbers on disk. A bad config or model refuses the reload in one log
  line and the daemon goes on as it was. While starting, a SIGHUP is remembered and done once
  running.
- ``SIGUSR1``/``SIGUSR2``: ignored (a rate-limited log line). ``SIGPIPE``: ignored (a closed
  socket is an ``OSError`` where it happens).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Protocol

from edged.infra.guard import KindLog, one_line

log = logging.getLogger("edged")


class Target(Protocol):
    running: bool

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None: ...

    def request_reload(self) -> None: ...


class Signals:
    def __init__(self) -> None:
        self.target: Target | None = None
        self.reload_pending = False
        self._log = KindLog(log)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGHUP, self._hup)
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, self._ignored)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def attach(self, target: Target) -> None:
        """From now on a stop or reload goes to ``target`` once it is ``running``."""
        self.target = target
        if self.reload_pending:
            self.reload_pending = False
            target.request_reload()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        target = self.target
        if target is not None and target.running:
            target.request_stop(signum, frame)
            return
        log.info("received %s while starting: exiting", signal.Signals(signum).name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(0)

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        target = self.target
        if target is not None:
            target.request_reload()
        else:
            self.reload_pending = True
            log.info("received SIGHUP while starting: reloading once running")

    def _ignored(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self._log.log(logging.INFO, name, f"received {name}: ignored")


def reload_ok(path: Path | None) -> bool:
    """SIGHUP: whether the config file at ``path`` and its model are good to restart on (the
    model is loaded, checked and dropped); if not, one log line says why."""
    if path is None:
        log.warning("reload requested: no config file to read again; going on")
        return False
    from edged.config import check_files, load_config  # not before the signals are set
    from edged.errors import ConfigError
    from edged.model.classifier import Classifier

    try:
        cfg = load_config(path)
        problems = check_files(cfg)
        if problems:
            raise ConfigError(problems)
        Classifier.from_config(cfg.model)
    except ConfigError as err:
        log.error("reload refused, going on as before: %s", one_line("; ".join(err.problems), 500))
        return False
    except Exception as err:
        log.error("reload refused, going on as before: %s", one_line(err, 500))
        return False
    log.info("reloading: %s and its model are good; restarting in place", path)
    return True
