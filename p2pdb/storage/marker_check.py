"""Whether an assumed master state is exactly a document's current row: what decides that
:mod:`~p2pdb.storage.replication_rows` may store it as a marker (see there)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import EncryptionError
from .catalog import CollectionInfo
from .documents import Written

__all__ = ["exact_json", "rows_by_id", "same_as_rows"]

_ID_CHUNK = 500  # ids per "IN (...)" lookup, well under SQLite's variable limit


def rows_by_id(
    conn: sqlite3.Connection, info: CollectionInfo, ids: list[str]
) -> dict[str, tuple[str, int, str]]:
    """``(rev, deleted, body)`` of the rows of those ``ids`` that exist."""
    out: dict[str, tuple[str, int, str]] = {}
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        for doc_id, rev, deleted, body in conn.execute(
            f"SELECT id, rev, deleted, body FROM {info.table} WHERE id IN ({marks})", chunk
        ):
            out[doc_id] = (rev, deleted, body)
    return out


def same_as_rows(
    conn: sqlite3.Connection,
    info: CollectionInfo,
    states: Mapping[str, dict[str, Any]],
    written: Mapping[str, Written],
) -> dict[str, str]:
    """The revision of each document whose current row is exactly ``states[id]``: the same
    ``_deleted`` (a bool in the state) and the same JSON bytes of the other fields. Rows in
    ``written`` (this transaction's own) are compared with what was written, others read."""
    codec = info.codec
    out: dict[str, str] = {}
    unread = [doc_id for doc_id in states if doc_id not in written]
    for doc_id in states:
        entry = written.get(doc_id)
        if entry is None:
            continue
        rev, was_deleted, document, raw = entry
        user = dict(states[doc_id])
        flag = user.pop("_deleted", None)
        if type(flag) is not bool or flag is not was_deleted:
            continue
        if raw is not None:
            same = orjson.dumps(user) == raw
        else:
            same = exact_json(document) == exact_json(user)
        if same:
            out[doc_id] = rev
    for doc_id, (rev, deleted, body) in rows_by_id(conn, info, unread).items():
        user = dict(states[doc_id])
        flag = user.pop("_deleted", None)
        if type(flag) is not bool or flag is not bool(deleted):
            continue
        if codec is None:
            same = orjson.dumps(user) == body.encode()
        else:
            try:
                stored = codec.decode(info.name, doc_id, orjson.loads(body))
            except EncryptionError:
                continue
            same = exact_json(stored) == exact_json(user)
        if same:
            out[doc_id] = rev
    return out


def exact_json(value: Any) -> bytes:
    """JSON bytes that tell ``1``, ``1.0`` and ``true`` apart, keys sorted."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
