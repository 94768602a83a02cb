"""In-memory stand-ins for the fast tier of the untrusted-input tests (no broker, no process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edged.config import Config, parse_config
from edged.publish.topics import Topics
from edged.sources.base import Frame, FrameSource
from tests.daemon import DEMO_MODEL, SAMPLES


class FakePublisher:
    """Records what would be published; every payload must be bytes of valid UTF-8 JSON or
    text (that is checked by :meth:`json`)."""

    def __init__(self, device_id: str = "cam-1", prefix: str = "edged") -> None:
        self.topics = Topics(prefix, device_id)
        self.sent: list[tuple[str, bytes, int, bool]] = []
        self.subscribed: list[str] = []

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        self.sent.append((topic, data, qos, retain))

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.append(topic)

    def unsubscribe(self, topic: str) -> None:
        pass

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _, _ in self.sent if t == topic]

    def json(self, topic: str) -> list[dict[str, Any]]:
        """Every payload on ``topic``, decoded strictly (UTF-8, JSON without NaN)."""

        def refuse(name: str) -> Any:
            raise ValueError(f"{name} in an outgoing payload")

        return [json.loads(p.decode("utf-8"), parse_constant=refuse) for p in self.on(topic)]


def make_config(state_dir: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "device_id": "cam-1",
        "state_dir": str(state_dir),
        "source": {"type": "files", "path": str(SAMPLES)},
        "model": {"path": str(DEMO_MODEL)},
        **sections,
    }
    return parse_config(data, {})


class CountingSource(FrameSource):
    """A camera faster than any model: a fresh frame (``shape``, its value the read count)
    whenever asked; counts its reads."""

    def __init__(self, shape: tuple[int, int, int] = (2, 2, 3)) -> None:
        self.shape = shape
        self.reads = 0

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        self.reads += 1
        return Frame(np.full(self.shape, self.reads % 256, np.uint8))

    def close(self) -> None:
        pass
