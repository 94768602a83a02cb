"""``EDGED_*`` environment overrides, read by pydantic-settings.

``EDGED_MQTT__HOST=broker`` overrides ``[mqtt] host``: the prefix ``EDGED_``, then the keys joined
by a double underscore, in any case. A value for a table or a list (``EDGED_MQTT='{"port": 1}'``,
``EDGED_MODEL__MEAN='[127.5, 127.5, 127.5]'``) is JSON; every other value is text that the
configuration's models validate like the file's. A more specific variable wins over a less
specific one (``EDGED_MQTT__PORT`` over ``EDGED_MQTT``'s ``port``); every variable wins over the
file, the file over the defaults. ``EDGED_CONFIG`` names the file and is no override.

pydantic-settings' :class:`~pydantic_settings.EnvSettingsSource` does the reading (prefix, nesting,
JSON decoding of complex fields). Around it, each variable is bounded and checked on its own, so
that every problem is one line naming the variable: an unknown key (with the nearest known one:
``EDGED_MQTT__HOSTNAME: unknown key; did you mean EDGED_MQTT__HOST?``), a value over
:data:`MAX_ENV_VALUE` characters, JSON that does not parse or nests deeper than
:data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

import difflib
import functools
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from edged.config.models import Config
from edged.infra.guard import one_line
from edged.infra.util import deep_merge

ENV_PREFIX = "EDGED_"
ENV_NESTED = "__"
NOT_OVERRIDES = frozenset({"EDGED_CONFIG"})  # the config file's path (edged.cli)
MAX_ENV_VALUE = 64 * 1024  # a longer EDGED_* value is refused
MAX_DEPTH = 16  # nesting of tables and arrays (the schema needs 4)
MAX_ENV_VARS = 256  # EDGED_* variables read (the schema has fewer than 120 keys)
MAX_NAME_SHOWN = 80  # a variable's name is cut to this in messages


@functools.cache
def _reader() -> Callable[[str, str], dict[str, Any]]:
    """pydantic-settings' environment source over one given variable instead of
    ``os.environ``: ``read(name, value)`` -> the config fragment it sets. Imported on first use
    (only when an ``EDGED_*`` variable is set)."""
    from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

    class EnvConfig(BaseSettings, Config):
        """The configuration's schema as pydantic-settings sees it; never instantiated (the
        file and the environment are merged, then :class:`Config` validates them)."""

        model_config = SettingsConfigDict(
            env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, case_sensitive=False
        )

    class OneVariable(EnvSettingsSource):
        def __init__(self, name: str, value: str) -> None:
            super().__init__(EnvConfig)
            # ``env_vars`` (public, no method overridden) is what the source reads, set from
            # os.environ by __init__; here the one variable, lower-cased as case_sensitive=False
            # keys are. tests/test_config_env.py pins the behaviour this relies on.
            self.env_vars = {name.lower(): value}

    def read(name: str, value: str) -> dict[str, Any]:
        return OneVariable(name, value)()

    return read


@dataclass(frozen=True)
class Override:
    """One ``EDGED_*`` variable: its name as shown in messages and the keys it sets."""

    name: str
    path: tuple[str, ...]
    fragment: dict[str, Any]  # what it sets, as a config tree

    def holds(self, loc: Sequence[str]) -> bool:
        """Whether the value at ``loc`` comes from this variable."""
        return list(self.path) == list(loc[: len(self.path)]) and _at(self.fragment, loc)[0]


def shown(name: str) -> str:
    """A variable's name as messages show it: one printable line, cut."""
    return one_line(name, MAX_NAME_SHOWN)


def depth(obj: Any) -> int:
    """Nesting depth of dicts/lists (counted up to ``MAX_DEPTH + 1``), without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            level += 1
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend(
                    (v, level) for v in (node.values() if isinstance(node, dict) else node)
                )
    return deepest


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation admits (``Roi | None`` -> ``[Roi]``; a union -> each member)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = get_origin(annotation)
    if origin is Annotated:
        return models_in(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(annotation) for m in models_in(arg)]
    return []


def _tag(model: type[BaseModel]) -> object:
    field = model.model_fields.get("type")
    return None if field is None else field.default


def keys_at(root: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys the table at ``loc`` (a pydantic error location, discriminator tags included)
    may hold; empty when ``loc`` is no table of the schema."""
    candidates: list[type[BaseModel]] = [root]
    for part in loc:
        if len(candidates) > 1:  # a tagged union: pydantic names the member taken
            tagged = [m for m in candidates if _tag(m) == part]
            if tagged:
                candidates = tagged
                continue
        field = next((m.model_fields[part] for m in candidates if part in m.model_fields), None)
        if not isinstance(part, str) or field is None:
            return []
        candidates = models_in(field.annotation)
    return sorted({k for m in candidates for k in m.model_fields})


