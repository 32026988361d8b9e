"""The core database API on real SQLite files: the calls of the README, exactly as written."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.errors import (
    ClosedError,
    ConflictError,
    NotFoundError,
    QueryError,
    SchemaError,
    ValidationError,
)


async def test_the_documented_calls(db_path: str) -> None:
    db = await p2pdb.create_database(db_path)
    todos = await db.add_collection("todos", schema=TODO_SCHEMA)
    assert db.collections["todos"] is todos
    doc = await todos.insert({"id": "a", "text": "milk", "done": False, "n": 1})
    assert isinstance(doc, p2pdb.Document)
    assert (doc["text"], doc.id, doc.deleted) == ("milk", "a", False)
    assert doc.revision.startswith("1-")
    assert doc.to_dict() == {"id": "a", "text": "milk", "done": False, "n": 1}
    result = await todos.bulk_insert(
        [{"id": "b", "text": "eggs", "done": True, "n": 2}, {"id": "c", "text": "jam", "n": 3}]
    )
    assert [d.id for d in result.success] == ["b", "c"] and result.errors == []
    await todos.upsert({"id": "c", "text": "jam!", "n": 3})
    await todos.bulk_upsert([{"id": "d", "text": "tea", "done": False, "n": 0}])
    assert (await todos.find_one("c"))["text"] == "jam!"  # type: ignore[index]
    assert (await todos.find_one({"done": False})) is not None
    docs = await todos.find({"done": False}, sort=[{"n": "asc"}], skip=0, limit=10)
    assert [d.id for d in docs] == ["d", "a"]
    assert await todos.count({"done": False}) == 2
    by_id = await todos.find_by_ids(["a", "b", "zzz"])
    assert sorted(by_id) == ["a", "b"]
    removed = await todos.remove({"done": True})
    assert [d.id for d in removed] == ["b"] and removed[0].deleted
    doc = await doc.patch({"done": True})
    assert doc["done"] is True and doc.revision.startswith("2-")
    doc = await doc.modify(lambda data: {**data, "n": data["n"] + 1})
    assert doc["n"] == 2
    await doc.remove()
    assert await todos.find_one("a") is None
    await db.close()


async def test_async_with_and_memory() -> None:
    async with p2pdb.create_database(":memory:") as db:
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        await todos.insert({"id": "x", "text": "t"})
        assert await todos.count() == 1
    assert db.closed
    with pytest.raises(ClosedError) as info:
        await todos.insert({"id": "y", "text": "t"})
    assert info.value.code == "DATABASE_CLOSED"


async def test_documents_are_read_only_snapshots(todos: p2pdb.Collection) -> None:
    data: dict[str, Any] = {"id": "a", "text": "milk", "tags": ["x"]}
    doc = await todos.insert(data)
    data["tags"].append("changed by caller")
    assert doc["tags"] == ["x"]
    copy = doc.to_dict()
    copy["tags"].append("y")
    assert doc["tags"] == ["x"]
    with pytest.raises(TypeError):
        doc["text"] = "nope"  # type: ignore[index]
    with pytest.raises(KeyError):
        doc["_rev"]


async def test_persists_across_reopen(db_path: str) -> None:
    async with p2pdb.create_database(db_path) as db:
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        await todos.bulk_insert([{"id": f"d{i}", "text": str(i), "n": i} for i in range(50)])
        await (await todos.find_one("d3")).remove()  # type: ignore[union-attr]
        token = db.token
    async with p2pdb.create_database(db_path) as db:
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        assert db.token == token
        assert await todos.count() == 49
        assert (await todos.find_one("d7"))["n"] == 7  # type: ignore[index]
        # a removed id can be inserted again; its revision keeps growing
        again = await todos.insert({"id": "d3", "text": "back"})
        assert again.revision.startswith("3-")


async def test_revisions_sequence_and_lwt(db: p2pdb.Database, todos: p2pdb.Collection) -> None:
    a = await todos.insert({"id": "a", "text": "1"})
    b = await a.patch({"text": "2"})
    state_a, state_b = a.to_dict(include_meta=True), b.to_dict(include_meta=True)
    assert state_b["_meta"]["lwt"] > state_a["_meta"]["lwt"]
    assert state_b["_deleted"] is False
    changes, last = db.storage.changes_since("todos", 0, 10)
    assert [s["_rev"] for _, s in changes] == [b.revision]
    assert last == changes[-1][0]
    tomb = await b.remove()
    changes, last2 = db.storage.changes_since("todos", last, 10)
    assert [(s["id"], s["_deleted"]) for _, s in changes] == [("a", True)]
    assert tomb.deleted and last2 > last


async def test_stale_revision_conflicts_and_keeps_data(todos: p2pdb.Collection) -> None:
    a1 = await todos.insert({"id": "a", "text": "1"})
    a2 = await a1.patch({"text": "2"})
    with pytest.raises(ConflictError) as info:
        await a1.replace({"id": "a", "text": "stale"})
    assert info.value.code == "CONFLICT"
    assert info.value.document is not None and info.value.document["_rev"] == a2.revision
    assert (await todos.find_one("a"))["text"] == "2"  # type: ignore[index]
    # patch and modify re-apply on the newest state instead
    a3 = await a1.patch({"done": True})
    assert a3.to_dict() == {"id": "a", "text": "2", "done": True}


async def test_concurrent_modify_loses_no_update(todos: p2pdb.Collection) -> None:
    doc = await todos.insert({"id": "counter", "text": "c", "n": 0})

    async def bump() -> None:
        await doc.modify(lambda data: {**data, "n": data["n"] + 1})

    await asyncio.gather(*(bump() for _ in range(50)))
    final = await todos.find_one("counter")
    assert final is not None and final["n"] == 50
    assert final.revision.startswith("51-")


async def test_bad_input_raises_typed_errors_and_changes_nothing(
    todos: p2pdb.Collection,
) -> None:
    await todos.insert({"id": "a", "text": "keep", "n": 1})
    bad_docs: list[tuple[Any, str]] = [
        ({"id": "b", "text": 5}, "DOCUMENT_INVALID"),  # wrong type
        ({"id": "b"}, "DOCUMENT_INVALID"),  # missing required field
        ({"id": "b", "text": "x", "n": -1}, "DOCUMENT_INVALID"),  # minimum
        ({"text": "no id"}, "DOCUMENT_PRIMARY_KEY"),
        ({"id": 7, "text": "x"}, "DOCUMENT_PRIMARY_KEY"),
        ({"id": "", "text": "x"}, "DOCUMENT_PRIMARY_KEY"),
        ({"id": "b", "text": "x", "_rev": "1-x"}, "DOCUMENT_RESERVED_FIELD"),
        ({"id": "b", "text": "x", "tags": {1, 2}}, "DOCUMENT_NOT_JSON"),
        (["not", "a", "dict"], "DOCUMENT_NOT_OBJECT"),
    ]
    for bad, code in bad_docs:
        with pytest.raises(ValidationError) as info:
            await todos.insert(bad)
        assert info.value.code == code, bad
    with pytest.raises(ValidationError) as info:
        await todos.insert({"id": "b", "text": 5})
    assert info.value.parameters["field"] == "text"
    assert "text" in str(info.value)
    with pytest.raises(ConflictError) as dup:
        await todos.insert({"id": "a", "text": "dup"})
    assert dup.value.code == "DOCUMENT_EXISTS"
    with pytest.raises(QueryError):
        await todos.find({"n": {"$bogus": 1}})
    a = await todos.find_one("a")
    assert a is not None
    with pytest.raises(ValidationError) as pk_change:
        await a.replace({"id": "zz", "text": "x"})
    assert pk_change.value.code == "DOCUMENT_PRIMARY_KEY_CHANGED"
    with pytest.raises(ValidationError):
        await a.patch({"n": "not a number"})
    gone = await todos.insert({"id": "gone", "text": "x"})
    await gone.remove()
    with pytest.raises(NotFoundError) as missing:
        await gone.patch({"text": "y"})
    assert missing.value.code == "DOCUMENT_NOT_FOUND"
    docs = await todos.find()
    assert [d.to_dict() for d in docs] == [{"id": "a", "text": "keep", "n": 1}]


async def test_bulk_insert_writes_valid_and_reports_invalid(todos: p2pdb.Collection) -> None:
    await todos.insert({"id": "taken", "text": "x"})
    result = await todos.bulk_insert(
        [
            {"id": "ok1", "text": "a"},
            {"id": "bad", "text": 1},
            {"id": "taken", "text": "dup"},
            {"id": "ok2", "text": "b"},
            "junk",  # type: ignore[list-item]
        ]
    )
    assert [d.id for d in result.success] == ["ok1", "ok2"]
    assert [(e.code, e.parameters["index"]) for e in result.errors] == [
        ("DOCUMENT_INVALID", 1),
        ("DOCUMENT_EXISTS", 2),
        ("DOCUMENT_NOT_OBJECT", 4),
    ]
    assert result.errors[0].parameters["document_id"] == "bad"
    assert await todos.count() == 3


async def test_schema_rules(db: p2pdb.Database, db_path: str) -> None:
    bad_schemas: list[tuple[Any, str]] = [
        ("nope", "SCHEMA_NOT_OBJECT"),
        ({**TODO_SCHEMA, "primaryKey": "missing"}, "SCHEMA_PRIMARY_KEY"),
        ({**TODO_SCHEMA, "primaryKey": "n"}, "SCHEMA_PRIMARY_KEY"),
        (
            {**TODO_SCHEMA, "properties": {**TODO_SCHEMA["properties"], "id": {"type": "string"}}},
            "SCHEMA_PRIMARY_KEY",
        ),
        ({**TODO_SCHEMA, "indexes": ["nope"]}, "SCHEMA_BAD_INDEX"),
        ({**TODO_SCHEMA, "version": -1}, "SCHEMA_BAD_VERSION"),
        (
            {**TODO_SCHEMA, "properties": {**TODO_SCHEMA["properties"], "_x": {}}},
            "SCHEMA_RESERVED_PROPERTY",
        ),
        ({**TODO_SCHEMA, "required": "id"}, "SCHEMA_INVALID_JSON_SCHEMA"),
        (
            {**TODO_SCHEMA, "properties": {**TODO_SCHEMA["properties"], "q": {"type": "nope"}}},
            "SCHEMA_INVALID_JSON_SCHEMA",
        ),
    ]
    for bad, code in bad_schemas:
        with pytest.raises(SchemaError) as info:
            await db.add_collection("c", schema=bad)
        assert info.value.code == code, bad
    with pytest.raises(ValidationError) as name_info:
        await db.add_collection("Bad Name", schema=TODO_SCHEMA)
    assert name_info.value.code == "COLLECTION_NAME"
    await db.add_collection("todos", schema=TODO_SCHEMA)
    with pytest.raises(SchemaError):
        await db.add_collection("todos", schema=TODO_SCHEMA)
    await db.close()
    changed = {**TODO_SCHEMA, "properties": {**TODO_SCHEMA["properties"], "x": {"type": "string"}}}
    async with p2pdb.create_database(db_path) as again:
        with pytest.raises(SchemaError) as mismatch:
            await again.add_collection("todos", schema=changed)
        assert mismatch.value.code == "SCHEMA_MISMATCH"
        await again.add_collection("todos", schema={**changed, "version": 1})


async def test_indexed_query_uses_its_index(db: p2pdb.Database, todos: p2pdb.Collection) -> None:
    query = todos.find({"n": {"$gt": 5}}, sort=[{"n": "asc"}], limit=10)
    sql = (
        f'SELECT id FROM "col_todos" WHERE deleted = 0 AND ({query.compiled.where_sql}) '
        f"ORDER BY {query.compiled.order_sql} LIMIT 10"
    )
    conn = sqlite3.connect(db.path)
    plan = " ".join(
        r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, query.compiled.where_params)
    )
    conn.close()
    assert "ix_todos__n" in plan and "TEMP B-TREE" not in plan, plan


async def test_query_sort_skip_limit(todos: p2pdb.Collection) -> None:
    await todos.bulk_insert(
        [{"id": f"d{i:02}", "text": "t", "n": i % 5, "done": i % 2 == 0} for i in range(20)]
    )
    docs = await todos.find({"n": {"$gte": 3}}, sort=[{"n": "desc"}], skip=2, limit=3)
    # ties break on the primary key, in the direction of the last sort field
    assert [(d["n"], d.id) for d in docs] == [(4, "d09"), (4, "d04"), (3, "d18")]
    assert await todos.count({"n": {"$in": [1, 2]}}) == 8
    first = await todos.find_one({"done": True}, sort=[{"n": "desc"}])
    assert first is not None and first.id == "d14"


OPENER = """
import asyncio, sys
sys.path.insert(0, {tests!r})
import p2pdb
from schemas import TODO_SCHEMA

