"""Removing a collection with its replication state and local documents
(``db.remove_collection``), and a whole database file (``p2pdb.remove_database``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from schemas import PEER_SCHEMA, TODO_SCHEMA

import p2pdb
from p2pdb import NotFoundError, StorageError, ValidationError
from p2pdb.changes import ChangeEvent
from p2pdb.replication import collection_handler, replicate


def side(path: Path, suffix: str) -> Path:
    """The ``-wal`` / ``-shm`` file beside ``path``."""
    return path.with_name(path.name + suffix)


def tables(path: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}


async def test_remove_collection_drops_table_catalog_replication_state_and_local_docs(
    db_path: str,
) -> None:
    async with p2pdb.create_database(db_path) as db, p2pdb.create_database(":memory:") as other:
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        notes = await db.add_collection("notes", schema=PEER_SCHEMA)
        await todos.bulk_insert([{"id": f"t{i}", "text": "x", "n": i} for i in range(5)])
        await notes.insert({"id": "n", "text": "stays"})
        await db.local_documents("todos").insert_local("cursor", {"at": 1})
        await db.local_documents("notes").insert_local("cursor", {"at": 2})
        await db.insert_local("cursor", {"at": 3})
        remote = await other.add_collection("todos", schema=TODO_SCHEMA)
        remote_notes = await other.add_collection("notes", schema=PEER_SCHEMA)
        for fork, master in ((todos, remote), (notes, remote_notes)):
            state = replicate(fork, collection_handler(master), "to-other", autostart=True)
            await state.wait_for_in_sync()
            await state.cancel()
        assert ("todos", "to-other") in db.storage.list_replications()
        completed: list[bool] = []
        todos.changes.subscribe(on_completed=lambda: completed.append(True))

        await db.remove_collection("todos")

        assert completed == [True] and "todos" not in db.collections
        assert db.storage.list_replications() == [("notes", "to-other")]
        assert "todos" not in db.storage.stored_schemas()
        assert await db.get_local("cursor") is not None  # the database's own stay
        assert await db.local_documents("notes").get_local("cursor") is not None
        assert await notes.count() == 1
        for use in (todos.find(), todos.find_one("t1"), todos.insert({"id": "z", "text": "z"})):
            with pytest.raises(NotFoundError) as caught:
                await use
            assert caught.value.code == "COLLECTION_REMOVED"
        with pytest.raises(NotFoundError) as caught:
            await db.remove_collection("todos")
        assert caught.value.code == "COLLECTION_NOT_FOUND"
        again = await db.add_collection("todos", schema=TODO_SCHEMA)  # comes back empty
        assert await again.count() == 0
        assert await db.local_documents("todos").get_local("cursor") is None
    assert "col_todos" in tables(db_path) and "ix_todos__n" in tables(db_path)
    with sqlite3.connect(db_path) as conn:
        keys = {r[0] for r in conn.execute("SELECT replication_id FROM p2pdb_replication")}
        assert keys == {"notes:to-other"}


async def test_a_stored_collection_can_be_removed_without_adding_it(db_path: str) -> None:
    async with p2pdb.create_database(db_path) as db:
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        await todos.insert({"id": "a", "text": "x"})
    async with p2pdb.create_database(db_path) as db:
        await db.remove_collection("todos")
        assert db.storage.stored_schemas() == {}
    assert not any(t.startswith(("col_todos", "ix_todos")) for t in tables(db_path))


async def test_remove_collection_stops_its_replications_first(db: p2pdb.Database) -> None:
    todos = await db.add_collection("todos", schema=TODO_SCHEMA)
    async with p2pdb.create_database(":memory:") as other:
        remote = await other.add_collection("todos", schema=TODO_SCHEMA)
        state = replicate(todos, collection_handler(remote), "live", autostart=True)
        db.close_with_collection("todos", state.cancel)
        await remote.insert({"id": "a", "text": "from the other side"})
        await state.wait_for_in_sync()
        assert not state.canceled
        events: list[ChangeEvent] = []
        todos.changes.subscribe(events.append)
        await db.remove_collection("todos")
        assert state.canceled  # stopped before the table went
        assert db.storage.list_replications() == []
        await remote.insert({"id": "b", "text": "after"})  # nothing pulls it any more
        assert events == []


async def test_remove_database_removes_the_file_and_its_wal_and_shm(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    db = await p2pdb.create_database(path)
    todos = await db.add_collection("todos", schema=TODO_SCHEMA)
    await todos.insert({"id": "a", "text": "x"})
    assert side(path, "-wal").exists()
    with pytest.raises(StorageError) as caught:
        await p2pdb.remove_database(path)
    assert caught.value.code == "DATABASE_OPEN" and path.exists()
    with pytest.raises(StorageError):  # the same file by another spelling
        await p2pdb.remove_database(str(tmp_path / "." / "gone.db"))
    await db.close()
    side(path, "-shm").touch()  # as a crashed process leaves it
    removed = await p2pdb.remove_database(path)
    assert str(path) in removed and not path.exists()
    assert not side(path, "-wal").exists() and not side(path, "-shm").exists()
    assert await p2pdb.remove_database(path) == []  # nothing left: nothing to do
    async with p2pdb.create_database(path) as fresh:  # a new, empty database
        assert fresh.storage.stored_schemas() == {}


async def test_remove_database_refuses_what_is_not_a_p2pdb_database(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("my precious notes")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    for path in (text, other):
        with pytest.raises(ValidationError) as caught:
            await p2pdb.remove_database(path)
        assert caught.value.code == "DATABASE_NOT_P2PDB" and path.exists()
    with pytest.raises(ValidationError):
        await p2pdb.remove_database(":memory:")
    assert text.read_text() == "my precious notes"
