"""The 3-node RabbitMQ cluster, started once per session (about 30 s) for the cluster tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rabbitmq import RabbitCluster, Unavailable


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    # Not under pytest's temporary directory: that one is private to root (0700), and the
    # nodes run as the rabbitmq user.
    try:
        cluster = RabbitCluster(Path(tempfile.mkdtemp(prefix="edged-rabbitmq-")))
    except Unavailable as err:
        pytest.skip(f"no RabbitMQ cluster: {err}")
    try:
        yield cluster
    finally:
        cluster.close()
