"""The payload models: the bytes they publish are the bytes edged published before them
(data/golden.json, captured from the hand-built dicts they replaced), outgoing payloads never
fail to encode, and incoming ones are refused with one line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.config import StatsConfig
from edged.features.control import Control
from edged.features.stats import Counters, Stats
from edged.infra.events import text as text_of
from edged.protocol import inbound, payloads
from edged.protocol.asyncapi import json_schemas
from edged.update.report import model_payload, result_payload
from edged.update.store import ModelRecord, State
from tests.fakes import FakePublisher, make_config

GOLDEN: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "golden.json").read_text(encoding="utf-8")
)
T = 1_790_000_000.25  # time.time() while the golden payloads were captured
TS = "2026-09-21T14:13:20.250Z"
SCHEMAS = json_schemas()


def conforms(name: str, data: bytes) -> None:
    jsonschema.Draft202012Validator(SCHEMAS[name]).validate(json.loads(data))


def ref(name: str, version: int | None, sha: str) -> payloads.ModelRef:
    return payloads.ModelRef.model_construct(name=name, version=version, sha256=sha)


def test_prediction_bytes_are_unchanged() -> None:
    p = payloads.prediction(
        device="cam-1", seq=7, ts="2026-09-21T14:13:19.750Z", reason="change", label="cat",
        score=0.912345678, top=[("cat", 0.912345678), ("dog", 0.0876)], model=ref("m", 2, "ab"),
        latency_ms={"preprocess": 1.23456, "invoke": 2.5, "postprocess": 0.1, "total": 4.0},
        frame="img.jpg",
    )  # fmt: skip
    assert p.to_bytes() == GOLDEN["prediction"].encode()
    conforms("prediction", p.to_bytes())
    hostile = payloads.prediction(
        device="cam-1", seq=1, ts=TS, reason="every", label="x\udcff", score=math.nan,
        top=[("x\udcff", math.nan)], model=ref("m", None, "ab"), latency_ms={"total": math.inf},
    )  # fmt: skip
    assert hostile.to_bytes() == GOLDEN["prediction_noframe"].encode()  # no "frame" key
    conforms("prediction", hostile.to_bytes())


def test_health_bytes_are_unchanged() -> None:
    with mock.patch("time.time", return_value=T):
        bad = payloads.Health.model_construct(
            device="cam-1",
            source=payloads.SourceStatus.model_construct(
                ok=False, error="gone\ud800", faults=3, skipped=2
            ),
        )
    assert bad.to_bytes() == GOLDEN["health"].encode()
    conforms("health", bad.to_bytes())


def test_update_result_and_model_bytes_are_unchanged() -> None:
    with mock.patch("time.time", return_value=T):
        plain = result_payload("cam-1", "t1", "digits", 2, "accepted", "")
        cmd = result_payload(
            "cam-1", None, None, 1, "rolled_back", "rollback command (key k)",
            command="rollback", issued=1732262400.5,
        )  # fmt: skip
        unusable = result_payload(
            "cam-1", None, None, None, "rejected", "command refused: x", command="rollback"
        )
        st_ = State()
        st_.active = ModelRecord("digits", 2, "aa", "2-x.edgb", confirmed=False, transfer_id="t1")
        st_.previous = ModelRecord("boot", 0, "bb", "/abs/m.tflite")
        st_.history = [ModelRecord("old", 1, "cc", "1-y.edgb")]
        st_.note("t1", 2, "accepted", "")
        receiving = payloads.Receiving.model_construct(
            transfer_id="t2", name="digits", version=3, chunks=4
        )
        model = model_payload("cam-1", st_, groups=["lab"], receiving=receiving)
    assert plain.to_bytes() == GOLDEN["result"].encode()  # no command, no issued
    assert cmd.to_bytes() == GOLDEN["result_cmd"].encode()
    assert unusable.to_bytes() == GOLDEN["result_cmd_none"].encode()  # "issued": null kept
    assert model.to_bytes() == GOLDEN["model"].encode()
    assert model_payload("cam-1", State()).to_bytes() == GOLDEN["model_empty"].encode()
    for data in (plain.to_bytes(), cmd.to_bytes(), unusable.to_bytes()):
        conforms("update_result", data)
    conforms("model", model.to_bytes())


def test_control_answers_are_unchanged(tmp_path: Path) -> None:
    with mock.patch("time.time", return_value=T):
        pub = FakePublisher()
        ctl = Control(
            make_config(tmp_path), pub,  # type: ignore[arg-type]
            apply=lambda s: None, commands={"stats": lambda: None},
        )  # fmt: skip
        for msg in (
            b'{"publish": {"min_score": 0.5, "mode": "change"}, "model": {"top_k": 2}, '
            b'"paused": false, "command": "stats", "id": "a\\ud800"}',
            b'{"publish": {"min_score": 0.5, "mode": "change"}, "model": {"top_k": 2}, '
            b'"paused": false, "command": "stats", "id": "ok"}',
            b'{"publish": {"min_score": 2}, "id": 7}',
            b'{"command": "reset", "id": "r"}',
            b'{"paused": true, "persist": true}',
            b'{"command": "ha_remove"}',
            b"nope",
        ):
            ctl.handle(msg)
        sent = [p.decode() for _, p, _, _ in pub.sent]
        pub.sent.clear()
        ctl.counts["rate_limited"] = 3
        ctl._answer_rate_limited(1e9)
    assert sent == GOLDEN["control"]
    assert [p.decode() for _, p, _, _ in pub.sent] == GOLDEN["control_rate"]
    for data in sent:
        conforms("set_result", data.encode())


def test_stats_bytes_are_unchanged() -> None:
    c = Counters(
        processed=10, predictions=4, captured=12, dropped=2, skipped=1, paused=False,
        model={"name": "m", "version": 1, "sha256": "ab"},
        mqtt={"published": 4, "queued": 3, "inflight": 1}, connected=True, spool_depth=None,
    )  # fmt: skip
    with (
        mock.patch("time.time", return_value=T),
        mock.patch("time.monotonic", side_effect=[10.0, 12.5, 13.0]),
        mock.patch("edged.features.stats.rss_bytes", return_value=1234),
    ):
        stats = Stats(StatsConfig(), "cam-1", lambda: c, lambda b: None, thermal_path=Path("/-"))
        for x in (5.0, 1.25, 3.5):
            stats.record(x)
        snap = stats.snapshot()
    data = json.dumps(snap, separators=(",", ":")).encode()
    assert data == GOLDEN["stats"].encode()
    conforms("stats", data)


text = st.text(alphabet=st.characters(codec=None), max_size=20)  # lone surrogates included
number = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)


@given(label=text, score=number, frame=text, name=text, error=st.none() | text)
def test_outgoing_payloads_always_encode_to_strict_json(
    label: str, score: float, frame: str, name: str, error: str | None
) -> None:
    def strict(data: bytes) -> Any:
        return json.loads(data.decode("utf-8"), parse_constant=pytest.fail)

    p = payloads.prediction(
        device=name, seq=1, ts=TS, reason="every", label=label, score=score,
        top=[(label, score)], model=ref(name, None, label), latency_ms={"total": score},
        frame=frame,
    )  # fmt: skip
    decoded = strict(p.to_bytes())
    assert ("frame" in decoded) == bool(frame)
    h = payloads.Health.model_construct(
        device=name,
        source=payloads.SourceStatus.model_construct(ok=False, error=error, faults=1, skipped=0),
    )
    assert strict(h.to_bytes())["source"]["error"] == (None if error is None else text_of(error))
    r = result_payload(name, label, name, None, "rejected", label)
    assert list(strict(r.to_bytes())) == [
        "schema", "device", "transfer_id", "name", "version", "status", "reason", "ts"
    ]  # fmt: skip


# -- incoming -----------------------------------------------------------------------------------


def _offer(**change: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "transfer_id": "t1", "name": "digits", "version": 2, "size": 2048, "sha256": "a" * 64,
        "chunk_size": 1024, "chunks": ["b" * 64, "c" * 64], "target": "cam-1", "issued": 1.5,
    }  # fmt: skip
    base.update(change)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("change", "line"),
    [
        ({"transfer_id": "a/b"}, "offer has no valid transfer_id (1-64 of A-Z a-z 0-9 _ -)"),
        ({"name": "tab\there"}, "offer has no name (1-128 printable characters)"),
        ({"version": True}, "offer version must be an integer in 1..9007199254740992"),
        ({"size": 10**400}, "offer size must be an integer in 1..1099511627776"),
        ({"chunks": ["b" * 64]}, "offer must list 2 chunk SHA-256 digests"),
        ({"chunks": ["B" * 64, "c" * 64]}, "offer must list 2 chunk SHA-256 digests"),
        ({"size": 1 << 40, "chunk_size": 1024}, "offer has more than 100000 chunks"),
        ({"issued": "now"}, "offer issued must be a unix time"),
        ({"issued": 1e12}, "offer issued must be a unix time"),
        ({"signature": "AAAA"}, "offer signature needs a key_id and a base64 signature"),
        ({"sha256": "a" * 64 + "\n"}, "offer sha256 is not a hex SHA-256"),
    ],
)
def test_an_offer_is_refused_with_its_one_line(change: dict[str, Any], line: str) -> None:
    from pydantic import ValidationError

    inbound.UpdateOffer.model_validate(_offer())  # the base offer is good
    with pytest.raises(ValidationError) as err:
        inbound.UpdateOffer.model_validate(_offer(**change))
    assert inbound.UpdateOffer.refusal(err.value) == line


json_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70)
offer_keys = st.sampled_from([*sorted(_offer()), "key_id", "signature", "x"])


@given(
    raw=st.dictionaries(
        offer_keys, json_scalar | st.lists(json_scalar | st.just("b" * 64), max_size=3)
    )
)
def test_any_offer_object_validates_or_gives_one_line(raw: dict[str, Any]) -> None:
    from pydantic import ValidationError

    try:
        inbound.UpdateOffer.model_validate({**_offer(), **raw})
    except ValidationError as err:
        line = inbound.UpdateOffer.refusal(err)
        assert line.startswith("offer ") and "\n" not in line and len(line) < 300, line


@pytest.mark.parametrize("diagnostics", [False, True])
@pytest.mark.parametrize("cpu", [False, True])
def test_home_assistant_configs_are_what_the_schema_says(diagnostics: bool, cpu: bool) -> None:
    from edged.features.homeassistant import entity_configs
    from edged.publish.topics import Topics

    configs = entity_configs(
        Topics("edged", "cam-1"), "digits", diagnostics=diagnostics, cpu_temperature=cpu,
        hw_version="Raspberry Pi 5",
    )  # fmt: skip
    assert len(configs) == (2 + (3 + cpu if diagnostics else 0))
    for body in configs.values():
        payloads.HaSensorConfig.model_validate(body)
        conforms("ha_discovery", json.dumps(body).encode())
