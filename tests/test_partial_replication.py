"""Partial replication: a selector and RxDB's pull/push modifiers, on the fork
(``ReplicationOptions``) and on the serving side (``DocumentAccess``).

Real SQLite files; the handler called directly and over the wire's in-memory pipe. Checked:
only matching documents enter either side, checkpoints reach the master's last write, a
document leaving the selector is not left stale (it follows, and no deletion is invented),
modifiers transform both ways (conflict answers included) without an echo, and ``None``
from a modifier drops a document without stalling the checkpoints.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from access_helpers import Doc, refusal_code, served, stored_rows, two_databases, wait_for

import p2pdb
from p2pdb.errors import P2PDBError, QueryError
from p2pdb.plugins.replication_websocket import (
    ClientOptions,
    replicate_websocket,
    start_replication_server,
)
from p2pdb.replication import ReplicationOptions, WriteRow, collection_handler, replicate
from p2pdb.replication.access import DocumentAccess

OPEN = {"done": False}
WIRE = pytest.mark.parametrize("over_wire", [False, True], ids=["direct", "wire"])


@pytest.fixture
async def dbs(tmp_path: Path) -> AsyncIterator[tuple[p2pdb.Database, p2pdb.Database]]:
    async with two_databases(tmp_path) as pair:
        yield pair


def live(rows: dict[str, Doc]) -> dict[str, Doc]:
    """The documents that are not deleted, without their local ``_rev`` and ``_meta``."""
    return {
        i: {k: v for k, v in s.items() if k not in ("_rev", "_meta")}
        for i, s in rows.items()
        if not s["_deleted"]
    }


async def settle(state: Any, master_db: p2pdb.Database) -> None:
    """Wait until the fork's checkpoint covers the master's last write and all is pushed."""
    await state.wait_for_in_sync()  # pushed, so the master's last write is final
    last = master_db.storage.last_seq("todos")
    await wait_for(state, lambda: (state.down_checkpoint or {}).get("seq", 0) >= last)


@WIRE
async def test_selector_limits_both_directions(
    dbs: tuple[p2pdb.Database, p2pdb.Database], over_wire: bool
) -> None:
    master_db, fork_db = dbs
    master, fork = master_db.collections["todos"], fork_db.collections["todos"]
    await master.bulk_insert([{"id": f"m{i}", "text": "x", "done": i % 2 == 1} for i in range(40)])
    await fork.insert({"id": "f-open", "text": "mine", "done": False})
    await fork.insert({"id": "f-closed", "text": "mine", "done": True})
    async with served(collection_handler(master), over_wire) as remote:
        state = replicate(fork, remote, "open", selector=OPEN, batch_size=7)
        await settle(state, master_db)
        # a non-matching document written last: the checkpoint must still pass it
        await master.insert({"id": "m-late", "text": "x", "done": True})
        await settle(state, master_db)
        assert state.is_pushed()
        await state.cancel()
    fork_ids = set(stored_rows(fork_db))
    assert fork_ids == {f"m{i}" for i in range(0, 40, 2)} | {"f-open", "f-closed"}
    master_ids = set(stored_rows(master_db))
    assert "f-open" in master_ids and "f-closed" not in master_ids


@WIRE
async def test_a_document_leaving_the_selector_follows_and_is_never_deleted(
    dbs: tuple[p2pdb.Database, p2pdb.Database], over_wire: bool
) -> None:
    master_db, fork_db = dbs
    master, fork = master_db.collections["todos"], fork_db.collections["todos"]
    for name in ("a", "b", "c"):
        await master.insert({"id": name, "text": "open", "done": False})
    async with served(collection_handler(master), over_wire) as remote:
        state = replicate(fork, remote, "open", selector=OPEN)
        await settle(state, master_db)
        # on the master: "a" leaves the selector; the fork gets that state, then later ones
        doc = await master.find_one("a")
        assert doc is not None
        doc = await doc.patch({"done": True})
        await settle(state, master_db)
        assert stored_rows(fork_db)["a"]["done"] is True  # not stale
        await doc.patch({"text": "closed and edited"})
        await settle(state, master_db)
        assert stored_rows(fork_db)["a"]["text"] == "closed and edited"
        # on the fork: "b" leaves the selector; the master gets it
        local = await fork.find_one("b")
        assert local is not None
        await local.patch({"done": True, "text": "closed on the fork"})
        await settle(state, master_db)
        assert stored_rows(master_db)["b"]["text"] == "closed on the fork"
        # a deletion of a shared document still travels, both ways
        await master.remove_document("a")
        await fork.remove_document("c")
        await settle(state, master_db)
        # and a document that never matched stays out
        await master.insert({"id": "z", "text": "closed", "done": True})
        await settle(state, master_db)
        await state.cancel()
    fork_rows, master_rows = stored_rows(fork_db), stored_rows(master_db)
    assert "z" not in fork_rows
    assert fork_rows["a"]["_deleted"] and master_rows["c"]["_deleted"]
    assert live(fork_rows) == live({i: s for i, s in master_rows.items() if i != "z"})
    # nothing was deleted that nobody deleted
    assert not master_rows["b"]["_deleted"] and not fork_rows["b"]["_deleted"]


def to_fork(doc: Doc) -> Doc:
    """The fork's form: text carries a "fork:" prefix."""
    return {**doc, "text": "fork:" + doc["text"]}


