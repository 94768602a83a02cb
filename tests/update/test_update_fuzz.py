"""Every update topic handler, fed anything (Hypothesis, in-process, no threads): offers, chunks
and commands of arbitrary bytes, wrong JSON types, huge numbers, NaN, deep nesting, lone
surrogates, forged and replayed signatures. Nothing raises; a refusal is one short line on
``update/result``, rate limited; an unauthenticated offer reserves nothing (no file, no chunk
subscription).

100 examples per property in CI; a long campaign: ``HYPOTHESIS_PROFILE=deep
HYPOTHESIS_EXAMPLES=100000`` (tests/fuzz.py).
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.config import Config, parse_config
from edged.model.classifier import Classifier
from edged.publish.mqtt import Publisher
from edged.publish.topics import chunk_topic
from edged.update.models import boot
from edged.update.report import REFUSAL_BURST, REFUSALS_PER_S
from edged.update.transfer import make_offer
from edged.update.updater import Updater
from tests.daemon import DEMO_MODEL, SAMPLES
from tests.fuzz import examples
from tests.update.bundles import Keys, make_bundle, make_keys
from tests.update.test_updater import FakePublisher

EXAMPLES = examples(100)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
OFFER, COMMAND = "edged/cam-1/update/offer", "edged/cam-1/update/command"
GROUP_OFFER = "edged/group/lab/update/offer"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle(keys: Keys) -> bytes:
    return make_bundle(2, keys)


class Harness:
    """A real :class:`Updater` whose queue is drained here, on the test's thread: whatever a
    handler raises reaches the test."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pub = FakePublisher()
        b = boot(cfg)
        clf = b.classifier or Classifier.load(cfg.model.path)
        self.updater = Updater(cfg, cast(Publisher, self.pub), clf, b)
        self.updater.receiver.subscribe()

    def feed(self, topic: str, payload: bytes) -> None:
        self.updater.on_message(topic, payload)
        self.drain()

    def drain(self) -> None:
        u = self.updater
        while True:
            try:
                item = u.inbox.queue.get_nowait()
            except queue.Empty:
                return
            getattr(u, f"_on_{item[0]}")(*item[1:])  # raises -> the property fails
            u.receiver.tick()

    def models_dir_files(self) -> list[str]:
        d = Path(self.cfg.state_dir) / "models"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def chunk_subscriptions(self) -> list[str]:
        return [t for t in self.pub.subscribed if "/update/chunk/" in t]


def _cfg(tmp_path: Path, keys: Keys, **update: Any) -> Config:
    return parse_config(
        {
            "device_id": "cam-1",
            "state_dir": str(tmp_path / "state"),
            "source": {"type": "files", "path": str(SAMPLES)},
            "model": {"path": str(DEMO_MODEL)},
            "update": {"trusted_keys": [str(keys.public_path)], "groups": ["lab"], **update},
        },
        {},
    )


@pytest.fixture
def harness(tmp_path: Path, keys: Keys) -> Iterator[Harness]:
    yield Harness(_cfg(tmp_path, keys))


def _check_results(h: Harness) -> None:
    for r in h.pub.results():
        assert r["status"] == "rejected", r
        assert "\n" not in r["reason"] and len(r["reason"]) <= 200, r
        json.dumps(r, ensure_ascii=False).encode("utf-8")  # encodable as published


# -- strategies --------------------------------------------------------------------------------

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([2**63, -(2**63), 10**300, 10**400, -(10**4000), 0, -1, 1, 1e308])
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)


def _dumps(value: Any) -> bytes:
    """JSON as a hostile publisher might write it: NaN, lone surrogates escaped."""
    return json.dumps(value, allow_nan=True, ensure_ascii=True).encode("ascii")


def _offer_fields(keys: Keys, bundle: bytes) -> dict[str, Any]:
    offer, _ = make_offer(
        bundle, transfer_id="t1", name="digits", version=2, chunk_size=4096,
        target="cam-1", key=keys.private,
    )  # fmt: skip
    return dict(json.loads(offer.to_json()))


