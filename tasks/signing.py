"""Ed25519 signing keys of the platform, and the two signature formats it writes (docs/security.md).

Two keys, each held by a different part of the platform:

- ``platform``: the platform's services (worker, registry writes, the operator's commands). Signs
  every audit record and the audit head, promotion requests, accepted review decisions, the approval
  policy, and every registry tag (GTO versions, stage moves, audit anchors).
- ``gateway``: the authenticating Prefect server (``tasks/gateway.py``). Signs what only the server
  can know: which authenticated account submitted a review decision, and which one created a flow run.

Keys live in ``PlatformSettings.keys_dir`` (``EVE_KEYS_DIR``; a 0700 directory, private keys 0600,
refused when group- or world-readable, like ssh does). A process that should verify but not sign
gets the public keys only (``<name>.pub``): verification never needs a private key. ``rotate`` makes
a new key and keeps the old public key under ``retired/`` so that everything signed before still
verifies; removing a retired public key revokes what it signed.

Signatures over JSON payloads (:meth:`KeyRing.sign`) cover ``domain + "\\n" + canonical_json(payload)``,
so a signature made for one purpose (a decision) is never valid for another (a request). Git tags
get the SSH signature format git itself uses (``gpg.format=ssh``), written here without ssh-keygen:
``git tag -v`` with an allowed-signers file (:meth:`KeyRing.allowed_signers`) verifies them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel

from tasks.platform import PlatformSettings

KeyName = Literal["platform", "gateway"]
KEY_NAMES: tuple[KeyName, ...] = ("platform", "gateway")
RETIRED_DIR = "retired"
SSH_NAMESPACE = "git"
_SSH_ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_SSH_ARMOR_END = "-----END SSH SIGNATURE-----"


class SigningKeyError(RuntimeError):
    """A private key is missing, withheld from this process, or unsafely readable."""


class Signature(BaseModel):
    """An Ed25519 signature and the key that made it."""

    key: KeyName
    """Which of the platform's keys signed."""

    key_id: str
    """Fingerprint of the public key (``SHA256:...``, as ssh-keygen and ``git tag -v`` print it)."""

    value: str
    """The 64-byte signature, base64."""


class SignedModel(BaseModel):
    """A record whose ``signature`` covers every other field (``signed_content``)."""

    signature: Signature | None = None
    """Made over ``signed_content()`` by one of the platform's keys."""

    def signed_content(self) -> dict:
        return self.model_dump(mode="json", exclude={"signature"})

    def sign_with(self, keyring: "KeyRing", key: KeyName, domain: str) -> None:
        """Sign ``signed_content()`` for ``domain`` with the private key ``key``."""
        self.signature = keyring.sign(key, domain, self.signed_content())

    def verify_with(self, keyring: "KeyRing", key: KeyName, domain: str) -> bool:
        """Whether ``signature`` is a trusted key ``key``'s signature of ``signed_content()`` for ``domain``."""
        return keyring.verify(self.signature, key, domain, self.signed_content())


