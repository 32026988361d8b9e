"""Measurement aids, NOT production code: monkeypatched sketches of the optimizations proposed
in docs/benchmarks.md, so their effect can be measured with the same scripts.

    P2PDB_BENCH_PROTOTYPES=all python benchmarks/bench_core.py
    P2PDB_BENCH_PROTOTYPES=tailer,put python benchmarks/bench_replication.py

Each patch replaces one p2pdb function with a faster version that keeps its observable
behaviour for the benchmarks' workloads (they are not reviewed for every edge case, and they
follow p2pdb as of the commit named in docs/benchmarks.md; if p2pdb changed since, a patch
may no longer apply and raises at import). Names:

- ``tailer``: ForeignWriteTailer.poll reads only the sequence ranges this database did not
  write itself, instead of reading (and JSON-decoding) every own row and dropping it.
- ``put``: WriteTxn.put with less per-document Python: the clock is read once per call, the
  revision hash is taken on the orjson bytes (no str.encode), change events are built
  without the frozen-dataclass ``object.__setattr__`` path, and a plain INSERT is used when
  no written id existed before (no ON CONFLICT upsert).
- ``emit``: Collection._emit / Database._on_commit skip the per-event Subject.on_next loop
  when the stream has no observers.
- ``compile``: queries compile lazily (``find_one(id)`` never compiles) and compiled
  queries are cached per (selector, sort) in an LRU.
- ``residual``: a query with a Python-only part (``$regex``...) and a limit stops reading
  rows once skip+limit matches were found (rows come from SQL already sorted).
- ``live``: a live query matches up to 2,000 events per commit instead of 32 before
  deciding to re-run, and a full ``limit`` result ignores new matches that sort after its
  last document (a small "event-reduce").
- ``reader``: reads sent to a thread (unbounded queries, counts, residual queries) use a
  dedicated reader thread and connection instead of queueing behind writes on the writer
  thread; limited queries whose plan sorts in a temp b-tree go there too instead of
  blocking the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from p2pdb import changes as _changes
from p2pdb import collection as _collection
from p2pdb import database as _database
from p2pdb import live as _live
from p2pdb import queries as _queries
from p2pdb import storage as _storage
from p2pdb import tailer as _tailer

T = TypeVar("T")
ALL = ("tailer", "put", "emit", "compile", "residual", "live", "reader")


# -- tailer ---------------------------------------------------------------------------------


def _foreign_gaps(cursor: int, top: int, own: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (after, upto] ranges within (cursor, top] that no own range covers."""
    gaps = []
    lo = cursor
    for first, last in sorted(own):
        if last <= lo:
            continue
        if first > top:
            break
        if first - 1 > lo:
            gaps.append((lo, min(first - 1, top)))
        lo = max(lo, last)
        if lo >= top:
            break
    if lo < top:
        gaps.append((lo, top))
    return gaps


def _poll(self: Any) -> None:
    storage = self._storage
    version = storage.data_version()
    if version == self._version:
        return
    self._version = version
    top = storage.current_seq()
    if top <= self._cursor:
        return
    with storage._own_lock:
        own = list(storage._own_seqs)
    events = []
    for after, upto in _foreign_gaps(self._cursor, top, own):
        for name, seq, doc_id, state, origin in storage.rows_between(after, upto):
            if storage.is_own_seq(seq):
                continue
            height = _storage.revision_height(state["_rev"])
            operation = "DELETE" if state["_deleted"] else ("INSERT" if height == 1 else "UPDATE")
            events.append(_changes.ChangeEvent(operation, name, doc_id, state, None, origin, seq))
    self._cursor = top
    self._safe = max(self._safe, top)
    self._advance()
    storage.forget_own_seqs(top)
    events.sort(key=lambda e: e.seq)
    if events:
        self._emit(events)


# -- put ------------------------------------------------------------------------------------

_UPSERT_TAIL = (
    " ON CONFLICT(id) DO UPDATE SET seq=excluded.seq, rev=excluded.rev, lwt=excluded.lwt, "
    "deleted=excluded.deleted, origin=excluded.origin, body=excluded.body"
)
_EVENT_FIELDS = ("operation", "collection", "id", "document", "previous", "origin", "seq")


