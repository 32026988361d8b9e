"""Storage: what the core needs from it (:mod:`p2pdb.storage.base`) and the SQLite
implementation, one concern per module:

- ``base``: the :class:`Storage` and :class:`WriteTxn` protocols, :class:`Write`,
  :data:`ANY_REVISION`, :data:`ABSENT`, :class:`BodyCodec`;
- ``connection``: the writer thread and the reader connection;
- ``catalog``: tables, indexes, the collection catalog and info records;
- ``documents``: rows and states, revisions, the change sequence, writes;
- ``queries``: compiled queries, counts, changes since a sequence;
- ``replication_rows``: replication state rows (the only module knowing their keys);
- ``own_writes``: what the tailer needs to tell its own writes from others';
- ``txn``: the write transaction; ``sqlite``: :class:`SQLiteStorage`, tying them together.
"""

from .base import (
    ABSENT,
    ANY_REVISION,
    SMALL_WRITE_ROWS,
    BodyCodec,
    Direction,
    Storage,
    Write,
    WriteCheck,
    WriteTxn,
    revision_height,
)
from .catalog import table_name
from .replication_rows import replication_origin
from .sqlite import SQLiteStorage
from .txn import SQLiteWriteTxn

__all__ = [
    "ABSENT",
    "ANY_REVISION",
    "SMALL_WRITE_ROWS",
    "BodyCodec",
    "Direction",
    "SQLiteStorage",
    "SQLiteWriteTxn",
    "Storage",
    "Write",
    "WriteCheck",
    "WriteTxn",
    "replication_origin",
    "revision_height",
    "table_name",
]