def nearest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to ``word`` (difflib), else the one it begins (``heartbeat`` ->
    ``heartbeat_s``), if any."""
    keys = list(candidates)
    found = difflib.get_close_matches(word, keys, n=1, cutoff=0.6)
    if found:
        return found[0]
    longer = sorted(k for k in keys if len(word) >= 2 and k.startswith(word))
    return longer[0] if longer else None


def env_name(path: Sequence[str]) -> str:
    return ENV_PREFIX + ENV_NESTED.join(p.upper() for p in path)


def _leaf(name: str, path: list[str]) -> tuple[FieldInfo | None, str | None]:
    """The field a variable sets, or the problem with a key of it that is not in the schema."""
    bad, field = _walk(path)
    if bad is None:
        return field, None
    near = _correct(path)
    hint = f"; did you mean {env_name(near)}?" if near else ""
    return None, f"{shown(name)}: unknown key{hint}"


def _walk(path: Sequence[str]) -> tuple[int | None, FieldInfo | None]:
    """The index of the first key of ``path`` not in the schema (None: all are), and the field
    the path ends at."""
    candidates: list[type[BaseModel]] = [Config]
    field: FieldInfo | None = None
    for i, part in enumerate(path):
        field = next((m.model_fields[part] for m in candidates if part in m.model_fields), None)
        if field is None:
            return i, None
        candidates = models_in(field.annotation)
    return None, field


def _correct(path: list[str]) -> list[str] | None:
    """``path`` with each unknown key replaced by its nearest known one, as far as that goes."""
    fixed = list(path)
    for _ in range(min(len(path), 4)):  # the schema is 4 levels deep
        bad, _field = _walk(fixed)
        if bad is None:
            return fixed
        candidates: list[type[BaseModel]] = [Config]
        for part in fixed[:bad]:
            field = next(m.model_fields[part] for m in candidates if part in m.model_fields)
            candidates = models_in(field.annotation)
        near = nearest(fixed[bad], sorted({k for m in candidates for k in m.model_fields}))
        if near is None:
            return fixed[:bad] if bad > 0 and fixed[:bad] != path[:bad] else None
        fixed[bad] = near
    return fixed if _walk(fixed)[0] is None else None


def _literal_int(field: FieldInfo, value: object) -> object:
    """``"2"`` as ``2`` for a field of integer choices (``qos: Literal[0, 1, 2]``): pydantic
    matches a literal's type exactly, and the environment holds only text."""
    choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else ()
    if choices and all(type(c) is int for c in choices) and isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isascii() and text.lstrip("-").isdigit() and len(text) <= 20:
            return int(text)
    return value


def _at(tree: Any, path: Sequence[str]) -> tuple[bool, Any]:
    """Whether ``tree`` holds a value at ``path`` (keys, or list indexes as text), and it."""
    node = tree
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _read_one(
    name: str, value: str, path: list[str], field: FieldInfo | None
) -> tuple[dict[str, Any] | None, str | None]:
    """One variable as a config fragment, or its problem."""
    if len(value) > MAX_ENV_VALUE:
        return None, f"{shown(name)}: longer than {MAX_ENV_VALUE} characters"
    from pydantic_settings import SettingsError

    try:
        fragment = _reader()(name, value)
    except SettingsError as err:
        cause = err.__cause__
        if isinstance(cause, RecursionError):
            return None, f"{shown(name)}: nested deeper than {MAX_DEPTH} levels"
        return None, f"{shown(name)}: not valid JSON ({one_line(cause or err, 200)})"
    except RecursionError:
        return None, f"{shown(name)}: nested deeper than {MAX_DEPTH} levels"
    found, leaf = _at(fragment, path)
    if not found:  # pydantic-settings read nothing for it (cannot happen for a known key)
        return None, f"{shown(name)}: not read"
    if depth(fragment) > MAX_DEPTH:  # the keys it sets count: the merged tree is bounded too
        return None, f"{shown(name)}: nested deeper than {MAX_DEPTH} levels"
    if field is not None and (converted := _literal_int(field, leaf)) is not leaf:
        parent = _at(fragment, path[:-1])[1]
        parent[path[-1]] = converted
    return fragment, None


def read_environment(
    environ: Mapping[str, str],
) -> tuple[dict[str, Any], list[Override], list[str]]:
    """The ``EDGED_*`` variables of ``environ`` as one config tree, the variables read, and
    their problems (one line each)."""
    found = [
        (k[len(ENV_PREFIX) :].lower().split(ENV_NESTED), k)
        for k in environ
        if k.startswith(ENV_PREFIX) and k not in NOT_OVERRIDES
    ]
    found.sort(key=lambda item: (len(item[0]), item[1]))  # the more specific wins
    tree: dict[str, Any] = {}
    overrides: list[Override] = []
    problems: list[str] = []
    for i, (path, name) in enumerate(found):
        if i >= MAX_ENV_VARS:
            more = len(found) - MAX_ENV_VARS
            problems.append(f"{shown(name)}: and {more - 1} more: over {MAX_ENV_VARS} variables")
            break
        field, problem = _leaf(name, path)
        fragment = None
        if problem is None:
            fragment, problem = _read_one(name, environ[name], path, field)
        if problem is not None:
            problems.append(problem)
        elif fragment is not None:
            tree = deep_merge(tree, fragment)
            overrides.append(Override(shown(name), tuple(path), fragment))
    return tree, overrides, problems
