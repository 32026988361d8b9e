"""Replication state rows: the one module that knows their key format.

A replication of a collection keeps, in ``p2pdb_replication``, rows keyed
``"<collection>:<replication_id>"`` (the same string is the origin of its writes) with the
items ``"up"`` and ``"down"`` (its checkpoints) and ``"doc:<id>"`` (the assumed master state
of a document). Values are JSON. The format is that of every file written so far, so
checkpoints resume across versions.

An assumed master state is stored in one of two forms:

- a **full copy**: the state in wire form (user fields plus ``_deleted``), encoded by the
  collection's codec: a JSON object. Every file written before markers existed holds these,
  and they are still written whenever the state differs from the fork's own row;
- a **marker**: a JSON string, the revision of the fork's own row of that document, meaning
  "exactly the user fields and deleted flag of the row at this revision". About 20 bytes
  instead of a copy of the document: after a pull or an accepted push (the common case)
  the master holds exactly what the fork holds.

Why a marker always means what it meant when written (the invariant: a marker's revision
is the revision of its document's current row, whose content is the assumed state):

1. :meth:`ReplicationRows.set_assumed` writes a marker only after comparing, in the writing
   transaction, the state with the current row: same deleted flag and the same JSON bytes
   of the user fields (orjson; so ``1``, ``1.0`` and ``true`` stay apart), decoded through
   the codec if there is one. Otherwise it writes a full copy.
2. A row changes only through ``WriteTxn.put``, which first calls
   :meth:`ReplicationRows.preserve_assumed`: in the same transaction, every marker of every
   replication of the collection that names a written document's current revision becomes
   the full copy of that row. After the write, no marker names the old revision. Revisions
   only grow in height, so a new row never takes an old marker's revision. (Re-encoding
   bodies keeps revisions and decoded content, so markers stay true.)
3. Reads resolve markers in one SQL statement (one snapshot) joining the document rows.

A marker whose revision is not that of the current row can only come from a writer that
does not know markers (an older p2pdb in another process). It is read as "no assumed state":
the fork then treats the document as never seen on the master and pushes it without an
assumed state, which the master answers with a conflict that is resolved. An older p2pdb
reading a marker would misread it: files written by this version are not for older ones.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from ..errors import EncryptionError
from .base import BodyCodec, Direction
from .catalog import Catalog, CollectionInfo, is_stored, table_name
from .documents import Written
from .marker_check import rows_by_id, same_as_rows

__all__ = ["ReplicationRows", "replication_origin"]

_ID_CHUNK = 500  # items per "IN (...)" lookup, well under SQLite's variable limit
_CONTACT = "contact"  # item: Unix time of the last stored checkpoint
_DOC = "doc:"  # item prefix of an assumed master state
#: Whether ``set_assumed`` stores a state equal to the fork's own row as a marker (off: every
#: state is a full copy, as older versions wrote; markers in a file are read either way).
WRITE_MARKERS = True
_BATCH = 500  # rows re-encoded per statement by recode_assumed
# The keys of one collection's replications: "<collection>:" <= key < "<collection>;",
# found with one index seek each (a skip scan), however many rows each key has.
_KEYS_SQL = """
WITH RECURSIVE k(key) AS (
    SELECT (SELECT min(replication_id) FROM p2pdb_replication
            WHERE replication_id >= :lo AND replication_id < :hi)
    UNION ALL
    SELECT (SELECT min(replication_id) FROM p2pdb_replication
            WHERE replication_id > k.key AND replication_id < :hi)
    FROM k WHERE k.key IS NOT NULL)
SELECT key FROM k WHERE key IS NOT NULL
"""


def replication_origin(collection: str, replication_id: str) -> str:
    """The origin of a replication's writes, which also keys its state rows."""
    return f"{collection}:{replication_id}"


def _checkpoint_item(direction: Direction) -> str:
    return {"up": "up", "down": "down"}[direction]


