"""Property-based fuzzing of every MQTT handler and the daemon's own input boundaries, in-process
(issue 11, point 6): arbitrary bytes, deep nesting, huge/negative/NaN numbers, invalid and
surrogate unicode, wrong types, duplicate keys.

Profiles (tests/conftest.py): ``ci`` (default, short) and ``deep`` (a local campaign):
``HYPOTHESIS_PROFILE=deep HYPOTHESIS_EXAMPLES=100000 pytest tests/test_fuzz_handlers.py``.
Each property: nothing raises out of the handler, every answer it publishes is strict UTF-8
JSON, refusals are bounded one-line reasons, and memory (queues, sets, settings) stays bounded.
"""

from __future__ import annotations

import json
import math
import queue
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.config import load_config, parse_config
from edged.errors import ConfigError
from edged.features.control import MAX_PER_POLL, QUEUE_MAX, Control
from edged.features.homeassistant import Discovery
from edged.features.settings import RUNTIME_KEYS, Settings
from edged.infra import events
from edged.protocol import payloads as wire
from edged.publish.mqtt import Publisher
from edged.publish.session import MqttSession
from edged.publish.topics import chunk_topic
from tests.fakes import FakePublisher, make_config

RESULT = "edged/cam-1/set/result"

# -- strategies ---------------------------------------------------------------------------------

# Every code point, lone surrogates included (Hypothesis leaves them out by default).
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
hostile_text = st.text(any_char, max_size=40) | st.sampled_from(
    ["", "\ud800", "\udcff\udcfe", "a\x00b", "\n", "\u202e", "x" * 5000, "🙂", "NaN", "-0"]
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.sampled_from([0, -1, 1, 2**63, -(2**63) - 1, 10**30, 101, 100, 86400, 86401]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 0.5, 1.0000001]),
)
leaf = st.one_of(st.none(), st.booleans(), numbers, hostile_text)
json_value = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=20,
)


def _dump(value: Any) -> bytes:
    """JSON text as a sloppy client writes it: NaN/Infinity tokens, escaped surrogates."""
    return json.dumps(value, allow_nan=True).encode("ascii")


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 3000))
    opener = draw(st.sampled_from([b"[", b'{"a":', b'{"publish":']))
    closer = b"]" if opener == b"[" else b"}"
    inner = draw(st.sampled_from([b"1", b"", b'"x"', b"{}"]))
    return opener * depth + inner + closer * draw(st.integers(0, depth))


@st.composite
def duplicated(draw: st.DrawFn) -> bytes:
    key = draw(st.sampled_from(["paused", "publish", "id", "persist", "command", "model"]))
    a, b = draw(json_value), draw(json_value)
    return b'{"%s": %s, "%s": %s}' % (key.encode(), _dump(a), key.encode(), _dump(b))


# Messages shaped like control messages, with hostile values where the schema has keys.
section = st.dictionaries(
    st.sampled_from([*RUNTIME_KEYS["publish"], *RUNTIME_KEYS["model"], "spool", "path"])
    | hostile_text,
    leaf | json_value,
    max_size=5,
)
control_like = st.fixed_dictionaries(
    {},
    optional={
        "publish": section | json_value,
        "model": section | json_value,
        "paused": st.booleans() | leaf,
        "command": st.sampled_from(["stats", "ha_remove", "ha_announce", "reset", "x"]) | leaf,
        "persist": st.booleans() | leaf,
        "id": leaf,
    },
)
payloads = st.one_of(
    st.binary(max_size=300),
    json_value.map(_dump),
    control_like.map(_dump),
    nested(),
    duplicated(),
    st.binary(min_size=16 * 1024 - 8, max_size=16 * 1024 + 8),
)


