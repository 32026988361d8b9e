"""The in-process replication API between real SQLite databases: what only ``replicate()``
and ``collection_handler()`` offer (one-way and one-shot options, chains and stars, the
conflicts stream, replication ids, failing handlers, origins).

What every transport must do (documents both ways, no echo, conflicts through the handler,
resume, RESYNC, hostile answers, tombstones) is in tests/conformance, run on this transport
too.
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
from p2pdb.conflicts import Conflict, deep_equal
from p2pdb.replication import ResolvedConflict, collection_handler, replicate

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


def merge_texts(conflict: Conflict) -> dict[str, Any]:
    """Field merge: keep both texts, sorted, so every side computes the same result."""
    texts = sorted({conflict.real_master_state["text"], conflict.new_document_state["text"]})
    return {**conflict.real_master_state, "text": " + ".join(texts)}


async def test_conflicts_stream_reports_each_resolution(make_collection: Factory) -> None:
    # convergence through the handler on every transport: tests/conformance; this checks
    # ReplicationState.conflicts, which only the in-process API exposes from the start
    master = await make_collection("master", merge_texts)
    fork = await make_collection("fork", merge_texts)
    await master.insert({"id": "doc", "text": "base"})
    async with replicate(fork, collection_handler(master), "r") as state:
        await state.wait_for_in_sync()
        await state.pause()
        await (await master.find_one("doc")).patch({"text": "master"})  # type: ignore[union-attr]
        await (await fork.find_one("doc")).patch({"text": "fork"})  # type: ignore[union-attr]
        resolved: list[ResolvedConflict] = []
        state.conflicts.subscribe(resolved.append)
        await state.start()
        await wait_equal(master, fork)
        await state.wait_for_in_sync()
    assert len(resolved) == 1
    assert resolved[0].conflict.assumed_master_state["text"] == "base"  # type: ignore[index]
    assert resolved[0].resolved["text"] == "fork + master"


async def test_a_new_replication_id_starts_over(make_collection: Factory) -> None:
    # resuming with the same id on every transport: tests/conformance
    master, fork = await make_collection("master"), await make_collection("fork")
    await master.bulk_insert([{"id": f"m{i}", "text": "x"} for i in range(300)])
    await fork.bulk_insert([{"id": f"f{i}", "text": "x"} for i in range(50)])
    async with replicate(fork, collection_handler(master), "r") as state:
        await state.wait_for_in_sync()
    again = FaultyHandler(collection_handler(master))
    async with replicate(fork, again, "r") as state:
        await state.wait_for_in_sync()
    assert again.pulled <= 50 and again.pushed == 0  # resumed (at most the echo of the 50)
    fresh = FaultyHandler(collection_handler(master))
    async with replicate(fork, fresh, "another-id") as state:
        await state.wait_for_in_sync()
    assert fresh.pulled == 350  # a new id pulls everything again


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
