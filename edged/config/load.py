"""Loading the configuration: TOML, environment overrides, validation, relative paths.

``EDGED_MQTT__HOST=broker`` overrides ``[mqtt] host``; a double underscore separates levels.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edged.config.models import Config, FilesSource
from edged.errors import ConfigError
from edged.infra.guard import one_line
from edged.infra.util import deep_merge

ENV_PREFIX = "EDGED_"
MAX_CONFIG_BYTES = 1024 * 1024  # a larger config file is refused
MAX_ENV_VALUE = 64 * 1024  # a longer EDGED_* value is refused
MAX_DEPTH = 16  # nesting of tables and arrays (the schema needs 4)

# Union members pydantic names in an error's location (``source.device.int``): not keys.
_UNION_TAGS = frozenset(
    {"int", "str", "float", "bool", "constrained-str", "constrained-int", "constrained-float"}
)


def format_validation_error(err: ValidationError) -> list[str]:
    problems: dict[str, list[str]] = {}
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        # Drop discriminator tags pydantic inserts (e.g. source.files.path -> source.path).
        if len(loc) >= 2 and loc[0] == "source" and loc[1] in ("files", "opencv", "picamera2"):
            loc = [loc[0], *loc[2:]]
        if len(loc) >= 2 and loc[-1] in _UNION_TAGS:
            loc = loc[:-1]  # one problem, one line: the members' messages are joined
        path = one_line(".".join(one_line(p, 64) for p in loc), 200) or "(top level)"
        msg = one_line(e["msg"].replace("Value error, ", ""), 300)
        problems.setdefault(path, [])
        if msg not in problems[path]:
            problems[path].append(msg)
    lines = [f"{path}: {'; or '.join(msgs)}" for path, msgs in problems.items()]
    return lines if len(lines) <= 20 else [*lines[:20], f"(and {len(lines) - 20} more problems)"]


def _depth(obj: Any) -> int:
    """Nesting depth of dicts/lists, without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend(
                    (v, depth) for v in (node.values() if isinstance(node, dict) else node)
                )
    return deepest


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``EDGED_A__B=v`` -> ``{"a": {"b": v}}``; JSON values (lists, numbers, true) are decoded."""
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == "EDGED_CONFIG":
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if not all(parts) or len(parts) > MAX_DEPTH:
            continue
        if len(raw) > MAX_ENV_VALUE:
            raise ConfigError([f"{one_line(key, 64)}: longer than {MAX_ENV_VALUE} characters"])
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):  # kept as text: validation names the key
                value = raw
            if _depth(value) > MAX_DEPTH:
                raise ConfigError([f"{one_line(key, 64)}: nested deeper than {MAX_DEPTH} levels"])
        node = tree
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                child = node[p] = {}
            node = child
        node[parts[-1]] = value
    return tree


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    merged = deep_merge(dict(data), env_overrides(os.environ if environ is None else environ))
    if _depth(merged) > MAX_DEPTH:
        raise ConfigError([f"(top level): nested deeper than {MAX_DEPTH} levels"])
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as err:
        raise ConfigError([f"(top level): {one_line(err)}"]) from None


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
