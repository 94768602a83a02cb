"""edged: classify camera frames on the device, publish only labels over MQTT."""

__version__ = "0.1.0"
