"""Authorization on the serving side: ``collection_handler(..., access=DocumentAccess(...))``.

Real SQLite files, and the wire over the in-memory pipe (``WirePipe``) as well as the handler
called directly: a document the remote may not read never reaches its store (not as a
tombstone, not as a conflict), its checkpoint still reaches the master's last write, and a
write it may not make is refused with a typed error and changes nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from access_helpers import Doc, refusal_code, served, stored_rows, two_databases, wait_for

import p2pdb
from p2pdb.errors import P2PDBError, ReplicationError
from p2pdb.replication import WriteRow, collection_handler, replicate
from p2pdb.replication.access import DocumentAccess
from p2pdb.replication.testing import WirePipe


def owner(doc: Mapping[str, Any] | None) -> str | None:
    """The ``meta.owner`` of a document."""
    return None if doc is None else doc.get("meta", {}).get("owner")


def alice_reads(doc: Mapping[str, Any]) -> bool:
    """The read rule of the tests: only documents owned by alice are visible."""
    return owner(doc) == "alice"


async def alice_reads_async(doc: Mapping[str, Any]) -> bool:
    """The same rule as a coroutine function."""
    await asyncio.sleep(0)
    return owner(doc) == "alice"


@pytest.fixture
async def dbs(tmp_path: Path) -> AsyncIterator[tuple[p2pdb.Database, p2pdb.Database]]:
    async with two_databases(tmp_path) as pair:
        yield pair


@pytest.mark.parametrize("over_wire", [False, True], ids=["direct", "wire"])
@pytest.mark.parametrize("rule", [alice_reads, alice_reads_async], ids=["sync", "async"])
async def test_can_read_hides_documents_with_no_gap(
    dbs: tuple[p2pdb.Database, p2pdb.Database],
    over_wire: bool,
    rule: Callable[[Mapping[str, Any]], bool | Awaitable[bool]],
) -> None:
    master_db, fork_db = dbs
    master, fork = master_db.collections["todos"], fork_db.collections["todos"]
    # some history before the fork connects: the checkpoint iteration must read past it
    for i in range(120):
        who = "alice" if i % 3 == 0 else "bob"
        await master.insert({"id": f"d{i}", "text": f"t{i}", "meta": {"owner": who}})
    hidden_texts: set[str] = set()
    seen_on_fork: list[Doc] = []
    fork.changes.subscribe(lambda e: seen_on_fork.append(dict(e.document)))
    handler = collection_handler(master, access=DocumentAccess(can_read=rule))
    async with served(handler, over_wire) as remote:
        state = replicate(fork, remote, "main", batch_size=10, retry_delay=0.05)
        await state.wait_for_initial_replication()
        # live: many updates and deletes of hidden and visible documents
        for i in range(0, 120, 2):
            doc = await master.find_one(f"d{i}")
            assert doc is not None
            text = f"updated {i}"
            if owner(doc.to_dict()) != "alice":
                hidden_texts.add(text)
            await doc.patch({"text": text})
        for i in range(1, 120, 5):
            await master.remove_document(f"d{i}")
        # the last writes are hidden ones: the checkpoint must still reach them
        for i in range(3):
            await master.insert({"id": f"h{i}", "text": "late", "meta": {"owner": "bob"}})
        last = master_db.storage.last_seq("todos")
        await wait_for(state, lambda: state.down_checkpoint == {"seq": last})
        await state.wait_for_in_sync()

        fork_rows = stored_rows(fork_db)
        master_rows = stored_rows(master_db)
        readable = {i for i, s in master_rows.items() if owner(s) == "alice"}
        assert set(fork_rows) == readable  # no hidden document, not even as a tombstone
        for doc_id in readable:
            assert fork_rows[doc_id]["text"] == master_rows[doc_id]["text"]
            assert fork_rows[doc_id]["_deleted"] == master_rows[doc_id]["_deleted"]
        assert any(s["_deleted"] for s in fork_rows.values())  # visible deletions arrived
        assert all(owner(d) == "alice" for d in seen_on_fork)
        assert not hidden_texts & {d["text"] for d in seen_on_fork}

        # a document becoming readable later arrives, with its current state
        hidden = next(i for i, s in master_rows.items() if owner(s) == "bob" and not s["_deleted"])
        doc = await master.find_one(hidden)
        assert doc is not None
        await doc.patch({"meta": {"owner": "alice"}, "text": "now shared"})
        await wait_for(
            state, lambda: stored_rows(fork_db).get(hidden, {}).get("text") == "now shared"
        )

        # a document becoming unreadable: the fork keeps the last state it could read and
        # is told nothing more, not even the deletion
        doc = await master.find_one("d0")
        assert doc is not None
        before = stored_rows(fork_db)["d0"]
        doc = await doc.patch({"meta": {"owner": "bob"}, "text": "secret now"})
        await doc.remove()
        last = master_db.storage.last_seq("todos")
        await wait_for(state, lambda: state.down_checkpoint == {"seq": last})
        after = stored_rows(fork_db)["d0"]
        assert (after["text"], after["_deleted"]) == (before["text"], False)
        assert "secret now" not in {d["text"] for d in seen_on_fork}
        await state.cancel()


@pytest.mark.parametrize("over_wire", [False, True], ids=["direct", "wire"])
async def test_conflict_on_an_unreadable_document_is_refused_not_answered(
    dbs: tuple[p2pdb.Database, p2pdb.Database], over_wire: bool
) -> None:
    master_db, fork_db = dbs
    master, fork = master_db.collections["todos"], fork_db.collections["todos"]
    await master.insert({"id": "x", "text": "shared", "meta": {"owner": "alice"}})
    handler = collection_handler(master, access=DocumentAccess(can_read=alice_reads))
    async with served(handler, over_wire) as remote:
        state = replicate(fork, remote, "main", retry_delay=0.05, max_retry_delay=0.1)
        await state.wait_for_in_sync()
        await state.pause()
        doc = await master.find_one("x")
        assert doc is not None
        await doc.patch({"meta": {"owner": "bob"}, "text": "hidden text"})
        errors: list[BaseException] = []
        refused = asyncio.Event()

        def on_error(error: BaseException) -> None:
            errors.append(error)
            if refusal_code(error) == "REPLICATION_WRITE_REFUSED":
                refused.set()

        state.errors.subscribe(on_error)
        local = await fork.find_one("x")
        assert local is not None
        await local.patch({"text": "edited on the fork"})
        await state.start()
        async with asyncio.timeout(10):
            await refused.wait()
        await state.cancel()
    # no conflict was answered with the hidden state, and the master kept its own
    assert stored_rows(master_db)["x"]["text"] == "hidden text"
    assert stored_rows(fork_db)["x"]["text"] == "edited on the fork"
    assert all("hidden text" not in str(e) for e in errors)


def mallory_writes(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Mallory may only create or change her own documents, and keep them hers."""
    return (current is None or owner(current) == "mallory") and owner(new) == "mallory"


