"""Composite primary keys (RxDB's ``primaryKey: {key, fields, separator}``) on real SQLite
files: the key filled in and checked on every write, its fields final, schema checks,
queries and indexes, encryption, and replication between two p2pdb files over the wire's
in-memory pipe."""

from __future__ import annotations

import asyncio
import copy
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import p2pdb
from p2pdb import ConflictError, SchemaError, ValidationError
from p2pdb.primary_key import js_number_string
from p2pdb.replication import WriteRow, collection_handler, replicate
from p2pdb.replication.testing import WirePipe

PEOPLE: dict[str, Any] = {
    "version": 0,
    "primaryKey": {"key": "id", "fields": ["firstName", "lastName"], "separator": "|"},
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 40},
        "firstName": {"type": "string", "maxLength": 20},
        "lastName": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0},
        "note": {"type": "string"},
    },
    "required": ["firstName", "lastName"],
    "indexes": ["lastName", ["lastName", "age"]],
}


def ada(**more: Any) -> dict[str, Any]:
    return {"firstName": "Ada", "lastName": "Lovelace", "age": 36, **more}


@pytest.fixture
async def people(db: p2pdb.Database) -> p2pdb.Collection:
    return await db.add_collection("people", schema=PEOPLE)


def schema_with(**changes: Any) -> dict[str, Any]:
    schema = copy.deepcopy(PEOPLE)
    schema.update(changes)
    return schema


# -- writes ------------------------------------------------------------------------------


async def test_insert_fills_the_key_from_the_fields(people: p2pdb.Collection) -> None:
    doc = await people.insert(ada())
    assert doc.id == "Ada|Lovelace" and doc["id"] == "Ada|Lovelace"
    assert doc.to_dict() == {**ada(), "id": "Ada|Lovelace"}
    stored = people.stored_state("Ada|Lovelace")
    assert stored is not None and stored["id"] == "Ada|Lovelace"
    # the key may be given, if it is the composition
    given = await people.insert({"id": "Alan|Turing", "firstName": "Alan", "lastName": "Turing"})
    assert given.id == "Alan|Turing"
    with pytest.raises(ConflictError) as exists:  # the same fields: the same document
        await people.insert(ada(age=1))
    assert exists.value.code == "DOCUMENT_EXISTS"


async def test_a_given_key_must_equal_the_composition(people: p2pdb.Collection) -> None:
    for wrong in ("Lovelace|Ada", "x", "", None):
        with pytest.raises(ValidationError) as error:
            await people.insert(ada(id=wrong))
        assert error.value.code == "DOCUMENT_PRIMARY_KEY_MISMATCH"
        assert error.value.parameters["document_id"] == "Ada|Lovelace"
        with pytest.raises(ValidationError) as upsert_error:
            await people.upsert(ada(id=wrong))
        assert upsert_error.value.code == "DOCUMENT_PRIMARY_KEY_MISMATCH"
    assert await people.count() == 0


async def test_upsert_and_bulk_writes_compose_each_key(people: p2pdb.Collection) -> None:
    first = await people.upsert(ada())
    second = await people.upsert(ada(age=37))  # same fields: the same document, overwritten
    assert first.id == second.id == "Ada|Lovelace" and second.revision.startswith("2-")
    result = await people.bulk_insert(
        [
            {"firstName": "Grace", "lastName": "Hopper"},
            {"firstName": "Grace"},  # lastName missing
            {"firstName": "a|b", "lastName": "c"},  # holds the separator
            {"id": "nope", "firstName": "Alan", "lastName": "Turing"},
            {"firstName": "Ada", "lastName": "Lovelace"},  # exists
        ]
    )
    assert [d.id for d in result.success] == ["Grace|Hopper"]
    codes = [(e.parameters["index"], e.code) for e in result.errors]
    assert codes == [
        (1, "DOCUMENT_PRIMARY_KEY"),
        (2, "DOCUMENT_PRIMARY_KEY_SEPARATOR"),
        (3, "DOCUMENT_PRIMARY_KEY_MISMATCH"),
        (4, "DOCUMENT_EXISTS"),
    ]
    assert result.errors[0].parameters["field"] == "lastName"
    assert result.errors[1].parameters["field"] == "firstName"
    upserted = await people.bulk_upsert([ada(age=40), {"firstName": "Alan", "lastName": "T"}])
    assert [d.id for d in upserted.success] == ["Ada|Lovelace", "Alan|T"] and not upserted.errors
    assert (await people.find_one("Ada|Lovelace"))["age"] == 40  # type: ignore[index]