def _fast_event(*values: Any) -> Any:
    event = object.__new__(_changes.ChangeEvent)
    setter = object.__setattr__
    for name, value in zip(_EVENT_FIELDS, values, strict=True):
        setter(event, name, value)
    return event


def _put(self: Any, collection: str, writes: Sequence[Any], origin: str = _changes.LOCAL) -> Any:
    import time

    storage = self._storage
    info = storage._collection(collection)
    pk = info.schema.primary_key
    ids = list({w.document[pk] for w in writes})
    current = storage._get_many(self.conn, collection, ids, lenient=True)
    existed = bool(current)
    results: list[Any] = []
    rows = []
    now = round(time.time() * 1000, 2)
    seq, lwt = self._seq, self._lwt
    codec = info.codec
    dumps, blake = orjson.dumps, hashlib.blake2b
    events = self.events
    check = _storage._check_expected
    for w in writes:
        doc = w.document
        doc_id = doc[pk]
        prev = current.get(doc_id)
        error = check(collection, doc_id, prev, w.expected)
        if error is not None:
            results.append(error)
            continue
        seq += 1
        lwt = now if now > lwt + 0.01 else round(lwt + 0.01, 2)
        raw = dumps(codec.encode(collection, doc_id, doc) if codec else doc)
        digest = blake(raw, digest_size=8)
        digest.update(b"\x01" if w.deleted else b"\x00")
        height = int(prev["_rev"].split("-", 1)[0]) + 1 if prev else 1
        rev = f"{height}-{digest.hexdigest()}"
        state = dict(doc)
        state["_deleted"] = w.deleted
        state["_rev"] = rev
        state["_meta"] = {"lwt": lwt}
        rows.append((doc_id, seq, rev, lwt, int(w.deleted), origin, raw.decode()))
        current[doc_id] = state
        results.append(state)
        if w.deleted:
            operation = "DELETE"
        elif prev is None or prev.get("_deleted"):
            operation = "INSERT"
        else:
            operation = "UPDATE"
        events.append(_fast_event(operation, collection, doc_id, state, prev, origin, seq))
    self._seq, self._lwt = seq, lwt
    if rows:
        # ids new to the table cannot conflict, unless the same id is written twice here
        plain = not existed and len(rows) == len(ids)
        self.conn.executemany(
            f"INSERT INTO {info.table} (id, seq, rev, lwt, deleted, origin, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)" + ("" if plain else _UPSERT_TAIL),
            rows,
        )
    return results


# -- emit -----------------------------------------------------------------------------------


def _collection_emit(self: Any, events: list[Any]) -> None:
    self._batches.on_next(events)
    if self._events.observers:
        for event in events:
            self._events.on_next(event)


def _database_on_commit(self: Any, events: list[Any]) -> None:
    by_collection: dict[str, list[Any]] = {}
    for event in events:
        by_collection.setdefault(event.collection, []).append(event)
    for name, batch in by_collection.items():
        collection = self._collections.get(name)
        if collection is not None:
            collection._emit(batch)
    if self._events.observers:
        for event in events:
            self._events.on_next(event)


# -- compile --------------------------------------------------------------------------------

_CACHE: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_CACHE_SIZE = 256
_compile_query = _queries.compile_query


def _cached_compile(selector: Any, sort: Any, **kwargs: Any) -> Any:
    try:
        key = (
            orjson.dumps(selector),
            orjson.dumps(sort),
            kwargs["primary_key"],
            id(kwargs["field_types"]),
            tuple(kwargs["forbidden_paths"]),
        )
    except TypeError:
        return _compile_query(selector, sort, **kwargs)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    compiled = _compile_query(selector, sort, **kwargs)
    _CACHE[key] = compiled
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return compiled


