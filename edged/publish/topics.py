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
    def update(self) -> str:  # OTA topics live under here (see edged.update)
        return f"{self.base}/update"

    @property
    def update_offer(self) -> str:  # inbound, retained: JSON offer of a bundle
        return offer_topic(self.base)

    @property
    def update_result(self) -> str:  # outbound: JSON result of an offer or command
        return f"{self.base}/update/result"

    @property
    def update_request(self) -> str:  # outbound JSON: hello / missing chunks (edged.update)
        return f"{self.base}/update/request"

    @property
    def update_command(self) -> str:  # inbound: signed JSON command (rollback)
        return f"{self.base}/update/command"

    @property
    def stats(self) -> str:  # retained JSON: runtime statistics (see edged.features.stats)
        return f"{self.base}/stats"

    @property
    def control(self) -> str:  # inbound JSON: settings and commands (see edged.features.control)
        return f"{self.base}/set"

    @property
    def control_result(self) -> str:  # outbound JSON: the answer to each control message
        return f"{self.base}/set/result"

    def group_base(self, group: str) -> str:
        return f"{self.prefix}/group/{group}"


def offer_topic(scope: str) -> str:
    """``scope`` is ``<prefix>/<device_id>`` or ``<prefix>/group/<group>``."""
    return f"{scope}/update/offer"


def chunk_topic(scope: str, transfer_id: str, index: int | str) -> str:
    """Retained chunk ``index`` (0-based; ``+`` to subscribe to all) of a transfer."""
    return f"{scope}/update/chunk/{transfer_id}/{index}"