async def test_missing_field_and_separator_are_refused(people: p2pdb.Collection) -> None:
    with pytest.raises(ValidationError) as missing:
        await people.insert({"firstName": "Ada", "age": 3})
    assert missing.value.code == "DOCUMENT_PRIMARY_KEY"
    assert missing.value.parameters["field"] == "lastName"
    # RxDB would store both of these under "a|b|c"; p2pdb refuses either
    for first, last in (("a|b", "c"), ("a", "b|c")):
        with pytest.raises(ValidationError) as separator:
            await people.insert({"firstName": first, "lastName": last})
        assert separator.value.code == "DOCUMENT_PRIMARY_KEY_SEPARATOR"
    with pytest.raises(ValidationError) as wrong_type:
        await people.insert({"firstName": "Ada", "lastName": None})
    assert wrong_type.value.code == "DOCUMENT_INVALID"
    assert wrong_type.value.parameters["field"] == "lastName"
    # the composed key is validated like any field: maxLength 40
    with pytest.raises(ValidationError) as too_long:
        await people.insert({"firstName": "x" * 20, "lastName": "y" * 20})
    assert too_long.value.code == "DOCUMENT_INVALID"
    assert too_long.value.parameters["field"] == "id"
    assert too_long.value.parameters["rule"] == "maxLength"
    assert await people.count() == 0


async def test_numbers_compose_as_javascript_writes_them(db: p2pdb.Database) -> None:
    schema = {
        "version": 0,
        "primaryKey": {"key": "key", "fields": ["day", "slot", "name.first"], "separator": "-"},
        "type": "object",
        "properties": {
            "key": {"type": "string", "maxLength": 100},
            "day": {"type": "integer"},
            "slot": {"type": "number"},
            "name": {"type": "object", "properties": {"first": {"type": "string"}}},
        },
    }
    slots = await db.add_collection("slots", schema=schema)
    doc = await slots.insert({"day": 3, "slot": 2.0, "name": {"first": "x"}})
    assert doc.id == "3-2-x"  # 2.0 is "2", as JavaScript's String(2.0)
    assert (await slots.insert({"day": 3, "slot": 0.5, "name": {"first": "x"}})).id == "3-0.5-x"
    assert (await slots.insert({"day": 3, "slot": 1e21, "name": {"first": "x"}})).id == (
        "3-1e+21-x"
    )
    with pytest.raises(ConflictError):  # 2 and 2.0 are one number, in JSON and in RxDB
        await slots.insert({"day": 3, "slot": 2, "name": {"first": "x"}})
    with pytest.raises(ValidationError) as negative:  # "-1" holds the separator "-"
        await slots.insert({"day": -1, "slot": 1, "name": {"first": "x"}})
    assert negative.value.code == "DOCUMENT_PRIMARY_KEY_SEPARATOR"
    assert negative.value.parameters["field"] == "day"
    with pytest.raises(ValidationError) as unsafe:
        await slots.insert({"day": 2**53, "slot": 1, "name": {"first": "x"}})
    assert unsafe.value.code == "DOCUMENT_UNSUPPORTED_VALUE"
    with pytest.raises(ValidationError) as boolean:
        await slots.insert({"day": True, "slot": 1, "name": {"first": "x"}})
    assert boolean.value.code == "DOCUMENT_INVALID"
    with pytest.raises(ValidationError) as nested_missing:
        await slots.insert({"day": 1, "slot": 1, "name": {}})
    assert nested_missing.value.code == "DOCUMENT_PRIMARY_KEY"
    assert nested_missing.value.parameters["field"] == "name.first"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2.0, "2"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (1e-7, "1e-7"),
        (1.5e-6, "0.0000015"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (-123.456, "-123.456"),
        (5e-324, "5e-324"),
        (2**53 - 1, "9007199254740991"),
    ],
)
def test_js_number_string(value: float, text: str) -> None:
    assert js_number_string(value) == text


