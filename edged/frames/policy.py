"""When a result is published: every result, or only stable label changes; heartbeat; rate limit."""

from __future__ import annotations

from collections import Counter, deque

from edged.config import PublishConfig


class PublishPolicy:
    """Decide, per result, whether to publish and why.

    ``decide`` returns ``"every"``, ``"change"`` or ``"heartbeat"`` (the event's ``reason``), or
    ``None`` to stay quiet. Results scoring below ``min_score`` never count as a label.
    """

    def __init__(self, cfg: PublishConfig) -> None:
        self.cfg = cfg
        self._window: deque[str | None] = deque(maxlen=cfg.agree_m)
        self.current: str | None = None  # the label last published
        self._last_publish: float | None = None

    def reconfigure(self, cfg: PublishConfig) -> None:
        if cfg.agree_m != self.cfg.agree_m:
            self._window = deque(self._window, maxlen=cfg.agree_m)
        self.cfg = cfg

    def _stable(self) -> str | None:
        counts = Counter(label for label in self._window if label is not None)
        if not counts:
            return None
        label, n = counts.most_common(1)[0]
        return label if n >= self.cfg.agree_n else None

    def decide(self, label: str, score: float, now: float) -> str | None:
        cfg = self.cfg
        confident = score >= cfg.min_score
        self._window.append(label if confident else None)
        since = None if self._last_publish is None else now - self._last_publish
        if since is not None and since < cfg.min_interval_s:
            return None
        reason: str | None = None
        if cfg.mode == "every":
            if confident:
                reason = "every"
        else:
            stable = self._stable()
            if stable is not None and stable != self.current and stable == label:
                reason = "change"
        if (
            reason is None
            and cfg.heartbeat_s > 0
            and self.current is not None
            and label == self.current
            and (since is None or since >= cfg.heartbeat_s)
        ):
            reason = "heartbeat"
        if reason is not None:
            self.current = label
            self._last_publish = now
        return reason
