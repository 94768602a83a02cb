"""The broker connection options that every host command taking a broker shares."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_broker_args(ap: argparse.ArgumentParser) -> None:
    """--host, --port, --username, --password-file, --ca-file, --prefix, --protocol."""
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--username")
    ap.add_argument("--password-file", type=Path)
    ap.add_argument("--ca-file", type=Path, help="CA bundle: connect with TLS")
    ap.add_argument("--prefix", default="edged", help="topic prefix (default: edged)")
    ap.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