async def test_the_fields_of_the_key_are_final(people: p2pdb.Collection) -> None:
    doc = await people.insert(ada())
    changes: list[Callable[[], Any]] = [
        lambda: doc.patch({"firstName": "Augusta"}),
        lambda: doc.patch({"id": "Other|Key"}),
        lambda: doc.modify(lambda d: {**d, "lastName": "King"}),
        # the key field left out: composed again from the new fields, still a change
        lambda: doc.modify(
            lambda d: {k: v for k, v in d.items() if k != "id"} | {"age": 1, "lastName": "K"}
        ),
        lambda: doc.replace({"firstName": "Ada", "lastName": "King"}),
        lambda: doc.replace({**doc.to_dict(), "firstName": "Augusta"}),
    ]
    for change in changes:
        with pytest.raises(ValidationError) as error:
            await change()
        assert error.value.code == "DOCUMENT_PRIMARY_KEY_CHANGED"
        assert error.value.parameters["id"] == "Ada|Lovelace"
    current = await people.find_one("Ada|Lovelace")
    assert current is not None and current.revision == doc.revision  # nothing written
    assert await people.count() == 1
    # other fields change freely; the key may be left out of the new state
    patched = await doc.patch({"age": 37, "note": "first programmer"})
    assert patched.id == "Ada|Lovelace" and patched["age"] == 37
    replaced = await patched.replace({"firstName": "Ada", "lastName": "Lovelace", "age": 38})
    assert replaced.to_dict() == {**ada(age=38), "id": "Ada|Lovelace"}
    modified = await replaced.modify(lambda d: {k: v for k, v in d.items() if k != "id"})
    assert modified.id == "Ada|Lovelace" and modified.revision.startswith("4-")
    removed = await modified.remove()
    assert removed.deleted and await people.count() == 0
    again = await people.insert(ada())  # a removed key can be inserted again
    assert again.revision.startswith("6-")


async def test_query_level_writes_keep_the_key(people: p2pdb.Collection) -> None:
    await people.bulk_insert([ada(), {"firstName": "Alan", "lastName": "Turing", "age": 41}])
    patched = await people.find({"age": {"$gt": 30}}).patch({"note": "x"})
    assert sorted(d.id for d in patched) == ["Ada|Lovelace", "Alan|Turing"]
    with pytest.raises(ValidationError) as error:
        await people.find({"lastName": "Turing"}).patch({"firstName": "Bob"})
    # query.py passes no expected id to prepare(): the key given no longer matches its fields
    assert error.value.code == "DOCUMENT_PRIMARY_KEY_CHANGED"
    assert await people.find_one("Bob|Turing") is None
    assert (await people.find_one("Alan|Turing")) is not None
    removed = await people.find({"lastName": "Lovelace"}).remove()
    assert [d.id for d in removed] == ["Ada|Lovelace"]


# -- reading -----------------------------------------------------------------------------


async def test_queries_by_the_key_and_indexes(db: p2pdb.Database, people: p2pdb.Collection) -> None:
    names = [("Ada", "Lovelace"), ("Byron", "Lovelace"), ("Alan", "Turing"), ("Grace", "Hopper")]
    await people.bulk_insert(
        [{"firstName": f, "lastName": s, "age": i} for i, (f, s) in enumerate(names)]
    )
    found = await people.find_one("Alan|Turing")
    assert found is not None and found["age"] == 2
    assert [d.id for d in await people.find({"id": {"$gte": "B"}})] == [
        "Byron|Lovelace",
        "Grace|Hopper",
    ]
    assert list(await people.find_by_ids(["Grace|Hopper", "No|One"])) == ["Grace|Hopper"]
    by_last = await people.find({"lastName": "Lovelace"}, sort=[{"age": "desc"}])
    assert [d.id for d in by_last] == ["Byron|Lovelace", "Ada|Lovelace"]
    assert [d.id for d in await people.find(sort=[{"id": "desc"}], limit=1)] == ["Grace|Hopper"]

    query = people.find({"lastName": "Lovelace"}, sort=[{"age": "asc"}], limit=5)
    sql = (
        f'SELECT id FROM "col_people" WHERE deleted = 0 AND ({query.compiled.where_sql}) '
        f"ORDER BY {query.compiled.order_sql} LIMIT 5"
    )
    conn = sqlite3.connect(db.path)
    try:
        plan = " ".join(
            r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, query.compiled.where_params)
        )
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'col_people'"
            )
        }
    finally:
        conn.close()
    assert {"ix_people__lastName", "ix_people__lastName__age"} <= indexes
    assert "ix_people__lastName__age" in plan and "TEMP B-TREE" not in plan, plan


