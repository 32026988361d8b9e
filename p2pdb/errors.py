"""Typed errors raised by p2pdb.

Every error has a stable ``code`` (listed in ``docs/errors.md``) and a ``parameters``
dict with the details a program may act on. The tree::

    P2PDBError
    ├── ValidationError        a document or argument breaks a rule (schema, primary key, ...)
    │   └── QueryError         a malformed selector, unknown operator, bad sort
    ├── SchemaError            a bad schema, or one that differs from the stored one
    ├── ConflictError          a write based on a stale revision, or a duplicate insert
    ├── NotFoundError          a document or collection that does not exist
    ├── ClosedError            the database (or a replication) was closed
    ├── StorageError           SQLite failed underneath
    ├── ReplicationError       a handler or transport failed while replicating
    │   └── PeerError          a remote peer misbehaved, timed out or went away
    ├── EncryptionError        wrong password, tampered ciphertext, forbidden use of a field
    └── StreamOverflowError    an ``async for`` consumer fell too far behind its stream
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ClosedError",
    "ConflictError",
    "EncryptionError",
    "NotFoundError",
    "P2PDBError",
    "PeerError",
    "QueryError",
    "ReplicationError",
    "SchemaError",
    "StorageError",
    "StreamOverflowError",
    "ValidationError",
]


class P2PDBError(Exception):
    """Base class of every p2pdb error.

    ``code`` is stable across releases (programs may branch on it), ``parameters``
    holds the details, and ``str(error)`` says what happened and what to do.
    """

    default_code = "P2PDB"

    def __init__(self, message: str, *, code: str | None = None, **parameters: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code: str = code or self.default_code
        self.parameters: dict[str, Any] = parameters

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form (used on the wire and in logs): name, code and message, plus
        ``ids`` when the error names documents by id (a refused write: the fork then knows
        which rows to leave unsent). Other parameters stay local: they may hold values."""
        body: dict[str, Any] = {
            "name": type(self).__name__,
            "code": self.code,
            "message": self.message,
        }
        ids = self.parameters.get("ids")
        if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
            body["ids"] = ids
        return body


class ValidationError(P2PDBError):
    """A document or argument breaks a rule; nothing was written."""

    default_code = "VALIDATION"


class QueryError(ValidationError):
    """A selector or sort that cannot be evaluated."""

    default_code = "QUERY_INVALID"


class SchemaError(P2PDBError):
    """A schema that is malformed or does not match the stored one."""

    default_code = "SCHEMA_INVALID"


class ConflictError(P2PDBError):
    """A write lost a race: the stored document differs from the one the write was based on.

    ``document`` is the stored state (a dict, ``None`` when absent).
    """

    default_code = "CONFLICT"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        document: Mapping[str, Any] | None = None,
        **parameters: Any,
    ) -> None:
        super().__init__(message, code=code, **parameters)
        self.document = dict(document) if document is not None else None


class NotFoundError(P2PDBError):
    """A document or collection that does not exist."""

    default_code = "NOT_FOUND"


class ClosedError(P2PDBError):
    """The database, collection or replication was closed."""

    default_code = "CLOSED"


class StorageError(P2PDBError):
    """The underlying SQLite storage failed."""

    default_code = "STORAGE"


class ReplicationError(P2PDBError):
    """A replication handler or transport failed."""

    default_code = "REPLICATION"


class PeerError(ReplicationError):
    """A remote peer misbehaved, timed out or disconnected."""

    default_code = "PEER"


class EncryptionError(P2PDBError):
    """Wrong password, tampered ciphertext, or an encrypted field used where it cannot be."""

    default_code = "ENCRYPTION"


class StreamOverflowError(P2PDBError):
    """An ``async for`` consumer fell too far behind its stream."""

    default_code = "STREAM_OVERFLOW"
