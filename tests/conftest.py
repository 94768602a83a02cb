"""Shared fixtures: real Mosquitto brokers and subscribers (see tests/broker.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.broker import Mosquitto, MosquittoNotInstalled, Subscriber, find_mosquitto
from tests.daemon import DaemonProcess, write_config


def _require_mosquitto() -> None:
    try:
        find_mosquitto()
    except MosquittoNotInstalled as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture
def mosquitto_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Mosquitto]]:
    """``mosquitto_factory(users=..., acl=..., tls=..., max_packet_size=..., persistence=...)``
    starts a private broker; every broker started is killed at teardown."""
    started: list[Mosquitto] = []

    def make(**kwargs: Any) -> Mosquitto:
        _require_mosquitto()
        m = Mosquitto(tmp_path_factory.mktemp("mosquitto"), **kwargs)
        started.append(m)
        return m

    yield make
    for m in started:
        m.close()


@pytest.fixture
def broker(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A plain anonymous broker on 127.0.0.1:<free port>."""
    return mosquitto_factory()


@pytest.fixture
def subscriber_factory() -> Iterator[Callable[..., Subscriber]]:
    """``subscriber_factory(broker, topic, **kwargs)``; all are closed at teardown."""
    made: list[Subscriber] = []

    def make(broker: Mosquitto, topic: str = "#", **kwargs: Any) -> Subscriber:
        s = Subscriber(broker.host, broker.port, topic, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """``start_daemon(cfg_dict, env=None)`` runs ``edged run`` as a real process on a config
    written from ``cfg_dict`` (see tests.daemon.demo_config); all are killed at teardown."""
    procs: list[DaemonProcess] = []

    def start(cfg: dict[str, Any], env: dict[str, str] | None = None) -> DaemonProcess:
        path = write_config(tmp_path / f"edged-{len(procs)}.toml", cfg)
        procs.append(DaemonProcess(path, env))
        return procs[-1]

    yield start
    for p in procs:
        p.close()


# -- tiers: a test that needs a real broker is marked `broker` by its fixtures (a fixture that
# starts one belongs here; tests/soak.py and `edged bench` start their own: their tests are
# marked by hand); `pytest -m "not broker"` is the fast tier (in-memory MQTT: tests/memory.py).
BROKER_FIXTURES = frozenset(
    {
        "mosquitto_factory",
        "broker",
        "subscriber_factory",
        "start_daemon",
        "demo_env",
        "rabbit_cluster",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BROKER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)


# -- Hypothesis profiles: "ci" (default, short: the whole CI stays well under its budget) and
# "deep" (a local fuzz campaign): HYPOTHESIS_PROFILE=deep pytest tests/test_fuzz_handlers.py
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=_SLOW_OK, print_blob=True
)
settings.register_profile(
    "deep",
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=_SLOW_OK,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