async def test_the_schema_survives_reopening(db_path: str) -> None:
    async with p2pdb.create_database(db_path) as db:
        people = await db.add_collection("people", schema=PEOPLE)
        await people.insert(ada())
    async with p2pdb.create_database(db_path) as again:
        people = await again.add_collection("people", schema=PEOPLE)  # same hash: no mismatch
        doc = await people.find_one("Ada|Lovelace")
        assert doc is not None and doc["age"] == 36
        with pytest.raises(ValidationError) as changed:
            await doc.patch({"lastName": "King"})
        assert changed.value.code == "DOCUMENT_PRIMARY_KEY_CHANGED"


# -- schema checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("primary_key", "field"),
    [
        ({"key": "id", "fields": ["firstName"], "separator": "|", "extra": 1}, None),
        ({"fields": ["firstName"], "separator": "|"}, None),
        ({"key": 5, "fields": ["firstName"], "separator": "|"}, None),
        ({"key": "id", "fields": [], "separator": "|"}, None),
        ({"key": "id", "fields": "firstName", "separator": "|"}, None),
        ({"key": "id", "fields": ["firstName", 3], "separator": "|"}, None),
        ({"key": "id", "fields": ["firstName"]}, None),
        ({"key": "id", "fields": ["firstName"], "separator": ""}, None),
        ({"key": "id", "fields": ["firstName"], "separator": 1}, None),
        ({"key": "id", "fields": ["nickname"], "separator": "|"}, "nickname"),
        ({"key": "id", "fields": ["id", "firstName"], "separator": "|"}, "id"),
        ({"key": "id", "fields": ["flag"], "separator": "|"}, "flag"),
        ({"key": "id", "fields": ["tags"], "separator": "|"}, "tags"),
        ({"key": "id", "fields": ["free"], "separator": "|"}, "free"),
        ({"key": "id", "fields": ["meta.rank"], "separator": "|"}, "meta.rank"),
        ({"key": "missing", "fields": ["firstName"], "separator": "|"}, "missing"),
        ({"key": "age", "fields": ["firstName"], "separator": "|"}, "age"),
        ({"key": "nolimit", "fields": ["firstName"], "separator": "|"}, "nolimit"),
    ],
)
async def test_bad_composite_keys_are_schema_errors(
    db: p2pdb.Database, primary_key: dict[str, Any], field: str | None
) -> None:
    properties = {
        **PEOPLE["properties"],
        "flag": {"type": "boolean"},
        "tags": {"type": "array"},
        "free": {},
        "meta": {"type": "object", "properties": {"rank": {"type": ["number", "null"]}}},
        "nolimit": {"type": "string"},
    }
    with pytest.raises(SchemaError) as error:
        await db.add_collection(
            "bad", schema=schema_with(primaryKey=primary_key, properties=properties)
        )
    assert error.value.code == "SCHEMA_PRIMARY_KEY"
    assert error.value.parameters.get("field") == field
    assert "bad" not in db.collections


async def test_key_fields_cannot_be_encrypted(tmp_path: Path) -> None:
    async with p2pdb.create_database(str(tmp_path / "e.db"), password="a long password") as db:
        for encrypted in (["lastName"], ["firstName", "note"], ["id"]):
            with pytest.raises(SchemaError) as error:
                await db.add_collection("people", schema=schema_with(encrypted=encrypted))
            assert error.value.code == "SCHEMA_ENCRYPTED_PRIMARY_KEY"


async def test_encrypted_collection_with_a_composite_key(tmp_path: Path) -> None:
    path = str(tmp_path / "secret.db")
    schema = schema_with(encrypted=["note"])
    async with p2pdb.create_database(path, password="a long password") as db:
        people = await db.add_collection("people", schema=schema)
        await people.insert(ada(note="the analytical engine's secret"))
        doc = await people.find_one({"lastName": "Lovelace"})
        assert doc is not None and doc.id == "Ada|Lovelace"
        with pytest.raises(ValidationError) as changed:
            await doc.patch({"firstName": "Augusta", "note": "another secret"})
        assert changed.value.code == "DOCUMENT_PRIMARY_KEY_CHANGED"
        await doc.patch({"note": "a newer secret"})
    raw = await asyncio.to_thread(Path(path).read_bytes)
    assert b"Ada|Lovelace" in raw  # the key is in clear, as RxDB keeps it
    assert b"secret" not in raw
    async with p2pdb.create_database(path, password="a long password") as db:
        people = await db.add_collection("people", schema=schema)
        doc = await people.find_one("Ada|Lovelace")
        assert doc is not None and doc["note"] == "a newer secret"


