"""Odd but valid documents, and bad arguments, at every public call (issue #14).

* A document with an empty-string key (``{"id": "x", "text": "t", "": 1}``, valid JSON and
  valid whenever ``additionalProperties`` is not false) is stored and read back like any
  other field, by every operation and through replication (``user_fields`` used ``k[0]``
  and raised IndexError on it).
* Every bad argument raises a :class:`~p2pdb.errors.P2PDBError` with a documented code,
  and leaves the data as it was (before: TypeError, ValueError, UnicodeEncodeError or
  RecursionError from deep inside).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import wait_equal

import p2pdb
from p2pdb.errors import P2PDBError, QueryError, ValidationError
from p2pdb.replication import ChangesBatch, WriteRow, collection_handler, replicate
from p2pdb.replication.testing import WirePipe

SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "text": {"type": "string"},
        "n": {"type": "integer"},
    },
    "required": ["id", "text"],
}


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    dbs: list[p2pdb.Database] = []

    async def open_collection(name: str) -> p2pdb.Collection:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        dbs.append(db)
        return await db.add_collection("docs", schema=SCHEMA)

    yield open_collection
    for db in dbs:
        await db.close()


async def snapshot(col: p2pdb.Collection) -> list[dict[str, Any]]:
    return [d.to_dict(include_meta=True) for d in await col.find()]


# ----------------------------------------------------------------------------- empty keys


async def test_a_document_with_an_empty_key_is_read_written_and_removed(make: Any) -> None:
    docs = await make("a")
    stored = await docs.insert({"id": "x", "text": "t", "": 1})
    assert stored.to_dict() == {"id": "x", "text": "t", "": 1}
    assert stored[""] == 1 and "" in stored and len(stored) == 3
    assert stored.to_dict(include_meta=True)[""] == 1
    found = await docs.find_one("x")
    assert found is not None and found.to_dict() == {"id": "x", "text": "t", "": 1}
    assert [d.id for d in await docs.find({"text": "t"}, sort=[{"text": "asc"}])] == ["x"]
    assert await docs.count() == 1

    patched = await found.patch({"n": 2, "": [1, {"": "nested"}]})
    assert patched.to_dict() == {"id": "x", "text": "t", "n": 2, "": [1, {"": "nested"}]}
    modified = await patched.modify(lambda d: {**d, "": d[""] + [3]})
    assert modified[""] == [1, {"": "nested"}, 3]
    replaced = await modified.replace({"id": "x", "text": "r", "": None})
    assert replaced.to_dict() == {"id": "x", "text": "r", "": None}
    upserted = await docs.upsert({"id": "x", "text": "u", "": "again"})
    assert upserted[""] == "again"
    removed = await upserted.remove()
    assert removed.deleted and await docs.find_one("x") is None

    result = await docs.bulk_insert([{"id": f"b{i}", "text": "b", "": i} for i in range(3)])
    assert not result.errors and [d[""] for d in result.success] == [0, 1, 2]
    tombstones = await docs.remove({"text": "b"})
    assert sorted(d.id for d in tombstones) == ["b0", "b1", "b2"]
    assert all(d.deleted for d in tombstones) and await docs.count() == 0


async def test_a_document_with_an_empty_key_replicates_both_ways(make: Any) -> None:
    master, fork = await make("master"), await make("fork")
    await master.insert({"id": "m", "text": "from the master", "": {"": 1}})
    async with WirePipe(collection_handler(master)) as pipe:
        async with replicate(fork, pipe.handler, "pipe") as state:
            await state.wait_for_initial_replication()
            pulled = await fork.find_one("m")
            assert pulled is not None and pulled.to_dict()[""] == {"": 1}
            await pulled.patch({"": "patched on the fork"})
            await fork.insert({"id": "f", "text": "from the fork", "": 0})
            await wait_equal(master, fork)
            await state.wait_for_in_sync()
            on_master = await master.find_one("m")
            assert on_master is not None and on_master[""] == "patched on the fork"
            assert (await master.find_one("f"))[""] == 0  # type: ignore[index]
            await fork.remove({"id": "f"})
            await wait_equal(master, fork)
        # a peer's raw push with an empty key is stored and readable on the master
        assert await pipe.handler.write(
            [WriteRow({"id": "w", "text": "pushed", "": "raw", "_deleted": False})]
        ) == []
    assert (await master.find_one("w")).to_dict() == {"id": "w", "text": "pushed", "": "raw"}  # type: ignore[union-attr]
    assert await master.find_one("f") is None


async def test_a_peer_cannot_store_a_lone_surrogate_either_way(make: Any) -> None:
    """What cannot be encoded is refused with a code, by a master and by a fork."""
    master, fork = await make("master"), await make("fork")
    await master.insert({"id": "ok", "text": "fine"})
    handler = collection_handler(master)
    async with WirePipe(handler) as pipe:
        with pytest.raises(P2PDBError):  # the master answers the push with an error
            await pipe.handler.write(
                [WriteRow({"id": "bad", "text": "\ud800", "_deleted": False})]
            )
    assert master.stored_state("bad") is None

    class Hostile:  # a master that hands out a document holding a lone surrogate
        async def changes_since(self, checkpoint: Any, batch_size: int) -> Any:
            batch = await handler.changes_since(checkpoint, batch_size)
            if checkpoint is None:
                bad = {"id": "bad", "text": "x", "\udc00": 1, "_deleted": False}
                return ChangesBatch([bad, *batch.documents], batch.checkpoint)
            return batch

        async def write(self, rows: Any) -> Any:
            return await handler.write(rows)

        def stream(self) -> Any:
            return handler.stream()

    errors: list[P2PDBError] = []
    async with WirePipe(Hostile()) as pipe:  # type: ignore[arg-type]
        state = replicate(fork, pipe.handler, "hostile", autostart=False)
        state.errors.subscribe(errors.append)
        async with state, asyncio.timeout(10):
            await state.start()  # (entering does not start a replication built paused)
            await state.wait_for_initial_replication()
    assert fork.stored_state("bad") is None and (await fork.find_one("ok")) is not None
    assert [e.code for e in errors] == ["DOCUMENT_NOT_JSON"]


# ----------------------------------------------------------------------------- bad arguments

DEEP: Any = 1
for _ in range(5000):
    DEEP = {"$and": [{"n": DEEP}]} if isinstance(DEEP, dict) else [DEEP]

BAD_CALLS: list[tuple[str, Callable[[p2pdb.Collection, p2pdb.Document], Any], str]] = [
    ("find_one lone surrogate", lambda c, d: c.find_one("\ud800"), "QUERY_INVALID_OPERAND"),
    ("find lone surrogate", lambda c, d: c.find({"text": "a\udfff"}), "QUERY_INVALID_OPERAND"),
    ("$in surrogate", lambda c, d: c.find({"text": {"$in": ["\ud800"]}}), "QUERY_INVALID_OPERAND"),
    ("key surrogate", lambda c, d: c.find({"m": {"$eq": {"\ud800": 1}}}), "QUERY_INVALID_OPERAND"),
    ("count surrogate", lambda c, d: c.count({"text": {"$gt": "\ud800"}}), "QUERY_INVALID_OPERAND"),
    ("remove surrogate", lambda c, d: c.remove({"text": "\ud800"}), "QUERY_INVALID_OPERAND"),
    ("find(5)", lambda c, d: c.find(5), "QUERY_INVALID_SELECTOR"),
    ("remove(5)", lambda c, d: c.remove(5), "QUERY_INVALID_SELECTOR"),
    ("sort=[5]", lambda c, d: c.find(sort=[5]), "QUERY_INVALID_SORT"),
    ("sort=dict", lambda c, d: c.find(sort={"n": "asc"}), "QUERY_INVALID_SORT"),
    ("sort direction", lambda c, d: c.find(sort=[{"n": [[[]]]}]), "QUERY_INVALID_SORT_DIRECTION"),
    ("deep selector", lambda c, d: c.find(DEEP), "QUERY_INVALID_SELECTOR"),
    ("deep value", lambda c, d: c.find({"n": [DEEP]}), "QUERY_INVALID_SELECTOR"),
    ("find_one deep list", lambda c, d: c.find_one([DEEP]), "QUERY_NOT_OBJECT"),
    ("skip deep", lambda c, d: c.find(skip=[DEEP]), "QUERY_BAD_SKIP"),
    ("patch(5)", lambda c, d: d.patch(5), "DOCUMENT_NOT_OBJECT"),
    ("patch(list)", lambda c, d: d.patch([("n", 1)]), "DOCUMENT_NOT_OBJECT"),
    ("patch(str)", lambda c, d: d.patch("n"), "DOCUMENT_NOT_OBJECT"),
    ("patch int key", lambda c, d: d.patch({5: 1}), "DOCUMENT_NOT_JSON"),
    ("patch surrogate", lambda c, d: d.patch({"t": "\ud800"}), "DOCUMENT_NOT_JSON"),
    ("modify(5)", lambda c, d: d.modify(5), "ARGUMENT_INVALID"),
    ("modify returns 5", lambda c, d: d.modify(lambda _: 5), "DOCUMENT_NOT_OBJECT"),
    ("replace(5)", lambda c, d: d.replace(5), "DOCUMENT_NOT_OBJECT"),
    ("insert(5)", lambda c, d: c.insert(5), "DOCUMENT_NOT_OBJECT"),
    ("insert deep", lambda c, d: c.insert({"id": "z", "text": "", "d": DEEP}), "DOCUMENT_NOT_JSON"),
    ("bulk_insert(5)", lambda c, d: c.bulk_insert(5), "ARGUMENT_INVALID"),
    ("bulk_upsert(dict)", lambda c, d: c.bulk_upsert({"id": "z"}), "ARGUMENT_INVALID"),
    ("bulk_insert(str)", lambda c, d: c.bulk_insert("ab"), "ARGUMENT_INVALID"),
    ("find_by_ids(5)", lambda c, d: c.find_by_ids(5), "ARGUMENT_INVALID"),
    ("find_by_ids(str)", lambda c, d: c.find_by_ids("a"), "ARGUMENT_INVALID"),
    ("find_by_ids surrogate", lambda c, d: c.find_by_ids(["\ud800"]), "ARGUMENT_INVALID"),
    ("stored_state(5)", lambda c, d: c.stored_state(5), "ARGUMENT_INVALID"),
    ("remove_document(5)", lambda c, d: c.remove_document(5), "ARGUMENT_INVALID"),
    ("watch(max_buffer)", lambda c, d: c.watch(max_buffer="x"), "ARGUMENT_INVALID"),
]


@pytest.mark.parametrize(("call", "code"), [(c, code) for _, c, code in BAD_CALLS],
                         ids=[name for name, _, _ in BAD_CALLS])  # fmt: skip
async def test_every_bad_argument_raises_a_coded_error_and_changes_nothing(
    make: Any, call: Callable[[p2pdb.Collection, p2pdb.Document], Any], code: str
) -> None:
    docs = await make("a")
    doc = await docs.insert({"id": "a", "text": "t", "n": 1})
    await docs.insert({"id": "b", "text": "u", "": 2})
    before = await snapshot(docs)
    with pytest.raises(P2PDBError) as caught:
        result = call(docs, doc)
        if asyncio.iscoroutine(result) or hasattr(result, "__await__"):
            await result
    assert caught.value.code == code, caught.value
    assert len(str(caught.value)) < 2000  # a huge argument is not copied into the message
    assert isinstance(caught.value, ValidationError)
    if code.startswith("QUERY_"):
        assert isinstance(caught.value, QueryError)
    assert await snapshot(docs) == before


async def test_document_mapping_access_with_odd_keys(make: Any) -> None:
    docs = await make("a")
    doc = await docs.insert({"id": "a", "text": "t"})
    assert doc.get(5) is None and 5 not in doc and doc.get("_rev") is None
    with pytest.raises(KeyError):
        doc[["not", "hashable"]]  # type: ignore[index]
