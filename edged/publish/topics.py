"""Topic names under ``<prefix>/<device_id>/``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def availability(self) -> str:  # retained: online | offline (will) | stopped
        return f"{self.base}/availability"

    @property
    def prediction(self) -> str:  # JSON event per published result
        return f"{self.base}/prediction"

    @property
    def state(self) -> str:  # retained plain-text current label
        return f"{self.base}/state"

    @property
    def health(self) -> str:  # retained JSON: source/model faults
        return f"{self.base}/health"

    @property
    def model(self) -> str:  # retained JSON: active/previous model, last update result
        return f"{self.base}/model"

    @property
    def update(self) -> str:  # inbound: model bundles (OTA)
        return f"{self.base}/update"