def strict_json(data: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in an outgoing payload")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="edged-fuzz-") as d:
        yield Path(d)


_n = 0


def fresh_dir(root: Path) -> Path:
    global _n
    _n += 1
    return root / f"s{_n}"


def make_control(root: Path) -> tuple[Control, FakePublisher]:
    pub = FakePublisher()
    ctl = Control(
        make_config(fresh_dir(root)),
        pub,  # type: ignore[arg-type]
        apply=lambda s: None,
        commands={"stats": lambda: None, "ha_remove": lambda: None},
    )
    return ctl, pub


def assert_bounded(settings: Settings) -> None:
    p, m = settings.publish, settings.model
    assert 1 <= p.agree_n <= p.agree_m <= 100
    assert 0 <= p.min_score <= 1
    assert math.isfinite(p.min_interval_s) and 0 <= p.min_interval_s <= 86400
    assert math.isfinite(p.heartbeat_s) and 0 <= p.heartbeat_s <= 86400
    assert 1 <= m.top_k <= 100 and p.qos in (0, 1, 2)


def assert_answer(answer: dict[str, Any]) -> None:
    assert isinstance(answer["ok"], bool)
    if not answer["ok"]:
        errors = answer["errors"]
        assert 1 <= len(errors) <= 11
        for line in errors:
            assert len(line) <= 300 and not any(ord(c) < 0x20 for c in line), line


# -- control ------------------------------------------------------------------------------------


@given(payload=payloads)
def test_control_handle_never_raises_and_answers_strict_json(
    state_root: Path, payload: bytes
) -> None:
    ctl, pub = make_control(state_root)
    ctl.handle(payload)
    (sent,) = pub.on(RESULT)
    assert_answer(strict_json(sent))
    assert_bounded(ctl.current)


@given(batch=st.lists(payloads, max_size=40))
def test_control_queue_and_poll_stay_bounded(state_root: Path, batch: list[bytes]) -> None:
    ctl, pub = make_control(state_root)
    for payload in batch:
        ctl.on_message(pub.topics.control, payload)
        assert ctl._queue.qsize() <= QUEUE_MAX
    for _ in range(len(batch) // MAX_PER_POLL + 2):
        ctl.poll()
    ctl.close()
    answers = [strict_json(p) for p in pub.on(RESULT)]
    for answer in answers:
        assert_answer(answer)
    taken = sum(1 for p in batch if p)
    assert ctl.counts["handled"] + ctl.counts["rate_limited"] == taken
    assert_bounded(ctl.current)


@given(content=payloads)
def test_overrides_file_never_stops_the_start(state_root: Path, content: bytes) -> None:
    ctl, _ = make_control(state_root)
    ctl.path.parent.mkdir(parents=True, exist_ok=True)
    ctl.path.write_bytes(content)
    assert_bounded(ctl.load())


# -- Home Assistant's status topic -------------------------------------------------------------


class _Info:
    name = "digits"


@given(batch=st.lists(st.binary(max_size=80) | st.just(b"online") | st.just(b" online\n")))
def test_ha_status_never_raises_and_announces_at_most_once(
    state_root: Path, batch: list[bytes]
) -> None:
    pub = FakePublisher()
    ha = Discovery(
        make_config(state_root).homeassistant,
        pub,  # type: ignore[arg-type]
        diagnostics=True,
        cpu_temperature=True,
    )
    for payload in batch:
        ha.on_message(ha.status_topic, payload)
        ha.poll(_Info())  # type: ignore[arg-type]
    births = sum(p.strip() == b"online" for p in batch)
    assert ha.announcements == min(births, 1)  # within one interval: at most one
    for _, payload, _, _ in pub.sent:
        strict_json(payload)


# -- the generic dispatch -----------------------------------------------------------------------


class _Message:
    def __init__(self, topic: bytes, payload: bytes) -> None:
        self._topic, self.payload = topic, payload

    @property
    def topic(self) -> str:
        return self._topic.decode("utf-8")


@given(
    topic=st.binary(max_size=60) | st.just(b"edged/cam-1/set"),
    payload=payloads,
    fail=st.sampled_from([None, RecursionError, MemoryError, ValueError, UnicodeError]),
)
def test_dispatch_never_raises_into_paho(
    state_root: Path, topic: bytes, payload: bytes, fail: type[Exception] | None
) -> None:
    from edged.config import MqttConfig

    ctl, _ = make_control(state_root)

    def handler(t: str, p: bytes) -> None:
        ctl.on_message(t, p)
        if fail is not None:
            raise fail("boom")

    session = MqttSession(MqttConfig(), "cam-1", Publisher(MqttConfig(), "cam-1"), handler)
    session._handle_message(None, None, _Message(topic, payload))  # type: ignore[arg-type]
    ctl.poll()


# -- outgoing JSON ------------------------------------------------------------------------------


@given(obj=st.dictionaries(hostile_text, json_value, max_size=6), label=hostile_text)
def test_outgoing_json_always_encodes(obj: dict[str, Any], label: str) -> None:
    strict_json(events.dumps(obj))
    event = wire.prediction(
        device="cam-1", seq=1, ts="t", reason="every", label=label, score=0.5,
        top=[(label, float("nan"))], latency_ms={"total": 1.0}, frame=label,
        model=wire.ModelRef.model_construct(name=label, version=None, sha256=str(obj)),
    )  # fmt: skip
    decoded = strict_json(event.to_bytes())
    assert decoded["label"] == events.text(label)
    assert events.utf8(label).decode("utf-8") == events.text(label)


# -- config files and the environment -----------------------------------------------------------

ENV_KEYS = [
    "EDGED_MQTT__PORT", "EDGED_MQTT__HOST", "EDGED_MQTT__TOPIC_PREFIX", "EDGED_PUBLISH__AGREE_M",
    "EDGED_PUBLISH__HEARTBEAT_S", "EDGED_PUBLISH__MODE", "EDGED_SOURCE__FPS", "EDGED_MODEL__MEAN",
    "EDGED_UPDATE__GROUPS", "EDGED_STATS__INTERVAL_S", "EDGED_SOURCE", "EDGED_X__Y__Z",
    "EDGED_SOURCE__ROI",
]  # fmt: skip
env_values = (
    hostile_text | json_value.map(lambda v: json.dumps(v)) | nested().map(lambda b: b.decode())
)


@given(env=st.dictionaries(st.sampled_from(ENV_KEYS), env_values, max_size=4))
def test_environment_gives_a_config_or_one_line_errors(env: dict[str, str]) -> None:
    base = {"device_id": "x", "source": {"type": "files", "path": "."}, "model": {"path": "m"}}
    try:
        cfg = parse_config(base, env)
    except ConfigError as err:
        assert err.problems
        assert all("\n" not in p and len(p) < 600 for p in err.problems), err.problems
    else:
        assert_bounded(Settings(cfg.publish, cfg.model))


toml_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["nan", "inf", "-inf", "+nan", "1e999", "0x7fffffffffffffff", "true"]),
    st.floats().map(lambda f: repr(f).replace("inf", "inf").replace("nan", "nan")),
    hostile_text.map(lambda s: json.dumps(s)),
    nested().map(lambda b: b.decode().replace('{"a":', "[").replace('{"publish":', "[")),
)
toml_keys = st.sampled_from(
    ["publish.agree_m", "publish.heartbeat_s", "publish.qos", "mqtt.port", "mqtt.host",
     "source.fps", "source.read_timeout_s", "state_dir", "model.top_k", "stats.interval_s",
     "update.max_bundle_bytes", "publish.queue_max", "x"]
)  # fmt: skip


