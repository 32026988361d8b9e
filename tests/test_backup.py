"""``db.export_json()`` / ``db.import_json()`` on real SQLite files: the versioned dump,
tombstones and replication state only when asked for, validation before any write, one
transaction per collection, encrypted collections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from schemas import PEER_SCHEMA, TODO_SCHEMA

import p2pdb
from p2pdb import ExportOptions, ImportOptions, SchemaError, ValidationError
from p2pdb.changes import ChangeEvent
from p2pdb.replication import collection_handler, replicate

PASSWORD = "correct horse battery staple"
SECRET_SCHEMA: dict[str, Any] = {
    **PEER_SCHEMA,
    "properties": {**PEER_SCHEMA["properties"], "body": {"type": "string"}},
    "encrypted": ["body"],
}


async def fill(db: p2pdb.Database) -> tuple[p2pdb.Collection, p2pdb.Collection]:
    todos = await db.add_collection("todos", schema=TODO_SCHEMA)
    notes = await db.add_collection("notes", schema=PEER_SCHEMA)
    await todos.bulk_insert([{"id": f"t{i}", "text": f"task {i}", "n": i} for i in range(20)])
    await todos.find({"n": {"$gte": 15}}).remove()
    await notes.insert({"id": "n1", "text": "note"})
    return todos, notes


async def live(collection: p2pdb.Collection) -> dict[str, dict[str, Any]]:
    return {d.id: d.to_dict() for d in await collection.find()}


async def test_export_then_import_into_a_new_file(tmp_path: Path) -> None:
    async with p2pdb.create_database(tmp_path / "a.db") as a:
        todos, notes = await fill(a)
        dump = await a.export_json()
        expected = {"todos": await live(todos), "notes": await live(notes)}
        assert dump["format"] == "p2pdb" and dump["version"] == 1
        assert dump["instanceToken"] == a.token
        assert [c["name"] for c in dump["collections"]] == ["notes", "todos"]
        todos_dump = dump["collections"][1]
        assert todos_dump["schema"] == TODO_SCHEMA | {"required": ["id", "text"]}
        assert len(todos_dump["docs"]) == 15  # no tombstones unless asked
        assert all(set(d) <= {"id", "text", "n"} for d in todos_dump["docs"])  # no _rev/_meta
        assert "replications" not in todos_dump
        orjson.dumps(dump)  # JSON-ready as it is
    async with p2pdb.create_database(tmp_path / "b.db") as b:
        report = await b.import_json(dump)
        assert report.written == {"notes": 1, "todos": 15}
        assert sorted(report.created) == ["notes", "todos"]
        got = {name: await live(b.collections[name]) for name in ("todos", "notes")}
        assert got == expected


async def test_tombstones_and_replication_state_only_when_asked(tmp_path: Path) -> None:
    async with (
        p2pdb.create_database(tmp_path / "a.db") as a,
        p2pdb.create_database(":memory:") as other,
    ):
        todos, _ = await fill(a)
        remote = await other.add_collection("todos", schema=TODO_SCHEMA)
        state = replicate(todos, collection_handler(remote), "r1", autostart=True)
        await state.wait_for_in_sync()
        await state.cancel()
        dump = await a.export_json(
            ExportOptions(collections=["todos"], tombstones=True, replication_state=True)
        )
        (entry,) = dump["collections"]
        assert len(entry["docs"]) == 20
        assert sorted(d["id"] for d in entry["docs"] if d.get("_deleted")) == [
            f"t{i}" for i in range(15, 20)
        ]
        replication = entry["replications"]["r1"]
        assert replication["down"] == a.storage.get_checkpoint("todos", "r1", "down")
        assert replication["up"] is not None and len(replication["assumed"]) == 20
    async with p2pdb.create_database(tmp_path / "b.db") as b:
        await b.import_json(dump, ImportOptions(replication_state=True))
        copy = b.collections["todos"]
        assert await copy.count() == 15
        tombstone = copy.stored_state("t16")
        assert tombstone is not None and tombstone["_deleted"]
        assert b.storage.get_checkpoint("todos", "r1", "down") == replication["down"]
        assert b.storage.get_checkpoint("todos", "r1", "up") is None  # source-file sequence
        assert b.storage.get_assumed("todos", "r1", ["t1"])["t1"]["text"] == "task 1"
    async with p2pdb.create_database(tmp_path / "c.db") as c:
        await c.import_json(dump, ImportOptions(tombstones=False))  # neither
        assert c.collections["todos"].stored_state("t16") is None
        assert c.storage.list_replications() == []


async def test_import_validates_everything_before_writing_anything(tmp_path: Path) -> None:
    async with p2pdb.create_database(tmp_path / "a.db") as a:
        await fill(a)
        dump = await a.export_json()
    async with p2pdb.create_database(tmp_path / "b.db") as b:
        notes = await b.add_collection("notes", schema=PEER_SCHEMA)
        await notes.insert({"id": "mine", "text": "kept"})
        batches: list[list[ChangeEvent]] = []
        b.changes.subscribe(lambda e: batches.append([e]))
        bad = orjson.loads(orjson.dumps(dump))
        bad["collections"][1]["docs"][7]["n"] = -5  # todos: breaks "minimum": 0
        with pytest.raises(ValidationError) as caught:
            await b.import_json(bad)
        error = caught.value
        assert error.code == "DOCUMENT_INVALID"
        assert error.parameters["collection"] == "todos" and error.parameters["index"] == 7
        assert batches == [] and "todos" not in b.collections  # notes came first: not written
        assert await notes.count() == 1
        for broken, code in (
            ([], "BACKUP_BAD_FORMAT"),
            ({"format": "other", "collections": []}, "BACKUP_BAD_FORMAT"),
            ({"format": "p2pdb", "version": 2, "collections": []}, "BACKUP_UNSUPPORTED_VERSION"),
            ({"collections": [{"name": "notes"}]}, "BACKUP_BAD_FORMAT"),
            ({"collections": [{"name": "notes", "docs": ["x"]}]}, "BACKUP_BAD_FORMAT"),
        ):
            with pytest.raises(ValidationError) as caught:
                await b.import_json(broken)  # type: ignore[arg-type]
            assert caught.value.code == code
        other = orjson.loads(orjson.dumps(dump))
        other["collections"][0]["schema"]["required"] = ["id"]
        await b.close()
    async with p2pdb.create_database(tmp_path / "b.db") as b:  # notes stored, not added
        with pytest.raises(SchemaError) as mismatch:
            await b.import_json(other)
        assert mismatch.value.code == "SCHEMA_MISMATCH"
        assert b.storage.stored_schemas().keys() == {"notes"}


async def test_each_collection_is_one_transaction_and_upserts(tmp_path: Path) -> None:
    async with p2pdb.create_database(tmp_path / "a.db") as a:
        await fill(a)
        dump = await a.export_json()
    async with p2pdb.create_database(tmp_path / "b.db") as b:
        todos = await b.add_collection("todos", schema=TODO_SCHEMA)
        await todos.insert({"id": "t1", "text": "old", "n": 99})
        batches: list[list[ChangeEvent]] = []
        todos.batches.subscribe(batches.append)
        report = await b.import_json(dump, ImportOptions(collections=["todos"]))
        assert report.written == {"todos": 15} and report.created == []
        assert len(batches) == 1 and len(batches[0]) == 15
        t1 = await todos.find_one("t1")
        assert t1 is not None and t1["text"] == "task 1" and t1.revision.startswith("2-")
        assert "notes" not in b.collections


async def test_an_rxdb_dump_is_read(tmp_path: Path) -> None:
    rxdb_dump = {  # the shape of RxDB's db.exportJSON()
        "name": "heroes",
        "instanceToken": "abc",
        "collections": [
            {
                "name": "notes",
                "schemaHash": "whatever",
                "docs": [
                    {"id": "a", "text": "x", "_deleted": False, "_meta": {"lwt": 1}},
                    {"id": "b", "text": "y", "_deleted": True, "_meta": {"lwt": 2}},
                ],
            }
        ],
    }
    async with p2pdb.create_database(tmp_path / "b.db") as b:
        with pytest.raises(p2pdb.NotFoundError) as caught:
            await b.import_json(rxdb_dump)
        assert caught.value.code == "BACKUP_MISSING_COLLECTION"
        notes = await b.add_collection("notes", schema=PEER_SCHEMA)
        await b.import_json(rxdb_dump)
        assert [d.id for d in await notes.find()] == ["a"]
        assert notes.stored_state("b")["_deleted"]  # type: ignore[index]


async def test_encrypted_collections_round_trip_in_plaintext_only_when_unlocked(
    tmp_path: Path,
) -> None:
    async with p2pdb.create_database(tmp_path / "a.db", password=PASSWORD) as a:
        secrets = await a.add_collection("secrets", schema=SECRET_SCHEMA)
        await secrets.insert({"id": "s", "text": "t", "body": "the secret"})
        dump = await a.export_json()
    assert dump["collections"][0]["docs"] == [{"id": "s", "text": "t", "body": "the secret"}]
    with pytest.raises(p2pdb.EncryptionError) as caught:
        await p2pdb.create_database(tmp_path / "a.db")  # locked: no export at all
    assert caught.value.code == "ENCRYPTION_PASSWORD_REQUIRED"
    async with p2pdb.create_database(tmp_path / "b.db") as plain:
        with pytest.raises(p2pdb.EncryptionError) as refused:
            await plain.import_json(dump)  # no password: the schema needs one
        assert refused.value.code == "ENCRYPTION_NO_PASSWORD"
    async with p2pdb.create_database(tmp_path / "c.db", password=PASSWORD) as c:
        await c.import_json(dump)
        got = await c.collections["secrets"].find_one("s")
        assert got is not None and got["body"] == "the secret"
    assert b"the secret" not in (tmp_path / "c.db").read_bytes()


async def test_the_cli_export_writes_the_documents_of_export_json(tmp_path: Path) -> None:
    import io

    from p2pdb.commands.exporting import export_lines

    path = tmp_path / "a.db"
    async with p2pdb.create_database(path) as a:
        await fill(a)
        dump = await a.export_json(ExportOptions(tombstones=True))
    out = io.StringIO()
    written = await export_lines(str(path), out, tombstones=True)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert written == {"notes": 1, "todos": 20}
    for entry in dump["collections"]:
        name = entry["name"]
        assert [x["document"] for x in lines if x["collection"] == name and "document" in x] == (
            entry["docs"]
        )
        assert {"collection": name, "schema": entry["schema"]} in lines
