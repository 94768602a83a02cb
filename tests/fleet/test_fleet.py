"""A small fleet (``EDGEDTEST_FLEET_N``, default 8) of real daemons on one Mosquitto: a group push
reaches every device, a broker restart and a 30 s outage lose nothing, reconnections are
spread, Home Assistant discovery is not re-sent, ``status`` lists the fleet in under 1 s.
``scripts/fleet_run.py`` runs the same scenario with N = 100 (docs/fleets.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tests.broker import Mosquitto
from tests.fleet.harness import fleet_broker, scenario
from tests.update.bundles import make_keys

N = int(os.environ.get("EDGEDTEST_FLEET_N", "8"))
OUTAGE_S = float(os.environ.get("EDGEDTEST_FLEET_OUTAGE_S", "30"))


def test_a_fleet_survives_a_push_a_restart_and_an_outage(
    tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker = fleet_broker(mosquitto_factory)
    keys = make_keys(tmp_path / "keys")
    f = scenario(tmp_path, broker, keys, N, outage_s=OUTAGE_S, log=print)
    print(json.dumps({k: v for k, v in f.items() if not k.startswith("push_std")}, indent=1))
    assert f["dead"] == []
    # The group push: every device accepted it, the table says so, the broker sent about
    # one copy of the bundle per device (plus the predictions meanwhile), not many.
    push = f["push"]
    assert push["exit"] == 0, f["push_stderr"]
    assert push["accepted"] == N
    table = f["push_stdout"].splitlines()
    assert len(table) == N + 1 and all(" accepted " in line for line in table[1:])
    assert (
        N * push["bundle_bytes"] <= push["broker_bytes_sent"] < 3 * N * push["bundle_bytes"] + 2e6
    )
    # status: the whole fleet, online, on v2, in under a second.
    assert f["status"] == {**f["status"], "devices": N, "online": N, "v2": N}
    assert f["status"]["collect_s"] < 1.0  # connect, subscribe, retained messages in
    assert f["status"]["wall_s"] < 5  # the process, Python start included
    # Restart and outage: all back, nothing lost, not all at once after the outage.
    for phase in ("restart", "outage"):
        assert f[phase]["dead"] == []
    assert f["seq"]["devices"] == N and f["seq"]["missing"] == 0, f["seq"]
    if N >= 8:
        assert f["outage"]["spread_s"] >= 1.0, f["outage"]  # jittered backoff, measured
        assert f["outage"]["peak_per_s"] < N, f["outage"]
    # Home Assistant discovery: announced once at start, not again on reconnect.
    assert f["discovery_at_start"] >= N * 4
    assert f["discovery_after_reconnects"] == 0
