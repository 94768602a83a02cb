"""``model.threads = "auto"``: how to run the model measured, not assumed.

A *plan* is a number of interpreters, each with a number of threads: ``1x2`` is one interpreter
using two threads per ``invoke``, ``2x1`` two single-threaded interpreters working on two frames
at once. On the first start with a model every plan that fits the usable cores is timed (each
interpreter warmed up with one ``invoke``, then all of a plan's interpreters invoked together,
each in a thread of its own, for a share of :data:`BUDGET_S`); the plan with the best rate wins,
the cheaper one (fewer threads in all, then fewer interpreters: less memory) unless the dearer
one is :data:`PREFER_FEWER` faster. The choice is kept in ``<state_dir>/threads.json`` under
the model's SHA-256, the backend and the core count, so it is measured again only when one of
them changes. Without a cache directory (``edged classify``) it is kept in memory.

Why plans and not only a thread count: an interpreter's threads meet at every layer, so when
anything else on the machine (capture, the publisher, the broker) takes one of their cores,
the others wait for it. Separate single-threaded interpreters never wait for each other; on a
2-core x86 machine (MobileNetV2 224 uint8) ``2x1`` made 113 invokes/s at 17.3 ms of CPU each,
``1x2`` 90-109/s at 18.3 ms, alone; beside the daemon's own work the gap grows (the daemon
delivered 77/s with ``1x2``, 86-100/s with ``2x1``). So at the same number of threads in all,
more interpreters of fewer threads count as cheaper. What it costs is memory: each interpreter
holds its own tensors and packed weights (about 7 MiB more for that model); "auto" plans no
more interpreters than fit in a quarter of the memory available (:func:`memory_cap`).

Bounded: about :data:`BUDGET_S` seconds in all, plus one warm-up ``invoke`` per interpreter;
a model so slow that the plans so far used three budgets stops the measurement there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

log = logging.getLogger("edged.model")

CACHE_NAME = "threads.json"
BUDGET_S = 1.5
PREFER_FEWER = 0.05  # a dearer plan must be this much faster than a cheaper one to be chosen
MAX_ENTRIES = 16  # models remembered in the cache file
MAX_CACHE_BYTES = 64 * 1024  # a larger cache file is not read (it is rewritten)
MIN_TIMED = 3  # invokes timed per interpreter at least
MAX_INTERPRETERS = 4  # "auto" never plans more (each one costs the model's memory again)
CACHE_VERSION = "plan1"  # part of the key: choices of older versions are measured again

Threads = int | Literal["auto"]


class Plan(NamedTuple):
    """``interpreters`` interpreters of ``threads`` threads each."""

    interpreters: int
    threads: int

    def __str__(self) -> str:
        return f"{self.interpreters}x{self.threads}"

    @property
    def cost(self) -> tuple[int, int]:
        """Cheaper first: fewer threads in all, then fewer threads per interpreter (a
        multi-threaded interpreter loses more to the daemon's other work, see above)."""
        return self.interpreters * self.threads, self.threads

    @classmethod
    def parse(cls, text: object) -> Plan | None:
        """``"2x1"`` -> Plan(2, 1); None for anything else."""
        if not isinstance(text, str):
            return None
        m = re.fullmatch(r"([1-9][0-9]?)x([1-9][0-9]?)", text)
        return cls(int(m.group(1)), int(m.group(2))) if m else None


_lock = threading.Lock()
_cache_dir: Path | None = None
_memo: dict[str, Plan] = {}
_running: Plan | None = None  # the plan of the model a daemon in this process is running


def daemon_running(plan: Plan | None) -> None:
    """A daemon in this process runs a model with ``plan`` (None: no longer). Meanwhile a new
    model (an update, a rollback) is not measured: the daemon's own inference would share the
    cores with the measurement and skew it. It gets the running plan for now, remembered
    nowhere, and is measured at the next start."""
    global _running
    _running = plan


def use_cache_dir(path: Path | str | None) -> None:
    """Where choices are kept (the daemon's state dir); None: memory only."""
    global _cache_dir
    _cache_dir = Path(path) if path is not None else None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def memory_cap(model_bytes: int) -> int:
    """How many interpreters of a model this size fit in a quarter of the available memory
    (each one taken as three times the model file: packed weights and tensors), at least 1."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return MAX_INTERPRETERS  # not Linux: no bound known
    return max(1, min(MAX_INTERPRETERS, available // 4 // max(1, 3 * model_bytes)))


def candidates(
    n_cores: int, interpreters: int | None = None, max_interpreters: int = MAX_INTERPRETERS
) -> list[Plan]:
    """The plans that fit ``n_cores`` (interpreters x threads <= cores, at most
    ``max_interpreters`` interpreters), cheapest first; ``interpreters`` given: only plans
    with that many."""
    most = max(1, min(n_cores, max_interpreters, MAX_INTERPRETERS))
    plans = [Plan(k, t) for k in range(1, most + 1) for t in range(1, n_cores // k + 1)]
    if interpreters is not None:
        plans = [p for p in plans if p.interpreters == interpreters] or [Plan(interpreters, 1)]
    return sorted(plans, key=lambda p: p.cost)


def _key(model: bytes, backend: str, n_cores: int, interpreters: int | None) -> str:
    fixed = "" if interpreters is None else f":k{interpreters}"
    return f"{hashlib.sha256(model).hexdigest()}:{backend}:{n_cores}:{CACHE_VERSION}{fixed}"


def known(sha256: str, backend: str) -> Plan | None:
    """The plan chosen in this process for a model (by its SHA-256) and backend, if any."""
    prefix = f"{sha256}:{backend}:{cores()}:"
    with _lock:
        for key, plan in _memo.items():
            if key.startswith(prefix):
                return plan
    return None


def choose(model: bytes, backend: str, interpreters: int | None = None) -> Plan:
    """The plan for ``model`` on ``backend`` (a concrete name): cached, else measured.
    ``interpreters`` given: the thread count for that many interpreters."""
    n_cores = cores()
    key = _key(model, backend, n_cores, interpreters)
    plans = candidates(n_cores, interpreters, memory_cap(len(model)))
    with _lock:
        if key in _memo:
            return _memo[key]
        cached = Plan.parse(_read_cache().get(key))
        if cached is not None and cached in plans:
            _memo[key] = cached
            return cached
        rates: dict[Plan, float] = {}
        if len(plans) > 1 and _running is not None:
            plan = _running if interpreters is None else Plan(interpreters, _running.threads)
            for_now = plan if plan in plans else plans[0]
            log.info("model.threads auto: %s until the next start, measured then", for_now)
            return for_now
        if len(plans) == 1:
            chosen = plans[0]
        else:
            chosen, rates = measure(model, backend, plans)
        _memo[key] = chosen
        _write_cache(key, chosen)
    if rates:
        shown = ", ".join(f"{p}: {r:.1f}/s" for p, r in rates.items())
        log.info("model.threads auto: %s (measured %s)", chosen, shown)
    return chosen


def measure(
    model: bytes, backend: str, plans: Sequence[Plan], budget_s: float | None = None
) -> tuple[Plan, dict[Plan, float]]:
    """Time each plan; (the chosen plan, invokes per second of each plan measured)."""
    from edged.model.runtime import load_interpreter

    if budget_s is None:
        budget_s = BUDGET_S
    rates: dict[Plan, float] = {}
    started = time.perf_counter()
    share = budget_s / len(plans)
    for plan in plans:
        interps = [load_interpreter(model, threads=plan.threads, backend=backend)[0]]
        interps += [
            load_interpreter(model, threads=plan.threads, backend=backend)[0]
            for _ in range(plan.interpreters - 1)
        ]
        rates[plan] = _rate(interps, share)
        del interps
        if time.perf_counter() - started > 3 * budget_s:
            break
    return pick(rates), rates


def pick(rates: dict[Plan, float]) -> Plan:
    """The plan with the best rate; the cheaper one unless a dearer is PREFER_FEWER faster."""
    ordered = sorted(rates, key=lambda p: p.cost)
    best = ordered[0]
    for plan in ordered:
        if rates[plan] > rates[best] * (1.0 + PREFER_FEWER):
            best = plan
    return best


def _rate(interps: list[Any], seconds: float) -> float:
    """Invokes per second of these interpreters invoked together (each in its own thread):
    the sum of each one's rate, from its median invoke time."""
    rates = [0.0] * len(interps)
    start = threading.Barrier(len(interps))

    inputs = []
    for interp in interps:  # warm-up (first-run set-up) here, where a failure raises
        details = interp.get_input_details()[0]
        index = int(details["index"])
        zeros = np.zeros(details["shape"], dtype=details["dtype"])
        interp.set_tensor(index, zeros)
        interp.invoke()
        inputs.append((index, zeros))
    errors: list[BaseException] = []

    def run(i: int) -> None:
        interp, (index, zeros) = interps[i], inputs[i]
        try:
            start.wait(10.0)
            times: list[float] = []
            end = time.perf_counter() + seconds
            while len(times) < MIN_TIMED or time.perf_counter() < end:
                t0 = time.perf_counter()
                interp.set_tensor(index, zeros)
                interp.invoke()
                times.append(time.perf_counter() - t0)
        except BaseException as err:  # raised again below, in the caller's thread
            errors.append(err)
            start.abort()
            return
        times.sort()
        rates[i] = 1.0 / times[len(times) // 2]

    if len(interps) == 1:
        start = threading.Barrier(1)
        run(0)
    else:
        workers = [
            threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(interps))
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    if errors:
        raise errors[0]
    return sum(rates)


def _read_cache() -> dict[str, object]:
    if _cache_dir is None:
        return {}
    try:
        # Non-blocking: a FIFO or a device put there must not hang the start.
        fd = os.open(_cache_dir / CACHE_NAME, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ValueError("not a regular file")
            raw = f.read(MAX_CACHE_BYTES + 1)
        if len(raw) > MAX_CACHE_BYTES:
            raise ValueError(f"over {MAX_CACHE_BYTES} bytes")
        data = json.loads(raw)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as err:
        log.warning("ignoring %s: %s", _cache_dir / CACHE_NAME, err)
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, chosen: Plan) -> None:
    if _cache_dir is None:
        return
    entries = {k: v for k, v in _read_cache().items() if k != key}
    entries[key] = str(chosen)
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