def canonical_json(payload: Any) -> str:
    """The one serialisation that hashes and signatures are taken over: sorted keys, no whitespace, UTF-8."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">I", blob, offset)
    start = offset + 4
    if start + length > len(blob):
        raise ValueError("truncated SSH string")
    return blob[start : start + length], start + length


def _public_blob(public_key: Ed25519PublicKey) -> bytes:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _ssh_string(b"ssh-ed25519") + _ssh_string(raw)


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """``SHA256:<base64>`` of the SSH public key blob, the fingerprint ssh-keygen shows."""
    digest = hashlib.sha256(_public_blob(public_key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def public_key_line(public_key: Ed25519PublicKey, comment: str) -> str:
    """The key as one OpenSSH line (``ssh-ed25519 AAAA... comment``)."""
    return f"ssh-ed25519 {base64.b64encode(_public_blob(public_key)).decode()} {comment}"


def _parse_public_key_line(line: str) -> Ed25519PublicKey:
    blob = base64.b64decode(line.split()[1])
    kind, offset = _read_ssh_string(blob, 0)
    raw, _ = _read_ssh_string(blob, offset)
    if kind != b"ssh-ed25519":
        raise ValueError(f"not an ssh-ed25519 key: {kind!r}")
    return Ed25519PublicKey.from_public_bytes(raw)


def _signed_bytes(domain: str, payload: Any) -> bytes:
    return f"{domain}\n{canonical_json(payload)}".encode("utf-8")


def _sshsig_signed_data(message: bytes, namespace: str) -> bytes:
    return (
        b"SSHSIG"
        + _ssh_string(namespace.encode())
        + _ssh_string(b"")
        + _ssh_string(b"sha512")
        + _ssh_string(hashlib.sha512(message).digest())
    )


class KeyRing:
    """The platform's keys in ``keys_dir``: private keys where this process holds them, public keys always."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = Path(keys_dir)
        self._trusted_cache: dict[str, tuple[tuple, dict[str, Ed25519PublicKey]]] = {}

    @classmethod
    def default(cls, settings: PlatformSettings | None = None) -> "KeyRing":
        return cls((settings or PlatformSettings.load()).keys_dir)

    def _private_path(self, name: KeyName) -> Path:
        return self.keys_dir / f"{name}.key"

    def public_path(self, name: KeyName) -> Path:
        return self.keys_dir / f"{name}.pub"

    # ------------------------------------------------------------------ private keys

    def ensure(self, name: KeyName) -> str:
        """Create the key ``name`` on a fresh install (no public key yet); returns its fingerprint.

        A public key without its private key means the key is withheld from this process on purpose
        (a verifier's copy): then nothing is created and signing raises.
        """
        if not self.public_path(name).exists():
            self._write_new_key(name)
        return key_fingerprint(self.public_key(name))

    def _write_new_key(self, name: KeyName) -> None:
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        temporary = self._private_path(name).with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
        os.replace(temporary, self._private_path(name))
        public = self.public_path(name).with_suffix(".tmp")
        public.write_text(public_key_line(key.public_key(), f"eve-{name}") + "\n")
        os.replace(public, self.public_path(name))

    def private_key(self, name: KeyName) -> Ed25519PrivateKey:
        """The private key ``name`` (created on a fresh install); raises when withheld or unsafe."""
        self.ensure(name)
        path = self._private_path(name)
        if not path.exists():
            raise SigningKeyError(
                f"this process does not hold the platform's {name!r} signing key ({path} is absent): "
                f"only the platform's services sign; see docs/security.md"
            )
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise SigningKeyError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{path} is not an Ed25519 key")
        return key

    def holds(self, name: KeyName) -> bool:
        """Whether this process can sign with ``name``."""
        try:
            self.private_key(name)
        except SigningKeyError:
            return False
        return True

    def rotate(self, name: KeyName) -> tuple[str | None, str]:
        """A new key for ``name``; the old public key moves to ``retired/`` (still trusted). Returns
        (old fingerprint or None, new fingerprint)."""
        old = None
        if self.public_path(name).exists():
            old_key = self.public_key(name)
            old = key_fingerprint(old_key)
            retired = self.keys_dir / RETIRED_DIR
            retired.mkdir(exist_ok=True, mode=0o700)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            (retired / f"{name}-{stamp}.pub").write_text(self.public_path(name).read_text())
        self._private_path(name).unlink(missing_ok=True)
        self._write_new_key(name)
        return old, key_fingerprint(self.public_key(name))

    # ------------------------------------------------------------------ public keys

    def public_key(self, name: KeyName) -> Ed25519PublicKey:
        return _parse_public_key_line(self.public_path(name).read_text())

    def trusted_keys(self, name: KeyName) -> dict[str, Ed25519PublicKey]:
        """Fingerprint -> public key of the current and every retired key ``name``."""
        paths = [self.public_path(name), *sorted((self.keys_dir / RETIRED_DIR).glob(f"{name}-*.pub"))]
        stamp = tuple((str(path), path.stat().st_mtime_ns) for path in paths if path.exists())
        cached = self._trusted_cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys = {}
        for path_name, _ in stamp:
            key = _parse_public_key_line(Path(path_name).read_text())
            keys[key_fingerprint(key)] = key
        self._trusted_cache[name] = (stamp, keys)
        return keys

    def allowed_signers(self, name: KeyName = "platform") -> str:
        """An ssh allowed-signers file of every trusted key ``name`` (``git -c
        gpg.ssh.allowedSignersFile=... tag -v TAG``)."""
        return "".join(
            f"eve-{name} {public_key_line(key, fingerprint)}\n" for fingerprint, key in self.trusted_keys(name).items()
        )

    # ------------------------------------------------------------------ JSON payloads

    def sign(self, name: KeyName, domain: str, payload: Any) -> Signature:
        """Sign ``payload`` (canonical JSON) for ``domain`` with the private key ``name``."""
        key = self.private_key(name)
        value = key.sign(_signed_bytes(domain, payload))
        return Signature(key=name, key_id=key_fingerprint(key.public_key()), value=base64.b64encode(value).decode())

    def verify(self, signature: Signature | dict | None, name: KeyName, domain: str, payload: Any) -> bool:
        """True when ``signature`` is a valid signature of ``payload`` for ``domain`` by a trusted key ``name``."""
        if signature is None:
            return False
        try:
            signature = Signature.model_validate(signature)
            public = self.trusted_keys(name).get(signature.key_id) if signature.key == name else None
            if public is None:
                return False
            public.verify(base64.b64decode(signature.value), _signed_bytes(domain, payload))
            return True
        except (InvalidSignature, ValueError, TypeError):
            return False

    # ------------------------------------------------------------------ git's SSH signatures

    def ssh_sign(self, message: bytes, name: KeyName = "platform", namespace: str = SSH_NAMESPACE) -> str:
        """An armored SSH signature (PROTOCOL.sshsig) of ``message``, as ``git tag -s`` with
        ``gpg.format=ssh`` appends it to a tag object."""
        key = self.private_key(name)
        signature = key.sign(_sshsig_signed_data(message, namespace))
        blob = (
            b"SSHSIG"
            + struct.pack(">I", 1)
            + _ssh_string(_public_blob(key.public_key()))
            + _ssh_string(namespace.encode())
            + _ssh_string(b"")
            + _ssh_string(b"sha512")
            + _ssh_string(_ssh_string(b"ssh-ed25519") + _ssh_string(signature))
        )
        encoded = base64.b64encode(blob).decode()
        lines = [encoded[i : i + 70] for i in range(0, len(encoded), 70)]
        return "\n".join([_SSH_ARMOR_BEGIN, *lines, _SSH_ARMOR_END]) + "\n"

    def ssh_verify(
        self, armored: str, message: bytes, name: KeyName = "platform", namespace: str = SSH_NAMESPACE
    ) -> str | None:
        """The fingerprint of the trusted key ``name`` that made ``armored`` over ``message``, or None."""
        try:
            body = armored.strip().removeprefix(_SSH_ARMOR_BEGIN).removesuffix(_SSH_ARMOR_END)
            blob = base64.b64decode("".join(body.split()))
            if blob[:6] != b"SSHSIG" or struct.unpack_from(">I", blob, 6)[0] != 1:
                return None
            public_blob, offset = _read_ssh_string(blob, 10)
            signed_namespace, offset = _read_ssh_string(blob, offset)
            _reserved, offset = _read_ssh_string(blob, offset)
            hash_algorithm, offset = _read_ssh_string(blob, offset)
            signature_blob, _ = _read_ssh_string(blob, offset)
            kind, inner = _read_ssh_string(signature_blob, 0)
            raw_signature, _ = _read_ssh_string(signature_blob, inner)
            if signed_namespace != namespace.encode() or hash_algorithm != b"sha512" or kind != b"ssh-ed25519":
                return None
            fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(public_blob).digest()).decode().rstrip("=")
            public = self.trusted_keys(name).get(fingerprint)
            if public is None or _public_blob(public) != public_blob:
                return None
            public.verify(raw_signature, _sshsig_signed_data(message, namespace))
            return fingerprint
        except (InvalidSignature, ValueError, TypeError, struct.error):
            return None


def split_signed_tag(raw_tag_object: str) -> tuple[str, str | None]:
    """(payload, armored SSH signature or None) of a raw git tag object (``git cat-file tag T``)."""
    marker = raw_tag_object.find(_SSH_ARMOR_BEGIN)
    if marker < 0:
        return raw_tag_object, None
    return raw_tag_object[:marker], raw_tag_object[marker:]


__all__ = [
    "KEY_NAMES",
    "KeyName",
    "KeyRing",
    "Signature",
    "SignedModel",
    "SigningKeyError",
    "canonical_json",
    "key_fingerprint",
    "public_key_line",
    "split_signed_tag",
]