async def to_master(doc: Doc) -> Doc:
    """The master's form (an async modifier)."""
    await asyncio.sleep(0)
    return {**doc, "text": doc["text"].removeprefix("fork:")}


@WIRE
async def test_modifiers_transform_both_ways_without_echo(
    dbs: tuple[p2pdb.Database, p2pdb.Database], over_wire: bool
) -> None:
    master_db, fork_db = dbs
    master, fork = master_db.collections["todos"], fork_db.collections["todos"]
    await master.insert({"id": "m1", "text": "hello"})
    await master.insert({"id": "c", "text": "base"})
    await fork.insert({"id": "f1", "text": "fork:from the fork"})
    master_events: list[str] = []
    master.changes.subscribe(lambda e: master_events.append(e.document["id"]))
    async with served(collection_handler(master), over_wire) as remote:
        state = replicate(fork, remote, "mod", pull_modifier=to_fork, push_modifier=to_master)
        await settle(state, master_db)
        assert stored_rows(fork_db)["m1"]["text"] == "fork:hello"
        assert stored_rows(master_db)["f1"]["text"] == "from the fork"
        assert master_events == ["f1"]  # one write, no echo back and forth
        # a conflict: its answer reaches the fork through pull_modifier
        await state.pause()
        doc = await master.find_one("c")
        assert doc is not None
        await doc.patch({"text": "master edit"})
        local = await fork.find_one("c")
        assert local is not None
        await local.patch({"text": "fork:fork edit"})
        conflicts: list[Any] = []
        state.conflicts.subscribe(conflicts.append)
        await state.start()
        await settle(state, master_db)
        await state.cancel()
    assert conflicts and conflicts[0].conflict.real_master_state["text"] == "fork:master edit"
    assert stored_rows(fork_db)["c"]["text"] == "fork:master edit"  # the master won
    assert stored_rows(master_db)["c"]["text"] == "master edit"
    assert all(not s["text"].startswith("fork:") for s in stored_rows(master_db).values())


@WIRE
async def test_a_modifier_returning_none_drops_without_stalling(
    dbs: tuple[p2pdb.Database, p2pdb.Database], over_wire: bool
) -> None:
    master_db, fork_db = dbs
    master, fork = master_db.collections["todos"], fork_db.collections["todos"]

    def pull(doc: Doc) -> Doc | None:
        return None if "master-only" in doc.get("tags", []) else doc

    def push(doc: Doc) -> Doc | None:
        return None if doc.get("n", 0) >= 100 else doc

    await master.bulk_insert(
        [{"id": f"m{i}", "text": "x", "tags": ["master-only"] if i % 2 else []} for i in range(20)]
    )
    await fork.bulk_insert([{"id": f"f{i}", "text": "x", "n": i * 20} for i in range(10)])
    async with served(collection_handler(master), over_wire) as remote:
        state = replicate(
            fork, remote, "drop", pull_modifier=pull, push_modifier=push, batch_size=4
        )
        await settle(state, master_db)
        assert state.is_pushed()
        await state.cancel()
    assert {i for i in stored_rows(fork_db) if i.startswith("m")} == {
        f"m{i}" for i in range(0, 20, 2)
    }
    assert {i for i in stored_rows(master_db) if i.startswith("f")} == {f"f{i}" for i in range(5)}