@pytest.mark.parametrize("over_wire", [False, True], ids=["direct", "wire"])
async def test_can_write_refuses_forged_update_and_delete(
    dbs: tuple[p2pdb.Database, p2pdb.Database], over_wire: bool
) -> None:
    master_db, _ = dbs
    master = master_db.collections["todos"]
    await master.insert({"id": "a1", "text": "alice's", "meta": {"owner": "alice"}})
    await master.insert({"id": "m1", "text": "mallory's", "meta": {"owner": "mallory"}})
    handler = collection_handler(master, access=DocumentAccess(can_write=mallory_writes))
    current = (await handler.changes_since(None, 10)).documents
    a1 = next(d for d in current if d["id"] == "a1")
    m1 = next(d for d in current if d["id"] == "m1")
    before = stored_rows(master_db)
    last = master_db.storage.last_seq("todos")
    forged_update = WriteRow({**a1, "text": "pwned", "meta": {"owner": "mallory"}}, a1)
    forged_delete = WriteRow({**a1, "_deleted": True}, a1)
    allowed = WriteRow({"id": "m2", "text": "new", "meta": {"owner": "mallory"}, "_deleted": False})
    async with served(handler, over_wire) as remote:
        for rows in ([forged_update], [forged_delete], [allowed, forged_update]):
            with pytest.raises(P2PDBError) as info:
                await remote.write(rows)
            assert refusal_code(info.value) == "REPLICATION_WRITE_REFUSED"
            if not over_wire:
                assert isinstance(info.value, ReplicationError)
                assert info.value.parameters["ids"] == ["a1"]
            # nothing stored changed: not the forged rows, not the allowed row beside them
            assert stored_rows(master_db) == before
            assert master_db.storage.last_seq("todos") == last
        # what mallory may do still works
        assert await remote.write([allowed]) == []
        assert await remote.write([WriteRow({**m1, "_deleted": True}, m1)]) == []
    final = stored_rows(master_db)
    assert final["m2"]["text"] == "new" and final["m1"]["_deleted"] is True
    assert final["a1"] == before["a1"]


