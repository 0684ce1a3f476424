"""The platform's signing keys: domain-separated signatures, rotation, keys withheld or left readable."""

from __future__ import annotations

import pytest

from tasks.signing import KeyRing, SigningKeyError


def test_signatures_verify_only_for_their_payload_domain_and_key(tmp_path):
    keyring = KeyRing(tmp_path / "keys")
    signature = keyring.sign("platform", "eve-test/1", {"a": 1})
    assert keyring.verify(signature, "platform", "eve-test/1", {"a": 1})
    assert not keyring.verify(signature, "platform", "eve-test/1", {"a": 2})
    assert not keyring.verify(signature, "platform", "eve-other/1", {"a": 1})
    assert not keyring.verify(signature, "gateway", "eve-test/1", {"a": 1})
    assert not KeyRing(tmp_path / "elsewhere").verify(signature, "platform", "eve-test/1", {"a": 1})
    assert (tmp_path / "keys" / "platform.key").stat().st_mode & 0o777 == 0o600


def test_rotation_keeps_what_the_old_key_signed_verifiable(tmp_path):
    keyring = KeyRing(tmp_path / "keys")
    before = keyring.sign("platform", "eve-test/1", "x")
    armored = keyring.ssh_sign(b"tag payload")
    old, new = keyring.rotate("platform")
    assert old == before.key_id and new != old
    assert keyring.verify(before, "platform", "eve-test/1", "x")
    assert keyring.ssh_verify(armored, b"tag payload") == old
    assert keyring.sign("platform", "eve-test/1", "x").key_id == new
    for retired in (tmp_path / "keys" / "retired").glob("platform-*.pub"):
        retired.unlink()  # revoking the old key revokes what it signed
    assert not keyring.verify(before, "platform", "eve-test/1", "x")


def test_a_withheld_or_readable_private_key_does_not_sign(tmp_path):
    keyring = KeyRing(tmp_path / "keys")
    keyring.ensure("platform")
    (tmp_path / "keys" / "platform.key").chmod(0o644)
    with pytest.raises(SigningKeyError, match="readable by others"):
        keyring.sign("platform", "d", 1)
    (tmp_path / "keys" / "platform.key").unlink()
    with pytest.raises(SigningKeyError, match="does not hold"):
        keyring.sign("platform", "d", 1)
    assert not keyring.holds("platform")
