"""The process: the daemon that wires the parts together, its signals, its one-instance lock."""