async def test_a_failing_hook_refuses_the_request(
    dbs: tuple[p2pdb.Database, p2pdb.Database],
) -> None:
    master_db, _ = dbs
    master = master_db.collections["todos"]

    def fragile(doc: Mapping[str, Any]) -> bool:
        if doc["text"] == "boom":
            raise RuntimeError("rule broke")
        return True

    def no_write(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
        raise RuntimeError("write rule broke")

    handler = collection_handler(
        master, access=DocumentAccess(can_read=fragile, can_write=no_write)
    )
    items: list[Any] = []
    handler.stream().subscribe(items.append)
    await master.insert({"id": "ok", "text": "fine"})
    await master.insert({"id": "bad", "text": "boom"})
    # the stream never errors: a batch it cannot judge becomes RESYNC, and the pull reports
    assert [type(i).__name__ for i in items] == ["ChangesBatch", "str"] and items[1] == "RESYNC"
    with pytest.raises(ReplicationError) as info:
        await handler.changes_since(None, 10)
    assert info.value.code == "REPLICATION_ACCESS_HOOK"
    assert isinstance(info.value.__cause__, RuntimeError)
    before = stored_rows(master_db)
    with pytest.raises(ReplicationError) as info:
        await handler.write([WriteRow({"id": "new", "text": "x", "_deleted": False})])
    assert info.value.code == "REPLICATION_ACCESS_HOOK"
    assert stored_rows(master_db) == before


def alice_keeps_hers(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """The fork (alice) may write only documents that are and stay hers."""
    return (current is None or owner(current) == "alice") and owner(new) == "alice"


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_writes_on_both_sides_converge_on_the_readable_part(
    dbs: tuple[p2pdb.Database, p2pdb.Database], seed: int
) -> None:
    rng = random.Random(seed)
    master_db, fork_db = dbs
    master, fork = master_db.collections["todos"], fork_db.collections["todos"]
    access = DocumentAccess(can_read=alice_reads, can_write=alice_keeps_hers)
    errors: list[BaseException] = []
    async with WirePipe(collection_handler(master, access=access)) as pipe:
        state = replicate(fork, pipe.handler, "random", batch_size=5, retry_delay=0.05)
        state.errors.subscribe(errors.append)
        for step in range(300):
            number = rng.randrange(40)
            doc_id, who = f"d{number}", ("alice", "bob")[number % 2]  # owners never change
            if rng.random() < 0.7:  # the master: inserts, updates and deletes of anyone's
                current = await master.find_one(doc_id)
                if current is None:
                    await master.upsert({"id": doc_id, "text": f"m{step}", "meta": {"owner": who}})
                elif rng.random() < 0.2:
                    await master.remove_document(doc_id)
                else:
                    await current.patch({"text": f"m{step}"})
            else:  # the fork edits what it holds (all of it alice's)
                mine = await fork.find_one(doc_id)
                if mine is not None:
                    try:
                        await mine.patch({"text": f"f{step}"})
                    except p2pdb.NotFoundError:
                        # a pull removed it in between (the master's removal): only then
                        stored = fork.stored_state(doc_id)
                        assert stored is not None and stored["_deleted"], doc_id
            if step % 100 == 99:
                await state.wait_for_in_sync()  # a few calm points between the bursts
        await state.wait_for_in_sync()
        last = master_db.storage.last_seq("todos")
        await wait_for(state, lambda: state.down_checkpoint == {"seq": last})
        await state.wait_for_in_sync()
        await state.cancel()
    master_rows, fork_rows = stored_rows(master_db), stored_rows(fork_db)
    readable = {i: s for i, s in master_rows.items() if owner(s) == "alice"}
    assert set(fork_rows) == set(readable)
    for doc_id, state_ in readable.items():
        assert (fork_rows[doc_id]["text"], fork_rows[doc_id]["_deleted"]) == (
            state_["text"],
            state_["_deleted"],
        )
    assert not [e for e in errors if refusal_code(e) == "REPLICATION_WRITE_REFUSED"]