class ReplicationRows:
    """Reads and writes replication state rows on a given connection; assumed master states
    pass through the codec of their collection (when it is opened with one)."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def _codec(self, collection: str) -> BodyCodec | None:
        info = self._catalog.find(collection)
        return None if info is None else info.codec

    def _read(self, conn: sqlite3.Connection, key: str, items: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for start in range(0, len(items), _ID_CHUNK):
            chunk = items[start : start + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            for item, value in conn.execute(
                "SELECT item, value FROM p2pdb_replication "
                f"WHERE replication_id = ? AND item IN ({marks})",
                (key, *chunk),
            ):
                out[item] = orjson.loads(value)
        return out

    @staticmethod
    def _write(conn: sqlite3.Connection, key: str, values: Iterable[tuple[str, Any]]) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO p2pdb_replication (replication_id, item, value) "
            "VALUES (?, ?, ?)",
            [(key, item, orjson.dumps(value).decode()) for item, value in values],
        )

    # -- the typed API ---------------------------------------------------------------------

    def get_checkpoint(
        self, conn: sqlite3.Connection, collection: str, replication_id: str, direction: Direction
    ) -> Any:
        """A stored checkpoint, or ``None``."""
        item = _checkpoint_item(direction)
        return self._read(conn, replication_origin(collection, replication_id), [item]).get(item)

    def get_assumed(
        self,
        conn: sqlite3.Connection,
        collection: str,
        replication_id: str,
        ids: Sequence[str],
    ) -> dict[str, dict[str, Any]]:
        """Assumed master states by document id, decoded; markers are resolved against the
        document rows in the same statement (see the module docstring)."""
        key = replication_origin(collection, replication_id)
        info = self._catalog.find(collection)
        codec = None if info is None else info.codec
        if info is not None or is_stored(conn, collection):
            # a marker's row, read in the same statement (one snapshot) as the marker
            source = (
                f"p2pdb_replication AS r LEFT JOIN {table_name(collection)} AS d "
                "ON substr(r.value, 1, 1) = '\"' AND d.id = substr(r.item, 5)"
            )
            columns = "r.item, r.value, d.rev, d.deleted, d.body"
        else:
            source, columns = "p2pdb_replication AS r", "r.item, r.value, NULL, NULL, NULL"
        out: dict[str, dict[str, Any]] = {}
        items = [_DOC + i for i in ids]
        for start in range(0, len(items), _ID_CHUNK):
            chunk = items[start : start + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            for item, value, rev, deleted, body in conn.execute(
                f"SELECT {columns} FROM {source} "
                f"WHERE r.replication_id = ? AND r.item IN ({marks})",
                (key, *chunk),
            ):
                doc_id = item[len(_DOC) :]
                state = orjson.loads(value)
                if isinstance(state, str):  # a marker
                    if rev != state:
                        continue  # stale (written over by a writer unaware of markers)
                    state = orjson.loads(body)
                    if codec is not None:
                        try:
                            state = codec.decode(collection, doc_id, state)
                        except EncryptionError:
                            continue  # its row is damaged: unknown, the master's copy repairs it
                    state["_deleted"] = bool(deleted)
                elif codec is not None and isinstance(state, dict):
                    state = codec.decode(collection, doc_id, state)
                out[doc_id] = state
        return out

    def set_checkpoint(
        self,
        conn: sqlite3.Connection,
        collection: str,
        replication_id: str,
        direction: Direction,
        value: Any,
    ) -> None:
        """Store a checkpoint (any JSON value), and now as the replication's last contact
        (a checkpoint moves only when a pull or a push with the master completed)."""
        key = replication_origin(collection, replication_id)
        self._write(conn, key, [(_checkpoint_item(direction), value), (_CONTACT, time.time())])

    def get_last_contact(
        self, conn: sqlite3.Connection, collection: str, replication_id: str
    ) -> float | None:
        """When a checkpoint of the replication was last stored (Unix time), if ever."""
        key = replication_origin(collection, replication_id)
        value = self._read(conn, key, [_CONTACT]).get(_CONTACT)
        return float(value) if isinstance(value, int | float) else None

    def set_assumed(
        self,
        conn: sqlite3.Connection,
        collection: str,
        replication_id: str,
        states: Mapping[str, dict[str, Any]],
        written: Mapping[str, Written] | None = None,
    ) -> None:
        """Store assumed master states by document id: a marker for each state that is
        exactly the document's current row, an encoded full copy for the others.
        ``written``: the rows this transaction wrote (``documents.put``), compared without
        reading them back; the others are read."""
        info = self._catalog.find(collection)
        codec = None if info is None else info.codec
        same = (
            {}
            if info is None or not WRITE_MARKERS
            else same_as_rows(conn, info, states, written or {})
        )
        values: list[tuple[str, Any]] = []
        for doc_id, state in states.items():
            rev = same.get(doc_id)
            if rev is not None:
                values.append((_DOC + doc_id, rev))
            elif codec is not None:
                values.append((_DOC + doc_id, codec.encode(collection, doc_id, state)))
            else:
                values.append((_DOC + doc_id, state))
        self._write(conn, replication_origin(collection, replication_id), values)

    def preserve_assumed(
        self, conn: sqlite3.Connection, info: CollectionInfo, ids: Iterable[str]
    ) -> None:
        """Called before the rows of ``ids`` are overwritten or deleted, in the same
        transaction (by ``WriteTxn.put``, through ``documents.put``, with the ids of the
        rows that exist: a marker can only name an existing row, so inserting new
        documents costs nothing here): every marker (of any replication of the collection)
        naming the current revision of one of them becomes the full copy of that row, so
        that it keeps meaning the state it meant."""
        collection = info.name
        items = [_DOC + i for i in dict.fromkeys(ids)]
        if not items:
            return
        bounds = {"lo": collection + ":", "hi": collection + ";"}
        keys = [k for (k,) in conn.execute(_KEYS_SQL, bounds)]
        if not keys:
            return
        marked: list[tuple[str, str, str]] = []  # (key, doc id, revision)
        for key in keys:
            for start in range(0, len(items), _ID_CHUNK):
                chunk = items[start : start + _ID_CHUNK]
                marks = ",".join("?" * len(chunk))
                for item, value in conn.execute(
                    "SELECT item, value FROM p2pdb_replication WHERE replication_id = ? "
                    f"AND item IN ({marks}) AND substr(value, 1, 1) = '\"'",
                    (key, *chunk),
                ):
                    marked.append((key, item[len(_DOC) :], orjson.loads(value)))
        if not marked:
            return
        rows = rows_by_id(conn, info, list({doc_id for _, doc_id, _ in marked}))
        updates = []
        for key, doc_id, rev in marked:
            row = rows.get(doc_id)
            if row is None or row[0] != rev:
                continue  # already stale: read as "no assumed state" anyway
            _, deleted, body = row
            state = orjson.loads(body)
            if info.codec is not None:
                try:
                    state = info.codec.decode(collection, doc_id, state)
                except EncryptionError:
                    continue  # a damaged row: its marker goes stale, read as unknown
            state["_deleted"] = bool(deleted)
            if info.codec is not None:
                state = info.codec.encode(collection, doc_id, state)
            updates.append((orjson.dumps(state).decode(), key, _DOC + doc_id))
        conn.executemany(
            "UPDATE p2pdb_replication SET value = ? WHERE replication_id = ? AND item = ?",
            updates,
        )

    @staticmethod
    def list_replications(conn: sqlite3.Connection) -> list[tuple[str, str]]:
        """``(collection, replication_id)`` of every replication with stored state, sorted."""
        pairs = []
        for (key,) in conn.execute(
            "SELECT DISTINCT replication_id FROM p2pdb_replication ORDER BY replication_id"
        ):
            # collection names cannot hold ":" (COLLECTION_NAME), replication ids may
            collection, _, replication_id = key.partition(":")
            pairs.append((collection, replication_id))
        return pairs

    def forget(self, conn: sqlite3.Connection, collection: str, replication_id: str) -> None:
        """Delete every row of one replication."""
        key = replication_origin(collection, replication_id)
        conn.execute("DELETE FROM p2pdb_replication WHERE replication_id = ?", (key,))

    def recode_assumed(
        self,
        conn: sqlite3.Connection,
        collection: str,
        transform: Callable[[str, dict[str, Any]], dict[str, Any]],
    ) -> None:
        """Rewrite the stored (encoded) assumed states of every replication of
        ``collection`` as ``transform(doc_id, state)``, in batches."""
        # every key "<collection>:..." sorts between "<collection>:" and "<collection>;"
        after: tuple[str, str] = (collection + ":", "")
        while rows := conn.execute(
            "SELECT replication_id, item, value FROM p2pdb_replication "
            "WHERE (replication_id, item) > (?, ?) AND replication_id < ? "
            "ORDER BY replication_id, item LIMIT ?",
            (*after, collection + ";", _BATCH),
        ).fetchall():
            updates = []
            for key, item, value in rows:
                if item.startswith(_DOC):
                    doc = orjson.loads(value)
                    if isinstance(doc, dict):
                        new = orjson.dumps(transform(item[len(_DOC) :], doc)).decode()
                        updates.append((new, key, item))
            conn.executemany(
                "UPDATE p2pdb_replication SET value = ? WHERE replication_id = ? AND item = ?",
                updates,
            )
            after = (rows[-1][0], rows[-1][1])

    @staticmethod
    def forget_collection(conn: sqlite3.Connection, collection: str) -> None:
        """Delete every row of every replication of ``collection`` (it is being removed)."""
        # every key "<collection>:..." sorts between "<collection>:" and "<collection>;"
        conn.execute(
            "DELETE FROM p2pdb_replication WHERE replication_id >= ? AND replication_id < ?",
            (collection + ":", collection + ";"),
        )

    def dump(
        self, conn: sqlite3.Connection, collection: str, replication_id: str
    ) -> dict[str, Any]:
        """One replication's whole state, decoded: ``{"up", "down", "contact", "assumed":
        {id: state}}`` (a backup of it)."""
        key = replication_origin(collection, replication_id)
        out: dict[str, Any] = {"up": None, "down": None, "contact": None, "assumed": {}}
        markers: list[str] = []
        codec = self._codec(collection)
        for item, value in conn.execute(
            "SELECT item, value FROM p2pdb_replication WHERE replication_id = ? ORDER BY item",
            (key,),
        ):
            decoded = orjson.loads(value)
            if not item.startswith(_DOC):
                out[item] = decoded
                continue
            doc_id = item[len(_DOC) :]
            if isinstance(decoded, str):
                markers.append(doc_id)  # resolved below, against the document rows
                continue
            if codec is not None and isinstance(decoded, dict):
                decoded = codec.decode(collection, doc_id, decoded)
            out["assumed"][doc_id] = decoded
        # a marker's full state (a stale marker means no assumed state, as in get_assumed)
        out["assumed"].update(self.get_assumed(conn, collection, replication_id, markers))
        return out


def up_checkpoints(conn: sqlite3.Connection, collection: str) -> dict[str, int | None]:
    """Every replication of ``collection`` with stored state, by replication id: its
    up-checkpoint (the collection's change sequence up to which it pushed), ``None`` when
    it never stored one (it never pushed, or it is pull-only). The tombstone cleanup reads
    this: a tombstone is passed by a replication once its up-checkpoint reaches the seq."""
    out: dict[str, int | None] = {}
    key = collection + ":"  # every key "<collection>:..." sorts below "<collection>;"
    while row := conn.execute(
        "SELECT replication_id FROM p2pdb_replication WHERE replication_id > ? "
        "AND replication_id < ? ORDER BY replication_id LIMIT 1",
        (key, collection + ";"),
    ).fetchone():
        key = row[0]  # one index probe per replication, however many assumed states it has
        value = conn.execute(
            "SELECT value FROM p2pdb_replication WHERE replication_id = ? AND item = ?",
            (key, _checkpoint_item("up")),
        ).fetchone()
        up = None if value is None else orjson.loads(value[0])
        out[key[len(collection) + 1 :]] = up if type(up) is int else None
    return out


def live_assumed(
    conn: sqlite3.Connection,
    collection: str,
    replication_ids: Iterable[str],
    doc_ids: Sequence[str],
) -> set[str]:
    """Those of ``doc_ids`` whose assumed master state in one of the replications is a live
    document (not a tombstone): that master is not known to have the deletion. The tombstone
    cleanup keeps them. ``_deleted`` is never encoded by a codec, so no decoding is needed."""
    live: set[str] = set()
    for replication_id in replication_ids:
        key = replication_origin(collection, replication_id)
        for start in range(0, len(doc_ids), _ID_CHUNK):
            chunk = [_DOC + i for i in doc_ids[start : start + _ID_CHUNK]]
            marks = ",".join("?" * len(chunk))
            for item, value in conn.execute(
                "SELECT item, value FROM p2pdb_replication "
                f"WHERE replication_id = ? AND item IN ({marks})",
                (key, *chunk),
            ):
                state = orjson.loads(value)
                if isinstance(state, str):
                    # a marker: the assumed state is the row itself (these are tombstones)
                    # or, when stale, none at all; either way not a live document
                    continue
                if not (isinstance(state, dict) and state.get("_deleted") is True):
                    live.add(item[len(_DOC) :])
    return live