OFFER_KEYS = [
    "transfer_id", "name", "version", "size", "sha256", "chunk_size", "chunks", "target",
    "issued", "key_id", "signature",
]  # fmt: skip
COMMAND_KEYS = ["command", "device", "version", "issued", "key_id", "signature", "sha256", "name"]


# -- properties --------------------------------------------------------------------------------


@FUZZ
@given(topic=st.sampled_from([OFFER, GROUP_OFFER, COMMAND]), payload=st.binary(max_size=3000))
def test_arbitrary_bytes_on_every_update_topic(
    harness: Harness, topic: str, payload: bytes
) -> None:
    harness.feed(topic, payload)
    _check_results(harness)
    assert harness.chunk_subscriptions() == []
    assert harness.models_dir_files() in ([], ["state.json"])


@FUZZ
@given(topic=st.sampled_from([OFFER, COMMAND]), value=json_values)
def test_arbitrary_json_on_offers_and_commands(harness: Harness, topic: str, value: Any) -> None:
    harness.feed(topic, _dumps(value))
    _check_results(harness)
    assert harness.chunk_subscriptions() == []


@FUZZ
@given(data=st.data())
def test_offers_with_fields_of_any_type_or_size(
    harness: Harness, keys: Keys, bundle: bytes, data: st.DataObject
) -> None:
    """A signed offer with fields replaced (so its signature no longer matches) or removed:
    refused before anything is reserved."""
    fields = _offer_fields(keys, bundle)
    for key in data.draw(st.lists(st.sampled_from(OFFER_KEYS), min_size=1, max_size=4)):
        if data.draw(st.booleans()):
            fields[key] = data.draw(json_values)
        else:
            fields.pop(key, None)
    harness.feed(OFFER, _dumps(fields))
    _check_results(harness)
    assert harness.chunk_subscriptions() == []
    assert harness.models_dir_files() in ([], ["state.json"])


@FUZZ
@given(data=st.data())
def test_commands_with_fields_of_any_type_or_size(
    harness: Harness, keys: Keys, data: st.DataObject
) -> None:
    from edged.update.command import sign_command

    fields = sign_command(keys.private, command="rollback", device="cam-1", version=1, issued=1.0)
    for key in data.draw(st.lists(st.sampled_from(COMMAND_KEYS), min_size=1, max_size=4)):
        fields[key] = data.draw(json_values)
    harness.feed(COMMAND, _dumps(fields))
    _check_results(harness)
    assert harness.updater.state.active is not None and harness.updater.state.active.version == 1


@FUZZ
@given(
    index=st.one_of(st.integers(-5, 10**7).map(str), any_text),
    payload=st.binary(max_size=5000),
)
def test_chunks_of_anything_for_a_transfer_in_progress(
    tmp_path: Path, keys: Keys, bundle: bytes, index: str, payload: bytes
) -> None:
    h = Harness(_cfg(tmp_path / str(time.monotonic_ns()), keys))
    offer, _chunks = make_offer(
        bundle, transfer_id="t1", name="digits", version=2, chunk_size=4096,
        target="cam-1", key=keys.private,
    )  # fmt: skip
    h.feed(OFFER, offer.to_json())
    assert h.updater.receiver.current is not None
    h.feed(chunk_topic("edged/cam-1", "t1", "") + index, payload)
    for r in h.pub.results():  # a bad chunk ends the transfer with a reason, nothing else
        assert r["status"] == "rejected" and r["transfer_id"] == "t1", r
        assert "chunk" in r["reason"]


# -- floods, nesting, limits -------------------------------------------------------------------


def test_deep_nesting_and_oversized_payloads_are_refused_in_one_line(harness: Harness) -> None:
    for payload in (
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"version": ' + b"9" * 5000 + b"}",
        b'{"transfer_id": "t", "name": "\\ud800"}',
    ):
        harness.feed(OFFER, payload)
        harness.feed(COMMAND, payload)
        time.sleep(1.0 / REFUSALS_PER_S)  # under the rate limit: each one answered
    _check_results(harness)
    reasons = [r["reason"] for r in harness.pub.results()]
    assert any("nested more than" in r for r in reasons), reasons
    assert any("over the 4096-byte limit" in r or "4096" in r for r in reasons), reasons


