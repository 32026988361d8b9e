"""Causal order between p2pdb peers (p2pdb/causal.py, replication/causal_order.py).

The vector rules alone, what the storage keeps, and the three cases a master and a fork
decide from the vectors: the pushed state descends from the master's (accepted), the
master's descends from the pushed one (stale: the fork takes it, no handler), or they are
concurrent (the handler). A handler without causal order (an RxDB peer's) keeps the plain
protocol: no vector on its documents, and the handler decides as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from reactivex import Observable
from replication_helpers import HandlerWrapper

import p2pdb
from p2pdb.causal import (
    MAX_ENTRIES,
    check_vector,
    compare,
    merge,
    state_vector,
    stored_vector,
    take,
)
from p2pdb.conflicts import Conflict
from p2pdb.errors import ValidationError
from p2pdb.replication import ChangesBatch, Resync, WriteRow, collection_handler, replicate
from p2pdb.replication.causal_order import negotiate, speaks_causal
from p2pdb.replication.testing import WirePipe

SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {"id": {"type": "string", "maxLength": 50}, "v": {"type": "integer"}},
    "required": ["id", "v"],
}


# -- the rules alone ---------------------------------------------------------------------------


def test_compare_orders_ancestors_and_leaves_the_rest_to_the_handler() -> None:
    assert compare({"a": 1}, {"a": 2}) == "before"
    assert compare({"a": 2, "b": 1}, {"a": 1}) == "after"
    assert compare({"a": 1, "b": 2}, {"b": 2, "a": 1}) == "equal"
    assert compare({"a": 2}, {"b": 1}) == "concurrent"
    assert compare({"a": 2, "b": 1}, {"a": 1, "b": 2}) == "concurrent"
    assert compare(None, {"a": 1}) == compare({"a": 1}, None) == "unknown"


def test_stored_vector_copies_bumps_and_merges() -> None:
    assert stored_vector({"a": 3}, {"b": 9}, False, "me", 7) == {"b": 9}  # a copy
    assert stored_vector({"a": 3}, None, True, "me", 7) == {"a": 3, "me": 7}  # a local write
    assert stored_vector(None, None, True, "me", 7) == {"me": 7}
    # a resolution follows both sides
    assert stored_vector({"a": 3, "me": 2}, {"b": 5, "a": 1}, True, "me", 7) == {
        "a": 3,
        "b": 5,
        "me": 7,
    }
    assert merge({"a": 1}, None) is None
    full = {f"w{i}": 1 for i in range(MAX_ENTRIES)}
    # too many writers: no causal information rather than a cut (younger-looking) history
    assert stored_vector(full, None, True, "me", 7) is None
    assert stored_vector(full, None, True, "w0", 7) == {**full, "w0": 7}


@pytest.mark.parametrize(
    "bad",
    [
        [1, 2],
        {"a": 0},
        {"a": -1},
        {"a": 1.5},
        {"a": True},
        {"a": 2**53},
        {"": 1},
        {"a}": 1},
        {"x" * 65: 1},
        {f"w{i}": 1 for i in range(MAX_ENTRIES + 1)},
    ],
)
def test_a_bad_vector_is_refused_with_a_code(bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        check_vector(bad)
    assert caught.value.code == "REPLICATION_BAD_VECTOR"
    with pytest.raises(ValidationError):
        take({"id": "x", "_meta": {"vv": bad}})


def test_take_strips_meta_and_keeps_user_fields() -> None:
    assert take({"id": "x", "v": 1, "_deleted": False}) == (
        {"id": "x", "v": 1, "_deleted": False},
        None,
    )
    assert take({"id": "x", "_meta": {"lwt": 5}}) == ({"id": "x"}, None)  # RxDB's _meta
    assert take({"id": "x", "_meta": {"vv": {"a": 2}}}) == ({"id": "x"}, {"a": 2})


# -- storage -----------------------------------------------------------------------------------


async def test_every_local_write_extends_the_states_history(tmp_path: Path) -> None:
    async with p2pdb.create_database(str(tmp_path / "a.db")) as db:
        docs = await db.add_collection("docs", schema=SCHEMA)
        token = db.storage.token
        doc = await docs.insert({"id": "x", "v": 1})
        first = state_vector(doc.to_dict(include_meta=True))
        assert first is not None and list(first) == [token]
        doc = await doc.patch({"v": 2})
        second = state_vector(doc.to_dict(include_meta=True))
        assert compare(first, second) == "before"
        await doc.remove()
        tomb = db.storage.get("docs", ["x"])["x"]
        assert tomb["_deleted"] and compare(second, state_vector(tomb)) == "before"


async def test_an_older_file_gets_the_column_and_its_rows_have_no_history(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    async with p2pdb.create_database(path) as db:
        await (await db.add_collection("docs", schema=SCHEMA)).insert({"id": "x", "v": 1})
    conn = sqlite3.connect(path)
    conn.execute('ALTER TABLE "col_docs" DROP COLUMN vv')  # as a file of p2pdb before vectors
    conn.commit()
    conn.close()
    async with p2pdb.create_database(path) as db:
        docs = await db.add_collection("docs", schema=SCHEMA)
        old = await docs.find_one("x")
        assert old is not None and state_vector(old.to_dict(include_meta=True)) is None
        new = await old.patch({"v": 2})
        assert state_vector(new.to_dict(include_meta=True)) == {
            db.storage.token: new.to_dict(include_meta=True)["_meta"]["vv"][db.storage.token]
        }


# -- the master's rules --------------------------------------------------------------------------


def wire(v: int, vector: dict[str, int] | None, deleted: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": "x", "v": v, "_deleted": deleted}
    if vector is not None:
        doc["_meta"] = {"vv": vector}
    return doc


async def master_with(tmp_path: Path, v: int) -> tuple[p2pdb.Database, p2pdb.Collection, dict]:
    db = await p2pdb.create_database(str(tmp_path / "m.db"))
    docs = await db.add_collection("docs", schema=SCHEMA)
    first = await docs.insert({"id": "x", "v": 0})
    stored = (await first.patch({"v": v})).to_dict(include_meta=True)
    vector = state_vector(stored)
    assert vector is not None
    return db, docs, vector


async def test_master_accepts_a_push_that_descends_from_its_state(tmp_path: Path) -> None:
    db, docs, mine = await master_with(tmp_path, 2)
    try:
        handler = collection_handler(docs).with_causal_order()
        later = {**mine, "other": 4}
        # assumed v1 is not what it holds (v2), but the pushed state follows v2
        assert await handler.write([WriteRow(wire(3, later), wire(1, None))]) == []
        stored = await docs.find_one("x")
        assert stored is not None and stored["v"] == 3
        assert state_vector(stored.to_dict(include_meta=True)) == later  # stored as a copy
    finally:
        await db.close()


async def test_master_answers_a_stale_or_concurrent_push_with_its_state_and_vector(
    tmp_path: Path,
) -> None:
    db, docs, mine = await master_with(tmp_path, 2)
    try:
        handler = collection_handler(docs).with_causal_order()
        (token,) = mine
        older = {token: mine[token] - 1}
        answer = await handler.write([WriteRow(wire(1, older), wire(0, None))])
        assert answer == [wire(2, mine)]
        concurrent = {"someone": 5}
        assert await handler.write([WriteRow(wire(9, concurrent), wire(0, None))]) == [
            wire(2, mine)
        ]
        stored = await docs.find_one("x")
        assert stored is not None and stored["v"] == 2
    finally:
        await db.close()


async def test_a_plain_handler_keeps_rxdbs_protocol(tmp_path: Path) -> None:
    db, docs, mine = await master_with(tmp_path, 2)
    try:
        plain = collection_handler(docs)
        assert not speaks_causal(plain)
        (token,) = mine
        later = {token: mine[token] + 1}
        # an RxDB peer's push (the vector is dropped with _meta): a conflict, no vector back
        assert await plain.write([WriteRow(wire(3, later), wire(1, None))]) == [wire(2, None)]
        batch = await plain.changes_since(None, 10)
        assert batch.documents == [wire(2, None)]
        causal = plain.with_causal_order()
        # a row without a vector (an RxDB-form row) is judged by RxDB's rule too
        assert await causal.write([WriteRow(wire(3, None), wire(1, None))]) == [wire(2, mine)]
        assert (await causal.changes_since(None, 10)).documents == [wire(2, mine)]
    finally:
        await db.close()


async def test_master_refuses_a_hostile_vector(tmp_path: Path) -> None:
    db, docs, _ = await master_with(tmp_path, 2)
    try:
        handler = collection_handler(docs).with_causal_order()
        huge = {f"w{i}": 1 for i in range(MAX_ENTRIES + 1)}
        with pytest.raises(ValidationError) as caught:
            await handler.write([WriteRow(wire(3, huge), None)])
        assert caught.value.code == "REPLICATION_BAD_VECTOR"
        stored = await docs.find_one("x")
        assert stored is not None and stored["v"] == 2
    finally:
        await db.close()


# -- the fork's rules, end to end -------------------------------------------------------------


class Recorder:
    """A conflict handler that records its calls and lets the master win."""

    def __init__(self) -> None:
        self.calls: list[Conflict] = []

    def is_equal(self, a: Any, b: Any) -> bool:
        return p2pdb.conflicts.deep_equal(a, b)

    def resolve(self, conflict: Conflict) -> dict[str, Any]:
        self.calls.append(conflict)
        return conflict.real_master_state


class Plain(HandlerWrapper):
    """A handler without causal order (as an RxDB peer's), recording what it carries."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.seen: list[dict[str, Any]] = []

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        batch: ChangesBatch = await self.inner.changes_since(checkpoint, batch_size)
        self.seen.extend(batch.documents)
        return batch

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        self.seen.extend(row.new_document_state for row in rows)
        answer: list[dict[str, Any]] = await self.inner.write(rows)
        self.seen.extend(answer)
        return answer

    def stream(self) -> Observable[ChangesBatch | Resync]:
        stream: Observable[ChangesBatch | Resync] = self.inner.stream()
        return stream


async def one_pass(fork: p2pdb.Collection, handler: Any, name: str) -> None:
    async with replicate(fork, handler, name, live=False) as state:
        await state.wait_for_initial_replication()
        await state.wait_for_in_sync()


async def three(tmp_path: Path, handler: Recorder) -> list[p2pdb.Database]:
    dbs = [await p2pdb.create_database(str(tmp_path / f"{n}.db")) for n in "abc"]
    for db in dbs:
        await db.add_collection("docs", schema=SCHEMA, conflict_handler=handler)
    return dbs


async def test_fork_takes_a_master_state_that_descends_from_its_push_without_the_handler(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    dbs = await three(tmp_path, recorder)
    a, b, c = (db.collections["docs"] for db in dbs)
    try:
        await a.insert({"id": "x", "v": 1})
        await one_pass(c, collection_handler(a), "c-a")
        await one_pass(c, collection_handler(b), "c-b")  # b has v1 from c
        await (await a.find_one("x")).patch({"v": 2})  # type: ignore[union-attr]
        await one_pass(c, collection_handler(a), "c-a")  # c: v2, assumes b holds v1
        await one_pass(b, collection_handler(a), "b-a")
        await (await a.find_one("x")).patch({"v": 3})  # type: ignore[union-attr]
        await one_pass(b, collection_handler(a), "b-a")  # b: v3, which follows c's v2
        async with replicate(c, collection_handler(b), "c-b", live=False) as state:
            resolved: list[Any] = []
            state.conflicts.subscribe(resolved.append)
            await state.wait_for_in_sync()
        assert [(await col.find_one("x"))["v"] for col in (a, b, c)] == [3, 3, 3]  # type: ignore[index]
        assert recorder.calls == [] and resolved == []
    finally:
        for db in dbs:
            await db.close()


async def test_concurrent_states_go_to_the_handler_and_the_result_follows_both(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    dbs = await three(tmp_path, recorder)
    a, b, _ = (db.collections["docs"] for db in dbs)
    try:
        await a.insert({"id": "x", "v": 1})
        await one_pass(b, collection_handler(a), "b-a")
        await (await a.find_one("x")).patch({"v": 2})  # type: ignore[union-attr]
        await (await b.find_one("x")).patch({"v": 20})  # type: ignore[union-attr]
        theirs = state_vector((await a.find_one("x")).to_dict(include_meta=True))  # type: ignore[union-attr]
        ours = state_vector((await b.find_one("x")).to_dict(include_meta=True))  # type: ignore[union-attr]
        assert compare(ours, theirs) == "concurrent"
        await one_pass(b, collection_handler(a), "b-a")
        assert len(recorder.calls) == 1
        kept = (await b.find_one("x")).to_dict(include_meta=True)  # type: ignore[union-attr]
        assert kept["v"] == 2
        # the resolution is a new state after both: it fast-forwards any peer holding either
        vector = state_vector(kept)
        assert compare(theirs, vector) == "before" and compare(ours, vector) == "before"
    finally:
        for db in dbs:
            await db.close()


async def test_without_causal_order_vectors_never_travel_and_the_handler_decides(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    dbs = await three(tmp_path, recorder)
    a, b, c = (db.collections["docs"] for db in dbs)
    try:
        handlers = {name: Plain(collection_handler(m)) for name, m in (("a", a), ("b", b))}
        await a.insert({"id": "x", "v": 1})
        await one_pass(b, handlers["a"], "b-a")
        await one_pass(c, handlers["a"], "c-a")
        await one_pass(c, handlers["b"], "c-b")
        await (await a.find_one("x")).patch({"v": 2})  # type: ignore[union-attr]
        await one_pass(b, handlers["a"], "b-a")
        await (await a.find_one("x")).patch({"v": 3})  # type: ignore[union-attr]
        await one_pass(c, handlers["a"], "c-a")
        await one_pass(c, handlers["b"], "c-b")  # RxDB's protocol: a "conflict"
        assert len(recorder.calls) == 1
        seen = handlers["a"].seen + handlers["b"].seen
        assert seen and all("_meta" not in doc for doc in seen)
    finally:
        for db in dbs:
            await db.close()


async def test_vectors_cross_the_wire_only_between_p2pdb_ends(tmp_path: Path) -> None:
    async with (
        p2pdb.create_database(str(tmp_path / "m.db")) as mdb,
        p2pdb.create_database(str(tmp_path / "f.db")) as fdb,
    ):
        master = await mdb.add_collection("docs", schema=SCHEMA)
        fork = await fdb.add_collection("docs", schema=SCHEMA)
        await master.insert({"id": "x", "v": 1})
        async with WirePipe(collection_handler(master)) as pipe:
            assert speaks_causal(pipe.handler) and speaks_causal(pipe.master)
            await one_pass(fork, pipe.handler, "pipe")
            assert any("_meta" in str(message) for message in pipe.master_end.sent)
        pulled = await fork.find_one("x")
        stored = await master.find_one("x")
        assert pulled is not None and stored is not None
        # the fork stores the master's state with the master's history: a copy, not a write
        assert state_vector(pulled.to_dict(include_meta=True)) == state_vector(
            stored.to_dict(include_meta=True)
        )
        plain = Plain(collection_handler(master))
        assert negotiate(plain) is plain and not speaks_causal(plain)
        async with WirePipe(plain) as pipe:
            assert not speaks_causal(pipe.handler)
            await fork.upsert({"id": "y", "v": 5})
            await one_pass(fork, pipe.handler, "plain-pipe")
            sent = pipe.master_end.sent + pipe.fork_end.sent
            assert sent and all("_meta" not in str(message) for message in sent)


async def test_an_ancestor_never_wins_even_when_the_assumed_state_matches(tmp_path: Path) -> None:
    db, docs, mine = await master_with(tmp_path, 2)
    try:
        handler = collection_handler(docs).with_causal_order()
        (token,) = mine
        older = {token: mine[token] - 1}
        # a push of an older state "based on" what the master holds: stale, not written
        assert await handler.write([WriteRow(wire(1, older), wire(2, None))]) == [wire(2, mine)]
        stored = await docs.find_one("x")
        assert stored is not None and stored["v"] == 2
    finally:
        await db.close()


class LateMaster:
    """A causal master whose answers carry an old state of ``x`` (a late arrival)."""

    causal = True

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def with_causal_order(self) -> LateMaster:
        return self

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        return ChangesBatch([] if checkpoint else [self.doc], {"seq": 1})

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        return []

    def stream(self) -> Observable[ChangesBatch | Resync]:
        import reactivex

        return reactivex.never()


async def test_the_fork_never_applies_an_ancestor_of_its_state(tmp_path: Path) -> None:
    db, docs, mine = await master_with(tmp_path, 2)
    try:
        (token,) = mine
        late = LateMaster(wire(1, {token: mine[token] - 1}))
        await one_pass(docs, late, "late")
        stored = await docs.find_one("x")
        assert stored is not None and stored["v"] == 2
        # while a state that follows it is applied (its history stored with it)
        later = {token: mine[token], "other": 1}
        await one_pass(docs, LateMaster(wire(3, later)), "later")
        stored = await docs.find_one("x")
        assert stored is not None and stored["v"] == 3
        assert state_vector(stored.to_dict(include_meta=True)) == later
    finally:
        await db.close()
