"""A database's device identity: one long-term Ed25519 key pair, kept in the file.

``Database.start()`` (``create_database``) loads it into ``db.identity``, creating it when
the file has none (in one transaction: two processes opening a new file agree on one key).
The record (info key ``identity``) holds the public key and the private key; when the
database has a password, the private key is sealed with AES-256-GCM under the database's
key (through the encryption plugin's codec), and ``db.change_password`` re-seals it. Peers
prove the key in the WebRTC handshake; users compare :attr:`DeviceIdentity.fingerprint`
out of band.

``cryptography`` is imported only when a key is made, loaded, used or checked, so
``import p2pdb`` never loads it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from .errors import EncryptionError, StorageError, ValidationError
from .schema import Schema

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from .storage import BodyCodec, Storage, WriteTxn

__all__ = [
    "IDENTITY_INFO_KEY",
    "IDENTITY_SEALED_PATHS",
    "DeviceIdentity",
    "IdentitySealer",
    "key_fingerprint",
    "load_identity",
    "parse_public_key",
    "public_key_text",
    "replace_identity",
    "reseal_identity",
    "verify_signature",
]

#: The info record that holds the key pair.
IDENTITY_INFO_KEY: Final = "identity"
#: The fields of the sealed record body that are encrypted (for an encryption codec).
IDENTITY_SEALED_PATHS: Final = ("private_key",)
# what the sealed private key is bound to (the codec's associated data)
_SEALED_COLLECTION = "p2pdb_identity"
_SEALED_ID = "identity"
_SEALED_SCHEMA: Final[dict[str, Any]] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 20},
        "private_key": {"type": "string"},
    },
    "encrypted": list(IDENTITY_SEALED_PATHS),
}
_KEY_BYTES = 32


class IdentitySealer(Protocol):
    """What seals the private key: the database's ``encryption`` (when it has a password)."""

    def codec_for(self, collection: str, schema: Schema) -> BodyCodec:
        """A codec that encrypts the schema's ``encrypted`` fields."""
        ...


def public_key_text(public_key: bytes) -> str:
    """The text form of a raw public key: unpadded URL-safe base64 (43 characters)."""
    return base64.urlsafe_b64encode(public_key).rstrip(b"=").decode("ascii")


def parse_public_key(value: str | bytes) -> bytes:
    """A raw 32-byte Ed25519 public key from its raw bytes, its base64 text (URL-safe or
    standard, padded or not) or its hex text; ``IDENTITY_KEY_INVALID`` otherwise."""
    raw: bytes | None = None
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 2 * _KEY_BYTES:
                raw = bytes.fromhex(text)
            else:
                padded = text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
                raw = base64.urlsafe_b64decode(padded.encode("ascii"))
        except (ValueError, binascii.Error, UnicodeEncodeError):
            raw = None
    if raw is None or len(raw) != _KEY_BYTES:
        raise ValidationError(
            f"Not an Ed25519 public key: {value!r}. Pass the 32 raw bytes, or the text of "
            "identity.public_key_text (base64) or its hex form.",
            code="IDENTITY_KEY_INVALID",
        )
    return raw


