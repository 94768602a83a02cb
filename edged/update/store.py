"""On-disk update state under ``<state_dir>/models``: installed bundles and ``state.json``.

::

    <state_dir>/models/
        state.json               {"active", "previous", "history", "highest_version",
                                  "last_command_issued", "offer_issued", "last_update",
                                  "answered", "boot_attempts"}
        2-1a2b3c4d5e6f.edgb      installed bundles: <version>-<first 12 hex of bundle sha256>
        .<transfer_id>.part      a transfer in progress (removed at startup)

Every file is written to a temporary name, fsynced, renamed into place, and the directory is
fsynced. Writing ``state.json`` is the commit point of an update or rollback: after a power cut
at any moment the state names exactly the old or the new model, and the bundle it names is
complete. The active bundle, the previous one and the ``history`` of earlier models served
(``[update] keep_models`` in all besides the active one) are kept: any of them can be rolled
back to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edged.infra.events import iso_utc
from edged.infra.util import atomic_write as atomic_write  # re-exported: tests import it here
from edged.infra.util import fsync_dir

log = logging.getLogger("edged.update")

MODELS = "models"
STATE = "state.json"
BUNDLE_NAME = re.compile(r"^(\d+)-([0-9a-f]{12})\.edgb$")
MAX_ANSWERED = 32  # transfer ids remembered as answered
MAX_SCOPES = 64  # offer scopes whose last "issued" is remembered


@dataclass(slots=True)
class ModelRecord:
    """A model the device can run. ``file`` is a bundle name in the models directory, or an
    absolute path (the configured ``model.path``)."""

    name: str
    version: int | None
    sha256: str  # of model.tflite: what predictions carry
    file: str
    bundle_sha256: str | None = None  # of the whole file
    confirmed: bool = True  # False until a new model has passed its probation
    transfer_id: str | None = None  # the transfer that installed it

    def ref(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, raw: Any) -> ModelRecord | None:
        if not isinstance(raw, dict):
            return None
        version = raw.get("version")
        return cls(
            name=str(raw["name"]),
            version=int(version) if version is not None else None,
            sha256=str(raw["sha256"]),
            file=str(raw["file"]),
            bundle_sha256=raw.get("bundle_sha256"),
            confirmed=bool(raw.get("confirmed", True)),
            transfer_id=raw.get("transfer_id"),
        )


@dataclass(slots=True)
class State:
    active: ModelRecord | None = None
    previous: ModelRecord | None = None
    history: list[ModelRecord] = field(default_factory=list)  # served before previous, newest first
    highest_version: int = 0  # replay/downgrade floor: offers must be above it
    last_command_issued: float | None = None  # commands must be issued after it
    offer_issued: dict[str, float] = field(default_factory=dict)  # target -> last offer acted on
    last_update: dict[str, Any] | None = None  # {transfer_id, version, status, reason, ts}
    answered: list[str] = field(default_factory=list)  # transfer ids answered (newest last)
    boot_attempts: int = 0  # starts with an unconfirmed active model

    def to_json(self) -> bytes:
        body = asdict(self)
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> State:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("state is not a JSON object")
        issued = raw.get("last_command_issued")
        history = [ModelRecord.from_dict(r) for r in raw.get("history") or []]
        offers = raw.get("offer_issued") or {}
        return cls(
            active=ModelRecord.from_dict(raw.get("active")),
            previous=ModelRecord.from_dict(raw.get("previous")),
            history=[r for r in history if r is not None],
            offer_issued={str(k): float(v) for k, v in dict(offers).items()},
            highest_version=int(raw.get("highest_version") or 0),
            last_command_issued=float(issued) if issued is not None else None,
            last_update=raw.get("last_update"),
            answered=[str(t) for t in raw.get("answered") or []][-MAX_ANSWERED:],
            boot_attempts=int(raw.get("boot_attempts") or 0),
        )

    def kept(self) -> list[ModelRecord]:
        """Every model that can be rolled back to: the previous one first, then older."""
        return [r for r in (self.previous, *self.history) if r is not None]

    def activate(self, record: ModelRecord, keep: int) -> ModelRecord | None:
        """Make ``record`` active; the model it replaces becomes ``previous`` and the rest
        move down the history (``keep`` models kept besides the active one, ``record`` taken
        out of them). Returns the replaced model."""
        old = self.active
        rest = [r for r in self.kept() if not _same(r, record)]
        if old is not None and not _same(old, record):
            rest.insert(0, old)
        rest = _unique(rest)[: max(1, keep)]
        self.active = record
        self.previous = rest[0] if rest else None
        self.history = rest[1:]
        return old

    def offer_seen(self, target: str, issued: float) -> None:
        self.offer_issued[target] = issued
        if len(self.offer_issued) > MAX_SCOPES:
            oldest = min(self.offer_issued, key=lambda k: self.offer_issued[k])
            del self.offer_issued[oldest]

    def remember(self, transfer_id: str) -> None:
        if transfer_id not in self.answered:
            self.answered = [*self.answered, transfer_id][-MAX_ANSWERED:]

    def note(self, tid: str | None, version: int | None, status: str, reason: str) -> None:
        """Record the outcome of an update (and remember its transfer id as answered)."""
        if tid is not None:
            self.remember(tid)
        self.last_update = {
            "transfer_id": tid,
            "version": version,
            "status": status,
            "reason": reason,
            "ts": iso_utc(time.time()),
        }


def _same(a: ModelRecord, b: ModelRecord) -> bool:
    return a.file == b.file


def _unique(records: list[ModelRecord]) -> list[ModelRecord]:
    out: list[ModelRecord] = []
    for r in records:
        if not any(_same(r, o) for o in out):
            out.append(r)
    return out


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / MODELS
        self.state_path = self.dir / STATE

    def ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load(self) -> State:
        """The saved state; an empty one when there is none. An unreadable state file is set
        aside (``state.json.bad``) and reported; the configured model is used then."""
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return State()
        except OSError as err:
            log.error(
                "update state %s unreadable (%s); using the configured model", self.state_path, err
            )
            return State()
        try:
            return State.from_json(data)
        except (ValueError, KeyError, TypeError) as err:
            log.error(
                "update state %s is corrupt (%s); set aside as %s.bad", self.state_path, err, STATE
            )
            with contextlib.suppress(OSError):
                os.replace(self.state_path, self.state_path.with_name(STATE + ".bad"))
            return State()

    def save(self, state: State) -> None:
        """Commit ``state`` (raises ``OSError``: the previous state stays in force)."""
        self.ensure_dir()
        atomic_write(self.state_path, state.to_json())

    def part_path(self, transfer_id: str) -> Path:
        self.ensure_dir()
        return self.dir / f".{transfer_id}.part"

    def install(self, part: Path, version: int, bundle_sha256: str) -> str:
        """Move a complete, fsynced transfer file to its final name; returns that name."""
        name = f"{version}-{bundle_sha256[:12]}.edgb"
        os.replace(part, self.dir / name)
        fsync_dir(self.dir)
        return name

    def path_of(self, record: ModelRecord) -> Path:
        p = Path(record.file)
        return p if p.is_absolute() else self.dir / p

    def cleanup(self, state: State, keep: Path | None = None) -> list[str]:
        """Delete installed bundles other than the active and kept ones (and ``keep``,
        the configured model), and leftover transfer files; returns the names removed."""
        kept = {r.file for r in (state.active, *state.kept()) if r is not None}
        if keep is not None and Path(keep).parent.resolve() == self.dir.resolve():
            kept.add(Path(keep).name)
        removed = []
        try:
            entries = list(self.dir.iterdir())
        except OSError:
            return []
        for p in entries:
            stale = (BUNDLE_NAME.match(p.name) and p.name not in kept) or p.name.endswith(
                (".part", ".tmp")
            )
            if stale:
                try:
                    p.unlink()
                    removed.append(p.name)
                except OSError as err:
                    log.warning("cannot remove %s: %s", p, err)
        return removed

    def discard(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.dir / name).unlink()
