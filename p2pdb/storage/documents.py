"""Documents and their revisions: rows to states and back, the change sequence, writes
with expected revisions, and the content-derived revision token.

A collection's table holds one row per document id (tombstones included): ``id``, ``seq``
(its place in the file's change sequence), ``rev`` (``"<height>-<token>"``), ``lwt`` (the
write time in ms, as RxDB), ``deleted``, ``origin`` (who wrote it) and ``body`` (the stored
JSON, encoded by the collection's codec).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ..causal import state_vector, stored_vector
from ..changes import ChangeEvent, Operation
from ..errors import ConflictError, EncryptionError, NotFoundError, ValidationError
from .base import ABSENT, ANY_REVISION, DamagedDocument, Write
from .catalog import CollectionInfo, table_name

__all__ = [
    "COLUMNS",
    "ID_CHUNK",
    "SEQ_KEY",
    "TAMPERED",
    "WIDTH",
    "DamageLog",
    "SeqClock",
    "Written",
    "check_expected",
    "decode_row",
    "drop_damaged",
    "get_many",
    "get_or_damaged",
    "put",
    "recode_bodies",
    "revision_token",
    "scan_damaged",
    "to_state",
]

log = logging.getLogger("p2pdb.storage")

#: The columns :func:`to_state` reads, in its order (``vv``: the state's causal vector as
#: JSON, or NULL; see ``p2pdb.causal``).
COLUMNS = "id, rev, lwt, deleted, body, vv"
#: How many columns :data:`COLUMNS` names (a query selecting more reads them after these).
WIDTH = 6
#: Ids per ``IN (...)`` lookup, well under SQLite's variable limit.
ID_CHUNK = 500
#: The ``p2pdb_info`` key of the last sequence number written.
SEQ_KEY = "seq"
_LWT_KEY = "lwt"
#: The code of a body that fails authentication: damage confined to its row.
TAMPERED = "ENCRYPTION_TAMPERED"


def revision_token(body: bytes, deleted: bool) -> str:
    """The token part of a revision: content-derived, so two peers writing the same state
    at the same height agree; a fingerprint, not a security hash (CRC-32 + Adler-32: 64
    bits in well under 1 µs)."""
    crc = zlib.crc32(b"\x01" if deleted else b"\x00", zlib.crc32(body))
    return f"{crc:08x}{zlib.adler32(body):08x}"


class SeqClock:
    """The change sequence and write time of one write transaction."""

    __slots__ = ("lwt_centi", "seq", "start_seq", "token")

    def __init__(self, conn: sqlite3.Connection) -> None:
        row = dict(
            conn.execute(
                "SELECT key, value FROM p2pdb_info WHERE key IN (?, ?, ?)",
                (SEQ_KEY, _LWT_KEY, "token"),
            )
        )
        #: The file's token: the writer in the causal vectors of this file's writes.
        self.token = str(row.get("token", ""))
        self.seq = int(row.get(SEQ_KEY, 0))
        # lwt: ms with two decimals, as RxDB, kept as an integer count of 1/100 ms so it is
        # exact and strictly increasing, even if the clock goes back
        self.lwt_centi = round(float(row.get(_LWT_KEY, 0)) * 100)
        self.start_seq = self.seq

    def save(self, conn: sqlite3.Connection) -> tuple[int, int] | None:
        """Store the clock if the transaction wrote; the range of sequence numbers used."""
        if self.seq == self.start_seq:
            return None
        conn.executemany(
            "INSERT OR REPLACE INTO p2pdb_info (key, value) VALUES (?, ?)",
            [(SEQ_KEY, str(self.seq)), (_LWT_KEY, repr(self.lwt_centi / 100))],
        )
        return self.start_seq + 1, self.seq


def to_state(info: CollectionInfo, row: Sequence[Any], lenient: bool = False) -> dict[str, Any]:
    """The state of a row of :data:`COLUMNS`: the decoded body plus ``_deleted``, ``_rev``
    and ``_meta``. ``lenient``: a body that does not decode gives just its id."""
    doc_id, rev, lwt, deleted, body, vv = row
    state: dict[str, Any] = orjson.loads(body)
    if info.codec is not None:
        try:
            state = info.codec.decode(info.name, doc_id, state)
        except EncryptionError:
            if not lenient:
                raise
            state = {info.schema.primary_key: doc_id}  # what is left of a damaged body
    state["_deleted"] = bool(deleted)
    state["_rev"] = rev
    state["_meta"] = {"lwt": lwt} if vv is None else {"lwt": lwt, "vv": orjson.loads(vv)}
    return state


class DamageLog:
    """Reports each damaged row once (a warning on the ``p2pdb.storage`` logger, with the
    typed error: its code, collection, id and field, never a value). Thread-safe: queries
    run on the loop and on the writer thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str, int]] = set()

    def report(self, info: CollectionInfo, row: Sequence[Any], error: EncryptionError) -> None:
        """Log ``error`` for this row unless this very stored body was reported before."""
        key = (info.name, row[0], zlib.crc32(str(row[4]).encode()))
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        log.warning(
            "%s It is left out of queries and replication; collection.damaged() lists it, "
            "collection.repair() fixes it.",
            error,
            extra={"p2pdb_error": error},
        )


