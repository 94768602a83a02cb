"""What the daemon offers over MQTT beside predictions: remote control, Home Assistant
discovery, periodic statistics (and their Prometheus exposition)."""
