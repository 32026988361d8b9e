"""The storage seam: the protocols, replication state rows (and their compatibility with
files written before the storage package), the hooks plugins use, and the commit-ordered
delivery of events."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.causal import stored_vector
from p2pdb.changes import ChangeEvent
from p2pdb.errors import ClosedError, ConflictError, NotFoundError
from p2pdb.replication import collection_handler, replicate
from p2pdb.schema import Schema
from p2pdb.storage import (
    ABSENT,
    ANY_REVISION,
    BodyCodec,
    SQLiteStorage,
    Storage,
    Write,
    WriteTxn,
    replication_origin,
)
from p2pdb.storage.documents import revision_token

SCHEMA = Schema(TODO_SCHEMA)

# Rows exactly as the storage module before the package (p2pdb/storage.py, get_meta and
# set_meta) wrote them for a replication "peer" of "todos" (copied from such a file).
OLD_ROWS = [
    ("todos:peer", "doc:a", '{"id":"a","text":"from master","_deleted":false}'),
    ("todos:peer", "doc:b", '{"id":"b","text":"from fork","_deleted":false}'),
    ("todos:peer", "down", '{"seq":1}'),
    ("todos:peer", "up", "2"),
]


class Shouting:
    """A test codec: stores ``text`` upper-cased behind a marker, so encoding is visible."""

    def encode(self, collection: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body.get("text"), str):
            return body
        return {**body, "text": "ENC:" + body["text"][::-1]}

    def decode(self, collection: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        text = body.get("text")
        if not isinstance(text, str) or not text.startswith("ENC:"):
            return body
        return {**body, "text": text[4:][::-1]}


@pytest.fixture
async def storage(db_path: str) -> AsyncIterator[SQLiteStorage]:
    async with await SQLiteStorage.open(db_path) as opened:
        yield opened


def raw_rows(path: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def put(txn: WriteTxn, collection: str, *docs: dict[str, Any]) -> list[Any]:
    return txn.put(collection, [Write(doc) for doc in docs])


async def test_the_implementation_satisfies_the_protocols(storage: SQLiteStorage) -> None:
    await storage.ensure_collection("todos", SCHEMA)
    assert isinstance(storage, Storage)
    seen: list[bool] = []
    await storage.write(lambda txn: seen.append(isinstance(txn, WriteTxn)))
    assert seen == [True]
    assert repr(ANY_REVISION) == "ANY_REVISION" and repr(ABSENT) == "ABSENT"
    codec: BodyCodec = Shouting()
    assert codec.decode("c", "i", codec.encode("c", "i", {"text": "x"})) == {"text": "x"}


def test_replication_origin_is_the_key_of_its_rows() -> None:
    assert replication_origin("todos", "peer") == "todos:peer"
    assert replication_origin("todos", "a:b") == "todos:a:b"


async def test_a_file_written_with_the_old_item_format_resumes(db_path: str) -> None:
    async with await SQLiteStorage.open(db_path) as storage:
        await storage.ensure_collection("todos", SCHEMA)
    conn = sqlite3.connect(db_path)
    with conn:
        conn.executemany("INSERT INTO p2pdb_replication VALUES (?, ?, ?)", OLD_ROWS)
    conn.close()
    async with await SQLiteStorage.open(db_path) as storage:
        await storage.ensure_collection("todos", SCHEMA)
        assert storage.get_checkpoint("todos", "peer", "down") == {"seq": 1}
        assert storage.get_checkpoint("todos", "peer", "up") == 2
        assert storage.get_checkpoint("todos", "other", "up") is None
        assert storage.get_assumed("todos", "peer", ["a", "b", "c"]) == {
            "a": {"id": "a", "text": "from master", "_deleted": False},
            "b": {"id": "b", "text": "from fork", "_deleted": False},
        }
        # and the new writers produce the very same rows
        await storage.write(lambda txn: txn.forget_replication("todos", "peer"))
        assert raw_rows(db_path, "SELECT * FROM p2pdb_replication") == []

        def rewrite(txn: WriteTxn) -> None:
            txn.set_assumed(
                "todos",
                "peer",
                {
                    "a": {"id": "a", "text": "from master", "_deleted": False},
                    "b": {"id": "b", "text": "from fork", "_deleted": False},
                },
            )
            txn.set_checkpoint("todos", "peer", "down", {"seq": 1})
            txn.set_checkpoint("todos", "peer", "up", 2)

        await storage.write(rewrite)
    rows = raw_rows(db_path, "SELECT * FROM p2pdb_replication ORDER BY item")
    # the same rows, plus the time of the last checkpoint (older versions ignore the item)
    assert [row for row in rows if row[1] != "contact"] == OLD_ROWS
    (contact,) = [float(row[2]) for row in rows if row[1] == "contact"]
    assert abs(time.time() - contact) < 60


async def test_state_written_by_a_replication_reads_through_the_new_api(db_path: str) -> None:
    async with (
        p2pdb.create_database(db_path) as fork_db,
        p2pdb.create_database(":memory:") as master_db,
    ):
        fork = await fork_db.add_collection("todos", schema=TODO_SCHEMA)
        master = await master_db.add_collection("todos", schema=TODO_SCHEMA)
        await master.insert({"id": "a", "text": "from master"})
        await fork.insert({"id": "b", "text": "from fork"})
        async with replicate(fork, collection_handler(master), "peer", live=False) as state:
            await state.wait_for_initial_replication()
        storage = fork_db.storage
        rows = raw_rows(db_path, "SELECT replication_id, item FROM p2pdb_replication")
        items = ("contact", "doc:a", "doc:b", "down", "up")
        assert sorted(rows) == [("todos:peer", i) for i in items]
        assert storage.get_last_contact("todos", "peer") is not None
        assert storage.get_last_contact("todos", "never") is None
        assert storage.get_checkpoint("todos", "peer", "down") == {"seq": 1}
        assert storage.get_checkpoint("todos", "peer", "up") == storage.current_seq()
        assert set(storage.get_assumed("todos", "peer", ["a", "b"])) == {"a", "b"}
        assert storage.get_assumed("todos", "peer", ["a"])["a"]["text"] == "from master"
        origins = raw_rows(db_path, "SELECT id, origin FROM col_todos ORDER BY id")
        assert origins == [("a", replication_origin("todos", "peer")), ("b", "local")]


async def test_assumed_states_pass_through_the_collection_codec(
    storage: SQLiteStorage, db_path: str
) -> None:
    await storage.ensure_collection("todos", SCHEMA, Shouting())
    state = {"id": "a", "text": "secret", "_deleted": False}
    await storage.write(lambda txn: txn.set_assumed("todos", "peer", {"a": state}))
    stored = raw_rows(db_path, "SELECT value FROM p2pdb_replication WHERE item = 'doc:a'")
    assert stored == [('{"id":"a","text":"ENC:terces","_deleted":false}',)]
    assert storage.get_assumed("todos", "peer", ["a"]) == {"a": state}
    read_in_txn = await storage.write(lambda txn: txn.get_assumed("todos", "peer", ["a"]))
    assert read_in_txn == {"a": state}


async def test_forget_replication_drops_only_that_replication(storage: SQLiteStorage) -> None:
    await storage.ensure_collection("todos", SCHEMA)
    await storage.ensure_collection("todo", SCHEMA)

    def fill(txn: WriteTxn) -> None:
        for collection, rid in [("todos", "peer"), ("todos", "peer2"), ("todo", "peer")]:
            txn.set_checkpoint(collection, rid, "up", 7)
            txn.set_assumed(collection, rid, {"x": {"id": "x", "text": "t"}})

    await storage.write(fill)
    await storage.write(lambda txn: txn.forget_replication("todos", "peer"))
    assert storage.get_checkpoint("todos", "peer", "up") is None
    assert storage.get_assumed("todos", "peer", ["x"]) == {}
    assert storage.get_checkpoint("todos", "peer2", "up") == 7
    assert storage.get_checkpoint("todo", "peer", "up") == 7


async def test_recode_collection_rewrites_bodies_and_assumed_states(
    storage: SQLiteStorage, db_path: str
) -> None:
    await storage.ensure_collection("todos", SCHEMA)
    await storage.ensure_collection("todo", SCHEMA)  # a name that is a prefix of the other
    docs = [{"id": f"d{i:04}", "text": f"t{i}"} for i in range(1201)] + [{"id": "", "text": "e"}]

    def fill(txn: WriteTxn) -> None:
        txn.put("todos", [Write(d) for d in docs])
        txn.put("todos", [Write({"id": "d0000", "text": "gone"}, deleted=True)])
        put(txn, "todo", {"id": "d0001", "text": "other collection"})
        txn.set_assumed("todos", "p", {d["id"]: d for d in docs[:700]})
        txn.set_assumed("todos", "q:r", {"d0005": docs[5]})
        txn.set_assumed("todo", "p", {"d0001": {"id": "d0001", "text": "other"}})
        txn.set_checkpoint("todos", "p", "down", {"id": "d0003", "text": "a checkpoint"})

    await storage.write(fill)
    before = storage.get("todos", [d["id"] for d in docs])
    seq = storage.current_seq()
    events: list[ChangeEvent] = []
    storage.on_commit = events.extend
    calls: list[str] = []

    def transform(doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        calls.append(doc_id)
        return {**body, "text": body["text"] + "!"}

    await storage.write(lambda txn: txn.recode_collection("todos", transform))
    after = storage.get("todos", [d["id"] for d in docs])
    assert len(calls) == len(docs) + 700 + 1  # every row once, tombstone included
    for doc_id, state in after.items():
        assert state["text"] == before[doc_id]["text"] + "!"
        assert (state["_rev"], state["_deleted"]) == (
            before[doc_id]["_rev"],
            before[doc_id]["_deleted"],
        )
    assert after["d0000"]["_deleted"] and after["d0000"]["text"] == "gone!"
    assert storage.get_assumed("todos", "p", ["", "d0699", "d0700"]) == {
        "d0699": {"id": "d0699", "text": "t699!"}
    }
    assert storage.get_assumed("todos", "q:r", ["d0005"])["d0005"]["text"] == "t5!"
    assert storage.get_checkpoint("todos", "p", "down")["text"] == "a checkpoint"
    assert storage.get("todo", ["d0001"])["d0001"]["text"] == "other collection"
    assert storage.get_assumed("todo", "p", ["d0001"])["d0001"]["text"] == "other"
    assert storage.current_seq() == seq and events == []


async def test_recode_collection_refuses_an_unknown_collection(storage: SQLiteStorage) -> None:
    with pytest.raises(NotFoundError) as caught:
        await storage.write(lambda txn: txn.recode_collection("nope", lambda i, b: b))
    assert caught.value.code == "COLLECTION_NOT_FOUND"


async def test_write_checks_get_the_transaction_and_can_abort_it(storage: SQLiteStorage) -> None:
    await storage.ensure_collection("todos", SCHEMA)
    seen: list[str | None] = []

    def check(txn: WriteTxn) -> None:
        seen.append(txn.get_info("plugin"))
        if txn.get_info("plugin") == "stop":
            raise RuntimeError("refused")

    storage.write_checks.append(check)
    await storage.write(lambda txn: txn.set_info("plugin", "go"))
    await storage.write(lambda txn: put(txn, "todos", {"id": "a", "text": "kept"}))
    await storage.write(lambda txn: txn.set_info("plugin", "stop"))
    with pytest.raises(RuntimeError, match="refused"):
        await storage.write(lambda txn: put(txn, "todos", {"id": "b", "text": "refused"}))
    assert seen == [None, "go", "go", "stop"]
    assert storage.get_info("plugin") == "stop"
    assert set(storage.get("todos", ["a", "b"])) == {"a"}


async def test_info_records_and_the_catalog_inside_a_transaction(storage: SQLiteStorage) -> None:
    assert await storage.write(lambda txn: txn.stored_schemas()) == {}
    await storage.ensure_collection("todos", SCHEMA)
    schemas = await storage.write(lambda txn: txn.stored_schemas())
    assert schemas == storage.stored_schemas() and schemas["todos"] == TODO_SCHEMA

    def set_and_read(txn: WriteTxn) -> str | None:
        txn.set_info("k", "v1")
        return txn.get_info("k")

    assert await storage.write(set_and_read) == "v1"
    assert storage.get_info("k") == "v1"
    assert storage.get_info("token") == storage.token != ""


async def test_events_are_delivered_before_the_writer_resumes(storage: SQLiteStorage) -> None:
    await storage.ensure_collection("todos", SCHEMA)
    batches: list[list[ChangeEvent]] = []
    storage.on_commit = batches.append
    for i in range(3):
        await storage.write(lambda txn, i=i: put(txn, "todos", {"id": f"x{i}", "text": "t"}))
        assert [e.id for e in batches[-1]] == [f"x{i}"]  # already there when write returns
    assert [b[0].seq for b in batches] == [1, 2, 3]
    assert storage.own_seq_ranges() == [(1, 1), (2, 2), (3, 3)]
    storage.forget_own_seqs(2)
    assert storage.own_seq_ranges() == [(3, 3)]


async def test_rows_between_skips_own_writes(db_path: str) -> None:
    async with (
        await SQLiteStorage.open(db_path) as one,
        await SQLiteStorage.open(db_path) as two,
    ):
        for storage in (one, two):
            await storage.ensure_collection("todos", SCHEMA)
        await one.write(lambda txn: put(txn, "todos", {"id": "a", "text": "one"}))
        await two.write(lambda txn: put(txn, "todos", {"id": "b", "text": "two"}))
        assert one.current_seq() == two.current_seq() == 2
        assert [(r[0], r[1], r[2], r[4]) for r in one.rows_between(0, 2)] == [
            ("todos", 2, "b", "local")
        ]
        assert [r[2] for r in two.rows_between(0, 2)] == ["a"]


async def test_a_memory_database_removes_its_file_on_close() -> None:
    def folders() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("p2pdb-*"))

    before = folders()
    storage = await SQLiteStorage.open(":memory:")
    await storage.ensure_collection("todos", SCHEMA)
    await storage.write(lambda txn: put(txn, "todos", {"id": "a", "text": "t"}))
    created = folders() - before
    assert created  # its private file (other processes may add folders too)
    await storage.close()
    assert storage.closed and any(not p.exists() for p in created)
    with pytest.raises(ClosedError) as caught:
        storage.get("todos", ["a"])
    assert caught.value.code == "DATABASE_CLOSED"


async def test_put_writes_what_the_reference_helpers_define(storage: SQLiteStorage) -> None:
    """documents.put inlines the revision token and the causal vector of the common case
    (a new local document): every state, row and event still equals what
    ``revision_token`` and ``stored_vector`` define, on every path through the loop."""
    await storage.ensure_collection("todos", SCHEMA)
    await storage.ensure_collection("shout", SCHEMA, Shouting())
    token = storage.token
    batches: list[list[ChangeEvent]] = []
    storage.on_commit = batches.append

    def first(txn: WriteTxn) -> list[Any]:
        return txn.put(
            "todos",
            [
                Write({"id": "a", "text": "new"}, expected=None),
                Write({"id": "b", "text": "any"}),
                Write({"id": "c", "text": "absent"}, expected=ABSENT),
                Write({"id": "d", "text": "stale"}, expected="1-0000000000000000"),
                Write({"id": "a", "text": "again"}, expected=None),  # written just above
                Write({"id": "b", "text": "twice"}),  # an update inside the same call
                Write({"id": "e", "text": "peer"}, new_event=False, vector={"peer": 3}),
                Write({"id": "f", "text": "merged"}, vector={"peer": 2}),
            ],
        )

    out = await storage.write(first)
    assert [o.code if isinstance(o, ConflictError) else o["_rev"][:2] for o in out] == [
        "1-", "1-", "1-", "CONFLICT", "DOCUMENT_EXISTS", "2-", "1-", "1-"
    ]  # fmt: skip
    states = [o for o in out if not isinstance(o, ConflictError)]
    vectors = [
        {token: 1}, {token: 2}, {token: 3}, {token: 4}, {"peer": 3}, {"peer": 2, token: 6}
    ]  # fmt: skip
    for state, vector in zip(states, vectors, strict=True):
        body = {k: v for k, v in state.items() if not k.startswith("_")}
        height = state["_rev"].split("-")[0]
        assert state["_rev"] == f"{height}-{revision_token(orjson.dumps(body), False)}"
        assert state["_meta"]["vv"] == vector
        assert state["_deleted"] is False
        assert list(state)[-3:] == ["_deleted", "_rev", "_meta"]
    assert stored_vector({token: 2}, None, True, token, 4) == {token: 4}  # b over b
    assert stored_vector(None, {"peer": 2}, True, token, 6) == {"peer": 2, token: 6}
    (events,) = batches
    assert [(e.operation, e.id, e.seq) for e in events] == [
        ("INSERT", "a", 1), ("INSERT", "b", 2), ("INSERT", "c", 3), ("UPDATE", "b", 4),
        ("INSERT", "e", 5), ("INSERT", "f", 6),
    ]  # fmt: skip
    assert [e.document for e in events] == states
    assert events[3].previous == states[1]
    assert all(e.previous is None for i, e in enumerate(events) if i != 3)
    rows = raw_rows(storage.path, "SELECT id, seq, rev, deleted, body, vv FROM col_todos")
    stored = {row[0]: row for row in rows}
    for state in [states[0], *states[2:]]:
        doc_id, seq, rev, deleted, body, vv = stored[state["id"]]
        clean = {k: v for k, v in state.items() if not k.startswith("_")}
        assert (rev, deleted, body) == (state["_rev"], 0, orjson.dumps(clean).decode())
        assert orjson.loads(vv) == state["_meta"]["vv"]

    # over existing rows: a tombstone, and a codec's body (the revision hashes what is stored)
    def second(txn: WriteTxn) -> list[Any]:
        (gone,) = txn.put("todos", [Write({"id": "a", "text": "new"}, deleted=True)])
        (shouted,) = txn.put("shout", [Write({"id": "s", "text": "hi"}, expected=None)])
        return [gone, shouted]

    gone, shouted = await storage.write(second)
    assert gone["_rev"] == f"2-{revision_token(orjson.dumps({'id': 'a', 'text': 'new'}), True)}"
    assert gone["_meta"]["vv"] == {token: 7} and gone["_deleted"] is True
    encoded = orjson.dumps({"id": "s", "text": "ENC:ih"})
    assert shouted["_rev"] == f"1-{revision_token(encoded, False)}"
    assert shouted["text"] == "hi" and shouted["_meta"]["vv"] == {token: 8}
    assert [(e.operation, e.id, e.previous) for e in batches[1]] == [
        ("DELETE", "a", states[0]), ("INSERT", "s", None)
    ]  # fmt: skip


async def test_nothing_of_a_written_transaction_stays_alive_after_it(db_path: str) -> None:
    """A bulk write's states and events are the caller's alone once it returned: the
    writer thread keeps nothing of its last transaction (aiosqlite's thread holds its last
    job's return value until the next job; ours returns nothing)."""
    db = await p2pdb.create_database(db_path)
    todos = await db.add_collection("todos", schema=TODO_SCHEMA)
    seen = asyncio.Event()
    todos.changes.subscribe(lambda event: event.id == "t499" and seen.set())
    result = await todos.bulk_insert([{"id": f"t{i}", "text": "x"} for i in range(500)])
    assert len(result.success) == 500
    del result
    await asyncio.wait_for(seen.wait(), 5)
    gc.collect()
    assert sum(isinstance(o, ChangeEvent) for o in gc.get_objects()) == 0
    await db.close()