class _LazyCompiled:
    """A descriptor: ``query.compiled`` compiles on first use."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        compiled = obj.__dict__.get("_compiled")
        if compiled is None:
            schema = obj.collection.schema
            compiled = _cached_compile(
                obj.selector,
                obj.sort,
                primary_key=schema.primary_key,
                field_types=schema.field_types,
                forbidden_paths=schema.encrypted,
            )
            obj.__dict__["_compiled"] = compiled
        return compiled

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["_compiled"] = value


def _lazy_compile_query(selector: Any, sort: Any, **kwargs: Any) -> Any:
    # called by Query.__init__: a find_one(id) selector is compiled only when used
    return None if _LAZY_ID.get() else _cached_compile(selector, sort, **kwargs)


class _Flag(threading.local):
    value = False

    def get(self) -> bool:
        return self.value


_LAZY_ID = _Flag()
_find_one_init = _queries.FindOneQuery.__init__


def _find_one_init_lazy(self: Any, collection: Any, selector: Any = None, sort: Any = None) -> None:
    _LAZY_ID.value = isinstance(selector, str)
    try:
        _find_one_init(self, collection, selector, sort)
    finally:
        _LAZY_ID.value = False


# -- residual -------------------------------------------------------------------------------


async def _query(
    self: Any, collection: str, query: Any, skip: int = 0, limit: int | None = None
) -> list[dict[str, Any]]:
    info = self._collection(collection)
    sql = (
        f"SELECT id, rev, lwt, deleted, body FROM {info.table} "
        f"WHERE deleted = 0 AND ({query.where_sql}) ORDER BY {query.order_sql}"
    )
    params: tuple[Any, ...] = tuple(query.where_params)
    residual = query.residual
    if residual is None and limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += (limit, skip)
    elif residual is None and skip:
        sql += " LIMIT -1 OFFSET ?"
        params += (skip,)

    def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        if residual is None:
            return [self._to_state(info, row) for row in conn.execute(sql, params)]
        wanted = None if limit is None else skip + limit
        matched = []
        for row in conn.execute(sql, params):
            state = self._to_state(info, row)
            if residual(state):
                matched.append(state)
                if wanted is not None and len(matched) >= wanted:
                    break
        return matched[skip:]

    if limit is not None and residual is None and not _sorts_in_temp_tree(self, sql, params):
        return run(self._read_conn())
    return await self._read_in_thread(run)


_PLANS: dict[str, bool] = {}
_SORT_CHECK = [False]


def _sorts_in_temp_tree(storage: Any, sql: str, params: tuple[Any, ...]) -> bool:
    """True when SQLite must sort every match (no index gives the order): such a query
    scans the whole table, so it should not run on the event loop."""
    if not _SORT_CHECK[0]:
        return False
    plan = _PLANS.get(sql)
    if plan is None:
        rows = storage._read_conn().execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        plan = _PLANS[sql] = any("TEMP B-TREE FOR ORDER BY" in r[-1] for r in rows)
    return plan


# -- reader ---------------------------------------------------------------------------------

_READERS: dict[int, tuple[ThreadPoolExecutor, list[sqlite3.Connection]]] = {}


async def _read_in_thread(self: Any, fn: Callable[[sqlite3.Connection], T]) -> T:
    self._read_conn()  # raises ClosedError when closed
    entry = _READERS.get(id(self))
    if entry is None:
        file = self._reader.execute("PRAGMA database_list").fetchone()[2]
        executor = ThreadPoolExecutor(1, thread_name_prefix="p2pdb-reader")
        conns: list[sqlite3.Connection] = []

        def connect() -> None:
            conn = sqlite3.connect(file, isolation_level=None)
            conn.execute("PRAGMA query_only = 1")
            conns.append(conn)

        executor.submit(connect).result()
        entry = _READERS[id(self)] = (executor, conns)
    executor, conns = entry
    return await asyncio.get_running_loop().run_in_executor(executor, fn, conns[0])


_close = _storage.SQLiteStorage.close


async def _close_with_reader(self: Any) -> None:
    entry = _READERS.pop(id(self), None)
    if entry is not None:
        executor, conns = entry
        executor.submit(conns[0].close).result()
        executor.shutdown()
    await _close(self)


# -- live -----------------------------------------------------------------------------------


def _relevant(self: Any, events: list[Any]) -> bool:
    if len(events) > _live._MATCH_LIMIT:
        return True
    query = self._query
    compiled = query.compiled
    matches = compiled.matches
    last_key = getattr(self, "_last_key", None)
    for event in events:
        if event.id in self._ids:
            return True
        document = event.document
        if not document["_deleted"] and matches(document):
            if last_key is None or compiled.sort_key(document) < last_key:
                return True
        previous = event.previous
        if previous is None:
            if event.operation != "INSERT":
                return True
        elif not previous["_deleted"] and matches(previous) and last_key is None:
            return True
    return False


_run_live = _live._LiveQuery._run


async def _run(self: Any) -> None:
    observer = self._observer
    query = self._query
    full_limit = isinstance(query, _queries.FindQuery) and query.limit and not query.skip

    class _Spy:
        def on_next(_, result: Any) -> None:
            self._last_key = None
            if full_limit and isinstance(result, list) and len(result) == query.limit:
                self._last_key = query.compiled.sort_key(result[-1]._state)
            observer.on_next(result)

        def on_error(_, error: Exception) -> None:
            observer.on_error(error)

        def on_completed(_) -> None:
            observer.on_completed()

    self._observer = _Spy()
    await _run_live(self)


# -- apply ----------------------------------------------------------------------------------


_TARGETS: list[tuple[Any, str]] = [
    (_tailer.ForeignWriteTailer, "poll"),
    (_storage.WriteTxn, "put"),
    (_collection.Collection, "_emit"),
    (_database.Database, "_on_commit"),
    (_queries, "compile_query"),
    (_queries.Query, "compiled"),
    (_queries.FindOneQuery, "__init__"),
    (_storage.SQLiteStorage, "query"),
    (_live, "_MATCH_LIMIT"),
    (_live._LiveQuery, "_relevant"),
    (_live._LiveQuery, "_run"),
    (_storage.SQLiteStorage, "_read_in_thread"),
    (_storage.SQLiteStorage, "close"),
]
_MISSING = object()
_ORIGINALS = [(obj, attr, obj.__dict__.get(attr, _MISSING)) for obj, attr in _TARGETS]


def restore() -> None:
    """Undo every patch (for A/B comparisons inside one process)."""
    for obj, attr, value in _ORIGINALS:
        if value is _MISSING:
            if attr in obj.__dict__:
                delattr(obj, attr)
        else:
            setattr(obj, attr, value)
    _SORT_CHECK[0] = False
    _CACHE.clear()
    _PLANS.clear()


def apply(names: Sequence[str]) -> list[str]:
    """Apply the named patches (on top of any applied before); returns their names."""
    if "all" in names:
        names = ALL
    applied = []
    for name in names:
        if name == "tailer":
            _tailer.ForeignWriteTailer.poll = _poll
        elif name == "put":
            _storage.WriteTxn.put = _put
        elif name == "emit":
            _collection.Collection._emit = _collection_emit
            _database.Database._on_commit = _database_on_commit
        elif name == "compile":
            _queries.compile_query = _lazy_compile_query
            _queries.Query.compiled = _LazyCompiled()
            _queries.FindOneQuery.__init__ = _find_one_init_lazy
        elif name == "residual":
            _storage.SQLiteStorage.query = _query
        elif name == "live":
            _live._MATCH_LIMIT = 2000
            _live._LiveQuery._relevant = _relevant
            _live._LiveQuery._run = _run
        elif name == "reader":
            _storage.SQLiteStorage.query = _query
            _SORT_CHECK[0] = True
            _storage.SQLiteStorage._read_in_thread = _read_in_thread
            _storage.SQLiteStorage.close = _close_with_reader
        else:
            raise ValueError(f"unknown prototype {name!r}; known: {', '.join(ALL)}")
        applied.append(name)
    return applied


def apply_from_env() -> list[str]:
    names = [n for n in os.environ.get("P2PDB_BENCH_PROTOTYPES", "").split(",") if n]
    return apply(names) if names else []
