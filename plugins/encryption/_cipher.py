"""One JSON value in, one authenticated ciphertext string out (AES-256-GCM).

Stored form of a value::

    "p2e1:" + base64( key_id[4] || nonce[12] || AES-GCM(key, nonce, json(value), ad) || tag[16] )

``key_id`` names the key (a hash of it, not secret), so a value written under another key
(the password was changed by another process) is told apart from a damaged one. The
associated data ``ad`` is chosen by the caller (the codec binds collection, field path and
document id): a ciphertext moved to another place fails its tag check.

The base64 goes through ``pybase64`` (SIMD, a dependency) when it is importable, else
through :mod:`binascii`; both read the same text, and both refuse what is not strict
base64 (a character outside the alphabet, bad padding, a length that is not a multiple of
four), which :meth:`FieldCipher.decrypt` reports as a :class:`DecryptError`.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import threading
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...errors import ValidationError

__all__ = ["BASE64", "PREFIX", "DecryptError", "FieldCipher", "b64decode", "b64encode", "key_id"]

#: Every encrypted value starts with this (format version 1).
PREFIX = "p2e1:"
_PREFIX_LEN = len(PREFIX)
_KEY_ID = 4
_NONCE = 12
_TAG = 16
_HEAD = _KEY_ID + _NONCE
_NONCE_BATCH = 256  # nonces drawn from the OS per call (see _Nonces)

try:
    from pybase64 import b64decode as _fast_decode
    from pybase64 import b64encode_as_string as _fast_encode
except ImportError:  # tests/test_encryption_base64.py runs this branch in a child process
    #: Which base64 implementation this process uses: ``"pybase64"`` or ``"binascii"``.
    BASE64 = "binascii"

    def b64decode(text: str) -> bytes:
        """The bytes of strict base64 ``text``; :class:`binascii.Error` if it is not."""
        return binascii.a2b_base64(text, strict_mode=True)

    def b64encode(data: bytes) -> str:
        """``data`` in base64 (standard alphabet, padded, no newline)."""
        return binascii.b2a_base64(data, newline=False).decode("ascii")

else:
    BASE64 = "pybase64"

    def b64decode(text: str) -> bytes:
        """The bytes of strict base64 ``text``; :class:`binascii.Error` if it is not."""
        return _fast_decode(text, None, True)  # altchars, validate

    def b64encode(data: bytes) -> str:
        """``data`` in base64 (standard alphabet, padded, no newline)."""
        return _fast_encode(data)


def key_id(key: bytes) -> bytes:
    """A short public name for ``key``."""
    return hashlib.blake2b(key, digest_size=_KEY_ID, person=b"p2pdb-key-id").digest()


class DecryptError(Exception):
    """A value that does not decrypt; ``unknown_key`` when no key held matches its key id."""

    def __init__(self, reason: str, *, unknown_key: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unknown_key = unknown_key


class _Nonces(threading.local):
    """Random 12-byte nonces, drawn from ``os.urandom`` 256 at a time (one system call
    instead of 256). Per thread, and dropped in a forked child, so no two encryptions ever
    share a draw."""

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0
        self.generation = _generation[0]

    def take(self) -> bytes:
        at = self.at
        if at >= len(self.pool) or self.generation != _generation[0]:
            self.pool = os.urandom(_NONCE * _NONCE_BATCH)
            self.generation = _generation[0]
            at = 0
        self.at = at + _NONCE
        return self.pool[at : at + _NONCE]


_generation = [0]


def _after_fork() -> None:
    _generation[0] += 1


os.register_at_fork(after_in_child=_after_fork)
_nonces = _Nonces()


class FieldCipher:
    """Encrypts JSON values under one current key; decrypts under any key it holds.

    Thread-safe: the key table is replaced, never changed in place, so a reader on another
    thread sees either the old or the new table.
    """

    def __init__(self, key: bytes) -> None:
        aes = _aes(key)
        kid = key_id(key)
        self._keys: dict[bytes, AESGCM] = {kid: aes}
        self._current: tuple[bytes, AESGCM] = (kid, aes)

    @property
    def key_id(self) -> bytes:
        """The id of the key new values are encrypted with."""
        return self._current[0]

    def holds(self, kid: bytes) -> bool:
        """True if values under key id ``kid`` can be decrypted."""
        return kid in self._keys

    def add_key(self, key: bytes) -> bytes:
        """Also decrypt values under ``key``; returns its id."""
        aes, kid = _aes(key), key_id(key)
        self._keys = {**self._keys, kid: aes}
        return kid

    def use_key(self, kid: bytes) -> None:
        """Encrypt new values with the held key ``kid``."""
        self._current = (kid, self._keys[kid])

    def remove_key(self, kid: bytes) -> None:
        """Forget a key that is not the current one."""
        if kid != self._current[0]:
            self._keys = {k: v for k, v in self._keys.items() if k != kid}

    def encrypt(self, value: Any, associated_data: bytes) -> str:
        """The stored form of the JSON ``value``."""
        kid, aes = self._current
        nonce = _nonces.take()
        sealed = aes.encrypt(nonce, orjson.dumps(value), associated_data)
        return PREFIX + b64encode(kid + nonce + sealed)

    def decrypt(self, text: object, associated_data: bytes) -> Any:
        """The JSON value sealed in ``text``; :class:`DecryptError` if it is not authentic."""
        if not isinstance(text, str) or not text.startswith(PREFIX):
            raise DecryptError("the stored value is not an encrypted value")
        try:
            blob = b64decode(text[_PREFIX_LEN:])
        except ValueError:  # binascii.Error is one; so is non-ASCII text for binascii
            raise DecryptError("the stored value is not valid base64") from None
        aes = self._keys.get(blob[:_KEY_ID])
        if aes is None or len(blob) < _HEAD + _TAG:
            raise _unreadable(blob)
        try:
            return orjson.loads(aes.decrypt(blob[_KEY_ID:_HEAD], blob[_HEAD:], associated_data))
        except InvalidTag:
            raise DecryptError("the authentication tag does not match") from None


def _unreadable(blob: bytes) -> DecryptError:
    """Why ``blob`` (too short, or under no key held) is not even worth a tag check."""
    if len(blob) < _HEAD + _TAG:
        return DecryptError("the stored value is too short")
    return DecryptError("the value was encrypted with another key", unknown_key=True)


def _aes(key: bytes) -> AESGCM:
    if not isinstance(key, bytes) or len(key) != 32:
        raise ValidationError(
            "An encryption key must be 32 bytes (AES-256); derive one from a password with "
            "derive_key().",
            code="ENCRYPTION_BAD_KEY",
        )
    return AESGCM(key)
