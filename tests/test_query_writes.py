"""Query-level writes: ``find(...).patch/modify/remove`` and the same on ``find_one``, each in
one transaction, with change events, on a real SQLite file."""

from __future__ import annotations

from typing import Any

import pytest

import p2pdb
from p2pdb import ConflictError, QueryError, ValidationError
from p2pdb.changes import ChangeEvent


async def fill(todos: p2pdb.Collection) -> None:
    result = await todos.bulk_insert(
        [{"id": f"t{i}", "text": f"task {i}", "n": i, "done": i % 2 == 0} for i in range(10)]
    )
    assert not result.errors


def record(todos: p2pdb.Collection) -> list[list[ChangeEvent]]:
    batches: list[list[ChangeEvent]] = []
    todos.batches.subscribe(batches.append)
    return batches


async def test_find_patch_writes_every_match_in_one_transaction(todos: p2pdb.Collection) -> None:
    await fill(todos)
    batches = record(todos)
    patched = await todos.find({"done": True}, sort=[{"n": "desc"}]).patch({"text": "done!"})
    assert [d.id for d in patched] == ["t8", "t6", "t4", "t2", "t0"]  # query order
    assert all(d["text"] == "done!" and d.revision.startswith("2-") for d in patched)
    assert len(batches) == 1  # one commit, one event per document
    assert sorted(e.id for e in batches[0]) == ["t0", "t2", "t4", "t6", "t8"]
    assert all(e.operation == "UPDATE" for e in batches[0])
    assert (await todos.find_one("t1"))["text"] == "task 1"  # others untouched
    assert await todos.count({"text": "done!"}) == 5


async def test_find_modify_takes_sync_and_async_functions(todos: p2pdb.Collection) -> None:
    await fill(todos)

    async def bump(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "n": data["n"] + 100}

    bumped = await todos.find({"n": {"$lt": 3}}).modify(bump)
    assert [d["n"] for d in bumped] == [100, 101, 102]
    tagged = await todos.find({"n": {"$gte": 100}}, limit=2).modify(
        lambda data: {**data, "tags": ["x"]}
    )
    assert [d.id for d in tagged] == ["t0", "t1"]  # skip/limit/sort are the query's
    assert (await todos.find_one("t2"))["n"] == 102 and "tags" not in (await todos.find_one("t2"))


async def test_find_remove_returns_tombstones(todos: p2pdb.Collection) -> None:
    await fill(todos)
    batches = record(todos)
    removed = await todos.find({"n": {"$gte": 7}}).remove()
    assert [d.id for d in removed] == ["t7", "t8", "t9"]
    assert all(d.deleted for d in removed)
    assert len(batches) == 1 and [e.operation for e in batches[0]] == ["DELETE"] * 3
    assert await todos.count() == 7
    assert await todos.find({"n": {"$gte": 7}}).remove() == []  # nothing matches: no write
    assert len(batches) == 1


async def test_find_one_writes_return_one_document_or_none(todos: p2pdb.Collection) -> None:
    await fill(todos)
    doc = await todos.find_one("t3").patch({"done": True})
    assert doc is not None and doc["done"] is True
    doc = await todos.find_one({"done": True}, sort=[{"n": "desc"}]).modify(
        lambda d: {**d, "text": "top"}
    )
    assert doc is not None and doc.id == "t8" and doc["text"] == "top"
    gone = await todos.find_one("t3").remove()
    assert gone is not None and gone.deleted and await todos.find_one("t3") is None
    assert await todos.find_one("missing").patch({"text": "x"}) is None
    assert await todos.find_one("missing").remove() is None


async def test_an_invalid_new_state_writes_nothing(todos: p2pdb.Collection) -> None:
    await fill(todos)
    batches = record(todos)

    def breaks_one(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "n": -1 if data["id"] == "t5" else data["n"] + 1}

    with pytest.raises(ValidationError) as caught:
        await todos.find().modify(breaks_one)
    assert caught.value.code == "DOCUMENT_INVALID"
    assert batches == [] and (await todos.find_one("t0"))["n"] == 0
    with pytest.raises(ValidationError) as caught:
        await todos.find().modify(lambda d: {**d, "id": "other"})
    assert caught.value.code == "DOCUMENT_PRIMARY_KEY_CHANGED"
    with pytest.raises(ValidationError) as caught:
        await todos.find().patch(["not", "a", "dict"])  # type: ignore[arg-type]
    assert caught.value.code == "DOCUMENT_NOT_OBJECT"
    assert batches == []
    with pytest.raises(QueryError):
        await todos.find([]).remove()  # type: ignore[arg-type]


async def test_a_document_changed_meanwhile_is_modified_again_on_its_new_state(
    todos: p2pdb.Collection,
) -> None:
    await fill(todos)
    calls: list[tuple[str, int]] = []

    async def add_one(data: dict[str, Any]) -> dict[str, Any]:
        calls.append((data["id"], data["n"]))
        if len(calls) == 1:  # another writer changes t1 after the query read it
            await todos.upsert({"id": "t1", "text": "other writer", "n": 2})
        return {**data, "n": data["n"] + 1}

    result = await todos.find({"n": {"$lt": 3}}).modify(add_one)
    assert {d.id: d["n"] for d in result} == {"t0": 1, "t1": 3, "t2": 3}
    assert [d.id for d in result] == ["t0", "t1", "t2"]
    assert calls[-1] == ("t1", 2)  # run again on the other writer's state
    stored = await todos.find_one("t1")
    assert stored is not None and stored["text"] == "other writer" and stored["n"] == 3


