"""A database's password: the key record (a storage info record), opening, changing it.

The record (key ``encryption``) holds the scrypt parameters and salt, the id of the key,
and a check value: a constant sealed with AES-GCM under the key, which only the right
password opens. Nothing in it is secret.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...errors import EncryptionError
from ...identity import IDENTITY_INFO_KEY, IDENTITY_SEALED_PATHS, reseal_identity
from ...storage import Storage, WriteTxn
from ._cipher import FieldCipher, key_id
from ._codec import EncryptedFieldsCodec
from ._kdf import ScryptParams, bad_key_record, check_password, derive_key

if TYPE_CHECKING:
    from ...schema import Schema

__all__ = ["INFO_KEY", "PasswordEncryption"]

#: The info record key of the key record.
INFO_KEY = "encryption"
_CHECK_PLAIN = b"p2pdb password check v1"
_CHECK_AD = b"p2pdb-key-record"


class _Record:
    """The parsed key record."""

    def __init__(self, params: ScryptParams, kid: bytes, check: bytes, text: str) -> None:
        self.params, self.key_id, self.check, self.text = params, kid, check, text

    @classmethod
    def create(cls, key: bytes, params: ScryptParams) -> _Record:
        nonce = os.urandom(12)
        check = nonce + AESGCM(key).encrypt(nonce, _CHECK_PLAIN, _CHECK_AD)
        data = {
            "version": 1,
            **params.to_json(),
            "cipher": "AES-256-GCM",
            "key_id": key_id(key).hex(),
            "check": base64.b64encode(check).decode("ascii"),
        }
        return cls(params, key_id(key), check, orjson.dumps(data).decode())

    @classmethod
    def parse(cls, text: str) -> _Record:
        try:
            data: Any = orjson.loads(text)
            if data["version"] != 1 or data["cipher"] != "AES-256-GCM":
                raise ValueError("unknown version")
            kid = bytes.fromhex(data["key_id"])
            check = base64.b64decode(data["check"], validate=True)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise bad_key_record(exc) from exc
        return cls(ScryptParams.from_json(data), kid, check, text)

    def opens_with(self, key: bytes) -> bool:
        """True if ``key`` is the key this record was made with."""
        if key_id(key) != self.key_id or len(self.check) < 12:
            return False
        try:
            AESGCM(key).decrypt(self.check[:12], self.check[12:], _CHECK_AD)
        except InvalidTag:
            return False
        return True


def _wrong_password(what: str) -> EncryptionError:
    return EncryptionError(
        f"Wrong {what}: it does not open this database's key. Nothing was read or changed; "
        "try again with the right password.",
        code="ENCRYPTION_WRONG_PASSWORD",
    )


def _key_changed() -> EncryptionError:
    return EncryptionError(
        "The database's password was changed by another process (or another Database "
        "object) after this one opened it. Close it and open it again with the new password.",
        code="ENCRYPTION_KEY_CHANGED",
    )


def _read_record(txn: WriteTxn) -> _Record | None:
    text = txn.get_info(INFO_KEY)
    return None if text is None else _Record.parse(text)


class PasswordEncryption:
    """The encryption of one open database: what ``create_database(path, password=...)``
    sets up. Hands each collection with ``encrypted`` fields a codec sharing one key, and
    changes the password.
    """

    #: Raise :class:`~p2pdb.errors.ValidationError` (``ENCRYPTION_BAD_PASSWORD``) unless
    #: the argument is a usable password.
    check_password = staticmethod(check_password)

    def __init__(self, storage: Storage, cipher: FieldCipher, record: _Record) -> None:
        self.storage = storage
        self.cipher = cipher
        self._seen = record.text  # the record text the last write transaction found
        self._changing = asyncio.Lock()
        storage.write_checks.append(self._check_key)

    @classmethod
    async def open(cls, storage: Storage, password: str) -> PasswordEncryption:
        """Derive the key of ``password`` and check it against the stored record (creating
        the record in a database that holds nothing yet)."""
        check_password(password)
        text = storage.get_info(INFO_KEY)
        if text is None:
            if storage.stored_schemas():
                raise _not_enabled()
            params = ScryptParams.generate()
            key = await asyncio.to_thread(derive_key, password, params)
            record = _Record.create(key, params)
            created = await storage.write(lambda txn: _create_record(txn, record))
            if created:
                return cls(storage, FieldCipher(key), record)
            text = storage.get_info(INFO_KEY)  # another process created it first: use that
            assert text is not None
        record = _Record.parse(text)
        key = await asyncio.to_thread(derive_key, password, record.params)
        if not record.opens_with(key):
            raise _wrong_password("password")
        return cls(storage, FieldCipher(key), record)

    def codec_for(self, collection: str, schema: Schema) -> EncryptedFieldsCodec:
        """The codec of a collection whose schema lists ``encrypted`` fields."""
        return EncryptedFieldsCodec(self.cipher, schema.encrypted)

    def _check_key(self, txn: WriteTxn) -> None:
        """Run at the start of every write transaction (in the writer thread): encrypt with
        the key the file's record names, and refuse to write if this object does not hold it
        (another process changed the password), so no value is ever written under a key the
        record does not name."""
        text = txn.get_info(INFO_KEY)
        if text == self._seen:
            return
        if text is None:
            raise _key_changed()
        kid = _Record.parse(text).key_id
        if not self.cipher.holds(kid):
            raise _key_changed()
        self.cipher.use_key(kid)
        self._seen = text

    async def change_password(self, old: str, new: str) -> None:
        """Re-encrypt every encrypted value under a key derived from ``new`` with a new salt,
        in one transaction: a crash leaves either the old password working or the new one,
        never a mix. A wrong ``old`` raises ``ENCRYPTION_WRONG_PASSWORD`` and changes nothing.
        """
        check_password(old, "old password")
        check_password(new, "new password")
        async with self._changing:
            await self._change_password(old, new)

    async def _change_password(self, old: str, new: str) -> None:
        text = self.storage.get_info(INFO_KEY)  # the file's record is the truth
        record = None if text is None else _Record.parse(text)
        if record is None or not self.cipher.holds(record.key_id):
            raise _key_changed()
        old_key = await asyncio.to_thread(derive_key, old, record.params)
        if not record.opens_with(old_key):
            raise _wrong_password("old password")
        new_params = ScryptParams.generate(like=record.params)
        new_key = await asyncio.to_thread(derive_key, new, new_params)
        new_record = _Record.create(new_key, new_params)
        rekey = FieldCipher(new_key)  # encrypts with the new key, decrypts with both
        rekey.add_key(old_key)
        # Readers on other threads may see the new values as soon as the writer commits,
        # before this coroutine resumes: hold the new key from now on. The record decides
        # which key encrypts (see _check_key), so holding it early is harmless.
        self.cipher.add_key(new_key)
        await self.storage.write(lambda txn: _reencrypt(txn, record, new_record, rekey))
        self.cipher.use_key(new_record.key_id)
        self.cipher.remove_key(record.key_id)


def _not_enabled() -> EncryptionError:
    return EncryptionError(
        "This database was created without a password, so nothing in it is encrypted. Open "
        "it without password=; to encrypt data, create a new database with a password and "
        "copy or replicate the documents into it.",
        code="ENCRYPTION_NOT_ENABLED",
    )


def _create_record(txn: WriteTxn, record: _Record) -> bool:
    """Store ``record`` unless another process stored one first; refuse a database that got
    collections (created without a password) meanwhile."""
    if txn.get_info(INFO_KEY) is not None:
        return False
    if txn.stored_schemas():
        raise _not_enabled()
    txn.set_info(INFO_KEY, record.text)
    return True


def _reencrypt(txn: WriteTxn, old: _Record, new: _Record, rekey: FieldCipher) -> None:
    """In the writer's transaction: every encrypted value of every stored collection (not
    only those opened now), live documents, tombstones and the assumed master states of
    replications, then the new record."""
    current = _read_record(txn)
    if current is None or current.text != old.text:
        raise _key_changed()
    for name, schema in txn.stored_schemas().items():
        paths = schema.get("encrypted") or []
        if paths:
            txn.recode_collection(name, _recoder(EncryptedFieldsCodec(rekey, paths), name))
    identity = txn.get_info(IDENTITY_INFO_KEY)  # the device key is sealed under it too
    if identity is not None:
        codec = EncryptedFieldsCodec(rekey, IDENTITY_SEALED_PATHS)
        txn.set_info(IDENTITY_INFO_KEY, reseal_identity(identity, codec))
    txn.set_info(INFO_KEY, new.text)


def _recoder(
    codec: EncryptedFieldsCodec, collection: str
) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """A stored body decrypted (under either key) and encrypted again (under the new one)."""

    def recode(doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return codec.encode(collection, doc_id, codec.decode(collection, doc_id, body))

    return recode
