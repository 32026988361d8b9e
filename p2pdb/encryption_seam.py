"""How the core finds and uses encryption without depending on a plugin: the
:class:`Encryption` and :class:`EncryptionProvider` protocols, the ``p2pdb.encryption``
entry point, and what ``create_database`` does with a password (or without one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from .errors import EncryptionError
from .schema import Schema
from .storage import BodyCodec, SQLiteStorage

__all__ = [
    "ENCRYPTION_ENTRY_POINT_GROUP",
    "Encryption",
    "EncryptionProvider",
    "encryption_opener",
    "encryption_provider",
    "refuse_encrypted",
]

#: The entry-point group in which a package declares what ``create_database(path,
#: password=...)`` uses (an :class:`EncryptionProvider` named ``password``).
ENCRYPTION_ENTRY_POINT_GROUP: Final = "p2pdb.encryption"


class Encryption(Protocol):
    """What a database opened with a password holds (``p2pdb.plugins.encryption`` provides
    it): codecs for collections with ``encrypted`` fields, and the password change."""

    def codec_for(self, collection: str, schema: Schema) -> BodyCodec:
        """The codec of a collection whose schema lists ``encrypted`` fields."""
        ...

    async def change_password(self, old: str, new: str) -> None:
        """Re-encrypt everything under a key derived from ``new``."""
        ...


class EncryptionProvider(Protocol):
    """What opens the :class:`Encryption` of a database (``PasswordEncryption`` of
    ``p2pdb.plugins.encryption``, found through the ``p2pdb.encryption`` entry point)."""

    def check_password(self, password: str) -> None:
        """Raise :class:`~p2pdb.errors.ValidationError` unless ``password`` is usable."""
        ...

    async def open(self, storage: SQLiteStorage, password: str) -> Encryption:
        """Check ``password`` against the open file (setting it up in a new one)."""
        ...


def encryption_opener(
    password: str | None,
) -> Callable[[SQLiteStorage], Awaitable[Encryption | None]]:
    """What sets up encryption once the file is open (the password is checked first, so a
    malformed one never creates a file)."""
    if password is not None:
        provider = encryption_provider()
        provider.check_password(password)
        return lambda storage: provider.open(storage, password)
    return refuse_encrypted


def encryption_provider() -> EncryptionProvider:
    """The :class:`EncryptionProvider` declared as ``password`` in the
    ``p2pdb.encryption`` entry-point group.

    An entry point, not an import: the core must not depend on a plugin (that would be a
    core-to-plugin edge in the import graph and would hard-wire one implementation).
    p2pdb's own ``pyproject.toml`` declares ``p2pdb.plugins.encryption:PasswordEncryption``
    there. It is looked up only when a password is given, so ``import p2pdb`` never loads
    ``cryptography``. Raises :class:`~p2pdb.errors.EncryptionError`
    (``ENCRYPTION_UNAVAILABLE``) when no installed package declares one.
    """
    from importlib.metadata import entry_points  # only with a password: it is slow to load

    for entry in entry_points(group=ENCRYPTION_ENTRY_POINT_GROUP, name="password"):
        provider: EncryptionProvider = entry.load()
        return provider
    raise EncryptionError(
        f"No encryption is installed: no package declares a 'password' entry point in the "
        f"{ENCRYPTION_ENTRY_POINT_GROUP!r} group. Install p2pdb with pip (pip install -e . "
        "in a checkout) so that its encryption plugin is registered.",
        code="ENCRYPTION_UNAVAILABLE",
    )


async def refuse_encrypted(storage: SQLiteStorage) -> None:
    """Refuse a file with encrypted collections opened without a password."""
    encrypted = sorted(n for n, s in storage.stored_schemas().items() if s.get("encrypted"))
    if encrypted:
        raise EncryptionError(
            f"The database {storage.path!r} holds collections with encrypted fields "
            f"({', '.join(encrypted)}); open it with create_database(path, password=...).",
            code="ENCRYPTION_PASSWORD_REQUIRED",
            collections=encrypted,
        )
