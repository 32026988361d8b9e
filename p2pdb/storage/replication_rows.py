"""Replication state rows: the one module that knows their key format.

A replication of a collection keeps, in ``p2pdb_replication``, rows keyed
``"<collection>:<replication_id>"`` (the same string is the origin of its writes) with the
items ``"up"`` and ``"down"`` (its checkpoints) and ``"doc:<id>"`` (the assumed master state
of a document, in wire form, encoded by the collection's codec). Values are JSON. The
format is that of every file written so far, so checkpoints resume across versions.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from .base import BodyCodec, Direction
from .catalog import Catalog

__all__ = ["ReplicationRows", "replication_origin"]

_ID_CHUNK = 500  # items per "IN (...)" lookup, well under SQLite's variable limit
_CONTACT = "contact"  # item: Unix time of the last stored checkpoint
_DOC = "doc:"  # item prefix of an assumed master state
_BATCH = 500  # rows re-encoded per statement by recode_assumed


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
        """Assumed master states by document id, decoded."""
        key = replication_origin(collection, replication_id)
        found = self._read(conn, key, [_DOC + i for i in ids])
        codec = self._codec(collection)
        out: dict[str, dict[str, Any]] = {}
        for item, value in found.items():
            doc_id = item[len(_DOC) :]
            if codec is not None and isinstance(value, dict):
                value = codec.decode(collection, doc_id, value)
            out[doc_id] = value
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
    ) -> None:
        """Store assumed master states by document id, encoded."""
        codec = self._codec(collection)
        if codec is None:
            values = [(_DOC + i, s) for i, s in states.items()]
        else:
            values = [(_DOC + i, codec.encode(collection, i, s)) for i, s in states.items()]
        self._write(conn, replication_origin(collection, replication_id), values)

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
            if codec is not None and isinstance(decoded, dict):
                decoded = codec.decode(collection, doc_id, decoded)
            out["assumed"][doc_id] = decoded
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
                if not (isinstance(state, dict) and state.get("_deleted") is True):
                    live.add(item[len(_DOC) :])
    return live
