"""Password to key: scrypt with a random salt, and the parameters stored beside the data."""

from __future__ import annotations

import base64
import os
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ...errors import EncryptionError, ValidationError

__all__ = ["MIN_PASSWORD_LENGTH", "ScryptParams", "check_password", "derive_key"]

#: Shortest password accepted (as RxDB's encryption plugins).
MIN_PASSWORD_LENGTH = 8

_DEFAULT_N = 2**15  # ~60-120 ms on a laptop core: paid once per open, per guess for an attacker
_MIN_N = 2**15
_MAX_MEMORY = 2**30  # scrypt uses 128 * r * n bytes; refuse records asking for more than 1 GiB
_SALT_BYTES = 16
_KEY_BYTES = 32  # AES-256


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """The salt and cost of one key derivation (stored in clear: none of it is secret)."""

    salt: bytes
    n: int = _DEFAULT_N
    r: int = 8
    p: int = 1

    @classmethod
    def generate(cls, like: ScryptParams | None = None) -> ScryptParams:
        """Fresh random salt; the cost of ``like`` when given (never below the default)."""
        params = cls(os.urandom(_SALT_BYTES))
        if like is not None and like.n > params.n:
            params = replace(params, n=like.n, r=like.r, p=like.p)
        return params

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in the database."""
        return {
            "kdf": "scrypt",
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": base64.b64encode(self.salt).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Any) -> ScryptParams:
        """Read stored parameters; refuse costs that are too weak or absurdly large (a
        tampered file must not make the open take all memory)."""
        try:
            if data["kdf"] != "scrypt":
                raise ValueError("unknown kdf")
            n, r, p = data["n"], data["r"], data["p"]
            salt = base64.b64decode(data["salt"], validate=True)
            ok = (
                all(type(v) is int for v in (n, r, p))
                and n >= _MIN_N
                and n & (n - 1) == 0
                and 1 <= r <= 64
                and 1 <= p <= 16
                and 128 * r * n <= _MAX_MEMORY
                and len(salt) >= _SALT_BYTES
            )
            if not ok:
                raise ValueError("parameters out of range")
        except (KeyError, TypeError, ValueError) as exc:
            raise bad_key_record(exc) from exc
        return cls(salt, n, r, p)


def check_password(password: object, what: str = "password") -> str:
    """``password`` if it is a usable password, else :class:`ValidationError`."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(
            f"The {what} must be a string of at least {MIN_PASSWORD_LENGTH} characters; a "
            "passphrase of several words is best.",
            code="ENCRYPTION_BAD_PASSWORD",
        )
    return password


def derive_key(password: str, params: ScryptParams) -> bytes:
    """The 32-byte AES key for ``password`` (Unicode NFC-normalized, UTF-8) and ``params``.

    Slow on purpose (scrypt); call it off the event loop (``asyncio.to_thread``).
    """
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    kdf = Scrypt(salt=params.salt, length=_KEY_BYTES, n=params.n, r=params.r, p=params.p)
    return kdf.derive(secret)


def bad_key_record(cause: Exception) -> EncryptionError:
    """The error for a key record that cannot be read (damaged, or from a newer p2pdb)."""
    return EncryptionError(
        f"The key record of this database is damaged or was written by a newer p2pdb "
        f"({cause}). Restore the file from a backup, or sync a fresh database from a peer.",
        code="ENCRYPTION_BAD_KEY_RECORD",
    )