def test_a_flood_of_refusals_is_rate_limited(harness: Harness) -> None:
    t0 = time.monotonic()
    for i in range(2000):
        harness.feed(OFFER if i % 2 else COMMAND, b"garbage %d" % i)
    elapsed = time.monotonic() - t0
    results = harness.pub.results()
    assert 1 <= len(results) <= REFUSAL_BURST + elapsed * REFUSALS_PER_S + 1, (
        len(results),
        elapsed,
    )
    _check_results(harness)


def test_unauthenticated_offers_of_any_size_reserve_nothing(
    harness: Harness, keys: Keys, bundle: bytes, tmp_path: Path
) -> None:
    other = make_keys(tmp_path / "other", "other")
    huge = 1 << 39  # half a terabyte: would fail a disk reservation, if one were tried
    cases = {
        "unsigned": make_offer(
            bundle, transfer_id="u", name="digits", version=9, chunk_size=4096, target="cam-1"
        )[0].to_json(),
        "unknown key": make_offer(
            bundle,
            transfer_id="k",
            name="digits",
            version=9,
            chunk_size=4096,
            target="cam-1",
            key=other.private,
        )[0].to_json(),
        "another device's": make_offer(
            bundle,
            transfer_id="d",
            name="digits",
            version=9,
            chunk_size=4096,
            target="cam-2",
            key=keys.private,
        )[0].to_json(),
    }
    forged = json.loads(cases["unsigned"])
    forged.update(size=huge, chunk_size=16 * 1024 * 1024, chunks=["0" * 64] * 32768)
    forged.update(key_id=keys.key_id, signature="AAAA")
    cases["huge, forged signature"] = json.dumps(forged).encode()
    for what, payload in cases.items():
        harness.feed(OFFER, payload)
        assert harness.chunk_subscriptions() == [], what
        assert harness.models_dir_files() in ([], ["state.json"]), what
        time.sleep(1.0 / REFUSALS_PER_S)
    reasons = [r["reason"] for r in harness.pub.results()]
    assert reasons == [
        "offer refused: offer is not signed (a device with trusted keys needs signed offers)",
        f"offer refused: offer signed by unknown key {other.key_id}",
        "offer refused: it is for 'cam-2', not 'cam-1'",
        f"offer refused: bad offer signature (key {keys.key_id})",
    ]
    # An offer over the size any real offer can have is dropped on the network thread.
    harness.updater.on_message(OFFER, b"x" * (harness.updater.inbox.max_offer + 1))
    assert harness.updater.inbox.queue.empty()


def test_a_replayed_older_signed_offer_is_refused_before_anything_is_reserved(
    harness: Harness, keys: Keys, bundle: bytes
) -> None:
    """v5 pushed by mistake, superseded by v3 before the device saw it; the recorded v5
    offer, replayed later, is refused although v5 is above everything accepted."""
    mistake, _ = make_offer(
        make_bundle(5, keys), transfer_id="v5", name="digits", version=5, chunk_size=4096,
        target="cam-1", key=keys.private, issued=1000.0,
    )  # fmt: skip
    fix, _chunks = make_offer(
        make_bundle(3, keys), transfer_id="v3", name="digits", version=3, chunk_size=4096,
        target="cam-1", key=keys.private, issued=2000.0,
    )  # fmt: skip
    harness.feed(OFFER, fix.to_json())
    exact = [chunk_topic("edged/cam-1", "v3", i) for i in range(len(_chunks))]
    assert harness.chunk_subscriptions() == exact
    harness.updater.receiver._drop("test: stop receiving")
    harness.feed(OFFER, mistake.to_json())
    assert harness.chunk_subscriptions() == exact
    reason = harness.pub.results()[-1]["reason"]
    assert reason == (
        "offer refused: transfer v5 was issued at 1000.0, before the last offer for cam-1 "
        "(2000.0): replay refused"
    )
    assert harness.updater.state.offer_issued == {"cam-1": 2000.0}
