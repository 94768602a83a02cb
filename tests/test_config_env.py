"""``EDGED_*`` environment overrides (pydantic-settings, edged.config.env): names, precedence,
errors that name the variable, unknown keys with the nearest known one, and hostile values."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged.config import Config, load_config, parse_config
from edged.config.env import ENV_PREFIX, MAX_ENV_VALUE, shown
from edged.errors import ConfigError
from tests.fuzz import examples

MIN: dict[str, Any] = {
    "device_id": "cam-1",
    "source": {"type": "files", "path": "x"},
    "model": {"path": "m"},
}


def _problems(environ: dict[str, str], data: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(MIN if data is None else data, environ)
    return exc.value.problems


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("EDGED_MQTT__HOSTNAME", "EDGED_MQTT__HOSTNAME: unknown key; did you mean EDGED_MQTT__HOST?"),
        ("EDGED_MQTT__TLS__CAFILE", "EDGED_MQTT__TLS__CAFILE: unknown key; did you mean EDGED_MQTT__TLS__CA_FILE?"),
        ("EDGED_PUBLSH__QOS", "EDGED_PUBLSH__QOS: unknown key; did you mean EDGED_PUBLISH__QOS?"),
        ("EDGED_publish__heartbeat", "EDGED_publish__heartbeat: unknown key; did you mean EDGED_PUBLISH__HEARTBEAT_S?"),
        ("EDGED_SOURCE__FSP", "EDGED_SOURCE__FSP: unknown key; did you mean EDGED_SOURCE__FPS?"),
        ("EDGED_NOPE", "EDGED_NOPE: unknown key"),
        ("EDGED_MQTT__PORT__X", "EDGED_MQTT__PORT__X: unknown key"),
        ("EDGED_MQTT____PORT", "EDGED_MQTT____PORT: unknown key"),
        ("EDGED_MQTT__", "EDGED_MQTT__: unknown key"),
        ("EDGED_", "EDGED_: unknown key"),
    ],
)  # fmt: skip
def test_an_unknown_variable_is_named_with_the_nearest_known_one(name: str, expected: str) -> None:
    assert _problems({name: "1"}) == [expected]


def test_a_deep_unknown_variable_is_named_not_ignored() -> None:
    name = "EDGED_" + "A__" * 100 + "B"
    (problem,) = _problems({name: "1"})
    assert problem.startswith("EDGED_A__A__") and problem.endswith(": unknown key")
    assert len(problem) < 120


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"EDGED_MQTT__PORT": "0"}, ["EDGED_MQTT__PORT: Input should be greater than 0"]),
        ({"EDGED_MQTT__PORT": "abc"}, ["EDGED_MQTT__PORT: Input should be a valid integer, unable to parse string as an integer"]),
        ({"EDGED_MQTT": '{"port": 0}'}, ["EDGED_MQTT (mqtt.port): Input should be greater than 0"]),
        ({"EDGED_MQTT": '{"hots": "x"}'}, ["EDGED_MQTT (mqtt.hots): unknown key; did you mean mqtt.host?"]),
        ({"EDGED_MQTT": "5"}, ["EDGED_MQTT: Input should be a valid dictionary or instance of MqttConfig"]),
        ({"EDGED_UPDATE__GROUPS": "[1,"}, ["EDGED_UPDATE__GROUPS: not valid JSON (Expecting value: line 1 column 4 (char 3))"]),
        ({"EDGED_UPDATE__GROUPS": '["Lab"]'}, ["EDGED_UPDATE__GROUPS (update.groups.0): String should match pattern '^[a-z0-9][a-z0-9-]{0,31}$'"]),
        ({"EDGED_PUBLISH__AGREE_N": "9"}, ["publish: agree_n must not exceed agree_m (from EDGED_PUBLISH__AGREE_N)"]),
        ({"EDGED_SOURCE__ROI__X": "-1"}, [
            "EDGED_SOURCE__ROI__X: Input should be greater than or equal to 0",
            "source.roi.width: Field required (from EDGED_SOURCE__ROI__X)",
            "source.roi.height: Field required (from EDGED_SOURCE__ROI__X)",
        ]),
        ({"EDGED_PUBLISH__HEARTBEAT_S": "1e999"}, ["EDGED_PUBLISH__HEARTBEAT_S: Input should be a finite number"]),
        ({"EDGED_PUBLISH__QOS": "3"}, ["EDGED_PUBLISH__QOS: Input should be 0, 1 or 2"]),
        ({"EDGED_PUBLISH__QOS": "\u00b2"}, ["EDGED_PUBLISH__QOS: Input should be 0, 1 or 2"]),
        ({"EDGED_MQTT__HOST": "h" * (MAX_ENV_VALUE + 1)}, [f"EDGED_MQTT__HOST: longer than {MAX_ENV_VALUE} characters"]),
        ({"EDGED_MODEL__MEAN": "[" * 15 + "]" * 15}, ["EDGED_MODEL__MEAN: nested deeper than 16 levels"]),
        ({"EDGED_MQTT": "[" * 5000 + "]" * 5000}, ["EDGED_MQTT: nested deeper than 16 levels"]),
        ({"EDGED_MQTT\n": "1"}, ["EDGED_MQTT\\n: unknown key; did you mean EDGED_MQTT?"]),
    ],
)  # fmt: skip
def test_a_bad_value_is_reported_under_its_variable(
    environ: dict[str, str], expected: list[str]
) -> None:
    assert _problems(environ) == expected


def test_a_value_from_the_file_is_not_blamed_on_a_variable() -> None:
    data = {**MIN, "source": {"type": "files", "path": "x", "loop": True}}
    # EDGED_SOURCE switches the type; the file's path and loop are left over: the file's
    # problems, not the variable's (it set only the type).
    assert _problems({"EDGED_SOURCE": '{"type": "picamera2"}'}, data) == [
        "source.path: unknown key",
        "source.loop: unknown key",
    ]


def test_precedence_env_over_file_over_defaults() -> None:
    data = {**MIN, "mqtt": {"host": "file-host", "port": 1884}}
    cfg = parse_config(data, {"EDGED_MQTT__PORT": "8883"})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.keepalive_s) == ("file-host", 8883, 30)


@pytest.mark.parametrize("reverse", [False, True])
def test_the_more_specific_variable_wins_whatever_the_order(reverse: bool) -> None:
    items = [("EDGED_MQTT", '{"port": 1, "host": "json-host"}'), ("EDGED_MQTT__PORT", "2")]
    cfg = parse_config(MIN, dict(reversed(items) if reverse else items))
    assert (cfg.mqtt.port, cfg.mqtt.host) == (2, "json-host")


def test_values_of_every_kind_from_the_environment() -> None:
    environ = {
        "EDGED_DEVICE_ID": "cam-9",
        "EDGED_mqtt__Port": "1999",  # keys in any case
        "EDGED_PUBLISH__QOS": "2",  # an integer choice from text (refused before)
        "EDGED_SOURCE__ROTATE": "90",
        "EDGED_MODEL__MEAN": "[127.5, 127.5, 127.5]",
        "EDGED_MODEL__STD": "[127.5, 127.5, 127.5]",
        "EDGED_PUBLISH__SPOOL": "false",
        "EDGED_STATS__INTERVAL_S": "2.5",
        "EDGED_UPDATE__GROUPS": '["lab", "hall"]',
        "EDGED_CONFIG": "/not/an/override.toml",
        "edged_mqtt__host": "lower-case prefix: not ours",
        "OTHER": "ignored",
    }
    cfg = parse_config(MIN, environ)
    assert cfg.device_id == "cam-9" and cfg.mqtt.port == 1999 and cfg.mqtt.host == "localhost"
    assert cfg.publish.qos == 2 and cfg.source.rotate == 90 and cfg.publish.spool is False
    assert cfg.model.mean == [127.5] * 3 and cfg.stats.interval_s == 2.5
    assert cfg.update.groups == ["lab", "hall"]


def test_a_switched_source_type_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('device_id = "a"\n[source]\ntype = "opencv"\n[model]\npath = "m"\n')
    cfg = load_config(path, {"EDGED_SOURCE__DEVICE": "rtsp://cam/1", "EDGED_SOURCE__LOOP": "1"})
    assert cfg.source.type == "opencv" and cfg.source.device == "rtsp://cam/1"
    assert cfg.source.loop is True


# -- fuzz: any names and values give a Config or one-line errors that name the variable ---------

_KNOWN = [
    ENV_PREFIX + "__".join(p.upper() for p in path)
    for path in [
        ("device_id",), ("log_level",), ("state_dir",), ("source",), ("source", "type"),
        ("source", "fps"), ("source", "roi"), ("source", "roi", "x"), ("source", "device"),
        ("source", "main_size"), ("model",), ("model", "mean"), ("model", "std"),
        ("model", "top_k"), ("mqtt",), ("mqtt", "port"), ("mqtt", "tls"),
        ("mqtt", "tls", "ca_file"), ("publish", "qos"), ("publish", "agree_n"),
        ("publish", "heartbeat_s"), ("update", "groups"), ("update", "trusted_keys"),
        ("stats", "interval_s"),
    ]
]  # fmt: skip

_names = st.one_of(
    st.sampled_from(_KNOWN),
    st.sampled_from(_KNOWN).flatmap(
        lambda k: st.sampled_from([k.lower(), k + "_", k + "__X", k.replace("__", "_"), k[:-1]])
    ),
    st.text(max_size=30).map(lambda t: ENV_PREFIX + t),
    st.text(string.ascii_uppercase + "_", max_size=30).map(lambda t: ENV_PREFIX + t),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_values = st.one_of(
    st.text(max_size=60),
    st.integers(min_value=-(10**60), max_value=10**60).map(str),
    st.sampled_from(["nan", "-inf", "1e999", "9" * 5000, "-0", "0x10", "", " ", "true", "null"]),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    _json.map(lambda v: json.dumps(v)),
    st.integers(MAX_ENV_VALUE - 2, MAX_ENV_VALUE + 2).map(lambda n: "1" * n),
)


@settings(max_examples=examples(300))
@given(environ=st.dictionaries(_names, _values, max_size=4))
def test_fuzzed_environment_gives_config_or_one_line_errors_naming_the_variable(
    environ: dict[str, str],
) -> None:
    try:
        cfg = parse_config(MIN, environ)
    except ConfigError as err:
        ours = [shown(k) for k in environ if k.startswith(ENV_PREFIX) and k != "EDGED_CONFIG"]
        assert err.problems and len(err.problems) <= 21
        for problem in err.problems:
            assert "\n" not in problem and len(problem) < 800, problem
            assert problem.startswith("(and ") or any(name in problem for name in ours), (
                problem,
                ours,
            )
    else:
        assert isinstance(cfg, Config)


@pytest.mark.parametrize("known", [False, True])
def test_thousands_of_variables_are_cut_short_quickly(known: bool) -> None:
    import itertools
    import time

    if known:  # each a case variant of a real key: every one is read until the cut
        cases = itertools.product(*[(c.lower(), c.upper()) for c in "MQTT__KEEPALIVE_S"])
        names = ["EDGED_" + "".join(chars) for chars in itertools.islice(cases, 5000)]
    else:
        names = [f"EDGED_X{i:05d}" for i in range(20_000)]
    t0 = time.monotonic()
    problems = _problems(dict.fromkeys(names, "30"))
    took = time.monotonic() - t0
    assert took < 10, took
    if known:  # 256 good ones read, the rest refused in one line
        extra = len(set(names)) - 256 - 1  # the one named, and the others
        assert len(problems) == 1 and problems[0].endswith(
            f": and {extra} more: over 256 variables"
        )
    else:
        assert len(problems) == 21 and problems[-1] == "(and 237 more problems)"
    assert all(p.startswith("EDGED_") and "\n" not in p for p in problems[:20])


def test_refused_variables_and_invalid_values_are_all_reported() -> None:
    environ = {"EDGED_MQTT__HOSTNAME": "x", "EDGED_PUBLISH__QOS": "7", "EDGED_MQTT__PORT": "9"}
    assert _problems(environ) == [
        "EDGED_MQTT__HOSTNAME: unknown key; did you mean EDGED_MQTT__HOST?",
        "EDGED_PUBLISH__QOS: Input should be 0, 1 or 2",
    ]
