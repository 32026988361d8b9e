"""Change streams and live queries, on real SQLite files; every wait has a timeout."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from reactivex import operators as ops
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.streams import StreamOverflowError


class Recorder:
    """Collects emitted values and lets a test wait for the n-th one."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._changed = asyncio.Event()
        self.completed = False

    def __call__(self, value: Any) -> None:
        self.values.append(value)
        self._changed.set()

    def complete(self) -> None:
        self.completed = True
        self._changed.set()

    async def wait_for(self, count: int) -> list[Any]:
        return await self.wait_until(lambda values: len(values) >= count)

    async def wait_until(self, done: Callable[[list[Any]], bool]) -> list[Any]:
        async with asyncio.timeout(5):
            while not done(self.values):
                self._changed.clear()
                await self._changed.wait()
        return self.values


async def test_events_exactly_once_in_commit_order(todos: p2pdb.Collection) -> None:
    events = Recorder()
    todos.changes.subscribe(events)

    async def writer(w: int) -> None:
        for i in range(20):
            await todos.insert({"id": f"w{w}-{i}", "text": "x"})

    await asyncio.gather(*(writer(w) for w in range(5)))
    result = await todos.bulk_insert([{"id": f"bulk{i}", "text": "y"} for i in range(30)])
    assert len(result.success) == 30
    await events.wait_for(130)
    ids = [e.id for e in events.values]
    assert len(ids) == len(set(ids)) == 130
    seqs = [e.seq for e in events.values]
    assert seqs == sorted(seqs)
    assert {e.operation for e in events.values} == {"INSERT"}
    assert all(e.origin == p2pdb.LOCAL and e.collection == "todos" for e in events.values)


async def test_event_contents_and_failed_writes(todos: p2pdb.Collection) -> None:
    events = Recorder()
    todos.changes.subscribe(events)
    doc = await todos.insert({"id": "a", "text": "1"})
    with pytest.raises(p2pdb.ConflictError):
        await todos.insert({"id": "a", "text": "dup"})  # fails: emits nothing
    with pytest.raises(p2pdb.ValidationError):
        await todos.insert({"id": "b", "text": 1})
    doc = await doc.patch({"text": "2"})
    await doc.remove()
    insert, update, delete = await events.wait_for(3)
    assert (insert.operation, insert.previous) == ("INSERT", None)
    assert (update.operation, update.previous["text"], update.document["text"]) == (
        "UPDATE",
        "1",
        "2",
    )
    assert delete.operation == "DELETE" and delete.document["_deleted"] is True
    # a marker write proves nothing else was emitted in between
    await todos.insert({"id": "marker", "text": "m"})
    assert [e.id for e in await events.wait_for(4)] == ["a", "a", "a", "marker"]


async def test_pipe_and_db_changes(db: p2pdb.Database, todos: p2pdb.Collection) -> None:
    deletes = Recorder()
    todos.changes.pipe(ops.filter(lambda e: e.operation == "DELETE")).subscribe(deletes)
    everything = Recorder()
    db.changes.subscribe(everything)
    other = await db.add_collection("other", schema=TODO_SCHEMA)
    doc = await todos.insert({"id": "a", "text": "1"})
    await other.insert({"id": "o", "text": "1"})
    await doc.remove()
    assert [e.id for e in await deletes.wait_for(1)] == ["a"]
    assert [(e.collection, e.operation) for e in await everything.wait_for(3)] == [
        ("todos", "INSERT"),
        ("other", "INSERT"),
        ("todos", "DELETE"),
    ]


