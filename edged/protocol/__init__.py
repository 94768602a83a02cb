"""The wire protocol: one pydantic model per MQTT payload, in and out.

:mod:`edged.protocol.base` (the header, encoding, refusals), :mod:`edged.protocol.payloads`
(what a device publishes), :mod:`edged.protocol.inbound` (what it receives),
:mod:`edged.protocol.channels` (every topic, its direction and payload) and
:mod:`edged.protocol.asyncapi` (the AsyncAPI 3.0 document and the JSON Schemas in ``docs/``,
``python -m edged.protocol.asyncapi --write docs``).
"""