# -- replication between two p2pdb files -------------------------------------------------


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[p2pdb.Collection, p2pdb.Collection]]:
    master_db = await p2pdb.create_database(str(tmp_path / "master.db"))
    fork_db = await p2pdb.create_database(str(tmp_path / "fork.db"))
    try:
        master = await master_db.add_collection("people", schema=PEOPLE)
        fork = await fork_db.add_collection("people", schema=PEOPLE)
        yield master, fork
    finally:
        await fork_db.close()
        await master_db.close()


async def contents(collection: p2pdb.Collection) -> list[dict[str, Any]]:
    return [d.to_dict() for d in await collection.find()]


async def wait_same(a: p2pdb.Collection, b: p2pdb.Collection, seconds: float = 15.0) -> None:
    """Wait, woken by each commit on either side, until both hold the same documents."""
    changed = asyncio.Event()
    subs = [c.batches.subscribe(lambda _batch: changed.set()) for c in (a, b)]
    try:
        async with asyncio.timeout(seconds):
            while True:
                changed.clear()  # before reading, so a commit during the reads is not lost
                if await contents(a) == await contents(b):
                    return
                await changed.wait()
    finally:
        for sub in subs:
            sub.dispose()


async def test_replication_over_the_wire_both_ways(
    pair: tuple[p2pdb.Collection, p2pdb.Collection],
) -> None:
    master, fork = pair
    await master.bulk_insert([ada(), {"firstName": "Alan", "lastName": "Turing"}])
    await fork.insert({"firstName": "Grace", "lastName": "Hopper", "age": 85})
    async with WirePipe(collection_handler(master)) as pipe:
        state = replicate(fork, pipe.handler, "composite")
        errors: list[Exception] = []
        state.errors.subscribe(errors.append)
        try:
            await state.wait_for_in_sync()
            await wait_same(master, fork)
            assert [d["id"] for d in await contents(fork)] == [
                "Ada|Lovelace",
                "Alan|Turing",
                "Grace|Hopper",
            ]
            # live: an update on each side, a removal, an insert without the key field
            ada_on_fork = await fork.find_one("Ada|Lovelace")
            assert ada_on_fork is not None
            await ada_on_fork.patch({"age": 37})
            grace = await master.find_one("Grace|Hopper")
            assert grace is not None
            await grace.patch({"note": "COBOL"})
            alan = await master.find_one("Alan|Turing")
            assert alan is not None
            await alan.remove()
            await fork.insert({"firstName": "Katherine", "lastName": "Johnson"})
            await wait_same(master, fork)
            got = {d["id"]: d for d in await contents(master)}
            assert set(got) == {"Ada|Lovelace", "Grace|Hopper", "Katherine|Johnson"}
            assert got["Ada|Lovelace"]["age"] == 37 and got["Grace|Hopper"]["note"] == "COBOL"
            tombstone = fork.stored_state("Alan|Turing")
            assert tombstone is not None and tombstone["_deleted"] is True
            assert errors == [] and pipe.errors == []
        finally:
            await state.cancel()


async def test_a_master_refuses_rows_whose_key_is_not_their_composition(
    pair: tuple[p2pdb.Collection, p2pdb.Collection],
) -> None:
    master, _ = pair
    handler = collection_handler(master)
    good = {"firstName": "Ada", "lastName": "Lovelace", "id": "Ada|Lovelace", "_deleted": False}
    forged = {"firstName": "Eve", "lastName": "X", "id": "Ada|Lovelace", "_deleted": False}
    split = {"firstName": "a|b", "lastName": "c", "id": "a|b|c", "_deleted": False}
    with pytest.raises(ValidationError) as error:
        await handler.write([WriteRow(doc) for doc in (good, forged, split)])
    assert error.value.code == "REPLICATION_PUSH_INVALID"
    assert error.value.parameters["ids"] == ["Ada|Lovelace", "a|b|c"]  # the forged one, split
    stored = await contents(master)
    assert stored == [{"firstName": "Ada", "lastName": "Lovelace", "id": "Ada|Lovelace"}]