@given(
    items=st.dictionaries(toml_keys, toml_scalars, max_size=4),
    junk=st.binary(max_size=200) | st.just(b""),
)
def test_config_file_gives_a_config_or_one_line_errors(
    state_root: Path, items: dict[str, str], junk: bytes
) -> None:
    tables: dict[str, list[str]] = {"": ['device_id = "cam-1"'], "source": ['type = "files"',
        'path = "."'], "model": ['path = "m"']}  # fmt: skip
    for key, value in items.items():
        table, _, name = key.rpartition(".")
        tables.setdefault(table, []).append(f"{name} = {value}")
    text = "\n".join(tables.pop(""))
    for table, lines in tables.items():
        text += f"\n[{table}]\n" + "\n".join(lines)
    path = fresh_dir(state_root).with_suffix(".toml")
    path.write_bytes(text.encode("utf-8", "surrogatepass") + b"\n" + junk)
    try:
        cfg = load_config(path, environ={})
    except ConfigError as err:
        assert err.problems and all("\n" not in p for p in err.problems), err.problems
    else:
        assert_bounded(Settings(cfg.publish, cfg.model))


# -- the update handlers, as black boxes --------------------------------------------------------


@pytest.fixture(scope="module")
def classifier() -> Any:
    from edged.model.classifier import Classifier
    from tests.daemon import DEMO_MODEL

    return Classifier.load(DEMO_MODEL)


