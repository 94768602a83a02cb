"""``model.threads = "auto"``: the interpreter thread count measured, not assumed.

On the first start with a model, each count from 1 to the number of usable cores is timed
(a warm-up ``invoke``, then ``invoke`` on a zero input for a share of :data:`BUDGET_S`); the
count with the best rate wins, the smaller one when two are within :data:`PREFER_FEWER` of each
other (a thread less is a core left for capture and publishing). The choice is kept in
``<state_dir>/threads.json`` under the model's SHA-256, the backend and the core count, so it
is measured again only when one of them changes. Without a cache directory (``edged classify``)
the choice is kept in memory for the process.

Bounded: about :data:`BUDGET_S` seconds in all, plus one warm-up ``invoke`` per count; a model
so slow that the first count already used three budgets stops the measurement there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger("edged.model")

CACHE_NAME = "threads.json"
BUDGET_S = 1.0
PREFER_FEWER = 0.05  # a count must be this much faster than a smaller one to be chosen
MAX_ENTRIES = 16  # models remembered in the cache file
MIN_TIMED = 3  # invokes timed per count at least

Threads = int | Literal["auto"]

_lock = threading.Lock()
_cache_dir: Path | None = None
_memo: dict[str, int] = {}


def use_cache_dir(path: Path | str | None) -> None:
    """Where choices are kept (the daemon's state dir); None: memory only."""
    global _cache_dir
    _cache_dir = Path(path) if path is not None else None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _key(model: bytes, backend: str, n_cores: int) -> str:
    return f"{hashlib.sha256(model).hexdigest()}:{backend}:{n_cores}"


def known(sha256: str, backend: str) -> int | None:
    """The count chosen in this process for a model (by its SHA-256) and backend, if any."""
    with _lock:
        return _memo.get(f"{sha256}:{backend}:{cores()}")


def choose(model: bytes, backend: str) -> int:
    """The thread count for ``model`` on ``backend`` (a concrete name): cached, else measured."""
    n_cores = cores()
    key = _key(model, backend, n_cores)
    with _lock:
        if key in _memo:
            return _memo[key]
        cached = _read_cache().get(key)
        if isinstance(cached, int) and not isinstance(cached, bool) and 1 <= cached <= n_cores:
            _memo[key] = cached
            return cached
        rates: dict[int, float] = {}
        if n_cores == 1:
            chosen = 1
        else:
            chosen, rates = measure(model, backend, n_cores)
        _memo[key] = chosen
        _write_cache(key, chosen)
    if rates:
        shown = ", ".join(f"{n}: {r:.1f}/s" for n, r in sorted(rates.items()))
        log.info("model.threads auto: %d thread(s) (measured %s)", chosen, shown)
    return chosen


def measure(
    model: bytes, backend: str, n_cores: int, budget_s: float | None = None
) -> tuple[int, dict[int, float]]:
    """Time 1..``n_cores`` threads; (the chosen count, invokes per second of each count)."""
    from edged.model.runtime import load_interpreter

    if budget_s is None:
        budget_s = BUDGET_S
    rates: dict[int, float] = {}
    started = time.perf_counter()
    share = budget_s / n_cores
    for n in range(1, n_cores + 1):
        interp, _ = load_interpreter(model, threads=n, backend=backend)
        rates[n] = _rate(interp, share)
        del interp
        if time.perf_counter() - started > 3 * budget_s:
            break
    return pick(rates), rates


def pick(rates: dict[int, float]) -> int:
    """The count with the best rate, the smaller one unless a larger is PREFER_FEWER faster."""
    best = min(rates)
    for n in sorted(rates):
        if rates[n] > rates[best] * (1.0 + PREFER_FEWER):
            best = n
    return best


def _rate(interp: object, seconds: float) -> float:
    details = interp.get_input_details()[0]  # type: ignore[attr-defined]
    index = int(details["index"])
    zeros = np.zeros(details["shape"], dtype=details["dtype"])
    interp.set_tensor(index, zeros)  # type: ignore[attr-defined]
    interp.invoke()  # type: ignore[attr-defined]  # warm-up: first-run set-up
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < MIN_TIMED or time.perf_counter() < end:
        t0 = time.perf_counter()
        interp.set_tensor(index, zeros)  # type: ignore[attr-defined]
        interp.invoke()  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1.0 / times[len(times) // 2]


def _read_cache() -> dict[str, object]:
    if _cache_dir is None:
        return {}
    try:
        data = json.loads((_cache_dir / CACHE_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("ignoring %s: %s", _cache_dir / CACHE_NAME, err)
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, chosen: int) -> None:
    if _cache_dir is None:
        return
    entries = {k: v for k, v in _read_cache().items() if k != key}
    entries[key] = chosen
    while len(entries) > MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    path = _cache_dir / CACHE_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".threads-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot keep the thread choice in %s: %s", path, err)
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
