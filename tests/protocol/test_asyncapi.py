"""docs/mqtt-api.yaml and docs/schemas/*.json: generated from edged.protocol, committed as
generated, and a valid AsyncAPI 3.0 document (the official JSON Schema of AsyncAPI 3.0.0, and
every reference resolves)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from edged.protocol import asyncapi
from edged.protocol.channels import CHANNELS, channel_of, parameters

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
OFFICIAL = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json.gz"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCS / "mqtt-api.yaml").read_text(encoding="utf-8"))
    return loaded


def test_the_committed_files_are_what_the_models_generate() -> None:
    generated = asyncapi.files()
    stale = [
        rel
        for rel, text in generated.items()
        if not (DOCS / rel).is_file() or (DOCS / rel).read_text(encoding="utf-8") != text
    ]
    assert not stale, f"regenerate: python -m edged.protocol.asyncapi --write docs ({stale})"
    extra = {p.name for p in (DOCS / "schemas").glob("*.json")} - {
        Path(rel).name for rel in generated
    }
    assert not extra, f"schemas no payload has: {sorted(extra)}"


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "edged.protocol.asyncapi"]
    assert subprocess.run([*run, "--write", str(tmp_path)], cwd=ROOT).returncode == 0
    assert subprocess.run([*run, "--check", str(tmp_path)], cwd=ROOT).returncode == 0
    (tmp_path / "schemas" / "stats.json").write_text("{}\n")
    out = subprocess.run([*run, "--check", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "stats.json: out of date" in out.stderr


def test_the_yaml_reads_back_as_the_document(doc: dict[str, Any]) -> None:
    assert doc == asyncapi.document()


def test_the_document_is_valid_asyncapi_3(doc: dict[str, Any]) -> None:
    official = json.loads(gzip.decompress(OFFICIAL.read_bytes()))
    validator = jsonschema.Draft7Validator(official)
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    broken = json.loads(json.dumps(doc))
    broken["operations"]["sendPrediction"]["action"] = "publish"  # AsyncAPI 2 wording
    assert not validator.is_valid(broken)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"unresolved {ref}"
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves_and_operations_use_their_channel(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert len(refs) > 50
    for ref in refs:
        _resolve(doc, ref)
    assert set(doc["channels"]) == {c.id for c in CHANNELS}
    used = set()
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel_ref = op["channel"]["$ref"]
        used.add(channel_ref.rsplit("/", 1)[1])
        for m in op["messages"]:
            assert m["$ref"].startswith(channel_ref + "/messages/"), (name, m)
    assert used == set(doc["channels"])  # every channel has its operation
    for cid, channel in doc["channels"].items():
        assert channel["address"] and channel["messages"], cid
        params = set(channel.get("parameters", {}))
        assert params == set(parameters(channel["address"])), cid
        for message in channel["messages"].values():
            msg = _resolve(doc, message["$ref"])
            assert "payload" in msg and msg["contentType"], cid


def test_directions_are_the_devices() -> None:
    actions = {c.id: c.action for c in CHANNELS}
    assert actions["prediction"] == actions["controlResult"] == actions["updateResult"] == "send"
    assert actions["control"] == actions["updateOffer"] == actions["updateCommand"] == "receive"


@pytest.mark.parametrize(
    ("topic", "channel"),
    [
        ("edged/cam-1/prediction", "prediction"),
        ("site/a/cam-1/prediction", "prediction"),  # a prefix may span levels
        ("edged/cam-1/x/prediction", None),  # with a known prefix, device_id is one level
        ("edged/group/lab/update/offer", "groupUpdateOffer"),
        ("edged/cam-1/update/chunk/9f2c/12", "updateChunk"),
        ("homeassistant/sensor/cam-1/fps/config", "haDiscovery"),
        ("homeassistant/status", "haStatus"),
        ("edged/cam-1/set/result", "controlResult"),
        ("edged/cam-1/nothing", None),
    ],
)
def test_a_topic_maps_to_its_channel(topic: str, channel: str | None) -> None:
    known = {} if topic.startswith("site/") else {"prefix": "edged"}
    found = channel_of(topic, **known)
    assert (found.id if found is not None else None) == channel