async def test_a_bad_selector_fails_at_the_call(
    dbs: tuple[p2pdb.Database, p2pdb.Database],
) -> None:
    master_db, fork_db = dbs
    with pytest.raises(QueryError):
        replicate(
            fork_db.collections["todos"],
            collection_handler(master_db.collections["todos"]),
            "bad",
            selector={"n": {"$nope": 1}},
            autostart=False,
        )


def with_prefix(doc: Doc) -> Doc:
    """The serving side's outgoing form."""
    return {**doc, "text": "m:" + doc["text"]}


def without_prefix(doc: Doc) -> Doc:
    """The serving side's incoming form."""
    return {**doc, "text": doc["text"].removeprefix("m:")}


@WIRE
async def test_serving_side_selector_and_modifiers(
    dbs: tuple[p2pdb.Database, p2pdb.Database], over_wire: bool
) -> None:
    master_db, fork_db = dbs
    master, fork = master_db.collections["todos"], fork_db.collections["todos"]
    await master.bulk_insert(
        [{"id": f"m{i}", "text": f"t{i}", "done": i % 2 == 1} for i in range(10)]
    )
    access = DocumentAccess(selector=OPEN, outgoing=with_prefix, incoming=without_prefix)
    handler = collection_handler(master, access=access)
    async with served(handler, over_wire) as remote:
        state = replicate(fork, remote, "served", batch_size=3)
        await settle(state, master_db)
        assert set(stored_rows(fork_db)) == {f"m{i}" for i in range(0, 10, 2)}
        assert stored_rows(fork_db)["m0"]["text"] == "m:t0"
        # an edit is compared with the outgoing view of the stored state, stored incoming
        doc = await fork.find_one("m0")
        assert doc is not None
        await doc.patch({"text": "m:t0 edited"})
        await fork.insert({"id": "new", "text": "m:new", "done": False})
        await settle(state, master_db)
        assert stored_rows(master_db)["m0"]["text"] == "t0 edited"
        assert stored_rows(master_db)["new"]["text"] == "new"
        await state.cancel()
        # a push of a document outside the serving side's selector is refused
        with pytest.raises(P2PDBError) as info:
            await remote.write(
                [WriteRow({"id": "closed", "text": "m:x", "done": True, "_deleted": False})]
            )
        assert refusal_code(info.value) == "REPLICATION_WRITE_REFUSED"
    assert "closed" not in stored_rows(master_db)


async def test_fork_side_partial_replication_over_real_websockets(
    dbs: tuple[p2pdb.Database, p2pdb.Database],
) -> None:
    # the fork's options travel with any transport: here p2pdb's WebSocket client and server
    master_db, fork_db = dbs
    master, fork = master_db.collections["todos"], fork_db.collections["todos"]
    await master.bulk_insert(
        [{"id": f"m{i}", "text": f"t{i}", "done": i % 2 == 1} for i in range(20)]
    )
    replication = ReplicationOptions(
        selector=OPEN, pull_modifier=to_fork, push_modifier=to_master, batch_size=3
    )
    options = ClientOptions(replication=replication, request_timeout=5.0)
    async with await start_replication_server(master_db, port=0) as server:
        state = await replicate_websocket(fork, f"ws://127.0.0.1:{server.port}", options=options)
        await settle(state, master_db)
        assert set(stored_rows(fork_db)) == {f"m{i}" for i in range(0, 20, 2)}
        assert stored_rows(fork_db)["m0"]["text"] == "fork:t0"
        await fork.insert({"id": "f1", "text": "fork:from the fork", "done": False})
        doc = await master.find_one("m2")
        assert doc is not None
        await doc.patch({"done": True, "text": "closed"})  # leaves the selector: follows
        await settle(state, master_db)
        await state.cancel()
    assert stored_rows(master_db)["f1"]["text"] == "from the fork"
    assert stored_rows(fork_db)["m2"]["text"] == "fork:closed"
    assert stored_rows(fork_db)["m2"]["done"] is True
