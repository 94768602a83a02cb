"""The 3-node RabbitMQ cluster, started once per session (about 30 s) for the cluster tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rabbitmq import RabbitCluster, Unavailable


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    try:
        cluster = RabbitCluster(tmp_path_factory.mktemp("rabbitmq"))
    except Unavailable as err:
        pytest.skip(f"no RabbitMQ cluster: {err}")
    try:
        yield cluster
    finally:
        cluster.close()
