"""Signed rollback commands: signature, device binding, replay protection."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edged.model.bundle import load_public_key
from edged.update.command import CommandError, sign_command, verify_command
from tests.update.bundles import Keys, make_keys


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keys, Keys]:
    d = tmp_path_factory.mktemp("keys")
    return make_keys(d, "trusted"), make_keys(d, "other")


def _load(k: Keys) -> Ed25519PublicKey:
    return load_public_key(k.public_path)


def _cmd(k: Keys, **over: object) -> bytes:
    fields = {"command": "rollback", "device": "cam-1", "version": 1, "issued": 1700000000.25}
    fields.update(over)
    return json.dumps(sign_command(k.private, **fields)).encode()  # type: ignore[arg-type]


def test_a_signed_command_verifies(keys: tuple[Keys, Keys]) -> None:
    trusted, _ = keys
    cmd = verify_command(
        _cmd(trusted), device="cam-1", trusted_keys=[_load(trusted)], last_issued=None
    )
    assert (cmd.command, cmd.version, cmd.issued, cmd.key_id) == (
        "rollback", 1, 1700000000.25, trusted.key_id,
    )  # fmt: skip


def test_refusals(keys: tuple[Keys, Keys]) -> None:
    trusted, other = keys
    tk = [_load(trusted)]

    def refused(
        payload: bytes, last: float | None = None, keys_: list[Ed25519PublicKey] | None = None
    ) -> str:
        with pytest.raises(CommandError) as exc:
            verify_command(
                payload,
                device="cam-1",
                trusted_keys=tk if keys_ is None else keys_,
                last_issued=last,
            )
        return str(exc.value)

    assert "unknown key" in refused(_cmd(other))
    assert "for device 'cam-2'" in refused(_cmd(trusted, device="cam-2"))
    assert "replayed" in refused(_cmd(trusted), last=1700000000.25)
    assert "replayed" in refused(_cmd(trusted), last=1800000000.0)
    assert "no trusted keys" in refused(_cmd(trusted), keys_=[])
    tampered = json.loads(_cmd(trusted))
    tampered["version"] = 3
    assert "bad command signature" in refused(json.dumps(tampered).encode())
    unsigned = json.loads(_cmd(trusted))
    del unsigned["signature"]
    assert "not signed" in refused(json.dumps(unsigned).encode())
    assert "unknown command" in refused(_cmd(trusted, command="format-disk"))
    assert "not valid JSON" in refused(b"{")


def test_newer_commands_pass_the_replay_check(keys: tuple[Keys, Keys]) -> None:
    trusted, _ = keys
    cmd = verify_command(
        _cmd(trusted, issued=1700000001), device="cam-1", trusted_keys=[_load(trusted)],
        last_issued=1700000000.25,
    )  # fmt: skip
    assert cmd.issued == 1700000001
