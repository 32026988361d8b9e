"""Compact assumed master states: a marker ("same as the fork's row at revision R") instead
of a full copy when the state is exactly the fork's row, and the invariant that keeps a
marker meaning what it meant (see p2pdb/storage/replication_rows.py).

The randomized tests compare every read against a reference that keeps full copies: a
Python dict at the storage level, and a shadow of every stored state during real
replications.
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from replication_helpers import wait_equal
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.conflicts import Conflict, FunctionConflictHandler
from p2pdb.errors import ConflictError, NotFoundError
from p2pdb.replication import collection_handler, downstream, replicate
from p2pdb.schema import Schema
from p2pdb.storage import ANY_REVISION, SQLiteStorage, Write, WriteTxn, replication_rows
from p2pdb.storage.replication_rows import ReplicationRows

SCHEMA = Schema(TODO_SCHEMA)
SEED = int(os.environ.get("P2PDB_SEED", "0")) or None
DOC_ROWS = "FROM p2pdb_replication WHERE item LIKE 'doc:%'"


class Shouting:
    """A codec that changes ``text`` in storage, so encoded and decoded forms differ."""

    def encode(self, collection: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body.get("text"), str):
            return body
        return {**body, "text": "ENC:" + body["text"][::-1]}

    def decode(self, collection: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        text = body.get("text")
        if not isinstance(text, str) or not text.startswith("ENC:"):
            return body
        return {**body, "text": text[4:][::-1]}


def exact(value: Any) -> bytes:
    """JSON bytes that tell 1, 1.0 and true apart (dict equality does not)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def raw(path: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        with conn:
            return list(conn.execute(sql, params))
    finally:
        conn.close()


def wire(state: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in state.items() if k not in ("_rev", "_meta")}
    out["_deleted"] = bool(out.get("_deleted", False))
    return out


# -- the stored forms ------------------------------------------------------------------------


@pytest.fixture
def markers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Markers switched on (the default; set here so these tests never depend on it)."""
    monkeypatch.setattr(replication_rows, "WRITE_MARKERS", True)


@pytest.mark.usefixtures("markers")
async def test_a_pulled_document_is_stored_as_a_marker_and_reads_back(db_path: str) -> None:
    async with (
        p2pdb.create_database(db_path) as fork_db,
        p2pdb.create_database(":memory:") as master_db,
    ):
        fork = await fork_db.add_collection("todos", schema=TODO_SCHEMA)
        master = await master_db.add_collection("todos", schema=TODO_SCHEMA)
        await master.insert({"id": "a", "text": "from master", "n": 1})
        await fork.insert({"id": "b", "text": "from fork"})
        async with replicate(fork, collection_handler(master), "peer", live=False) as state:
            await state.wait_for_initial_replication()
        rows = dict(raw(db_path, f"SELECT item, value {DOC_ROWS}"))
        revs = dict(raw(db_path, "SELECT id, rev FROM col_todos"))
        # pulled (a) and pushed (b): the master holds exactly the fork's rows
        assert rows == {"doc:a": f'"{revs["a"]}"', "doc:b": f'"{revs["b"]}"'}
        assumed = fork_db.storage.get_assumed("todos", "peer", ["a", "b", "c"])
        assert assumed == {
            "a": {"id": "a", "text": "from master", "n": 1, "_deleted": False},
            "b": {"id": "b", "text": "from fork", "_deleted": False},
        }
        # a local change keeps the old state as a full copy, in the same transaction
        await fork.upsert({"id": "a", "text": "changed here", "n": 2})
        value = raw(db_path, "SELECT value FROM p2pdb_replication WHERE item = 'doc:a'")[0][0]
        assert orjson.loads(value) == {"id": "a", "text": "from master", "n": 1, "_deleted": False}
        assert fork_db.storage.get_assumed("todos", "peer", ["a"])["a"]["text"] == "from master"
        # and the push that follows sends it against the right state
        async with replicate(fork, collection_handler(master), "peer", live=False) as state:
            await state.wait_for_in_sync()
        pushed = await master.find_one("a").exec()
        assert pushed is not None and pushed.to_dict()["text"] == "changed here"
        assert fork_db.storage.get_assumed("todos", "peer", ["a"])["a"]["text"] == "changed here"


@pytest.mark.usefixtures("markers")
async def test_a_marker_left_stale_by_an_older_writer_reads_as_unknown(db_path: str) -> None:
    async with await SQLiteStorage.open(db_path) as storage:
        await storage.ensure_collection("todos", SCHEMA)

        def pull(txn: WriteTxn) -> None:
            (state,) = txn.put("todos", [Write({"id": "a", "text": "x"})], "todos:peer")
            assert isinstance(state, dict)
            txn.set_assumed("todos", "peer", {"a": wire(state)})

        await storage.write(pull)
        assert storage.get_assumed("todos", "peer", ["a"]) == {
            "a": {"id": "a", "text": "x", "_deleted": False}
        }
    # a writer that does not know markers changes the row without keeping the old state
    raw(db_path, 'UPDATE col_todos SET rev = \'2-00\', body = \'{"id":"a","text":"y"}\'')
    async with await SQLiteStorage.open(db_path) as storage:
        await storage.ensure_collection("todos", SCHEMA)
        assert storage.get_assumed("todos", "peer", ["a"]) == {}
        assert await storage.write(lambda txn: txn.get_assumed("todos", "peer", ["a"])) == {}


@pytest.mark.usefixtures("markers")
async def test_states_that_differ_in_json_types_or_flags_are_full_copies(db_path: str) -> None:
    async with await SQLiteStorage.open(db_path) as storage:
        await storage.ensure_collection("todos", SCHEMA)
        docs = [{"id": "i", "text": "t", "n": 1}, {"id": "d", "text": "t"}]

        def fill(txn: WriteTxn) -> None:
            txn.put("todos", [Write(d) for d in docs])
            txn.set_assumed(
                "todos",
                "peer",
                {
                    "i": {"id": "i", "text": "t", "n": 1.0, "_deleted": False},  # float
                    "d": {"id": "d", "text": "t", "_deleted": True},  # deleted flag
                },
            )

        await storage.write(fill)
        values = dict(raw(db_path, "SELECT item, value FROM p2pdb_replication"))
        assert all(v.startswith("{") for v in values.values())
        got = storage.get_assumed("todos", "peer", ["i", "d"])
        assert exact(got["i"]["n"]) == b"1.0" and got["d"]["_deleted"] is True


@pytest.mark.usefixtures("markers")
async def test_only_overwritten_rows_look_markers_up_and_states_compare_with_the_txn(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[list[str]] = []
    real = ReplicationRows.preserve_assumed

    def preserve(rows: ReplicationRows, conn: Any, info: Any, ids: Any) -> None:
        looked_up.append(sorted(ids))
        real(rows, conn, info, ids)

    monkeypatch.setattr(ReplicationRows, "preserve_assumed", preserve)
    async with await SQLiteStorage.open(db_path) as storage:
        await storage.ensure_collection("todos", SCHEMA)

        def pull(txn: WriteTxn) -> None:
            first, second = (Write({"id": i, "text": "v1"}) for i in ("a", "b"))
            txn.put("todos", [first, second], "todos:peer")
            # "a" written twice: only its last state may become a marker
            txn.put("todos", [Write({"id": "a", "text": "v2"})], "todos:peer")
            txn.set_assumed(
                "todos",
                "peer",
                {
                    "a": {"id": "a", "text": "v1", "_deleted": False},  # no longer the row
                    "b": {"id": "b", "text": "v1", "_deleted": False},  # the row: a marker
                },
            )

        await storage.write(pull)
        assert looked_up == [["a"]]  # the second put overwrote "a"; inserts looked nothing up
        values = dict(raw(db_path, f"SELECT item, value {DOC_ROWS}"))
        assert values["doc:a"].startswith("{") and values["doc:b"].startswith('"')
        # overwriting the marked row keeps the state it meant, as a full copy
        await storage.write(lambda txn: txn.put("todos", [Write({"id": "b", "text": "local"})]))
        assert looked_up[-1] == ["b"]
        value = raw(db_path, "SELECT value FROM p2pdb_replication WHERE item = 'doc:b'")[0][0]
        assert orjson.loads(value) == {"id": "b", "text": "v1", "_deleted": False}
        assert storage.get_assumed("todos", "peer", ["a", "b"]) == {
            "a": {"id": "a", "text": "v1", "_deleted": False},
            "b": {"id": "b", "text": "v1", "_deleted": False},
        }


# -- randomized, against a reference that stores full copies ---------------------------------


def _random_body(rng: random.Random, doc_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"id": doc_id, "text": rng.choice(["a", "b", "c", "é", ""])}
    if rng.random() < 0.5:
        body["n"] = rng.choice([0, 1, 2, 1.0, True])
    if rng.random() < 0.3:
        body["tags"] = rng.sample(["x", "y", "z"], rng.randrange(3))
    return body


def _variant(rng: random.Random, state: dict[str, Any]) -> dict[str, Any]:
    """The row's own wire form (a marker), or a near miss that must be a full copy."""
    out = copy.deepcopy(state)
    choice = rng.randrange(6)
    if choice == 1:
        out["text"] += "!"
    elif choice == 2:
        out["n"] = 1.0 if out.get("n") == 1 and type(out.get("n")) is int else 1
    elif choice == 3:
        out["_deleted"] = not out["_deleted"]
    elif choice == 4:
        out = dict(reversed(list(out.items())))  # the same state, keys in another order
    return out


#: The table as files made before markers have it (a WITHOUT ROWID table).
OLD_TABLE = """CREATE TABLE p2pdb_replication (
    replication_id TEXT NOT NULL, item TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (replication_id, item)) WITHOUT ROWID"""


@pytest.mark.usefixtures("markers")
@pytest.mark.parametrize("old_table", [False, True], ids=["new-file", "old-file"])
@pytest.mark.parametrize("codec", [None, Shouting()], ids=["plain", "codec"])
async def test_random_operations_read_like_full_copies(
    db_path: str, codec: Any, old_table: bool
) -> None:
    if old_table:
        raw(db_path, OLD_TABLE)
    seed = SEED or random.randrange(1 << 30)
    rng = random.Random(seed)
    ids = [f"d{i}" for i in range(8)]
    rids = ["p", "q"]
    reference: dict[tuple[str, str], dict[str, Any]] = {}
    forms = {"marker": 0, "copy": 0}
    storage = await SQLiteStorage.open(db_path)
    await storage.ensure_collection("todos", SCHEMA, codec)
    try:
        for step in range(400):
            staged: dict[tuple[str, str], dict[str, Any]] = {}
            fail = rng.random() < 0.05
            ops = [rng.choice(["put", "assume", "assume_current"]) for _ in range(3)]

            def run(
                txn: WriteTxn,
                ops: list[str] = ops,
                staged: dict[Any, Any] = staged,
                fail: bool = fail,
            ) -> None:
                for op in ops:
                    doc_id, rid = rng.choice(ids), rng.choice(rids)
                    if op == "put":
                        deleted = rng.random() < 0.2
                        txn.put("todos", [Write(_random_body(rng, doc_id), deleted, ANY_REVISION)])
                        continue
                    current = txn.get("todos", [doc_id]).get(doc_id)
                    if op == "assume_current" and current is not None:
                        state = _variant(rng, wire(current))
                    else:
                        state = {**_random_body(rng, doc_id), "_deleted": rng.random() < 0.2}
                    txn.set_assumed("todos", rid, {doc_id: state})
                    staged[rid, doc_id] = copy.deepcopy(state)
                if fail:
                    raise RuntimeError("roll back")

            try:
                await storage.write(run)
            except RuntimeError:
                assert fail
            else:
                reference.update(staged)
            if rng.random() < 0.03:
                rid = rng.choice(rids)
                await storage.write(lambda txn, rid=rid: txn.forget_replication("todos", rid))
                reference = {k: v for k, v in reference.items() if k[0] != rid}
            if rng.random() < 0.02:
                await storage.close()
                storage = await SQLiteStorage.open(db_path)
                await storage.ensure_collection("todos", SCHEMA, codec)
            for rid in rids:
                expected = {i: exact(s) for (r, i), s in reference.items() if r == rid}
                got = storage.get_assumed("todos", rid, ids)
                assert {i: exact(s) for i, s in got.items()} == expected, (seed, step, rid)
                in_txn = await storage.write(
                    lambda txn, rid=rid: txn.get_assumed("todos", rid, ids)
                )
                assert {i: exact(s) for i, s in in_txn.items()} == expected, (seed, step)
            for (value,) in raw(db_path, f"SELECT value {DOC_ROWS}"):
                forms["marker" if value.startswith('"') else "copy"] += 1
    finally:
        await storage.close()
    assert forms["marker"] > 100 and forms["copy"] > 100, forms  # both forms were exercised
    (ddl,) = raw(db_path, "SELECT sql FROM sqlite_master WHERE name = 'p2pdb_replication'")[0]
    assert ddl.endswith("WITHOUT ROWID") is old_table


# -- randomized replications, every read checked against a shadow of full copies -------------


class Shadow:
    """Records every assumed state a replication stores, once its transaction committed,
    and checks every read against it."""

    def __init__(self) -> None:
        self.states: dict[tuple[int, str, str, str], bytes] = {}
        self.reads = 0
        self.mismatches: list[str] = []
        self._staging = threading.local()  # the writer thread's uncommitted states

    @staticmethod
    def _file(conn: sqlite3.Connection) -> int:
        (path,) = [row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"]
        return hash(os.path.realpath(path))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_set, real_get = ReplicationRows.set_assumed, ReplicationRows.get_assumed
        real_write = SQLiteStorage.write
        shadow = self

        async def write(storage: SQLiteStorage, fn: Any, **options: Any) -> Any:
            staged: dict[tuple[int, str, str, str], bytes] = {}

            def staging(txn: WriteTxn) -> Any:
                shadow._staging.states = staged
                try:
                    return fn(txn)
                finally:
                    shadow._staging.states = None

            result = await real_write(storage, staging, **options)
            shadow.states.update(staged)  # committed (a failed write raised above)
            return result

        def set_assumed(
            rows: ReplicationRows,
            conn: Any,
            collection: str,
            rid: str,
            states: Any,
            written: Any = None,
        ) -> None:
            real_set(rows, conn, collection, rid, states, written)
            staged = shadow._staging.states
            for doc_id, state in states.items():
                staged[shadow._file(conn), collection, rid, doc_id] = exact(state)

        def get_assumed(
            rows: ReplicationRows, conn: Any, collection: str, rid: str, ids: Any
        ) -> dict[str, dict[str, Any]]:
            got = real_get(rows, conn, collection, rid, ids)
            key = shadow._file(conn)
            staged = getattr(shadow._staging, "states", None) or {}
            for doc_id in ids:
                expected = staged.get((key, collection, rid, doc_id))
                if expected is None:
                    expected = shadow.states.get((key, collection, rid, doc_id))
                if (exact(got[doc_id]) if doc_id in got else None) != expected:
                    shadow.mismatches.append(f"{rid} {doc_id}")
                    raise AssertionError(f"assumed state of {doc_id} read wrong")
            shadow.reads += 1
            return got

        monkeypatch.setattr(SQLiteStorage, "write", write)
        monkeypatch.setattr(ReplicationRows, "set_assumed", set_assumed)
        monkeypatch.setattr(ReplicationRows, "get_assumed", get_assumed)


def _merge(conflict: Conflict) -> dict[str, Any]:
    a, b = conflict.real_master_state, conflict.new_document_state
    return {
        "id": a["id"],
        "text": max(a["text"], b["text"]),
        "tags": sorted(set(a.get("tags", [])) | set(b.get("tags", []))),
        "_deleted": a["_deleted"] or b["_deleted"],
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    strip = ("_rev", "_meta", "_attachments")
    left = {k: v for k, v in a.items() if k not in strip}
    right = {k: v for k, v in b.items() if k not in strip}
    return exact({**left, "_deleted": bool(left.get("_deleted"))}) == exact(
        {**right, "_deleted": bool(right.get("_deleted"))}
    )


MERGE = FunctionConflictHandler(_merge, _same)


def _seeds() -> Iterator[int]:
    yield SEED or random.randrange(1 << 30)


@pytest.mark.parametrize("write_markers", [True, False], ids=["markers", "full-copies"])
@pytest.mark.parametrize("seed", list(_seeds()))
async def test_random_replications_read_every_state_like_full_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, write_markers: bool
) -> None:
    """A fork replicating with two masters (so one replication's pull rewrites rows the
    other marked), local writes on all three, conflicts; live replications paused and
    resumed at random. Every assumed-state read is checked against the shadow; at the end
    all three hold the same documents."""
    monkeypatch.setattr(replication_rows, "WRITE_MARKERS", write_markers)
    assert downstream.FETCH_AHEAD  # small batches below: the next one is asked for early
    shadow = Shadow()
    shadow.install(monkeypatch)
    rng = random.Random(seed)
    ids = [f"d{i}" for i in range(12)]
    dbs = [await p2pdb.create_database(str(tmp_path / f"{n}.db")) for n in ("f", "m1", "m2")]
    try:
        fork, m1, m2 = [
            await db.add_collection("todos", schema=TODO_SCHEMA, conflict_handler=MERGE)
            for db in dbs
        ]
        states = [
            replicate(fork, collection_handler(m), f"to-{name}", autostart=False, batch_size=3)
            for m, name in ((m1, "m1"), (m2, "m2"))
        ]
        for step in range(120):
            target = rng.choice([fork, m1, m2])
            doc_id = rng.choice(ids)
            action = rng.random()
            current = await target.find_one(doc_id).exec()
            if action < 0.15 and current is not None:
                try:
                    await current.remove()
                except (NotFoundError, ConflictError):
                    pass  # a live replication changed or removed it since it was read
            else:
                body = {"id": doc_id, "text": f"{step}-{rng.randrange(9)}", "tags": [str(step)]}
                await target.upsert(body)
            if rng.random() < 0.3:
                state = rng.choice(states)
                if state.paused:
                    await state.start()
                else:
                    await state.pause()
            if rng.random() < 0.1:
                await asyncio.sleep(0)
        for state in states:
            if state.paused:
                await state.start()
        await wait_equal(fork, m1, m2, seconds=60)  # m1 and m2 meet through the fork
        for state in states:
            async with asyncio.timeout(60):
                await state.wait_for_in_sync()
        await wait_equal(fork, m1, m2, seconds=60)
        for state in states:
            await state.cancel()
        assert shadow.mismatches == [], seed
        assert shadow.reads > 20, (seed, shadow.reads)
        stored = raw(
            str(tmp_path / "f.db"),
            "SELECT count(*) FROM p2pdb_replication WHERE item LIKE 'doc:%' AND value LIKE '\"%'",
        )[0][0]
        assert (stored > 0) is write_markers, (seed, stored)  # markers: the common case
    finally:
        for db in dbs:
            await db.close()
