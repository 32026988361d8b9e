"""Field encryption at rest: AES-256-GCM per value, key from the password by scrypt.

The everyday way in is the ``password`` of :func:`p2pdb.create_database`; collections list
the fields to encrypt in their schema::

    db = await p2pdb.create_database("app.db", password="correct horse battery staple")
    notes = await db.add_collection("notes", schema={..., "encrypted": ["body", "meta.secret"]})
    await db.change_password("correct horse battery staple", "new password")

For a storage of your own, the pieces are here: :func:`derive_key` (scrypt),
:class:`FieldCipher` (one JSON value to one authenticated string) and
:class:`EncryptedFieldsCodec` (the :class:`~p2pdb.storage.BodyCodec` that encrypts chosen
fields of a document body)::

    key = derive_key(password, ScryptParams.generate())   # store the params beside the data
    codec = EncryptedFieldsCodec(FieldCipher(key), ["body", "meta.secret"])
    stored = codec.encode("notes", "n1", {"id": "n1", "body": "my secret"})

See ``docs/encryption.md`` for the threat model and the formats.
"""

from ._cipher import BASE64, PREFIX, FieldCipher, key_id
from ._codec import EncryptedFieldsCodec, associated_data
from ._kdf import MIN_PASSWORD_LENGTH, ScryptParams, derive_key
from ._password import PasswordEncryption

__all__ = [
    "BASE64",
    "MIN_PASSWORD_LENGTH",
    "PREFIX",
    "EncryptedFieldsCodec",
    "FieldCipher",
    "PasswordEncryption",
    "ScryptParams",
    "associated_data",
    "derive_key",
    "key_id",
]
