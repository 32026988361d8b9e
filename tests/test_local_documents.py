"""Local documents on the database and on collections: RxDB's insertLocal / getLocal /
upsertLocal / remove semantics, persistence, observability, never replicated."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb import ConflictError, LocalDocument, NotFoundError, ValidationError
from p2pdb.replication import collection_handler, replicate


async def test_insert_get_upsert_remove_on_the_database(db: p2pdb.Database) -> None:
    assert await db.get_local("settings") is None
    doc = await db.insert_local("settings", {"theme": "dark", "nested": {"n": [1, 2]}})
    assert isinstance(doc, LocalDocument)
    assert doc.id == "settings" and doc.collection is None and not doc.deleted
    assert doc.data == {"theme": "dark", "nested": {"n": [1, 2]}} == doc.to_dict()
    assert doc.get("theme") == "dark" and doc.revision.startswith("1-")
    with pytest.raises(ConflictError) as caught:
        await db.insert_local("settings", {"theme": "light"})
    assert caught.value.code == "LOCAL_DOCUMENT_EXISTS"
    assert caught.value.document is not None and caught.value.document["data"]["theme"] == "dark"
    replaced = await db.upsert_local("settings", {"font": 12})
    assert replaced.data == {"font": 12}  # replaced, not merged
    assert replaced.revision.startswith("2-")
    got = await db.get_local("settings")
    assert got is not None and got.data == {"font": 12} and got.revision == replaced.revision
    removed = await db.remove_local("settings")
    assert removed.deleted and removed.data == {"font": 12}
    assert await db.get_local("settings") is None
    with pytest.raises(NotFoundError) as missing:
        await db.remove_local("settings")
    assert missing.value.code == "LOCAL_DOCUMENT_NOT_FOUND"
    again = await db.insert_local("settings", {"theme": "light"})  # insert after remove works
    assert again.data == {"theme": "light"}


async def test_values_are_checked_and_copied(db: p2pdb.Database) -> None:
    data = {"list": [1]}
    doc = await db.insert_local("a", data)
    data["list"].append(2)
    doc.data["list"].append(3)
    assert doc.data == {"list": [1]}
    with pytest.raises(ValidationError) as caught:
        await db.insert_local("b", {"x": float("nan")})
    assert caught.value.code == "DOCUMENT_NOT_JSON"
    with pytest.raises(ValidationError) as caught:
        await db.upsert_local("b", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert caught.value.code == "LOCAL_DOCUMENT_NOT_OBJECT"
    for bad_id in ("", 5, None):
        with pytest.raises(ValidationError) as caught:
            await db.get_local(bad_id)  # type: ignore[arg-type]
        assert caught.value.code == "LOCAL_DOCUMENT_ID"
    assert await db.get_local("b") is None


async def test_database_and_collection_local_documents_are_separate_and_persist(
    db_path: str,
) -> None:
    async with p2pdb.create_database(db_path) as db:
        await db.add_collection("todos", schema=TODO_SCHEMA)
        await db.insert_local("cursor", {"at": "database"})
        store = db.local_documents("todos")
        await store.insert_local("cursor", {"at": "todos"})
        assert (await store.get_local("cursor")).data == {"at": "todos"}  # type: ignore[union-attr]
        assert (await db.get_local("cursor")).data == {"at": "database"}  # type: ignore[union-attr]
        with pytest.raises(NotFoundError) as caught:
            db.local_documents("nope")
        assert caught.value.code == "COLLECTION_NOT_FOUND"
    async with p2pdb.create_database(db_path) as db:  # reopened: both are there
        got = await db.get_local("cursor")
        assert got is not None and got.data == {"at": "database"}
        stored = await db.local_documents("todos").get_local("cursor")  # stored, not added
        assert stored is not None and stored.collection == "todos"
        assert [d.id for d in await db.local_documents("todos").list_local()] == ["cursor"]
    with sqlite3.connect(db_path) as conn:  # their own table, not documents
        rows = conn.execute("SELECT parent, id FROM p2pdb_local ORDER BY parent").fetchall()
        assert rows == [("", "cursor"), ("todos", "cursor")]
        assert conn.execute('SELECT count(*) FROM "col_todos"').fetchone() == (0,)


async def test_observe_local_emits_now_then_each_state_and_none_on_removal(
    db: p2pdb.Database,
) -> None:
    seen: list[LocalDocument | None] = []
    sub = db.observe_local("state").subscribe(seen.append)
    assert seen == [None]
    first = await db.insert_local("state", {"n": 1})
    await db.upsert_local("state", {"n": 2})
    await db.insert_local("other", {"n": 9})  # another id: not emitted
    await first.remove()
    await db.upsert_local("state", {"n": 3})
    sub.dispose()
    assert [None if d is None else d.data["n"] for d in seen] == [None, 1, 2, None, 3]
    changes: list[LocalDocument] = []
    db.local_documents().changes.subscribe(changes.append)
    doc = await db.get_local("state")
    assert doc is not None
    later: list[LocalDocument | None] = []
    doc.observe().subscribe(later.append)
    await db.remove_local("state")
    assert [(c.id, c.deleted) for c in changes] == [("state", True)]
    assert later == [later[0], None] and later[0] is not None and later[0].data == {"n": 3}


async def test_local_documents_are_not_replicated(tmp_path: object) -> None:
    async with (
        p2pdb.create_database(":memory:") as a,
        p2pdb.create_database(":memory:") as b,
    ):
        todos_a = await a.add_collection("todos", schema=TODO_SCHEMA)
        todos_b = await b.add_collection("todos", schema=TODO_SCHEMA)
        await a.local_documents("todos").insert_local("secret", {"device": "a"})
        await a.insert_local("secret", {"device": "a"})
        await todos_a.insert({"id": "t", "text": "shared"})
        state = replicate(todos_b, collection_handler(todos_a), "r1", autostart=True)
        await state.wait_for_in_sync()
        await state.cancel()
        assert await todos_b.find_one("t") is not None  # documents went over
        assert await b.get_local("secret") is None
        assert await b.local_documents("todos").get_local("secret") is None


async def test_closed_database_refuses(db_path: str) -> None:
    db = await p2pdb.create_database(db_path)
    store = db.local_documents()
    done: list[bool] = []
    store.changes.subscribe(on_completed=lambda: done.append(True))
    await db.close()
    assert done == [True]
    with pytest.raises(p2pdb.ClosedError):
        await store.upsert_local("x", {})
    with pytest.raises(p2pdb.ClosedError):
        await db.get_local("x")


async def test_patch_and_modify_apply_again_on_a_newer_state(db: p2pdb.Database) -> None:
    doc = await db.insert_local("counter", {"n": 0, "label": "clicks"})
    patched = await doc.patch({"n": 1})
    assert patched.data == {"n": 1, "label": "clicks"} and patched.revision.startswith("2-")
    calls: list[int] = []

    async def add_ten(value: dict[str, Any]) -> dict[str, Any]:
        calls.append(value["n"])
        if len(calls) == 1:  # another write gets in between the read and the write
            await db.upsert_local("counter", {"n": 100, "label": "clicks"})
        return {**value, "n": value["n"] + 10}

    result = await doc.modify(add_ten)  # from a stale snapshot: reads the latest first
    assert calls == [1, 100] and result.data == {"n": 110, "label": "clicks"}
    assert (await db.get_local("counter")).data["n"] == 110  # type: ignore[union-attr]
    with pytest.raises(ValidationError) as caught:
        await doc.modify(lambda value: ["not a dict"])  # type: ignore[arg-type, return-value]
    assert caught.value.code == "LOCAL_DOCUMENT_NOT_OBJECT"
    await db.remove_local("counter")
    with pytest.raises(NotFoundError) as missing:
        await doc.patch({"n": 0})
    assert missing.value.code == "LOCAL_DOCUMENT_NOT_FOUND"


async def test_collection_methods_use_the_collections_own_set(db: p2pdb.Database) -> None:
    todos = await db.add_collection("todos", schema=TODO_SCHEMA)
    doc = await todos.insert_local("cursor", {"page": 1})
    assert doc.collection == "todos"
    with pytest.raises(ConflictError):
        await todos.insert_local("cursor", {"page": 2})
    assert (await todos.upsert_local("cursor", {"page": 3})).data == {"page": 3}
    assert (await todos.get_local("cursor")).data == {"page": 3}
    assert await db.get_local("cursor") is None
    assert (await todos.remove_local("cursor")).deleted
    assert await db.local_documents("todos").get_local("cursor") is None
