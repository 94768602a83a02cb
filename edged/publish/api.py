"""The publisher's public interface, as the daemon, the features and the updater use it.

``edged.publish.mqtt.Publisher`` implements it over a real broker; an in-memory publisher (for
tests that need no broker) implements the same few members.
"""

from __future__ import annotations

from typing import Protocol

from edged.publish.topics import Topics

__all__ = ["PublisherAPI"]


class PublisherAPI(Protocol):
    """Queue messages for the broker and receive the subscribed ones (``on_message``, given
    when the publisher is made)."""

    @property
    def topics(self) -> Topics:
        """The device's topic names."""
        ...

    @property
    def connected(self) -> bool: ...

    @property
    def stats(self) -> dict[str, int]:
        """Counters (published, queued, dropped, failures, ...): see ``Publisher.stats``."""
        ...

    def start(self) -> None:
        """Start connecting in the background; returns at once."""
        ...

    def stop(self, timeout: float = 1.5, availability: str | None = "stopped") -> None:
        """Flush within ``timeout``, publish ``availability`` (None: nothing) and disconnect."""
        ...

    def wait_connected(self, timeout: float) -> bool: ...

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Queue a message; never waits for the network. Raises ValueError for an invalid
        topic or QoS."""
        ...

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now and after every reconnect."""
        ...

    def unsubscribe(self, topic: str) -> None: ...
