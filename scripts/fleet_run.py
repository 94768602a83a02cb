"""The documented fleet run (docs/fleets.md): N real daemons (default 100) on one private
Mosquitto -- a group push, a broker restart, a 30 s outage -- and the figures, as JSON.

    nice -n 5 .venv/bin/python scripts/fleet_run.py [--n 100] [--outage-s 30] [--out FILE]

It runs the scenario of tests/fleet/harness.py (the CI test runs it with N = 8) and checks
the same things; exit status 0 when every check passed. Several minutes; 100 daemons need
about 8 GiB of memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.broker import Mosquitto
from tests.fleet.harness import scenario
from tests.update.bundles import make_keys


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--outage-s", type=float, default=30.0)
    ap.add_argument("--pace-s", type=float, default=0.3, help="seconds between daemon starts")
    ap.add_argument("--out", type=Path, help="write the figures (JSON) here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edged-fleet-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(
            work / "broker",
            persistence=True,
            extra_conf=["sys_interval 1", "max_queued_messages 10000", "max_inflight_messages 100"],
        )
        try:
            keys = make_keys(work / "keys")
            t0 = time.monotonic()

            def log(s: str) -> None:
                print(f"[{time.monotonic() - t0:7.1f} s] {s}", file=sys.stderr, flush=True)

            f = scenario(
                _mkdir(work / "fleet"), broker, keys, args.n, outage_s=args.outage_s, pace_s=args.pace_s,
                log=log,
            )  # fmt: skip
        finally:
            broker.close()
    print(f["push_stdout"], file=sys.stderr, end="")
    print(f["push_stderr"], file=sys.stderr, end="")
    figures = {k: v for k, v in f.items() if not k.startswith("push_std")}
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    n = args.n
    checks = {
        "no daemon died": f["dead"] == [],
        "push: all accepted": f["push"]["accepted"] == n and f["push"]["exit"] == 0,
        "status lists all, online, v2": (f["status"]["devices"], f["status"]["online"],
                                         f["status"]["v2"]) == (n, n, n),
        "status collected in < 1 s": f["status"]["collect_s"] < 1.0,
        "nothing lost (seq contiguous)": f["seq"]["missing"] == 0 and f["seq"]["devices"] == n,
        "no discovery re-flood": f["discovery_after_reconnects"] == 0,
        "outage: reconnects spread": f["outage"]["peak_per_s"] < n,
    }  # fmt: skip
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}", file=sys.stderr)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