async def test_a_document_removed_or_no_longer_matching_meanwhile_is_left_alone(
    todos: p2pdb.Collection,
) -> None:
    await fill(todos)
    first = True

    async def mark(data: dict[str, Any]) -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            await todos.find_one("t1").remove()
            await todos.find_one("t2").patch({"done": True, "n": 99})  # leaves the selector
        return {**data, "text": "marked"}

    result = await todos.find({"n": {"$lt": 4}}).modify(mark)
    assert [d.id for d in result] == ["t0", "t3"]
    assert (await todos.find_one("t2"))["text"] == "task 2"
    assert await todos.find_one("t1") is None


async def test_endless_races_end_with_a_typed_conflict(todos: p2pdb.Collection) -> None:
    await todos.insert({"id": "a", "text": "x", "n": 0})

    async def always_raced(data: dict[str, Any]) -> dict[str, Any]:
        current = await todos.find_one("a")
        assert current is not None
        await current.patch({"n": current["n"] + 1})
        return {**data, "text": "mine"}

    with pytest.raises(ConflictError) as caught:
        await todos.find().modify(always_raced)
    assert caught.value.code == "QUERY_WRITE_RACE"
    assert caught.value.parameters["ids"] == ["a"]
    stored = await todos.find_one("a")
    assert stored is not None and stored["text"] == "x"
    assert stored["n"] == p2pdb.queries.QUERY_WRITE_ROUNDS


async def test_query_writes_survive_reopening(db_path: str) -> None:
    from schemas import TODO_SCHEMA

    async with p2pdb.create_database(db_path) as db:
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        await fill(todos)
        await todos.find({"done": False}).patch({"text": "odd"})
        await todos.find({"n": 0}).remove()
    async with p2pdb.create_database(db_path) as db:
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        assert await todos.count({"text": "odd"}) == 5
        assert await todos.count() == 9


async def test_update_applies_mongodb_operators_in_one_transaction(
    todos: p2pdb.Collection,
) -> None:
    await todos.bulk_insert(
        [
            {"id": "a", "text": "x", "n": 1, "tags": ["red"], "meta": {"owner": "ann"}},
            {"id": "b", "text": "y", "n": 5},
        ]
    )
    batches = record(todos)
    updated = await todos.find().update(
        {
            "$inc": {"n": 10},
            "$set": {"meta.owner": "bob", "done": True},
            "$addToSet": {"tags": {"$each": ["red", "blue"]}},
        }
    )
    assert len(batches) == 1
    assert [d.to_dict() for d in updated] == [
        {"id": "a", "text": "x", "n": 11, "tags": ["red", "blue"], "meta": {"owner": "bob"},
         "done": True},
        {"id": "b", "text": "y", "n": 15, "meta": {"owner": "bob"}, "done": True,
         "tags": ["red", "blue"]},
    ]  # fmt: skip
    one = await todos.find_one("a").update(
        {
            "$unset": {"done": ""},
            "$push": {"tags": "green"},
            "$pull": {"tags": "red"},
            "$min": {"n": 3},
            "$rename": {"meta": "info"},
        }
    )
    assert one is not None and one.to_dict() == {
        "id": "a", "text": "x", "n": 3, "tags": ["blue", "green"], "info": {"owner": "bob"},
    }  # fmt: skip
    popped = await todos.find_one("b").update({"$pop": {"tags": -1}, "$mul": {"n": 2}})
    assert popped is not None and popped["tags"] == ["blue"] and popped["n"] == 30
    assert await todos.find_one("missing").update({"$set": {"text": "z"}}) is None


async def test_malformed_updates_write_nothing(todos: p2pdb.Collection) -> None:
    await fill(todos)
    batches = record(todos)
    for update, code in (
        ({"$frobnicate": {"n": 1}}, "UPDATE_UNKNOWN_OPERATOR"),
        ({"n": 1}, "UPDATE_UNKNOWN_OPERATOR"),
        ({}, "UPDATE_BAD_OPERAND"),
        ({"$set": 5}, "UPDATE_BAD_OPERAND"),
        ({"$set": {"a..b": 1}}, "UPDATE_BAD_PATH"),
        ({"$inc": {"n": "1"}}, "UPDATE_BAD_OPERAND"),
        ({"$inc": {"text": 1}}, "UPDATE_BAD_OPERAND"),  # not a number where it applies
        ({"$push": {"text": 1}}, "UPDATE_BAD_OPERAND"),
        ({"$set": {"text.deeper": 1}}, "UPDATE_BAD_PATH"),
        ({"$pop": {"tags": 2}}, "UPDATE_BAD_OPERAND"),
        ({"$set": {"n": -1}}, "DOCUMENT_INVALID"),  # the schema still rules
        ({"$set": {"id": "other"}}, "DOCUMENT_PRIMARY_KEY_CHANGED"),
    ):
        with pytest.raises(ValidationError) as caught:
            await todos.find().update(update)
        assert caught.value.code == code, update
    assert batches == []