def decode_row(
    info: CollectionInfo, row: Sequence[Any], damage: DamageLog
) -> dict[str, Any] | None:
    """The state of a row, or ``None`` (reported to ``damage``) if its body was tampered
    with; any other error (a changed key) is raised."""
    try:
        return to_state(info, row)
    except EncryptionError as exc:
        if exc.code != TAMPERED:
            raise
        damage.report(info, row, exc)
        return None


def get_many(
    conn: sqlite3.Connection,
    info: CollectionInfo,
    ids: list[str],
    lenient: bool = False,
    damage: DamageLog | None = None,
) -> dict[str, dict[str, Any]]:
    """Stored states (tombstones included) of those ``ids`` that exist; a damaged one
    raises (after being reported to ``damage``)."""
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), ID_CHUNK):
        chunk = ids[start : start + ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"SELECT {COLUMNS} FROM {info.table} WHERE id IN ({marks})", chunk):
            try:
                out[row[0]] = to_state(info, row, lenient)
            except EncryptionError as exc:
                if damage is not None and exc.code == TAMPERED:
                    damage.report(info, row, exc)
                raise
    return out


def origin_of(conn: sqlite3.Connection, info: CollectionInfo, doc_id: str) -> str | None:
    """The ``origin`` of the write that stored a document's row (``None``: no row)."""
    row = conn.execute(f"SELECT origin FROM {info.table} WHERE id = ?", (doc_id,)).fetchone()
    return None if row is None else row[0]


def get_or_damaged(
    conn: sqlite3.Connection, info: CollectionInfo, ids: list[str], damage: DamageLog
) -> dict[str, dict[str, Any] | DamagedDocument]:
    """Stored states of those ``ids`` that exist; a damaged one as its
    :class:`DamagedDocument` (reported to ``damage``)."""
    out: dict[str, dict[str, Any] | DamagedDocument] = {}
    for start in range(0, len(ids), ID_CHUNK):
        chunk = ids[start : start + ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"SELECT {COLUMNS} FROM {info.table} WHERE id IN ({marks})", chunk):
            try:
                out[row[0]] = to_state(info, row)
            except EncryptionError as exc:
                if exc.code != TAMPERED:
                    raise
                damage.report(info, row, exc)
                out[row[0]] = DamagedDocument(row[0], row[1], bool(row[3]), exc)
    return out