async def main():
    async with p2pdb.create_database({path!r}) as db:
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        await todos.insert({{"id": sys.argv[1], "text": "x"}})

asyncio.run(main())
"""


@pytest.mark.slow
async def test_processes_creating_one_new_file_at_once(tmp_path: Path) -> None:
    for round_ in range(4):
        path = str(tmp_path / f"new{round_}.db")
        code = OPENER.format(tests=str(Path(__file__).parent), path=path)
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", code, name, stderr=asyncio.subprocess.PIPE
            )
            for name in ("first", "second", "third")
        ]
        for child in children:
            _, err = await child.communicate()
            assert child.returncode == 0, err.decode()
        async with p2pdb.create_database(path) as db:
            todos = await db.add_collection("todos", schema=TODO_SCHEMA)
            assert sorted(d.id for d in await todos.find()) == ["first", "second", "third"]


async def test_a_database_starts_nothing_until_started_and_stops_everything_on_close(
    db_path: str,
) -> None:
    from p2pdb.database import Database
    from p2pdb.storage import SQLiteStorage

    storage = await SQLiteStorage.open(db_path)
    before = asyncio.all_tasks()
    db = Database(storage)
    assert asyncio.all_tasks() == before  # the constructor starts no task
    async with db:
        started = asyncio.all_tasks() - before
        assert len(started) == 1  # the tailer, started by async with / start()
        assert await db.start() is db  # starting again changes nothing
        assert asyncio.all_tasks() - before == started
    assert db.closed
    assert all(task.done() for task in started)


async def test_a_started_database_notices_other_writers(db_path: str) -> None:
    from p2pdb.database import Database
    from p2pdb.storage import SQLiteStorage

    other = await p2pdb.create_database(db_path)
    others = await other.add_collection("todos", schema=TODO_SCHEMA)
    db = Database(await SQLiteStorage.open(db_path))
    todos = await db.add_collection("todos", schema=TODO_SCHEMA)
    seen: list[str] = []
    arrived = asyncio.Event()
    todos.changes.subscribe(lambda event: (seen.append(event.id), arrived.set()))
    await db.start()
    await others.insert({"id": "x", "text": "from another Database object"})
    await asyncio.wait_for(arrived.wait(), 5)
    assert seen == ["x"]
    await other.close()
    await db.close()


async def test_password_without_an_encryption_provider_says_what_to_install(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    import p2pdb.database
    from p2pdb.errors import EncryptionError

    assert p2pdb.database.encryption_provider().__name__ == "PasswordEncryption"
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])
    with pytest.raises(EncryptionError) as caught:
        await p2pdb.create_database(db_path, password="correct horse battery")
    assert caught.value.code == "ENCRYPTION_UNAVAILABLE"
    assert not await asyncio.to_thread(Path(db_path).exists)  # found out before creating it
