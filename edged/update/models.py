"""Which model to run: load a stored record, and choose the model at startup.

At startup an installed bundle that the state names as active wins over ``model.path`` (that is
what an update is for; delete ``<state_dir>/models/state.json`` to go back to ``model.path``).
``model.path`` is used when there is no state, when the active model is the configured one (as
it is now configured), or when neither the active nor the previous stored model loads. A new model that has not yet passed its probation counts its starts: after
``MAX_BOOT_ATTEMPTS`` starts without passing (it keeps crashing the daemon), the previous model
is made active again.

Installed bundles are run with their own labels and normalisation; ``model.labels``, ``mean``
and ``std`` belong to the configured model only (``threads``, ``backend``, ``softmax`` apply
to every model).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from edged.config import Config
from edged.errors import BundleError, EdgedError, ModelError, Refused
from edged.model.bundle import DEFAULT_MAX_BYTES, read_bundle
from edged.model.classifier import Classifier
from edged.update.command import Command
from edged.update.store import ModelRecord, State, Store

log = logging.getLogger("edged.update")

MAX_BOOT_ATTEMPTS = 2


def config_record(clf: Classifier, path: Path) -> ModelRecord:
    """The record of the configured model (``model.path``). A plain ``.tflite`` has no
    version of its own: it is version 0, named by its file name, and known by its sha256."""
    info = clf.info
    try:
        bundle_sha: str | None = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        bundle_sha = None
    return ModelRecord(
        name=info.name,
        version=info.version if info.version is not None else 0,
        sha256=info.sha256,
        file=str(Path(path).resolve()),
        bundle_sha256=bundle_sha,
    )


def is_config_model(record: ModelRecord, cfg: Config) -> bool:
    return Path(record.file).is_absolute() and Path(record.file) == Path(cfg.model.path).resolve()


def load_record(
    record: ModelRecord, store: Store, cfg: Config, *, strict: bool = False
) -> Classifier:
    """Load a stored model; :class:`ModelError` if it is missing, changed or unloadable
    (``strict``: a configured model whose file changed since it was recorded is refused too,
    as a rollback to that model must give that model)."""
    m = cfg.model
    path = store.path_of(record)
    if Path(record.file).is_absolute():  # the configured model (or one like it)
        own = is_config_model(record, cfg)
        clf = Classifier.load(
            path,
            labels=m.labels if own else None,
            mean=m.mean if own else None,
            std=m.std if own else None,
            threads=m.threads,
            interpreters=m.interpreters,
            backend=m.backend,
            softmax=m.softmax,
        )
        if clf.info.sha256 != record.sha256:
            if strict:
                raise ModelError(
                    f"{path} changed since it was served (sha256 {clf.info.sha256[:12]}, "
                    f"was {record.sha256[:12]})"
                )
            log.warning("%s changed since it was recorded; using it as it is now", path)
        return clf
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"{path}: cannot read ({err.strerror or err})") from None
    if record.bundle_sha256 and hashlib.sha256(data).hexdigest() != record.bundle_sha256:
        raise ModelError(f"{path}: does not match its recorded sha256 (corrupted?)")
    try:
        limit = max(cfg.update.max_bundle_bytes, DEFAULT_MAX_BYTES)  # checked when installed
        bundle = read_bundle(data, allow_unsigned=True, max_bytes=limit)
    except BundleError as err:
        raise BundleError(f"{path}: {err}") from None
    return Classifier.from_bundle(
        bundle, threads=m.threads, interpreters=m.interpreters, backend=m.backend, softmax=m.softmax
    )


def describe(record: ModelRecord | None) -> str:
    if record is None:
        return "none"
    return f"{record.name} v{record.version}"


@dataclass(slots=True)
class Boot:
    classifier: Classifier | None  # None: load model.path
    state: State
    rolled_back: str | None = None  # why the boot went back to the previous model


def boot(cfg: Config) -> Boot:
    """The model to start with, from ``<state_dir>/models/state.json`` when there is one."""
    store = Store(cfg.state_dir)
    state = store.load()
    if state.active is None or Path(state.active.file).is_absolute():
        return Boot(None, state)  # no update active: model.path as configured now
    note = None
    dirty = False
    active = state.active
    if not active.confirmed and state.previous is not None:
        state.boot_attempts += 1
        dirty = True
        if state.boot_attempts > MAX_BOOT_ATTEMPTS:
            note = (
                f"{describe(active)} did not pass its probation in {MAX_BOOT_ATTEMPTS} starts; "
                f"back to {describe(state.previous)}"
            )
            _go_back(state, note, cfg.update.keep_models)
    for attempt in (state.active, state.previous):
        if attempt is None:
            continue
        try:
            clf = load_record(attempt, store, cfg)
        except (EdgedError, OSError) as err:
            log.error("cannot load stored model %s: %s", describe(attempt), err)
            if attempt is state.active and state.previous is not None:
                note = f"{describe(attempt)} could not be loaded ({err}); back to {describe(state.previous)}"
                _go_back(state, note, cfg.update.keep_models, drop_failed=True)
            dirty = True
            continue
        if dirty:
            _save(store, state)
        log.info("starting with stored model %s (%s)", describe(attempt), store.path_of(attempt))
        return Boot(clf, state, note)
    state.active = state.previous = None
    _save(store, state)
    return Boot(None, state, note)


def _go_back(state: State, reason: str, keep: int, *, drop_failed: bool = False) -> None:
    failed = state.active
    assert failed is not None and state.previous is not None
    target = state.previous
    target.confirmed = True
    state.activate(target, keep)
    if drop_failed:
        rest = [r for r in state.kept() if r.file != failed.file]
        state.previous, state.history = (rest[0] if rest else None), rest[1:]
    state.boot_attempts = 0
    state.note(failed.transfer_id, failed.version, "rolled_back", reason)


def _save(store: Store, state: State) -> None:
    try:
        store.save(state)
    except OSError as err:
        log.warning("cannot save update state in %s: %s", store.dir, err)


def find_kept(state: State, cmd: Command) -> ModelRecord:
    """The model in ``state`` (active or kept) that a rollback command names: exactly one,
    else :class:`Refused` saying why."""

    def matches(r: ModelRecord) -> bool:
        if cmd.version is not None and (r.version or 0) != cmd.version:
            return False
        if cmd.name is not None and r.name != cmd.name:
            return False
        shas = (r.sha256, r.bundle_sha256 or "")
        return cmd.sha256 is None or any(x.startswith(cmd.sha256) for x in shas)

    active = state.active
    found = [r for r in (active, *state.kept()) if r is not None and matches(r)]
    if len(found) > 1:
        names = ", ".join(f"{describe(r)}{' (active)' if r is active else ''}" for r in found)
        raise Refused(
            f"{cmd.target()} is ambiguous: {names} (name a version, or a longer sha256 "
            "prefix: of the bundle if they share a model)"
        )
    if found and found[0] is active:
        raise Refused(f"{cmd.target()} is already active ({describe(active)})")
    if not found:
        kept = ", ".join(f"{describe(r)} ({r.sha256[:12]})" for r in state.kept())
        raise Refused(f"{cmd.target()} is not kept here (kept: {kept or 'none'})")
    return found[0]