async def test_raising_subscriber_breaks_nothing(
    todos: p2pdb.Collection, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(event: Any) -> None:
        raise RuntimeError("subscriber bug")

    todos.changes.subscribe(explode)
    good = Recorder()
    todos.changes.subscribe(good)
    with caplog.at_level(logging.ERROR, logger="p2pdb.streams"):
        await todos.insert({"id": "a", "text": "1"})
        await todos.insert({"id": "b", "text": "2"})
        assert [e.id for e in await good.wait_for(2)] == ["a", "b"]
    assert await todos.count() == 2
    assert sum("subscriber" in r.message for r in caplog.records) == 2  # raised, logged, kept


async def test_async_iterators_and_close(db: p2pdb.Database, todos: p2pdb.Collection) -> None:
    seen = Recorder()
    iterator = todos.watch()  # subscribed from here on

    async def consume() -> None:
        async for event in iterator:
            seen(event.id)

    task = asyncio.create_task(consume())
    await todos.bulk_insert([{"id": f"d{i}", "text": "x"} for i in range(5)])
    await seen.wait_for(5)
    await db.close()
    async with asyncio.timeout(5):
        await task  # closing the database ends the loop cleanly
    assert seen.values == [f"d{i}" for i in range(5)]


async def test_slow_consumer_gets_overflow_error(todos: p2pdb.Collection) -> None:
    iterator = todos.watch(max_buffer=5)
    await todos.bulk_insert([{"id": f"d{i}", "text": "x"} for i in range(10)])
    with pytest.raises(StreamOverflowError) as info:
        async with asyncio.timeout(5):
            async for _ in iterator:
                pass
    assert info.value.code == "STREAM_OVERFLOW"


async def test_live_query_emits_only_when_result_changes(todos: p2pdb.Collection) -> None:
    await todos.bulk_insert([{"id": f"d{i}", "text": "x", "n": i, "done": False} for i in range(5)])
    results = Recorder()
    query = todos.find({"done": False}, sort=[{"n": "asc"}], limit=3)
    subscription = query.observe().subscribe(results)
    first = (await results.wait_for(1))[0]
    assert [d.id for d in first] == ["d0", "d1", "d2"]
    # irrelevant: matches neither before nor after
    await todos.insert({"id": "done1", "text": "x", "n": 0, "done": True})
    # relevant but outside the limited window: the result stays the same
    await todos.insert({"id": "late", "text": "x", "n": 99, "done": False})
    # relevant: enters the window
    await todos.insert({"id": "early", "text": "x", "n": 0, "done": False})
    second = (await results.wait_for(2))[1]
    assert [d.id for d in second] == ["d0", "early", "d1"]
    doc = await todos.find_one("d1")
    assert doc is not None
    await doc.patch({"text": "changed"})  # same ids, new revision: a new result
    third = (await results.wait_for(3))[2]
    assert [d["text"] for d in third] == ["x", "x", "changed"]
    await todos.insert({"id": "marker", "text": "x", "n": 50, "done": True})
    await doc.remove()
    fourth = (await results.wait_for(4))[3]
    assert [d.id for d in fourth] == ["d0", "early", "d2"]
    assert len(results.values) == 4
    subscription.dispose()


async def test_find_one_count_and_document_observe(todos: p2pdb.Collection) -> None:
    one, count, states = Recorder(), Recorder(), Recorder()
    todos.find_one("a").observe().subscribe(one)
    todos.count({"done": True}).observe().subscribe(count)
    assert await one.wait_for(1) == [None]
    assert await count.wait_for(1) == [0]
    doc = await todos.insert({"id": "a", "text": "1", "done": True})
    doc.observe().subscribe(states)
    assert (await one.wait_for(2))[1].id == "a"
    assert (await count.wait_for(2))[1] == 1
    await doc.patch({"text": "2"})
    await doc.remove()
    revisions = [d.revision[:2] for d in await states.wait_for(3)]
    assert revisions == ["1-", "2-", "3-"] and states.values[2].deleted
    # a live query re-runs once per burst of commits: the patch's result may be skipped
    seen = await one.wait_until(lambda values: len(values) > 2 and values[-1] is None)
    assert [d and d.revision[:2] for d in seen[2:]] in (["2-", None], [None])
    assert (await count.wait_for(3))[2] == 0


async def test_query_watch_coalesces(todos: p2pdb.Collection) -> None:
    results = todos.count().watch()
    assert await anext(results) == 0
    for i in range(10):
        await todos.insert({"id": f"d{i}", "text": "x"})
    async with asyncio.timeout(5):
        async for n in results:
            if n == 10:
                break


CHILD = textwrap.dedent(
    """
    import asyncio, sys, p2pdb
    sys.path.insert(0, {tests!r})
    from schemas import TODO_SCHEMA

    async def main():
        async with p2pdb.create_database({path!r}) as db:
            todos = await db.add_collection("todos", schema=TODO_SCHEMA)
            for i in range(20):
                await todos.insert({{"id": f"child{{i}}", "text": "from child"}})
            doc = await todos.find_one("shared")
            await doc.patch({{"text": "child edit"}})

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_other_process_writes_appear(db_path: str, todos: p2pdb.Collection) -> None:
    events, live = Recorder(), Recorder()
    await todos.insert({"id": "shared", "text": "parent"})
    todos.changes.subscribe(events)
    todos.count().observe().subscribe(live)
    await live.wait_for(1)
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    code = CHILD.format(path=db_path, tests=tests_dir)
    # two processes write the same file at once: neither fails, nothing is corrupted
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    for i in range(20):
        await todos.insert({"id": f"parent{i}", "text": "from parent"})
    assert await child.wait() == 0
    await events.wait_for(41)
    assert await todos.count() == 41
    by_origin = [e for e in events.values if e.id.startswith("child")]
    assert len(by_origin) == 20 and all(e.previous is None for e in by_origin)
    assert [e.operation for e in events.values if e.id == "shared"] == ["UPDATE"]
    assert len({e.id for e in events.values}) == 41  # each write exactly once
    async with asyncio.timeout(5):
        while live.values[-1] != 41:
            await live.wait_for(len(live.values) + 1)
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


class Settling:
    """A live query's emissions, and a wait until its latest one equals a fresh run."""

    def __init__(self, query: Any) -> None:
        self.query = query
        self.fresh = _fresh(query).exec
        self.values: list[Any] = []
        self.changed = asyncio.Event()
        self.runs = 0
        run = query.exec

        async def counted() -> Any:
            self.runs += 1
            return await run()

        query.exec = counted  # observe() binds exec: count the re-runs
        self.subscription = query.observe().subscribe(self._on_next)

    def _on_next(self, value: Any) -> None:
        self.values.append(value)
        self.changed.set()

    async def settled(self) -> Any:
        """Wait until the latest emission has the ids and revisions of a fresh run."""
        expected = p2pdb.live.result_key(await self.fresh())
        async with asyncio.timeout(10):
            while not self.values or p2pdb.live.result_key(self.values[-1]) != expected:
                self.changed.clear()
                await self.changed.wait()
        return self.values[-1]


def _fresh(query: Any) -> Any:
    """A new query object with the same selector, sort, skip and limit (its own exec)."""
    c = query.collection
    if isinstance(query, p2pdb.FindOneQuery):
        return c.find_one(query.selector, sort=query.sort)
    return c.find(query.selector, sort=query.sort, skip=query.skip, limit=query.limit)


async def test_live_results_merge_inserts_exactly_like_a_rerun(
    todos: p2pdb.Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random inserts, revivals, updates and removals, in big and small batches: every live
    query (merged or re-run) settles on exactly what a fresh run returns."""
    import random

    from p2pdb import live

    monkeypatch.setattr(live, "MERGE_SECONDS_PER_DOC", 1.0)  # never give up for time here
    rng = random.Random(12)
    queries = [
        todos.find({"text": {"$regex": "^a"}}, sort=[{"n": "desc"}], limit=5),  # Python part
        todos.find({"done": False}, sort=[{"text": "asc"}], limit=7),  # no index for text
        todos.find({"n": {"$gte": 50}}, sort=[{"text": "desc"}, {"n": "asc"}]),  # no limit
        todos.find({}, sort=[{"n": "asc"}], limit=4),  # an index gives the order: re-run
        todos.find_one({"done": True}, sort=[{"text": "asc"}]),
    ]
    assert [q.scans() for q in queries] == [True, True, True, False, True]
    watches = [Settling(q) for q in queries]
    for w in watches:
        await w.settled()
    live_ids: set[str] = set()
    removed: set[str] = set()
    serial = 0
    for step in range(14):
        writes: list[dict[str, Any]] = []
        size = rng.choice([3, 40, 120])
        kind = rng.choice(["insert", "insert", "revive", "update", "remove"])
        if kind == "insert" or (kind == "revive" and not removed):
            for _ in range(size):
                serial += 1
                writes.append(
                    {
                        "id": f"d{serial:04d}",
                        "text": rng.choice("abc") + str(rng.randrange(1000)),
                        "n": rng.randrange(100),
                        "done": rng.random() < 0.3,
                    }
                )
            result = await todos.bulk_insert(writes)
            assert not result.errors
            live_ids |= {d["id"] for d in writes}
        elif kind == "revive":
            ids = sorted(removed)[:size]
            for doc_id in ids:
                await todos.upsert({"id": doc_id, "text": "a-again", "n": 77, "done": False})
            removed -= set(ids)
            live_ids |= set(ids)
        elif kind == "update":
            chosen = rng.sample(sorted(live_ids), min(size, len(live_ids)))
            await todos.find({"id": {"$in": chosen}}).patch({"text": "b" + str(step), "n": 1})
        else:
            chosen = rng.sample(sorted(live_ids), min(size, len(live_ids)))
            await todos.find({"id": {"$in": chosen}}).remove()
            live_ids -= set(chosen)
            removed |= set(chosen)
        for w in watches:
            await w.settled()
    # the scanning queries took inserts without a re-run at least once; the indexed one never
    merged = [w for w in watches if w.runs < 1 + 14]
    assert watches[3] not in merged and merged, [w.runs for w in watches]
    for w in watches:
        w.subscription.dispose()


async def test_a_big_insert_is_merged_into_a_scanning_live_query(
    todos: p2pdb.Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2pdb import live

    monkeypatch.setattr(live, "MERGE_SECONDS_PER_DOC", 1.0)
    await todos.bulk_insert([{"id": f"old{i}", "text": f"t{i:03d}", "n": i} for i in range(50)])
    query = todos.find({"n": {"$gte": 10}}, sort=[{"text": "desc"}], limit=3)
    w = Settling(query)
    first = await w.settled()
    assert [d.id for d in first] == ["old49", "old48", "old47"]
    await todos.bulk_insert(
        [{"id": f"new{i}", "text": f"u{i:03d}", "n": 5 + i % 20} for i in range(200)]
    )
    latest = await w.settled()
    assert [d.id for d in latest] == ["new199", "new198", "new197"]
    assert w.runs == 1  # only the first run: the 200 inserts were merged
    # an update is never merged: it re-runs
    await todos.find_one("new199").patch({"text": "a"})
    latest = await w.settled()
    assert [d.id for d in latest] == ["new198", "new197", "new196"] and w.runs == 2
    w.subscription.dispose()


async def test_a_transaction_over_two_collections_splits_into_batches(
    db: p2pdb.Database, todos: p2pdb.Collection
) -> None:
    """Each collection's ``batches`` gets its own events of a commit, in order; ``db.changes``
    gets them all, even when a batch subscriber empties the list it was given."""
    other = await db.add_collection("other", schema=TODO_SCHEMA)
    mine, theirs, everything = Recorder(), Recorder(), Recorder()
    todos.batches.subscribe(lambda batch: (mine(list(batch)), batch.clear()))
    other.batches.subscribe(theirs)
    await todos.bulk_insert([{"id": "solo", "text": "x"}])  # nobody on db.changes yet
    db.changes.subscribe(everything)

    def both(txn: Any) -> None:
        txn.put("todos", [p2pdb.storage.Write({"id": "t1", "text": "x"})])
        txn.put("other", [p2pdb.storage.Write({"id": "o1", "text": "x"})])
        txn.put("todos", [p2pdb.storage.Write({"id": "t2", "text": "x"})])

    await db.storage.write(both)
    (solo, pair) = await mine.wait_for(2)
    assert [e.id for e in solo] == ["solo"] and [e.id for e in pair] == ["t1", "t2"]
    assert [[e.id for e in b] for b in await theirs.wait_for(1)] == [["o1"]]
    assert [e.id for e in await everything.wait_for(3)] == ["t1", "o1", "t2"]
    assert [e.seq for e in everything.values] == [2, 3, 4]