def scan_damaged(
    conn: sqlite3.Connection, info: CollectionInfo, damage: DamageLog
) -> list[DamagedDocument]:
    """Every row of the collection (tombstones too) whose body fails authentication."""
    found: list[DamagedDocument] = []
    if info.codec is None:
        return found  # nothing is authenticated, so nothing can fail
    for row in conn.execute(f"SELECT {COLUMNS} FROM {info.table} ORDER BY id"):
        try:
            to_state(info, row)
        except EncryptionError as exc:
            if exc.code != TAMPERED:
                raise
            damage.report(info, row, exc)
            found.append(DamagedDocument(row[0], row[1], bool(row[3]), exc))
    return found


def drop_damaged(conn: sqlite3.Connection, info: CollectionInfo, doc_id: str) -> None:
    """Delete the row of ``doc_id`` if, and only if, its body fails authentication."""
    row = conn.execute(f"SELECT {COLUMNS} FROM {info.table} WHERE id = ?", (doc_id,)).fetchone()
    if row is None:
        raise NotFoundError(
            f"Document {doc_id!r} does not exist in {info.name!r}: nothing to repair.",
            code="DOCUMENT_NOT_FOUND",
            id=doc_id,
        )
    try:
        to_state(info, row)
    except EncryptionError as exc:
        if exc.code != TAMPERED:
            raise
        conn.execute(f"DELETE FROM {info.table} WHERE id = ?", (doc_id,))
        return
    raise ValidationError(
        f"Document {doc_id!r} in {info.name!r} is not damaged; repair() without a "
        "replacement removes only damaged rows (use remove() to delete a document).",
        code="DOCUMENT_NOT_DAMAGED",
        id=doc_id,
    )


def check_expected(
    collection: str, doc_id: str, prev: dict[str, Any] | None, expected: Any
) -> ConflictError | None:
    """The error of writing over ``prev`` a write based on ``expected``, or ``None``."""
    if expected is ANY_REVISION or (expected is ABSENT and prev is None):
        return None
    if expected is None:
        if prev is None or prev["_deleted"]:
            return None
        return ConflictError(
            f"A document with id {doc_id!r} already exists in {collection!r}; use upsert() "
            "to overwrite it or patch() to change it.",
            code="DOCUMENT_EXISTS",
            document=prev,
            collection=collection,
            id=doc_id,
        )
    if prev is not None and expected is not ABSENT and prev["_rev"] == expected:
        return None
    return ConflictError(
        f"Document {doc_id!r} in {collection!r} changed since revision {expected!r} was read; "
        "read it again and retry (modify() does this for you).",
        code="CONFLICT",
        document=prev,
        collection=collection,
        id=doc_id,
        expected=expected,
    )


#: What :func:`put` notes per written row: ``(revision, deleted, user fields, their JSON
#: bytes)``; the bytes are those stored, or ``None`` when a codec stored something else.
Written = tuple[str, bool, dict[str, Any], bytes | None]


