"""Loading the configuration: TOML, environment overrides, validation, relative paths.

``EDGED_MQTT__HOST=broker`` overrides ``[mqtt] host``; a double underscore separates levels
(:mod:`edged.config.env`). Precedence, lowest first: defaults, the file, the environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edged.config.env import (
    ENV_PREFIX,
    MAX_DEPTH,
    MAX_ENV_VALUE,
    Override,
    depth,
    keys_at,
    nearest,
    read_environment,
)
from edged.config.models import Config
from edged.config.sources import FilesSource
from edged.errors import ConfigError
from edged.infra.guard import one_line
from edged.infra.util import deep_merge

__all__ = ["ENV_PREFIX", "MAX_CONFIG_BYTES", "MAX_DEPTH", "MAX_ENV_VALUE"]

MAX_CONFIG_BYTES = 1024 * 1024  # a larger config file is refused
MAX_PROBLEMS = 20  # lines reported; the rest are counted

# Union members pydantic names in an error's location (``source.device.int``): not keys.
_UNION_TAGS = frozenset(
    {"int", "str", "float", "bool", "constrained-str", "constrained-int", "constrained-float"}
)


def _where(loc: list[str], overrides: Sequence[Override]) -> tuple[str, Override | None]:
    """Where a problem is, as its line starts: the variable whose value holds ``loc`` (with the
    key path when it lies deeper inside the value), else the key path."""
    dotted = one_line(".".join(one_line(p, 64) for p in loc), 200) or "(top level)"
    inside = [o for o in overrides if o.holds(loc)]
    if not inside:
        return dotted, None
    var = max(inside, key=lambda o: len(o.path))
    return (var.name if list(var.path) == loc else f"{var.name} ({dotted})"), var


def _involved(loc: list[str], kind: str, overrides: Sequence[Override]) -> list[str]:
    """Variables that set keys under a table whose problem this is (``publish: agree_n must not
    exceed agree_m`` when ``EDGED_PUBLISH__AGREE_N`` is set)."""
    scope = loc[:-1] if kind == "missing" else loc
    if not scope:
        return []
    return [o.name for o in overrides if list(o.path[: len(scope)]) == scope]


def format_validation_error(
    err: ValidationError,
    root: type[BaseModel] | None = None,
    overrides: Sequence[Override] = (),
) -> list[str]:
    """One line per problem: ``key.path: message``. With ``root`` (the validated model), an
    unknown key is ``unknown key`` and names the nearest known one; with ``overrides``, a problem
    inside an environment variable's value starts with the variable's name."""
    problems: dict[str, list[str]] = {}
    for e in err.errors():
        raw = list(e["loc"])
        loc = [str(p) for p in raw]
        # Drop discriminator tags pydantic inserts (e.g. source.files.path -> source.path).
        if len(loc) >= 2 and loc[0] == "source" and loc[1] in ("files", "opencv", "picamera2"):
            loc = [loc[0], *loc[2:]]
        if len(loc) >= 2 and loc[-1] in _UNION_TAGS:
            loc = loc[:-1]  # one problem, one line: the members' messages are joined
        where, var = _where(loc, overrides)
        msg = one_line(e["msg"].replace("Value error, ", ""), 300)
        if root is not None and e["type"] == "extra_forbidden" and loc:
            near = nearest(loc[-1], keys_at(root, raw[:-1]))
            msg = "unknown key"
            if near is not None and var is not None and list(var.path) == loc:
                msg += f"; did you mean {ENV_PREFIX}{'__'.join(p.upper() for p in loc[:-1])}"
                msg += f"{'__' if len(loc) > 1 else ''}{near.upper()}?"
            elif near is not None:
                msg += f"; did you mean {one_line('.'.join([*loc[:-1], near]), 200)}?"
        if var is None and (names := _involved(loc, e["type"], overrides)):
            msg += f" (from {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        problems.setdefault(where, [])
        if msg not in problems[where]:
            problems[where].append(msg)
    return capped([f"{where}: {'; or '.join(msgs)}" for where, msgs in problems.items()])


def capped(lines: list[str]) -> list[str]:
    """At most ``MAX_PROBLEMS`` lines, then how many more there are."""
    if len(lines) <= MAX_PROBLEMS:
        return lines
    return [*lines[:MAX_PROBLEMS], f"(and {len(lines) - MAX_PROBLEMS} more problems)"]


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``EDGED_A__B=v`` -> ``{"a": {"b": v}}`` (JSON values of tables and lists decoded);
    :class:`ConfigError` naming each variable that is unknown or too large."""
    tree, _, problems = read_environment(environ)
    if problems:
        raise ConfigError(capped(problems))
    return tree


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate ``data`` (a parsed file) with the ``EDGED_*`` variables of ``environ`` (default:
    the process environment) over it."""
    tree, overrides, problems = read_environment(os.environ if environ is None else environ)
    merged = deep_merge(data, tree)  # without the variables refused: their problems are reported
    if depth(merged) > MAX_DEPTH:
        raise ConfigError(
            capped([*problems, f"(top level): nested deeper than {MAX_DEPTH} levels"])
        )
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as err:
        problems += format_validation_error(err, Config, overrides)
    except (RecursionError, ValueError, TypeError, OverflowError) as err:
        problems.append(f"(top level): {one_line(err)}")
    if problems:
        raise ConfigError(capped(problems))
    return cfg


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, merge environment overrides, validate; relative paths resolve against the file."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES} bytes"])
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except OSError as err:
        raise ConfigError([f"{path}: cannot read ({err.strerror})"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{path}: invalid TOML ({one_line(err, 300)})"]) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: invalid TOML (not UTF-8 at byte {err.start})"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: invalid TOML (nested too deeply)"]) from None
    except ValueError as err:  # e.g. an integer too long to convert
        raise ConfigError([f"{path}: invalid TOML ({one_line(err, 300)})"]) from None
    cfg = parse_config(data, environ)
    return resolve_paths(cfg, path.resolve().parent)


def resolve_paths(cfg: Config, base: Path) -> Config:
    """Make relative file paths relative to the config file's directory."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    cfg.model.path = fix(cfg.model.path) or cfg.model.path
    cfg.model.labels = fix(cfg.model.labels) or cfg.model.labels
    cfg.state_dir = fix(cfg.state_dir) or cfg.state_dir
    cfg.update.trusted_keys = [fix(k) or k for k in cfg.update.trusted_keys]
    if cfg.mqtt.password_file is not None:
        cfg.mqtt.password_file = fix(cfg.mqtt.password_file)
    if cfg.mqtt.tls is not None:
        t = cfg.mqtt.tls
        t.ca_file, t.cert_file, t.key_file = fix(t.ca_file), fix(t.cert_file), fix(t.key_file)
    if isinstance(cfg.source, FilesSource) and not Path(cfg.source.path).is_absolute():
        cfg.source.path = str(base / cfg.source.path)
    return cfg


def check_files(cfg: Config) -> list[str]:
    """Problems with files the config names (missing or unreadable), as ``key: message`` lines."""
    problems = []
    candidates: list[tuple[str, Path | None]] = [
        ("model.path", cfg.model.path),
        ("model.labels", cfg.model.labels),
        ("mqtt.password_file", cfg.mqtt.password_file),
        *((f"update.trusted_keys[{i}]", k) for i, k in enumerate(cfg.update.trusted_keys)),
    ]
    if cfg.mqtt.tls is not None:
        candidates += [
            ("mqtt.tls.ca_file", cfg.mqtt.tls.ca_file),
            ("mqtt.tls.cert_file", cfg.mqtt.tls.cert_file),
            ("mqtt.tls.key_file", cfg.mqtt.tls.key_file),
        ]
    for key, p in candidates:
        if p is None:
            continue
        if not p.is_file():
            problems.append(f"{key}: no such file: {p}")
        elif not os.access(p, os.R_OK):
            problems.append(f"{key}: not readable: {p}")
    return problems
