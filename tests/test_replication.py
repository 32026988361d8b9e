"""The replication protocol between real SQLite databases, in one process.

Ported from RxDB's replication-protocol tests and PouchDB's replication tests: one-way each
direction, insert/update/delete/re-insert, chains and stars, conflicts, resume, invalid
documents, failing handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import FaultyHandler, contents, wait_equal
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.conflicts import Conflict, FunctionConflictHandler, deep_equal
from p2pdb.replication import collection_handler, replicate

Factory = Callable[..., Any]


@pytest.fixture
async def make_collection(tmp_path: Path) -> AsyncIterator[Factory]:
    """Opens a fresh database file per call and returns its todos collection."""
    dbs: list[p2pdb.Database] = []

    async def make(name: str, conflict_handler: object = None, schema: Any = None) -> Any:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        dbs.append(db)
        return await db.add_collection(
            "todos", schema=schema or TODO_SCHEMA, conflict_handler=conflict_handler
        )

    yield make
    for db in dbs:
        await db.close()


async def test_pull_one_way(make_collection: Factory) -> None:
    master, fork = await make_collection("master"), await make_collection("fork")
    await master.bulk_insert([{"id": f"m{i}", "text": str(i)} for i in range(250)])
    async with replicate(fork, collection_handler(master), "r", push=False) as state:
        await state.wait_for_initial_replication()
        assert await fork.count() == 250
        await master.insert({"id": "live", "text": "arrives through the stream"})
        await wait_equal(master, fork)
        await fork.insert({"id": "local", "text": "stays here"})  # push is off
        await state.wait_for_in_sync()
    assert await master.find_one("local") is None


async def test_push_one_way(make_collection: Factory) -> None:
    master, fork = await make_collection("master"), await make_collection("fork")
    await fork.bulk_insert([{"id": f"f{i}", "text": str(i)} for i in range(250)])
    async with replicate(fork, collection_handler(master), "r", pull=False) as state:
        await state.wait_for_initial_replication()
        assert await master.count() == 250
        await fork.insert({"id": "live", "text": "x"})
        await wait_equal(master, fork)


async def test_insert_update_delete_reinsert_both_ways_without_echo(
    make_collection: Factory,
) -> None:
    master, fork = await make_collection("master"), await make_collection("fork")
    writes = {"master": 0, "fork": 0}
    master.changes.subscribe(lambda e: writes.__setitem__("master", writes["master"] + 1))
    fork.changes.subscribe(lambda e: writes.__setitem__("fork", writes["fork"] + 1))
    async with replicate(fork, collection_handler(master), "r") as state:
        await state.wait_for_in_sync()
        a = await fork.insert({"id": "a", "text": "from fork"})
        b = await master.insert({"id": "b", "text": "from master"})
        await wait_equal(master, fork)
        a = await a.patch({"text": "fork edit"})
        b = await b.patch({"text": "master edit"})
        await wait_equal(master, fork)
        await a.remove()
        await wait_equal(master, fork)
        await b.remove()
        await wait_equal(master, fork)
        assert await contents(master) == {}
        await master.insert({"id": "a", "text": "re-inserted on master"})
        await fork.insert({"id": "b", "text": "re-inserted on fork"})
        await wait_equal(master, fork)
        await state.wait_for_in_sync()
    # each of the 8 writes happened once where it was made and once on the other side
    assert writes == {"master": 8, "fork": 8}
    assert (await master.find_one("b"))["text"] == "re-inserted on fork"  # type: ignore[index]


async def test_chain_and_star(make_collection: Factory) -> None:
    a, b, c = [await make_collection(n) for n in "abc"]
    hub, s1, s2 = [await make_collection(n) for n in ("hub", "s1", "s2")]
    states = [
        replicate(b, collection_handler(a), "b-from-a"),
        replicate(c, collection_handler(b), "c-from-b"),
        replicate(s1, collection_handler(hub), "s1"),
        replicate(s2, collection_handler(hub), "s2"),
    ]
    try:
        await a.insert({"id": "from-a", "text": "travels down the chain"})
        await c.insert({"id": "from-c", "text": "travels up the chain"})
        await wait_equal(a, b, c)
        await s1.insert({"id": "from-s1", "text": "via the hub"})
        await wait_equal(hub, s1, s2)
        doc = await s2.find_one("from-s1")
        assert doc is not None
        await doc.patch({"text": "edited on s2"})
        await wait_equal(hub, s1, s2)
        assert (await s1.find_one("from-s1"))["text"] == "edited on s2"  # type: ignore[index]
    finally:
        for state in states:
            await state.cancel()


def raising_resolve(conflict: Conflict) -> dict[str, Any]:
    raise AssertionError(f"resolve must not be called: {conflict}")


async def test_identical_concurrent_inserts_do_not_call_resolve(make_collection: Factory) -> None:
    handler = FunctionConflictHandler(raising_resolve)
    master = await make_collection("master", handler)
    fork = await make_collection("fork", handler)
    same = {"id": "same", "text": "identical", "n": 1}
    await master.insert(same)
    await fork.insert(same)
    errors: list[Exception] = []
    async with replicate(fork, collection_handler(master), "r") as state:
        state.errors.subscribe(errors.append)
        await state.wait_for_in_sync()
    assert errors == []
    assert await contents(master) == await contents(fork) == {"same": same}


def merge_texts(conflict: Conflict) -> dict[str, Any]:
    """Field merge: keep both texts, sorted, so every side computes the same result."""
    texts = sorted({conflict.real_master_state["text"], conflict.new_document_state["text"]})
    return {**conflict.real_master_state, "text": " + ".join(texts)}


async def test_concurrent_edits_converge_through_the_handler(make_collection: Factory) -> None:
    master = await make_collection("master", merge_texts)
    fork = await make_collection("fork", merge_texts)
    await master.insert({"id": "doc", "text": "base"})
    async with replicate(fork, collection_handler(master), "r") as state:
        await state.wait_for_in_sync()
        await state.pause()
        await (await master.find_one("doc")).patch({"text": "master"})  # type: ignore[union-attr]
        await (await fork.find_one("doc")).patch({"text": "fork"})  # type: ignore[union-attr]
        resolved: list[Any] = []
        state.conflicts.subscribe(resolved.append)
        await state.start()
        await wait_equal(master, fork)
        await state.wait_for_in_sync()
    assert (await master.find_one("doc"))["text"] == "fork + master"  # type: ignore[index]
    assert len(resolved) == 1
    assert resolved[0].conflict.assumed_master_state["text"] == "base"


async def test_master_wins_by_default(make_collection: Factory) -> None:
    master, fork = await make_collection("master"), await make_collection("fork")
    await master.insert({"id": "doc", "text": "master's"})
    await fork.insert({"id": "doc", "text": "fork's"})  # never saw the master's
    async with replicate(fork, collection_handler(master), "r") as state:
        await state.wait_for_in_sync()
    assert (await fork.find_one("doc"))["text"] == "master's"  # type: ignore[index]


async def test_resume_from_checkpoints_after_cancel(make_collection: Factory) -> None:
    master, fork = await make_collection("master"), await make_collection("fork")
    await master.bulk_insert([{"id": f"m{i}", "text": "x"} for i in range(300)])
    await fork.bulk_insert([{"id": f"f{i}", "text": "x"} for i in range(50)])
    handler = FaultyHandler(collection_handler(master))
    async with replicate(fork, handler, "r") as state:
        await state.wait_for_in_sync()
    # the fork's 50 may come back once as the echo of its own push (equal: not written)
    assert handler.pulled in (300, 350) and handler.pushed == 50
    await master.insert({"id": "new-m", "text": "x"})
    await fork.insert({"id": "new-f", "text": "x"})
    handler2 = FaultyHandler(collection_handler(master))
    written: list[str] = []
    fork.changes.subscribe(lambda e: written.append(e.id))
    async with replicate(fork, handler2, "r") as state:
        await state.wait_for_in_sync()
    # resumed: only the new document each way (and at most the echo of new-f)
    assert handler2.pushed == 1 and handler2.pulled in (1, 2)
    assert written == ["new-m"]
    await wait_equal(master, fork)
    handler3 = FaultyHandler(collection_handler(master))
    async with replicate(fork, handler3, "another-id") as state:  # a new id starts over
        await state.wait_for_in_sync()
    assert handler3.pulled == 352


async def test_invalid_pulled_document_is_reported_and_skipped(make_collection: Factory) -> None:
    loose = {**TODO_SCHEMA, "properties": {**TODO_SCHEMA["properties"], "n": {"type": "number"}}}
    master = await make_collection("master", schema=loose)
    fork = await make_collection("fork")
    await master.bulk_insert(
        [
            {"id": "ok1", "text": "a"},
            {"id": "bad", "text": "b", "n": 1.5},
            {"id": "ok2", "text": "c"},
        ]
    )
    errors: list[p2pdb.P2PDBError] = []
    async with replicate(fork, collection_handler(master), "r", push=False) as state:
        state.errors.subscribe(errors.append)
        await state.wait_for_initial_replication()
    assert sorted(await contents(fork)) == ["ok1", "ok2"]
    assert [(e.code, e.parameters["document_id"]) for e in errors] == [("DOCUMENT_INVALID", "bad")]


async def test_in_sync_never_resolves_while_the_handler_fails(make_collection: Factory) -> None:
    master, fork = await make_collection("master"), await make_collection("fork")
    handler = FaultyHandler(collection_handler(master))
    handler.failing = True
    await fork.insert({"id": "a", "text": "waiting to be pushed"})
    errors: list[p2pdb.P2PDBError] = []
    got_errors = asyncio.Event()

    def on_error(error: p2pdb.P2PDBError) -> None:
        errors.append(error)
        if len(errors) >= 4:
            got_errors.set()

    state = replicate(fork, handler, "r", retry_delay=0.01, max_retry_delay=0.05)
    state.errors.subscribe(on_error)
    in_sync = asyncio.create_task(state.wait_for_in_sync())
    async with asyncio.timeout(10):
        await got_errors.wait()  # several failed attempts, retried with backoff
    assert not in_sync.done()
    assert {e.code for e in errors} == {"PEER_TIMEOUT"}
    handler.failing = False
    async with asyncio.timeout(10):
        await in_sync
    assert await contents(master) == await contents(fork)
    await state.cancel()


async def test_one_shot_replication(make_collection: Factory) -> None:
    master, fork = await make_collection("master"), await make_collection("fork")
    await master.insert({"id": "m", "text": "x"})
    await fork.insert({"id": "f", "text": "x"})
    state = replicate(fork, collection_handler(master), "r", live=False)
    await state.wait_for_initial_replication()
    await state.wait_for_in_sync()
    assert await contents(master) == await contents(fork)
    await state.cancel()


async def test_replication_origin_on_events(make_collection: Factory) -> None:
    master, fork = await make_collection("master"), await make_collection("fork")
    events: list[p2pdb.ChangeEvent] = []
    fork.changes.subscribe(events.append)
    await master.insert({"id": "m", "text": "x"})
    async with replicate(fork, collection_handler(master), "main") as state:
        await state.wait_for_in_sync()
    assert [(e.id, e.origin) for e in events] == [("m", "todos:main")]


def test_default_equality_keeps_json_types_apart() -> None:
    assert deep_equal({"a": 1, "_rev": "1-x"}, {"a": 1, "_deleted": False})
    assert not deep_equal({"a": True}, {"a": 1})
    assert not deep_equal({"a": [1, 2]}, {"a": [2, 1]})