def put(
    conn: sqlite3.Connection,
    info: CollectionInfo,
    writes: Sequence[Write],
    origin: str,
    clock: SeqClock,
    events: list[ChangeEvent],
    before_overwrite: Callable[[dict[str, str]], None] | None = None,
    written: dict[str, Written] | None = None,
) -> list[dict[str, Any] | ConflictError]:
    """Write documents (see :meth:`~p2pdb.storage.WriteTxn.put`), advancing ``clock`` and
    appending a change event per write to ``events``. ``before_overwrite`` is called with
    the current revision of every existing row among them (if any) before any is written;
    ``written`` gets an entry per written row (the last one per id)."""
    collection = info.name
    pk = info.schema.primary_key
    codec = info.codec
    ids = list({w.document[pk] for w in writes})
    # lenient: a stored state that does not decode can still be overwritten
    current = get_many(conn, info, ids, lenient=True)
    if current and before_overwrite is not None:
        before_overwrite({doc_id: state["_rev"] for doc_id, state in current.items()})
    results: list[dict[str, Any] | ConflictError] = []
    rows: list[tuple[Any, ...]] = []
    seq, lwt_centi = clock.seq, clock.lwt_centi
    now_centi = int(time.time() * 100_000)
    token = clock.token
    # the hot loop of every bulk write: builtins and methods bound once, and the common
    # case (a new document, a local event, no codec) without the general helpers' calls
    dumps, crc32, adler32 = orjson.dumps, zlib.crc32, zlib.adler32
    add_row, add_result, add_event = rows.append, results.append, events.append
    free = (None, ANY_REVISION, ABSENT)  # expectations a missing document always meets
    for w in writes:
        document, deleted = w.document, w.deleted
        doc_id = document[pk]
        prev = current.get(doc_id)
        if prev is not None or w.expected not in free:
            error = check_expected(collection, doc_id, prev, w.expected)
            if error is not None:
                add_result(error)
                continue
        seq += 1
        lwt_centi = now_centi if now_centi > lwt_centi else lwt_centi + 1
        lwt = lwt_centi / 100
        raw = dumps(codec.encode(collection, doc_id, document) if codec else document)
        # revision_token, inline
        crc = crc32(b"\x01" if deleted else b"\x00", crc32(raw))
        if prev is None:
            rev = f"1-{crc:08x}{adler32(raw):08x}"
            if w.new_event and w.vector is None:
                vector: dict[str, int] | None = {token: seq}  # what stored_vector gives
            else:
                vector = stored_vector(None, w.vector, w.new_event, token, seq)
        else:
            height = int(prev["_rev"].split("-", 1)[0]) + 1
            rev = f"{height}-{crc:08x}{adler32(raw):08x}"
            vector = stored_vector(state_vector(prev), w.vector, w.new_event, token, seq)
        if vector is None:
            state = {**document, "_deleted": deleted, "_rev": rev, "_meta": {"lwt": lwt}}
            vv = None
        else:
            meta = {"lwt": lwt, "vv": vector}
            state = {**document, "_deleted": deleted, "_rev": rev, "_meta": meta}
            vv = dumps(vector).decode()
        add_row((doc_id, seq, rev, lwt, int(deleted), origin, raw.decode(), vv))
        if written is not None:
            written[doc_id] = (rev, deleted, document, None if codec else raw)
        current[doc_id] = state
        add_result(state)
        if deleted:
            operation: Operation = "DELETE"
        elif prev is None or prev["_deleted"]:
            operation = "INSERT"
        else:
            operation = "UPDATE"
        add_event(ChangeEvent(operation, collection, doc_id, state, prev, origin, seq))
    clock.seq, clock.lwt_centi = seq, lwt_centi
    if rows:
        conn.executemany(
            f"INSERT INTO {info.table} (id, seq, rev, lwt, deleted, origin, body, vv) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET seq=excluded.seq, "
            "rev=excluded.rev, lwt=excluded.lwt, deleted=excluded.deleted, "
            "origin=excluded.origin, body=excluded.body, vv=excluded.vv",
            rows,
        )
    return results


def recode_bodies(
    conn: sqlite3.Connection,
    collection: str,
    transform: Callable[[str, dict[str, Any]], dict[str, Any]],
    batch: int = ID_CHUNK,
) -> None:
    """Rewrite every stored body of ``collection`` as ``transform(id, body)``, ``batch``
    rows per statement, inside the caller's transaction; revisions and sequence stay."""
    table = table_name(collection)
    select = f"SELECT id, body FROM {table} WHERE id >= ? ORDER BY id LIMIT ?"
    after = ""  # the first batch starts at "" itself (an empty id is a valid id)
    while rows := conn.execute(select, (after, batch)).fetchall():
        conn.executemany(
            f"UPDATE {table} SET body = ? WHERE id = ?",
            [(orjson.dumps(transform(i, orjson.loads(body))).decode(), i) for i, body in rows],
        )
        after = rows[-1][0]
        select = f"SELECT id, body FROM {table} WHERE id > ? ORDER BY id LIMIT ?"