def make_updater(root: Path, classifier: Any) -> tuple[Any, FakePublisher]:
    from edged.update.models import boot
    from edged.update.updater import Updater

    cfg = make_config(fresh_dir(root), update={"groups": ["all"]})
    pub = FakePublisher()
    u = Updater(cfg, pub, classifier, boot(cfg))  # type: ignore[arg-type]
    u.receiver.subscribe()
    return u, pub


def drain(u: Any) -> None:
    """What the update thread does with each queued item (``Updater._run``), synchronously."""
    while True:
        try:
            item = u.inbox.queue.get_nowait()
        except queue.Empty:
            return
        u._step(item)


def valid_offer(data: bytes, tid: str = "t1", version: int = 7) -> dict[str, Any]:
    import hashlib

    size = max(1, len(data))
    return {
        "transfer_id": tid, "name": "digits", "version": version, "size": size,
        "chunk_size": 1024, "sha256": hashlib.sha256(data).hexdigest(),
        "chunks": [hashlib.sha256(data[i : i + 1024]).hexdigest() for i in range(0, size, 1024)],
    }  # fmt: skip


offer_like = st.fixed_dictionaries(
    {},
    optional={
        "transfer_id": st.sampled_from(["t1", "x" * 65, "../x", ""]) | leaf,
        "name": leaf,
        "version": numbers | leaf,
        "size": numbers | leaf,
        "chunk_size": numbers | leaf,
        "sha256": st.just("0" * 64) | leaf,
        "chunks": st.lists(st.just("0" * 64), max_size=3) | leaf,
    },
)
update_payloads = st.one_of(payloads, offer_like.map(_dump))


@given(
    messages=st.lists(
        st.tuples(
            st.sampled_from(["offer", "group-offer", "command", "chunk", "other"]),
            update_payloads,
            st.sampled_from(["0", "1", "-1", "99999999999", "x", "", "0/0", "١", "9" * 5000]),
        ),
        max_size=12,
    )
)
def test_update_handlers_never_raise_and_stay_bounded(
    state_root: Path, classifier: Any, messages: list[tuple[str, bytes, str]]
) -> None:
    u, pub = make_updater(state_root, classifier)
    base = pub.topics.base
    # A well-formed offer first, so that chunk topics are matched and reach the transfer.
    data = b"\x00" * 3000
    u.on_message(f"{base}/update/offer", json.dumps(valid_offer(data)).encode())
    drain(u)
    for kind, payload, index in messages:
        topic = {
            "offer": f"{base}/update/offer",
            "group-offer": "edged/group/all/update/offer",
            "command": f"{base}/update/command",
            "chunk": chunk_topic(base, "t1", index),
            "other": f"{base}/update/{index}",
        }[kind]
        u.on_message(topic, payload)
        drain(u)
    assert u.inbox.queue.qsize() == 0 and u.inbox.commands == 0
    assert not u.inbox.offers  # one waiting offer per scope at most, none once handled
    for topic, payload, _, _ in pub.sent:
        if topic.endswith(("/update/result", "/model")):
            strict_json(payload)


def test_update_request_flood_is_bounded(state_root: Path, classifier: Any) -> None:
    from edged.update.inbox import MAX_QUEUED_COMMANDS

    u, pub = make_updater(state_root, classifier)
    for i in range(5000):  # the update thread busy (validating): nothing drains the queue
        u.on_message(f"{pub.topics.base}/update/command", b"x" * 100 + str(i).encode())
    assert u.inbox.queue.qsize() == MAX_QUEUED_COMMANDS
    drain(u)
    assert u.inbox.commands == 0


def test_distinct_malformed_offers_do_not_grow_memory(state_root: Path, classifier: Any) -> None:
    u, pub = make_updater(state_root, classifier)
    for i in range(3000):
        u.on_message(f"{pub.topics.base}/update/offer", b"junk %d" % i)
        drain(u)
    assert not u.inbox.offers  # one waiting offer per scope at most, none once handled
