"""The AsyncAPI 3.0 document of the MQTT API (``docs/mqtt-api.yaml``) and one JSON Schema per
payload (``docs/schemas/<message>.json``), generated from :mod:`edged.protocol`::

    python -m edged.protocol.asyncapi                # the document, YAML, on stdout
    python -m edged.protocol.asyncapi --write docs   # docs/mqtt-api.yaml, docs/schemas/*.json
    python -m edged.protocol.asyncapi --check docs   # exit 1 if those differ from the models

The document is written from the device's side: ``send`` operations are what a device
publishes, ``receive`` operations what it subscribes to. The YAML is emitted here (block style,
strings as JSON strings), so the output is the same wherever it is generated.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from edged import __version__
from edged.protocol.base import SCHEMA
from edged.protocol.channels import CHANNELS, DEFAULTS, JSON, PARAMETERS, Message, parameters

REF = "#/components/schemas/{model}"
JSON_SCHEMA = "https://json-schema.org/draft/2020-12/schema"
DESCRIPTION = (
    "Topics and payloads of an edged device. Every JSON payload is compact UTF-8 JSON whose "
    f"object opens with the header: schema ({SCHEMA}) and device (its device_id); most carry "
    "ts (UTC, ISO 8601 with milliseconds). Numbers that are not finite are sent as null. "
    "Generated from edged.protocol: python -m edged.protocol.asyncapi --write docs"
)


def messages() -> dict[str, Message]:
    """Every message, by name, in channel order."""
    out: dict[str, Message] = {}
    for channel in CHANNELS:
        out.setdefault(channel.message.name, channel.message)
    return out


def _models() -> list[type[BaseModel]]:
    return [m.model for m in messages().values() if m.model is not None]


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as a dict."""
    models = _models()
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    msgs: dict[str, Any] = {}
    for name, msg in messages().items():
        if msg.model is not None:
            payload: dict[str, Any] = {"$ref": REF.format(model=msg.model.__name__)}
        else:
            key = _camel(name)
            schemas[key] = msg.schema
            payload = {"$ref": REF.format(model=key)}
        msgs[name] = {
            "name": name,
            "title": msg.title,
            "contentType": msg.content_type,
            "payload": payload,
        }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for c in CHANNELS:
        params = {p: {"$ref": f"#/components/parameters/{p}"} for p in parameters(c.address)}
        flags = ", ".join(
            f for f, on in (("retained", c.retained), ("an empty payload clears it", c.clearable))
            if on
        )  # fmt: skip
        channels[c.id] = {
            "address": c.address,
            "title": c.message.title,
            "description": c.summary + (f" ({flags})." if flags else "."),
            "parameters": params,
            "messages": {c.message.name: {"$ref": f"#/components/messages/{c.message.name}"}},
        }
        operations[f"{c.action}{c.id[0].upper()}{c.id[1:]}"] = {
            "action": c.action,
            "channel": {"$ref": f"#/channels/{c.id}"},
            "summary": ("The device publishes: " if c.action == "send" else "The device takes: ")
            + c.message.title.lower(),
            "messages": [{"$ref": f"#/channels/{c.id}/messages/{c.message.name}"}],
            "bindings": {"mqtt": {"qos": c.qos, "retain": c.retained, "bindingVersion": "0.2.0"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "edged MQTT API",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "see the edged repository"},
        },
        "defaultContentType": JSON,
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": msgs,
            "schemas": dict(sorted(schemas.items())),
            "parameters": {
                p: {"description": d, **({"default": DEFAULTS[p]} if p in DEFAULTS else {})}
                for p, d in PARAMETERS.items()
            },
        },
    }


def json_schemas() -> dict[str, dict[str, Any]]:
    """message name -> a standalone JSON Schema (draft 2020-12) of its payload."""
    out: dict[str, dict[str, Any]] = {}
    for name, msg in messages().items():
        if msg.content_type not in (JSON, "text/plain"):
            continue  # raw bytes: nothing to validate
        body = msg.model.model_json_schema() if msg.model is not None else dict(msg.schema)
        out[name] = {"$schema": JSON_SCHEMA, "title": msg.title, **body}
    return out


def _camel(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_"))


# -- YAML (block style; every string a JSON string, which YAML reads as the same string) -------

_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$.-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _key(key: str) -> str:
    if _PLAIN_KEY.match(key) and key.lower() not in _YAML_WORDS:
        return key
    return json.dumps(key, ensure_ascii=False)


def _scalar(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _lines(value: Any, indent: str) -> list[str]:
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                out.append(f"{indent}{_key(str(k))}:")
                out += _lines(v, indent + "  ")
            else:
                out.append(f"{indent}{_key(str(k))}: {_scalar(v)}")
    else:
        for v in value:
            if isinstance(v, dict | list) and v:
                inner = _lines(v, indent + "  ")
                out.append(f"{indent}- {inner[0].lstrip()}")
                out += inner[1:]
            else:
                out.append(f"{indent}- {_scalar(v)}")
    return out


def to_yaml(doc: dict[str, Any]) -> str:
    return "\n".join(_lines(doc, "")) + "\n"


# -- files ----------------------------------------------------------------------------------------


def files() -> dict[str, str]:
    """Relative path -> content of every generated file."""
    out = {"mqtt-api.yaml": to_yaml(document())}
    for name, schema in json_schemas().items():
        out[f"schemas/{name}.json"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edged.protocol.asyncapi", description=__doc__)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="DIR", help="write the files under DIR")
    group.add_argument("--check", type=Path, metavar="DIR", help="exit 1 if DIR's files differ")
    args = ap.parse_args(argv)
    generated = files()
    if args.write is not None:
        for rel, text in generated.items():
            path = args.write / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        print(f"wrote {len(generated)} files under {args.write}", file=sys.stderr)
        return 0
    if args.check is not None:
        stale = [
            rel
            for rel, text in generated.items()
            if not (args.check / rel).is_file()
            or (args.check / rel).read_text(encoding="utf-8") != text
        ]
        for rel in stale:
            print(f"{args.check / rel}: out of date (python -m edged.protocol.asyncapi "
                  f"--write {args.check})", file=sys.stderr)  # fmt: skip
        return 1 if stale else 0
    sys.stdout.write(generated["mqtt-api.yaml"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
