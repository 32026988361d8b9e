"""p2pdb: a local-first document database whose collections replicate peer-to-peer.

    import p2pdb
    db = await p2pdb.create_database("app.db")
    todos = await db.add_collection("todos", schema=SCHEMA)
    await todos.insert({"id": "a", "text": "milk"})
"""

import logging

from .backup import ExportOptions, ImportOptions, ImportReport
from .changes import LOCAL, ChangeEvent
from .collection import BulkWriteResult, Collection
from .conflicts import Conflict, ConflictHandler, last_write_wins, master_wins
from .database import Database, create_database
from .document import Document
from .errors import (
    ClosedError,
    ConflictError,
    EncryptionError,
    NotFoundError,
    P2PDBError,
    PeerError,
    QueryError,
    ReplicationError,
    SchemaError,
    StorageError,
    StreamOverflowError,
    ValidationError,
)
from .local import LocalDocument, LocalDocuments
from .migration import MigrationProgress, MigrationStrategy, migration_progress
from .queries import CountQuery, FindOneQuery, FindQuery, Query
from .removal import remove_database
from .storage.base import DamagedDocument

__version__ = "0.1.0"

# A library leaves logging set-up to the application (and keeps Python's "last resort"
# handler from printing our warnings to stderr when none is configured).
logging.getLogger("p2pdb").addHandler(logging.NullHandler())

__all__ = [
    "LOCAL",
    "BulkWriteResult",
    "ChangeEvent",
    "ClosedError",
    "Collection",
    "Conflict",
    "ConflictError",
    "ConflictHandler",
    "CountQuery",
    "DamagedDocument",
    "Database",
    "Document",
    "EncryptionError",
    "ExportOptions",
    "FindOneQuery",
    "FindQuery",
    "ImportOptions",
    "ImportReport",
    "LocalDocument",
    "LocalDocuments",
    "MigrationProgress",
    "MigrationStrategy",
    "NotFoundError",
    "P2PDBError",
    "PeerError",
    "Query",
    "QueryError",
    "ReplicationError",
    "SchemaError",
    "StorageError",
    "StreamOverflowError",
    "ValidationError",
    "create_database",
    "last_write_wins",
    "master_wins",
    "migration_progress",
    "remove_database",
]
