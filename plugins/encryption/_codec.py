"""The storage wrapper: a :class:`~p2pdb.storage.BodyCodec` that encrypts chosen fields.

Only the listed paths change; every other field (the primary key, indexed and queried
fields) is stored as it is. Each value is bound to its collection, field path and document
id, so a ciphertext copied to another document or field does not decrypt.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...errors import EncryptionError, ValidationError
from ._cipher import DecryptError, FieldCipher

__all__ = ["EncryptedFieldsCodec", "associated_data"]

_Field = tuple[str, tuple[str, ...], str, bytes]  # path, parent segments, last segment, ad
_ABSENT: Any = object()  # a field the document does not have (None is a value)


def associated_data(collection: str, path: str, doc_id: str) -> bytes:
    """What a value is bound to. Collection names and paths hold no NUL, so the id, last,
    cannot make two different places look alike."""
    return f"p2e1\x00{collection}\x00{path}\x00{doc_id}".encode()


class EncryptedFieldsCodec:
    """Encrypts the values at ``paths`` (dotted, as in a schema's ``encrypted``) on the way
    to disk and decrypts them on the way back.

    A path whose parent is missing or not an object is left alone (an optional field);
    a value that is present but does not decrypt raises :class:`EncryptionError`
    (``ENCRYPTION_TAMPERED``, or ``ENCRYPTION_KEY_CHANGED`` for another key's value).
    Neither method changes its argument.
    """

    __slots__ = ("_ad", "_fields", "cipher", "paths")

    def __init__(self, cipher: FieldCipher, paths: Iterable[str]) -> None:
        self.cipher = cipher
        self.paths: tuple[str, ...] = tuple(paths)
        split = [tuple(p.split(".")) if isinstance(p, str) else () for p in self.paths]
        for path, parts in zip(self.paths, split, strict=True):
            if not all(parts):
                raise ValidationError(
                    f"{path!r} is not a dotted path of field names.",
                    code="ENCRYPTION_BAD_PATHS",
                )
            for other in split:
                if other != parts and other[: len(parts)] == parts:
                    raise ValidationError(
                        f"{'.'.join(other)!r} lies inside the encrypted field {path!r}; list "
                        "only the outer one (it is encrypted whole).",
                        code="ENCRYPTION_BAD_PATHS",
                    )
        if len(set(split)) != len(split):
            raise ValidationError("A path is listed twice.", code="ENCRYPTION_BAD_PATHS")
        # (path, parent segments, last segment) per field
        self._fields = tuple(
            (path, parts[:-1], parts[-1]) for path, parts in zip(self.paths, split, strict=True)
        )
        self._ad: dict[str, tuple[_Field, ...]] = {}  # the fields of each collection

    def _for(self, collection: str) -> tuple[_Field, ...]:
        """The fields with their associated data up to the document id, for ``collection``."""
        fields = self._ad.get(collection)
        if fields is None:
            fields = tuple(
                (path, parents, leaf, associated_data(collection, path, ""))
                for path, parents, leaf in self._fields
            )
            self._ad[collection] = fields
        return fields

    def encode(self, collection: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``body`` with the listed fields encrypted."""
        out = dict(body)
        encrypt = self.cipher.encrypt
        key = doc_id.encode()
        for _, parents, leaf, prefix in self._ad.get(collection) or self._for(collection):
            parent = _parent(out, parents) if parents else out
            if parent is not None and leaf in parent:
                parent[leaf] = encrypt(parent[leaf], prefix + key)
        return out

    def decode(self, collection: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``body`` with the listed fields decrypted."""
        out = dict(body)
        decrypt = self.cipher.decrypt
        key = doc_id.encode()
        for path, parents, leaf, prefix in self._ad.get(collection) or self._for(collection):
            if parents:
                parent = _parent(out, parents)
                if parent is None:
                    continue
            else:
                parent = out
            value = parent.get(leaf, _ABSENT)
            if value is _ABSENT:
                continue
            try:
                parent[leaf] = decrypt(value, prefix + key)
            except DecryptError as exc:
                raise _decrypt_error(collection, doc_id, path, exc) from None
        return out


def _parent(body: dict[str, Any], parents: tuple[str, ...]) -> dict[str, Any] | None:
    """The object at ``parents`` (each copied on the way down, so the caller's nested
    objects are never changed), or ``None`` if one is missing or not an object."""
    node = body
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            return None
        child = dict(child)
        node[part] = child
        node = child
    return node


def _decrypt_error(collection: str, doc_id: str, path: str, exc: DecryptError) -> EncryptionError:
    where = f"field {path!r} of document {doc_id!r} in collection {collection!r}"
    if exc.unknown_key:
        return EncryptionError(
            f"The {where} was encrypted with a key this database does not hold: the password "
            "was changed (by another process?). Close the database and open it again with "
            "the new password.",
            code="ENCRYPTION_KEY_CHANGED",
            collection=collection,
            document_id=doc_id,
            field=path,
        )
    return EncryptionError(
        f"The {where} does not decrypt ({exc.reason}): it was changed on disk, or copied "
        "from another document or field. p2pdb never returns such a value; restore the "
        "document from a backup or a peer, or overwrite it with upsert().",
        code="ENCRYPTION_TAMPERED",
        collection=collection,
        document_id=doc_id,
        field=path,
    )
