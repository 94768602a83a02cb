"""``edged bench``: the daemon's delivered rate against the bare interpreter (host/dev tool)."""