def key_fingerprint(public_key: bytes) -> str:
    """A short printable form users compare: the first 160 bits of SHA-256 of the key in
    base32, as 8 groups of 4 (``ABCD-EFGH-...``)."""
    text = base64.b32encode(hashlib.sha256(public_key).digest()[:20]).decode("ascii")
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s Ed25519 signature of ``data``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class DeviceIdentity:
    """A database's key pair. The private key never leaves this object but as signatures.

    - ``public_key``: the 32 raw bytes; ``public_key_text``: the same as base64 (what
      ``trusted_peers`` takes, and what to send to other users);
    - ``fingerprint``: a short form (``key_fingerprint``) to compare by voice or on screen.
    """

    __slots__ = ("_private", "fingerprint", "public_key", "public_key_text")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives import serialization

        self._private = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key_text = public_key_text(self.public_key)
        self.fingerprint = key_fingerprint(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """The Ed25519 signature of ``data`` (64 bytes)."""
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"DeviceIdentity({self.fingerprint})"


async def load_identity(storage: Storage, sealer: IdentitySealer | None) -> DeviceIdentity:
    """The identity stored in the file, created when there is none.

    With a ``sealer`` the private key is stored sealed (one stored in clear by an older
    version is sealed now). A sealed key without a ``sealer`` raises ``IDENTITY_LOCKED``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    text = storage.get_info(IDENTITY_INFO_KEY)
    if text is None:
        fresh = _record(Ed25519PrivateKey.generate(), sealer)
        text = await storage.write(lambda txn: _store(txn, None, fresh))
    elif sealer is not None and not _parse(text).get("sealed"):
        clear = text  # the same key, sealed from now on
        sealed = _record(_private_key(clear, None), sealer)
        text = await storage.write(lambda txn: _store(txn, clear, sealed))
    return DeviceIdentity(_private_key(text, sealer))


async def replace_identity(storage: Storage, sealer: IdentitySealer | None) -> DeviceIdentity:
    """A new key pair, stored in place of the old one (key rotation)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    fresh = _record(Ed25519PrivateKey.generate(), sealer)

    def put(txn: WriteTxn) -> None:
        txn.set_info(IDENTITY_INFO_KEY, fresh)

    await storage.write(put)
    return DeviceIdentity(_private_key(fresh, sealer))


def reseal_identity(text: str, codec: BodyCodec) -> str:
    """The record ``text`` with its private key decrypted and encrypted again by ``codec``
    (the password change's codec: it opens the old key and seals under the new one)."""
    data = _parse(text)
    if not data.get("sealed"):
        return text
    body = {"id": _SEALED_ID, "private_key": data["private_key"]}
    plain = codec.decode(_SEALED_COLLECTION, _SEALED_ID, body)
    data["private_key"] = codec.encode(_SEALED_COLLECTION, _SEALED_ID, plain)["private_key"]
    return orjson.dumps(data).decode()


# -- the record ----------------------------------------------------------------------------


def _record(private_key: Ed25519PrivateKey, sealer: IdentitySealer | None) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = private_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    secret = base64.b64encode(raw).decode("ascii")
    if sealer is not None:
        body = {"id": _SEALED_ID, "private_key": secret}
        secret = _codec(sealer).encode(_SEALED_COLLECTION, _SEALED_ID, body)["private_key"]
    data = {
        "version": 1,
        "algorithm": "Ed25519",
        "public_key": public_key_text(DeviceIdentity(private_key).public_key),
        "sealed": sealer is not None,
        "private_key": secret,
    }
    return orjson.dumps(data).decode()


def _store(txn: WriteTxn, expected: str | None, record: str) -> str:
    """Store ``record`` if the stored one is still ``expected`` (another process may have
    stored or sealed one first: then that one is kept); return the stored record."""
    stored = txn.get_info(IDENTITY_INFO_KEY)
    if stored is not None and stored != expected:
        return stored
    txn.set_info(IDENTITY_INFO_KEY, record)
    return record


def _codec(sealer: IdentitySealer) -> BodyCodec:
    return sealer.codec_for(_SEALED_COLLECTION, Schema(_SEALED_SCHEMA))


def _parse(text: str) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("unknown version")
        if data.get("algorithm") != "Ed25519" or not isinstance(data.get("private_key"), str):
            raise ValueError("not an Ed25519 key record")
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise _bad_record(str(exc)) from exc
    return data


def _private_key(text: str, sealer: IdentitySealer | None) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _parse(text)
    secret: Any = data["private_key"]
    if data.get("sealed"):
        if sealer is None:
            raise EncryptionError(
                "This database's identity key is sealed under its password; open the "
                "database with create_database(path, password=...) to use it.",
                code="IDENTITY_LOCKED",
            )
        body = {"id": _SEALED_ID, "private_key": secret}
        secret = _codec(sealer).decode(_SEALED_COLLECTION, _SEALED_ID, body)["private_key"]
    try:
        key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(secret, validate=True))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise _bad_record(f"unreadable private key ({exc})") from exc
    if public_key_text(DeviceIdentity(key).public_key) != data.get("public_key"):
        raise _bad_record("the private key does not match the public key")
    return key


def _bad_record(reason: str) -> StorageError:
    return StorageError(
        f"The database's identity record is damaged: {reason}. Restore the file from a "
        "backup; deleting the record would give this database a new identity.",
        code="IDENTITY_RECORD_INVALID",
    )
